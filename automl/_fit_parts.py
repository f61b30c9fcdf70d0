"""Pieces of a fold fit shared by the engines: loss weights, the logged AUC, uint8 -> float batches and
the frozen-backbone head inputs (computed once per fold while only the head trains)."""
from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import models
from automl.metrics import roc_auc
from automl.train_config import TrainConfig

__all__ = ["extract_head_inputs", "val_auc"]

logger = logging.getLogger(__name__)


def _pos_weight(config: TrainConfig, y: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """Loss weights: binary ``pos_weight`` (1,) or multiclass class weights (C,); ``None`` = unweighted."""
    if config.pos_weight is None:
        return None
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    if num_classes == 2:
        if config.pos_weight == "balanced":
            if counts[1] == 0:
                logger.warning("pos_weight='balanced' but the training fold has no positives; using 1.0.")
                return torch.ones(1)
            return torch.tensor([counts[0] / counts[1]], dtype=torch.float32)
        return torch.tensor([float(config.pos_weight)], dtype=torch.float32)
    if config.pos_weight != "balanced":
        raise ValueError(
            f"A numeric pos_weight ({config.pos_weight!r}) only applies to binary tasks; "
            f"use 'balanced' or None for {num_classes} classes."
        )
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _unweighted_loss(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Mean negative log-likelihood (the unweighted training loss), comparable across pos_weight settings."""
    logits = logits.float()
    if num_classes == 2:
        return float(F.binary_cross_entropy_with_logits(logits[:, 0], y.float()))
    return float(F.cross_entropy(logits, y))


def val_auc(y: np.ndarray, P: np.ndarray) -> float:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = roc_auc(y, P)
    if caught:
        logger.warning("%s", caught[0].message)
    return value


# ----------------------------------------------------------------------------------------------------
# head-input caching (frozen-backbone reuse)
# ----------------------------------------------------------------------------------------------------


def extract_head_inputs(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    channels_last: bool = False,
) -> torch.Tensor | None:
    """Run the (frozen) model once over ``X`` and return what its ``head()`` receives.

    The model runs in eval mode under ``torch.no_grad``; a forward pre-hook on ``model.head()``
    captures the head's input. The capture is checked on the first batch: ``head(features)`` must
    reproduce the model's output, otherwise the model does not end in a plain head call and ``None``
    is returned (the caller then runs the backbone every epoch).

    Args:
        model: A deep model with a ``head()`` method (``models.create_model``).
        X: ``uint8 (N, S, S)`` images (numpy or torch).
        batch_size: Inference batch size.
        device: Device to run on (default: the model's).
        channels_last: Feed the batches in ``channels_last`` memory format.

    Returns:
        Float tensor ``(N, ...)`` of head inputs on ``device``, or ``None`` (see above).
    """
    head = model.head()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    Xt = torch.from_numpy(np.ascontiguousarray(X)) if isinstance(X, np.ndarray) else X
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach() if args and isinstance(args[0], torch.Tensor) else None)

    was_training = model.training
    model.eval()
    handle = head.register_forward_pre_hook(hook)
    features: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, len(Xt), batch_size):
                xb = _to_float(Xt[start : start + batch_size], device, channels_last)
                captured.clear()
                out = model(xb)
                if len(captured) != 1 or captured[0] is None:
                    logger.info("head() of %s is not called once per forward; no feature cache.", type(model).__name__)
                    return None
                if start == 0:
                    replay = head(captured[0])
                    if replay.shape != out.shape or not torch.allclose(replay, out, rtol=1e-4, atol=1e-5):
                        logger.info("head(features) does not reproduce the model output; no feature cache.")
                        return None
                features.append(captured[0])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(features)


def _to_float(x_uint8: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (B, S, S) or (B, C, S, S) -> float (B, C, S, S) in [0, 1] on ``device``."""
    x = models.uint8_to_input(x_uint8.to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# ----------------------------------------------------------------------------------------------------
# the deep trainer
# ----------------------------------------------------------------------------------------------------
