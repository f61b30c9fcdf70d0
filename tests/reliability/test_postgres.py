"""Scale-out on a real database: two ``python -m automl.search`` workers on one PostgreSQL study.

This is the multi-machine recipe of the README run on one machine: the same command, the same
``--storage postgresql://...`` URL and ``--study`` name, started twice at once.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability import _studies, _support

pytestmark = pytest.mark.slow

N_TRIALS = 6


def test_two_workers_share_one_postgres_study(postgres_url: str, phantom_data: Path, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    out = tmp_path / "leaderboards"
    study = "pg_two_workers"
    args = _studies.search_args(study=study, data=phantom_data, out=out, storage=postgres_url, n_trials=N_TRIALS)
    t0 = time.monotonic()
    workers = [_support.start_module("automl.search", args, log_path=tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        for i, proc in enumerate(workers):
            try:
                proc.wait(timeout=420)
            except Exception:  # noqa: BLE001 - report the logs below
                pass
            assert proc.returncode == 0, f"worker {i} exited {proc.returncode}:\n{_support.tail(tmp_path / f'worker{i}.log')}"
    finally:
        for proc in workers:
            _support.stop_process(proc)
    seconds = time.monotonic() - t0

    trials = _studies.load_trials(study, postgres_url)
    states = Counter(t.state.name for t in trials)
    assert states.get("FAIL", 0) == 0, f"failed trials: {[t.user_attrs.get('error') for t in trials if t.state == TrialState.FAIL]}"
    assert states.get("RUNNING", 0) == 0 and states.get("WAITING", 0) == 0, f"unfinished trials left: {states}"
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # each process stops once the study holds N_TRIALS; a trial already started by the other one finishes
    assert N_TRIALS <= len(finished) <= N_TRIALS + 1, f"{len(finished)} finished trials for --n-trials {N_TRIALS}"

    # distinct trials: every trial was run by exactly one of the two workers, and both took part
    pids = {w.pid for w in workers}
    owners = [t.user_attrs.get("worker", {}).get("pid") for t in trials]
    assert set(owners) <= pids, f"trials claimed by unknown processes: {set(owners) - pids}"
    per_worker = Counter(owners)
    assert len(per_worker) == 2, f"only one worker ran trials: {dict(per_worker)}"
    params = Counter(json.dumps(t.params, sort_keys=True) for t in trials)
    duplicates = {p: n for p, n in params.items() if n > 1}
    assert not duplicates, f"the same configuration was trained more than once: {duplicates}"

    numbers = _studies.check_study_folder(out / study, trials)
    _support.record(
        "test_two_workers_share_one_postgres_study", "scale_out",
        what="2 concurrent `python -m automl.search --storage postgresql://...` workers, one study",
        outcome=f"{len(finished)} distinct trials ({dict(per_worker.most_common())} per worker pid), "
                f"{states.get('FAIL', 0)} failed, leaderboard complete ({numbers['refitted']} refits)",
        lost=0, seconds=round(seconds, 1), states=dict(states),
    )
