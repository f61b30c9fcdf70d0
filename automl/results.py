"""Reading side of a study folder: everything the UI shows comes through here.

A study folder ``leaderboards/<study>/`` is written by :mod:`automl.search` /
:mod:`automl.leaderboard` (layout in ``docs/ARCHITECTURE.md``). This module only *reads* it:
tables are parsed with pandas, JSON with :mod:`json`, and every problem (missing file, corrupt
file, missing column) is raised as one :class:`StudyError` whose message names the file, so a UI
can show the sentence instead of a traceback.

Example::

    from automl.results import list_studies, load_study

    study = load_study(list_studies("leaderboards")[0])
    study.leaderboard.head()
    study.test_predictions(study.best_model)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from automl.study import StudyFolder, probability_columns, valid_model_name
from data._files import read_json_object

__all__ = [
    "NestedResults",
    "StudyError",
    "StudyResults",
    "list_studies",
    "load_study",
    "probability_columns",
    "study_fingerprint",
]

logger = logging.getLogger(__name__)

#: Columns a leaderboard must have for the reader to make sense of it.
_LEADERBOARD_REQUIRED = ("trial", "model", "state", "cv_auc_mean")
#: Columns every prediction file must have (plus one ``prob_<class>`` per class).
_PREDICTION_REQUIRED = ("path", "y")


class StudyError(ValueError):
    """A study folder is missing, incomplete or corrupt. The message names the file."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


def list_studies(root: str | Path = "leaderboards") -> list[Path]:
    """List the study folders under ``root``.

    A study folder is a direct sub-folder holding a ``config.json`` or a ``leaderboard.csv``.

    Args:
        root: The leaderboards folder. A missing folder yields an empty list.

    Returns:
        Study folders sorted by name.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir()
        if p.is_dir() and (StudyFolder(p).config_path.is_file() or StudyFolder(p).leaderboard_csv.is_file())
    )


def study_fingerprint(study_dir: str | Path) -> float:
    """Latest modification time of the study's files (a cache key that changes when a file does).

    Args:
        study_dir: The study folder.

    Returns:
        The largest ``st_mtime`` of the folder's top-level files and ``predictions/`` files,
        0.0 when the folder does not exist.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        return 0.0
    mtimes = [study_dir.stat().st_mtime]
    for folder in (study_dir, study_dir / "predictions", study_dir / "models"):
        if folder.is_dir():
            mtimes.extend(p.stat().st_mtime for p in folder.iterdir())
    return max(mtimes)


def _read_json(path: Path, *, what: str) -> dict[str, Any]:
    try:
        return read_json_object(path, missing=f"{path.name} is missing in {path.parent} ({what}).")
    except ValueError as exc:
        raise StudyError(f"{exc} ({what})" if path.is_file() else str(exc), path=path) from exc


def _read_csv(path: Path, *, what: str, required: tuple[str, ...] = ()) -> pd.DataFrame:
    if not path.is_file():
        raise StudyError(f"{path.name} is missing in {path.parent} ({what}).", path=path)
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        # pandas.errors.EmptyDataError is a ValueError
        raise StudyError(f"{path} could not be read as CSV ({what}): {exc}", path=path) from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise StudyError(
            f"{path} lacks the column(s) {missing} ({what}); found {list(frame.columns)}.", path=path
        )
    return frame


@dataclass
class NestedResults:
    """A study's nested evaluation (:mod:`automl.nested`): ``nested.json`` and ``nested.csv``.

    Attributes:
        dir: The parent study folder.
        summary: ``nested.json``: ``method``, ``outer_folds``, ``headline``, ``verdict``, ``estimate``
            (a ``Headline.to_dict()``: ``subject`` and ``slice`` metrics with intervals, ``counts``,
            ``n_subjects``), ``folds`` (per outer fold: ``winner``, ``winner_trial``, ``inner_cv_auc``,
            ``subject_rule``, ``subject_threshold``, ``test_auc``, ``subject_auc``, ...), ``winners``.
        predictions: ``nested.csv``: the outer folds' winners' test predictions, every image once
            (path, label, y, subject, outer_fold, model, prob_<class>).
    """

    dir: Path
    summary: dict[str, Any]
    predictions: pd.DataFrame

    @property
    def outer_folds(self) -> int:
        return int(self.summary.get("outer_folds") or self.predictions["outer_fold"].nunique())

    @property
    def method(self) -> str:
        return str(self.summary.get("method") or f"nested subject-grouped CV, {self.outer_folds} outer folds")

    @property
    def verdict(self) -> str | None:
        value = self.summary.get("verdict")
        return str(value) if value else None

    @property
    def estimate(self) -> dict[str, Any]:
        """The nested estimate: patient level (``["subject"]``) first, slices (``["slice"]``) second."""
        return dict(self.summary.get("estimate") or {})

    @property
    def folds(self) -> pd.DataFrame:
        """One row per outer fold: its winner (chosen by its inner CV), selection score and test figures."""
        return pd.DataFrame(self.summary.get("folds") or [])

    def inner_study(self, k: int) -> StudyResults:
        """The inner study of outer fold ``k`` (``outer/<k>/``), an ordinary study."""
        try:
            folder = StudyFolder(self.dir).outer_study(k)
        except ValueError as exc:
            raise StudyError(str(exc)) from exc
        return load_study(folder.root)


def _read_nested(folder: StudyFolder, classes: list[str]) -> NestedResults | None:
    if not folder.nested_json.is_file():
        return None
    summary = _read_json(folder.nested_json, what="nested evaluation")
    required = ("path", "y", "subject", "outer_fold", "model", *probability_columns(classes))
    predictions = _read_csv(folder.nested_csv, what="nested evaluation: the outer folds' test predictions",
                            required=required)
    return NestedResults(dir=folder.root, summary=summary, predictions=predictions)


def _as_bool(series: pd.Series) -> pd.Series:
    if series.dtype == bool:
        return series
    return series.astype(str).str.strip().str.lower().isin({"true", "1", "yes"})


@dataclass
class StudyResults:
    """A loaded study folder (see :func:`load_study`).

    Small files (``config.json``, ``leaderboard.csv``) are read at load time; everything else is
    read on first access and kept. Each accessor raises :class:`StudyError` naming the file
    when it is missing or corrupt.

    Attributes:
        dir: The study folder.
        config: ``config.json`` (the search configuration, classes, storage URL, versions).
        leaderboard: ``leaderboard.csv``, one row per trial, sorted by ``rank`` when present.
        classes: Class names, negative class first (``config["classes"]``).
    """

    dir: Path
    config: dict[str, Any]
    leaderboard: pd.DataFrame
    classes: list[str]
    _frames: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ files read on demand
    @cached_property
    def report(self) -> dict[str, Any]:
        """``report.json``: best model, threshold, verdict, warnings, leakage audit, intervals, comparisons,
        subject rules and patient-level headlines (older studies: ``delong`` and ``subject_level``)."""
        return _read_json(self.folder.report_path, what="study report")

    @cached_property
    def split(self) -> pd.DataFrame:
        """``split.csv``: path, label, y, subject, part ("cv"|"test"), fold (-1 for test)."""
        return _read_csv(self.folder.split_path, what="data split", required=("path", "y", "part", "fold"))

    @cached_property
    def manifest(self) -> pd.DataFrame:
        """``manifest.csv``: the scanned data manifest (path, label, y, subject, QC statistics)."""
        return _read_csv(self.folder.manifest_path, what="data manifest", required=("path", "label"))

    @cached_property
    def bad_files(self) -> pd.DataFrame:
        """``bad_files.csv`` (empty frame when the file is absent: no bad files)."""
        path = self.folder.bad_files_path
        if not path.is_file():
            return pd.DataFrame(columns=["path", "reason"])
        return _read_csv(path, what="unreadable input files", required=("path", "reason"))

    @cached_property
    def quality(self) -> dict[str, Any]:
        """``quality.json``: :meth:`data.QualityReport.to_dict` of the dataset."""
        return _read_json(self.folder.quality_path, what="data quality report")

    @cached_property
    def attribution(self) -> pd.DataFrame | None:
        """``attribution.csv`` (localisation and sanity scores), or ``None`` when not computed."""
        path = self.folder.attribution_path
        if not path.is_file():
            return None
        return _read_csv(path, what="attribution scores", required=("method", "model"))

    @cached_property
    def nested(self) -> NestedResults | None:
        """The nested evaluation (``nested.json`` + ``nested.csv``), or ``None`` for a study without one."""
        return _read_nested(self.folder, self.classes)

    @property
    def headline_evaluation(self) -> str:
        """Which evaluation gave the headline: ``"nested"`` or ``"single test part"`` (``report.json``)."""
        value = self._report_or_empty().get("headline_evaluation")
        if value:
            return str(value)
        return "nested" if self.folder.nested_json.is_file() else "single test part"

    @property
    def name(self) -> str:
        """The study name (``config["study"]``, else the folder name)."""
        return str(self.config.get("study") or self.dir.name)

    @property
    def data_dir(self) -> Path | None:
        """The dataset folder the study was run on (``config["data_dir"]``), if recorded."""
        value = self.config.get("data_dir") or self.config.get("data")
        return Path(value) if value else None

    @property
    def folder(self) -> StudyFolder:
        """The study folder's layout (:class:`automl.study.StudyFolder`)."""
        return StudyFolder(self.dir)

    @property
    def storage_url(self) -> str:
        """Optuna storage of the study: the config's URL, else the folder's ``study.journal``."""
        return self.folder.storage_url(self.config)

    # ------------------------------------------------------------------ predictions
    def _predictions(self, path: Path, what: str) -> pd.DataFrame:
        key = path.name
        if key not in self._frames:
            required = _PREDICTION_REQUIRED + tuple(probability_columns(self.classes))
            frame = _read_csv(path, what=what, required=required)
            probs = frame[probability_columns(self.classes)].to_numpy(dtype=float)
            if not np.isfinite(probs).all():
                raise StudyError(f"{path} holds non-finite probabilities ({what}).", path=path)
            self._frames[key] = frame
        return self._frames[key]

    def _check_model(self, model: str) -> str:
        if not valid_model_name(model):
            raise StudyError(f"Invalid model name {model!r}.")
        return model

    def oof(self, trial: int) -> pd.DataFrame:
        """Out-of-fold predictions of one trial (``predictions/oof_trial_<NNNN>.csv``).

        Args:
            trial: The trial number (leaderboard column ``trial``).
        """
        if isinstance(trial, bool) or not isinstance(trial, (int, np.integer)) or trial < 0:
            raise StudyError(f"Invalid trial number {trial!r}: expected a non-negative int.")
        return self._predictions(self.folder.oof_trial_path(int(trial)), f"out-of-fold predictions of trial {trial}")

    def test_predictions(self, model: str) -> pd.DataFrame:
        """Test-part predictions of a refitted model (``predictions/test_<model>.csv``)."""
        model = self._check_model(model)
        return self._predictions(self.folder.test_predictions_path(model), f"test predictions of {model}")

    def calibration_predictions(self, model: str) -> pd.DataFrame:
        """Calibration-part predictions of a refitted model, which chose its threshold
        (``predictions/calibration_<model>.csv``)."""
        model = self._check_model(model)
        return self._predictions(self.folder.calibration_predictions_path(model),
                                 f"calibration-part predictions of {model}")

    def oof_predictions(self, model: str) -> pd.DataFrame:
        """Out-of-fold predictions of a refitted configuration (``predictions/oof_<model>.csv``)."""
        model = self._check_model(model)
        return self._predictions(self.folder.oof_predictions_path(model), f"out-of-fold predictions of {model}")

    # ------------------------------------------------------------------ models
    def refitted_models(self) -> list[str]:
        """Names of the refitted models that have a predictor folder, best leaderboard rank first."""
        folder = self.folder.models_dir
        on_disk = {p.name for p in folder.iterdir() if (p / "card.json").is_file()} if folder.is_dir() else set()
        ordered: list[str] = []
        board = self.leaderboard
        if "refit" in board.columns:
            for name in board.loc[_as_bool(board["refit"]), "model"].astype(str):
                if name in on_disk and name not in ordered:
                    ordered.append(name)
        ordered.extend(sorted(on_disk - set(ordered)))
        return ordered

    def model_dir(self, model: str) -> Path:
        """The predictor folder of a refitted model (``models/<model>/``)."""
        model = self._check_model(model)
        path = self.folder.model_dir(model)
        if not (path / "card.json").is_file():
            raise StudyError(
                f"No refitted model {model!r} in {self.dir / 'models'} (card.json missing); "
                f"available: {self.refitted_models()}.",
                path=path,
            )
        return path

    def card(self, model: str) -> dict[str, Any]:
        """The model card (``models/<model>/card.json``)."""
        return _read_json(self.model_dir(model) / "card.json", what=f"model card of {model}")

    def refit_row(self, model: str) -> pd.Series | None:
        """The leaderboard row of a refitted model (``refit`` true), or ``None``."""
        board = self.leaderboard
        if "refit" not in board.columns:
            return None
        rows = board[_as_bool(board["refit"]) & (board["model"].astype(str) == model)]
        return None if rows.empty else rows.iloc[0]

    @property
    def best_model(self) -> str | None:
        """The study's best model (``report.json``), else the first refitted model, else ``None``."""
        try:
            best = self.report.get("best_model")
        except StudyError:
            best = None
        if best:
            return str(best)
        models = self.refitted_models()
        return models[0] if models else None

    def threshold(self, model: str) -> float:
        """Decision threshold chosen for a refitted model on its calibration-part predictions.

        Looked up in the leaderboard's refit row, then the model card, then ``report.json`` (for the
        best model); 0.5 when none records one.
        """
        row = self.refit_row(model)
        if row is not None and "threshold" in row.index and pd.notna(row["threshold"]):
            return float(row["threshold"])
        try:
            value = self.card(model).get("threshold")
            if value is not None:
                return float(value)
        except StudyError:
            pass
        try:
            if self.report.get("best_model") == model and self.report.get("threshold") is not None:
                return float(self.report["threshold"])
        except StudyError:
            pass
        return 0.5

    # ------------------------------------------------------------------ the verdict (report.json)
    def _report_or_empty(self) -> dict[str, Any]:
        try:
            return self.report
        except StudyError:
            return {}

    @property
    def verdict(self) -> str | None:
        """The study's one-sentence verdict (``report.json`` ``verdict``); ``None`` for studies written before it."""
        value = self._report_or_empty().get("verdict")
        return str(value) if value else None

    @property
    def warnings(self) -> list[str]:
        """Warnings of ``report.json`` (e.g. a small test part); empty when none or not recorded."""
        return [str(w) for w in self._report_or_empty().get("warnings") or []]

    def headline(self, model: str) -> dict[str, Any] | None:
        """The patient-level headline of a refitted model (``report.json`` ``headline``), or ``None``."""
        return (self._report_or_empty().get("headline") or {}).get(model)

    @property
    def winner_trial(self) -> int | None:
        """The trial of the study's winner (``report.json`` ``best_trial``, else the best model's refit row)."""
        trial = self._report_or_empty().get("best_trial")
        if trial is None and self.best_model is not None:
            row = self.refit_row(self.best_model)
            trial = None if row is None else row.get("trial")
        return None if trial is None or pd.isna(trial) else int(trial)

    def load_optuna_study(self) -> Any:
        """Load the Optuna study from :attr:`storage_url` (journal file or RDB URL)."""
        try:
            return self.folder.load_optuna_study(self.storage_url, config=self.config)
        except Exception as exc:  # optuna raises KeyError, ValueError, SQLAlchemy errors, ...
            raise StudyError(f"Could not load the Optuna study from {self.storage_url}: {exc}") from exc


def _with_current_columns(board: pd.DataFrame) -> pd.DataFrame:
    """Older leaderboards read with today's names: ``delong_p`` (slice-level DeLong, images taken as
    independent) becomes ``compare_p`` with ``compare_method`` ``"delong"``; the file is not changed."""
    if "compare_p" not in board.columns and "delong_p" in board.columns:
        method = np.where(board["delong_p"].notna(), "delong", None)
        board = board.assign(compare_p=board["delong_p"], compare_method=method)
    return board


def load_study(study_dir: str | Path) -> StudyResults:
    """Load a study folder written by :mod:`automl.search`.

    Args:
        study_dir: ``leaderboards/<study>`` folder.

    Returns:
        The :class:`StudyResults`; other files are read on first access.

    Raises:
        StudyError: When the folder, ``config.json`` or ``leaderboard.csv`` is missing or corrupt,
            or the config names no classes. The message names the file.
    """
    study_dir = Path(study_dir).expanduser()
    if not study_dir.is_dir():
        raise StudyError(f"Study folder {study_dir} does not exist.", path=study_dir)
    folder = StudyFolder(study_dir)
    config = _read_json(folder.config_path, what="search configuration")
    classes = config.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise StudyError(
            f"{folder.config_path} should list at least two class names under 'classes', found {classes!r}.",
            path=folder.config_path,
        )
    leaderboard = _read_csv(folder.leaderboard_csv, what="leaderboard", required=_LEADERBOARD_REQUIRED)
    if "rank" in leaderboard.columns:
        leaderboard = leaderboard.sort_values("rank", kind="stable", na_position="last").reset_index(drop=True)
    if "refit" in leaderboard.columns:
        leaderboard["refit"] = _as_bool(leaderboard["refit"])
    leaderboard = _with_current_columns(leaderboard)
    logger.debug("loaded study %s (%d trials)", study_dir, len(leaderboard))
    return StudyResults(dir=study_dir, config=config, leaderboard=leaderboard, classes=[str(c) for c in classes])
