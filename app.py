"""StrokeCT AutoML entry point: one file serves both Hugging Face Space SDKs.

    streamlit run app.py   # the dashboard (leaderboard, curves, attributions, data, search, live tab)
    python app.py          # the Gradio live-prediction app alone (Gradio-SDK Space convention)

This module only dispatches; the apps live in ``ui/``.
"""
from __future__ import annotations


def _running_under_streamlit() -> bool:
    try:
        from streamlit import runtime
    except ImportError:  # pragma: no cover - streamlit is a runtime dependency
        return False
    return runtime.exists()


if _running_under_streamlit():
    from ui.dashboard import main

    main()
elif __name__ == "__main__":
    from ui.gradio_app import launch

    launch()
