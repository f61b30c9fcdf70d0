"""The "Done when" walkthrough of issue 17, in a real headless browser (Playwright + the distribution's Chromium).

    python -m tools.demo_walkthrough --leaderboards /tmp/walk --out tests/_artifacts/walkthrough
    python -m tools.demo_walkthrough --leaderboards /tmp/walk-smoke --out /tmp/walk-smoke-out --preset smoke
    python -m tools.demo_walkthrough --leaderboards /tmp/walk --out /tmp/recheck --existing   # no build: re-check
    python -m tools.demo_walkthrough --leaderboards /tmp/walk2 --cache /tmp/fresh-cache       # fresh-clone caches

What it does, on an empty ``--leaderboards`` folder (a fresh clone has no study):

1. ``streamlit run app.py`` headless on a free loopback port with ``STROKECT_LEADERBOARDS`` set to that
   folder. With ``--preset demo`` the dashboard starts the demo build itself (:mod:`automl.background`);
   with another preset the walkthrough starts the same detached build (``start_search``, study ``demo``)
   before opening the page, so the dashboard shows its progress. Chromium opens the page, the progress
   view is screenshotted, and the browser is **closed mid-build** (once ``--close-after`` trials are
   done). The build is then watched through :func:`automl.background.build_status` only, with no
   browser, until it finishes; its wall time is recorded.
2. The dashboard is reopened and checked: the leaderboard (every architecture family of the preset's
   models on it, no WAITING/RUNNING trial, also in the Optuna storage), the verdict sentence and the
   best model's test AUC (read from ``leaderboard.csv``, found on the page), the attribution of a
   lesion slice of the test part (the pointing game on the page; ``python -m automl.attribution_eval``
   for the test part's lesion images), the live tab's embedded Gradio app: a test-part lesion slice
   (pictures >= 256 px, a colour bar in the attribution picture, the headline "<Class> — P(<Class>) x
   ≥/< threshold y" consistent with the bars and with the predictor) and an off-distribution photo
   (the out-of-distribution warning of :func:`ui.gradio_app.ood_markdown`).
3. Screenshots and ``walkthrough.json`` (every measured figure, the CPU and the load average) go to
   ``--out``; a table of the checks is printed. Exit status 0 only when every check passed.

The demo-only checks (``--min-auc``, default 0.85 for ``--preset demo``) are skipped for other presets.
``tests/reliability/test_demo_walkthrough.py`` runs the same functions on a smoke build.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Check", "WalkConfig", "Walkthrough", "find_chromium", "main", "run_walkthrough"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
STUDY = "demo"  # the dashboard builds and shows the study of this name
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 1000}
BOARD_VIEWPORT = {"width": 1400, "height": 1600}  # verdict, audit, the leaderboard grid and its chart in one picture
LIVE_VIEWPORT = {"width": 1400, "height": 2000}  # the embedded app (1600 px) whole: its pictures load lazily
HEADLINE = re.compile(r"(?P<decision>\S.*?) — P\((?P<positive>[^)]+)\) (?P<p>\d+\.\d+) (?P<relation>≥|<) "
                      r"threshold (?P<t>\d+\.\d+)")
OOD_WARNING = "This scan is unlike the images the model was trained on"
OOD_NUMBERS = re.compile(r"distance (?P<d>[-\d.]+) (?P<rel>>|≤) (?P<t>[-\d.]+)")


# ============================================================================================ config
@dataclass
class WalkConfig:
    """One walkthrough run.

    Attributes:
        leaderboards: An empty (or missing) folder: the study ``demo`` is built into it.
        out: Folder of the screenshots and ``walkthrough.json``.
        preset: The build's preset. ``demo``: the dashboard starts the build itself.
        min_auc: The best model's test AUC must reach this (``None``: not checked; default 0.85 for demo).
        close_after: Close the browser once this many trials are finished (0: as soon as the progress shows).
        build_timeout: Seconds to wait for the detached build.
        attribution_eval: Run ``python -m automl.attribution_eval`` on the best deep model.
        quality_checks: Enforce what only a trained demo can show (AUC, lesion hits); default: demo preset.
        existing: Check the study already in ``leaderboards`` (skip the build and the closed tab).
        chromium: The Chromium binary (default: :func:`find_chromium`).
        cache: ``STROKECT_CACHE`` of the dashboard and its build (``None``: this environment's).
        timeout_ms: Playwright's default timeout.
    """

    leaderboards: Path
    out: Path
    preset: str = "demo"
    min_auc: float | None = None
    close_after: int = 3
    build_timeout: float = 1800.0
    attribution_eval: bool = True
    quality_checks: bool | None = None
    existing: bool = False
    chromium: str | None = None
    cache: Path | None = None
    timeout_ms: int = 180_000

    def __post_init__(self) -> None:
        self.leaderboards = Path(self.leaderboards).expanduser().resolve()
        self.out = Path(self.out).expanduser().resolve()
        if self.quality_checks is None:
            self.quality_checks = self.preset == "demo"
        if self.min_auc is None and self.quality_checks:
            self.min_auc = 0.85
        if self.close_after < 0:
            raise ValueError(f"--close-after must be >= 0, got {self.close_after}")
        if self.existing:
            if not (self.study_dir / "leaderboard.csv").is_file():
                raise ValueError(f"--existing: no finished study at {self.study_dir}")
        elif self.leaderboards.exists() and any(self.leaderboards.iterdir()):
            raise ValueError(f"--leaderboards {self.leaderboards} is not empty: the walkthrough needs a fresh folder")

    @property
    def study_dir(self) -> Path:
        return self.leaderboards / STUDY


@dataclass
class Check:
    """One check of the walkthrough: its name, whether it passed, and what was measured."""

    name: str
    passed: bool | None  # None: not applicable to this preset
    detail: str = ""


@dataclass
class Walkthrough:
    """Everything measured (written as ``walkthrough.json``)."""

    config: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    screenshots: list[str] = field(default_factory=list)

    def quality(self, enforced: bool, name: str, passed: bool | None, detail: str = "") -> bool:
        """A check only a trained demo can pass: recorded as n/a (with its figures) when not enforced."""
        return self.check(name, passed if enforced else None, detail + ("" if enforced else " (not enforced)"))

    def check(self, name: str, passed: bool | None, detail: str = "") -> bool:
        self.checks.append(Check(name, None if passed is None else bool(passed), detail))
        logger.info("check %-34s %s %s", name, {True: "PASS", False: "FAIL", None: "n/a"}[passed], detail)
        return bool(passed)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed is not False for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "config": self.config, "figures": self.figures,
                "checks": [asdict(c) for c in self.checks], "screenshots": self.screenshots}

    def table(self) -> str:
        width = max([len(c.name) for c in self.checks] + [5])
        rows = [f"{'check'.ljust(width)}  result  detail", f"{'-' * width}  ------  ------"]
        for c in self.checks:
            result = {True: "PASS", False: "FAIL", None: "n/a"}[c.passed]
            rows.append(f"{c.name.ljust(width)}  {result:<6}  {c.detail}")
        return "\n".join(rows)


# ============================================================================================ helpers
def find_chromium() -> str | None:
    """The distribution's Chromium (``$STROKECT_CHROMIUM``, ``chromium``, ``chromium-browser``), or None."""
    for candidate in (os.environ.get("STROKECT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; return it, or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def machine() -> dict[str, Any]:
    """The CPU model (``lscpu``), the cores and the load average right now."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        found = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE)
        if found:
            model = found.group(1).strip()
    return {"cpu": model, "cpu_count": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no log at {path})"


@contextlib.contextmanager
def dashboard(leaderboards: Path, log: Path, *, extra_env: dict[str, str] | None = None) -> Any:
    """``streamlit run app.py`` headless on a free loopback port; yields its URL, stops it afterwards.

    Only the server is stopped at the end: a build it started runs in its own session and survives.
    """
    port = free_port()
    env = dict(os.environ)
    env.update({"STROKECT_LEADERBOARDS": str(leaderboards), "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
                "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))})
    env.pop("STROKECT_NO_AUTOSTART", None)
    env.update(extra_env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}/"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited ({proc.returncode}):\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url + "_stcore/health", timeout=5) as r:
                return r.read().strip() == b"ok"
        except OSError:
            return False

    try:
        wait_until(healthy, timeout=180, what="streamlit's health endpoint")
        yield url
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        handle.close()


def _launch(pw: Any, config: WalkConfig) -> Any:
    executable = config.chromium or find_chromium()
    if executable is None:
        raise RuntimeError("no Chromium binary (apt-get install chromium, or `bash tools/ci_services.sh`)")
    return pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)


def _open_page(browser: Any, url: str, viewport: dict[str, int], config: WalkConfig) -> Any:
    """A new page of ``browser`` at ``url`` with the walkthrough's timeout."""
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(config.timeout_ms)
    page.goto(url, wait_until="domcontentloaded")
    return page


def _shot(walk: Walkthrough, page: Any, out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    walk.screenshots.append(str(path))
    return path


def _no_exception(page: Any) -> bool:
    return page.locator('[data-testid="stException"]').count() == 0


# ============================================================================================ step 1: build
def build_while_closing_the_tab(walk: Walkthrough, config: WalkConfig, url: str) -> None:
    """Open the dashboard on the empty folder, screenshot the progress, close the browser mid-build, wait."""
    from playwright.sync_api import sync_playwright

    from automl.background import build_status

    study_dir = config.study_dir
    t_open = time.monotonic()
    with sync_playwright() as pw:
        browser = _launch(pw, config)
        try:
            page = _open_page(browser, url, VIEWPORT, config)
            progress = page.get_by_text(re.compile("Building the demo study in the background"))
            progress.first.wait_for(state="visible")
            walk.figures["progress_seen_after_s"] = round(time.monotonic() - t_open, 1)
            # close once `close_after` trials are done (or the plan is smaller), while the build still runs
            status = wait_until(lambda: _build_status_if(study_dir, lambda s: s.state != "running" or s.n_finished
                                                         >= min(config.close_after, s.n_planned or config.close_after)),
                                timeout=config.build_timeout, interval=1.0, what=f"{config.close_after} finished trials")
            with contextlib.suppress(Exception):  # let the 3-s fragment show the new count before the screenshot
                page.get_by_text(re.compile(rf"building: {status.n_finished} of")).first.wait_for(timeout=10_000)
            _shot(walk, page, config.out, "01_build_progress")
            status = build_status(study_dir)
            page.close()
        finally:
            browser.close()
    closed_state = status.state
    walk.figures["closed_at"] = {"state": closed_state, "n_finished": status.n_finished,
                                 "n_planned": status.n_planned, "pid": status.pid}
    walk.check("tab closed mid-build", closed_state == "running" and not (study_dir / "leaderboard.csv").is_file(),
               f"browser closed with {status.n_finished} of {status.n_planned} trials finished, build {closed_state}")
    walk.figures["closed_mid_build"] = closed_state == "running"

    t0 = time.monotonic()
    final = wait_until(lambda: _build_status_if(study_dir, lambda s: s.state != "running"),
                       timeout=config.build_timeout, interval=2.0, what="the detached build to finish")
    record = json.loads((study_dir / ".build.json").read_text(encoding="utf-8"))
    wall = _build_wall_seconds(record)
    walk.figures.update(finished=final.state == "finished", build_state=final.state,
                        build_wall_s=wall, build_waited_after_close_s=round(time.monotonic() - t0, 1),
                        build_record={k: record.get(k) for k in ("pid", "started", "ended", "exit_code")})
    walk.check("build finished without a browser", final.state == "finished" and record.get("exit_code") == 0,
               f"state {final.state}, exit code {record.get('exit_code')}, wall {wall} s "
               f"({final.n_finished} of {final.n_planned} trials)")


def _build_status_if(study_dir: Path, accept: Callable[[Any], bool]) -> Any:
    """The build's :class:`automl.background.BuildStatus` when ``accept`` takes it, else None (for polling)."""
    from automl.background import build_status

    status = build_status(study_dir)
    return status if accept(status) else None


def _build_wall_seconds(record: dict[str, Any]) -> float | None:
    from datetime import datetime

    try:
        start = datetime.strptime(record["started"], "%Y-%m-%dT%H:%M:%S%z")
        end = datetime.strptime(record["ended"], "%Y-%m-%dT%H:%M:%S%z")
    except (KeyError, TypeError, ValueError):
        return None
    return (end - start).total_seconds()


# ============================================================================================ step 2: files
def study_figures(walk: Walkthrough, config: WalkConfig) -> dict[str, Any]:
    """What the study files say: families, trial states, the best model and its test AUC."""
    from optuna.trial import TrialState

    import models as model_zoo
    from automl import results
    from automl.config import PRESETS

    study = results.load_study(config.study_dir)
    board = study.leaderboard
    planned = list(PRESETS[config.preset]["models"] or study.config.get("models") or [])
    family = {m: model_zoo.get_model_info(m).family for m in planned}
    on_board = sorted(set(board["model"].astype(str)))
    families_expected = sorted(set(family.values()))
    families_seen = sorted({model_zoo.get_model_info(m).family for m in on_board if m in model_zoo.list_models()})
    states = board["state"].astype(str).value_counts().to_dict() if "state" in board else {}
    optuna_states = {}
    with contextlib.suppress(results.StudyError):
        trials = study.load_optuna_study().get_trials(deepcopy=False)
        optuna_states = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    waiting = int(states.get("WAITING", 0)) + int(optuna_states.get("WAITING", 0))
    running = int(states.get("RUNNING", 0)) + int(optuna_states.get("RUNNING", 0))
    walk.figures.update(models_planned=planned, models_on_leaderboard=on_board, families_expected=families_expected,
                        families_seen=families_seen, trial_states_leaderboard=states, trial_states_optuna=optuna_states,
                        waiting=waiting, running=running)
    walk.check("every architecture family", set(families_expected) <= set(families_seen),
               f"expected {families_expected}, on the leaderboard {families_seen}"
               + (f"; models missing: {sorted(set(planned) - set(on_board))}" if set(planned) - set(on_board) else ""))
    walk.check("no WAITING/RUNNING trial", waiting == 0 and running == 0,
               f"leaderboard {states}, Optuna {optuna_states}")

    best = study.best_model
    row = study.refit_row(best) if best else None
    auc = float(row["test_auc"]) if row is not None and "test_auc" in row and np.isfinite(row["test_auc"]) else None
    ci = [float(row.get("test_auc_ci_low")), float(row.get("test_auc_ci_high"))] if row is not None else None
    deep = [m for m in study.refitted_models() if study.card(m).get("kind", "deep") == "deep"]
    walk.figures.update(best_model=best, best_test_auc=auc, best_test_auc_ci=ci, verdict=study.verdict,
                        refitted_models=study.refitted_models(), best_deep_model=deep[0] if deep else None,
                        threshold=float(study.threshold(best)) if best else None, classes=study.classes)
    if config.min_auc is not None:
        walk.check(f"best test AUC >= {config.min_auc}", auc is not None and auc >= config.min_auc,
                   f"{best}: test AUC {auc if auc is None else f'{auc:.3f}'} "
                   f"(95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci and auc is not None else f"{best}: {auc}")
    else:
        walk.check("best test AUC >= min", None, f"{best}: test AUC "
                   f"{'n/a' if auc is None else f'{auc:.3f}'} (not checked for preset {config.preset})")
    return {"study": study, "deep": deep}


def lesion_slice(study: Any, model: str) -> dict[str, Any]:
    """The test-part lesion slice the model is surest of (highest P(positive) among masked Stroke slices)."""
    from data.phantom import load_mask

    frame = study.test_predictions(model)
    positive = study.classes[-1]
    frame = frame[frame["y"] == len(study.classes) - 1].sort_values(f"prob_{positive}", ascending=False)
    for rel, p in zip(frame["path"].astype(str), frame[f"prob_{positive}"]):
        mask = load_mask(study.data_dir, rel)
        if mask is not None and mask.any():
            return {"path": rel, "file": str(Path(study.data_dir) / rel), f"p_{positive}": float(p),
                    "lesion_pixels": int(mask.sum())}
    raise ValueError(f"no lesion slice with a mask in the test part of {study.name}")


#: The issue's bar for the best model's attribution: the pointing game on the test part's lesion slices.
MIN_POINTING = 0.5


def offered_method(study_dir: Path, model: str) -> str:
    """The attribution method the product offers first for ``model`` (``models.attribution.applicable_methods``)."""
    from automl import results
    from models.attribution import applicable_methods

    card = results.load_study(study_dir).card(model)
    methods = applicable_methods(str(card.get("model", model)), image_size=card.get("image_size"))
    return methods[0] if methods else "grad_cam"


def run_attribution_eval(walk: Walkthrough, config: WalkConfig, model: str | None) -> None:
    """``python -m automl.attribution_eval`` on ``model`` (Grad-CAM and the method the product offers first);
    the offered method's pointing game is checked against :data:`MIN_POINTING` and random maps.

    The model-randomisation sanity check runs on 4 images; when it fails the command is run again
    without it (``--sanity-images 0``) and the failure is recorded, so the pointing game is still measured.
    """
    if not config.attribution_eval or model is None:
        walk.check("pointing game (test part)", None, "not run" if model else "no deep model")
        return
    import pandas as pd

    method = offered_method(config.study_dir, model)  # what the dashboard and the live app show first
    methods = sorted({"grad_cam", method})
    base = [sys.executable, "-m", "automl.attribution_eval", "--study", STUDY, "--leaderboards",
            str(config.leaderboards), "--methods", *methods, "--models", model, "--max-images", "24"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if config.cache:
        env["STROKECT_CACHE"] = str(config.cache)
    t0 = time.monotonic()
    failures = []
    for sanity in ("4", "0"):
        command = [*base, "--sanity-images", sanity]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, check=False,
                              env=env)
        if done.returncode == 0:
            break
        failures.append({"command": " ".join(command[1:]), "exit": done.returncode,
                         "error": (done.stderr.strip().splitlines() or ["?"])[-1]})
    csv = config.study_dir / "attribution.csv"
    record: dict[str, Any] = {"command": " ".join(command[1:]), "failures": failures,
                              "seconds": round(time.monotonic() - t0, 1)}
    walk.figures["attribution_eval"] = record
    if done.returncode != 0 or not csv.is_file():
        walk.check("pointing game (test part)", False, f"attribution_eval failed: {failures[-1]['error']}")
        return
    frame = pd.read_csv(csv)
    record["rows"] = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
                      for row in frame.to_dict("records")]
    rows = frame[(frame["model"] == model) & (frame["method"] == method)] if "method" in frame else frame[
        frame["model"] == model]
    if rows.empty:
        walk.check("pointing game (test part)", False, f"no attribution.csv row for {model} / {method}")
        return
    row = rows.iloc[0]
    hits = [f"{r.model} {getattr(r, 'method', '')}".strip()
            for r in frame[frame["pointing_game"] > frame["random_pointing"]].itertuples()]
    walk.quality(config.quality_checks, "pointing game (test part)",
                 row["pointing_game"] >= MIN_POINTING and row["pointing_game"] > row["random_pointing"],
                 f"{model} {method} (the method offered first): pointing game {row['pointing_game']:.2f} "
                 f"(target >= {MIN_POINTING}) vs random {row['random_pointing']:.2f}, "
                 f"mass in lesion {row['mass_in_mask']:.2f} vs random {row['random_mass']:.2f} (n = {int(row['n'])}); "
                 f"models above random: {hits or 'none'}"
                 + (f"; sanity check failed ({failures[0]['error'][:90]}), measured without it" if failures else ""))


# ============================================================================================ step 2: page
def check_dashboard(walk: Walkthrough, config: WalkConfig, url: str, study: Any, deep: list[str]) -> None:
    """Reopen the dashboard: leaderboard, verdict + test AUC, attribution of a lesion slice, live tab."""
    from playwright.sync_api import sync_playwright

    out = config.out
    best = walk.figures["best_model"]
    auc = walk.figures["best_test_auc"]
    with sync_playwright() as pw:
        browser = _launch(pw, config)
        try:
            page = _open_page(browser, url, BOARD_VIEWPORT, config)
            page.get_by_role("heading", name=re.compile(f"Study.*{STUDY}")).wait_for()
            page.locator('[data-testid="stDataFrame"]').first.wait_for(state="visible")
            page.locator(".js-plotly-plot").first.wait_for(state="visible")
            page.wait_for_timeout(1500)
            _shot(walk, page, out, "02_leaderboard")
            _check_leaderboard_page(walk, page, study)
            _check_attribution_page(walk, page, study, deep, out)
            _check_live_page(walk, page, study, out, best, auc)
        except Exception:
            with contextlib.suppress(Exception):
                _shot(walk, page, out, "99_failure")
            raise
        finally:
            browser.close()


def _check_leaderboard_page(walk: Walkthrough, page: Any, study: Any) -> None:
    main = page.locator('[data-testid="stMain"]')
    text = main.inner_text()
    verdict = walk.figures.get("verdict") or ""
    shown = bool(verdict) and " ".join(verdict.split()) in " ".join(text.split())
    walk.figures["verdict_on_page"] = shown
    walk.check("verdict sentence shown", shown, verdict[:160])
    # the leaderboard grid draws on a canvas: its model names are read through the sidebar's model list
    # (the refitted best of each architecture) and the AUC-by-trial chart's legend
    chart = page.locator(".js-plotly-plot").first.inner_text()
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text("Model", exact=True)).locator(
        "input").first.click()
    options = [o.strip() for o in page.get_by_role("option").all_inner_texts()]
    page.keyboard.press("Escape")
    on_page = sorted(m for m in walk.figures["models_on_leaderboard"] if m in chart or m in options)
    walk.figures["models_on_page"] = on_page
    walk.figures["model_picker_options"] = options
    missing = sorted(set(walk.figures["models_on_leaderboard"]) - set(on_page))
    walk.check("leaderboard models on the page", not missing and _no_exception(page),
               f"{len(on_page)} models in the chart/picker" + (f"; missing {missing}" if missing else ""))


def _select_option(page: Any, label: str, text: str) -> None:
    box = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]').filter(
        has=page.get_by_text(label, exact=True)).first
    box.locator("input").first.click()
    page.keyboard.type(text)
    page.get_by_role("option").filter(has_text=text).first.click()


def _check_attribution_page(walk: Walkthrough, page: Any, study: Any, deep: list[str], out: Path) -> None:
    page.get_by_role("tab", name=re.compile("Attributions")).click()
    model = explained_model(study, deep)
    slice_ = lesion_slice(study, model)
    walk.figures["attribution_slice"] = {"model": model, **slice_}
    figure = page.locator(".js-plotly-plot").filter(has_text="original").first
    figure.wait_for(state="visible")
    _select_option(page, "Image", slice_["path"])
    figure = page.locator(".js-plotly-plot").filter(has_text=slice_["path"]).filter(has_text="pointing").first
    figure.wait_for(state="visible")
    page.wait_for_timeout(1000)
    text = figure.inner_text()
    found = re.search(r"(\w+)\s*pointing (\d+) · mass in lesion (\d+)%", text)
    colour_bar = figure.locator(".colorbar").count()
    walk.figures["attribution_on_page"] = {"method": found.group(1) if found else None,
                                           "pointing": int(found.group(2)) if found else None,
                                           "mass_in_lesion_pct": int(found.group(3)) if found else None,
                                           "colour_bars": colour_bar}
    _shot(walk, page, out, "03_attribution_lesion")
    walk.quality(walk.config["quality_checks"], "lesion-hitting attribution", bool(found) and found.group(2) == "1" and colour_bar >= 1
               and _no_exception(page),
               f"{model} on {slice_['path']}: " + (f"{found.group(1)} pointing {found.group(2)}, mass in lesion "
                                                  f"{found.group(3)}%" if found else "no score on the page")
               + f", {colour_bar} colour bar(s)")


def _bars(frame: Any) -> dict[str, float]:
    """The gr.Label's bars: ``{label: percent}``."""
    out = {}
    for item in frame.locator('[data-testid$="-confidence-set"]').all():
        parts = [p.strip() for p in item.inner_text().splitlines() if p.strip()]
        if len(parts) >= 2 and parts[-1].endswith("%"):
            out[" ".join(parts[:-1])] = float(parts[-1].rstrip("%"))
    return out


def _image_facts(page: Any, img: Any) -> dict[str, Any]:
    """Natural size of an <img> and whether its pixels hold a colour bar (a tall strip of many colours)."""
    facts = img.evaluate("e => ({w: e.naturalWidth, h: e.naturalHeight, src: e.currentSrc || e.src})")
    src = facts.pop("src")
    data = None
    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        response = page.request.get(src)
        if response.ok:
            data = response.body()
    facts["colour_bar"] = _has_colour_bar(data) if data else None
    return facts


def _has_colour_bar(data: bytes) -> dict[str, int] | None:
    """A vertical strip >= 8 px wide and >= 200 px tall whose rows are constant across it and hold >= 100
    distinct saturated colours (what :func:`models.attribution.render_overlay` draws right of the picture)."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    w = rgb.shape[1]
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    best = None
    for x in range(w // 2, w - 8):
        column = rgb[:, x]
        rows = saturation[:, x] > 60
        if rows.sum() < 200:
            continue
        same = np.all(rgb[:, x:x + 8] == column[:, None], axis=(1, 2)) & rows
        if same.sum() < 200:
            continue
        distinct = len({tuple(c) for c in column[same]})
        if distinct >= 100 and (best is None or distinct > best["distinct_colours"]):
            best = {"x": int(x), "height": int(same.sum()), "distinct_colours": int(distinct)}
    return best


def _natural_photo(path: Path) -> Path:
    """An off-distribution picture: a colourful 300x200 JPEG (gradients and a checkerboard), no CT at all."""
    from PIL import Image

    y, x = np.mgrid[0:200, 0:300]
    rgb = np.stack([x / 299 * 255, y / 199 * 255, ((x // 25 + y // 25) % 2) * 200 + 30], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path, quality=92)
    return path


def _analyze(page: Any, frame: Any, file: str | Path, *, pictures: int, expect: str = "Input: ",
             timeout_s: float = 180) -> dict[str, Any]:
    """Upload ``file`` into the embedded Gradio app; wait for the headline, the bars and ``pictures`` pictures."""
    clear = frame.get_by_role("button", name="Clear", exact=True)
    if clear.count():
        clear.first.click()
    frame.locator('input[type="file"]').first.set_input_files(str(file))
    return _wait_for_answer(page, frame, Path(file).name, pictures=pictures, expect=expect, timeout_s=timeout_s)


def _wait_for_answer(page: Any, frame: Any, name: str, *, pictures: int, expect: str,
                     timeout_s: float) -> dict[str, Any]:
    images = frame.locator('img[src*="/file="]')

    def ready() -> bool:
        body = frame.locator("body").inner_text()
        for i in range(images.count()):
            with contextlib.suppress(Exception):
                images.nth(i).scroll_into_view_if_needed(timeout=2000)
        return (" ".join(expect.split()) in " ".join(body.split()) and frame.locator("h2").filter(has_text=" — ").count() > 0
                and images.count() >= pictures
                and all(images.nth(i).evaluate("e => e.complete && e.naturalWidth > 0") for i in range(images.count())))

    wait_until(ready, timeout=timeout_s, interval=1.0, what=f"the Gradio answer for {name}")
    page.wait_for_timeout(1500)
    return {"headline": frame.locator("h2").filter(has_text=" — ").first.inner_text().strip(), "bars": _bars(frame),
            "body": frame.locator("body").inner_text(), "images": [images.nth(i) for i in range(images.count())]}


def explained_model(study: Any, deep: list[str]) -> str | None:
    """The model the dashboard's attribution tab explains: the best one, or the best deep one after a
    classical best (``ui.dashboard.attributions_ui``)."""
    best = study.best_model
    if best is not None and _has_attributions(study, best):
        return best
    return deep[0] if deep else None


def _has_attributions(study: Any, model: str) -> bool:
    from models.attribution import applicable_methods

    return study.card(model).get("kind") != "classical" and bool(applicable_methods(str(study.card(model).get("model", model))))


def _check_live_page(walk: Walkthrough, page: Any, study: Any, out: Path, best: str, auc: float | None) -> None:
    import models as model_zoo
    from ui.gradio_app import decide

    page.set_viewport_size(LIVE_VIEWPORT)
    page.get_by_role("tab", name=re.compile("Live prediction")).click()
    page.locator("iframe").first.wait_for(state="attached")
    frame = page.frame_locator("iframe").first
    frame.locator('input[type="file"]').first.wait_for(state="attached")
    slice_ = lesion_slice(study, best)
    predictor = model_zoo.load_predictor(study.model_dir(best), device="cpu")
    probs = {k: float(v) for k, v in predictor.predict(slice_["file"])["probabilities"].items()}
    classes = study.classes
    positive = classes[-1]
    threshold = float(study.threshold(best))

    # 1. a test-part lesion slice with the default model (the leaderboard best)
    answer = _analyze(page, frame, slice_["file"], pictures=2 if _has_attributions(study, best) else 1)
    headline, bars, body = answer["headline"], answer["bars"], answer["body"]
    _shot(walk, page, out, "04_live_lesion_slice")
    parsed = HEADLINE.search(headline)
    consistent = False
    if parsed and len(classes) == 2:
        p, t = float(parsed["p"]), float(parsed["t"])
        decision = parsed["decision"].strip()
        bar_p = bars.get(positive)
        bar_t = bars.get(f"decision threshold on P({positive})")
        consistent = (decision == (positive if p >= t else classes[0])          # decision = P >= threshold
                      and (parsed["relation"] == "≥") == (p >= t)
                      and decision == decide(classes, probs, threshold)       # the predictor agrees
                      and abs(p - probs[positive]) < 0.01 and abs(t - threshold) < 0.01
                      and bar_p is not None and abs(bar_p - 100 * p) <= 1.0
                      and bar_t is not None and abs(bar_t - 100 * t) <= 1.0)
    like = re.search(r"Like the training images: distance ([\d.]+) ≤ ([\d.]+)", body)
    walk.figures["live"] = {"file": slice_["path"], "model": best, "headline": headline, "bars_percent": bars,
                            "predictor_probabilities": probs, "threshold": threshold,
                            "ood_line": like.group(0) if like else None}
    walk.check("consistent Gradio headline", consistent,
               f"{headline!r}; bars {bars}; predictor P({positive}) {probs[positive]:.3f}, threshold {threshold:.3f}")
    auc_text = None if auc is None else f"test AUC {auc:.2f}"
    walk.figures["test_auc_text_on_page"] = auc_text if auc_text and auc_text in body else None
    walk.check("best test AUC shown on the page", auc_text is not None and auc_text in body,
               f"{auc_text!r} in the live decision panel of {best}")

    # 2. the pictures: the best model's, or (a classical best has no attribution) the best deep model's
    images, shown_model = answer["images"], best
    deep = walk.figures.get("best_deep_model")
    if not _has_attributions(study, best) and deep:
        frame.get_by_label(re.compile("^Model")).first.click()
        frame.get_by_role("option", name=deep, exact=True).first.click()
        page.wait_for_timeout(1000)
        frame.get_by_role("button", name="Predict", exact=True).first.click()
        page.wait_for_timeout(2000)
        answer = _wait_for_answer(page, frame, slice_["path"], pictures=2, expect=f"Model {deep}, input",
                                  timeout_s=180)
        images, shown_model = answer["images"], deep
        _shot(walk, page, out, "04b_live_lesion_slice_deep_model")
    sizes = [_image_facts(page, img) for img in images]
    walk.figures["pictures"] = {"model": shown_model, "images": sizes}
    big = len(sizes) >= 2 and all(min(s["w"], s["h"]) >= 256 for s in sizes)
    bar = any(s.get("colour_bar") for s in sizes)
    walk.check("pictures >= 256 px with a colour bar", big and bar,
               f"{shown_model}: " + "; ".join(f"{s['w']}x{s['h']}" + (
                   f" with a colour bar ({s['colour_bar']['height']} px, {s['colour_bar']['distinct_colours']} "
                   "colours)" if s.get("colour_bar") else "") for s in sizes))

    # 3. an off-distribution upload: a natural photo, with the default model again
    if shown_model != best:
        frame.get_by_label(re.compile("^Model")).first.click()
        frame.get_by_role("option", name=best, exact=True).first.click()
        page.wait_for_timeout(1000)
    photo = _natural_photo(out / "ood_photo.jpg")
    answer = _analyze(page, frame, photo, pictures=1, expect="Input: JPEG 300×200")
    text = answer["body"]
    found = re.search(re.escape(OOD_WARNING) + r".*?\)", text, re.DOTALL)
    numbers = OOD_NUMBERS.search(found.group(0) if found else text)
    _shot(walk, page, out, "05_live_ood_photo")
    walk.figures["ood"] = {"file": str(photo), "model": best, "headline": answer["headline"],
                           "text": found.group(0) if found else text[:300],
                           "distance": float(numbers["d"]) if numbers else None,
                           "threshold": float(numbers["t"]) if numbers else None}
    walk.check("OOD warning on a natural photo", bool(found) and bool(numbers) and numbers["rel"] == ">",
               f"{best}: distance {numbers['d']} {numbers['rel']} {numbers['t']}" if numbers else text[:200])


# ============================================================================================ run
@contextlib.contextmanager
def _env(values: dict[str, str]) -> Any:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_walkthrough(config: WalkConfig) -> Walkthrough:
    """Run the whole walkthrough (build, close, wait, reopen, check); write ``walkthrough.json``."""
    config.out.mkdir(parents=True, exist_ok=True)
    config.leaderboards.mkdir(parents=True, exist_ok=True)
    walk = Walkthrough(config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()})
    walk.figures["machine_start"] = machine()
    t0 = time.monotonic()
    log = config.out / "streamlit.log"
    try:
        extra = {"STROKECT_CACHE": str(config.cache)} if config.cache else {}
        walk.figures["cache"] = str(config.cache) if config.cache else None
        with dashboard(config.leaderboards, log, extra_env=extra) as url:
            if config.preset != "demo" and not config.existing:  # the dashboard starts only the demo preset itself
                from automl.background import start_search
                from automl.config import SearchConfig

                with _env(extra):
                    start_search(SearchConfig(preset=config.preset, study=STUDY, leaderboards=str(config.leaderboards)))
            if config.existing:
                walk.figures.update(finished=True, closed_mid_build=None)
            else:
                build_while_closing_the_tab(walk, config, url)
            if walk.figures.get("finished"):
                found = study_figures(walk, config)
                run_attribution_eval(walk, config, explained_model(found["study"], found["deep"]))
                check_dashboard(walk, config, url, found["study"], found["deep"])
    except Exception as exc:
        logger.exception("walkthrough stopped")
        walk.check("walkthrough ran to the end", False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    walk.figures["seconds"] = round(time.monotonic() - t0, 1)
    walk.figures["machine_end"] = machine()
    with contextlib.suppress(OSError):
        shutil.copy(config.study_dir / "build.log", config.out / "build.log")
    (config.out / "walkthrough.json").write_text(json.dumps(walk.to_dict(), indent=2, default=str), encoding="utf-8")
    return walk


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.demo_walkthrough", description=__doc__.split("\n\n")[0])
    p.add_argument("--leaderboards", required=True, help="an empty folder: the demo study is built into it")
    p.add_argument("--out", default="tests/_artifacts/walkthrough", help="screenshots and walkthrough.json")
    p.add_argument("--preset", default="demo", help="the build's preset (demo: the dashboard starts it itself)")
    p.add_argument("--min-auc", type=float, default=None, help="the best test AUC must reach this (demo: 0.85)")
    p.add_argument("--close-after", type=int, default=3, help="close the browser after this many finished trials")
    p.add_argument("--build-timeout", type=float, default=1800.0, help="seconds to wait for the build")
    p.add_argument("--existing", action="store_true", help="check the finished study in --leaderboards (no build)")
    p.add_argument("--no-attribution-eval", action="store_true", help="skip python -m automl.attribution_eval")
    p.add_argument("--cache", default=None, help="STROKECT_CACHE for the build (default: this environment's)")
    p.add_argument("--chromium", default=None, help="Chromium binary (default: chromium on PATH)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when every check passed."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%X")
    try:
        config = WalkConfig(leaderboards=Path(args.leaderboards), out=Path(args.out), preset=args.preset,
                            min_auc=args.min_auc, close_after=args.close_after, build_timeout=args.build_timeout,
                            attribution_eval=not args.no_attribution_eval, existing=args.existing, chromium=args.chromium,
                            cache=Path(args.cache) if args.cache else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    walk = run_walkthrough(config)
    print(walk.table())
    print(f"\n{'PASSED' if walk.passed else 'FAILED'}; figures and screenshots in {config.out}")
    return 0 if walk.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
