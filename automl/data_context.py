"""The data a study runs on, loaded once per process: manifest, split and image arrays.

:func:`prepare_data` scans ``--data`` (or generates the synthetic phantom), makes the
subject-grouped split (an inner study of a nested evaluation: its outer fold as the test part) and
loads the cached arrays; the search, the refits and the leakage audit
all use the resulting :class:`DataContext`. :func:`prediction_frame` is the layout of every file
under ``predictions/``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from automl.config import SearchConfig
from automl.split import Split, make_split
from automl.study import probability_columns

__all__ = ["DataContext", "resolve_data_dir", "prepare_data", "prediction_frame"]

logger = logging.getLogger(__name__)


@dataclass
class DataContext:
    """Everything a trial needs, computed once per process: manifest, split and the image arrays."""

    data_dir: Path
    manifest: Any                 # data.Manifest
    split: Split
    X: np.ndarray                 # uint8 (N, S, S), manifest row order
    y: np.ndarray                 # int (N,)
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def resolve_data_dir(config: SearchConfig) -> Path:
    """Return the dataset folder: ``--data``, or the cached synthetic phantom (generated on first use)."""
    if config.data is not None:
        return Path(config.data).expanduser().resolve()
    from data.phantom import default_dataset

    logger.info("no --data: using the synthetic phantom (n=%d, difficulty %.2f, labels per %s)",
                config.phantom_n, config.phantom_difficulty, config.phantom_label_level)
    return Path(default_dataset(
        n=config.phantom_n, size=max(64, config.image_size),
        seed=config.seed, difficulty=config.phantom_difficulty, label_level=config.phantom_label_level,
        **config.phantom_cohort,
    )).resolve()


def prepare_data(config: SearchConfig, *, data_dir: Path | None = None, manifest: Any = None) -> DataContext:
    """Scan (or reuse) the manifest, make the split and load the cached arrays."""
    import data

    data_dir = data_dir or resolve_data_dir(config)
    if manifest is None:
        # the scan's statistics use the first window of a window set (the brain window of "ich")
        manifest = data.scan_folder(data_dir, group_by=config.group_by, window=data.parse_windows(config.window)[0],
                                    min_per_class=config.folds,
                                    slice_labels=config.slice_labels, slice_step=config.slice_step,
                                    min_brain_fraction=config.min_brain_fraction,
                                    phash_threshold=config.phash_threshold)
    outer = None if config.outer_fold is None else (config.outer_folds, config.outer_fold)  # a nested inner study
    split = make_split(manifest, test_size=config.test_size, n_folds=config.folds, seed=config.seed, outer=outer)
    X = data.load_arrays(manifest, size=config.image_size, window=config.window)
    y = manifest.table["y"].to_numpy(dtype=np.int64)
    return DataContext(data_dir=Path(data_dir), manifest=manifest, split=split, X=X, y=y, classes=list(manifest.classes))


def prediction_frame(ctx: Any, index: np.ndarray, P: np.ndarray, *, fold: np.ndarray | None = None) -> pd.DataFrame:
    """Predictions of the manifest rows ``index``: path, label, y, subject, [scan], [fold], ``prob_<class>``.

    ``scan`` (the NIfTI file or DICOM series of each slice; ``""`` for single images) is there when
    the data holds volumes.

    The layout of every file under ``predictions/`` (out-of-fold, calibration part, test part).
    """
    table = ctx.manifest.table
    columns = {
        "path": table["path"].to_numpy()[index],
        "label": table["label"].to_numpy()[index],
        "y": ctx.y[index],
        "subject": table["subject"].astype(str).to_numpy()[index],
    }
    if "volume" in table.columns and (table["volume"].astype(str) != "").any():  # slices of CT volumes: the scan
        columns["scan"] = table["volume"].fillna("").astype(str).to_numpy()[index]
    if fold is not None:
        columns["fold"] = fold
    frame = pd.DataFrame(columns)
    for c, column in enumerate(probability_columns(ctx.classes)):
        frame[column] = P[:, c]
    return frame
