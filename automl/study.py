"""The study folder as one object: its layout, its ``config.json`` and its Optuna storage.

Every module that reads or writes ``<leaderboards>/<study>/`` (search, leaderboard, results,
attribution evaluation, the UI through :mod:`automl.results`) goes through :class:`StudyFolder`,
so each file name lives here and nowhere else, and :func:`parse_storage_url` is the one parser of
a storage URL (Optuna's own layout is the model: ``optuna/study`` owns the study,
``optuna/storages`` owns opening a storage, and nothing below imports them)::

    <leaderboards>/<study>/
        config.json          search configuration + data_dir, classes, manifest hash, versions, storage URL
        study.journal        Optuna JournalFileBackend (the default storage)
        manifest.csv  bad_files.csv  quality.json  split.csv
        leaderboard.csv  leaderboard.md  report.json  attribution.csv
        predictions/oof_trial_<NNNN>.csv   predictions/{oof,test,calibration}_<model>.csv
        models/<model>/      predictor folder (model.safetensors + card.json) + config.json
        outer/<k>/           nested evaluation (--outer-folds K): inner study k, a complete study folder
                             whose test part is outer fold k
        nested.csv  nested.json   the outer folds' winners' pooled test predictions and the nested estimate

Example::

    folder = StudyFolder.locate("demo", leaderboards="leaderboards")
    config = folder.read_config()
    study = folder.load_optuna_study()
"""
from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from data._files import atomic_write_json, read_json_object

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LEADERBOARDS",
    "leaderboards_root",
    "StudyFolder",
    "parse_storage_url",
    "open_storage",
    "probability_columns",
    "valid_model_name",
    "valid_study_name",
]

#: The default root of study folders (``--leaderboards``).
DEFAULT_LEADERBOARDS = "leaderboards"
#: The default storage of a study, relative to its folder.
JOURNAL_FILE = "study.journal"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SAFE_MODEL = re.compile(r"^[A-Za-z0-9_.+\-]+$")  # registry names; the frozen-feature lane's hold a "+"
_OOF_TRIAL = re.compile(r"^oof_trial_(\d+)\.csv$")


def leaderboards_root() -> Path:
    """The default root of study folders: ``$STROKECT_LEADERBOARDS``; else ``<repo>/leaderboards`` in a
    checkout; else (an installed package) ``./leaderboards`` in the working folder."""
    import os

    from data._io import checkout_root

    env = os.environ.get("STROKECT_LEADERBOARDS")
    if env:
        return Path(env).expanduser()
    checkout = checkout_root()
    return (checkout if checkout is not None else Path.cwd()) / DEFAULT_LEADERBOARDS


def probability_columns(classes: list[str] | tuple[str, ...]) -> list[str]:
    """The ``prob_<class>`` columns of every file under ``predictions/``, in class order."""
    return [f"prob_{c}" for c in classes]


def valid_model_name(name: Any) -> bool:
    """Whether ``name`` can be a registered model's file name (letters, digits, ``- _ . +``, not hidden)."""
    return isinstance(name, str) and bool(_SAFE_MODEL.match(name)) and not name.startswith(".")


def valid_study_name(name: Any) -> bool:
    """Whether ``name`` is a plain study or model name (letters, digits, ``- _ .``, not hidden)."""
    return isinstance(name, str) and bool(_SAFE_NAME.match(name)) and not name.startswith(".")


def parse_storage_url(url: str | None, *, base: str | Path | None = None) -> tuple[str, str]:
    """Classify a storage URL: ``("journal", <file path>)`` or ``("rdb", <SQLAlchemy URL>)``.

    Accepted: ``None`` (the study folder's ``study.journal``), a path ending in ``.journal``
    (relative paths resolve against ``base``, the study folder), ``journal://<path>`` /
    ``file://<path>``, and RDB URLs (``postgresql://``, ``mysql://``, ``sqlite:///``, ...).

    Raises:
        ValueError: Anything else; the message names the URL.
    """
    if url is None:
        url = JOURNAL_FILE
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"--storage must be an RDB URL (postgresql://..., sqlite:///...) or a .journal file, got {url!r}")
    match = re.match(r"^(journal|file)://(.+)$", url)
    if match or ("://" not in url and url.endswith(".journal")):
        path = Path(match.group(2) if match else url).expanduser()
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        return "journal", str(path)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", url):
        return "rdb", url
    raise ValueError(f"--storage must be an RDB URL (postgresql://..., sqlite:///...) or a .journal file, got {url!r}")


def open_storage(url: str | None, *, base: str | Path | None = None, create: bool = True,
                 heartbeat_interval: int | None = None, heartbeat_grace: int | None = None,
                 max_retry: int = 2) -> Any:
    """Open an Optuna storage named by :func:`parse_storage_url`.

    * journal: ``JournalStorage(JournalFileBackend(path))`` (file lock: safe for several local
      processes and on a shared file system); ``create=False`` refuses a missing file.
    * RDB: ``RDBStorage`` with ``pool_pre_ping`` for server databases and, when
      ``heartbeat_interval`` is given, Optuna's heartbeat with
      ``RetryHeartbeatStaleTrialCallback(max_retry)``.

    Raises:
        ValueError: A bad URL, or (``create=False``) a missing journal file.
    """
    import warnings

    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    kind, target = parse_storage_url(url, base=base)
    if kind == "journal":
        path = Path(target)
        if not create and not path.is_file():
            raise ValueError(f"the study's journal {path} is missing")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    kwargs: dict[str, Any] = {"engine_kwargs": {} if target.startswith("sqlite") else {"pool_pre_ping": True}}
    if heartbeat_interval is not None:
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=heartbeat_grace,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry))
    return _rdb_storage(RDBStorage, target, kwargs)


def _rdb_storage(factory: Any, target: str, kwargs: dict[str, Any], attempts: int = 5) -> Any:
    """``RDBStorage(target, **kwargs)``, retried when another process creates the schema at the same moment.

    Optuna creates its tables and PostgreSQL enum types without a lock, so two workers starting on a
    fresh database race (``duplicate key ... pg_type_typname_nsp_index`` on ``CREATE TYPE``); the loser
    retries and finds the schema made (``create_all`` checks first).
    """
    import time
    import warnings

    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return factory(target, **kwargs)
        except (IntegrityError, ProgrammingError) as exc:
            if attempt == attempts - 1:
                raise
            logger.info("storage schema created concurrently by another process (%s); retrying",
                        type(exc.orig).__name__ if getattr(exc, "orig", None) else type(exc).__name__)
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class StudyFolder:
    """One study folder: where each file lives, its config and its storage.

    Attributes:
        root: The folder ``<leaderboards>/<study>/``.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    @classmethod
    def locate(cls, study: str | Path, leaderboards: str | Path = DEFAULT_LEADERBOARDS) -> StudyFolder:
        """The folder of ``study``: a study name under ``leaderboards``, or a path to a study folder.

        A name is looked up as ``<leaderboards>/<study>``; a value holding a path separator, or a
        folder that exists with a ``config.json``, is taken as the folder itself.
        """
        text = str(study)
        direct = Path(text).expanduser()
        if (direct / "config.json").is_file() or ("/" in text or "\\" in text) and direct.is_dir():
            return cls(direct)
        if not valid_study_name(text):
            raise ValueError(f"--study must be a plain name (letters, digits, - _ .) or a study folder, got {text!r}")
        return cls(Path(leaderboards).expanduser() / text)

    # ------------------------------------------------------------------ layout
    @property
    def name(self) -> str:
        return self.root.name

    config_path = property(lambda self: self.root / "config.json")
    journal_path = property(lambda self: self.root / JOURNAL_FILE)
    manifest_path = property(lambda self: self.root / "manifest.csv")
    bad_files_path = property(lambda self: self.root / "bad_files.csv")
    quality_path = property(lambda self: self.root / "quality.json")
    split_path = property(lambda self: self.root / "split.csv")
    leaderboard_csv = property(lambda self: self.root / "leaderboard.csv")
    leaderboard_md = property(lambda self: self.root / "leaderboard.md")
    report_path = property(lambda self: self.root / "report.json")
    attribution_path = property(lambda self: self.root / "attribution.csv")
    predictions_dir = property(lambda self: self.root / "predictions")
    models_dir = property(lambda self: self.root / "models")
    lock_path = property(lambda self: self.root / ".leaderboard.lock")
    nested_csv = property(lambda self: self.root / "nested.csv")
    nested_json = property(lambda self: self.root / "nested.json")
    outer_dir = property(lambda self: self.root / "outer")

    def outer_study(self, k: int) -> StudyFolder:
        """The inner study of outer fold ``k`` of a nested evaluation (``outer/<k>/``)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"an outer fold is an integer >= 0, got {k!r}")
        return StudyFolder(self.outer_dir / str(k))

    def oof_trial_path(self, trial: int) -> Path:
        """Out-of-fold predictions of one complete trial."""
        return self.predictions_dir / f"oof_trial_{int(trial):04d}.csv"

    def oof_trial_files(self) -> dict[int, Path]:
        """Every ``oof_trial_<NNNN>.csv`` on disk, by trial number."""
        if not self.predictions_dir.is_dir():
            return {}
        found = {}
        for path in self.predictions_dir.iterdir():
            match = _OOF_TRIAL.match(path.name)
            if match:
                found[int(match.group(1))] = path
        return found

    def _model_file(self, prefix: str, model: str) -> Path:
        if not valid_model_name(model):
            raise ValueError(f"invalid model name {model!r}")
        return self.predictions_dir / f"{prefix}_{model}.csv"

    def test_predictions_path(self, model: str) -> Path:
        """The refitted model's predictions on the untouched test part."""
        return self._model_file("test", model)

    def oof_predictions_path(self, model: str) -> Path:
        """Out-of-fold predictions of the refitted configuration."""
        return self._model_file("oof", model)

    def calibration_predictions_path(self, model: str) -> Path:
        """The refitted model's predictions on its calibration part (where its threshold was chosen)."""
        return self._model_file("calibration", model)

    def model_dir(self, model: str) -> Path:
        """The predictor folder of a refitted model."""
        if not valid_model_name(model):
            raise ValueError(f"invalid model name {model!r}")
        return self.models_dir / model

    # ------------------------------------------------------------------ config.json
    def read_config(self) -> dict[str, Any]:
        """``config.json`` as written by the search (no CLI validation is re-run).

        Raises:
            ValueError: The file is missing or not a JSON object; the message names it.
        """
        return read_json_object(self.config_path, missing=f"{self.config_path} is missing: is {self.root} a "
                                                          "study folder written by automl.search?")

    def write_config(self, payload: dict[str, Any]) -> Path:
        """Write ``config.json`` atomically."""
        return atomic_write_json(payload, self.config_path)

    def study_name(self, config: dict[str, Any] | None = None) -> str:
        """The Optuna study name recorded in ``config.json`` (else the folder name)."""
        config = self.read_config() if config is None else config
        return str(config.get("study_name") or config.get("study") or self.name)

    def storage_url(self, config: dict[str, Any] | None = None) -> str:
        """The storage URL recorded in ``config.json`` (default: the folder's ``study.journal``)."""
        config = self.read_config() if config is None else config
        return str(config.get("storage_url") or config.get("storage") or JOURNAL_FILE)

    # ------------------------------------------------------------------ Optuna
    def open_storage(self, url: str | None = None, *, create: bool = False, **kwargs: Any) -> Any:
        """The study's storage: ``url``, else the one in ``config.json`` (relative journals live here)."""
        return open_storage(url or self.storage_url(), base=self.root, create=create, **kwargs)

    def load_optuna_study(self, storage: Any = None, *, config: dict[str, Any] | None = None) -> Any:
        """``optuna.load_study`` of this study from ``storage`` (object or URL; default: config.json's).

        Raises:
            ValueError: No config, a missing journal, or a storage without this study.
        """
        import optuna

        config = self.read_config() if config is None else config
        if storage is None or isinstance(storage, str):
            storage = self.open_storage(storage or self.storage_url(config))
        name = self.study_name(config)
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError as exc:
            raise ValueError(f"the storage of {self.root} holds no study named {name!r}") from exc

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive advisory lock on the folder's ``.leaderboard.lock`` (no-op where fcntl is missing)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as handle:
            try:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - Windows
                pass
            yield
