"""End to end in a real browser: headless Debian Chromium, driven by Playwright, against
``streamlit run app.py`` on a small study.

Checks: the leaderboard renders, switching to the ROC tab draws the ROC chart, and in the Live
prediction tab the embedded Gradio app turns an uploaded phantom image into a probability on
screen (the same as the predictor's). Screenshots go to ``screenshots/`` (git-ignored).

No browser is downloaded: Playwright's Python package drives the distribution's ``chromium``
(``executable_path``); the test is skipped, saying so, where either is missing.
"""
from __future__ import annotations

import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from tests.reliability import _support
from tools.demo_walkthrough import CHROMIUM_FLAGS, find_chromium  # the one Chromium lookup and flag set

pytestmark = pytest.mark.slow

SCREENSHOTS = _support.REPO_ROOT / "screenshots"
TIMEOUT_MS = 120_000


@pytest.fixture
def streamlit_app(smoke_study: Path, tmp_path: Path) -> tuple[str, Path]:
    """``streamlit run app.py`` on a copy of the smoke study; yields (url, study folder)."""
    root = tmp_path / "leaderboards"
    study_dir = root / smoke_study.name
    shutil.copytree(smoke_study, study_dir)
    port = _support.free_port()
    log = tmp_path / "streamlit.log"
    env = _support.subprocess_env(STROKECT_LEADERBOARDS=str(root), STROKECT_NO_AUTOSTART="1",
                                  GRADIO_TEMP_DIR=str(tmp_path / "gradio-tmp"),
                                  STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    proc = _support.start_module(
        "streamlit", ["run", "app.py", "--server.headless", "true", "--server.port", str(port),
                      "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
                      "--browser.gatherUsageStats", "false"], log_path=log, env=env)
    url = f"http://127.0.0.1:{port}/"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited:\n{_support.tail(log)}")
        with urllib.request.urlopen(url + "_stcore/health", timeout=5) as r:  # noqa: S310 - loopback
            return r.read().strip() == b"ok"

    try:
        _support.wait_until(healthy, timeout=120, interval=0.5, what="streamlit's health endpoint")
        yield url, study_dir
    finally:
        _support.stop_process(proc)
        if proc.returncode not in (0, -15, None):
            print(_support.tail(log))  # noqa: T201 - visible with -rA when the server misbehaved


def test_dashboard_in_a_real_browser(streamlit_app: tuple[str, Path]) -> None:
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium binary (apt-get install chromium; or set STROKECT_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    import models
    from automl import results

    url, study_dir = streamlit_app
    study = results.load_study(study_dir)
    best = study.best_model
    test = study.split[study.split["part"] == "test"]
    positive_rows = test[test["y"] == test["y"].max()]
    image = Path(study.config["data_dir"]) / positive_rows["path"].iloc[0]
    predictor = models.load_predictor(study.model_dir(best), device="cpu")
    probs = predictor.predict(image)["probabilities"]
    SCREENSHOTS.mkdir(exist_ok=True)
    shots = []
    t0 = time.monotonic()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url, wait_until="domcontentloaded")

            # 1. the leaderboard renders
            page.get_by_role("heading", name=re.compile(f"Study.*{study.name}")).wait_for()
            grid = page.locator('[data-testid="stDataFrame"]').first
            grid.wait_for(state="visible")
            box = grid.bounding_box()
            assert box and box["height"] > 50 and box["width"] > 200, f"leaderboard grid too small: {box}"
            page.locator(".js-plotly-plot").first.wait_for(state="visible")  # AUC by trial
            assert page.locator('[data-testid="stException"]').count() == 0, "a view raised an exception"
            shots.append(SCREENSHOTS / "dashboard_leaderboard.png")
            page.screenshot(path=str(shots[-1]), full_page=True)

            # 2. tab switch -> the ROC chart
            page.get_by_role("tab", name=re.compile("ROC")).click()
            roc = page.locator(".js-plotly-plot").filter(has_text="False positive rate").first
            roc.wait_for(state="visible")
            assert roc.locator("path.js-line").count() >= 1 or roc.locator(".scatterlayer .trace").count() >= 1, \
                "the ROC chart has no curve"
            assert page.locator('[data-testid="stException"]').count() == 0, "the ROC tab raised an exception"
            shots.append(SCREENSHOTS / "dashboard_roc.png")
            page.screenshot(path=str(shots[-1]), full_page=True)

            # 3. live prediction in the embedded Gradio app
            page.get_by_role("tab", name=re.compile("Live prediction")).click()
            page.locator("iframe").first.wait_for(state="attached")
            frame = page.frame_locator("iframe").first
            frame.locator('input[type="file"]').first.set_input_files(str(image))
            positive = study.classes[-1]
            percent = f"{round(100 * probs[positive])}%"
            bars = frame.locator('[data-testid$="-confidence-set"]').first  # the probability bars
            bars.wait_for(state="visible")
            # the headline: decision, probability and threshold together (or "the most probable class")
            frame.get_by_text(re.compile(r" — (P\(|the most probable)")).first.wait_for(state="visible")
            text = frame.locator("body").inner_text()
            assert percent in text, f"expected P({positive}) = {percent} on screen; the page shows:\n{text[:1500]}"
            assert "%" in text and positive in text
            try:  # let the overlay images arrive before the screenshot (not part of the check)
                frame.locator("img").last.wait_for(state="visible", timeout=15_000)
                page.wait_for_timeout(1000)
            except sync_api.TimeoutError:
                pass
            shots.append(SCREENSHOTS / "dashboard_live_prediction.png")
            page.screenshot(path=str(shots[-1]), full_page=True)
        finally:
            browser.close()

    _support.record(
        "test_dashboard_in_a_real_browser", "browser",
        what=f"headless Chromium ({Path(executable).name}) via Playwright on `streamlit run app.py`",
        outcome=f"leaderboard rendered, ROC tab drew its chart, uploaded {image.name} gave P({positive}) = "
                f"{percent} in the embedded Gradio app (predictor: {probs[positive]:.3f}); screenshots: "
                + ", ".join(p.name for p in shots),
        lost=0, seconds=round(time.monotonic() - t0, 1),
    )
