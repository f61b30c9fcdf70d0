"""Scoring a refitted model's predictions: the threshold, the test metrics and subject-level metrics.

Pure functions on prediction frames (the files under ``predictions/``); every number can be
recomputed from those files with scikit-learn. Binary tasks: metrics at the chosen threshold.
Multiclass: macro one-vs-rest AUC; the other metrics at the arg-max class (sensitivity, precision,
F1 macro-averaged over classes, specificity the macro mean of one-vs-rest specificities); no threshold.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from automl import metrics
from automl.study import probability_columns

__all__ = ["choose_threshold", "calibration_threshold", "score_predictions", "subject_level"]


def choose_threshold(y: np.ndarray, p: np.ndarray, target_sensitivity: float | None) -> tuple[float, str]:
    """Threshold on held-out positive-class probabilities: Youden's J or a target sensitivity."""
    if target_sensitivity is None:
        return float(metrics.youden_threshold(y, p)), "youden"
    return float(metrics.threshold_for_sensitivity(y, p, target_sensitivity)), f"sensitivity>={target_sensitivity:g}"


def score_predictions(y: np.ndarray, P: np.ndarray, threshold: float | None, *, seed: int = 0) -> dict[str, float]:
    """Test metrics of one model (see the module docstring for the multiclass conventions)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        out: dict[str, float] = {"auc": metrics.roc_auc(y, P)}
        out["auc_ci_low"], out["auc_ci_high"] = metrics.bootstrap_auc_ci(y, P, n_boot=2000, seed=seed)
        out["brier"] = metrics.brier_score(y, P if P.shape[1] > 2 else P[:, 1])
        out["ece"] = metrics.expected_calibration_error(y, P if P.shape[1] > 2 else P[:, 1])
        if P.shape[1] == 2:
            m = metrics.binary_metrics_at_threshold(y, P[:, 1], float(threshold))
            out.update({k: float(m[k]) for k in ("accuracy", "balanced_accuracy", "sensitivity", "specificity",
                                                 "precision", "f1")})
            out.update({k: int(m[k]) for k in ("tp", "fp", "tn", "fn")})
        else:
            from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

            pred = P.argmax(axis=1)
            labels = list(range(P.shape[1]))
            precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=labels, average="macro",
                                                                       zero_division=np.nan)
            cm = confusion_matrix(y, pred, labels=labels)
            spec = []
            for c in labels:
                tn = cm.sum() - cm[c, :].sum() - cm[:, c].sum() + cm[c, c]
                fp = cm[:, c].sum() - cm[c, c]
                spec.append(tn / (tn + fp) if tn + fp else math.nan)
            out.update(accuracy=float((pred == y).mean()), balanced_accuracy=float(balanced_accuracy_score(y, pred)),
                       sensitivity=float(recall), specificity=float(np.nanmean(spec)), precision=float(precision),
                       f1=float(f1))
    return out


def subject_level(frame: pd.DataFrame, classes: Sequence[str], threshold: float | None) -> dict[str, Any] | None:
    """Subject-level metrics (mean and max aggregation) when some subject has several slices."""
    if frame.groupby("subject").size().max() <= 1:
        return None
    out: dict[str, Any] = {}
    for how in ("mean", "max"):
        agg = metrics.aggregate_by_subject(frame[["subject", "y", *probability_columns(classes)]], how=how)
        P = agg[probability_columns(classes)].to_numpy(dtype=float)
        ys = agg["y"].to_numpy(dtype=int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
            entry: dict[str, Any] = {"auc": metrics.roc_auc(ys, P), "n_subjects": int(len(agg))}
            if len(classes) == 2 and threshold is not None:
                m = metrics.binary_metrics_at_threshold(ys, P[:, 1], float(threshold))
                entry.update({k: m[k] for k in ("sensitivity", "specificity", "accuracy", "balanced_accuracy")})
        out[how] = entry
    return out


def calibration_threshold(calibration: pd.DataFrame, classes: Sequence[str],
                         target_sensitivity: float | None) -> tuple[float | None, str]:
    """The decision threshold of a final model from its calibration-part predictions (``None``, "argmax"
    for multiclass); see :func:`choose_threshold`."""
    if len(classes) != 2:
        return None, "argmax"
    p = calibration[probability_columns(classes)].to_numpy(dtype=float)[:, 1]
    return choose_threshold(calibration["y"].to_numpy(dtype=int), p, target_sensitivity)
