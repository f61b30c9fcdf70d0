"""Study-level helpers shared by the reliability tests: run search workers, read a study back,
check that a study folder is complete and consistent with its storage."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from tests.reliability import _support

__all__ = ["check_study_folder", "file_digests", "finished_snapshot", "load_trials", "open_storage",
           "run_module", "search_args"]


def search_args(*, study: str, data: Path, out: Path, storage: str | None, n_trials: int,
                extra: Sequence[str] = ()) -> list[str]:
    """Arguments of one ``python -m automl.search`` smoke worker."""
    args = ["--preset", "smoke", "--data", str(data), "--study", study, "--leaderboards", str(out),
            "--n-trials", str(n_trials), "--timeout", "0", "-q"]
    if storage is not None:
        args += ["--storage", storage]
    return [*args, *extra]


def run_module(module: str, args: Sequence[str], *, log_path: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` to the end (its output appended to ``log_path``)."""
    proc = _support.start_module(module, args, log_path=log_path)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _support.stop_process(proc)
        raise AssertionError(f"python -m {module} ran past {timeout:.0f} s:\n{_support.tail(log_path)}") from None
    _support.stop_process(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode)


def open_storage(study_dir: Path, storage: str | None) -> Any:
    """The Optuna storage of a study: the RDB URL, or the study's journal file."""
    if storage is not None:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))


def load_trials(study_name: str, storage: Any) -> list[Any]:
    """All trials of a study, freshly read from the storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=True)


def file_digests(folder: Path, pattern: str = "*") -> dict[str, str]:
    """SHA-1 of every file matching ``pattern`` under ``folder`` (relative posix path -> digest)."""
    out = {}
    for path in sorted(folder.rglob(pattern)):
        if path.is_file():
            out[path.relative_to(folder).as_posix()] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def finished_snapshot(trials: Sequence[Any]) -> dict[int, tuple[str, Any, str]]:
    """``number -> (state, value, params json)`` of the finished trials."""
    return {t.number: (t.state.name, t.value, json.dumps(t.params, sort_keys=True))
            for t in trials if t.state.is_finished()}


def check_study_folder(study_dir: Path, trials: Sequence[Any]) -> dict[str, Any]:
    """Assert the study folder agrees with the storage; return a few numbers for the report.

    * ``leaderboard.csv`` has one row per finished trial, with the storage's state and CV AUC;
    * every COMPLETE trial has its ``predictions/oof_trial_<NNNN>.csv`` covering the CV part,
      and no non-complete trial has one;
    * every refitted model has its test predictions and a loadable predictor folder;
    * ``report.json`` names the storage's best trial.
    """
    from optuna.trial import TrialState

    board = pd.read_csv(study_dir / "leaderboard.csv")
    finished = {t.number: t for t in trials if t.state.is_finished()}
    assert sorted(board["trial"].tolist()) == sorted(finished), "leaderboard rows != finished trials in the storage"
    for row in board.itertuples(index=False):
        t = finished[int(row.trial)]
        assert row.state == t.state.name, f"trial {row.trial}: leaderboard says {row.state}, storage {t.state.name}"
        if t.state == TrialState.COMPLETE:
            assert abs(float(row.cv_auc_mean) - float(t.value)) < 1e-9, f"trial {row.trial}: CV AUC differs"
    split = pd.read_csv(study_dir / "split.csv")
    n_cv = int((split["part"] == "cv").sum())
    for number, t in finished.items():
        oof = study_dir / "predictions" / f"oof_trial_{number:04d}.csv"
        if t.state == TrialState.COMPLETE:
            assert oof.is_file(), f"complete trial {number} lost its out-of-fold predictions {oof.name}"
            frame = pd.read_csv(oof)
            assert len(frame) == n_cv and frame.filter(like="prob_").notna().all().all(), f"{oof.name} is incomplete"
        else:
            assert not oof.is_file(), f"{t.state.name} trial {number} left {oof.name} behind"
    refitted = board[board["refit"].astype(str).str.lower() == "true"]
    assert len(refitted) >= 1, "no refitted model on the leaderboard"
    for model in refitted["model"]:
        assert (study_dir / "predictions" / f"test_{model}.csv").is_file(), f"test predictions of {model} missing"
        assert (study_dir / "models" / model / "card.json").is_file(), f"model card of {model} missing"
    report = json.loads((study_dir / "report.json").read_text())
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    assert report["best_trial"] == best.number, f"report.json best_trial {report['best_trial']} != {best.number}"
    return {"trials": len(finished), "complete": len(complete), "refitted": int(len(refitted))}
