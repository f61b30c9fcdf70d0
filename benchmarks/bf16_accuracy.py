"""Benchmark 2b, bf16 accuracy: does training under bf16 autocast change the CV AUC?

The training-step benchmark says how much faster bf16 autocast trains on this CPU; this one says what
it costs in accuracy, the other half of the decision behind
:attr:`models.ModelInfo.trains_in_bf16_on_cpu` (the engine's CPU default).

Setting: the search-efficiency surrogate (:mod:`benchmarks.search_efficiency`: phantom n=120, slice
labels, difficulty 0.3, 64 px, 3-fold subject-grouped CV, 4 epochs) and its grid of learning rates x
batch sizes. For every seed, model and grid point the same configuration is trained on the same folds
twice, with ``amp=False`` and ``amp=True`` (same seed, same data order), and scored by its mean fold
AUC. One record per model: mean CV AUC under bf16 (ours) vs fp32 (baseline), with the paired
differences, their mean and standard deviation, a Wilcoxon signed-rank p-value and the wall-time ratio
in ``details``. Informational (no target): the training-seed noise of one configuration on this
surrogate is about 0.1 AUC (see the search-efficiency record), so a mean paired difference far below
that is "no measurable change".

Run alone: ``python -m benchmarks --only bf16_accuracy``.
"""
from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
from dataclasses import dataclass
from typing import Any

from benchmarks._common import Record, make_record
from benchmarks.search_efficiency import Surrogate, cv_auc, feasible_batch_sizes, grid_point, surrogate_config

__all__ = ["Settings", "run", "settings"]

logger = logging.getLogger(__name__)

NAME = "bf16_accuracy"


@dataclass
class Settings(Surrogate):
    models: tuple[str, ...] = ("tiny_cnn", "simple_cnn", "resnet18")


def settings(mode: str) -> Settings:
    """``"full"`` or ``"quick"`` settings (quick: one seed, tiny_cnn, two grid points, 32 px).

    Quick mode's folds hold about 30 training images, so its batch sizes stay within what the search
    space offers there (8 and 16; :func:`automl.space.suggest_config` allows no batch above the data).
    """
    if mode == "full":
        return Settings()
    if mode == "quick":
        return Settings(seeds=(0,), models=("tiny_cnn",), lr_grid=(1e-3,), batch_grid=(8, 16), phantom_n=60,
                        image_size=32, folds=2, epochs=2)
    raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}.")


def run(cfg: Settings) -> list[Record]:
    """Paired fp32 / bf16 fits for every seed, model and grid point; one record per model."""
    import optuna
    from scipy import stats

    from automl import search

    pairs: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.models}
    skipped: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-bf16-") as tmp:
        for seed in cfg.seeds:
            search_cfg = surrogate_config(cfg, seed=seed, out=tmp, study=f"bf16_{seed}", n_trials=1)
            ctx = search.prepare_data(search_cfg)
            max_batch = min(len(tr) for tr, _ in ctx.split.folds)
            feasible = feasible_batch_sizes(max_batch)
            for name in cfg.models:
                for lr in cfg.lr_grid:
                    for batch in cfg.batch_grid:
                        if batch not in feasible:  # the search space has no such batch for folds this small
                            skipped.append({"seed": seed, "model": name, "lr": lr, "batch_size": batch})
                            logger.warning("seed %d %s: batch %d skipped (the folds allow %s)", seed, name, batch,
                                           list(feasible))
                            continue
                        base = search.suggest_config(optuna.trial.FixedTrial(grid_point(name, lr, batch)), search_cfg,
                                                     max_batch_size=max_batch)
                        fp32, t32 = cv_auc(ctx, dataclasses.replace(base, amp=False))
                        bf16, t16 = cv_auc(ctx, dataclasses.replace(base, amp=True))
                        pairs[name].append({"seed": seed, "lr": lr, "batch_size": batch, "fp32": fp32, "bf16": bf16,
                                            "seconds_fp32": t32, "seconds_bf16": t16})
                        logger.info("seed %d %s lr %.0e batch %d: fp32 %.3f bf16 %.3f", seed, name, lr, batch,
                                    fp32, bf16)
    records = []
    for name, rows in pairs.items():
        if not rows:
            raise ValueError(f"bf16_accuracy: no feasible grid point for {name} (batch sizes {list(cfg.batch_grid)} "
                             f"all exceed what the folds allow); skipped: {skipped}")
        diffs = [r["bf16"] - r["fp32"] for r in rows]
        nonzero = [d for d in diffs if d != 0.0]
        p_value = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) >= 2 else None
        mean_bf16 = statistics.fmean(r["bf16"] for r in rows)
        mean_fp32 = statistics.fmean(r["fp32"] for r in rows)
        records.append(make_record(
            f"{NAME}.{name}@{cfg.image_size}", ours=mean_bf16, baseline=mean_fp32, units="mean CV AUC",
            better="higher", target="informational: the CV AUC cost of bf16 autocast (paired, same configurations)",
            meets_target=None,
            details={
                "pairs": rows, "n_pairs": len(rows),
                "mean_paired_difference": statistics.fmean(diffs),
                "sd_paired_difference": statistics.stdev(diffs) if len(diffs) > 1 else None,
                "min_paired_difference": min(diffs), "max_paired_difference": max(diffs),
                "wilcoxon_p": p_value, "skipped_points": skipped,
                "speedup_bf16": sum(r["seconds_fp32"] for r in rows) / sum(r["seconds_bf16"] for r in rows),
                "setting": {"seeds": list(cfg.seeds), "lr_grid": list(cfg.lr_grid), "batch_grid": list(cfg.batch_grid),
                            "phantom_n": cfg.phantom_n, "difficulty": cfg.difficulty, "label_level": cfg.label_level,
                            "image_size": cfg.image_size, "folds": cfg.folds, "epochs": cfg.epochs},
            },
        ))
    return records
