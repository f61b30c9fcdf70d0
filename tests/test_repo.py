"""Repository-level checks: the README's two commands and CI agree, the layout exists."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)


def test_readme_starts_with_two_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    body = text.split("---", 2)[2] if text.startswith("---") else text
    first_blocks = re.findall(r"```bash\n(.+?)\n```", body, flags=re.S)[:2]
    assert len(first_blocks) == 2
    assert all("\n" not in block for block in first_blocks), "each setup command is one line"
    install_run, install_test = first_blocks
    assert install_run.startswith("pip install -r requirements.txt")
    assert install_test.startswith("pip install -r requirements-dev.txt")
    # nothing but prose and the title before the first command
    before = body.split("```bash", 1)[0]
    assert "```" not in before


def test_ci_runs_readme_test_command_verbatim() -> None:
    test_command = _readme_commands()[1]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_space_front_matter_points_at_app() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    front = text.split("---", 2)[1]
    fields = dict(line.split(":", 1) for line in front.strip().splitlines())
    assert fields["app_file"].strip() == "app.py"
    assert fields["sdk"].strip() in {"gradio", "streamlit"}
    for key in ("title", "emoji", "sdk_version", "pinned"):
        assert key in fields


def test_top_level_layout() -> None:
    for name in ("app.py", "automl", "models", "data", "leaderboards", "requirements.txt", "README.md", "tests",
                 "benchmarks", ".ci/run"):
        assert (REPO / name).exists(), name
