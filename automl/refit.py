"""The final model of a configuration ("refit") and the leakage audit: the two steps that train.

* :func:`refit_one`: train the best configuration of an architecture on the first CV fold's
  training part, keep the epoch that is best on that fold's held-out **calibration part**, choose
  the decision threshold there with the final model's own probabilities, save the predictor (with
  its out-of-distribution reference, :mod:`models.ood`) and predict the untouched test part once.
* :func:`leakage_audit`: the same CV rows split twice, subject-grouped and slice-level; the gap
  shows how much a leaky split would flatter a model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from automl import metrics
from automl.data_context import prediction_frame, prepare_data, resolve_data_dir
from automl.scoring import calibration_threshold
from automl.study import StudyFolder
from data._files import atomic_write_json

__all__ = ["LEAKAGE_GAP", "LazyContext", "train_config_of", "refit_epochs", "predict_proba", "refit_one",
           "update_card", "leakage_audit"]

logger = logging.getLogger(__name__)

#: Slice-level minus grouped CV AUC above which the leakage audit raises its flag.
LEAKAGE_GAP = 0.05


class LazyContext:
    """Builds the search's :class:`DataContext` only when a refit or the audit needs the images."""

    def __init__(self, config: Any, config_json: dict[str, Any], ctx: Any = None) -> None:
        self.config = config
        self.config_json = config_json
        self._ctx = ctx

    def get(self) -> Any:
        if self._ctx is None:
            data_dir = Path(self.config_json.get("data_dir") or "")
            if not data_dir.is_dir():
                if self.config_json.get("data"):
                    raise ValueError(f"the study's data folder {data_dir} is gone; cannot refit (use --no-refit)")
                data_dir = resolve_data_dir(self.config)  # the phantom is regenerated deterministically
            ctx = prepare_data(self.config, data_dir=data_dir)
            expected = self.config_json.get("manifest_hash")
            if expected and ctx.manifest.hash != expected:
                raise ValueError(
                    f"the data in {data_dir} changed since the study ran (manifest hash {ctx.manifest.hash} != "
                    f"{expected}); cannot refit. Use --no-refit, or restore the data"
                )
            self._ctx = ctx
        return self._ctx


def train_config_of(trial: optuna.trial.FrozenTrial, **overrides: Any) -> Any:
    from automl.train import TrainConfig

    stored = dict(trial.user_attrs.get("train_config") or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return dataclasses.replace(TrainConfig(**{k: v for k, v in stored.items() if k in names}), **overrides)


def refit_epochs(trial: optuna.trial.FrozenTrial) -> int:
    """Epochs for the refit: the median over folds of the epoch count whose weights CV kept."""
    best = [int(e) for e in trial.user_attrs.get("best_epochs", []) or []]
    if best:
        return max(1, int(round(float(np.median(best)))))
    tc = trial.user_attrs.get("train_config") or {}
    return int(tc.get("epochs") or 1)


def predict_proba(model: Any, X: np.ndarray, *, num_classes: int, batch_size: int = 64,
                  features: Any = None) -> np.ndarray:
    """Class probabilities ``(N, C)`` of a fitted model (deep or classical) on uint8 images ``(N, S, S)``.

    Deep models get exactly what ``fit_fold`` fed them: float ``(B, 1, S, S)`` in [0, 1]; the logits
    become probabilities with :func:`models.logits_to_probabilities`. A frozen-feature model given
    ``features`` (its cache's ``features(X)``) runs only its head on them: the same numbers as the whole
    network (tests/models/test_frozen.py), without a backbone pass.
    """
    import torch

    import models as model_zoo

    if not isinstance(model, torch.nn.Module):
        return np.asarray(model.predict_proba(X), dtype=float)
    if features is not None:
        with torch.inference_mode():
            logits = model.head()(torch.from_numpy(np.asarray(features(X), dtype=np.float32)))
        return model_zoo.logits_to_probabilities(logits, num_classes).float().numpy().astype(float)
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(X), batch_size):
            x = model_zoo.uint8_to_input(torch.from_numpy(np.ascontiguousarray(X[i:i + batch_size])).to(device))
            out.append(model_zoo.logits_to_probabilities(model(x), num_classes).float().cpu().numpy())
    return np.concatenate(out).astype(float) if out else np.zeros((0, num_classes))


def refit_one(trial: optuna.trial.FrozenTrial, ctx: Any, config: Any, folder: StudyFolder,
               config_json: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, float | None, str]:
    """Fit the final model of one configuration, save its predictor, choose its threshold.

    The model trains on the first CV fold's training part and its decision threshold is chosen on
    that fold's validation part (the **calibration part**: subject-grouped, stratified, 1/K of the CV
    data), with the final model's own probabilities. A threshold must come from the model that uses
    it: a network's probability scale changes from fit to fit (in a 3-epoch demo the fold models'
    out-of-fold probabilities had a median of 0.41 and a refit on all CV data gave the test images a
    median of 0.58, so the out-of-fold Youden threshold called every test image "stroke").

    Returns:
        ``(test predictions, calibration-part predictions, threshold, threshold method)``.
    """
    import models as model_zoo
    from automl import train

    model_name = trial.params["model"]
    epochs = refit_epochs(trial)
    overrides: dict[str, Any] = {}
    if model_zoo.is_pretrained_init(str(trial.user_attrs.get("init", ""))):
        # the CV fits started from ImageNet weights: so must the refit (fail loudly, never fall back)
        overrides["pretrained"] = "yes"
        if getattr(config, "weights_dir", None):
            overrides["weights_dir"] = config.weights_dir
    tc = train_config_of(trial, epochs=epochs, patience=None, **overrides)
    split = ctx.split
    test = split.test_index
    fit_index, calibration = split.folds[0]
    t0 = time.perf_counter()
    # as in CV, the epoch whose weights are kept is the best one on the held-out (calibration) part;
    # the test part is never seen before it is scored
    result = train.fit_fold(ctx.X[fit_index], ctx.y[fit_index], ctx.X[calibration], ctx.y[calibration], config=tc,
                            num_classes=ctx.num_classes, report=None)
    lane = _lane_features(tc, int(ctx.X.shape[-1]))  # the frozen lane: its cached features, no forward passes
    P_calibration = predict_proba(result.model, ctx.X[calibration], num_classes=ctx.num_classes, features=lane)
    calibration_frame = prediction_frame(ctx, calibration, P_calibration)
    threshold, threshold_method = calibration_threshold(calibration_frame, ctx.classes, config.target_sensitivity)
    P = predict_proba(result.model, ctx.X[test], num_classes=ctx.num_classes, features=lane)
    frame = prediction_frame(ctx, test, P)
    model_folder = folder.model_dir(model_name)
    card = {
        "classes": list(ctx.classes),
        "window": config.window,
        "train_config": json.loads(json.dumps(dataclasses.asdict(tc), default=str)),
        "metrics": {"cv_auc_mean": trial.value, "cv_auc_std": float(np.std(trial.user_attrs.get("cv_auc_folds", [0]))),
                    "cv_auc_folds": trial.user_attrs.get("cv_auc_folds", [])},
        "threshold": threshold,
        "threshold_method": threshold_method,
        "manifest_hash": config_json.get("manifest_hash"),
        "versions": config_json.get("versions", {}),
        "study": config_json.get("study_name"),
        "trial": trial.number,
        "refit_epochs": epochs,
    }
    model_zoo.save_checkpoint(result.model, model_folder, card=card)
    _save_ood_reference(result.model, ctx.X[fit_index], ctx.X[calibration], model_folder, seed=config.seed,
                        features=lane)
    atomic_write_json({
        "study": config_json.get("study_name"),
        "trial": trial.number,
        "params": trial.params,
        "refit_epochs": epochs,
        "refit_images": int(len(fit_index)),
        "calibration_images": int(len(calibration)),
        "refit_seconds": time.perf_counter() - t0,
        "train_config": card["train_config"],
        "search_config": {k: config_json.get(k) for k in ("preset", "folds", "test_size", "image_size", "seed",
                                                          "group_by", "window", "data_dir")},
        "manifest_hash": config_json.get("manifest_hash"),
        "versions": config_json.get("versions", {}),
    }, model_folder / "config.json")
    return frame, calibration_frame, threshold, threshold_method


def _lane_features(tc: Any, image_size: int) -> Any:
    """``features(X)`` from the frozen-feature lane's cache for a ``<backbone>+<head>`` model, else ``None``."""
    import models as model_zoo

    info = model_zoo.get_model_info(tc.model)
    if info.head is None:
        return None
    from automl.features import feature_cache

    cache = feature_cache(info.backbone, image_size=image_size, pretrained=tc.pretrained,
                          weights_dir=tc.weights_dir, offline=tc.offline, device=tc.device)
    return cache.features


def _save_ood_reference(model: Any, X_fit: np.ndarray, X_calibration: np.ndarray, folder: Path, *,
                        seed: int, features: Any = None) -> None:
    """Save the out-of-distribution reference (:mod:`models.ood`) next to the checkpoint.

    Fitted on the refit's training part, its threshold calibrated on the calibration part. Optional:
    a failure is logged and leaves the folder without a reference (the app then says so), never a
    stale one from an earlier refit.
    """
    from models.ood import OOD_FILE, compute_reference

    try:
        compute_reference(model, X_fit, X_calibration, seed=int(seed), features=features).save(folder)
    except Exception as exc:  # noqa: BLE001 - the refit itself succeeded; the flag is an extra
        logger.warning("No out-of-distribution reference for %s: %s", folder.name, exc)
        (folder / OOD_FILE).unlink(missing_ok=True)


def update_card(folder: Path, **fields: Any) -> None:
    """Write the chosen threshold and test metrics into ``card.json`` (atomically)."""
    path = folder / "card.json"
    if not path.is_file():
        return
    card = json.loads(path.read_text(encoding="utf-8"))
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    atomic_write_json(card, path)


def leakage_audit(ctx: Any, config: Any, trial: optuna.trial.FrozenTrial, method: str) -> dict[str, Any]:
    """Grouped versus slice-level CV AUC of the winning configuration.

    The same CV rows are split twice: the study's subject-grouped folds, and slice-level
    ``StratifiedKFold`` folds that ignore subjects (what a careless study would do). A model that
    recognises subjects scores higher on the slice-level folds; a gap above :data:`LEAKAGE_GAP` AUC is
    flagged. Both numbers come from the same cheap fit, so the gap is apples to apples:

    * ``method="probe"``: a logistic-regression linear probe on down-sampled pixels (the registry's
      ``logreg``, ``C=1``): seconds, independent of the winner.
    * ``method="model"``: the winning configuration itself, with half its epochs (at least 1).

    Returns:
        ``{"method", "model", "epochs", "grouped_auc", "slice_auc", "gap", "flagged", "threshold",
        "grouped_folds", "slice_folds", "trial", "seconds", "description"}``.
    """
    from automl import train
    from automl.split import slice_level_folds

    t0 = time.perf_counter()
    if method == "probe":
        from automl.train import TrainConfig

        tc = TrainConfig(model="logreg", C=1.0, seed=config.seed, pretrained="no", epochs=1)
        description = "logistic-regression linear probe on down-sampled pixels, C=1"
    else:
        epochs = max(1, math.ceil(int((trial.user_attrs.get("train_config") or {}).get("epochs") or config.epochs) / 2))
        tc = train_config_of(trial, epochs=epochs, patience=None)
        description = f"the winning configuration (trial {trial.number}, {tc.model}) with {epochs} epoch(s)"
    result: dict[str, Any] = {"method": method, "model": tc.model, "epochs": int(tc.epochs), "trial": trial.number,
                              "threshold": LEAKAGE_GAP, "description": description}
    for name, folds in (("grouped", ctx.split.folds), ("slice", slice_level_folds(ctx.split))):
        aucs = []
        for tr, va in folds:
            fit = train.fit_fold(ctx.X[tr], ctx.y[tr], ctx.X[va], ctx.y[va], config=tc, num_classes=ctx.num_classes)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
                aucs.append(float(metrics.roc_auc(ctx.y[va], np.asarray(fit.val_probabilities, dtype=float))))
        result[f"{name}_folds"] = aucs
        result[f"{name}_auc"] = float(np.nanmean(aucs))
    result["gap"] = result["slice_auc"] - result["grouped_auc"]
    result["flagged"] = bool(result["gap"] > LEAKAGE_GAP)
    result["seconds"] = time.perf_counter() - t0
    logger.info("leakage audit (%s): grouped AUC %.3f, slice-level AUC %.3f, gap %+.3f%s", method,
                result["grouped_auc"], result["slice_auc"], result["gap"], "  <-- FLAGGED" if result["flagged"] else "")
    return result
