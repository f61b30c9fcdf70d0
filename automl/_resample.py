"""The resampling engine behind :mod:`automl.uncertainty`: subjects, resample counts, weighted metrics.

Internal. Images are grouped in subjects (:class:`_Clusters`); a resample is a vector of subject
counts (how often each subject is drawn), and every metric is a weighted sum over images, so a
chunk of resamples is a few matrix products (no Python loop over resamples). See
:func:`automl.uncertainty.cluster_bootstrap` for the method and its references.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from automl.metrics import (
    UndefinedMetricWarning,
    _check_matrix,
    binary_metrics_at_threshold,
    brier_score,
    expected_calibration_error,
    roc_auc,
)

MIN_SUBJECTS_FOR_AUC = 2  # an AUC needs at least this many subjects of each class
_CHUNK_CELLS = 2_000_000  # resamples x images held in memory at once (the previous bootstrap's budget)


# ----------------------------------------------------------------------------------------------------
# validation and subjects
# ----------------------------------------------------------------------------------------------------


def _is_int(value: object, low: int) -> bool:
    try:
        return not isinstance(value, bool) and int(value) == value and value >= low
    except (TypeError, ValueError):
        return False


def _check_options(n_boot: object, alpha: object, min_subjects: object | None = None) -> None:
    if not _is_int(n_boot, 10):
        raise ValueError(f"n_boot must be an integer >= 10, got {n_boot!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
    if min_subjects is not None and not _is_int(min_subjects, MIN_SUBJECTS_FOR_AUC):
        raise ValueError(f"min_subjects must be an integer >= {MIN_SUBJECTS_FOR_AUC}, got {min_subjects!r}.")


@dataclass(frozen=True)
class _Clusters:
    """Images grouped in subjects: what every resampling below needs."""

    y: np.ndarray  # (N,) image labels
    P: np.ndarray  # (N, C) probabilities
    codes: np.ndarray  # (N,) subject index 0 .. S-1, in order of first appearance
    subject_y: np.ndarray  # (S,) subject labels
    strata: list[np.ndarray]  # subject indices of each subject class present, ascending class
    names: list[str]  # class names, negative first

    @property
    def n_subjects(self) -> dict[str, int]:
        counts = np.bincount(self.subject_y, minlength=len(self.names))
        return {name: int(n) for name, n in zip(self.names, counts)}

    @property
    def n_images(self) -> dict[str, int]:
        counts = np.bincount(self.y, minlength=len(self.names))
        return {name: int(n) for name, n in zip(self.names, counts)}

    @property
    def contributing(self) -> dict[str, int]:
        """Subjects holding at least one image of each class (labels per slice: a patient may count twice)."""
        return {name: int(len(np.unique(self.codes[self.y == c]))) for c, name in enumerate(self.names)}

    @property
    def clustered(self) -> bool:
        return len(self.subject_y) < len(self.y)

    @property
    def method(self) -> str:
        return "cluster_bootstrap" if self.clustered else "bootstrap"


def _class_names(classes: Sequence[str] | None, n_classes: int) -> list[str]:
    if classes is None:
        return ["negative", "positive"] if n_classes == 2 else [f"class {c}" for c in range(n_classes)]
    names = [str(c) for c in classes]
    if len(names) != n_classes:
        raise ValueError(f"classes must name the {n_classes} classes of P, got {len(names)}: {names}.")
    return names


def _clusters(y: object, P: object, subjects: object | None, classes: Sequence[str] | None) -> _Clusters:
    y_arr, P_arr = _check_matrix(y, P)
    names = _class_names(classes, P_arr.shape[1])
    if subjects is None:
        codes = np.arange(len(y_arr))
    else:
        subj = np.asarray(subjects, dtype=object)
        if subj.ndim != 1 or len(subj) != len(y_arr):
            raise ValueError(f"subjects must hold one id per image: {len(y_arr)} images, got shape {subj.shape}.")
        if pd.isna(subj).any():
            raise ValueError("subjects has missing values.")
        codes, _ = pd.factorize(pd.Series(subj).astype(str), sort=False)
    n_sub, n_classes = int(codes.max()) + 1, P_arr.shape[1]
    if n_classes == 2:
        subject_y = np.zeros(n_sub, dtype=np.int64)
        np.maximum.at(subject_y, codes, y_arr)
    else:
        votes = np.zeros((n_sub, n_classes), dtype=np.int64)
        np.add.at(votes, (codes, y_arr), 1)
        subject_y = n_classes - 1 - np.argmax(votes[:, ::-1], axis=1)  # majority, ties -> higher class
    strata = [np.flatnonzero(subject_y == c) for c in np.unique(subject_y)]
    return _Clusters(y_arr, P_arr, np.asarray(codes, dtype=np.int64), subject_y, strata, names)


def _count_phrase(n_subjects: Mapping[str, int], noun: str = "subjects") -> str:
    """``"3 stroke / 12 normal subjects"``: lesion classes first (class order reversed)."""
    parts = [f"{n} {name}" for name, n in reversed(list(n_subjects.items()))]
    return f"{' / '.join(parts)} {noun}"


def _not_estimable(n_subjects: Mapping[str, int]) -> str:
    return f"not estimable (n = {_count_phrase(n_subjects)})"


# ----------------------------------------------------------------------------------------------------
# the resampling engine
# ----------------------------------------------------------------------------------------------------


def _resample_counts(cl: _Clusters, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of ``(b, S)`` matrices: how often each subject is drawn in each resample.

    Each stratum (subject class) is resampled with replacement within itself, so every resample keeps
    the number of subjects per class. The draws are made exactly as the previous slice bootstrap made
    them (same generator calls, same chunks), so with one image per subject the same seed gives the
    same resamples.
    """
    rng = np.random.default_rng(seed)
    n_sub = len(cl.subject_y)
    chunk = max(1, min(int(n_boot), _CHUNK_CELLS // max(1, len(cl.y))))
    done = 0
    while done < n_boot:
        b = min(chunk, int(n_boot) - done)
        draws = np.concatenate([rng.choice(s, size=(b, len(s)), replace=True) for s in cl.strata], axis=1)
        flat = (np.arange(b)[:, None] * n_sub + draws).ravel()
        yield np.bincount(flat, minlength=b * n_sub).reshape(b, n_sub).astype(np.float64)
        done += b


class _WeightedAuc:
    """Mann-Whitney AUC of many resamples at once, each given as subject counts.

    ``AUC = sum_{i pos, j neg} w_i w_j psi(s_i, s_j) / (W_pos W_neg)`` with ``psi = 1[s_i > s_j] +
    1/2 1[s_i == s_j]`` and ``w_i`` the count of image ``i``'s subject: the AUC of the resample with
    every image repeated as often as its subject was drawn. The negatives are sorted once; per
    resample it is a cumulative sum of their weights read at each positive's place (``searchsorted``
    below / at or below its score), O(N) instead of a sort. All terms are multiples of 1/2, so the
    sums are exact.
    """

    def __init__(self, positive: np.ndarray, score: np.ndarray, codes: np.ndarray) -> None:
        order = np.argsort(score[~positive], kind="stable")
        neg_scores = score[~positive][order]
        self.neg_codes = codes[~positive][order]
        self.pos_codes = codes[positive]
        self.below = np.searchsorted(neg_scores, score[positive], side="left")
        self.at_or_below = np.searchsorted(neg_scores, score[positive], side="right")

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        cum_neg = np.zeros((len(counts), len(self.neg_codes) + 1))
        np.cumsum(counts[:, self.neg_codes], axis=1, out=cum_neg[:, 1:])
        w_pos = counts[:, self.pos_codes]
        u = 0.5 * (w_pos * (cum_neg[:, self.below] + cum_neg[:, self.at_or_below])).sum(axis=1)
        n_pos, n_neg = w_pos.sum(axis=1), cum_neg[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = u / (n_pos * n_neg)
        return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


class _SubjectPairAuc:
    """The same AUC as :class:`_WeightedAuc`, faster when subjects hold many images.

    With ``c`` the subject counts of a resample, ``U = sum_{s,t} c_s c_t A_st`` where ``A_st`` is the
    Mann-Whitney count of (positive image of subject ``s``, negative image of subject ``t``) pairs:
    one ``(S, S)`` matrix computed once, then a matrix product per chunk of resamples.
    """

    def __init__(self, positive: np.ndarray, score: np.ndarray, codes: np.ndarray, n_sub: int) -> None:
        _, group = np.unique(score, return_inverse=True)  # tie groups, ascending score
        neg_g = np.zeros((int(group.max()) + 1, n_sub))  # negatives per (tie group, subject)
        np.add.at(neg_g, (group[~positive], codes[~positive]), 1.0)
        beaten = np.cumsum(neg_g, axis=0) - 0.5 * neg_g  # negatives below a group, ties count one half
        pos_codes = codes[positive]
        order = np.argsort(pos_codes, kind="stable")
        owners, starts = np.unique(pos_codes[order], return_index=True)
        self.pairs = np.zeros((n_sub, n_sub))  # (S, S)
        if owners.size:
            self.pairs[owners] = np.add.reduceat(beaten[group[positive][order]], starts, axis=0)
        self.n_pos = np.bincount(pos_codes, minlength=n_sub).astype(np.float64)
        self.n_neg = neg_g.sum(axis=0)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        n_pos, n_neg = counts @ self.n_pos, counts @ self.n_neg
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = ((counts @ self.pairs) * counts).sum(axis=1) / (n_pos * n_neg)
        return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _auc_kernel(positive: np.ndarray, score: np.ndarray, cl: _Clusters) -> _WeightedAuc | _SubjectPairAuc:
    """The subject-pair form for clustered data of moderate size, else the per-image weighted form.

    With one image per subject the per-image form is kept: it reproduces the previous slice bootstrap
    bit for bit.
    """
    n_sub = len(cl.subject_y)
    if cl.clustered and n_sub * len(np.unique(score)) <= _CHUNK_CELLS:
        return _SubjectPairAuc(positive, score, cl.codes, n_sub)
    return _WeightedAuc(positive, score, cl.codes)


def _auc_kernels(cl: _Clusters) -> list[_WeightedAuc | _SubjectPairAuc]:
    """Binary: the positive column; multiclass: one-vs-rest for each class present (macro average)."""
    if cl.P.shape[1] == 2:
        return [_auc_kernel(cl.y == 1, cl.P[:, 1], cl)]
    return [_auc_kernel(cl.y == c, cl.P[:, c], cl) for c in np.unique(cl.y)]


def _ratio_columns(cl: _Clusters, metric: str, threshold: float | None, n_bins: int) -> np.ndarray:
    """Per-image ``(numerator, denominator)`` columns whose weighted sums give ``metric``.

    ECE gives ``3 * n_bins`` columns: count, hits and scores per bin.
    """
    y, P = cl.y, cl.P
    binary = P.shape[1] == 2
    score = P[:, 1] if binary else P.max(axis=1)
    ones = np.ones(len(y))
    if metric in ("sensitivity", "specificity", "accuracy") and binary:
        pred = (score >= threshold).astype(np.int64)
        if metric == "sensitivity":
            return np.stack([(pred == 1) & (y == 1), y == 1], axis=1).astype(np.float64)
        if metric == "specificity":
            return np.stack([(pred == 0) & (y == 0), y == 0], axis=1).astype(np.float64)
        return np.stack([(pred == y).astype(np.float64), ones], axis=1)
    if metric == "accuracy":
        return np.stack([(P.argmax(axis=1) == y).astype(np.float64), ones], axis=1)
    if metric == "brier":
        err = (score - y) ** 2 if binary else ((P - np.eye(P.shape[1])[y]) ** 2).sum(axis=1)
        return np.stack([err, ones], axis=1)
    # ece (definitions of automl.metrics.expected_calibration_error)
    hit = y.astype(np.float64) if binary else (P.argmax(axis=1) == y).astype(np.float64)
    onehot = np.eye(n_bins)[np.minimum((score * n_bins).astype(np.int64), n_bins - 1)]
    return np.concatenate([onehot, onehot * hit[:, None], onehot * score[:, None]], axis=1)


def _subject_sums(cl: _Clusters, columns: np.ndarray) -> np.ndarray:
    """``(S, k)`` per-subject sums of per-image columns: a resample's totals are ``counts @ sums``."""
    sums = np.zeros((len(cl.subject_y), columns.shape[1]))
    np.add.at(sums, cl.codes, columns)
    return sums


def _from_sums(metric: str, sums: np.ndarray) -> np.ndarray:
    """Metric values of resamples from the weighted sums of :func:`_ratio_columns`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "ece":
            n_bins = sums.shape[1] // 3
            count, hit, score = sums[:, :n_bins], sums[:, n_bins:2 * n_bins], sums[:, 2 * n_bins:]
            return np.abs(hit - score).sum(axis=1) / count.sum(axis=1)
        return np.where(sums[:, 1] > 0, sums[:, 0] / sums[:, 1], np.nan)


def _point_estimate(cl: _Clusters, metric: str, threshold: float | None, n_bins: int) -> float:
    """The metric on all data, computed by :mod:`automl.metrics` (the resampled formulas agree)."""
    binary = cl.P.shape[1] == 2
    p = cl.P[:, 1] if binary else cl.P
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if metric == "auc":
            n = cl.contributing
            return roc_auc(cl.y, cl.P) if min(n.values()) >= MIN_SUBJECTS_FOR_AUC else math.nan
        if metric == "brier":
            return brier_score(cl.y, p)
        if metric == "ece":
            return expected_calibration_error(cl.y, p, n_bins=n_bins)
        if metric == "accuracy" and not binary:
            return float((cl.P.argmax(axis=1) == cl.y).mean())
        return float(binary_metrics_at_threshold(cl.y, p, float(threshold))[metric])


def _percentile(values: np.ndarray, alpha: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
