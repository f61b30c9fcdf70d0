"""StrokeCT AutoML entry point: one file serves both Hugging Face Space SDKs.

    streamlit run app.py   # the dashboard (leaderboard, curves, attributions, data, search, live tab)
    python app.py          # the Gradio live-prediction app alone (Gradio-SDK Space convention)
    strokect-app           # installed console script: the dashboard (extra options go to `streamlit run`)
    strokect-app --gradio  # installed console script: the Gradio app alone

This module only dispatches; the apps live in ``ui/``.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _running_under_streamlit() -> bool:
    try:
        from streamlit import runtime
    except ImportError:  # pragma: no cover - streamlit is a runtime dependency
        return False
    return runtime.exists()


def _serve_gradio() -> None:
    from ui.gradio_app import DEFAULT_LEADERBOARDS, launch

    launch(leaderboards_root=os.environ.get("STROKECT_LEADERBOARDS") or DEFAULT_LEADERBOARDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``strokect-app``: ``streamlit run`` this file, or with ``--gradio`` the Gradio app alone.

    An installed package has no checkout to keep studies in, so studies and caches default to
    ``leaderboards/`` and ``.cache/`` of the working folder (``strokect-search --out`` defaults to the
    same ``leaderboards/``); ``STROKECT_LEADERBOARDS`` and ``STROKECT_CACHE`` still win. Streamlit's
    file watcher is off (installed code does not change, and watching site-packages is costly).

    Args:
        argv: Options after the command name (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    cwd = Path.cwd()
    os.environ.setdefault("STROKECT_LEADERBOARDS", str(cwd / "leaderboards"))
    os.environ.setdefault("STROKECT_CACHE", str(cwd / ".cache"))
    if "--gradio" in args:
        _serve_gradio()
        return 0
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(Path(__file__).resolve()), "--server.fileWatcherType", "none",
                "--browser.gatherUsageStats", "false", *args]
    return cli.main()


if _running_under_streamlit():
    from ui.dashboard import main as _dashboard

    _dashboard()
elif __name__ == "__main__":
    _serve_gradio()
