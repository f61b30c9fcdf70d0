"""Train one model on one cross-validation fold: the engine every Optuna trial calls.

:func:`fit_fold` takes the cached ``uint8 (N, S, S)`` arrays of a fold and a :class:`TrainConfig`, and
returns a :class:`FitResult` with the trained model (best-epoch weights), the per-epoch history and
the validation probabilities. It reports each epoch to a ``report(epoch, metrics) -> bool`` callback,
which is how the search prunes: when the callback returns ``True`` training stops and
``FitResult.pruned`` is set (the caller then raises ``optuna.TrialPruned``).

How a deep model is trained (the recipe of the CT literature):

* **Loss**: binary tasks emit one logit and use ``BCEWithLogitsLoss`` (``pos_weight`` for imbalance;
  ``"balanced"`` = n_negative / n_positive); multiclass tasks use softmax cross-entropy
  (``"balanced"`` = scikit-learn's class weights ``N / (C * n_c)``).
* **Optimiser / schedule**: AdamW or Adam (fused kernel on CPU and CUDA); cosine annealing per epoch, ``ReduceLROnPlateau`` on the
  validation AUC (factor 0.5, patience ``max(1, patience // 2)``) or a constant rate.
* **Early stopping** on the validation AUC (the validation loss when the AUC is undefined, i.e. a
  single-class validation fold) with ``patience`` epochs; the best epoch's weights are kept in memory
  and restored at the end.
* **Fine-tuning** of ImageNet-initialised models (``models.is_pretrained_init(model.init)``):

  - ``full``: every layer trains at ``lr`` from the first epoch.
  - ``two_stage``: stage 1 (``head_fraction`` of the epochs, at least one) trains only the classifier
    on a frozen backbone; stage 2 unfreezes everything at ``lr * unfreeze_lr_factor`` (0.1).
  - ``gradual``: the head trains alone first, then one backbone stage at a time is unfrozen, from the
    head backwards (``model.stages()``), every ``epochs // len(stages)`` epochs; the k-th stage
    below the head trains at ``lr * layer_decay**k`` (layer-wise learning-rate decay, 0.5).

  While only the head trains, the frozen backbone's features are computed **once per fold** (in
  eval mode, without augmentation) and the head is trained on the cached features; that makes
  head-only epochs one to two orders of magnitude cheaper than running the backbone every epoch
  (``cache_features=False`` does the latter, for benchmarks). With random init only ``full`` makes
  sense: any other strategy is logged and replaced by ``full`` (``FitResult.finetune_used``).
* **Augmentation** (:mod:`automl.augment`) runs batched on the training device, on the cached tensors.
* **Data**: the whole fold stays an in-memory ``uint8`` tensor (moved to the accelerator once when it
  fits); each epoch draws a seeded permutation and converts one batch at a time. No DataLoader
  workers, no decoding.
* **Determinism**: on CPU the same ``seed`` gives the same weights and metrics (weight init, data
  order, augmentation and dropout are all seeded). The global RNG state is restored afterwards.

Classical baselines (``models.get_model_info(name).kind == "classical"``) and the frozen-feature
lane (``<backbone>+<head>``, :mod:`automl.features`: cached ImageNet features + a scikit-learn head)
are fitted once and reported once, with the same :class:`FitResult`.

Example:
    >>> from automl.train import TrainConfig, fit_fold
    >>> config = TrainConfig(model="resnet18", lr=3e-4, epochs=6, finetune="two_stage", pretrained="auto")
    >>> result = fit_fold(X[tr], y[tr], X[va], y[va], config=config, num_classes=2)
    >>> result.best_metrics["val_auc"], result.val_probabilities.shape
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

import models
from automl._deep_fit import extract_head_inputs, fit_deep, val_auc
from automl.features import fit_frozen
from automl.train_config import FitResult, ReportCallback, TrainConfig, _is_int, default_amp

__all__ = ["FitResult", "ReportCallback", "TrainConfig", "default_amp", "extract_head_inputs", "fit_fold"]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------
# validation of the fold arrays
# ----------------------------------------------------------------------------------------------------


def _check_fold(
    X_train: Any, y_train: Any, X_val: Any, y_val: Any, num_classes: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    arrays = []
    for name, X, y in (("X_train", X_train, y_train), ("X_val", X_val, y_val)):
        X = np.asarray(X)
        if X.dtype != np.uint8 or X.ndim not in (3, 4) or X.shape[-1] != X.shape[-2] or X.ndim == 4 and X.shape[1] != 3:
            raise ValueError(f"{name} must be a uint8 array (N, S, S) or (N, 3, S, S) (a window set) from "
                             f"data.load_arrays, got {X.dtype} {X.shape}.")
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(f"{name} has {len(X)} images but its labels have shape {y.shape}.")
        if y.dtype.kind not in "iu":
            raise ValueError(f"labels of {name} must be integer class indices, got dtype {y.dtype}.")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(
                f"labels of {name} must lie in 0..{num_classes - 1}, got range {int(y.min())}..{int(y.max())}."
            )
        arrays += [np.ascontiguousarray(X), y.astype(np.int64)]
    Xtr, ytr, Xva, yva = arrays
    if len(Xtr) < 2:
        raise ValueError(f"X_train needs at least 2 images, got {len(Xtr)}.")
    if len(Xva) < 1:
        raise ValueError("X_val is empty.")
    if Xtr.shape[1:] != Xva.shape[1:]:
        raise ValueError(f"X_train and X_val image sizes differ: {Xtr.shape[1:]} != {Xva.shape[1:]}.")
    if len(np.unique(ytr)) < 2:
        logger.warning("The training fold holds a single class (%s); the model cannot learn much.", np.unique(ytr))
    return Xtr, ytr, Xva, yva

# ----------------------------------------------------------------------------------------------------
# classical baselines
# ----------------------------------------------------------------------------------------------------


def _fit_classical(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    config: TrainConfig,
    num_classes: int,
    report: ReportCallback | None,
    t_start: float,
) -> FitResult:
    Xtr, ytr, Xva, yva = data
    info = models.get_model_info(config.model)
    kwargs: dict[str, Any] = {"C": config.C, "seed": config.seed}
    if "gamma" in info.param_space:  # only kernel models take a kernel width
        kwargs["gamma"] = config.gamma
    model = models.create_model(
        config.model, num_classes=num_classes, image_size=int(Xtr.shape[-1]), **kwargs
    )
    t0 = time.perf_counter()
    model.fit(Xtr, ytr)
    train_seconds = time.perf_counter() - t0
    probs = np.asarray(model.predict_proba(Xva), dtype=np.float64)
    clipped = np.clip(probs[np.arange(len(yva)), yva], 1e-7, 1.0)
    metrics = {
        "epoch": 0,
        "stage": "classical",
        "train_loss": math.nan,
        "val_loss": float(-np.log(clipped).mean()),
        "val_auc": val_auc(yva, probs),
        "lr": math.nan,
        "seconds": time.perf_counter() - t0,
        "images_per_second": len(Xtr) / train_seconds if train_seconds > 0 else math.inf,
    }
    pruned = bool(report(0, dict(metrics))) if report is not None else False
    return FitResult(
        model=model,
        init="none",
        history=[metrics],
        best_epoch=0,
        best_metrics=dict(metrics),
        val_probabilities=probs,
        fit_seconds=time.perf_counter() - t_start,
        images_per_second=metrics["images_per_second"],
        pruned=pruned,
        finetune_used="none",
        device="cpu",
    )


# ----------------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------------


def fit_fold(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    config: TrainConfig,
    num_classes: int,
    report: ReportCallback | None = None,
) -> FitResult:
    """Train ``config.model`` on one fold and evaluate it on the fold's validation part every epoch.

    Args:
        X_train: ``uint8 (N, S, S)`` training images (``data.load_arrays``).
        y_train: Integer class indices ``(N,)``.
        X_val: ``uint8 (M, S, S)`` validation images.
        y_val: Integer class indices ``(M,)``.
        config: The training configuration.
        num_classes: Number of classes ``C`` (2 for binary tasks: one logit).
        report: Optional ``report(epoch, metrics) -> bool`` called after every epoch (once for classical
            models) with ``epoch, stage, train_loss, val_loss, val_auc, lr, seconds, images_per_second``;
            returning ``True`` stops training and sets ``FitResult.pruned``.

    Returns:
        The :class:`FitResult`; its model holds the best epoch's weights.

    Raises:
        ValueError: On malformed arrays/labels or an invalid configuration.
        models.PretrainedWeightsUnavailable: ``pretrained="yes"`` without local weights.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}.")
    t_start = time.perf_counter()
    data = _check_fold(X_train, y_train, X_val, y_val, num_classes)
    info = models.get_model_info(config.model)
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            if info.kind == "classical":
                return _fit_classical(data, config, num_classes, report, t_start)
            if info.head is not None:  # the frozen-feature lane: cached backbone features + a scikit-learn head
                return fit_frozen(data, config, num_classes, report, t_start)
            return fit_deep(data, config, num_classes, report, t_start)
    finally:
        if config.num_threads is not None:
            torch.set_num_threads(threads)
