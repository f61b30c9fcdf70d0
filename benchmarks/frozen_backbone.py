"""Benchmark 4, frozen-backbone reuse: head-only epochs on cached features vs the backbone every epoch.

:func:`automl.train.fit_fold` with ``finetune="two_stage"`` trains only the classifier head in its
first stage. With ``cache_features=True`` (the default) the frozen backbone's features are computed
once per fold (:func:`automl.train.extract_head_inputs`) and the head trains on them; with
``cache_features=False`` the frozen backbone runs on every batch of every epoch (what a plain
``requires_grad_(False)`` loop does). Same model, fold, batch, epochs and threads.

Two-stage fine-tuning applies to ImageNet-initialised models only. Without network access there are
no ImageNet weights here, so the benchmark writes the timm model's own random initial weights to
``<tmp>/<timm_name>.safetensors`` and passes that folder as ``weights_dir``: the engine then treats
the model as ImageNet-initialised (3-channel stem, ImageNet normalisation), which is all the timing
depends on. ``head_fraction`` is set so that every epoch is a head epoch.

Figures (medians over ``repeats`` fits, each after one warm-up fit):

* per head epoch: median epoch seconds (training + validation) cached vs uncached (target: >= 10x
  faster, i.e. ratio <= 0.10);
* whole head stage: ``fit_seconds`` of the fit, which for the cached variant includes the one-time
  feature extraction (informational: the speed-up grows with the number of head epochs).

Run alone: ``python -m benchmarks --only frozen_backbone``.
"""
from __future__ import annotations

import logging
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import Record, make_record

__all__ = ["Settings", "run", "settings", "write_random_weights"]

logger = logging.getLogger(__name__)

NAME = "frozen_backbone"


@dataclass
class Settings:
    model: str = "resnet18"
    size: int = 128
    n_train: int = 128
    n_val: int = 64
    batch_size: int = 32
    head_epochs: int = 5
    repeats: int = 1


def settings(mode: str) -> Settings:
    """``"full"`` or ``"quick"`` settings."""
    if mode == "full":
        return Settings()
    if mode == "quick":
        return Settings(size=64, n_train=64, n_val=32, head_epochs=3)
    raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}.")


def write_random_weights(model_name: str, folder: Path) -> Path:
    """Save the timm architecture's random initial 3-channel weights as ``<timm_name>.safetensors``.

    Raises:
        ValueError: If ``model_name`` is not a timm model of the registry.
    """
    import timm
    from safetensors.torch import save_file

    import models

    info = models.get_model_info(model_name)
    if not info.timm_name:
        raise ValueError(f"{model_name!r} is not a timm model; frozen-backbone reuse needs a pretrained-capable one.")
    net = timm.create_model(info.timm_name, pretrained=False)
    path = Path(folder) / f"{info.timm_name}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _fit(cfg: Settings, data: tuple[np.ndarray, ...], weights_dir: Path, cache: bool) -> dict[str, Any]:
    import models
    from automl.train import TrainConfig, fit_fold

    config = TrainConfig(model=cfg.model, lr=1e-3, batch_size=cfg.batch_size, epochs=cfg.head_epochs,
                         finetune="two_stage", head_fraction=0.999, pretrained="yes", weights_dir=str(weights_dir),
                         aug_strength=0.0, scheduler="none", patience=None, device="cpu", seed=0,
                         cache_features=cache)
    result = fit_fold(*data, config=config, num_classes=2)
    if not models.is_pretrained_init(result.init) or any(h["stage"] != "head" for h in result.history):
        raise RuntimeError(f"expected head-only epochs of an ImageNet-initialised model, got init={result.init!r}, "
                           f"stages={[h['stage'] for h in result.history]}")
    return {"epoch_seconds": [float(h["seconds"]) for h in result.history], "fit_seconds": result.fit_seconds}


def run(cfg: Settings) -> list[Record]:
    """Run the benchmark; returns the per-epoch and whole-stage records."""
    rng = np.random.default_rng(0)
    n = cfg.n_train + cfg.n_val
    X = rng.integers(0, 256, size=(n, cfg.size, cfg.size), dtype=np.uint8)
    y = np.tile([0, 1], n // 2 + 1)[:n].astype(np.int64)
    data = (X[: cfg.n_train], y[: cfg.n_train], X[cfg.n_train :], y[cfg.n_train :])
    results: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="bench-weights-") as tmp:
        write_random_weights(cfg.model, Path(tmp))
        for cache in (True, False):
            _fit(cfg, data, Path(tmp), cache)  # warm-up
            results[cache] = [_fit(cfg, data, Path(tmp), cache) for _ in range(cfg.repeats)]
    epoch = {c: statistics.median(s for r in results[c] for s in r["epoch_seconds"]) for c in (True, False)}
    stage = {c: statistics.median(r["fit_seconds"] for r in results[c]) for c in (True, False)}
    common = {"model": cfg.model, "size": cfg.size, "n_train": cfg.n_train, "n_val": cfg.n_val,
              "batch_size": cfg.batch_size, "head_epochs": cfg.head_epochs, "repeats": cfg.repeats,
              "cached_epoch_seconds": [r["epoch_seconds"] for r in results[True]],
              "uncached_epoch_seconds": [r["epoch_seconds"] for r in results[False]],
              "weights": "random init saved as a local weights file (timing only; see the module docstring)"}
    return [
        make_record(
            f"{NAME}.{cfg.model}@{cfg.size}.head_epoch", ours=epoch[True], baseline=epoch[False], units="s per epoch",
            better="lower", target="ratio <= 0.10 (>= 10x faster)", meets_target=epoch[True] / epoch[False] <= 0.10,
            details={**common, "ours": "cache_features=True (features once per fold)",
                     "baseline": "cache_features=False (frozen backbone every batch)"},
        ),
        make_record(
            f"{NAME}.{cfg.model}@{cfg.size}.head_stage", ours=stage[True], baseline=stage[False], units="s per fit",
            better="lower", target=f"informational: {cfg.head_epochs} head epochs incl. the one-time extraction",
            meets_target=None,
            details={**common, "cached_fit_seconds": [r["fit_seconds"] for r in results[True]],
                     "uncached_fit_seconds": [r["fit_seconds"] for r in results[False]]},
        ),
    ]
