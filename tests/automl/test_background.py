"""Tests for automl.background: a search that outlives its caller, and its progress read back from the study."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from automl.background import build_status, start_search
from automl.search import SearchConfig


def _config(root: Path, **kwargs) -> SearchConfig:
    values = dict(preset="smoke", study="bg", leaderboards=str(root), models=("logreg",), n_trials=2,
                  leakage_audit="none", phantom_n=60)
    values.update(kwargs)
    return SearchConfig(**values)


def _wait(study_dir: Path, states: tuple[str, ...], timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = build_status(study_dir)
        if status.state in states:
            return status
        time.sleep(0.5)
    raise AssertionError(f"build of {study_dir} never reached {states}: {build_status(study_dir)}")


def test_an_absent_study(tmp_path: Path) -> None:
    status = build_status(tmp_path / "nothing")
    assert status.state == "absent" and status.fraction == 0.0 and not status.resumable


def test_a_detached_build_finishes_and_a_second_start_does_not_duplicate_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first = start_search(config)
    assert first.state in ("running", "finished") and first.pid
    second = start_search(config)  # a second visitor / a refresh while it runs
    assert second.pid == first.pid or second.state == "finished"
    done = _wait(config.study_dir, ("finished", "failed", "partial"))
    assert done.state == "finished", done.log_tail
    assert done.fraction == 1.0 and done.n_finished == 2 and done.n_planned == 2
    assert len(pd.read_csv(config.study_dir / "leaderboard.csv")) == 2
    assert "study bg written" in (config.study_dir / "build.log").read_text()


@pytest.mark.slow
def test_a_killed_build_is_partial_and_resumes(tmp_path: Path) -> None:
    config = _config(tmp_path, models=("tiny_cnn", "logreg"), n_trials=4, epochs=2)
    started = start_search(config)
    deadline = time.monotonic() + 240
    while not config.study_dir.joinpath("config.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(started.pid, signal.SIGKILL)  # the whole detached session, as a crash would
    status = _wait(config.study_dir, ("partial", "failed", "finished"))
    assert status.state == "partial" and status.resumable and status.n_finished < 4
    start_search(config)  # "resume build"
    done = _wait(config.study_dir, ("finished", "failed"))
    assert done.state == "finished" and done.n_finished == 4
