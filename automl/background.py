"""Run a search detached from whoever asked for it (a browser tab, a request handler) and read its progress back.

The dashboard's first start builds the demo study this way: :func:`start_search` launches
``python -m automl.background RUN <config.json>`` as a child in its own session (a closed or
refreshed tab, a Streamlit rerun or a second visitor do not stop it), writes ``.build.json``
(pid, process start time, command) and ``build.log`` into the study folder, and returns at once.
:func:`build_status` tells every later visitor what is going on — from the study storage (finished
trials of the planned number) and the lock, not from any in-memory state — and whether a partial
study can be resumed: a search resumes from its journal (finished trials kept, the dead worker's
trial retried), so :func:`start_search` on a crashed build *is* the resume.

Example::

    from automl.background import build_status, start_search
    status = start_search(SearchConfig(preset="demo", study="demo"))
    build_status(status.study_dir).fraction     # 0.0 .. 1.0, from the storage
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from automl.config import SearchConfig
from automl.objective import pid_alive, process_start_time
from automl.study import StudyFolder
from data._files import atomic_write_json, json_clean

__all__ = ["BuildStatus", "build_status", "start_search", "main"]

logger = logging.getLogger(__name__)

BUILD_FILE = ".build.json"
LOG_FILE = "build.log"
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BuildStatus:
    """What a study folder's build is doing.

    Attributes:
        study_dir: The study folder.
        state: ``"absent"`` (no study), ``"running"`` (a live build process), ``"finished"``
            (leaderboard written, no build running), ``"partial"`` (a build started and died before its
            leaderboard: resumable), ``"failed"`` (the build process exited with an error; resumable).
        pid: The build process, when one is recorded.
        n_finished: Finished (complete or pruned) trials in the storage.
        n_planned: The trials the study should hold (``config.json``), when known.
        message: One sentence for the page.
        log_tail: The last lines of ``build.log``.
    """

    study_dir: Path
    state: str
    pid: int | None = None
    n_finished: int = 0
    n_planned: int | None = None
    message: str = ""
    log_tail: str = ""

    @property
    def fraction(self) -> float:
        """Progress in ``[0, 1]``: finished of planned trials (1.0 once finished)."""
        if self.state == "finished":
            return 1.0
        if not self.n_planned:
            return 0.0
        return min(1.0, self.n_finished / self.n_planned)

    @property
    def resumable(self) -> bool:
        return self.state in ("partial", "failed")


def _record(folder: StudyFolder) -> dict | None:
    path = folder.root / BUILD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _log_tail(folder: StudyFolder, lines: int = 6) -> str:
    try:
        text = (folder.root / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _progress(folder: StudyFolder) -> tuple[int, int | None]:
    """Finished and planned trials, read from the storage and ``config.json`` (0, None before they exist)."""
    try:
        config = folder.read_config()
        study = folder.load_optuna_study(config=config)
    except Exception:  # noqa: BLE001 - not written yet, or mid-write: no progress to show
        return 0, None
    from optuna.trial import TrialState

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    planned = config.get("n_trials")
    return done, int(planned) if isinstance(planned, int) else None


def build_status(study_dir: str | Path) -> BuildStatus:
    """The state of the study folder's build (see :class:`BuildStatus`); never raises for a missing folder."""
    folder = StudyFolder(Path(study_dir))
    record = _record(folder)
    done, planned = _progress(folder)
    tail = _log_tail(folder)
    common = dict(study_dir=folder.root, n_finished=done, n_planned=planned, log_tail=tail)
    if record is not None and pid_alive(int(record.get("pid", -1)), record.get("start")):
        return BuildStatus(state="running", pid=int(record["pid"]),
                           message=f"building: {done} of {planned or '?'} trials finished", **common)
    exit_code = (record or {}).get("exit_code")
    if folder.leaderboard_csv.is_file() and (record is None or exit_code in (0, None)):
        return BuildStatus(state="finished", message="the study is ready", **common)
    if record is not None and exit_code not in (0, None):
        return BuildStatus(state="failed", pid=record.get("pid"),
                           message=f"the build stopped with an error (exit {exit_code}); resume it to retry", **common)
    if record is not None or folder.config_path.is_file():
        return BuildStatus(state="partial", pid=(record or {}).get("pid"),
                           message=f"a build stopped after {done} of {planned or '?'} trials; resume it to finish",
                           **common)
    return BuildStatus(state="absent", message="no study yet", **common)


def start_search(config: SearchConfig) -> BuildStatus:
    """Start (or resume) the search of ``config`` in a detached child process; return at once.

    A build already running for the same study folder is left alone (a second visitor, a refresh):
    its status is returned. Otherwise the config is written to ``<study>/.build-config.json`` and
    ``python -m automl.background RUN`` on it runs in a new session, logging to ``build.log``.
    """
    folder = StudyFolder(config.study_dir)
    folder.root.mkdir(parents=True, exist_ok=True)
    with open(folder.root / ".build.lock", "a+") as lock:
        try:
            import fcntl

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # two visitors at once start one build
        except ImportError:  # pragma: no cover - Windows
            pass
        status = build_status(folder.root)
        if status.state == "running":
            return status
        return _spawn(config, folder)


def _spawn(config: SearchConfig, folder: StudyFolder) -> BuildStatus:
    values = config.to_dict()  # the child runs elsewhere: every path absolute
    values["leaderboards"] = str(Path(config.leaderboards).expanduser().resolve())
    if config.data is not None:
        values["data"] = str(Path(config.data).expanduser().resolve())
    config_path = atomic_write_json(json_clean(values, default=str), folder.root / ".build-config.json")
    command = [sys.executable, "-m", "automl.background", "RUN", str(config_path)]
    env = {**os.environ, "STROKECT_NO_PROGRESS": "1", "PYTHONPATH": os.pathsep.join(
        [str(_REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with open(folder.root / LOG_FILE, "ab") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=str(_REPO_ROOT), env=env, start_new_session=True)
    atomic_write_json({"pid": child.pid, "start": process_start_time(child.pid), "command": command,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, folder.root / BUILD_FILE)
    logger.info("started the %s build in the background (pid %d, log %s)", folder.name, child.pid,
                folder.root / LOG_FILE)
    return build_status(folder.root)


def _run(config_path: Path) -> int:
    """The child: run the search, then record its exit code next to its pid."""
    from automl.search import run_search
    from data._log import setup_logging

    setup_logging(0)
    config = SearchConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    folder = StudyFolder(config.study_dir)
    code = 0
    try:
        run_search(config, progress_bars=False)
    except KeyboardInterrupt:
        code = 130
    except Exception:  # noqa: BLE001 - recorded for build_status, the traceback goes to build.log
        logger.exception("the background search failed")
        code = 1
    record = _record(folder) or {}
    if record.get("pid") == os.getpid():
        atomic_write_json({**record, "exit_code": code, "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                          folder.root / BUILD_FILE)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m automl.background RUN CONFIG_JSON`` (what :func:`start_search` launches)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "RUN":
        print("usage: python -m automl.background RUN <config.json>", file=sys.stderr)
        return 2
    return _run(Path(args[1]))


if __name__ == "__main__":
    raise SystemExit(main())
