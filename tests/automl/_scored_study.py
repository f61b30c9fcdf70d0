"""A hand-made study folder whose refits are already on disk, for :func:`automl.leaderboard.write_leaderboard`.

No images and no training: ``config.json``, an Optuna journal with one complete trial per model,
the per-trial out-of-fold files, and for each model the files of a cached refit (``models/<m>/``
``config.json`` + ``card.json``, ``predictions/test_<m>.csv``, ``calibration_<m>.csv``). Labels are
per subject; with ``signal=0`` every probability is random and shared by all slices of a subject (the
slices of one patient agree with each other, not with the label): the situation of issue 16, where a
slice bootstrap or a slice DeLong test "finds" a model better than chance.

Used by tests/automl/test_leaderboard.py and tests/ui/test_dashboard.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ["Normal", "Stroke"]
MANIFEST_HASH = "feedfacefeedface"


def _subjects(prefix: str, n_pos: int, n_neg: int) -> pd.DataFrame:
    ids = [f"{prefix}{i:03d}" for i in range(n_pos + n_neg)]
    return pd.DataFrame({"subject": ids, "y": [1] * n_pos + [0] * n_neg})


def _slices(subjects: pd.DataFrame, slices: int, rng: np.random.Generator, signal: float) -> pd.DataFrame:
    """One row per slice; probability = subject effect (+ ``signal`` for positives) + small slice noise."""
    effect = rng.normal(0.0, 1.0, len(subjects)) + signal * subjects["y"].to_numpy()
    rows = subjects.loc[subjects.index.repeat(slices)].reset_index(drop=True)
    logit = np.repeat(effect, slices) + rng.normal(0.0, 0.05, len(rows))
    p = 1.0 / (1.0 + np.exp(-logit))
    out = pd.DataFrame({"path": [f"{CLASSES[y]}/{s} ({k}).png" for s, y, k in
                                 zip(rows["subject"], rows["y"], np.tile(np.arange(slices), len(subjects)))],
                        "label": [CLASSES[y] for y in rows["y"]], "y": rows["y"], "subject": rows["subject"]})
    out["prob_Normal"], out["prob_Stroke"] = 1.0 - p, p
    return out


def make_scored_study(root: Path, *, name: str = "nosignal", slices: int = 6, test: tuple[int, int] = (24, 24),
                      cv: tuple[int, int] = (30, 30), signal: float = 0.0, seed: int = 0,
                      models: tuple[str, ...] = ("tiny_cnn", "logreg")) -> Path:
    """Write ``root/<name>``: ``test``/``cv`` are (positive, negative) subject counts; best model first."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    rng = np.random.default_rng(seed)
    study_dir = root / name
    (study_dir / "predictions").mkdir(parents=True)
    test_subjects, cv_subjects = _subjects("t", *test), _subjects("c", *cv)
    cv_subjects["fold"] = np.arange(len(cv_subjects)) % 3
    storage = JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for number, model in enumerate(models):
        cv_auc = 0.70 - 0.05 * number  # the first model wins the selection
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, value=cv_auc, params={"model": model},
            distributions={"model": CategoricalDistribution(list(models))},
            user_attrs={"cv_auc_folds": [cv_auc] * 3, "init": "random", "fit_seconds": 1.0}))
        oof = _slices(cv_subjects, slices, rng, signal)
        oof.insert(4, "fold", np.repeat(cv_subjects["fold"].to_numpy(), slices))
        oof.to_csv(study_dir / "predictions" / f"oof_trial_{number:04d}.csv", index=False)
        calibration = oof[oof["fold"] == 0].drop(columns="fold")
        calibration.to_csv(study_dir / "predictions" / f"calibration_{model}.csv", index=False)
        _slices(test_subjects, slices, rng, signal).to_csv(study_dir / "predictions" / f"test_{model}.csv", index=False)
        model_dir = study_dir / "models" / model
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_text(json.dumps({"trial": number, "manifest_hash": MANIFEST_HASH}))
        (model_dir / "card.json").write_text(json.dumps({"model": model, "classes": CLASSES}))
    n_subjects = sum(test) + sum(cv)
    (study_dir / "config.json").write_text(json.dumps({
        "study": name, "study_name": name, "preset": "smoke", "classes": CLASSES, "storage_url": "study.journal",
        "manifest_hash": MANIFEST_HASH, "data_dir": str(root / "_gone"), "seed": 0, "folds": 3, "test_size": 0.25,
        "image_size": 32, "leakage_audit": "none", "target_sensitivity": None, "models": list(models),
        "n_images": n_subjects * slices, "n_subjects": n_subjects, "subject_source": "filename"}))
    return study_dir
