"""Leakage-aware data splits: an untouched test part, then cross-validation folds, grouped by subject.

The split is made once per study and deterministically from ``seed``:

1. **Test part** — ``StratifiedGroupKFold(n_splits=round(1 / test_size), shuffle=True,
   random_state=seed)`` over the whole manifest, and its first fold is kept aside. Every slice of a
   subject lands on the same side, and the class ratio is kept as closely as the groups allow.
2. **CV folds** — ``StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)`` on the
   rest. No subject is ever in two folds, nor in both the CV data and the test part.

``grouped=False`` replaces both splitters by their slice-level ``StratifiedKFold`` twins. That is
the split a careless study would make; the search uses it only for the leakage audit.

**Nested evaluation** (``--outer-folds K``, :mod:`automl.nested`): :func:`outer_test_parts` splits the
*subjects* once into ``K`` label-stratified parts (``StratifiedGroupKFold(n_splits=K, shuffle=True,
random_state=seed)`` on one row per subject, its label the highest slice label), and
``make_split(..., outer=(K, k))`` takes part ``k`` as the test part (``test_size`` is then unused) and
makes the CV folds on the rest exactly as above.

Example:
    >>> split = make_split(manifest, test_size=0.2, n_folds=5, seed=0)
    >>> for train_idx, val_idx in split.folds: ...
    >>> inner = make_split(manifest, n_folds=5, seed=0, outer=(3, 1))   # test part: outer fold 1 of 3
    >>> split.to_frame().to_csv("split.csv", index=False)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from automl.verdict import small_cohort_warning

logger = logging.getLogger(__name__)

__all__ = ["Split", "make_split", "outer_test_parts", "slice_level_folds", "check_split"]


@dataclass
class Split:
    """Indices into the manifest rows for the test part and the CV folds.

    Attributes:
        test_index: Rows of the untouched test part (sorted).
        cv_index: Rows used for cross-validation (sorted); the union of all ``val_idx``.
        folds: ``[(train_idx, val_idx), ...]``, indices into the **manifest** (not into ``cv_index``).
        grouped: Whether subjects were kept together.
        seed: Seed of the splitters.
        table: The manifest columns kept for :meth:`to_frame` (path, label, y, subject).
    """

    test_index: np.ndarray
    cv_index: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    grouped: bool = True
    seed: int = 0
    table: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    def fold_of(self) -> np.ndarray:
        """Return, for every manifest row, its validation fold (``-1`` for the test part)."""
        fold = np.full(len(self.table), -1, dtype=int)
        for k, (_, val_idx) in enumerate(self.folds):
            fold[val_idx] = k
        return fold

    def test_subjects_per_class(self) -> dict[str, int]:
        """Subjects of each class in the test part (a subject's class: its highest slice label), class order."""
        test = self.table.iloc[self.test_index]
        labels = self.table.drop_duplicates("y").sort_values("y")
        per_subject = test.groupby(test["subject"].astype(str))["y"].max()
        return {str(label): int((per_subject == y).sum()) for y, label in zip(labels["y"], labels["label"])}

    def to_frame(self) -> pd.DataFrame:
        """Return the ``split.csv`` table: ``path, label, y, subject, part ("cv"|"test"), fold``."""
        frame = self.table[["path", "label", "y", "subject"]].copy().reset_index(drop=True)
        part = np.full(len(frame), "cv", dtype=object)
        part[self.test_index] = "test"
        frame["part"] = part
        frame["fold"] = self.fold_of()
        return frame


def _table_of(manifest: Any) -> pd.DataFrame:
    table = getattr(manifest, "table", manifest)
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"make_split expects a data.Manifest or a DataFrame, got {type(manifest).__name__}")
    missing = {"path", "label", "y", "subject"} - set(table.columns)
    if missing:
        raise ValueError(f"manifest table lacks column(s) {sorted(missing)}")
    return table.reset_index(drop=True)


def _check_feasible(y: np.ndarray, groups: np.ndarray, n_splits: int, what: str) -> None:
    for cls in np.unique(y):
        n_groups = len(np.unique(groups[y == cls]))
        if n_groups < n_splits:
            raise ValueError(
                f"class y={cls} has only {n_groups} subject(s), fewer than the {n_splits} {what} requested; "
                "use fewer folds, a larger test part, or more data"
            )


def make_split(
    manifest: Any,
    *,
    test_size: float = 0.2,
    n_folds: int = 5,
    seed: int = 0,
    grouped: bool = True,
    outer: tuple[int, int] | None = None,
) -> Split:
    """Split a manifest into an untouched test part and ``n_folds`` cross-validation folds.

    Args:
        manifest: A ``data.Manifest`` (or its ``table``) with columns ``path, label, y, subject``.
        test_size: Fraction of the data kept for the test part, in (0, 0.5]. The test part is one
            fold of a ``round(1 / test_size)``-fold grouped stratified split, so the fraction is
            approximate when subjects have different numbers of slices.
        n_folds: Number of CV folds, at least 2.
        seed: Seed of both splitters; the same manifest and seed give the same split.
        grouped: Keep all slices of a subject on one side (``StratifiedGroupKFold``). ``False`` gives
            slice-level ``StratifiedKFold`` folds (leakage audit only).
        outer: ``(K, k)`` for an inner study of a nested evaluation: the test part is outer fold ``k``
            of :func:`outer_test_parts` ``(manifest, K, seed=seed)`` and ``test_size`` is not used.
            Needs ``grouped=True``.

    Returns:
        The :class:`Split`.

    Raises:
        ValueError: On invalid arguments or when a class has too few subjects for the folds.
    """
    if not 0.0 < float(test_size) <= 0.5:
        raise ValueError(f"test_size must be in (0, 0.5], got {test_size}")
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds}")
    table = _table_of(manifest)
    y = table["y"].to_numpy(dtype=int)
    groups = table["subject"].astype(str).to_numpy() if grouped else np.arange(len(table)).astype(str)
    if outer is not None:
        if not grouped:
            raise ValueError("outer folds keep subjects together: outer=(K, k) needs grouped=True")
        cv_index, test_index = _outer_part(table, outer, seed)
    else:
        cv_index, test_index = _test_part(y, groups, test_size, seed, grouped)

    _check_feasible(y[cv_index], groups[cv_index], n_folds, "CV folds")
    inner = (
        StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        if grouped
        else StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    )
    folds = [
        (cv_index[np.sort(tr)], cv_index[np.sort(va)])
        for tr, va in inner.split(cv_index, y[cv_index], groups[cv_index] if grouped else None)
    ]
    split = Split(test_index=test_index, cv_index=cv_index, folds=folds, grouped=grouped, seed=seed, table=table)
    if grouped:
        check_split(split)
    logger.info(
        "split: %d test, %d CV images in %d %s folds (seed %d)",
        len(test_index), len(cv_index), n_folds, "subject-grouped" if grouped else "slice-level", seed,
    )
    if grouped:
        _report_test_subjects(split)
    return split


def _test_part(y: np.ndarray, groups: np.ndarray, test_size: float, seed: int,
               grouped: bool) -> tuple[np.ndarray, np.ndarray]:
    """The first fold of a ``round(1 / test_size)``-fold split: ``(cv_index, test_index)``, sorted."""
    n_test_splits = max(2, int(round(1.0 / float(test_size))))
    _check_feasible(y, groups, n_test_splits, "test-part splits (1/test_size)")

    all_idx = np.arange(len(y))
    outer = (
        StratifiedGroupKFold(n_splits=n_test_splits, shuffle=True, random_state=seed)
        if grouped
        else StratifiedKFold(n_splits=n_test_splits, shuffle=True, random_state=seed)
    )
    cv_index, test_index = next(iter(outer.split(all_idx, y, groups if grouped else None)))
    return np.sort(cv_index), np.sort(test_index)


def _outer_part(table: pd.DataFrame, outer: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Outer fold ``k`` of ``K`` as the test part: ``(cv_index, test_index)``, sorted."""
    if not (isinstance(outer, (tuple, list)) and len(outer) == 2 and all(_is_int(v) for v in outer)
            and 0 <= outer[1] < outer[0]):
        raise ValueError(f"outer must be (K, k) with integers 0 <= k < K, got {outer!r}")
    test_index = outer_test_parts(table, int(outer[0]), seed=seed)[int(outer[1])]
    return np.setdiff1d(np.arange(len(table)), test_index), test_index


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def outer_test_parts(manifest: Any, n_outer: int, *, seed: int = 0) -> list[np.ndarray]:
    """Split the subjects into ``n_outer`` label-stratified parts: the outer folds of a nested evaluation.

    One row per subject, labelled with its highest slice label (a patient with any stroke slice is a
    stroke patient), split by ``StratifiedGroupKFold(n_splits=n_outer, shuffle=True, random_state=seed)``:
    every subject lands in exactly one part, and each part holds about ``1 / n_outer`` of every
    class's subjects.

    Args:
        manifest: A ``data.Manifest`` (or its ``table``) with columns ``path, label, y, subject``.
        n_outer: Number of outer folds, at least 2.
        seed: Seed of the splitter (the study's ``--seed``).

    Returns:
        ``n_outer`` sorted arrays of manifest rows (the slices of each part's subjects).

    Raises:
        ValueError: On a bad ``n_outer`` or when a class has fewer subjects than ``n_outer``.
    """
    if not _is_int(n_outer) or n_outer < 2:
        raise ValueError(f"n_outer must be an integer >= 2, got {n_outer!r}")
    table = _table_of(manifest)
    subjects = table["subject"].astype(str).to_numpy()
    per_subject = pd.Series(table["y"].to_numpy(dtype=int)).groupby(subjects, sort=True).max()
    names, labels = per_subject.index.to_numpy(dtype=str), per_subject.to_numpy(dtype=int)
    _check_feasible(labels, names, int(n_outer), "outer folds (--outer-folds)")
    splitter = StratifiedGroupKFold(n_splits=int(n_outer), shuffle=True, random_state=seed)
    return [np.flatnonzero(np.isin(subjects, names[part])) for _, part in splitter.split(names, labels, names)]


def _report_test_subjects(split: Split) -> None:
    """Log the test part's subjects per class; warn below 10 in a class (wide intervals, issue 16)."""
    counts = split.test_subjects_per_class()
    logger.info("test part: %s subjects", ", ".join(f"{n} {c}" for c, n in counts.items()))
    warning = small_cohort_warning(counts, unit="patient") if counts else None
    if warning:
        logger.warning("%s", warning)


def slice_level_folds(split: Split, *, seed: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return slice-level ``StratifiedKFold`` folds over the same CV rows as ``split``.

    The test part is left as it is; only the CV rows are re-split without regard to subjects. This is
    what the leakage audit compares the grouped folds against.
    """
    y = split.table["y"].to_numpy(dtype=int)
    cv = split.cv_index
    skf = StratifiedKFold(n_splits=split.n_folds, shuffle=True, random_state=split.seed if seed is None else seed)
    return [(cv[np.sort(tr)], cv[np.sort(va)]) for tr, va in skf.split(cv, y[cv])]


def check_split(split: Split) -> None:
    """Assert that no subject appears in two folds or in both the CV data and the test part.

    Raises:
        AssertionError: Naming the shared subject(s).
    """
    subjects = split.table["subject"].astype(str).to_numpy()
    test_subjects = set(subjects[split.test_index])
    cv_subjects = set(subjects[split.cv_index])
    shared = test_subjects & cv_subjects
    assert not shared, f"subject(s) in both CV and test: {sorted(shared)[:5]}"
    seen: dict[str, int] = {}
    for k, (tr, va) in enumerate(split.folds):
        assert not set(subjects[tr]) & set(subjects[va]), f"fold {k}: subject in train and validation"
        for s in set(subjects[va]):
            assert s not in seen, f"subject {s!r} in validation folds {seen[s]} and {k}"
            seen[s] = k
    covered = np.sort(np.concatenate([va for _, va in split.folds]))
    assert np.array_equal(covered, split.cv_index), "validation folds do not cover the CV rows exactly once"
