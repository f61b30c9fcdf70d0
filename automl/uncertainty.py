"""Intervals and tests that respect subjects: the clustered bootstrap and paired comparisons.

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
* The patient-level summary of a study (subject rule, headline, verdict sentence, small-cohort
  warning) lives in :mod:`automl.verdict`; the resampling engine in :mod:`automl._resample`.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from automl._resample import (
    MIN_SUBJECTS_FOR_AUC,
    _auc_kernel,
    _auc_kernels,
    _check_options,
    _clusters,
    _from_sums,
    _is_int,
    _not_estimable,
    _percentile,
    _point_estimate,
    _ratio_columns,
    _resample_counts,
    _subject_sums,
)
from automl.metrics import UndefinedMetricWarning, _check_binary, roc_auc
from data._files import json_clean

__all__ = [
    "METRICS",
    "Comparison",
    "MetricEstimate",
    "bootstrap_auc_ci",
    "cluster_bootstrap",
    "compare_aucs",
    "delong_test",
]

logger = logging.getLogger(__name__)

METRICS = ("auc", "sensitivity", "specificity", "accuracy", "brier", "ece")
"""Metrics :func:`cluster_bootstrap` can interval (sensitivity and specificity: binary tasks only)."""


# ----------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------


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
        return json_clean(asdict(self))


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
        return json_clean(asdict(self))


# ----------------------------------------------------------------------------------------------------
# intervals
# ----------------------------------------------------------------------------------------------------


def _check_metrics(metrics: Sequence[str], n_bins: object) -> None:
    if isinstance(metrics, str) or not metrics:
        raise ValueError(f"metrics must be a non-empty sequence of names from {METRICS}, got {metrics!r}.")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {METRICS}.")
    if not _is_int(n_bins, 1):
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")


def _check_threshold(metrics: Sequence[str], threshold: object, n_classes: int) -> None:
    """Threshold metrics need a binary task and a threshold in [0, 1]."""
    binary = n_classes == 2
    binary_only = [m for m in metrics if m in ("sensitivity", "specificity")]
    if binary_only and not binary:
        raise ValueError(f"{binary_only} need a binary task; P has {n_classes} classes.")
    needs_threshold = binary_only + (["accuracy"] if binary and "accuracy" in metrics else [])
    if needs_threshold and threshold is None:
        raise ValueError(f"{needs_threshold} need a threshold, got threshold=None.")
    if threshold is not None and (
        not isinstance(threshold, (int, float, np.floating)) or isinstance(threshold, bool)
        or not 0.0 <= float(threshold) <= 1.0 or not binary
    ):
        raise ValueError(f"threshold must lie in [0, 1] and needs a binary task, got {threshold!r}.")


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
    _check_metrics(metrics, n_bins)
    n_boot, n_bins = int(n_boot), int(n_bins)
    cl = _clusters(y, P, subjects, classes)
    _check_threshold(metrics, threshold, cl.P.shape[1])
    n_subjects, n_images = cl.n_subjects, cl.n_images
    # subjects that hold images of each class: with labels per subject the subjects per class; with labels per
    # slice (a stroke patient also has normal slices) a patient counts for every class it has slices of
    contributing = cl.contributing
    enough = min(contributing.values()) >= min_subjects
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
            reason="" if ok else _not_estimable(contributing),
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
    contributing = cl.contributing  # patients holding images of each class (see cluster_bootstrap)
    enough_for_auc = min(contributing.values()) >= MIN_SUBJECTS_FOR_AUC
    auc_1 = roc_auc(y_arr, s1) if enough_for_auc else math.nan
    auc_2 = roc_auc(y_arr, s2) if enough_for_auc else math.nan
    if min(contributing.values()) < min_subjects:
        return Comparison(auc_1=auc_1, auc_2=auc_2, difference=auc_1 - auc_2, ci_low=math.nan,
                          ci_high=math.nan, z=math.nan, p_value=math.nan, estimable=False,
                          reason=_not_estimable(contributing), **base)
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
