"""app.py's console script `strokect-app`: the dashboard through `streamlit run`, or the Gradio app alone."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """A private os.environ without the STROKECT_ folders, and an empty working folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROKECT_")}
    monkeypatch.setattr(os, "environ", env)
    monkeypatch.chdir(tmp_path)
    return env


def test_strokect_app_runs_the_dashboard_with_studies_in_the_working_folder(
    environ: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.web import cli

    seen: list[list[str]] = []
    monkeypatch.setattr(cli, "main", lambda: seen.append(list(sys.argv)) or 0)
    monkeypatch.setattr(sys, "argv", ["strokect-app"])
    assert app.main(["--server.port", "9000"]) == 0
    (argv,) = seen
    assert argv[:3] == ["streamlit", "run", str(REPO / "app.py")]
    assert "--server.fileWatcherType" in argv and argv[-2:] == ["--server.port", "9000"]  # the user's options last
    assert environ["STROKECT_LEADERBOARDS"] == str(tmp_path / "leaderboards")
    assert environ["STROKECT_CACHE"] == str(tmp_path / ".cache")


def test_strokect_app_gradio_and_set_variables_win(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ui import gradio_app

    calls: list[dict] = []
    monkeypatch.setattr(gradio_app, "launch", lambda **kw: calls.append(kw))
    environ["STROKECT_LEADERBOARDS"] = "/srv/studies"
    assert app.main(["--gradio"]) == 0
    assert calls == [{"leaderboards_root": "/srv/studies"}]
