"""Issue 17's walkthrough (``python -m tools.demo_walkthrough``) on a smoke build, in a real browser.

The same functions as the full demo walkthrough, on ``--preset smoke`` (a 4-trial build of a
120-slice phantom, ~30 s) so that it fits CI: ``streamlit run app.py`` on an empty leaderboards
folder, the detached build started, the progress view opened in headless Chromium and the browser
closed mid-build; the build must finish without it. The reopened dashboard must show the leaderboard
(every architecture family of the preset, no WAITING trial), the verdict, the attribution view, the
embedded Gradio app's headline consistent with its bars, pictures >= 256 px with a colour bar and the
out-of-distribution warning on a natural photo. What only a trained demo can show (test AUC >= 0.85, a
lesion-hitting attribution) is recorded, not enforced. Screenshots: ``tests/_artifacts/walkthrough_smoke``.

Skipped, saying so, without Chromium or the playwright package.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import _support

pytestmark = pytest.mark.slow

OUT = _support.ARTIFACTS_DIR / "walkthrough_smoke"


def test_demo_walkthrough_on_a_smoke_build(tmp_path: Path, session_cache: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    from tools import demo_walkthrough as walkthrough

    if walkthrough.find_chromium() is None:
        pytest.skip("no Chromium binary (apt-get install chromium; or set STROKECT_CHROMIUM)")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = walkthrough.WalkConfig(leaderboards=tmp_path / "leaderboards", out=OUT, preset="smoke", close_after=0,
                                    build_timeout=300, attribution_eval=False, cache=session_cache,
                                    timeout_ms=120_000)
    walk = walkthrough.run_walkthrough(config)

    checks = {c.name: c for c in walk.checks}
    assert walk.passed, "failed checks:\n" + walk.table()
    for name in ("tab closed mid-build", "build finished without a browser", "every architecture family",
                 "no WAITING/RUNNING trial", "verdict sentence shown", "consistent Gradio headline",
                 "pictures >= 256 px with a colour bar", "OOD warning on a natural photo"):
        assert checks[name].passed is True, f"{name}: {checks[name]}"
    assert (OUT / "walkthrough.json").is_file()
    assert all(Path(p).is_file() for p in walk.screenshots) and len(walk.screenshots) >= 5
    _support.record(
        "test_demo_walkthrough_on_a_smoke_build", "browser",
        what="issue 17 walkthrough (smoke build) in headless Chromium",
        outcome=f"tab closed with {walk.figures['closed_at']['n_finished']} trials done, build finished in "
                f"{walk.figures['build_wall_s']} s without a browser; headline {walk.figures['live']['headline']!r}; "
                f"OOD distance {walk.figures['ood']['distance']} > {walk.figures['ood']['threshold']}",
        lost=0, seconds=walk.figures["seconds"],
    )
