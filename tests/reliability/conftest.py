"""Fixtures of the reliability suite (``python -m pytest -m slow tests/reliability``).

* ``pg_cluster`` (session): a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl`` from
  ``/usr/lib/postgresql/<v>/bin``) in a temporary folder, on 127.0.0.1 and a free port, stopped at
  the end of the session, also when a test failed. Skipped, with the reason, when the binaries or
  ``psycopg`` are missing (``tools/ci_services.sh`` installs them).
* ``postgres_url``: a fresh database on that cluster for one test.
* ``phantom_data`` (session): a small synthetic dataset (120 slices, 64 px, labels per subject).
* ``smoke_study`` (session): a real study (``--preset smoke``) on that dataset, in its own
  leaderboards folder; tests copy it before damaging anything.

At the end of the session ``tests/_artifacts/RELIABILITY.md`` summarises what the tests recorded in
``tests/_artifacts/reliability.jsonl`` (faults injected, bad inputs, requests, what was lost).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.reliability import _support

_OUTCOMES: dict[str, str] = {}
_T0 = time.monotonic()


# ============================================================================================ hooks
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/reliability/" not in report.nodeid.replace(os.sep, "/"):
        return
    name = report.nodeid.split("::", 1)[-1]
    if report.when == "call" or report.outcome in ("failed", "skipped"):
        if report.outcome == "failed" or name not in _OUTCOMES or _OUTCOMES[name] == "passed":
            _OUTCOMES[name] = report.outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _support.recorded_this_run() or any(v != "skipped" for v in _OUTCOMES.values()):
        path = _support.write_summary(_OUTCOMES, seconds=time.monotonic() - _T0)
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.ensure_newline()
            tr.write_line(f"reliability summary: {path}")


# ========================================================================================= fixtures
@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[_support.PostgresCluster]:
    """A running throwaway PostgreSQL cluster (session-wide)."""
    bindir = _support.find_postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb); "
                    "`bash tools/ci_services.sh` installs them")
    pytest.importorskip("psycopg", reason="psycopg (v3, the driver SQLAlchemy uses for postgresql://) is not "
                                          "installed: pip install -r requirements-dev.txt")
    try:
        cluster = _support.PostgresCluster(bindir)
    except RuntimeError as exc:
        pytest.skip(f"cannot run a PostgreSQL server here: {exc}")
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(pg_cluster: _support.PostgresCluster) -> str:
    """A new, empty database on the session cluster (SQLAlchemy URL)."""
    return pg_cluster.create_database()


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's ``STROKECT_CACHE`` (the one tests/conftest.py sets for every test)."""
    return tmp_path_factory.getbasetemp() / "strokect-cache"


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the Kaggle layout (generated once per session)."""
    from data.phantom import generate_phantom

    return Path(generate_phantom(tmp_path_factory.mktemp("phantom") / "phantom", n=120, size=64, seed=0,
                                 difficulty=0.3, label_level="subject"))


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory, phantom_data: Path, session_cache: Path) -> Path:
    """A real smoke study (search + refits + leaderboard) built once; returns ``<root>/smoke``."""
    search = pytest.importorskip("automl.search", reason="automl.search is not available")
    old = os.environ.get("STROKECT_CACHE")
    os.environ["STROKECT_CACHE"] = str(session_cache)
    try:
        out = tmp_path_factory.mktemp("leaderboards")
        config = search.SearchConfig(preset="smoke", study="smoke", data=str(phantom_data), leaderboards=str(out))
        study_dir = Path(search.run_search(config, progress_bars=False))
    finally:
        if old is None:
            os.environ.pop("STROKECT_CACHE", None)
        else:
            os.environ["STROKECT_CACHE"] = old
    return study_dir
