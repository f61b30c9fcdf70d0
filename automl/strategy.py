"""How a study explores and where it lives: storage, sampler and pruner of a search configuration."""
from __future__ import annotations

import os
import socket
import warnings

import optuna

from automl.config import SearchConfig
from automl.study import StudyFolder, open_storage

__all__ = ["MAX_RETRIES", "storage_url", "make_storage", "sampler_seed", "make_sampler", "make_pruner", "open_study"]

#: How many times a trial lost to a dead worker or Ctrl-C is retried.
MAX_RETRIES = 2


def storage_url(config: SearchConfig) -> str:
    """The storage as written to ``config.json``: an RDB URL, or the journal path (relative to the study)."""
    return "study.journal" if config.storage is None else config.storage


def make_storage(config: SearchConfig) -> optuna.storages.BaseStorage:
    """The Optuna storage of a study (see :func:`automl.study.open_storage`).

    * default: the journal file ``<leaderboards>/<study>/study.journal`` (safe for several local
      processes and on NFS; Optuna's heartbeat is not available for journals, see
      :func:`automl.workers.recover_stale_trials`);
    * ``*.journal`` path: a journal file elsewhere (e.g. on a shared file system);
    * an RDB URL: ``RDBStorage`` with heartbeat (``heartbeat_interval``, ``grace_period``) and
      ``RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)``.
    """
    return open_storage(config.storage, base=StudyFolder(config.study_dir).root, create=True,
                        heartbeat_interval=config.heartbeat_interval, heartbeat_grace=config.heartbeat_grace,
                        max_retry=MAX_RETRIES)


def sampler_seed(config: SearchConfig, worker: int = 0) -> int:
    """Seed of this process's sampler.

    Processes sharing a study must not share a seed, or their random start-up trials would be the
    same configurations. The single local process uses ``--seed`` itself (reproducible); spawned
    worker ``i`` uses ``seed + 1000 * i``; a process joining an explicit ``--storage`` (several
    machines) also mixes in its host and pid, since its trial order depends on timing anyway.
    """
    import zlib

    seed = config.seed + 1000 * worker
    if config.storage is not None:
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    return seed % (2**32)


def make_sampler(config: SearchConfig, worker: int = 0) -> optuna.samplers.BaseSampler:
    """Seeded multivariate, group-decomposed TPE (see :func:`automl.space.suggest_config` for why)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=sampler_seed(config, worker), n_startup_trials=config.n_startup_trials,
            multivariate=True, group=True, constant_liar=True,
        )


def make_pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    """The pruner on the fold-aware step axis (``E`` = epochs per fold, ``K`` = folds).

    * ``median`` (default): ``MedianPruner(n_startup_trials, n_warmup_steps=E - 1)``. Nothing is
      pruned during the first fold's early epochs (a network's first epochs say little); from the
      end of fold 1 on, a trial whose running CV AUC is below the median of earlier trials at the same
      step stops. It works from the first few trials, which matters for the 10–20 trial budgets this
      tool is run with; the paper-grade ``full`` preset can try the others.
    * ``halving``: ``SuccessiveHalvingPruner(min_resource=E, reduction_factor=3)``: rungs at the end of
      fold 1, 3, 9 ... (in steps).
    * ``hyperband``: ``HyperbandPruner(min_resource=E, max_resource=K * E, reduction_factor=3)``.
    * ``none``: ``NopPruner``.
    """
    E, K = config.epochs, config.folds
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials, n_warmup_steps=E - 1)
    if config.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=E, reduction_factor=3)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=E, max_resource=K * E, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(config: SearchConfig, storage: optuna.storages.BaseStorage | None = None, *,
               worker: int = 0) -> optuna.Study:
    """Create or load (``load_if_exists``) the study with the configured sampler and pruner."""
    storage = storage if storage is not None else make_storage(config)
    return optuna.create_study(
        study_name=config.study_name, storage=storage, direction="maximize",
        sampler=make_sampler(config, worker), pruner=make_pruner(config), load_if_exists=True,
    )
