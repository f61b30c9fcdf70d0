"""Study-folder fixtures for the UI tests.

* ``smoke_study``: a REAL study built once per test session by
  ``automl.search.run_search(SearchConfig(preset="smoke", ...))`` into a temporary ``leaderboards/``
  folder (shared with the Gradio tests). Skipped when ``automl.search`` is not importable.
* ``handmade_study``: a small study folder written directly in the ``docs/ARCHITECTURE.md`` layout
  (images, manifest, split, predictions, leaderboard, report, Optuna journal), for fast reader and
  chart tests that must not depend on the search.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

logger = logging.getLogger(__name__)

HANDMADE_CLASSES = ["Normal", "Stroke"]


def _write_images(data_dir: Path, classes: list[str], n: int, rng: np.random.Generator) -> pd.DataFrame:
    from PIL import Image

    rows = []
    for i in range(n):
        patient = f"p{i // 2:03d}"  # two slices per subject, same label
        y = (i // 2) % len(classes)
        rel = f"{classes[y]}/{patient} ({i % 2}).png"
        image = (rng.random((32, 32)) * 80).astype(np.uint8)
        mask = np.zeros((32, 32), dtype=np.uint8)
        if y > 0:
            image[10:18, 12:20] = 220
            mask[10:18, 12:20] = 255
        for root, array in ((data_dir, image), (data_dir / "_masks", mask)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / rel)
        rows.append(dict(path=rel, label=classes[y], y=y, subject=patient, format="png", sha1=f"{i:040x}",
                         phash=f"{i:016x}", height=32, width=32, mean=float(image.mean() / 255),
                         std=float(image.std() / 255), sharpness=float(rng.random())))
    return pd.DataFrame(rows)


def _predictions(frame: pd.DataFrame, classes: list[str], strength: float, rng: np.random.Generator) -> pd.DataFrame:
    out = frame[["path", "label", "y", "subject"]].copy()
    logits = rng.normal(size=(len(frame), len(classes)))
    logits[np.arange(len(frame)), frame["y"].to_numpy()] += strength
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for k, c in enumerate(classes):
        out[f"prob_{c}"] = probs[:, k]
    return out


def _save_model(name: str, folder: Path, classes: list[str], data_dir: Path, train: pd.DataFrame) -> None:
    """A real (untrained or quickly fitted) predictor folder, so that attributions and predictions work."""
    import models
    from PIL import Image

    if name == "logreg":
        model = models.create_model(name, num_classes=len(classes), image_size=32)
        X = np.stack([np.asarray(Image.open(data_dir / p)) for p in train["path"]])
        model.fit(X, train["y"].to_numpy())
    else:
        import torch

        torch.manual_seed(0)
        model = models.create_model(name, num_classes=len(classes), image_size=32)
    models.save_checkpoint(model, folder, card={"classes": classes, "window": "brain", "threshold": 0.42})


def make_handmade_study(root: Path, *, name: str = "handmade", classes: list[str] | None = None,
                        n: int = 48, seed: int = 0) -> Path:
    """Write a consistent study folder ``root/<name>`` (and its images under ``root/_data_<name>``)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    classes = list(classes or HANDMADE_CLASSES)
    rng = np.random.default_rng(seed)
    study_dir = root / name
    (study_dir / "predictions").mkdir(parents=True)
    data_dir = root / f"_data_{name}"
    manifest = _write_images(data_dir, classes, n, rng)
    manifest.to_csv(study_dir / "manifest.csv", index=False)

    subjects = manifest["subject"].unique()
    subject_y = manifest.groupby("subject")["y"].first()
    test_subjects = {s for _, group in subject_y.groupby(subject_y) for s in group.index[::3]}  # stratified
    split = manifest[["path", "label", "y", "subject"]].copy()
    split["part"] = np.where(split["subject"].isin(test_subjects), "test", "cv")
    cv_subjects = [s for s in subjects if s not in test_subjects]
    fold_of = {s: k % 3 for _, group in subject_y[cv_subjects].groupby(subject_y[cv_subjects])
               for k, s in enumerate(group.index)}  # stratified grouped folds
    split["fold"] = [fold_of.get(s, -1) for s in split["subject"]]
    split.to_csv(study_dir / "split.csv", index=False)
    cv, test = split[split["part"] == "cv"], split[split["part"] == "test"]

    # Optuna journal with complete and pruned trials.
    storage = JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    models_cycle = ["tiny_cnn", "logreg", "tiny_cnn", "logreg", "tiny_cnn"]
    rows = []
    for t, model in enumerate(models_cycle):
        trial = study.ask()
        trial.suggest_categorical("model", ["tiny_cnn", "logreg"])
        lr = trial.suggest_float("lr", 1e-5, 1e-3, log=True)
        strength = 0.5 + t * 0.4
        oof = _predictions(cv, classes, strength, rng)
        oof.insert(4, "fold", cv["fold"].to_numpy())
        oof.to_csv(study_dir / "predictions" / f"oof_trial_{t:04d}.csv", index=False)
        fold_aucs = [0.55 + 0.08 * t + 0.01 * k for k in range(3)]
        for step, value in enumerate(fold_aucs):
            trial.report(value, step)
        state = "PRUNED" if t == 1 else "COMPLETE"
        if state == "PRUNED":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, float(np.mean(fold_aucs)))
        rows.append(dict(trial=t, model=model, init="random", lr=lr, batch_size=16, weight_decay=1e-4,
                         finetune="full", cv_auc_mean=np.mean(fold_aucs) if state == "COMPLETE" else np.nan,
                         cv_auc_std=np.std(fold_aucs) if state == "COMPLETE" else np.nan,
                         cv_auc_folds=json.dumps(fold_aucs), state=state, refit=False, fit_seconds=1.0 + t,
                         params=json.dumps({"model": model, "lr": lr})))
    board = pd.DataFrame(rows)
    best_per_model = board[board.state == "COMPLETE"].sort_values("cv_auc_mean", ascending=False).groupby("model").head(1)
    for model, strength in zip(best_per_model["model"], (2.0, 1.0)):
        row = board.index[(board.trial == best_per_model.loc[best_per_model.model == model, "trial"].iloc[0])][0]
        test_pred = _predictions(test, classes, strength, rng)
        test_pred.to_csv(study_dir / "predictions" / f"test_{model}.csv", index=False)
        oof = _predictions(cv, classes, strength, rng)
        oof.insert(4, "fold", cv["fold"].to_numpy())
        oof.to_csv(study_dir / "predictions" / f"oof_{model}.csv", index=False)
        calibration = _predictions(cv[cv["fold"].to_numpy() == 0], classes, strength, np.random.default_rng(7))
        calibration.to_csv(study_dir / "predictions" / f"calibration_{model}.csv", index=False)
        from sklearn.metrics import roc_auc_score

        auc = roc_auc_score(test_pred["y"] == len(classes) - 1, test_pred[f"prob_{classes[-1]}"])
        board.loc[row, ["refit", "test_auc", "test_auc_ci_low", "test_auc_ci_high", "threshold", "delong_p"]] = [
            True, auc, max(0.0, auc - 0.1), min(1.0, auc + 0.05), 0.42 if model == "tiny_cnn" else 0.5,
            np.nan if model == "tiny_cnn" else 0.2]
        _save_model(model, study_dir / "models" / model, classes, data_dir, cv)
    board["rank"] = board["cv_auc_mean"].rank(ascending=False, method="first")
    board = board.sort_values("rank", na_position="last")
    board.to_csv(study_dir / "leaderboard.csv", index=False)

    (study_dir / "config.json").write_text(json.dumps({
        "study": name, "preset": "handmade", "classes": classes, "data_dir": str(data_dir),
        "storage": None, "storage_url": "study.journal", "study_name": name, "manifest_hash": "0" * 16, "image_size": 32}))
    (study_dir / "report.json").write_text(json.dumps({
        "best_model": "tiny_cnn", "threshold": 0.42,
        "leakage_audit": {"method": "probe", "grouped_auc": 0.80, "slice_auc": 0.83, "gap": 0.03, "flagged": False,
                          "threshold": 0.05, "description": "linear probe"},
        "delong": {"logreg": {"vs": "tiny_cnn", "auc": 0.7, "best_auc": 0.8, "z": 1.2, "p_value": 0.2}},
        "subject_level": {}}))
    (study_dir / "quality.json").write_text(json.dumps({
        "n_images": n, "class_counts": manifest["label"].value_counts().to_dict(), "bad_files": [],
        "duplicates": [], "near_duplicates": [], "conflicts": [], "subject_source": "filename"}))
    return study_dir


@pytest.fixture(scope="session")
def _handmade_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_handmade_study(tmp_path_factory.mktemp("handmade") / "leaderboards")


@pytest.fixture
def handmade_study(_handmade_template: Path, tmp_path: Path) -> Path:
    """A private copy of a hand-written study folder in the contract's layout (fast, no search).

    Its images stay in the shared template (read-only for tests); the study folder may be damaged freely.
    """
    import shutil

    target = tmp_path / "leaderboards" / _handmade_template.name
    shutil.copytree(_handmade_template, target)
    return target


@pytest.fixture(scope="session")
def _handmade_template3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_handmade_study(tmp_path_factory.mktemp("handmade3") / "leaderboards", name="handmade3",
                               classes=["Normal", "Hemorrhagic", "Ischemic"], n=60)


@pytest.fixture
def handmade_study3(_handmade_template3: Path, tmp_path: Path) -> Path:
    """Like ``handmade_study`` with three classes."""
    import shutil

    target = tmp_path / "leaderboards" / _handmade_template3.name
    shutil.copytree(_handmade_template3, target)
    return target


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real study produced by a smoke search (built once per session). Returns the study folder;
    its parent is the leaderboards root."""
    search = pytest.importorskip("automl.search", reason="automl.search is not available yet")
    import os

    cache = tmp_path_factory.getbasetemp() / "strokect-cache"
    old = os.environ.get("STROKECT_CACHE")
    os.environ["STROKECT_CACHE"] = str(cache)  # same folder as the autouse fixture
    try:
        out = tmp_path_factory.mktemp("leaderboards")
        config = search.SearchConfig(preset="smoke", study="smoke", leaderboards=str(out))
        study_dir = Path(search.run_search(config))
    finally:
        if old is None:
            os.environ.pop("STROKECT_CACHE", None)
        else:
            os.environ["STROKECT_CACHE"] = old
    return study_dir
