"""Tests of automl.leaderboard: atomic files, ranking, scoring, regeneration from the storage."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from automl import leaderboard
from automl.leaderboard import LEADERBOARD_COLUMNS, trials_table, write_leaderboard
from automl.scoring import choose_threshold, score_predictions, subject_level
from automl.study import StudyFolder

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ trial table


def _study_with_trials() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    dist = {"model": CategoricalDistribution(["tiny_cnn", "logreg"]), "lr": FloatDistribution(1e-5, 1e-3, log=True)}

    def add(state: TrialState, model: str, value: float | None, folds: list[float], **attrs) -> None:
        params = {"model": model, "lr": 1e-4}
        study.add_trial(optuna.create_trial(
            state=state, value=value, params=params, distributions=dist,
            user_attrs={"cv_auc_folds": folds, "init": "random", "fit_seconds": 1.0, **attrs}))

    add(TrialState.COMPLETE, "tiny_cnn", 0.7, [0.6, 0.8])
    add(TrialState.PRUNED, "tiny_cnn", None, [0.4], cv_auc_mean=0.4)
    add(TrialState.FAIL, "logreg", None, [], error="MemoryError: boom")
    add(TrialState.COMPLETE, "logreg", 0.9, [0.85, 0.95])
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params={}, distributions={}))
    return study


def test_trials_table_ranks_complete_then_pruned_then_failed() -> None:
    table = trials_table(_study_with_trials())
    assert list(table["trial"]) == [3, 0, 1, 2]  # the WAITING trial is not finished: no row
    assert list(table["rank"]) == [1, 2, 3, 4]
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    assert table.loc[0, "cv_auc_mean"] == 0.9 and table.loc[0, "cv_auc_std"] == pytest.approx(0.05)
    assert table.loc[2, "cv_auc_mean"] == pytest.approx(0.4)  # partial mean of the pruned trial
    assert table.loc[3, "error"] == "MemoryError: boom"
    assert json.loads(table.loc[1, "cv_auc_folds"]) == [0.6, 0.8]
    assert set(table.columns) == set(LEADERBOARD_COLUMNS)


def test_trials_table_of_an_empty_study() -> None:
    table = trials_table(optuna.create_study())
    assert table.empty and "rank" in table.columns


# ------------------------------------------------------------------------------------------------ scoring


def test_score_predictions_binary_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    P = np.stack([1 - p, p], axis=1)
    s = score_predictions(y, P, 0.5, seed=0)
    pred = (p >= 0.5).astype(int)
    assert s["auc"] == pytest.approx(roc_auc_score(y, p))
    assert s["auc_ci_low"] < s["auc"] < s["auc_ci_high"]
    assert s["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert s["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert s["precision"] == pytest.approx(precision_score(y, pred))
    assert s["f1"] == pytest.approx(f1_score(y, pred))
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert s["brier"] == pytest.approx(brier_score_loss(y, p))


def test_score_predictions_multiclass_uses_macro_ovr_and_argmax() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3))
    logits[np.arange(150), y] += 1.5
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    s = score_predictions(y, P, None)
    pred = P.argmax(axis=1)
    assert s["auc"] == pytest.approx(roc_auc_score(y, P, multi_class="ovr", average="macro"))
    assert s["accuracy"] == pytest.approx((pred == y).mean())
    assert s["sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert s["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))


@pytest.mark.parametrize("target", [None, 0.9])
def test_choose_threshold(target: float | None) -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.4 + rng.random(300) * 0.6, 0, 1)
    thr, how = choose_threshold(y, p, target)
    if target is None:
        assert how == "youden"
    else:
        assert (p[y == 1] >= thr).mean() >= target and how.startswith("sensitivity")


def test_subject_level_only_with_several_slices() -> None:
    frame = pd.DataFrame({"subject": ["a", "b", "c", "d"], "y": [0, 0, 1, 1],
                          "prob_N": [0.9, 0.6, 0.4, 0.2], "prob_S": [0.1, 0.4, 0.6, 0.8]})
    assert subject_level(frame, ["N", "S"], 0.5) is None
    frame2 = pd.concat([frame, frame.assign(prob_N=1 - frame["prob_N"] * 0.5, prob_S=frame["prob_S"] * 0.5)])
    out = subject_level(frame2, ["N", "S"], 0.5)
    assert out["mean"]["n_subjects"] == 4 and out["max"]["auc"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ regeneration


@pytest.fixture(scope="module")
def lb_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real study (tiny_cnn + logreg, 32 px) for regeneration tests."""
    from automl.search import SearchConfig, run_search

    os.environ["STROKECT_CACHE"] = str(tmp_path_factory.getbasetemp() / "strokect-cache")
    out = tmp_path_factory.mktemp("lb")
    config = SearchConfig(preset="smoke", study="regen", leaderboards=str(out), models=("tiny_cnn", "logreg"), n_trials=2)
    return run_search(config, progress_bars=False)


def _numbers(study_dir: Path) -> pd.DataFrame:
    board = pd.read_csv(study_dir / "leaderboard.csv")
    return board.drop(columns=["fit_seconds"])


def test_regenerate_from_storage_reproduces_every_number(lb_study: Path, tmp_path: Path) -> None:
    copy = tmp_path / "regen"
    shutil.copytree(lb_study, copy)
    for name in ("leaderboard.csv", "leaderboard.md", "report.json"):
        (copy / name).unlink()
    for f in (copy / "predictions").glob("oof_*.csv"):
        if "trial" not in f.name:
            f.unlink()  # per-model OOF copies are regenerated from the trial files
    mtimes = {p: p.stat().st_mtime_ns for p in (copy / "models").rglob("model.safetensors")}
    write_leaderboard(copy, refit=False)  # cached refits are reused, nothing is trained
    pd.testing.assert_frame_equal(_numbers(copy), _numbers(lb_study))
    old, new = (json.loads((d / "report.json").read_text()) for d in (lb_study, copy))
    for key in ("best_model", "best_trial", "threshold", "leakage_audit", "delong", "test", "subject_level"):
        assert new[key] == old[key], key
    assert {p: p.stat().st_mtime_ns for p in (copy / "models").rglob("model.safetensors")} == mtimes


def test_regenerate_without_refits_keeps_tables(lb_study: Path, tmp_path: Path) -> None:
    copy = tmp_path / "regen"
    shutil.copytree(lb_study, copy)
    shutil.rmtree(copy / "models")
    for f in (copy / "predictions").glob("test_*.csv"):
        f.unlink()
    write_leaderboard(copy, refit=False)
    board = pd.read_csv(copy / "leaderboard.csv")
    assert len(board) == len(pd.read_csv(lb_study / "leaderboard.csv"))
    assert not board["refit"].any() and board["test_auc"].isna().all()


def test_regenerate_refuses_changed_data(lb_study: Path, tmp_path: Path) -> None:
    copy = tmp_path / "regen"
    shutil.copytree(lb_study, copy)
    shutil.rmtree(copy / "models")
    config = json.loads((copy / "config.json").read_text())
    config["manifest_hash"] = "0000000000000000"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="manifest hash"):
        write_leaderboard(copy, refit=True)


def test_cli_regenerates(lb_study: Path, tmp_path: Path) -> None:
    copy = tmp_path / "lbs" / "regen"
    shutil.copytree(lb_study, copy)
    (copy / "leaderboard.csv").unlink()
    proc = subprocess.run([sys.executable, "-m", "automl.leaderboard", "regen", "--out", str(copy.parent), "--no-refit"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    pd.testing.assert_frame_equal(_numbers(copy), _numbers(lb_study))


def test_cli_unknown_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        leaderboard.main(["nope", "--out", str(tmp_path)])
    assert info.value.code == 2 and "nope" in capsys.readouterr().err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_cli_disk_errors_are_one_line(code: int, lb_study: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "regen"
    shutil.copytree(lb_study, copy)
    lock = copy / ".leaderboard.lock"

    @contextlib.contextmanager
    def failing_lock(folder: StudyFolder):  # what open(<lock>, "a+") raises on a read-only file system
        raise OSError(code, os.strerror(code), str(lock))
        yield  # pragma: no cover

    monkeypatch.setattr(StudyFolder, "locked", failing_lock)
    assert leaderboard.main([str(copy), "--no-refit", "--no-audit"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {os.strerror(code)}: {lock}"


def test_cli_write_error_is_one_line(lb_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "regen"
    shutil.copytree(lb_study, copy)
    before = (copy / "leaderboard.csv").read_bytes()
    real = os.replace

    def full(src: str, dst: str) -> None:
        if str(dst).startswith(str(copy)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    assert leaderboard.main([str(copy), "--no-refit", "--no-audit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot write ") and err[-1].endswith(": No space left on device")
    assert str(copy) in err[-1] and not any("Traceback" in line for line in err)
    assert (copy / "leaderboard.csv").read_bytes() == before
    assert not list(copy.rglob("*.tmp"))
