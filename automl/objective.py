"""One Optuna trial: a configuration trained on every CV fold, reported on a fold-aware step axis.

Also the liveness record of a running trial (``worker`` host/pid/start and a ``heartbeat``), which
:func:`automl.workers.recover_stale_trials` reads to tell a live trial from one whose worker died.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from automl._progress import Progress
from automl.config import SearchConfig
from automl.data_context import DataContext, prediction_frame
from automl.space import suggest_config
from automl.study import StudyFolder
from data._files import atomic_write_csv, json_clean

__all__ = ["DEFAULT_TRIAL_ATTR", "Objective", "worker_identity", "pid_alive", "process_start_time"]

logger = logging.getLogger(__name__)

#: User attribute of the enqueued per-architecture default trials, which the pruner never stops.
DEFAULT_TRIAL_ATTR = "default_trial"


def process_start_time(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux ``/proc``), to detect pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` (started at ``start``, when known) is still running on this host."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError, OverflowError):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # zombie: killed, not yet reaped
            return False
    except (OSError, IndexError):
        pass
    if start is not None:
        current = process_start_time(int(pid))
        if current is not None and current != start:
            return False  # the pid was reused by another process
    return True


def worker_identity() -> dict[str, Any]:
    """Host, pid and process start time recorded on every running trial (stale-trial detection)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": process_start_time(pid)}


class _Heartbeat:
    """Write the ``heartbeat`` user attribute of a running trial every ``interval`` seconds.

    Optuna's own heartbeat exists only for RDB storages; this one also covers the journal storage, so
    a worker on another machine can tell a live trial from one whose worker died.
    """

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self._trial = trial
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial.number}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._trial.set_user_attr("heartbeat", time.time())
            except Exception:  # noqa: BLE001 - the trial may just have finished
                return

    def __enter__(self) -> _Heartbeat:
        self._trial.set_user_attr("heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Objective:
    """One trial = one :class:`TrainConfig` trained on every CV fold; returns the mean CV AUC.

    **Fold-aware pruning.** Fold ``k`` (0-based) at epoch ``e`` (0-based) of at most ``E`` epochs
    per fold reports on the step ``k * E + e``, a single monotone axis across folds and epochs.
    The value is the running mean AUC over folds::

        value(k, e) = (sum_{j < k} auc_j + val_auc(k, e)) / (k + 1)

    where ``auc_j`` is the (best-epoch) validation AUC of the completed fold ``j`` and
    ``val_auc(k, e)`` the current fold's AUC at epoch ``e``. When a fold ends early (early stopping)
    the fold's final running mean is also reported at its last step ``k * E + E - 1``, so every
    trial that completes fold ``k`` has a value at that step and the pruner compares like with like.
    ``trial.should_prune()`` is asked after every report (inside ``fit_fold``'s callback, which
    stops the fold). Classical baselines report once per fold (their one "epoch") but are never
    pruned: they cost under a second per fold, and the leaderboard exists to show them next to the
    networks (their values still feed the pruner's statistics at the end of each fold). Nor is a
    trial enqueued with the user attribute ``default_trial`` (each architecture's first trial,
    :func:`automl.space.default_trials`): without it an architecture may never reach the refit and the test part.

    User attributes of every trial: ``train_config`` (dict), ``init`` ("imagenet:local"|"imagenet:package"|"imagenet:hub"|"random"),
    ``train_precision`` (deep models: "bf16" when the folds trained under bf16 autocast, see ``TrainConfig.amp``),
    ``cv_auc_folds`` (list, also partial for pruned trials), ``cv_auc_mean``, ``cv_auc_std``,
    ``best_epochs`` (1-based epoch counts of the kept weights), ``fit_seconds``, ``worker`` (host,
    pid, start), ``heartbeat``; failed trials: ``error``; retries: ``retry_of``.
    Complete trials also write ``predictions/oof_trial_<NNNN>.csv`` (atomically).
    """

    def __init__(self, config: SearchConfig, ctx: DataContext, study_dir: Path,
                 progress: Progress | None = None, *, heartbeat: bool = True) -> None:
        self.config = config
        self.ctx = ctx
        self.folder = StudyFolder(study_dir)
        self.progress = progress
        self.heartbeat = heartbeat
        self.max_batch_size = min(len(tr) for tr, _ in ctx.split.folds)

    def __call__(self, trial: optuna.Trial) -> float:
        import models as model_zoo

        config, ctx = self.config, self.ctx
        trial.set_user_attr("worker", worker_identity())
        train_config = suggest_config(trial, config, max_batch_size=self.max_batch_size)
        trial.set_user_attr("train_config", json_clean(train_config.to_dict(), default=str))
        # a retried trial may carry its predecessor's attributes: start clean
        for key, empty in (("cv_auc_folds", []), ("best_epochs", []), ("cv_auc_mean", None), ("fit_seconds", 0.0)):
            trial.set_user_attr(key, empty)
        # classical baselines and the frozen-feature lane take seconds per fold and are the references the
        # leaderboard exists to show: they report (for the plots and the pruner's statistics) but are never
        # pruned; nor is an architecture's default trial (its entry in the comparison, see default_trials)
        info = model_zoo.get_model_info(train_config.model)
        prunable = info.kind != "classical" and info.head is None and not trial.user_attrs.get(DEFAULT_TRIAL_ATTR)
        if self.progress:
            self.progress.trial_start(trial.number, train_config.model)
        run = _TrialRun(trial, ctx, train_config, n_epochs_axis=config.epochs, prunable=prunable, progress=self.progress)
        guard = _Heartbeat(trial, config.heartbeat_interval) if self.heartbeat else contextlib.nullcontext()
        try:
            with guard:
                for k, (tr, va) in enumerate(ctx.split.folds):
                    run.fold(k, tr, va)
        except optuna.TrialPruned:
            if run.fold_aucs:
                trial.set_user_attr("cv_auc_mean", float(np.mean(run.fold_aucs)))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted (KeyboardInterrupt)")
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            raise

        mean = float(np.mean(run.fold_aucs))
        if not math.isfinite(mean):
            trial.set_user_attr("error", "CV AUC is undefined (a validation fold lacks a class)")
            raise ValueError("CV AUC is undefined (a validation fold lacks a class)")
        rows = ctx.split.cv_index
        frame = prediction_frame(ctx, rows, run.oof[rows], fold=run.fold_of[rows])
        atomic_write_csv(frame, self.folder.oof_trial_path(trial.number))
        trial.set_user_attr("cv_auc_mean", mean)
        trial.set_user_attr("cv_auc_std", float(np.std(run.fold_aucs)))
        return mean


class _TrialRun:
    """The state of one trial across its folds: fold AUCs, out-of-fold probabilities, reported steps."""

    def __init__(self, trial: optuna.Trial, ctx: DataContext, train_config: Any, *, n_epochs_axis: int,
                 prunable: bool, progress: Progress | None) -> None:
        self.trial, self.ctx, self.train_config = trial, ctx, train_config
        self.n_epochs_axis = n_epochs_axis  # the stride of the step axis: the maximum epochs per fold
        self.prunable, self.progress = prunable, progress
        self.fold_aucs: list[float] = []
        self.best_epochs: list[int] = []
        self.oof = np.full((len(ctx.y), ctx.num_classes), np.nan)
        self.fold_of = np.full(len(ctx.y), -1)
        self.fit_seconds = 0.0
        self.init = "random"
        self.reported: set[int] = set()

    def report(self, k: int, e: int, value: float) -> bool:
        """Report the running mean at step ``k * E + e`` once; whether the trial should stop."""
        step = k * self.n_epochs_axis + min(e, self.n_epochs_axis - 1)
        if step in self.reported or not math.isfinite(value):
            return False
        self.reported.add(step)
        self.trial.report(float(value), step)
        return self.prunable and self.trial.should_prune()

    def fold(self, k: int, tr: np.ndarray, va: np.ndarray) -> None:
        """Train fold ``k``, record its AUC and out-of-fold probabilities; raise ``TrialPruned`` to stop."""
        from automl import metrics, train

        trial, ctx, n_folds = self.trial, self.ctx, len(self.ctx.split.folds)

        def on_epoch(epoch: int, values: dict[str, Any]) -> bool:
            val_auc = float(values.get("val_auc", math.nan))
            running = (sum(self.fold_aucs) + val_auc) / (k + 1)
            if self.progress:
                self.progress.epoch(trial.number, k, epoch, val_auc, running, self.n_epochs_axis)
            return self.report(k, epoch, running)

        result = train.fit_fold(ctx.X[tr], ctx.y[tr], ctx.X[va], ctx.y[va], config=self.train_config,
                                num_classes=ctx.num_classes, report=on_epoch)
        self.fit_seconds += float(result.fit_seconds)
        self.init = getattr(result, "init", self.init) or self.init
        trial.set_user_attr("init", self.init)
        if self.prunable:  # deep models: fp32 or bf16 autocast (classical ones: sklearn's own)
            trial.set_user_attr("train_precision", result.precision)
        if result.pruned:
            trial.set_user_attr("fit_seconds", self.fit_seconds)
            raise optuna.TrialPruned(f"pruned in fold {k + 1}/{n_folds}")
        P = np.asarray(result.val_probabilities, dtype=float)
        auc = metrics.roc_auc(ctx.y[va], P)
        self.fold_aucs.append(float(auc))
        self.best_epochs.append(int(result.best_epoch) + 1)
        self.oof[va] = P
        self.fold_of[va] = k
        trial.set_user_attr("cv_auc_folds", [float(a) for a in self.fold_aucs])
        trial.set_user_attr("best_epochs", self.best_epochs)
        trial.set_user_attr("fit_seconds", self.fit_seconds)
        if self.progress:
            self.progress.fold_end(trial.number, k, auc)
        if self.report(k, self.n_epochs_axis - 1, float(np.mean(self.fold_aucs))):
            raise optuna.TrialPruned(f"pruned after fold {k + 1}/{n_folds}")
