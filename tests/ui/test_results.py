"""Tests of automl.results, the reading side of a study folder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from automl.results import StudyError, list_studies, load_study, probability_columns, study_fingerprint


def _check_all_files_load(study_dir: Path) -> None:
    study = load_study(study_dir)
    assert len(study.classes) >= 2
    assert {"trial", "model", "state", "cv_auc_mean"} <= set(study.leaderboard.columns)
    assert isinstance(study.report, dict) and isinstance(study.quality, dict)
    assert {"path", "y", "part", "fold"} <= set(study.split.columns)
    assert not study.manifest.empty
    models = study.refitted_models()
    assert models, "a finished study has at least one refitted model"
    assert study.best_model in models
    for model in models:
        assert (study.model_dir(model) / "card.json").is_file()
        test = study.test_predictions(model)
        assert set(probability_columns(study.classes)) <= set(test.columns)
        assert len(test) == (study.split["part"] == "test").sum()
        assert set(test["path"]) == set(study.split.loc[study.split["part"] == "test", "path"])
        oof = study.oof_predictions(model)
        assert "fold" in oof.columns
        assert 0.0 <= study.threshold(model) <= 1.0
    for trial in study.leaderboard["trial"]:
        path = study_dir / "predictions" / f"oof_trial_{int(trial):04d}.csv"
        if path.is_file():
            assert len(study.oof(int(trial))) > 0
    # every refitted test AUC recomputes from the saved predictions
    board = study.leaderboard
    for _, row in board[board["refit"]].iterrows():
        if len(study.classes) == 2 and pd.notna(row.get("test_auc")):
            test = study.test_predictions(str(row["model"]))
            assert roc_auc_score(test["y"], test[f"prob_{study.classes[1]}"]) == pytest.approx(row["test_auc"], abs=1e-6)


def test_handmade_study_loads(handmade_study: Path) -> None:
    _check_all_files_load(handmade_study)
    study = load_study(handmade_study)
    assert study.classes == ["Normal", "Stroke"]
    assert study.refitted_models() == ["tiny_cnn", "logreg"]  # leaderboard rank order
    assert study.threshold("tiny_cnn") == pytest.approx(0.42)
    assert study.attribution is None
    assert list(study.leaderboard["rank"].dropna()) == sorted(study.leaderboard["rank"].dropna())


@pytest.mark.slow
def test_smoke_study_loads(smoke_study: Path) -> None:
    _check_all_files_load(smoke_study)


def test_list_studies(handmade_study: Path, tmp_path: Path) -> None:
    root = handmade_study.parent
    (root / "not_a_study").mkdir()
    assert list_studies(root) == [handmade_study]
    assert list_studies(tmp_path / "missing") == []


def test_fingerprint_changes_when_a_file_changes(handmade_study: Path) -> None:
    before = study_fingerprint(handmade_study)
    path = handmade_study / "report.json"
    path.write_text(path.read_text())
    import os

    os.utime(path, (before + 10, before + 10))
    assert study_fingerprint(handmade_study) > before
    assert study_fingerprint(handmade_study / "nope") == 0.0


@pytest.mark.parametrize("filename", ["config.json", "leaderboard.csv"])
def test_missing_required_file(handmade_study: Path, filename: str) -> None:
    (handmade_study / filename).unlink()
    with pytest.raises(StudyError, match=filename.replace(".", r"\.")):
        load_study(handmade_study)


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("config.json", "{not json"),
        ("config.json", "[1, 2]"),
        ("config.json", json.dumps({"classes": ["only_one"]})),
        ("leaderboard.csv", ""),
        ("leaderboard.csv", "a,b\n1,2\n"),
    ],
)
def test_corrupt_required_file(handmade_study: Path, filename: str, content: str) -> None:
    (handmade_study / filename).write_text(content)
    with pytest.raises(StudyError, match=filename.replace(".", r"\.")) as info:
        load_study(handmade_study)
    assert info.value.path is not None and info.value.path.name == filename


@pytest.mark.parametrize(
    ("filename", "accessor"),
    [
        ("report.json", lambda s: s.report),
        ("quality.json", lambda s: s.quality),
        ("split.csv", lambda s: s.split),
        ("manifest.csv", lambda s: s.manifest),
        ("predictions/test_tiny_cnn.csv", lambda s: s.test_predictions("tiny_cnn")),
        ("predictions/oof_tiny_cnn.csv", lambda s: s.oof_predictions("tiny_cnn")),
        ("predictions/oof_trial_0000.csv", lambda s: s.oof(0)),
    ],
)
@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_optional_files_fail_with_their_name(handmade_study: Path, filename: str, accessor, damage: str) -> None:
    path = handmade_study / filename
    if damage == "missing":
        path.unlink()
    else:
        path.write_text("{broken" if path.suffix == ".json" else "x\n1\n")
    study = load_study(handmade_study)  # the study itself still loads
    with pytest.raises(StudyError, match=Path(filename).name.replace(".", r"\.")):
        accessor(study)


def test_non_finite_probabilities_rejected(handmade_study: Path) -> None:
    path = handmade_study / "predictions" / "test_logreg.csv"
    frame = pd.read_csv(path)
    frame.loc[0, "prob_Stroke"] = np.nan
    frame.to_csv(path, index=False)
    with pytest.raises(StudyError, match="non-finite"):
        load_study(handmade_study).test_predictions("logreg")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "x y"])
def test_bad_model_names(handmade_study: Path, bad: str) -> None:
    study = load_study(handmade_study)
    with pytest.raises(StudyError, match="Invalid model name"):
        study.test_predictions(bad)


def test_unknown_model_dir(handmade_study: Path) -> None:
    with pytest.raises(StudyError, match="vit_tiny"):
        load_study(handmade_study).model_dir("vit_tiny")


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_trial_numbers(handmade_study: Path, bad) -> None:
    with pytest.raises(StudyError, match="trial"):
        load_study(handmade_study).oof(bad)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="does not exist"):
        load_study(tmp_path / "nope")


def test_threshold_fallbacks(handmade_study: Path) -> None:
    board = pd.read_csv(handmade_study / "leaderboard.csv")
    board["threshold"] = np.nan
    board.to_csv(handmade_study / "leaderboard.csv", index=False)
    study = load_study(handmade_study)
    assert study.threshold("tiny_cnn") == pytest.approx(0.42)  # from the card
    shutil.rmtree(handmade_study / "models" / "logreg")
    assert load_study(handmade_study).refitted_models() == ["tiny_cnn"]


def test_optuna_study_loads(handmade_study: Path) -> None:
    optuna_study = load_study(handmade_study).load_optuna_study()
    states = [t.state.name for t in optuna_study.trials]
    assert states.count("PRUNED") == 1 and states.count("COMPLETE") == 4


def test_optuna_study_missing_journal(handmade_study: Path) -> None:
    (handmade_study / "study.journal").unlink()
    with pytest.raises(StudyError, match="study.journal"):
        load_study(handmade_study).load_optuna_study()


def test_a_version_1_leaderboard_is_read_with_current_names() -> None:
    study = load_study(Path(__file__).resolve().parents[1] / "fixtures" / "study_v1")
    board = study.leaderboard
    tested = board["delong_p"].notna()
    assert tested.any() and (board.loc[tested, "compare_p"] == board.loc[tested, "delong_p"]).all()
    assert set(board.loc[tested, "compare_method"]) == {"delong"}  # what version 1 did: images as independent
    assert study.verdict is None and study.warnings == [] and study.headline("logreg") is None
    assert study.winner_trial == 2
