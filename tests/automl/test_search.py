"""Tests of automl.search: the real pipeline on a tiny phantom (32 px, few trials), plus unit tests.

One session-scoped smoke study is shared by the read-only tests; tests that change a study work on a
copy of it or on their own small study.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from sklearn.metrics import roc_auc_score

from automl import search, space
import models
from models import _pretrained
from automl.search import Objective, SearchConfig, make_pruner, open_study, run_search, suggest_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def search_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's cache folder (the same one tests/conftest.py gives each test)."""
    cache = tmp_path_factory.getbasetemp() / "strokect-cache"
    os.environ["STROKECT_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory, search_cache: Path) -> Path:
    """A real smoke search: phantom (labels per subject), 32 px, 2 folds, 1 epoch, 3 trials."""
    out = tmp_path_factory.mktemp("leaderboards")
    config = SearchConfig(preset="smoke", study="smoke", leaderboards=str(out), models=("tiny_cnn", "logreg"), n_trials=3)
    return run_search(config, progress_bars=False, on_progress=_EVENTS.append)


_EVENTS: list[dict] = []


def _tiny_config(out: Path, **kwargs) -> SearchConfig:
    """Fast studies for the tests that change a study: logistic regression only, no refit, no audit."""
    values = dict(preset="smoke", leaderboards=str(out), models=("logreg",), n_trials=3, refit=False, leakage_audit="none")
    values.update(kwargs)
    return SearchConfig(**values)


# ------------------------------------------------------------------------------------------------ config


def test_presets_fill_unset_fields_and_flags_override() -> None:
    config = SearchConfig(preset="smoke", n_trials=9, folds=3)
    assert config.n_trials == 9 and config.folds == 3
    assert config.image_size == search.PRESETS["smoke"]["image_size"]
    assert config.models == search.PRESETS["smoke"]["models"]
    demo = SearchConfig(preset="demo")
    assert demo.image_size == 64 and demo.folds == 3 and "vit_tiny" in demo.models
    full = SearchConfig(preset="full")
    assert full.image_size == 224 and full.folds == 5 and full.epochs >= 10 and full.n_trials >= 50
    assert SearchConfig(preset="smoke", models="tiny_cnn, logreg").models == ("tiny_cnn", "logreg")


def test_config_round_trips_through_dict(tmp_path: Path) -> None:
    config = SearchConfig(preset="smoke", leaderboards=str(tmp_path), target_sensitivity=0.9)
    again = SearchConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert config.study_name == "phantom_smoke"
    assert config.study_dir == tmp_path / "phantom_smoke"


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"preset": "huge"}, "--preset"),
        ({"models": ("resnet18", "nope")}, "--models"),
        ({"models": ()}, "--models"),
        ({"n_trials": 0}, "--n-trials"),
        ({"timeout": -1.0}, "--timeout"),
        ({"folds": 1}, "--folds"),
        ({"test_size": 0.9}, "--test-size"),
        ({"image_size": 8}, "--image-size"),
        ({"image_size": 40, "models": ("vit_tiny",)}, "--image-size"),
        ({"epochs": 0}, "--epochs"),
        ({"pretrained": "maybe"}, "--pretrained"),
        ({"pretrained": "yes", "models": ("resnet18",)}, "--pretrained yes: No ImageNet weights for resnet18"),
        ({"pruner": "random"}, "--pruner"),
        ({"target_sensitivity": 1.5}, "--target-sensitivity"),
        ({"leakage_audit": "always"}, "--leakage-audit"),
        ({"storage": "postgres-without-url"}, "--storage"),
        ({"workers": 0}, "--workers"),
        ({"seed": -1}, "--seed"),
        ({"group_by": "astrology"}, "--group-by"),
        ({"phash_threshold": 65}, "--phash-threshold"),
        ({"phash_threshold": -1}, "--phash-threshold"),
        ({"phash_threshold": 4.5}, "--phash-threshold"),
        ({"data": "/no/such/folder"}, "--data"),
        ({"weights_dir": "/no/such/weights"}, "--weights-dir"),
        ({"study": "../escape"}, "--study"),
        ({"device": "tpu"}, "--device"),
        ({"heartbeat_grace": 10, "heartbeat_interval": 30}, "--heartbeat-grace"),
    ],
)
def test_invalid_config_raises_naming_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        SearchConfig(**{"preset": "smoke", **kwargs})


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--folds", "1"], "--folds"),
        (["--folds", "two"], "--folds"),
        (["--models", "resnet18,nope"], "--models"),
        (["--preset", "huge"], "--preset"),
        (["--test-size", "0.9"], "--test-size"),
        (["--pruner", "random"], "--pruner"),
        (["--timeout", "nan"], "--timeout"),
        (["--phash-threshold", "99"], "--phash-threshold"),
    ],
)
def test_cli_bad_flags_exit_2_before_any_work(argv: list[str], flag: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        search.main([*argv, "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and flag in err
    assert not any(tmp_path.iterdir())  # nothing was written


def test_cli_subprocess_bad_flag(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "automl.search", "--n-trials", "0", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--n-trials" in proc.stderr and "error:" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------ space


@pytest.mark.parametrize("model", ["tiny_cnn", "resnet18", "logreg", "svm_rbf"])
def test_suggest_config_space(model: str) -> None:
    config = SearchConfig(preset="smoke", models=(model,), pretrained="no")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        tc = suggest_config(trial, config, max_batch_size=20)
        assert tc.model == model and tc.epochs == config.epochs and tc.seed == config.seed
        if model in ("logreg", "svm_rbf"):
            assert set(trial.params) == {"model", f"{model}_C"} | ({"svm_rbf_gamma"} if model == "svm_rbf" else set())
            assert tc.C == trial.params[f"{model}_C"]
        else:
            assert 1e-5 <= tc.lr <= 1e-3
            assert tc.batch_size in (8, 16)  # {8, 16, 32, 64} capped by the fold size (20)
            assert 0.0 <= tc.aug_strength <= 1.0
            assert "finetune" not in trial.params  # no ImageNet init possible with pretrained="no"
            assert tc.finetune == "full"
        study.tell(trial, 0.5)


def test_suggest_config_searches_finetune_and_epochs_when_possible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_pretrained._OBTAINABLE, ("resnet18", None, False), True)  # as if ImageNet weights were on disk
    config = SearchConfig(preset="smoke", models=("resnet18",), pretrained="auto", epochs=6, search_epochs=True)
    trial = optuna.trial.FixedTrial({"model": "resnet18", "lr": 1e-4, "batch_size": 16, "weight_decay": 1e-4,
                                     "aug_strength": 0.3, "finetune": "gradual", "epochs": 4})
    tc = suggest_config(trial, config)
    assert tc.finetune == "gradual" and tc.epochs == 4 and tc.pretrained == "auto"
    monkeypatch.setitem(_pretrained._OBTAINABLE, ("resnet18", None, False), False)  # no weights: random init, no finetune
    tc = suggest_config(optuna.trial.FixedTrial({k: v for k, v in trial.params.items() if k != "finetune"}), config)
    assert tc.finetune == "full" and tc.pretrained == "no"


def test_default_params_are_inside_the_space() -> None:
    config = SearchConfig(preset="demo")
    for model in config.models:
        params = search.default_params(model, config, max_batch_size=100)
        tc = suggest_config(optuna.trial.FixedTrial(params), config, max_batch_size=100)
        assert tc.model == model


def test_default_trials_every_model_first_then_a_log_spaced_c_sweep_of_the_classical_ones() -> None:
    config = SearchConfig(preset="full", models=("logreg", "tiny_cnn", "svm_rbf"), n_trials=60)
    pairs = search.default_trials(config, max_batch_size=100)
    trials = [params for params, _ in pairs]
    assert [t["model"] for t in trials] == ["logreg", "tiny_cnn", "svm_rbf", "logreg", "logreg", "svm_rbf", "svm_rbf"]
    assert trials[:3] == [search.default_params(m, config, max_batch_size=100) for m in config.models]
    assert [is_default for _, is_default in pairs] == [True] * 3 + [False] * 4  # only these are never pruned
    logreg_c = sorted(t["logreg_C"] for t in trials if t["model"] == "logreg")
    # centres of three equal bins of log10 C in [-4, 1]
    assert np.allclose(np.log10(logreg_c), [-4 + 5 / 6, -1.5, 1 - 5 / 6])
    svm = [t for t in trials if t["model"] == "svm_rbf"]
    assert len({t["svm_rbf_gamma"] for t in svm}) == 1 and len({t["svm_rbf_C"] for t in svm}) == 3
    for params in trials:  # every point lies inside the search space
        assert suggest_config(optuna.trial.FixedTrial(params), config, max_batch_size=100).model == params["model"]


def test_default_trials_are_capped_by_n_trials_and_keep_every_model_first() -> None:
    config = SearchConfig(preset="smoke", models=("logreg", "tiny_cnn", "simple_cnn"), n_trials=3)
    assert [t["model"] for t, _ in search.default_trials(config)] == ["logreg", "tiny_cnn", "simple_cnn"]
    assert len(search.default_trials(dataclasses.replace(config, n_trials=1))) == 1
    deep_only = SearchConfig(preset="smoke", models=("tiny_cnn",), n_trials=10)
    assert [t["model"] for t, _ in search.default_trials(deep_only)] == ["tiny_cnn"]


@pytest.mark.parametrize(("name", "cls"), [("median", optuna.pruners.MedianPruner),
                                           ("halving", optuna.pruners.SuccessiveHalvingPruner),
                                           ("hyperband", optuna.pruners.HyperbandPruner),
                                           ("none", optuna.pruners.NopPruner)])
def test_make_pruner(name: str, cls: type) -> None:
    assert isinstance(make_pruner(SearchConfig(preset="smoke", pruner=name)), cls)


# ------------------------------------------------------------------------------------------------ objective


class _FakeFit:
    def __init__(self, n_val: int, auc_by_epoch: list[float]) -> None:
        self.auc_by_epoch = auc_by_epoch
        self.n_val = n_val


def test_objective_reports_on_one_monotone_fold_epoch_axis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          search_cache: Path) -> None:
    """step = fold * E + epoch; value = running mean over completed folds and the current epoch."""
    from automl import train

    config = _tiny_config(tmp_path, models=("tiny_cnn",), folds=2, epochs=3, pruner="none")
    ctx = search.prepare_data(config)
    per_epoch = {0: [0.6, 0.7, 0.65], 1: [0.8, 0.9, 0.85]}
    calls = {"fold": 0}

    def fake_fit_fold(X_tr, y_tr, X_va, y_va, *, config, num_classes, report=None):
        k = calls["fold"]
        calls["fold"] += 1
        for e, auc in enumerate(per_epoch[k]):
            report(e, {"val_auc": auc})
        P = np.stack([1 - y_va * 0.8 - 0.1, y_va * 0.8 + 0.1], axis=1)  # perfect ranking -> fold AUC 1.0
        return train.FitResult(model=None, init="random", history=[], best_epoch=1, best_metrics={},
                               val_probabilities=P, fit_seconds=0.1, images_per_second=1.0)

    monkeypatch.setattr(train, "fit_fold", fake_fit_fold)
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(config, ctx, tmp_path, heartbeat=False), n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE
    iv = t.intermediate_values
    assert sorted(iv) == [0, 1, 2, 3, 4, 5]
    assert iv[0] == pytest.approx(0.6) and iv[2] == pytest.approx(0.65)
    # fold 1 (k=1): completed fold 0 scored 1.0 on its best-epoch probabilities
    assert iv[3] == pytest.approx((1.0 + 0.8) / 2) and iv[4] == pytest.approx((1.0 + 0.9) / 2)
    assert t.user_attrs["cv_auc_folds"] == [1.0, 1.0] and t.value == 1.0
    assert t.user_attrs["best_epochs"] == [2, 2]
    assert (tmp_path / "predictions" / "oof_trial_0000.csv").is_file()


def test_failing_trial_is_recorded_and_study_goes_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     search_cache: Path) -> None:
    from automl import train

    real = train.fit_fold

    def flaky(X_tr, y_tr, X_va, y_va, *, config, num_classes, report=None):
        if config.C < 0.01:
            raise MemoryError("simulated out of memory")
        return real(X_tr, y_tr, X_va, y_va, config=config, num_classes=num_classes, report=report)

    monkeypatch.setattr(train, "fit_fold", flaky)
    config = _tiny_config(tmp_path, n_trials=2)
    study = open_study(config)
    study.enqueue_trial({"model": "logreg", "logreg_C": 0.001})
    run_search(config, progress_bars=False)
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "simulated out of memory" in failed[0].user_attrs["error"]
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2
    board = pd.read_csv(config.study_dir / "leaderboard.csv")
    assert "FAIL" in set(board["state"]) and board["error"].str.contains("out of memory").any()


# ------------------------------------------------------------------------------------------------ end to end


def test_smoke_study_files_and_schema(smoke_study: Path) -> None:
    from automl.leaderboard import LEADERBOARD_COLUMNS

    for name in ("config.json", "study.journal", "manifest.csv", "bad_files.csv", "quality.json", "split.csv",
                 "leaderboard.csv", "leaderboard.md", "report.json"):
        assert (smoke_study / name).is_file(), name
    board = pd.read_csv(smoke_study / "leaderboard.csv")
    issue_columns = ["rank", "trial", "model", "init", "lr", "batch_size", "cv_auc_mean", "cv_auc_std", "test_auc",
                     "test_auc_ci_low", "test_auc_ci_high", "test_accuracy", "test_sensitivity",
                     "test_specificity", "test_f1", "threshold", "fit_seconds", "state"]
    assert set(issue_columns) <= set(board.columns)
    assert list(board.columns) == LEADERBOARD_COLUMNS
    assert len(board) == 3 and list(board["rank"]) == [1, 2, 3]
    assert set(board["model"]) == {"tiny_cnn", "logreg"}  # every architecture gets a first trial
    refit = board[board["refit"]]
    assert sorted(refit["model"]) == ["logreg", "tiny_cnn"]
    assert refit[["test_auc", "test_sensitivity", "threshold"]].notna().all().all()
    # an interval needs 5 test patients per class (the smoke phantom has fewer): else nan and a reason (issue 16)
    assert (refit["test_auc_ci_low"].notna() | refit["test_note"].astype(str).str.startswith("not estimable")).all()
    assert board.loc[~board["refit"], "test_auc"].isna().all()
    complete = board[board["state"] == "COMPLETE"]
    assert complete["cv_auc_mean"].is_monotonic_decreasing
    config = json.loads((smoke_study / "config.json").read_text())
    for key in ("classes", "manifest_hash", "versions", "storage_url", "data_dir", "folds", "preset"):
        assert key in config
    report = json.loads((smoke_study / "report.json").read_text())
    assert report["best_model"] == complete.iloc[0]["model"]
    audit = report["leakage_audit"]
    assert set(audit) >= {"method", "grouped_auc", "slice_auc", "gap", "flagged"}
    assert "Leakage audit" in (smoke_study / "leaderboard.md").read_text()
    for model in refit["model"]:
        folder = smoke_study / "models" / model
        card = json.loads((folder / "card.json").read_text())
        assert card["classes"] == config["classes"] and card["manifest_hash"] == config["manifest_hash"]
        assert card["threshold"] == pytest.approx(float(refit.loc[refit["model"] == model, "threshold"].iloc[0]))
        assert json.loads((folder / "config.json").read_text())["trial"] == int(refit.loc[refit["model"] == model, "trial"].iloc[0])
    # no temp files left behind by the atomic writes
    assert not list(smoke_study.rglob("*.tmp"))


def test_progress_events_for_a_ui(smoke_study: Path) -> None:
    phases = [e["phase"] for e in _EVENTS if e["event"] == "phase"]
    assert phases[0] == "data" and "search" in phases and phases[-1] == "done"
    ends = [e for e in _EVENTS if e["event"] == "trial_end"]
    assert [e["n_done"] for e in ends] == [1, 2, 3] and all(e["n_total"] == 3 for e in ends)
    best = [e["best"] for e in ends]
    assert best == sorted(best)  # the live best score only goes up
    assert any(e["event"] == "epoch" for e in _EVENTS) and any(e["event"] == "refit" for e in _EVENTS)
    json.dumps(_EVENTS)  # plain JSON types only


def test_smoke_study_is_readable_by_the_dashboard_reader(smoke_study: Path) -> None:
    from automl.results import load_study

    study = load_study(smoke_study)
    assert len(study.leaderboard) == 3
    assert study.best_model in study.refitted_models()
    assert len(study.load_optuna_study().trials) == 3
    assert len(study.test_predictions(study.best_model)) == int((study.split["part"] == "test").sum())


def test_every_auc_recomputes_from_the_prediction_files(smoke_study: Path) -> None:
    from sklearn.metrics import brier_score_loss, confusion_matrix

    config = json.loads((smoke_study / "config.json").read_text())
    pos = f"prob_{config['classes'][1]}"
    board = pd.read_csv(smoke_study / "leaderboard.csv")
    for _, row in board[board["state"] == "COMPLETE"].iterrows():
        oof = pd.read_csv(smoke_study / "predictions" / f"oof_trial_{int(row['trial']):04d}.csv")
        folds = [roc_auc_score(g["y"], g[pos]) for _, g in oof.groupby("fold")]
        assert folds == pytest.approx(json.loads(row["cv_auc_folds"]), abs=1e-6)
        assert np.mean(folds) == pytest.approx(row["cv_auc_mean"], abs=1e-6)
        assert np.std(folds) == pytest.approx(row["cv_auc_std"], abs=1e-6)
    for _, row in board[board["refit"]].iterrows():
        test = pd.read_csv(smoke_study / "predictions" / f"test_{row['model']}.csv")
        assert roc_auc_score(test["y"], test[pos]) == pytest.approx(row["test_auc"], abs=1e-9)
        if pd.notna(row["test_auc_ci_low"]):
            assert row["test_auc_ci_low"] <= row["test_auc"] <= row["test_auc_ci_high"]
        else:  # fewer than 5 test patients in a class: no interval, and the row says why (issue 16)
            assert str(row["test_note"]).startswith("not estimable")
        pred = (test[pos] >= row["threshold"]).astype(int)
        tn, fp, fn, tp = confusion_matrix(test["y"], pred, labels=[0, 1]).ravel()
        assert row["test_sensitivity"] == pytest.approx(tp / (tp + fn))
        assert row["test_specificity"] == pytest.approx(tn / (tn + fp))
        assert row["test_accuracy"] == pytest.approx((tp + tn) / len(test))
        assert row["test_brier"] == pytest.approx(brier_score_loss(test["y"], test[pos]))
        oof = pd.read_csv(smoke_study / "predictions" / f"oof_{row['model']}.csv")
        assert oof.equals(pd.read_csv(smoke_study / "predictions" / f"oof_trial_{int(row['trial']):04d}.csv"))
        # the threshold was chosen on the refitted model's own calibration-part predictions (the first
        # fold's validation part, never trained on, disjoint from the test part): it maximises
        # Youden's J = sensitivity + specificity - 1 over all cut-offs
        calibration = pd.read_csv(smoke_study / "predictions" / f"calibration_{row['model']}.csv")
        split = pd.read_csv(smoke_study / "split.csv")
        first_fold_val = set(split.loc[(split["part"] == "cv") & (split["fold"] == 0), "path"])
        assert set(calibration["path"]) == first_fold_val and not first_fold_val & set(test["path"])

        def youden(t: float) -> float:
            p = (calibration[pos] >= t).astype(int)
            return p[calibration["y"] == 1].mean() - p[calibration["y"] == 0].mean()

        assert youden(row["threshold"]) == pytest.approx(max(youden(t) for t in calibration[pos].unique()))
        # subject-level: mean of slice probabilities per subject
        if test.groupby("subject").size().max() > 1 and test.groupby("subject")["y"].max().nunique() == 2:
            subj = test.groupby("subject").agg(y=("y", "max"), p=(pos, "mean"))
            assert roc_auc_score(subj["y"], subj["p"]) == pytest.approx(row["subject_auc_mean"])


def test_no_subject_is_shared_across_folds_or_test(smoke_study: Path) -> None:
    split = pd.read_csv(smoke_study / "split.csv")
    test_subjects = set(split.loc[split["part"] == "test", "subject"].astype(str))
    cv = split[split["part"] == "cv"]
    assert not test_subjects & set(cv["subject"].astype(str))
    assert (cv.groupby("subject")["fold"].nunique() == 1).all()
    # the out-of-fold files use exactly the split's folds
    oof = pd.read_csv(next((smoke_study / "predictions").glob("oof_trial_*.csv")))
    merged = oof.merge(split, on="path", suffixes=("", "_split"))
    assert len(merged) == len(cv) and (merged["fold"] == merged["fold_split"]).all()
    for model in ("logreg", "tiny_cnn"):
        test = pd.read_csv(smoke_study / "predictions" / f"test_{model}.csv")
        assert set(test["path"]) == set(split.loc[split["part"] == "test", "path"])


def test_leakage_audit_flags_recognisable_subjects(smoke_study: Path) -> None:
    """The phantom labels every slice of a stroke patient as stroke: patients are recognisable, so a
    slice-level split scores much higher than the honest grouped one."""
    audit = json.loads((smoke_study / "report.json").read_text())["leakage_audit"]
    assert audit["method"] == "probe"
    assert audit["gap"] == pytest.approx(audit["slice_auc"] - audit["grouped_auc"])
    assert audit["gap"] > 0.1 and audit["flagged"] is True
    assert "LEAKAGE SUSPECTED" in (smoke_study / "leaderboard.md").read_text()


def test_leakage_audit_quiet_when_labels_are_per_slice(tmp_path: Path, search_cache: Path) -> None:
    """Control: when the study itself ignores subjects (``group_by="none"``), both splits leak alike, so
    the audit (which measures the difference the grouping makes) keeps its flag down."""
    from automl.leaderboard import leakage_audit

    config = _tiny_config(tmp_path, group_by="none", phantom_label_level="slice", folds=3)
    ctx = search.prepare_data(config)
    assert ctx.manifest.table["subject"].nunique() == len(ctx.manifest.table)  # grouping off: 1 slice each
    trial = optuna.trial.create_trial(params={"model": "logreg"}, distributions={
        "model": optuna.distributions.CategoricalDistribution(["logreg"])}, value=0.5)
    audit = leakage_audit(ctx, config, trial, "probe")
    assert audit["gap"] <= 0.05 and audit["flagged"] is False


# ------------------------------------------------------------------------------------------------ study life cycle


def test_resume_adds_trials_to_the_same_study(smoke_study: Path, tmp_path: Path) -> None:
    out = tmp_path / "lb"
    shutil.copytree(smoke_study, out / "smoke")
    numbers_before = sorted(pd.read_csv(out / "smoke" / "leaderboard.csv")["trial"])
    config = SearchConfig(preset="smoke", study="smoke", leaderboards=str(out), models=("tiny_cnn", "logreg"), n_trials=4,
                          leakage_audit="probe")
    run_search(config, progress_bars=False)
    study = open_study(config)
    numbers = sorted(t.number for t in study.trials)
    assert numbers[:3] == numbers_before and len(numbers) == 4
    board = pd.read_csv(out / "smoke" / "leaderboard.csv")
    assert sorted(board["trial"]) == numbers
    # the same --n-trials again: nothing to search, nothing lost or duplicated
    run_search(config, progress_bars=False)
    assert len(open_study(config).trials) == 4


def test_resume_with_other_settings_is_refused(smoke_study: Path, tmp_path: Path) -> None:
    out = tmp_path / "lb"
    shutil.copytree(smoke_study, out / "smoke")
    config = SearchConfig(preset="smoke", study="smoke", leaderboards=str(out), models=("logreg",), n_trials=4, folds=3)
    with pytest.raises(ValueError, match="--folds"):
        run_search(config, progress_bars=False)


def _scripted_fit_fold(bad_lr: float):
    """A stand-in for ``train.fit_fold`` of a deep model: per-epoch AUC 0.8 (perfect final ranking), or
    0.2 (inverted ranking) for the configuration with ``lr == bad_lr``; it honours the report callback."""
    from automl import train

    def fit(X_tr, y_tr, X_va, y_va, *, config, num_classes, report=None):
        bad = config.lr == pytest.approx(bad_lr)
        P1 = np.where(y_va == 1, 0.9, 0.1) if not bad else np.where(y_va == 1, 0.1, 0.9)
        pruned = False
        for e in range(config.epochs):
            if report is not None and report(e, {"val_auc": 0.2 if bad else 0.8}):
                pruned = True
                break
        return train.FitResult(model=None, init="random", history=[], best_epoch=0, best_metrics={},
                               val_probabilities=np.stack([1 - P1, P1], axis=1), fit_seconds=0.01,
                               images_per_second=1.0, pruned=pruned)
    return fit


def test_pruning_stops_a_bad_configuration_before_its_last_fold(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                search_cache: Path) -> None:
    """A deep configuration far below the others is pruned after its first fold."""
    from automl import train

    monkeypatch.setattr(train, "fit_fold", _scripted_fit_fold(bad_lr=1.23e-4))
    config = _tiny_config(tmp_path, models=("tiny_cnn",), folds=3, n_trials=3, pruner="none", n_startup_trials=2)
    run_search(config, progress_bars=False)  # three good trials, none pruned
    study = open_study(config)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    study.enqueue_trial({"model": "tiny_cnn", "lr": 1.23e-4})
    run_search(SearchConfig.from_dict({**config.to_dict(), "n_trials": 4, "pruner": "median"}), progress_bars=False)
    bad = open_study(config).trials[-1]
    assert bad.params["lr"] == pytest.approx(1.23e-4)
    assert bad.state == TrialState.PRUNED
    last_fold_first_step = (config.folds - 1) * config.epochs
    assert max(bad.intermediate_values) < last_fold_first_step  # stopped before its last fold
    assert len(bad.user_attrs["cv_auc_folds"]) < config.folds
    board = pd.read_csv(config.study_dir / "leaderboard.csv")
    row = board[board["trial"] == bad.number].iloc[0]
    assert row["state"] == "PRUNED" and row["rank"] == 4
    assert not (config.study_dir / "predictions" / f"oof_trial_{bad.number:04d}.csv").exists()


def test_an_architectures_default_trial_is_never_pruned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       search_cache: Path) -> None:
    """The same bad configuration as above, enqueued as a default trial, runs every fold."""
    from automl import train

    monkeypatch.setattr(train, "fit_fold", _scripted_fit_fold(bad_lr=1.23e-4))
    config = _tiny_config(tmp_path, models=("tiny_cnn",), folds=3, n_trials=3, pruner="none", n_startup_trials=2)
    run_search(config, progress_bars=False)
    study = open_study(config)
    assert [bool(t.user_attrs.get(search.DEFAULT_TRIAL_ATTR)) for t in study.trials] == [True, False, False]
    study.enqueue_trial({"model": "tiny_cnn", "lr": 1.23e-4}, user_attrs={search.DEFAULT_TRIAL_ATTR: True})
    run_search(SearchConfig.from_dict({**config.to_dict(), "n_trials": 4, "pruner": "median"}), progress_bars=False)
    bad = open_study(config).trials[-1]
    assert bad.params["lr"] == pytest.approx(1.23e-4)
    assert bad.state == TrialState.COMPLETE and len(bad.user_attrs["cv_auc_folds"]) == config.folds
    assert bad.value < min(t.value for t in open_study(config).trials[:-1])  # the pruner had every reason


@pytest.mark.parametrize("pruner", ["median", "halving", "hyperband"])
def test_classical_baselines_are_never_pruned(pruner: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              search_cache: Path) -> None:
    """A logistic regression far below the others (trained on flipped labels) still runs every fold:
    the classical baseline is what the leaderboard compares the networks against."""
    from automl import train

    real = train.fit_fold

    def sabotage(X_tr, y_tr, X_va, y_va, *, config, num_classes, report=None):
        if config.C == pytest.approx(0.0123):
            y_tr = 1 - y_tr  # learn the opposite: validation AUC far below the others
        return real(X_tr, y_tr, X_va, y_va, config=config, num_classes=num_classes, report=report)

    monkeypatch.setattr(train, "fit_fold", sabotage)
    config = _tiny_config(tmp_path, folds=3, n_trials=3, pruner="none", n_startup_trials=2)
    run_search(config, progress_bars=False)
    study = open_study(config)
    study.enqueue_trial({"model": "logreg", "logreg_C": 0.0123})
    run_search(SearchConfig.from_dict({**config.to_dict(), "n_trials": 4, "pruner": pruner}), progress_bars=False)
    trials = open_study(config).trials
    bad = trials[-1]
    assert bad.params["logreg_C"] == pytest.approx(0.0123)
    assert bad.value < min(t.value for t in trials[:-1])  # the pruner would have had every reason
    assert bad.state == TrialState.COMPLETE
    assert len(bad.user_attrs["cv_auc_folds"]) == config.folds
    assert sorted(bad.intermediate_values) == [k * config.epochs + config.epochs - 1 for k in range(config.folds)]
    assert (config.study_dir / "predictions" / f"oof_trial_{bad.number:04d}.csv").is_file()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_workers_running_trial_is_failed_and_retried(tmp_path: Path, search_cache: Path) -> None:
    config = _tiny_config(tmp_path, n_trials=2)
    study = open_study(config)
    dist = {"model": optuna.distributions.CategoricalDistribution(["logreg"]),
            "logreg_C": optuna.distributions.FloatDistribution(1e-4, 10.0, log=True)}
    # a trial that a worker started and then lost (kill -9): RUNNING forever, its pid dead
    ghost = study.ask(fixed_distributions=dist)
    ghost.set_user_attr("worker", {"host": socket.gethostname(), "pid": _dead_pid(), "start": None})
    # and one whose worker is alive (this process): must be left alone
    alive = study.ask(fixed_distributions=dist)
    alive.set_user_attr("worker", search.worker_identity())
    run_search(config, progress_bars=False)
    trials = {t.number: t for t in open_study(config).get_trials()}
    assert trials[ghost.number].state == TrialState.FAIL
    assert "worker died" in trials[ghost.number].user_attrs["error"]
    assert trials[alive.number].state == TrialState.RUNNING
    retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == ghost.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[ghost.number].params
    # a second start does not retry it again
    run_search(config, progress_bars=False)
    assert len([t for t in open_study(config).get_trials() if t.user_attrs.get("retry_of") == ghost.number]) == 1


def test_retry_keeps_the_enqueued_params_a_killed_worker_had_not_sampled_yet() -> None:
    """A worker killed inside suggest_config recorded only ``model``: the retry gets the whole queued
    configuration back (Optuna's ``fixed_params``), not fresh samples for the rest."""
    study = optuna.create_study(direction="maximize")
    queued = {"model": "tiny_cnn", "lr": 3.3e-4, "batch_size": 16, "weight_decay": 1e-5, "aug_strength": 0.25}
    study.enqueue_trial(queued)
    trial = study.ask()
    assert trial.suggest_categorical("model", ["tiny_cnn", "logreg"]) == "tiny_cnn"  # ... then kill -9
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": _dead_pid(), "start": None})
    assert search.recover_stale_trials(study) == [trial.number]
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.system_attrs["fixed_params"] == queued
    assert retry.user_attrs["retry_of"] == trial.number
    # and the retried trial runs exactly the queued configuration
    again = study.ask()
    tc = suggest_config(again, SearchConfig(preset="smoke", models=("tiny_cnn", "logreg"), pretrained="no"),
                        max_batch_size=64)
    assert again.params == queued and (tc.lr, tc.batch_size, tc.aug_strength) == (3.3e-4, 16, 0.25)


def test_stale_trial_of_another_host_needs_an_old_heartbeat(tmp_path: Path, search_cache: Path) -> None:
    import time

    config = _tiny_config(tmp_path)
    study = open_study(config)
    dist = {"model": optuna.distributions.CategoricalDistribution(["logreg"])}
    fresh, old = study.ask(fixed_distributions=dist), study.ask(fixed_distributions=dist)
    for t, beat in ((fresh, time.time()), (old, time.time() - 3600)):
        t.set_user_attr("worker", {"host": "some-other-machine", "pid": 1, "start": None})
        t.set_user_attr("heartbeat", beat)
    assert search.recover_stale_trials(study, grace=180) == [old.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[fresh.number] == TrialState.RUNNING and states[old.number] == TrialState.FAIL


@pytest.mark.slow
def test_two_workers_share_one_journal_study(tmp_path: Path, search_cache: Path) -> None:
    config = _tiny_config(tmp_path, models=("tiny_cnn",), n_trials=4, workers=2)
    run_search(config, progress_bars=False)
    trials = open_study(config).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 4 <= len(finished) <= 5  # a worker may finish the trial it started when the other filled the study
    assert len({t.number for t in trials}) == len(trials)
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) == 2 and os.getpid() not in pids
    params = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(set(params)) == len(params)  # constant liar + TPE: no configuration evaluated twice
    board = pd.read_csv(config.study_dir / "leaderboard.csv")
    assert sorted(board["trial"]) == sorted(t.number for t in trials if t.state.is_finished())


@pytest.mark.slow
def test_kill_9_worker_then_restart(tmp_path: Path, search_cache: Path) -> None:
    """A real kill -9 mid-trial: on restart the lost trial is failed, retried, and nothing else changes."""
    import signal
    import time

    # 64 px x 10 epochs (early stopping needs >= 6 per fold): each trial takes seconds even on an idle
    # machine, so the trial seen RUNNING is still running when the signal lands
    config = _tiny_config(tmp_path, models=("tiny_cnn",), n_trials=2, epochs=10, image_size=64)
    argv = [sys.executable, "-m", "automl.search", "--preset", "smoke", "--out", str(tmp_path), "--models",
            "tiny_cnn", "--n-trials", "2", "--epochs", "10", "--image-size", "64", "--no-refit",
            "--leakage-audit", "none", "-q"]
    env = {**os.environ, "STROKECT_CACHE": str(search_cache)}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = config.study_dir / "study.journal"
    deadline = time.time() + 240
    victim = None
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file():
            study = open_study(config)
            running = [t for t in study.get_trials() if t.state == TrialState.RUNNING and t.user_attrs.get("worker")]
            if running and running[0].intermediate_values:  # mid-trial: at least one epoch reported
                victim = running[0].number
                break
        time.sleep(0.5)
    assert victim is not None, "the search never got to a running trial"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {t.number: t.value for t in open_study(config).get_trials() if t.state == TrialState.COMPLETE}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = {t.number: t for t in open_study(config).get_trials()}
    assert trials[victim].state == TrialState.FAIL
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == victim]
    assert len(retry) == 1 and retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert {n: trials[n].value for n in done_before} == done_before  # finished trials untouched
    assert len([t for t in trials.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 2


def test_multiclass_study_uses_macro_auc_and_argmax(tmp_path: Path, search_cache: Path) -> None:
    from data.phantom import generate_phantom

    data_dir = generate_phantom(tmp_path / "three", n=90, size=32, seed=0, difficulty=0.2,
                                classes=("normal", "ischemic", "hemorrhagic"))
    config = SearchConfig(preset="smoke", data=str(data_dir), leaderboards=str(tmp_path / "lb"), models=("logreg",),
                          n_trials=1, leakage_audit="none")
    study_dir = run_search(config, progress_bars=False)
    classes = json.loads((study_dir / "config.json").read_text())["classes"]
    assert len(classes) == 3 and classes[0] == "Normal"
    row = pd.read_csv(study_dir / "leaderboard.csv").iloc[0]
    test = pd.read_csv(study_dir / "predictions" / "test_logreg.csv")
    P = test[[f"prob_{c}" for c in classes]].to_numpy()
    assert row["test_auc"] == pytest.approx(roc_auc_score(test["y"], P, multi_class="ovr", average="macro"))
    assert row["test_accuracy"] == pytest.approx((P.argmax(axis=1) == test["y"]).mean())
    assert np.isnan(row["threshold"]) and np.isnan(row["delong_p"])


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_the_interrupted_trial_is_retried(tmp_path: Path, search_cache: Path) -> None:
    """SIGTERM (or Ctrl-C) mid-trial: exit 130, leaderboard of the finished trials written, trial retried."""
    import signal
    import time

    # 64 px x 10 epochs (early stopping needs >= 6 per fold): each trial takes seconds even on an idle
    # machine, so the trial seen RUNNING is still running when the signal lands
    config = _tiny_config(tmp_path, models=("tiny_cnn",), n_trials=2, epochs=10, image_size=64)
    argv = [sys.executable, "-m", "automl.search", "--preset", "smoke", "--out", str(tmp_path), "--models",
            "tiny_cnn", "--n-trials", "2", "--epochs", "10", "--image-size", "64", "--no-refit",
            "--leakage-audit", "none", "-q"]
    env = {**os.environ, "STROKECT_CACHE": str(search_cache)}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = config.study_dir / "study.journal"
    victim, deadline = None, time.time() + 240
    while victim is None and time.time() < deadline and proc.poll() is None:
        if journal.is_file():
            running = [t for t in open_study(config).get_trials() if t.state == TrialState.RUNNING
                       and t.intermediate_values]
            victim = running[0].number if running else None
        time.sleep(0.2)
    assert victim is not None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert (config.study_dir / "leaderboard.csv").is_file()
    interrupted = open_study(config).trials[victim]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["error"].startswith("interrupted")
    run_search(config, progress_bars=False)
    retry = [t for t in open_study(config).trials if t.user_attrs.get("retry_of") == victim]
    assert len(retry) == 1 and retry[0].state.is_finished()


def test_sampler_seeds_differ_between_processes_sharing_a_study() -> None:
    local = SearchConfig(preset="smoke", seed=3)
    assert search.sampler_seed(local) == 3  # one local process: reproducible
    assert len({search.sampler_seed(local, w) for w in range(4)}) == 4
    shared = SearchConfig(preset="smoke", seed=3, storage="sqlite:///x.db")
    assert search.sampler_seed(shared) != 3  # other machines with the same --seed must not collide


# ------------------------------------------------------------------------------------------------ local weights


@pytest.fixture()
def no_weights_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing in $STROKECT_WEIGHTS, the Hugging Face cache or the torch hub cache."""
    empty = tmp_path / "empty-caches"
    empty.mkdir()
    monkeypatch.delenv("STROKECT_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(empty / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(empty / "torch"))
    _pretrained._OBTAINABLE.clear()
    return empty


@pytest.mark.parametrize("weights_dir", [False, True])
def test_pretrained_yes_without_weights_fails_before_any_work(weights_dir: bool, no_weights_anywhere: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models._pretrained import missing_weights_message

    out = tmp_path / "out"
    argv = ["--preset", "smoke", "--models", "tiny_cnn,resnet18", "--pretrained", "yes", "--out", str(out)]
    if weights_dir:
        argv += ["--weights-dir", str(no_weights_anywhere)]  # a folder, but without resnet18 weights
    with pytest.raises(SystemExit) as info:
        search.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert missing_weights_message("resnet18", "resnet18", offline=True) in err  # tests run with HF_HUB_OFFLINE=1
    assert not out.exists()  # nothing scanned, trained or written


def test_phash_threshold_flag_reaches_the_scan_and_config_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--phash-threshold`` (suggested by the quality report) is a real flag: scan, config.json, resume check."""
    import data
    from automl.config import STUDY_DEFINING
    from automl.data_context import prepare_data

    config = search.config_from_args(search.build_parser().parse_args(["--phash-threshold", "3", "--preset", "smoke"]))
    assert config.phash_threshold == 3 and config.to_dict()["phash_threshold"] == 3
    assert SearchConfig.from_dict(config.to_dict()).phash_threshold == 3
    assert search.build_parser().parse_args([]).phash_threshold == 6 == SearchConfig(preset="smoke").phash_threshold
    assert "phash_threshold" in STUDY_DEFINING
    seen = {}

    def fake_scan(folder, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after the scan")

    monkeypatch.setattr(data, "scan_folder", fake_scan)
    with pytest.raises(RuntimeError, match="stop after the scan"):
        prepare_data(config, data_dir=tmp_path)
    assert seen["phash_threshold"] == 3


def test_fold_bar_counts_folds_from_one() -> None:
    from automl._progress import Progress

    progress = Progress(n_trials=1, n_folds=3, n_epochs=2, bars=True)
    try:
        progress.trial_start(0, "logreg")
        assert str(progress._fold_bar).startswith("fold 1/3")
        progress.epoch(0, 0, 0, 0.5, 0.5)
        assert str(progress._fold_bar).startswith("fold 1/3")
        progress.fold_end(0, 0, 0.5)
        progress.epoch(0, 1, 0, 0.5, 0.5)
        assert str(progress._fold_bar).startswith("fold 2/3")
        assert "0/3" not in str(progress._fold_bar)
    finally:
        progress.close()


def test_weights_dir_flag_reaches_the_config(tmp_path: Path) -> None:
    args = search.build_parser().parse_args(["--weights-dir", str(tmp_path)])
    assert search.config_from_args(args).weights_dir == str(tmp_path.resolve())
    assert search.build_parser().parse_args([]).weights_dir is None
    with pytest.raises(SystemExit):
        search.main(["--weights-dir", str(tmp_path / "missing"), "--out", str(tmp_path)])


def test_search_with_local_weights_dir_uses_imagenet_init(no_weights_anywhere: Path, tmp_path: Path,
                                                          search_cache: Path) -> None:
    """Weights saved with timm into --weights-dir: every trial and the refit start from them, and the
    leaderboard's ``init`` column says so."""
    import timm
    from safetensors.torch import save_file

    import models

    weights = tmp_path / "weights"
    weights.mkdir()
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()},
              str(weights / "resnet18.safetensors"))
    config = SearchConfig(preset="smoke", study="local_weights", leaderboards=str(tmp_path / "out"), models=("resnet18",),
                          n_trials=1, pretrained="yes", weights_dir=str(weights), leakage_audit="none",
                          phantom_n=60)
    study_dir = run_search(config, progress_bars=False)
    (trial,) = open_study(config).trials
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
    assert trial.user_attrs["init"] == "imagenet:local"
    assert trial.user_attrs["train_config"]["weights_dir"] == str(weights.resolve())
    board = pd.read_csv(study_dir / "leaderboard.csv")
    assert board["init"].tolist() == ["imagenet:local"] and board["refit"].tolist() == [True]
    assert models.load_predictor(study_dir / "models" / "resnet18").card["init"] == "imagenet:local"
    assert json.loads((study_dir / "config.json").read_text())["weights_dir"] == str(weights.resolve())


def test_cli_os_error_is_one_line(tmp_path: Path, search_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc = search.main(["--preset", "smoke", "--models", "logreg", "--n-trials", "1", "--no-refit",
                      "--leakage-audit", "none", "-q", "--leaderboards", str(blocker / "out")])
    assert rc == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and str(blocker) in lines[-1] and "Not a directory" in lines[-1]
    assert not any("Traceback" in line for line in lines)


# ------------------------------------------------------------------------------------------------ fixed plans


def test_demo_is_a_fixed_plan_over_every_family() -> None:
    demo = SearchConfig(preset="demo")
    assert demo.n_trials is None and demo.timeout == 0.0  # no wall-clock cut: the same study on every machine
    plan = search.default_trials(demo, max_batch_size=100)
    families = {models.get_model_info(p["model"]).family for p, _ in plan}
    kinds = {models.get_model_info(p["model"]).kind for p, _ in plan}
    assert families == {"classical", "cnn", "vit", "efficientnet", "resnet"} and kinds == {"classical", "deep", "frozen"}
    assert [p["model"] for p, default in plan if default] == list(demo.models)


def test_demo_phantom_test_part_holds_ten_patients_of_each_class(tmp_path: Path) -> None:
    """Short stacks, a lesion in most stroke slices: patient-level AUC is estimable on the demo's test part."""
    import data
    from automl.split import make_split
    from data.phantom import generate_phantom

    demo = SearchConfig(preset="demo")
    root = generate_phantom(tmp_path / "demo", n=demo.phantom_n, size=max(64, demo.image_size), seed=demo.seed,
                            difficulty=demo.phantom_difficulty, label_level=demo.phantom_label_level,
                            **demo.phantom_cohort)
    manifest = data.scan_folder(root, group_by=demo.group_by, window=demo.window, min_per_class=demo.folds)
    split = make_split(manifest, test_size=demo.test_size, n_folds=demo.folds, seed=demo.seed)
    patients = manifest.table.iloc[split.test_index].groupby("subject")["y"].max().value_counts()
    assert len(patients) == 2 and patients.min() >= 10, patients.to_dict()


def test_a_config_from_before_the_cohort_field_keeps_the_default_cohort() -> None:
    values = SearchConfig(preset="demo").to_dict()
    values.pop("phantom_cohort")  # config.json of a study that ran before the field existed
    assert SearchConfig.from_dict(values).phantom_cohort == {}
    assert SearchConfig.from_dict(values, validate=False).phantom_cohort == {}
    with pytest.raises(ValueError, match="phantom_cohort"):
        SearchConfig(preset="demo", phantom_cohort={"slices": (2, 5)})


def test_cpu_preset_follows_the_weights_this_machine_can_get(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretrained._OBTAINABLE.clear()
    for name in ("resnet18", "efficientnet_b0", "vit_tiny"):
        monkeypatch.setitem(_pretrained._OBTAINABLE, (name, None, True), False)
    monkeypatch.setitem(_pretrained._OBTAINABLE, ("efficientnet_lite0", None, True), True)
    cpu = SearchConfig(preset="cpu", offline=True)
    assert cpu.models == ("logreg", "svm_rbf", "efficientnet_lite0+logreg", "efficientnet_lite0+svm_rbf",
                          "efficientnet_lite0+knn", "simple_cnn", "efficientnet_lite0")
    assert cpu.n_trials is None and cpu.timeout == 0.0 and cpu.pretrained == "auto"
    monkeypatch.setitem(_pretrained._OBTAINABLE, ("resnet18", None, True), True)  # e.g. online
    assert "resnet18+svm_rbf" in SearchConfig(preset="cpu", offline=True).models
    assert SearchConfig(preset="cpu", offline=True).models[-1] == "resnet18"  # a short fine-tune too
