"""Benchmark 3, search efficiency: TPE + fold-aware pruning vs a paper's grid and vs random search.

A cheap surrogate of a real search, so that it fits on 2 CPU cores: the synthetic phantom
(``phantom_n`` slices, labels per ``label_level``, ``difficulty``) at ``image_size`` px, ``folds``-fold
subject-grouped CV, ``epochs`` epochs per fold, architectures ``models``. The surrogate must have a
learnable signal, or the grid's "best" is the maximum of noise and no search can be judged: the
first version (32 px, 2 epochs, subject labels at difficulty 0.6) gave every network 0.4-0.63 CV AUC
whatever its learning rate; at 64 px, 4 epochs and slice labels at difficulty 0.3 the learning rate
and the architecture matter (e.g. simple_cnn 0.41-0.86 across the grid on one seed). For each seed (the seed drives the
phantom, the split, every fit and the samplers) three searches run on the same data and folds, all
through the product's :class:`automl.search.Objective` (every trial trains every fold):

* **grid** (what a paper runs): every ``lr`` x ``batch_size`` of the grid for each deep model
  (``weight_decay`` 1e-4, ``aug_strength`` 0.5 fixed) and every ``C`` of the grid for the classical
  ones, all folds to the end (Optuna ``NopPruner``, the points enqueued in order);
* **random** without pruning: ``RandomSampler(seed)`` + ``NopPruner`` for ``n_trials`` trials;
* **ours**: :func:`automl.search.make_sampler` (multivariate TPE) + :func:`automl.search.make_pruner`
  (``median`` on the fold-aware step axis) with :func:`automl.search.default_trials` enqueued first,
  exactly as :func:`automl.search.run_search` does, for ``n_trials`` trials.

Before the three searches of a seed, one untimed fit per architecture warms the process up (first
calls allocate, import and initialise), so that no search pays for that.

Compute is counted as **image-passes**: training images x epochs actually run, summed over every
``fit_fold`` call (pruning stops a fold early and skips the remaining folds); a classical fit counts
one pass. Wall seconds of the ``fit_fold`` calls are reported next to it.

Noise floor: the grid's best configuration is trained again with ``retrain_seeds`` (other training
seeds; same data, folds and hyper-parameters), and ``details.grid_best_drop_when_retrained`` says
how much lower it then scores. The grid's best is a maximum over noisy values (about 40 validation
images per fold), so when that drop exceeds the tolerance, reaching "within 0.01 of the grid's best"
asks for a lucky draw, not only for the right region of the search space.

The figure: compute each search spends until its first *complete* trial whose CV AUC reaches the
grid's best on the same seed, against the compute of the whole grid. "Reaches" means within
``tolerance`` (0.01) of the grid's best CV AUC, or at least the mean CV AUC of the grid's best
configuration trained again with ``retrain_seeds`` when that is lower: the grid's best is a maximum of
noisy values, and on the AMD EPYC one seed's best configuration lost 0.03 when retrained, more than
the tolerance (``strict_reached`` / ``strict_fraction_of_grid`` keep the tolerance-only figures). Compute of the whole
grid (the grid has to run to the end to know its best). Pooled over seeds (sum of compute to reach /
sum of grid compute); per-seed values in ``details``. A search that never gets there within its
budget is charged its whole budget and flagged (``reached`` false), and then fails the target.

Run alone: ``python -m benchmarks --only search_efficiency``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import Record, make_record

__all__ = ["Settings", "Surrogate", "count_compute", "cv_auc", "grid_point", "run", "settings", "surrogate_config"]

logger = logging.getLogger(__name__)

NAME = "search_efficiency"


@dataclass
class Surrogate:
    """The phantom surrogate of a real search (this benchmark's, and :mod:`benchmarks.bf16_accuracy`'s)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    # cheapest first, as the presets list them (run_search enqueues the default trials in this order)
    models: tuple[str, ...] = ("logreg", "tiny_cnn", "simple_cnn")
    lr_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
    batch_grid: tuple[int, ...] = (16, 32)
    phantom_n: int = 120
    difficulty: float = 0.3
    label_level: str = "slice"
    image_size: int = 64
    folds: int = 3
    epochs: int = 4


@dataclass
class Settings(Surrogate):
    # the clear phantom (difficulty 0): at 0.3 one seed's grid best (0.61) retrained at 0.50 on the AMD EPYC,
    # a maximum of noise that no search can be asked to "reach" (it reached it by luck on the Xeon)
    difficulty: float = 0.0
    c_grid: tuple[float, ...] = (1e-3, 1e-1, 10.0)
    n_trials: int = 12  # budget of random search and of ours
    n_startup_trials: int = 3
    tolerance: float = 0.01
    # training-seed offsets with which the grid's best configuration is trained again (noise floor)
    retrain_seeds: tuple[int, ...] = (1000, 2000)


def feasible_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes :func:`automl.space.suggest_config` offers when the smallest training fold has
    ``max_batch_size`` images (a grid point outside them cannot be enqueued)."""
    from automl.space import BATCH_SIZES

    return tuple(b for b in BATCH_SIZES if b <= max(BATCH_SIZES[0], max_batch_size))


def grid_point(model: str, lr: float, batch_size: int) -> dict[str, Any]:
    """One deep-model point of the paper grid: ``lr`` x ``batch_size``, the other parameters fixed."""
    return {"model": model, "lr": float(lr), "batch_size": int(batch_size), "weight_decay": 1e-4,
            "aug_strength": 0.5}


def settings(mode: str) -> Settings:
    """``"full"`` or ``"quick"`` settings.

    Quick: the full mode's structure (three seeds pooled; logreg, tiny_cnn, simple_cnn; a 15-point grid of
    3 lr x 2 batch sizes per network + 3 C values; a budget of 8 trials; 3 folds) at 32 px, 3 epochs and
    phantom difficulty 0 (at 32 px and difficulty 0.3 one seed's grid best was 0.56, noise), ~40 s on 2 cores. The budget must be smaller than the grid, or a search that never reaches the grid's
    best is charged exactly the grid's compute and both strategies read 1.00 (the first quick mode: a
    4-point grid against 4-trial budgets at 1 epoch); and one seed of a two-model grid was too noisy to
    judge (the second quick mode: one seed, 0.41 on the AMD EPYC). Measured on the AMD EPYC: 0.137 pooled
    (seeds 0.21, 0.03, 0.18); a small surrogate, so a smoke figure: the full mode is the reference.
    """
    if mode == "full":
        return Settings()
    if mode == "quick":
        return Settings(seeds=(0, 1, 2), models=("logreg", "tiny_cnn", "simple_cnn"), lr_grid=(1e-5, 1e-4, 1e-3),
                        batch_grid=(16, 32), c_grid=(1e-2, 1.0, 10.0), n_trials=8, n_startup_trials=3, phantom_n=120,
                        difficulty=0.0, image_size=32, folds=3, epochs=3, tolerance=0.02, retrain_seeds=())
    raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}.")


def surrogate_config(cfg: Surrogate, *, seed: int, out: str, study: str, **options: Any) -> Any:
    """The :class:`automl.search.SearchConfig` of the phantom surrogate ``cfg`` describes.

    ``cfg`` is a :class:`Surrogate` (this module's :class:`Settings`, or
    :class:`benchmarks.bf16_accuracy.Settings`); ``options`` are further ``SearchConfig`` fields.
    Random init, CPU, no leakage audit and no refit: only the cross-validation is measured.
    """
    from automl import search

    return search.SearchConfig(
        preset="smoke", study=study, leaderboards=out, models=tuple(cfg.models), timeout=0.0, folds=cfg.folds,
        epochs=cfg.epochs, search_epochs=False, image_size=cfg.image_size, pretrained="no",
        phantom_n=cfg.phantom_n, phantom_difficulty=cfg.difficulty, phantom_label_level=cfg.label_level,
        seed=seed, device="cpu", leakage_audit="none", refit=False, **options,
    )


@contextlib.contextmanager
def count_compute(counter: dict[str, float]) -> Iterator[dict[str, float]]:
    """Count ``image_passes`` and ``seconds`` of every :func:`automl.train.fit_fold` call inside the block.

    ``automl.search.Objective`` looks ``train.fit_fold`` up at call time, so wrapping the module
    attribute sees every fold of every trial.
    """
    from automl import train

    original = train.fit_fold

    def counting(X_train: Any, y_train: Any, X_val: Any, y_val: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = original(X_train, y_train, X_val, y_val, **kwargs)
        counter["seconds"] += time.perf_counter() - t0
        counter["image_passes"] += len(X_train) * max(1, len(result.history))
        return result

    train.fit_fold = counting
    try:
        yield counter
    finally:
        train.fit_fold = original


def _grid_points(cfg: Settings, max_batch_size: int = 64) -> list[dict[str, Any]]:
    import models

    feasible = feasible_batch_sizes(max_batch_size)
    batches = [bs for bs in cfg.batch_grid if bs in feasible]
    if len(batches) < len(cfg.batch_grid):
        logger.warning("grid batch sizes %s skipped: the smallest training fold (%d images) allows %s",
                       sorted(set(cfg.batch_grid) - set(batches)), max_batch_size, list(feasible))
    points: list[dict[str, Any]] = []
    for name in cfg.models:
        if models.get_model_info(name).kind == "classical":
            points += [{"model": name, f"{name}_C": float(c)} for c in cfg.c_grid]
        else:
            points += [grid_point(name, lr, bs) for lr in cfg.lr_grid for bs in batches]
    return points


def _run_study(kind: str, search_cfg: Any, ctx: Any, study_dir: Path, cfg: Settings) -> dict[str, Any]:
    """One search; returns its trial log: (state, value, cumulative image-passes, cumulative seconds)."""
    import optuna

    from automl import search

    max_batch = min(len(tr) for tr, _ in ctx.split.folds)
    if kind == "grid":
        sampler, pruner = optuna.samplers.RandomSampler(seed=search_cfg.seed), optuna.pruners.NopPruner()
        enqueue, n_trials = [(params, False) for params in _grid_points(cfg, max_batch)], None
    elif kind == "random":
        sampler, pruner = optuna.samplers.RandomSampler(seed=search_cfg.seed), optuna.pruners.NopPruner()
        enqueue, n_trials = [], cfg.n_trials
    else:
        sampler, pruner = search.make_sampler(search_cfg), search.make_pruner(search_cfg)
        enqueue, n_trials = search.default_trials(search_cfg, max_batch_size=max_batch), cfg.n_trials
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    for params, is_default in enqueue:  # ours: exactly as run_search enqueues them
        study.enqueue_trial(params, user_attrs={search.DEFAULT_TRIAL_ATTR: is_default})
    if n_trials is None:
        n_trials = len(enqueue)
    objective = search.Objective(search_cfg, ctx, study_dir / kind, heartbeat=False)
    counter = {"image_passes": 0.0, "seconds": 0.0}
    log: list[dict[str, Any]] = []

    def record(study: Any, trial: Any) -> None:
        log.append({"trial": trial.number, "state": trial.state.name, "value": trial.value,
                    "model": trial.params.get("model"), "params": dict(trial.params),
                    "image_passes": counter["image_passes"],
                    "seconds": counter["seconds"]})

    with count_compute(counter):
        study.optimize(objective, n_trials=n_trials, callbacks=[record], catch=(Exception,))
    failed = [t for t in log if t["state"] == "FAIL"]
    if failed:
        logger.warning("%s search: %d failed trial(s)", kind, len(failed))
    return {"log": log, "image_passes": counter["image_passes"], "seconds": counter["seconds"]}


def _warm_up(search_cfg: Any, ctx: Any) -> None:
    """One untimed fit per architecture, so that no search pays the first-call costs of the process."""
    import optuna

    from automl import search, train

    tr, va = ctx.split.folds[0]
    max_batch = min(len(t) for t, _ in ctx.split.folds)
    for name in search_cfg.models:
        params = search.default_params(name, search_cfg, max_batch_size=max_batch)
        config = search.suggest_config(optuna.trial.FixedTrial(params), search_cfg, max_batch_size=max_batch)
        train.fit_fold(ctx.X[tr], ctx.y[tr], ctx.X[va], ctx.y[va], config=config, num_classes=ctx.num_classes)


def cv_auc(ctx: Any, config: Any) -> tuple[float, float]:
    """Mean fold AUC of one ``TrainConfig`` over the study's folds, and the wall seconds of the fits."""
    import numpy as np

    from automl import metrics, train

    aucs, t0 = [], time.perf_counter()
    for tr, va in ctx.split.folds:
        result = train.fit_fold(ctx.X[tr], ctx.y[tr], ctx.X[va], ctx.y[va], config=config, num_classes=ctx.num_classes)
        aucs.append(metrics.roc_auc(ctx.y[va], np.asarray(result.val_probabilities, dtype=float)))
    return float(np.mean(aucs)), time.perf_counter() - t0


def _retrained(search_cfg: Any, ctx: Any, params: dict[str, Any], seeds: tuple[int, ...]) -> list[float]:
    """CV AUC of one configuration trained again with other training seeds (same data, same folds).

    How far these values scatter is the noise floor of "within ``tolerance`` of the grid's best":
    the grid's best is the maximum over its configurations of such noisy values.
    """
    import dataclasses

    import optuna

    from automl import search

    max_batch = min(len(t) for t, _ in ctx.split.folds)
    base = search.suggest_config(optuna.trial.FixedTrial(params), search_cfg, max_batch_size=max_batch)
    return [cv_auc(ctx, dataclasses.replace(base, seed=base.seed + offset))[0] for offset in seeds]


def _reach(log: list[dict[str, Any]], threshold: float) -> tuple[bool, float, float]:
    """Compute spent until the first complete trial with value >= threshold (or the whole budget)."""
    for entry in log:
        if entry["state"] == "COMPLETE" and entry["value"] is not None and entry["value"] >= threshold:
            return True, entry["image_passes"], entry["seconds"]
    last = log[-1] if log else {"image_passes": math.nan, "seconds": math.nan}
    return False, last["image_passes"], last["seconds"]


def run(cfg: Settings) -> list[Record]:
    """Run the three searches for every seed; returns the ours-vs-grid and random-vs-grid records."""
    from automl import search

    per_seed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for seed in cfg.seeds:
            search_cfg = surrogate_config(cfg, seed=seed, out=tmp, study=f"bench_{seed}", n_trials=cfg.n_trials,
                                          pruner="median", n_startup_trials=cfg.n_startup_trials)
            ctx = search.prepare_data(search_cfg)
            _warm_up(search_cfg, ctx)
            runs = {kind: _run_study(kind, search_cfg, ctx, Path(tmp) / f"seed{seed}", cfg)
                    for kind in ("grid", "random", "ours")}
            grid_values = [t["value"] for t in runs["grid"]["log"] if t["state"] == "COMPLETE"]
            if not grid_values:
                raise RuntimeError(f"seed {seed}: no grid trial completed")
            best = max(grid_values)
            best_params = next(t["params"] for t in runs["grid"]["log"]
                               if t["state"] == "COMPLETE" and t["value"] == best)
            retrained = _retrained(search_cfg, ctx, best_params, cfg.retrain_seeds) if cfg.retrain_seeds else []
            entry: dict[str, Any] = {"seed": seed, "grid_best_auc": best, "grid_best_params": best_params,
                                     "grid_best_retrained_aucs": retrained,
                                     "grid_trials": len(runs["grid"]["log"]),
                                     "grid_image_passes": runs["grid"]["image_passes"],
                                     "grid_seconds": runs["grid"]["seconds"]}
            # the level to reach: within the tolerance of the grid's best, or what that configuration scores when
            # only its training seed changes (its reproducible level), whichever is lower
            level = min(best - cfg.tolerance, statistics.mean(retrained)) if retrained else best - cfg.tolerance
            entry["level_to_reach"] = level
            for kind in ("random", "ours"):
                reached, passes, seconds = _reach(runs[kind]["log"], level)
                strict = _reach(runs[kind]["log"], best - cfg.tolerance)
                log = runs[kind]["log"]
                entry[kind] = {
                    "reached": reached, "image_passes_to_reach": passes, "seconds_to_reach": seconds,
                    "strict_reached": strict[0], "strict_fraction_of_grid": strict[1] / runs["grid"]["image_passes"],
                    "fraction_of_grid": passes / runs["grid"]["image_passes"],
                    "total_image_passes": runs[kind]["image_passes"], "total_seconds": runs[kind]["seconds"],
                    "best_auc": max((t["value"] for t in log if t["state"] == "COMPLETE"), default=None),
                    "budget_fraction_of_grid": runs[kind]["image_passes"] / runs["grid"]["image_passes"],
                    "trials": len(log), "pruned": sum(t["state"] == "PRUNED" for t in log),
                }
            per_seed.append(entry)
            logger.info("seed %d: grid best %.3f; ours %.2f, random %.2f of the grid's image-passes", seed, best,
                        entry["ours"]["fraction_of_grid"], entry["random"]["fraction_of_grid"])

    grid_total = sum(e["grid_image_passes"] for e in per_seed)
    common = {
        "seeds": list(cfg.seeds), "models": list(cfg.models), "lr_grid": list(cfg.lr_grid),
        "batch_grid": list(cfg.batch_grid), "c_grid": list(cfg.c_grid), "n_trials": cfg.n_trials,
        "phantom_n": cfg.phantom_n, "difficulty": cfg.difficulty, "label_level": cfg.label_level, "image_size": cfg.image_size, "folds": cfg.folds,
        "epochs": cfg.epochs, "tolerance": cfg.tolerance, "per_seed": per_seed,
        "grid_seconds_total": sum(e["grid_seconds"] for e in per_seed),
        "retrain_seeds": list(cfg.retrain_seeds),
        # how much the grid's best configuration loses when only its training seed changes
        "grid_best_drop_when_retrained": [e["grid_best_auc"] - v for e in per_seed
                                          for v in e["grid_best_retrained_aucs"]],
    }
    records = []
    for kind, label in (("ours", "tpe_pruning"), ("random", "random_no_pruning")):
        reach = sum(e[kind]["image_passes_to_reach"] for e in per_seed)
        all_reached = all(e[kind]["reached"] for e in per_seed)
        fractions = [e[kind]["fraction_of_grid"] for e in per_seed]
        details = {**common,
                   "seeds_reached": sum(e[kind]["reached"] for e in per_seed),
                   "median_fraction_of_grid": statistics.median(fractions),
                   "seconds_to_reach_total": sum(e[kind]["seconds_to_reach"] for e in per_seed)}
        records.append(make_record(
            f"{NAME}.{label}_vs_grid", ours=reach, baseline=grid_total, units="image-passes", better="lower",
            target=f"ratio <= 0.30 of the grid's compute, every seed within {cfg.tolerance:g} AUC of the grid's best "
                   "(or of its best configuration retrained, if lower)"
            if kind == "ours" else "reference (no target): random search without pruning",
            meets_target=(all_reached and reach / grid_total <= 0.30) if kind == "ours" else None,
            details=details,
        ))
    return records
