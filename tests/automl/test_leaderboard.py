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
    roc_curve,
)

from automl import leaderboard
from automl.leaderboard import LEADERBOARD_COLUMNS, trials_table, write_leaderboard
from automl.scoring import choose_threshold, score_predictions, subject_level
from automl.study import StudyFolder
from automl.uncertainty import bootstrap_auc_ci, delong_test
from tests.automl._scored_study import make_scored_study

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
    for key in ("best_model", "best_trial", "threshold", "leakage_audit", "comparisons", "test", "subject_level",
                "intervals", "headline", "subject_rules", "verdict", "warnings"):
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


# ------------------------------------------------------------------------------------------------ the patient is the unit


def _scored(tmp_path: Path, **kwargs) -> tuple[Path, pd.DataFrame, dict]:
    """A hand-made study (tests/automl/_scored_study.py) written by write_leaderboard, no training."""
    study_dir = make_scored_study(tmp_path, **kwargs)
    write_leaderboard(study_dir, refit=False, audit=False)
    board = pd.read_csv(study_dir / "leaderboard.csv")
    return study_dir, board[board["refit"]].set_index("model"), json.loads((study_dir / "report.json").read_text())


def _aggregate(frame: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Slices -> subjects with plain pandas (mean, max, top<k>_mean of P(Stroke)); label = max slice label."""
    grouped = frame.groupby("subject")
    if rule.startswith("top"):
        k = int(rule[3:].split("_")[0])
        p = grouped["prob_Stroke"].apply(lambda s: s.nlargest(k).mean())
    else:
        p = grouped["prob_Stroke"].agg(rule)
    return pd.DataFrame({"y": grouped["y"].max(), "p": p})


def test_no_signal_multislice_study_is_not_called_better_than_chance(tmp_path: Path) -> None:
    study_dir, rows, report = _scored(tmp_path, slices=6)
    for model, row in rows.iterrows():
        assert row["ci_method"] == "cluster_bootstrap" and report["ci_method"] == "cluster_bootstrap"
        for metric in ("auc", "sensitivity", "specificity", "accuracy", "brier", "ece"):
            assert row[f"test_{metric}_ci_low"] <= row[f"test_{metric}"] <= row[f"test_{metric}_ci_high"], metric
        assert row["test_auc_ci_low"] < 0.5 < row["test_auc_ci_high"]
        assert row["subject_auc_ci_low"] < 0.5 < row["subject_auc_ci_high"]
        # the slice bootstrap of version 1 is far narrower on the same predictions: it counts slices, not patients
        test = pd.read_csv(study_dir / "predictions" / f"test_{model}.csv")
        low, high = bootstrap_auc_ci(test["y"], test["prob_Stroke"].to_numpy(), n_boot=2000, seed=0)
        assert high - low < 0.7 * (row["test_auc_ci_high"] - row["test_auc_ci_low"])
    logreg = rows.loc["logreg"]
    assert logreg["compare_method"] == "paired_cluster_bootstrap" and logreg["compare_p"] > 0.05
    assert np.isnan(logreg["delong_p"])  # no slice-level DeLong on clustered data
    assert rows.loc["tiny_cnn", "compare_method"] == "reference"
    assert report["comparisons"]["logreg"]["image"]["method"] == "paired_cluster_bootstrap"
    verdict = report["verdict"]
    assert verdict.startswith("tiny_cnn: patient-level AUC ") and "24 Stroke / 24 Normal patients" in verdict
    assert "not distinguishable from chance" in verdict
    assert "not distinguishable from the runner-up and pixel baseline logreg (p = " in verdict
    markdown = (study_dir / "leaderboard.md").read_text()
    assert markdown.splitlines()[2] == f"**Verdict.** {verdict}"
    assert "selection score (CV, best of N trials)" in markdown and "selection score (CV, best of 2 trials)" in markdown


def test_single_slice_study_keeps_the_slice_bootstrap_and_delong(tmp_path: Path) -> None:
    study_dir, rows, report = _scored(tmp_path, slices=1)
    assert report["ci_method"] == "bootstrap" and report["comparison_method"] == "delong"
    best = pd.read_csv(study_dir / "predictions" / "test_tiny_cnn.csv")
    other = pd.read_csv(study_dir / "predictions" / "test_logreg.csv")
    low, high = bootstrap_auc_ci(best["y"], best["prob_Stroke"].to_numpy(), n_boot=2000, seed=0)
    assert (rows.loc["tiny_cnn", "test_auc_ci_low"], rows.loc["tiny_cnn", "test_auc_ci_high"]) == (low, high)
    _, p = delong_test(best["y"], best["prob_Stroke"], other["prob_Stroke"])
    assert rows.loc["logreg", "compare_p"] == pytest.approx(p) == rows.loc["logreg", "delong_p"]
    assert (rows["ci_method"] == "bootstrap").all()


def test_subject_level_figures_recompute_from_the_prediction_files(tmp_path: Path) -> None:
    study_dir, rows, report = _scored(tmp_path, slices=5, signal=1.5)
    predictions = study_dir / "predictions"
    for model, row in rows.iterrows():
        # the rule: the best out-of-fold subject AUC (ties -> mean), never looked up on the test part
        oof = pd.read_csv(predictions / f"oof_{model}.csv")
        oof_aucs = {rule: roc_auc_score(*_aggregate(oof, rule).T.to_numpy()) for rule in ("mean", "max", "top3_mean")}
        assert oof_aucs[row["subject_rule"]] == pytest.approx(max(oof_aucs.values()))
        # the threshold: Youden's J on the calibration part aggregated with that rule
        calibration = _aggregate(pd.read_csv(predictions / f"calibration_{model}.csv"), row["subject_rule"])
        fpr, tpr, thresholds = roc_curve(calibration["y"], calibration["p"])
        assert row["subject_threshold"] == pytest.approx(thresholds[np.argmax(tpr - fpr)])
        assert report["subject_rules"][model]["threshold_source"] == "calibration"
        # the test part, aggregated with the recorded rule, scored with scikit-learn
        test = _aggregate(pd.read_csv(predictions / f"test_{model}.csv"), row["subject_rule"])
        assert roc_auc_score(test["y"], test["p"]) == pytest.approx(row["subject_auc"])
        pred = (test["p"] >= row["subject_threshold"]).astype(int)
        assert recall_score(test["y"], pred) == pytest.approx(row["subject_sensitivity"])
        assert recall_score(1 - test["y"], 1 - pred) == pytest.approx(row["subject_specificity"])
        assert (row["n_test_subjects_pos"], row["n_test_subjects_neg"]) == (24, 24)
        headline = report["headline"][model]
        assert headline["subject"]["auc"]["estimate"] == pytest.approx(row["subject_auc"])
        assert headline["n_subjects"] == {"Normal": 24, "Stroke": 24}
    assert report["warnings"] == []


def test_not_estimable_is_written_as_nan_and_a_reason(tmp_path: Path) -> None:
    study_dir, rows, report = _scored(tmp_path, slices=4, test=(1, 7))
    reason = "not estimable (n = 1 Stroke / 7 Normal patients)"
    for model, row in rows.iterrows():
        for column in ("subject_auc", "subject_auc_ci_low", "subject_sensitivity", "subject_specificity",
                       "test_auc_ci_low", "test_auc_ci_high"):
            assert np.isnan(row[column]), (model, column)
        assert row["subject_note"] == reason and row["test_note"] == reason
    assert report["headline"]["tiny_cnn"]["subject"]["auc"]["estimate"] is None
    assert report["verdict"].startswith("tiny_cnn: patient-level AUC not estimable (1 Stroke / 7 Normal patients)")
    assert any(w.startswith("Small test part: 1 Stroke / 7 Normal patients") for w in report["warnings"])
    markdown = (study_dir / "leaderboard.md").read_text()
    assert reason in markdown and "> ⚠️ Small test part" in markdown
    assert "0.000 [" not in markdown and "1.000 [" not in markdown


def test_leaderboard_md_names_the_probe_in_the_leakage_note() -> None:
    """The audit's probe is a pixel logistic regression: the note must not call it "this model" (issue 17)."""
    from automl._leaderboard_md import _head_lines

    audit = {"method": "probe", "grouped_auc": 0.8, "slice_auc": 0.95, "gap": 0.15, "flagged": True,
             "description": "logistic-regression linear probe on down-sampled pixels, C=1"}
    text = "\n".join(_head_lines({"leakage_audit": audit}))
    assert "pixel logistic-regression probe" in text and "subject-grouped split" in text
    assert "this model" not in text
