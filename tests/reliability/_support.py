"""Helpers of the reliability suite: a throwaway PostgreSQL cluster, subprocess workers, polling,
loopback ports and the report of what was tried.

Nothing here is imported by the product; only ``tests/reliability`` uses it.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "ARTIFACTS_DIR",
    "REPO_ROOT",
    "PostgresCluster",
    "find_postgres_bin",
    "free_port",
    "process_rss_mb",
    "record",
    "start_module",
    "stop_process",
    "wait_until",
    "write_summary",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "tests" / "_artifacts"
JSONL = ARTIFACTS_DIR / "reliability.jsonl"
SUMMARY = ARTIFACTS_DIR / "RELIABILITY.md"

_started_log = False


# ============================================================================================ basics
def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the kernel's choice)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; return it, or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - e.g. a storage that is still being created
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def process_rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (psutil when installed, else ``/proc/<pid>/status``)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        text = Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no VmRSS line in /proc/{pid}/status") from None
        return int(match.group(1)) / 1024


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this one's, one intra-op thread, offline, plus ``extra``."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    env.update(extra)
    return env


def start_module(module: str, args: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path = REPO_ROOT) -> subprocess.Popen:
    """Start ``python -m module args...`` in its own process group, stdout+stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "ab")  # noqa: SIM115 - closed with the process (see stop_process)
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env or subprocess_env(),
                            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    proc._strokect_log = handle  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen, *, timeout: float = 20.0) -> int | None:
    """Stop a process started by :func:`start_module` (SIGTERM to its group, then SIGKILL)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    handle = getattr(proc, "_strokect_log", None)
    if handle is not None:
        handle.close()
    return proc.returncode


def tail(path: Path, n: int = 40) -> str:
    """The last ``n`` lines of a log file (for assertion messages)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no log at {path})"


# ========================================================================================= PostgreSQL
def find_postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding initdb and pg_ctl (or ``$STROKECT_PG_BIN``)."""
    candidates = []
    if os.environ.get("STROKECT_PG_BIN"):
        candidates.append(Path(os.environ["STROKECT_PG_BIN"]))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: [int(x) for x in re.findall(r"\d+", p)] or [0], reverse=True)
    candidates += [Path(p) for p in versions]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


@dataclass
class PostgresCluster:
    """A throwaway PostgreSQL cluster in a temporary folder, on 127.0.0.1, trust authentication.

    PostgreSQL refuses to run as root, so when this process is root the server runs as the
    ``postgres`` system user (``subprocess`` ``user=``), with its folder owned by that user.
    ``fsync`` is off: the server itself is never killed in these tests, only its clients.
    """

    bindir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="strokect-pg-")))
    port: int = field(default_factory=free_port)
    superuser: str = "postgres"
    _run_as: str | None = None
    _databases: int = 0

    def __post_init__(self) -> None:
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if os.geteuid() == 0:
            import pwd

            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user to run the server as") from None
            self._run_as = "postgres"
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o700)

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        kwargs: dict[str, Any] = {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        if self._run_as:
            kwargs.update(user=self._run_as, group=self._run_as, extra_groups=[])
            env["HOME"] = str(self.root)
        result = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                                timeout=timeout, env=env, cwd=self.root, **kwargs)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
                               f"\n--- server log ---\n{tail(self.log)}")
        return result

    def start(self) -> PostgresCluster:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.superuser, "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                   "-c max_connections=200 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        logger.info("PostgreSQL cluster up at %s (port %d)", self.root, self.port)
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "strokect") -> str:
        """Create a fresh database; return its SQLAlchemy URL."""
        import psycopg  # the driver SQLAlchemy 2.1 uses for postgresql:// URLs

        self._databases += 1
        name = f"{prefix}_{self._databases}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.superuser, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def server_version(self) -> str:
        return self._run("pg_ctl", "--version").stdout.strip()


# ============================================================================================ report
def record(test: str, kind: str, **fields: Any) -> None:
    """Append one event (what was tried, what came back, what was lost) to ``reliability.jsonl``.

    The first event of a process starts a new file, so the file always describes one run.
    """
    global _started_log
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    mode = "a" if _started_log else "w"
    _started_log = True
    event = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "test": test, "kind": kind, **fields}
    with open(JSONL, mode, encoding="utf-8") as handle:
        handle.write(json.dumps(event, default=str, sort_keys=False) + "\n")


def recorded_this_run() -> bool:
    return _started_log


def _events() -> list[dict[str, Any]]:
    if not JSONL.is_file():
        return []
    out = []
    for line in JSONL.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def write_summary(outcomes: dict[str, str] | None = None, *, seconds: float | None = None) -> Path:
    """Write ``RELIABILITY.md`` from ``reliability.jsonl`` (called once at the end of the session)."""
    events = _events()
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_kind[e["kind"]].append(e)
    lines = ["# Reliability run", ""]
    lines.append(f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `python -m pytest -m slow tests/reliability`"
                 + (f" in {seconds:.0f} s" if seconds else "") + f" on {os.cpu_count()} CPU core(s).")
    lines.append("")
    if outcomes:
        passed = sum(1 for v in outcomes.values() if v == "passed")
        lines.append(f"Tests: {passed} passed, {sum(1 for v in outcomes.values() if v == 'failed')} failed, "
                     f"{sum(1 for v in outcomes.values() if v == 'skipped')} skipped.")
        lines.append("")
        lines += ["| test | outcome |", "| --- | --- |"]
        lines += [f"| `{name}` | {outcome} |" for name, outcome in sorted(outcomes.items())]
        lines.append("")
    lost_total = sum(int(e.get("lost", 0) or 0) for e in events)
    sections = [
        ("scale_out", "Scale-out (PostgreSQL, concurrent workers)"),
        ("fault", "Faults injected"),
        ("bad_input", "Bad inputs tried"),
        ("load", "Load on the live app"),
        ("browser", "Real browser"),
    ]
    for kind, title in sections:
        items = by_kind.get(kind)
        if not items:
            continue
        lines += [f"## {title}", ""]
        for e in items:
            detail = {k: v for k, v in e.items() if k not in ("time", "test", "kind", "what", "outcome", "lost")}
            extra = "; ".join(f"{k}={v}" for k, v in detail.items())
            lines.append(f"- **{e.get('what', e['test'])}**: {e.get('outcome', '')}"
                         f" (lost: {e.get('lost', 0)}){'; ' + extra if extra else ''}")
        lines.append("")
    lines.append(f"**Lost in total: {lost_total}** (finished trials, artifacts, answered requests).")
    lines.append("")
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text("\n".join(lines), encoding="utf-8")
    return SUMMARY


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    """``with timed() as t: ...`` then ``t["seconds"]``."""
    box: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = round(time.perf_counter() - t0, 2)
