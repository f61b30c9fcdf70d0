"""Running a study: the optimize loop, local worker processes, and recovery of trials lost to a dead worker.

A worker killed mid-trial loses only that trial: on the next start :func:`recover_stale_trials`
fails its RUNNING trial and re-enqueues its parameters (same host: the recorded pid is dead;
other hosts: its heartbeat is older than ``--heartbeat-grace``; RDB storages also use Optuna's
own heartbeat).
"""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from automl._progress import Progress, setup_logging
from automl.config import SearchConfig
from automl.data_context import DataContext, prepare_data
from automl.objective import DEFAULT_TRIAL_ATTR, Objective, pid_alive
from automl.strategy import MAX_RETRIES, open_study

__all__ = ["COUNTED_STATES", "recover_stale_trials", "count_finished", "optimize", "run_workers",
           "sigterm_as_interrupt"]

logger = logging.getLogger(__name__)

#: Trial states that count towards ``n_trials`` (failed trials are made up for).
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def _storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage  # noqa: SLF001 - the storage object passed to create_study (maybe cached)


def recover_stale_trials(study: optuna.Study, *, grace: float = 180.0) -> list[int]:
    """Fail RUNNING trials whose worker is gone and re-enqueue their parameters; return their numbers.

    A RUNNING trial is stale when its recorded worker runs on this host and that process is dead
    (or its pid now belongs to another process), or when it runs elsewhere and its ``heartbeat``
    attribute is older than ``grace`` seconds. Also re-enqueued: trials failed by Ctrl-C. A trial is
    retried at most :data:`MAX_RETRIES` times (``retry_of`` chains) and never twice: only the process
    whose FAIL update wins (Optuna refuses to update a finished trial) enqueues the retry, and trials
    that already have a retry are skipped.
    """
    storage = _storage_of(study)
    host = socket.gethostname()
    now = time.time()
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials if t.user_attrs.get("retry_of") is not None}
    to_retry: list[optuna.trial.FrozenTrial] = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            if (t.state == TrialState.FAIL and str(t.user_attrs.get("error", "")).startswith("interrupted")
                    and t.number not in retried):
                to_retry.append(t)
            continue
        worker = t.user_attrs.get("worker") or {}
        beat = t.user_attrs.get("heartbeat")
        if beat is None and t.datetime_start is not None:
            beat = t.datetime_start.timestamp()
        if worker.get("host") == host:
            stale = not pid_alive(worker.get("pid", -1), worker.get("start"))
        else:
            stale = beat is not None and now - float(beat) > grace
        if not stale:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "error", f"worker died ({worker or 'unknown worker'})")  # noqa: SLF001
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, KeyError) as exc:
            logger.debug("trial %d was finished by someone else: %s", t.number, exc)
            continue
        logger.warning("trial %d: its worker %s is gone; marked FAIL", t.number, worker or "(unknown)")
        to_retry.append(t)
    numbers = []
    for t in to_retry:
        depth = int(t.user_attrs.get("retry_depth", 0))
        if depth >= MAX_RETRIES or t.number in retried:
            continue
        # a worker killed inside suggest_config recorded only some params: the enqueued configuration
        # (Optuna keeps it in the ``fixed_params`` system attribute) fills in the rest
        params = {**(t.system_attrs.get("fixed_params") or {}), **t.params}
        attrs = {"retry_of": t.number, "retry_depth": depth + 1}
        if t.user_attrs.get(DEFAULT_TRIAL_ATTR):
            attrs[DEFAULT_TRIAL_ATTR] = True
        study.enqueue_trial(params, user_attrs=attrs)
        logger.info("trial %d will be retried with the same parameters", t.number)
        numbers.append(t.number)
    return numbers


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED_STATES))


class _StopWhen:
    """Optuna callback: stop when the study holds ``n_trials`` counted trials, the deadline passed,
    or this process saw ``max_failures`` failures in a row (e.g. every model runs out of memory)."""

    def __init__(self, n_trials: int, deadline: float | None, max_failures: int,
                 progress: Progress | None = None) -> None:
        self.n_trials = n_trials
        self.deadline = deadline
        self.max_failures = max_failures
        self.failures = 0
        self.progress = progress

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        if self.progress:
            best = None
            try:
                best = study.best_value
            except ValueError:
                pass
            value = trial.value if trial.state == TrialState.COMPLETE else trial.user_attrs.get("cv_auc_mean")
            message = trial.user_attrs.get("error", "") if trial.state == TrialState.FAIL else ""
            self.progress.trial_end(trial.number, trial.state.name, value, best, message)
        if count_finished(study) >= self.n_trials:
            study.stop()
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            logger.info("time budget reached; stopping the search")
            study.stop()
        elif self.failures >= self.max_failures:
            logger.error("%d failed trials in a row; stopping the search (see the 'error' column)", self.failures)
            study.stop()


def optimize(config: SearchConfig, ctx: DataContext, study: optuna.Study, *, deadline: float | None,
              progress: Progress | None, heartbeat: bool) -> None:
    remaining = config.n_trials - count_finished(study)
    if remaining <= 0:
        return
    objective = Objective(config, ctx, config.study_dir, progress, heartbeat=heartbeat)
    stopper = _StopWhen(config.n_trials, deadline, max_failures=max(3, config.n_trials // 2), progress=progress)
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    # n_trials caps this process; _StopWhen stops all processes' loops once the study is full.
    study.optimize(objective, n_trials=remaining + stopper.max_failures, timeout=timeout,
                   catch=(Exception,), callbacks=[stopper], gc_after_trial=True)


def _worker_main(config_dict: dict[str, Any], data_dir: str, manifest: Any, index: int, deadline_wall: float | None,
                 threads: int, verbosity: int) -> None:
    """Entry point of a spawned worker process: same study, its own share of the CPU."""
    setup_logging(verbosity)
    sigterm_as_interrupt()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover
        pass
    config = SearchConfig.from_dict(config_dict)
    ctx = prepare_data(config, data_dir=Path(data_dir), manifest=manifest)
    study = open_study(config, worker=index + 1)
    deadline = None if deadline_wall is None else time.monotonic() + max(0.0, deadline_wall - time.time())
    logger.info("worker %d (pid %d) joined study %s", index, os.getpid(), config.study_name)
    try:
        optimize(config, ctx, study, deadline=deadline, progress=None, heartbeat=True)
    except KeyboardInterrupt:
        logger.info("worker %d interrupted", index)


def run_workers(config: SearchConfig, ctx: DataContext, study: optuna.Study, deadline: float | None,
                 progress: Progress, verbosity: int) -> None:
    import multiprocessing as mp

    spawn = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // config.workers)
    deadline_wall = None if deadline is None else time.time() + (deadline - time.monotonic())
    procs = [
        spawn.Process(target=_worker_main, name=f"automl-worker-{i}",
                      args=(config.to_dict(), str(ctx.data_dir), ctx.manifest, i, deadline_wall, threads, verbosity))
        for i in range(config.workers)
    ]
    for p in procs:
        p.start()
    seen: set[int] = set()
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            for t in study.get_trials(deepcopy=False):
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    value = t.value if t.state == TrialState.COMPLETE else t.user_attrs.get("cv_auc_mean")
                    progress.trial_end(t.number, t.state.name, value, None, t.user_attrs.get("error", ""))
    except KeyboardInterrupt:
        for p in procs:  # Ctrl-C reaches the whole process group; SIGTERM only us: pass it on
            if p.is_alive():
                p.terminate()
        raise
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():  # pragma: no cover - a worker that ignores SIGINT
                p.terminate()
                p.join(timeout=10)
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        logger.warning("worker exit codes: %s (their trials are failed and retried on the next run)", bad)


def sigterm_as_interrupt() -> None:
    """Treat SIGTERM (docker stop, a job scheduler) like Ctrl-C: stop cleanly, keep what finished."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # pragma: no cover - not the main thread
        pass
