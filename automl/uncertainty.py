"""Intervals and tests that respect subjects: clustered bootstrap, paired comparisons, verdicts.

CT data hold many slices per patient. Slices of one patient are strongly correlated, so intervals
and tests that treat them as independent are far too narrow: on randomly labelled patients a slice
bootstrap or a slice-level DeLong test "finds" models better than chance. This module resamples
**subjects** (the top-level clusters) instead, as recommended for clustered data by Davison & Hinkley
(1997, *Bootstrap Methods and their Application*, section 3.8) and Field & Welsh (2007,
"Bootstrapping clustered data", JRSS B 69(3):369-390); Obuchowski (1997, "Nonparametric analysis of
clustered ROC curve data", Biometrics 53(2):567-578) describes the problem for the ROC AUC.

* :func:`cluster_bootstrap`: percentile intervals of AUC, sensitivity, specificity, accuracy, Brier
  score and ECE; subjects are resampled within strata of the subject label. With one image per
  subject it *is* the stratified slice bootstrap (:func:`bootstrap_auc_ci` draws the same numbers).
* :func:`compare_aucs`: paired comparison of two models' AUC on the same images: a paired cluster
  bootstrap when some subject has several images, DeLong's test otherwise.
* :func:`select_subject_rule`, :func:`headline`, :func:`compare_subject_level`,
  :func:`verdict_sentence`, :func:`small_cohort_warning`: the patient-level summary of a study.

**Not estimable is a result.** An AUC needs two subjects of each class, an interval
``min_subjects`` (default 5) of each class. Below that the result says so (``estimable=False`` and a
``reason`` such as ``"not estimable (n = 3 stroke / 12 normal subjects)"``) and carries ``nan``
rather than a misleading 0.000 or 1.000.

Conventions are those of :mod:`automl.metrics` (``y`` class indices, ``P`` an (N, C) probability
matrix or a binary (N,) vector, ``p >= threshold`` is positive). The subject label is the maximum
slice label for binary tasks (any positive slice makes a positive subject, as in
:func:`automl.metrics.aggregate_by_subject`) and the majority slice label for multiclass tasks (ties
go to the higher class index); it is used to stratify the resampling and to count subjects.

Example:
    >>> import numpy as np
    >>> from automl import uncertainty as U
    >>> y = np.repeat([0, 1] * 10, 3); subjects = np.repeat(np.arange(20), 3)
    >>> p = np.linspace(0.2, 0.8, 60)
    >>> est = U.cluster_bootstrap(y, p, subjects, n_boot=200)["auc"]
    >>> est.ci_method, est.n_subjects
    ('cluster_bootstrap', {'negative': 10, 'positive': 10})
"""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from automl.metrics import (
    UndefinedMetricWarning,
    _check_binary,
    _check_matrix,
    _rule_k,
    aggregate_by_subject,
    binary_metrics_at_threshold,
    brier_score,
    expected_calibration_error,
    roc_auc,
    threshold_for_sensitivity,
    youden_threshold,
)

__all__ = [
    "METRICS",
    "SUBJECT_RULES",
    "Comparison",
    "Headline",
    "MetricEstimate",
    "SubjectRule",
    "bootstrap_auc_ci",
    "cluster_bootstrap",
    "compare_aucs",
    "compare_subject_level",
    "delong_test",
    "headline",
    "select_subject_rule",
    "small_cohort_warning",
    "verdict_sentence",
]

logger = logging.getLogger(__name__)

METRICS = ("auc", "sensitivity", "specificity", "accuracy", "brier", "ece")
"""Metrics :func:`cluster_bootstrap` can interval (sensitivity and specificity: binary tasks only)."""

SUBJECT_RULES = ("mean", "max", "top3_mean")
"""Subject aggregation rules tried by :func:`select_subject_rule` (see :func:`aggregate_by_subject`)."""

MIN_SUBJECTS_FOR_AUC = 2  # an AUC needs at least this many subjects of each class
_CHUNK_CELLS = 2_000_000  # resamples x images held in memory at once (the previous bootstrap's budget)


# ----------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class MetricEstimate:
    """One metric with its interval.

    Attributes:
        metric: Name, one of :data:`METRICS`.
        estimate: Value on all the data; ``nan`` when undefined (e.g. AUC with < 2 subjects of a class).
        ci_low: Lower end of the percentile interval; ``nan`` when not estimable.
        ci_high: Upper end; ``nan`` when not estimable.
        ci_method: ``"cluster_bootstrap"`` (some subject has several images), ``"bootstrap"`` (one image
            per subject: the ordinary stratified bootstrap).
        alpha: Two-sided level (0.05: a 95% interval).
        n_boot: Number of resamples.
        n_subjects: Subjects per class (by subject label), class name -> count, in class order.
        n_images: Images per class (by image label), class name -> count.
        estimable: Whether both the estimate and the interval are defined and trustworthy.
        reason: Why not, e.g. ``"not estimable (n = 3 stroke / 12 normal subjects)"``; ``""`` otherwise.
    """

    metric: str
    estimate: float
    ci_low: float
    ci_high: float
    ci_method: str
    alpha: float
    n_boot: int
    n_subjects: dict[str, int]
    n_images: dict[str, int]
    estimable: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``nan`` -> ``None``)."""
        return _json_number(asdict(self))


@dataclass(frozen=True)
class Comparison:
    """Paired comparison of two models' AUC on the same cases (``difference = auc_1 - auc_2``).

    Attributes:
        method: ``"paired_cluster_bootstrap"`` or ``"delong"``.
        auc_1: AUC of model 1.
        auc_2: AUC of model 2.
        difference: ``auc_1 - auc_2``.
        ci_low: Lower end of the normal-theory interval of the difference (``nan`` when not estimable).
        ci_high: Upper end.
        z: Difference over its standard error.
        p_value: Two-sided p-value of "equal AUCs" (``nan`` when not estimable).
        alpha: Level of the interval.
        n_boot: Resamples (0 for DeLong).
        n_subjects: Subjects per class.
        n_images: Images per class.
        estimable: Whether the comparison is defined and trustworthy.
        reason: Why not; ``""`` otherwise.
        level: ``"image"`` or ``"subject"`` (set by :func:`compare_subject_level`).
    """

    method: str
    auc_1: float
    auc_2: float
    difference: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float
    alpha: float
    n_boot: int
    n_subjects: dict[str, int]
    n_images: dict[str, int]
    estimable: bool
    reason: str = ""
    level: str = "image"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``nan`` -> ``None``)."""
        return _json_number(asdict(self))


@dataclass(frozen=True)
class SubjectRule:
    """Subject aggregation rule and threshold chosen on out-of-fold predictions.

    Attributes:
        rule: The chosen rule, one of the candidates (e.g. ``"mean"``, ``"max"``, ``"top3_mean"``).
        threshold: Threshold on the aggregated positive-class probability (``None`` for multiclass).
        threshold_method: ``"youden"``, ``"sensitivity>=<target>"`` or ``"argmax"`` (multiclass).
        auc_by_rule: Subject-level out-of-fold AUC of every candidate rule.
        n_subjects: Subjects per class in the out-of-fold data.
    """

    rule: str
    threshold: float | None
    threshold_method: str
    auc_by_rule: dict[str, float]
    n_subjects: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``nan`` -> ``None``)."""
        return _json_number(asdict(self))


@dataclass(frozen=True)
class Headline:
    """Headline numbers of one model on the test part (see :func:`headline`).

    Attributes:
        model: Model name (may be ``""``).
        rule: Subject aggregation rule.
        threshold: Threshold on the aggregated probability (``None`` for multiclass).
        classes: Class names, negative first.
        subject: Subject-level metrics (each subject one unit; ordinary stratified bootstrap).
        counts: Subject-level confusion counts ``tp, fn, tn, fp`` at the threshold (binary only).
        slice: Slice-level metrics with subject-clustered intervals.
        n_subjects: Subjects per class.
        n_images: Images per class.
        warning: :func:`small_cohort_warning` of the test part, or ``None``.
    """

    model: str
    rule: str
    threshold: float | None
    classes: list[str]
    subject: dict[str, MetricEstimate]
    counts: dict[str, int]
    slice: dict[str, MetricEstimate]
    n_subjects: dict[str, int]
    n_images: dict[str, int]
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``nan`` -> ``None``)."""
        out = asdict(self)
        out["subject"] = {k: v.to_dict() for k, v in self.subject.items()}
        out["slice"] = {k: v.to_dict() for k, v in self.slice.items()}
        return _json_number(out)


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
            n = cl.n_subjects
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


# ----------------------------------------------------------------------------------------------------
# intervals
# ----------------------------------------------------------------------------------------------------


def cluster_bootstrap(
    y: object,
    P: object,
    subjects: object | None = None,
    *,
    metrics: Sequence[str] = ("auc",),
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    n_bins: int = 10,
    classes: Sequence[str] | None = None,
    min_subjects: int = 5,
) -> dict[str, MetricEstimate]:
    """Percentile intervals of image-level metrics, resampling subjects (the cluster bootstrap).

    Each resample draws, within each subject class, as many subjects as the class has, with
    replacement, and keeps all images of every drawn subject (a subject drawn twice counts twice).
    Resampling the top-level clusters only is the bootstrap for hierarchical data of Davison & Hinkley
    (1997, section 3.8; Field & Welsh, 2007); it keeps the within-subject correlation that an image
    bootstrap destroys. All metrics share the same resamples. The resamples are represented as a
    ``(n_boot, n_subjects)`` count matrix and every metric is a weighted sum over images, so there is
    no Python loop over resamples. With one image per subject (or ``subjects=None``) this is the
    stratified image bootstrap, ``ci_method="bootstrap"``, and the AUC interval equals
    :func:`bootstrap_auc_ci`'s for the same seed.

    Args:
        y: Class indices, shape (N,).
        P: Probabilities (N, C) or, for binary tasks, (N,).
        subjects: Subject (patient) id of every image, shape (N,); ``None``: every image its own subject.
        metrics: Any of :data:`METRICS`. ``sensitivity``/``specificity`` need a binary task and a
            ``threshold``; so does ``accuracy`` for binary tasks (multiclass accuracy is argmax).
        threshold: Decision threshold on the positive-class probability (binary tasks).
        n_boot: Number of resamples (>= 10).
        seed: Seed of the resampling generator.
        alpha: Two-sided level; 0.05 gives 95% intervals.
        n_bins: Bins of the ECE.
        classes: Class names used in counts and reasons (default ``negative``/``positive`` or
            ``class <i>``).
        min_subjects: Fewest subjects per class for an interval (>= 2); below it the metric is
            returned with ``estimable=False`` and ``nan`` ends.

    Returns:
        Metric name -> :class:`MetricEstimate`, in the order of ``metrics``.

    Raises:
        ValueError: On invalid inputs or options (the message names the bad value).
    """
    _check_options(n_boot, alpha, min_subjects)
    if isinstance(metrics, str) or not metrics:
        raise ValueError(f"metrics must be a non-empty sequence of names from {METRICS}, got {metrics!r}.")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {METRICS}.")
    if not _is_int(n_bins, 1):
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    n_boot, n_bins = int(n_boot), int(n_bins)
    cl = _clusters(y, P, subjects, classes)
    binary = cl.P.shape[1] == 2
    binary_only = [m for m in metrics if m in ("sensitivity", "specificity")]
    if binary_only and not binary:
        raise ValueError(f"{binary_only} need a binary task; P has {cl.P.shape[1]} classes.")
    needs_threshold = binary_only + (["accuracy"] if binary and "accuracy" in metrics else [])
    if needs_threshold and threshold is None:
        raise ValueError(f"{needs_threshold} need a threshold, got threshold=None.")
    if threshold is not None and (
        not isinstance(threshold, (int, float, np.floating)) or isinstance(threshold, bool)
        or not 0.0 <= float(threshold) <= 1.0 or not binary
    ):
        raise ValueError(f"threshold must lie in [0, 1] and needs a binary task, got {threshold!r}.")

    n_subjects, n_images = cl.n_subjects, cl.n_images
    enough = min(n_subjects.values()) >= min_subjects
    estimates = {m: _point_estimate(cl, m, threshold, n_bins) for m in metrics}
    replicates: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    if enough:
        kernels = _auc_kernels(cl) if "auc" in metrics else []
        sums_of = {m: _subject_sums(cl, _ratio_columns(cl, m, threshold, n_bins)) for m in metrics if m != "auc"}
        for counts in _resample_counts(cl, n_boot, seed):
            if kernels:
                replicates["auc"].append(np.mean([k(counts) for k in kernels], axis=0))
            for m, sums in sums_of.items():
                replicates[m].append(_from_sums(m, counts @ sums))

    out: dict[str, MetricEstimate] = {}
    for m in metrics:
        low, high = _percentile(np.concatenate(replicates[m]), alpha) if enough else (math.nan, math.nan)
        ok = enough and math.isfinite(estimates[m]) and math.isfinite(low)
        out[m] = MetricEstimate(
            metric=m, estimate=float(estimates[m]), ci_low=low if ok else math.nan,
            ci_high=high if ok else math.nan, ci_method=cl.method, alpha=float(alpha), n_boot=n_boot,
            n_subjects=n_subjects, n_images=n_images, estimable=ok,
            reason="" if ok else _not_estimable(n_subjects),
        )
    return out


def bootstrap_auc_ci(
    y: object,
    P: object,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of :func:`~automl.metrics.roc_auc`, images independent.

    Resampling is stratified: each class is resampled with replacement within itself, so every
    resample keeps the class counts of the data (the usual choice for AUC on small test sets). This
    treats every image as its own subject; for several images per patient use
    :func:`cluster_bootstrap`, which this function is the special case of.

    Args:
        y: Class indices, shape (N,).
        P: Probabilities (N, C) or, for binary tasks, (N,).
        n_boot: Number of bootstrap resamples (>= 10).
        seed: Seed of the resampling generator.
        alpha: Two-sided level; ``0.05`` gives a 95% interval.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when the AUC itself is undefined.

    Raises:
        ValueError: On invalid inputs or options.
    """
    _check_options(n_boot, alpha)
    cl = _clusters(y, P, None, None)
    if len(cl.strata) < 2:
        warnings.warn(
            "Bootstrap CI of the AUC is undefined for a single class; returning (nan, nan).",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return math.nan, math.nan
    kernels = _auc_kernels(cl)
    values = [np.mean([k(counts) for k in kernels], axis=0) for counts in _resample_counts(cl, n_boot, seed)]
    return _percentile(np.concatenate(values), alpha)


# ----------------------------------------------------------------------------------------------------
# comparisons
# ----------------------------------------------------------------------------------------------------


def _delong(y: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, float, float]:
    """AUCs, variance of their difference and the scale of the variances (Sun & Xu, 2014)."""
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    scores = np.stack([s1, s2])  # (2, N)
    x, yneg = scores[:, pos], scores[:, ~pos]
    tx, ty = stats.rankdata(x, axis=-1), stats.rankdata(yneg, axis=-1)
    tz = stats.rankdata(np.concatenate([x, yneg], axis=1), axis=-1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    sx = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((2, 2))
    sy = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((2, 2))
    cov = sx / m + sy / n
    return aucs, float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), float(cov[0, 0] + cov[1, 1])


def _z_test(diff: float, var: float, scale: float) -> tuple[float, float]:
    """Two-sided normal test of ``diff`` with variance ``var``; a zero variance gives 0/1 or +-inf/0."""
    if var <= 1e-15 * max(1.0, scale):
        if abs(diff) < 1e-12:
            return 0.0, 1.0
        return math.copysign(math.inf, diff), 0.0
    z = diff / math.sqrt(var)
    return float(z), min(1.0, float(2.0 * stats.norm.sf(abs(z))))


def delong_test(y: object, p1: object, p2: object) -> tuple[float, float]:
    """Paired DeLong test of two correlated binary ROC AUCs on the same, independent cases.

    Fast midrank implementation (Sun & Xu, 2014, "Fast implementation of DeLong's algorithm for
    comparing the areas under correlated receiver operating characteristic curves", IEEE SPL 21(11)):
    with ``m`` positives and ``n`` negatives, for each model ``r``

    * ``T_x = midrank(positive scores)``, ``T_y = midrank(negative scores)``, ``T_z = midrank(all)``;
    * ``AUC_r = (sum(T_z[pos]) - m (m + 1) / 2) / (m n)``;
    * structural components ``V10 = (T_z[pos] - T_x) / n`` and ``V01 = 1 - (T_z[neg] - T_y) / m``;
    * covariance ``S = cov(V10) / m + cov(V01) / n`` (2 x 2 over the two models);

    and ``z = (AUC_1 - AUC_2) / sqrt(S11 + S22 - 2 S12)`` with a two-sided normal p-value. The cases
    must be independent: for several images per patient use :func:`compare_aucs` with ``subjects``.

    Args:
        y: Binary labels (0/1), shape (N,).
        p1: Scores of model 1 (positive-class probabilities, (N,) or (N, 2)).
        p2: Scores of model 2, same shape.

    Returns:
        ``(z, p_value)``. Identical (or identically ranked) predictions give ``(0.0, 1.0)``.
        ``(nan, nan)`` with a warning when ``y`` holds a single class.

    Raises:
        ValueError: On non-binary labels, mismatched lengths or probabilities outside [0, 1].
    """
    y_arr, s1 = _check_binary(y, p1, "p1")
    _, s2 = _check_binary(y_arr, p2, "p2")
    if len(np.unique(y_arr)) < 2:
        warnings.warn(
            "The DeLong test is undefined for a single class; returning (nan, nan).",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return math.nan, math.nan
    aucs, var, scale = _delong(y_arr, s1, s2)
    return _z_test(float(aucs[0] - aucs[1]), var, scale)


def compare_aucs(
    y: object,
    p1: object,
    p2: object,
    subjects: object | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    classes: Sequence[str] | None = None,
    min_subjects: int = 5,
) -> Comparison:
    """Paired comparison of two binary models' AUC on the same images.

    * Some subject has several images: **paired cluster bootstrap**. Subjects are resampled (stratified
      by subject label, as in :func:`cluster_bootstrap`); both AUCs are computed on every resample and
      their difference ``D*`` taken. The test is the bootstrap z-test of pROC's ``roc.test(method=
      "bootstrap")`` (Robin et al., 2011, BMC Bioinformatics 12:77): ``z = D / sd(D*)`` with a two-sided
      normal p-value, and the interval ``D +- z_{1-alpha/2} sd(D*)`` (consistent with the p-value).
      Clustered resampling for correlated ROC data follows Obuchowski (1997).
    * One image per subject (or ``subjects=None``): :func:`delong_test`, with the interval
      ``D +- z_{1-alpha/2} SE_DeLong``.

    Args:
        y: Binary labels (0/1), shape (N,).
        p1: Positive-class probabilities of model 1, (N,) or (N, 2).
        p2: Same for model 2.
        subjects: Subject id of every image; ``None``: independent images.
        n_boot: Resamples of the cluster bootstrap (>= 10).
        seed: Seed of the resampling generator.
        alpha: Level of the interval of the difference.
        classes: Class names for counts and reasons.
        min_subjects: Fewest subjects per class for a comparison (>= 2).

    Returns:
        A :class:`Comparison`; ``difference = auc_1 - auc_2``.

    Raises:
        ValueError: On invalid inputs or options.
    """
    _check_options(n_boot, alpha, min_subjects)
    y_arr, s1 = _check_binary(y, p1, "p1")
    _, s2 = _check_binary(y_arr, p2, "p2")
    cl = _clusters(y_arr, s1, subjects, classes)
    n_subjects = cl.n_subjects
    method = "paired_cluster_bootstrap" if cl.clustered else "delong"
    base = {"method": method, "alpha": float(alpha), "n_boot": int(n_boot) if cl.clustered else 0,
            "n_subjects": n_subjects, "n_images": cl.n_images}
    enough_for_auc = min(n_subjects.values()) >= MIN_SUBJECTS_FOR_AUC
    auc_1 = roc_auc(y_arr, s1) if enough_for_auc else math.nan
    auc_2 = roc_auc(y_arr, s2) if enough_for_auc else math.nan
    if min(n_subjects.values()) < min_subjects:
        return Comparison(auc_1=auc_1, auc_2=auc_2, difference=auc_1 - auc_2, ci_low=math.nan,
                          ci_high=math.nan, z=math.nan, p_value=math.nan, estimable=False,
                          reason=_not_estimable(n_subjects), **base)
    diff = auc_1 - auc_2
    if cl.clustered:
        k1, k2 = _auc_kernel(y_arr == 1, s1, cl), _auc_kernel(y_arr == 1, s2, cl)
        d = np.concatenate([k1(c) - k2(c) for c in _resample_counts(cl, n_boot, seed)])
        var, scale = float(np.var(d[np.isfinite(d)], ddof=1)), 1.0
    else:
        _, var, scale = _delong(y_arr, s1, s2)
    z, p_value = _z_test(diff, var, scale)
    half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * math.sqrt(max(var, 0.0))
    return Comparison(auc_1=auc_1, auc_2=auc_2, difference=diff, ci_low=diff - half, ci_high=diff + half,
                      z=z, p_value=p_value, estimable=True, **base)


# ----------------------------------------------------------------------------------------------------
# subject level
# ----------------------------------------------------------------------------------------------------


def _prob_columns(frame: object, name: str = "frame") -> list[str]:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}.")
    missing = [c for c in ("subject", "y") if c not in frame.columns]
    cols = [c for c in frame.columns if str(c).startswith("prob_")]
    if missing or len(cols) < 2:
        raise ValueError(
            f"{name} needs columns subject, y and prob_<class> (two or more); it has {list(frame.columns)}."
        )
    return cols


def select_subject_rule(
    oof: pd.DataFrame,
    *,
    rules: Sequence[str] = SUBJECT_RULES,
    target_sensitivity: float | None = None,
) -> SubjectRule:
    """Choose the subject aggregation rule and threshold on **out-of-fold** predictions.

    Every rule aggregates the slices of each subject (:func:`~automl.metrics.aggregate_by_subject`);
    the rule with the highest subject-level AUC wins, ties (within 1e-12) going to ``"mean"`` (then to
    the earlier rule). The threshold is then chosen on the same aggregated out-of-fold predictions:
    Youden's J (Youden, 1950), or the highest threshold reaching ``target_sensitivity``. Never call
    this with test predictions: the choice would leak into the test metrics.

    Args:
        oof: Out-of-fold slice predictions with columns ``subject``, ``y``, ``prob_<class>``.
        rules: Candidate rules (``"mean"``, ``"max"``, ``"top<k>_mean"``).
        target_sensitivity: ``None`` for Youden's J, else a sensitivity in (0, 1] (binary tasks).

    Returns:
        A :class:`SubjectRule`.

    Raises:
        ValueError: On a bad frame, an unknown rule, a single subject class, or a bad target.
    """
    cols = _prob_columns(oof, "oof")
    if isinstance(rules, str) or not rules:
        raise ValueError(f"rules must be a non-empty sequence of rule names, got {rules!r}.")
    for rule in rules:
        _rule_k(rule)  # names the bad rule
    names = [c[len("prob_"):] for c in cols]
    aucs: dict[str, float] = {}
    aggregated: dict[str, pd.DataFrame] = {}
    for rule in rules:
        agg = aggregate_by_subject(oof[["subject", "y", *cols]], how=rule)
        if agg["y"].nunique() < 2:
            only = int(agg["y"].iloc[0])
            raise ValueError(f"oof needs subjects of at least two classes, got only class {only}.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            aucs[rule] = roc_auc(agg["y"].to_numpy(), agg[cols].to_numpy(dtype=float))
        aggregated[rule] = agg
    best = max(aucs.values())
    tied = [r for r in rules if aucs[r] >= best - 1e-12]
    rule = "mean" if "mean" in tied else tied[0]
    agg = aggregated[rule]
    counts = np.bincount(agg["y"].to_numpy(dtype=np.int64), minlength=len(cols))
    n_subjects = {name: int(n) for name, n in zip(names, counts)}
    if len(cols) != 2:
        if target_sensitivity is not None:
            raise ValueError(f"target_sensitivity needs a binary task, got {len(cols)} classes.")
        return SubjectRule(rule, None, "argmax", aucs, n_subjects)
    ys, p = agg["y"].to_numpy(dtype=np.int64), agg[cols[1]].to_numpy(dtype=float)
    if target_sensitivity is None:
        return SubjectRule(rule, youden_threshold(ys, p), "youden", aucs, n_subjects)
    threshold = threshold_for_sensitivity(ys, p, target_sensitivity)
    return SubjectRule(rule, threshold, f"sensitivity>={target_sensitivity:g}", aucs, n_subjects)


def headline(
    frame: pd.DataFrame,
    *,
    rule: str,
    threshold: float | None,
    model: str = "",
    slice_threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    min_subjects: int = 5,
    warn_below: int = 10,
) -> Headline:
    """Headline numbers of one model on the test part: subject level first, slices second.

    * Subject level: the slices of each subject aggregated with ``rule`` (chosen on out-of-fold data,
      :func:`select_subject_rule`); each subject is then one independent unit, so the intervals are the
      ordinary stratified bootstrap over subjects. Metrics: AUC, sensitivity, specificity, accuracy
      (at ``threshold``) and Brier score; multiclass: AUC, argmax accuracy, Brier score.
    * Slice level: AUC, Brier score and ECE (plus sensitivity, specificity and accuracy when a
      ``slice_threshold`` is given) with subject-clustered intervals (:func:`cluster_bootstrap`).

    Args:
        frame: Test predictions, one row per slice, with columns ``y``, ``subject`` and ``prob_<class>``
            (negative class first, as in ``predictions/test_<model>.csv``).
        rule: Subject aggregation rule (``"mean"``, ``"max"``, ``"top<k>_mean"``).
        threshold: Threshold on the aggregated positive-class probability (binary); ``None`` for
            multiclass.
        model: Model name, carried into the result and :func:`verdict_sentence`.
        slice_threshold: Optional slice-level threshold (binary).
        n_boot: Resamples of every interval.
        seed: Seed of the resampling generator.
        alpha: Two-sided level of the intervals.
        min_subjects: Fewest subjects per class for an interval.
        warn_below: Subjects per class under which :func:`small_cohort_warning` warns.

    Returns:
        A :class:`Headline`.

    Raises:
        ValueError: On a bad frame, rule, threshold or option.
    """
    cols = _prob_columns(frame)
    names = [c[len("prob_"):] for c in cols]
    binary = len(cols) == 2
    if binary and threshold is None:
        raise ValueError("threshold is required for a binary task, got threshold=None.")
    if not binary and (threshold is not None or slice_threshold is not None):
        raise ValueError(
            f"thresholds apply to binary tasks only; got {len(cols)} classes and threshold={threshold!r}."
        )
    agg = aggregate_by_subject(frame[["subject", "y", *cols]], how=rule)
    ys, Ps = agg["y"].to_numpy(dtype=np.int64), agg[cols].to_numpy(dtype=float)
    options = {"n_boot": n_boot, "seed": seed, "alpha": alpha, "classes": names, "min_subjects": min_subjects}
    subject_metrics: tuple[str, ...] = ("auc", "accuracy", "brier")
    if binary:
        subject_metrics = ("auc", "sensitivity", "specificity", "accuracy", "brier")
    subject = cluster_bootstrap(ys, Ps, None, metrics=subject_metrics, threshold=threshold, **options)
    counts: dict[str, int] = {}
    if binary:
        m = binary_metrics_at_threshold(ys, Ps[:, 1], float(threshold))
        counts = {k: int(m[k]) for k in ("tp", "fn", "tn", "fp")}
    slice_metrics: tuple[str, ...] = ("auc", "brier", "ece")
    if slice_threshold is not None:
        slice_metrics += ("sensitivity", "specificity", "accuracy")
    P = frame[cols].to_numpy(dtype=float)
    slices = cluster_bootstrap(frame["y"].to_numpy(), P, frame["subject"].to_numpy(), metrics=slice_metrics,
                               threshold=slice_threshold, **options)
    n_subjects = subject["auc"].n_subjects
    return Headline(model=str(model), rule=rule, threshold=None if threshold is None else float(threshold),
                    classes=names, subject=subject, counts=counts, slice=slices, n_subjects=n_subjects,
                    n_images=slices["auc"].n_images,
                    warning=small_cohort_warning(n_subjects, minimum=warn_below))


def compare_subject_level(
    frame_1: pd.DataFrame,
    frame_2: pd.DataFrame,
    *,
    rule_1: str = "mean",
    rule_2: str = "mean",
    alpha: float = 0.05,
    min_subjects: int = 5,
) -> Comparison:
    """Compare two binary models' **subject-level** AUC on the same test subjects.

    Each frame is aggregated with its own rule; the subjects are then independent units, so the
    comparison is DeLong's test (:func:`compare_aucs` without subjects), with ``level="subject"``.

    Args:
        frame_1: Test predictions of model 1 (``subject``, ``y``, ``prob_<negative>``,
            ``prob_<positive>``).
        frame_2: Test predictions of model 2, same subjects and labels.
        rule_1: Aggregation rule of model 1.
        rule_2: Aggregation rule of model 2.
        alpha: Level of the interval of the difference.
        min_subjects: Fewest subjects per class for a comparison.

    Returns:
        A :class:`Comparison` (``difference = auc_1 - auc_2``).

    Raises:
        ValueError: On bad frames, different subjects or labels, or a multiclass task.
    """
    cols_1, cols_2 = _prob_columns(frame_1, "frame_1"), _prob_columns(frame_2, "frame_2")
    if cols_1 != cols_2 or len(cols_1) != 2:
        raise ValueError(f"both frames need the same two prob_<class> columns, got {cols_1} and {cols_2}.")
    agg_1 = aggregate_by_subject(frame_1[["subject", "y", *cols_1]], how=rule_1)
    agg_2 = aggregate_by_subject(frame_2[["subject", "y", *cols_2]], how=rule_2)
    if agg_1["subject"].tolist() != agg_2["subject"].tolist():
        only = sorted(set(agg_1["subject"]) ^ set(agg_2["subject"]))
        raise ValueError(f"the frames hold different subjects, e.g. {only[:3]}.")
    if not np.array_equal(agg_1["y"].to_numpy(), agg_2["y"].to_numpy()):
        raise ValueError("the frames give some subject different labels.")
    names = [c[len("prob_"):] for c in cols_1]
    result = compare_aucs(agg_1["y"].to_numpy(), agg_1[cols_1[1]].to_numpy(dtype=float),
                          agg_2[cols_2[1]].to_numpy(dtype=float), alpha=alpha, classes=names,
                          min_subjects=min_subjects)
    return replace(result, level="subject")


# ----------------------------------------------------------------------------------------------------
# words
# ----------------------------------------------------------------------------------------------------


def _format_p(p: float, alpha: float) -> str:
    """Two significant digits (three where rounding would cross ``alpha``); ``p < 0.001`` below that."""
    if p < 0.001:
        return "p < 0.001"
    text = f"{p:.2g}"
    if (float(text) < alpha) != (p < alpha):
        text = f"{p:.3g}"
    return f"p = {text}"


def small_cohort_warning(
    n_subjects: Mapping[str, int], *, minimum: int = 10, unit: str = "patient"
) -> str | None:
    """A warning when some class has fewer than ``minimum`` subjects in the test part, else ``None``.

    Args:
        n_subjects: Subjects per class, class name -> count (e.g. :attr:`Headline.n_subjects`).
        minimum: Fewest subjects per class that need no warning (>= 1).
        unit: Noun for a subject.

    Returns:
        One sentence, or ``None``.

    Raises:
        ValueError: On an empty mapping, negative counts or a bad ``minimum``.
    """
    if not _is_int(minimum, 1):
        raise ValueError(f"minimum must be a positive integer, got {minimum!r}.")
    if not isinstance(n_subjects, Mapping) or not n_subjects:
        raise ValueError(f"n_subjects must be a non-empty mapping class -> count, got {n_subjects!r}.")
    bad = {k: v for k, v in n_subjects.items() if not _is_int(v, 0)}
    if bad:
        raise ValueError(f"n_subjects must hold counts >= 0, got {bad}.")
    if min(n_subjects.values()) >= minimum:
        return None
    return (f"Small test part: {_count_phrase(n_subjects, unit + 's')} (fewer than {minimum} in a class); "
            "intervals are wide and real differences between models may go undetected.")


def verdict_sentence(
    best: Headline,
    comparisons: Mapping[str, Comparison] | None = None,
    *,
    alpha: float = 0.05,
    unit: str = "patient",
) -> str:
    """One sentence on the best model: its subject-level AUC and how it compares with others.

    Example: ``"simple_cnn: patient-level AUC 0.65 (95% CI 0.42–0.86, 8 stroke / 12 normal patients),
    not distinguishable from chance; not distinguishable from logreg (p = 0.48)."``

    Args:
        best: :func:`headline` of the best model.
        comparisons: Other model name -> :class:`Comparison` with the **best model as model 1**
            (e.g. the pixel baseline ``logreg`` and the runner-up), in the order to mention them.
        alpha: Significance level of the comparisons.
        unit: Noun for a subject.

    Returns:
        The sentence.

    Raises:
        ValueError: On a bad ``best``, ``comparisons`` or ``alpha``.
    """
    if not isinstance(best, Headline):
        raise ValueError(f"best must be a Headline, got {type(best).__name__}.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
    comparisons = dict(comparisons or {})
    for other, c in comparisons.items():
        if not isinstance(c, Comparison):
            raise ValueError(f"comparisons[{other!r}] must be a Comparison, got {type(c).__name__}.")
    auc = best.subject["auc"]
    name = best.model or "best model"
    who = _count_phrase(best.n_subjects, unit + "s")
    if auc.estimable:
        level = round(100 * (1 - auc.alpha))
        ci = f"{level}% CI {auc.ci_low:.2f}–{auc.ci_high:.2f}"
        text = f"{name}: {unit}-level AUC {auc.estimate:.2f} ({ci}, {who})"
        if auc.ci_high < 0.5:
            text += ", below chance"
        elif auc.ci_low <= 0.5:
            text += ", not distinguishable from chance"
    else:
        text = f"{name}: {unit}-level AUC not estimable ({who})"
    clauses = []
    for other, c in comparisons.items():
        if not c.estimable or not math.isfinite(c.p_value):
            clauses.append(f"comparison with {other} not estimable")
        elif c.p_value >= alpha:
            clauses.append(f"not distinguishable from {other} ({_format_p(c.p_value, alpha)})")
        else:
            direction = "better" if c.difference > 0 else "worse"
            clauses.append(f"{direction} than {other} ({_format_p(c.p_value, alpha)})")
    if not comparisons:
        clauses.append("the only model scored")
    return "; ".join([text, *clauses]) + "."
