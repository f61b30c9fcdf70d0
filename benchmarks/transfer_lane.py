"""Benchmark, transfer learning on a CPU: the frozen-feature lane vs a from-scratch CNN, CV AUC per CPU-second.

Same phantom (labels per subject, as public slice sets), same subject-grouped folds, same run:

* **ours**: ``efficientnet_lite0+logreg`` — ImageNet EfficientNet-Lite0 (weights from its pip package)
  frozen, global-pooled features cached once per image, a scikit-learn logistic-regression head per
  fold (:mod:`automl.features`);
* **baseline**: ``simple_cnn`` trained from scratch on each fold for ``epochs`` epochs (the recipe
  of :func:`automl.train.fit_fold`).

Each side's figure is its mean CV AUC divided by the CPU seconds (``time.process_time`` of this
process, all threads) it took for all folds, the lane's one-time feature extraction included — the
AUC a user gets per second of their laptop. The record also keeps both AUCs and both times.

Run alone: ``python -m benchmarks --only transfer_lane``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks._common import Record, make_record

__all__ = ["Settings", "run", "settings"]

logger = logging.getLogger(__name__)

NAME = "transfer_lane"


@dataclass
class Settings:
    n: int = 600
    size: int = 128
    folds: int = 3
    epochs: int = 4
    difficulty: float = 0.5


def settings(mode: str) -> Settings:
    """``"full"`` or ``"quick"`` settings."""
    if mode == "full":
        return Settings()
    if mode == "quick":
        return Settings(n=200, size=64, folds=2, epochs=2)
    raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}.")


def _cv(model: str, X: np.ndarray, y: np.ndarray, folds: list, **options: Any) -> tuple[float, float]:
    """Mean CV AUC of ``model`` over ``folds`` and the CPU seconds it took."""
    from automl.metrics import roc_auc
    from automl.train import TrainConfig, fit_fold

    config = TrainConfig(model=model, seed=0, device="cpu", patience=None, **options)
    cpu0 = time.process_time()
    aucs = [roc_auc(y[va], fit_fold(X[tr], y[tr], X[va], y[va], config=config, num_classes=2).val_probabilities)
            for tr, va in folds]
    return float(np.mean(aucs)), time.process_time() - cpu0


def run(cfg: Settings) -> list[Record]:
    """Run the benchmark; returns one record (CV AUC per CPU-second, lane / scratch)."""
    import data
    from automl import features
    from automl.split import make_split
    from data.phantom import default_dataset

    folder = default_dataset(n=cfg.n, size=max(64, cfg.size), seed=0, difficulty=cfg.difficulty,
                             label_level="subject")
    manifest = data.scan_folder(folder)
    X = data.load_arrays(manifest, size=cfg.size)
    y = manifest.table["y"].to_numpy(dtype=np.int64)
    folds = make_split(manifest, test_size=0.2, n_folds=cfg.folds, seed=0).folds
    features._CACHES.clear()  # the lane pays its feature extraction inside the timed run
    for path in (data.cache_dir() / "features").glob(f"efficientnet_lite0_*_{cfg.size}_*.npz"):
        path.unlink()
    lane_auc, lane_cpu = _cv("efficientnet_lite0+logreg", X, y, folds, pretrained="yes", C=0.05)
    scratch_auc, scratch_cpu = _cv("simple_cnn", X, y, folds, pretrained="no", epochs=cfg.epochs, lr=9.5e-4,
                                   batch_size=16)
    ours, baseline = lane_auc / lane_cpu, scratch_auc / scratch_cpu
    return [make_record(
        f"{NAME}.lite0_logreg_vs_simple_cnn@{cfg.size}", ours=ours, baseline=baseline, units="CV AUC per CPU-second",
        better="higher", target="ratio >= 1 (transfer reaches more AUC per CPU-second)", meets_target=ours >= baseline,
        details={"lane_cv_auc": lane_auc, "lane_cpu_seconds": lane_cpu, "scratch_cv_auc": scratch_auc,
                 "scratch_cpu_seconds": scratch_cpu, "n": cfg.n, "size": cfg.size, "folds": cfg.folds,
                 "scratch_epochs": cfg.epochs, "phantom_difficulty": cfg.difficulty, "labels": "per subject",
                 "ours": "efficientnet_lite0+logreg (ImageNet, pip package; features cached once)",
                 "baseline": "simple_cnn from scratch"},
    )]
