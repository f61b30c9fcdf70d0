"""Pure evaluation metrics for the search and the leaderboard.

Every function takes plain arrays (or a DataFrame for :func:`aggregate_by_subject`), validates them,
and returns plain Python numbers / tuples / dicts. Options after the data are keyword-only, as in
scikit-learn, and scikit-learn is used wherever it already has the metric (ROC curves, confusion
matrices, Brier score). Intervals and tests (bootstrap, DeLong, the subject-clustered versions) live
in :mod:`automl.uncertainty`; ``bootstrap_auc_ci`` and ``delong_test`` are still importable from here.

Conventions:

* ``y`` holds integer class indices ``0 .. C-1``; the positive class of a binary task is ``1``.
* ``P`` is an ``(N, C)`` probability matrix (rows sum to one). Functions documented as binary also
  accept ``p`` as an ``(N,)`` vector of positive-class probabilities or an ``(N, 2)`` matrix (its
  second column is used).
* A prediction is positive when ``p >= threshold``.

Example:
    >>> import numpy as np
    >>> from automl import metrics
    >>> y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.4, 0.35, 0.8])
    >>> round(metrics.roc_auc(y, p), 2)
    0.75
"""
from __future__ import annotations

import importlib
import logging
import math
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_curve

__all__ = [
    "UndefinedMetricWarning",
    "aggregate_by_subject",
    "binary_metrics_at_threshold",
    "bootstrap_auc_ci",
    "brier_score",
    "delong_test",
    "expected_calibration_error",
    "roc_auc",
    "threshold_for_sensitivity",
    "youden_threshold",
]

logger = logging.getLogger(__name__)

# Names that moved to automl.uncertainty, still served from here (imported on first use: no import cycle).
_MOVED = {"bootstrap_auc_ci": "automl.uncertainty", "delong_test": "automl.uncertainty"}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given data (e.g. AUC with a single class) and ``nan`` is returned."""


# ----------------------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------------------


def _check_labels(y: object, name: str = "y") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty.")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer values such as {arr[:3]}.")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}.")
    if arr.min() < 0:
        raise ValueError(f"{name} must hold class indices >= 0, got {int(arr.min())}.")
    return arr.astype(np.int64, copy=False)


def _check_probabilities(p: object, name: str) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got range [{arr.min():.4g}, {arr.max():.4g}].")
    return arr


def _check_binary(y: object, p: object, name: str = "p") -> tuple[np.ndarray, np.ndarray]:
    """Validate a binary task: ``y`` in {0, 1}, ``p`` positive-class probabilities of the same length."""
    y_arr = _check_labels(y)
    if y_arr.max() > 1:
        raise ValueError(f"y must be binary (0/1) for this metric, got class index {int(y_arr.max())}.")
    p_arr = _check_probabilities(p, name)
    if p_arr.ndim == 2 and p_arr.shape[1] == 2:
        p_arr = p_arr[:, 1]
    if p_arr.ndim != 1:
        raise ValueError(
            f"{name} must be positive-class probabilities (N,) or an (N, 2) matrix, got shape {p_arr.shape}."
        )
    if len(p_arr) != len(y_arr):
        raise ValueError(f"y and {name} have different lengths: {len(y_arr)} != {len(p_arr)}.")
    return y_arr, p_arr


def _check_matrix(y: object, P: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``y`` and a probability matrix ``P`` (N, C); an (N,) vector is read as binary P[:, 1]."""
    y_arr = _check_labels(y)
    P_arr = _check_probabilities(P, "P")
    if P_arr.ndim == 1:
        P_arr = np.stack([1.0 - P_arr, P_arr], axis=1)
    if P_arr.ndim != 2 or P_arr.shape[1] < 2:
        raise ValueError(f"P must be an (N, C) probability matrix with C >= 2, got shape {P_arr.shape}.")
    if len(P_arr) != len(y_arr):
        raise ValueError(f"y and P have different lengths: {len(y_arr)} != {len(P_arr)}.")
    if y_arr.max() >= P_arr.shape[1]:
        raise ValueError(f"y holds class index {int(y_arr.max())} but P has only {P_arr.shape[1]} columns.")
    return y_arr, P_arr


# ----------------------------------------------------------------------------------------------------
# ROC AUC
# ----------------------------------------------------------------------------------------------------


def _rank_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC along the last axis (ties count one half).

    ``labels`` is boolean with the same shape as ``scores``; rows with a single class give ``nan``.
    """
    ranks = stats.rankdata(scores, axis=-1)
    n_pos = labels.sum(axis=-1).astype(np.float64)
    n_neg = labels.shape[-1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * labels).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def roc_auc(y: object, P: object) -> float:
    """Area under the ROC curve: binary, or macro-averaged one-vs-rest for multiclass.

    Equal to :func:`sklearn.metrics.roc_auc_score` (``multi_class="ovr", average="macro"`` for
    multiclass), but robust to validation folds that lack a class: with fewer than two classes present
    it warns (:class:`UndefinedMetricWarning`) and returns ``nan``; a multiclass fold lacking some class
    averages over the classes that are present (also with a warning).

    Args:
        y: Class indices, shape (N,).
        P: Probabilities, shape (N, C); for binary tasks an (N,) positive-class vector is accepted.

    Returns:
        The AUC in [0, 1], or ``nan`` when undefined.

    Raises:
        ValueError: On mismatched lengths, probabilities outside [0, 1] or labels outside ``0 .. C-1``.
    """
    y_arr, P_arr = _check_matrix(y, P)
    n_classes = P_arr.shape[1]
    present = np.unique(y_arr)
    if len(present) < 2:
        warnings.warn(
            f"ROC AUC is undefined when y holds a single class ({present.tolist()}); returning nan.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return math.nan
    if n_classes == 2:
        return float(_rank_auc(y_arr == 1, P_arr[:, 1]))
    if len(present) < n_classes:
        warnings.warn(
            f"y lacks classes {sorted(set(range(n_classes)) - set(present.tolist()))}; "
            "the macro AUC averages over the classes present.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    aucs = [_rank_auc(y_arr == c, P_arr[:, c]) for c in present]
    return float(np.mean(aucs))


# ----------------------------------------------------------------------------------------------------
# calibration
# ----------------------------------------------------------------------------------------------------


def expected_calibration_error(y: object, p: object, *, n_bins: int = 10) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins on [0, 1].

    ``ECE = sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|`` over non-empty bins; bin ``b`` holds
    scores in ``[b / n_bins, (b + 1) / n_bins)`` and the last bin includes 1.0.

    * Binary (``p`` is (N,) or (N, 2)): the score is the positive-class probability and the "accuracy"
      of a bin is its fraction of positives (the reliability-diagram definition).
    * Multiclass (``p`` is (N, C), C > 2): top-label ECE; the score is the highest probability and the
      accuracy is whether its class is correct (Guo et al., 2017).

    Args:
        y: Class indices, shape (N,).
        p: Probabilities, see above.
        n_bins: Number of equal-width bins (>= 1).

    Returns:
        The ECE in [0, 1] (lower is better).

    Raises:
        ValueError: On invalid inputs or ``n_bins``.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    p_arr = np.asarray(p)
    if p_arr.ndim == 2 and p_arr.shape[1] > 2:
        y_arr, P_arr = _check_matrix(y, p_arr)
        score = P_arr.max(axis=1)
        hit = (P_arr.argmax(axis=1) == y_arr).astype(np.float64)
    else:
        y_arr, score = _check_binary(y, p_arr)
        hit = y_arr.astype(np.float64)
    bins = np.minimum((score * n_bins).astype(np.int64), int(n_bins) - 1)
    sum_hit = np.bincount(bins, weights=hit, minlength=n_bins)
    sum_score = np.bincount(bins, weights=score, minlength=n_bins)
    return float(np.abs(sum_hit - sum_score).sum() / len(score))


def brier_score(y: object, p: object) -> float:
    """Brier score (mean squared error of the probabilities; lower is better).

    Binary (``p`` (N,) or (N, 2)): :func:`sklearn.metrics.brier_score_loss` on the positive class, in
    [0, 1]. Multiclass (``p`` (N, C)): the original multi-category Brier score,
    ``mean_i sum_c (P_ic - [y_i == c])**2``, in [0, 2].

    Args:
        y: Class indices, shape (N,).
        p: Probabilities, see above.

    Returns:
        The Brier score.

    Raises:
        ValueError: On invalid inputs.
    """
    p_arr = np.asarray(p)
    if p_arr.ndim == 2 and p_arr.shape[1] > 2:
        y_arr, P_arr = _check_matrix(y, p_arr)
        onehot = np.eye(P_arr.shape[1])[y_arr]
        return float(((P_arr - onehot) ** 2).sum(axis=1).mean())
    y_arr, score = _check_binary(y, p_arr)
    return float(brier_score_loss(y_arr, score, labels=[0, 1]))


# ----------------------------------------------------------------------------------------------------
# thresholds
# ----------------------------------------------------------------------------------------------------


def _roc(y: object, p: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_arr, score = _check_binary(y, p)
    if len(np.unique(y_arr)) < 2:
        raise ValueError("Choosing a threshold needs both classes in y, got a single class.")
    fpr, tpr, thresholds = roc_curve(y_arr, score, drop_intermediate=False)
    # sklearn's first point is (0, 0) at threshold +inf ("call nothing positive"); drop it so that the
    # returned threshold is always one of the observed scores.
    return fpr[1:], tpr[1:], thresholds[1:]


def youden_threshold(y: object, p: object) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 on a binary ROC curve.

    Ties are broken towards the highest threshold (fewest positive calls). The returned value is one
    of the observed scores; predictions ``p >= threshold`` are positive.

    Args:
        y: Binary labels, shape (N,).
        p: Positive-class probabilities (N,) or (N, 2).

    Returns:
        The threshold.

    Raises:
        ValueError: On invalid inputs or a single class in ``y``.
    """
    fpr, tpr, thresholds = _roc(y, p)
    return float(thresholds[int(np.argmax(tpr - fpr))])


def threshold_for_sensitivity(y: object, p: object, target: float) -> float:
    """Highest threshold whose sensitivity reaches ``target`` (i.e. the best specificity under it).

    Args:
        y: Binary labels, shape (N,).
        p: Positive-class probabilities (N,) or (N, 2).
        target: Required sensitivity in (0, 1].

    Returns:
        The threshold (one of the observed scores); ``p >= threshold`` is positive.

    Raises:
        ValueError: On invalid inputs, a single class in ``y`` or ``target`` outside (0, 1].
    """
    if not (isinstance(target, (int, float, np.floating)) and 0.0 < float(target) <= 1.0):
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target!r}.")
    _, tpr, thresholds = _roc(y, p)
    # tpr is non-decreasing as the threshold falls; the first index reaching target is the highest one.
    reached = np.flatnonzero(tpr >= float(target) - 1e-12)
    return float(thresholds[int(reached[0])])


def binary_metrics_at_threshold(y: object, p: object, threshold: float) -> dict[str, float | int]:
    """Confusion-matrix metrics of the rule ``p >= threshold``.

    Ratios whose denominator is zero (e.g. precision without positive calls) are ``nan`` rather than
    a silently optimistic or pessimistic 0 or 1.

    Args:
        y: Binary labels, shape (N,).
        p: Positive-class probabilities (N,) or (N, 2).
        threshold: Decision threshold in [0, 1].

    Returns:
        Dict with ``accuracy, balanced_accuracy, sensitivity, specificity, precision, npv, f1`` (floats)
        and ``tp, fp, tn, fn`` (ints).

    Raises:
        ValueError: On invalid inputs or a threshold outside [0, 1].
    """
    y_arr, score = _check_binary(y, p)
    if not (isinstance(threshold, (int, float, np.floating)) and 0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}.")
    pred = (score >= float(threshold)).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_arr, pred, labels=[0, 1]).ravel())

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    sensitivity = ratio(tp, tp + fn)
    specificity = ratio(tn, tn + fp)
    precision = ratio(tp, tp + fp)
    balanced = float(np.nanmean([sensitivity, specificity])) if tp + fn or tn + fp else math.nan
    return {
        "accuracy": ratio(tp + tn, len(y_arr)),
        "balanced_accuracy": balanced,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": precision,
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


# ----------------------------------------------------------------------------------------------------
# subject level
# ----------------------------------------------------------------------------------------------------


def _rule_k(how: object) -> int | None:
    """``k`` of an aggregation rule: ``None`` for ``"mean"``, 1 for ``"max"``, k for ``"top<k>_mean"``."""
    if how == "mean":
        return None
    if how == "max":
        return 1
    match = re.fullmatch(r"top([1-9][0-9]*)_mean", how) if isinstance(how, str) else None
    if match is None:
        raise ValueError(f"how must be 'mean', 'max' or 'top<k>_mean' (e.g. 'top3_mean'), got {how!r}.")
    return int(match.group(1))


def _top_k_mean(work: pd.DataFrame, column: str, k: int, *, largest: bool) -> pd.Series:
    """Per subject, the mean of the ``k`` largest (or smallest) values of ``column`` (all when fewer)."""
    ranked = work.sort_values(["subject", column], ascending=[True, not largest], kind="stable")
    return ranked.groupby("subject", sort=True).head(k).groupby("subject", sort=True)[column].mean()


def aggregate_by_subject(df: pd.DataFrame, how: str = "mean") -> pd.DataFrame:
    """Aggregate slice-level predictions to one row per subject (patient).

    The subject label is the **maximum** slice label ``y`` within the subject: with classes sorted
    negative first, a subject is positive if any of its slices is (for several lesion classes the
    highest class index wins).

    Probabilities (columns ``prob_<class>``, in their order in ``df``, the first being the negative
    class):

    * ``how="mean"``: the mean of each column over the subject's slices (rows still sum to one).
    * ``how="max"``: "any slice is abnormal". Each non-negative class takes its maximum over the slices;
      binary tasks then set the negative column to ``1 - max``; multiclass rows give the negative class
      its *minimum* over slices and are renormalised to sum to one.
    * ``how="top<k>_mean"`` (e.g. ``"top3_mean"``): as ``"max"`` with the mean of the ``k`` largest
      values (the ``k`` smallest for the multiclass negative column; all slices when a subject has fewer
      than ``k``): between "mean" and "max", for lesions seen on a few slices. ``"top1_mean"`` is ``"max"``.

    Args:
        df: Slice-level table with columns ``subject``, ``y`` and at least two ``prob_*`` columns
            (e.g. ``predictions/test_<model>.csv``). A ``label`` column, if present, is carried over.
        how: ``"mean"``, ``"max"`` or ``"top<k>_mean"``.

    Returns:
        DataFrame with columns ``subject, y, [label,] n_slices, prob_*`` sorted by subject.

    Raises:
        ValueError: On a missing column, an unknown ``how`` or invalid labels/probabilities.
    """
    k = _rule_k(how)
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in ("subject", "y") if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks column(s) {missing}; it has {list(df.columns)}.")
    prob_cols = [c for c in df.columns if str(c).startswith("prob_")]
    if len(prob_cols) < 2:
        raise ValueError(f"df needs at least two prob_<class> columns, found {prob_cols}.")
    if df["subject"].isna().any():
        raise ValueError("df has missing subject values.")
    y_arr = _check_labels(df["y"].to_numpy())
    P = _check_probabilities(df[prob_cols].to_numpy(), "prob_* columns")
    work = pd.DataFrame(P, columns=prob_cols)
    work.insert(0, "y", y_arr)
    work.insert(0, "subject", df["subject"].astype(str).to_numpy())
    grouped = work.groupby("subject", sort=True)
    out = pd.DataFrame({"y": grouped["y"].max(), "n_slices": grouped.size()})
    if k is None:
        probs = grouped[prob_cols].mean()
    else:

        def top(column: str, largest: bool) -> pd.Series:
            if k == 1:
                return grouped[column].max() if largest else grouped[column].min()
            return _top_k_mean(work, column, k, largest=largest)

        probs = pd.DataFrame({c: top(c, True) for c in prob_cols[1:]})
        if len(prob_cols) == 2:
            probs.insert(0, prob_cols[0], 1.0 - probs[prob_cols[1]])
        else:
            probs.insert(0, prob_cols[0], top(prob_cols[0], False))
            probs = probs.div(probs.sum(axis=1), axis=0)
    out = out.join(probs)
    if "label" in df.columns:
        label_of = dict(zip(y_arr.tolist(), df["label"].tolist()))
        out.insert(1, "label", out["y"].map(label_of))
    return out.reset_index()
