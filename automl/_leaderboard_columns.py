"""The columns and ``report.json`` keys of a refitted model's test scores (internal to :mod:`automl.leaderboard`).

Turns the scored objects of :mod:`automl.scoring` into leaderboard cells: slice-level point values
(recomputable with scikit-learn), their subject-clustered intervals and ``ci_method``; the
patient-level headline (``nan`` + ``subject_note`` where not estimable); the comparisons with the
best model. Nothing is computed here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from automl.scoring import SubjectAssessment, note
from automl.uncertainty import Comparison, MetricEstimate

__all__ = ["Refit", "comparison_values", "subject_values", "test_values", "uncertainty_report"]


@dataclass
class Refit:
    """A refitted model's test predictions, threshold and scores (slice intervals, patient headline)."""

    trial: int
    frame: pd.DataFrame
    threshold: float | None
    threshold_method: str
    scores: dict[str, Any]
    intervals: dict[str, MetricEstimate]
    subjects: SubjectAssessment
    scans: dict[str, Any] | None = None  # :func:`automl.scoring.assess_scans` (data with CT volumes)


_TEST_KEYS = ("auc", "auc_ci_low", "auc_ci_high", "accuracy", "balanced_accuracy", "sensitivity", "specificity",
              "precision", "f1", "brier", "ece")
_SUBJECT_KEYS = ("auc", "sensitivity", "specificity")


def test_values(r: Refit, classes: list[str]) -> dict[str, Any]:
    """Slice-level columns: point values as before (recomputable with scikit-learn), subject-clustered intervals."""
    values: dict[str, Any] = {f"test_{k}": r.scores.get(k, math.nan) for k in _TEST_KEYS}
    for name, est in r.intervals.items():
        values[f"test_{name}_ci_low"], values[f"test_{name}_ci_high"] = est.ci_low, est.ci_high
    auc = r.intervals["auc"]
    values.update(ci_method=auc.ci_method, test_note=note(auc), n_test_images=len(r.frame))
    if len(classes) == 2:
        values.update(n_test_subjects_pos=auc.n_subjects[classes[1]], n_test_subjects_neg=auc.n_subjects[classes[0]])
        # patients holding slices of each class (labels per slice: a stroke patient has normal slices too);
        # a slice-level AUC needs two of each
        holding = r.frame.groupby("y")["subject"].nunique()
        values.update(n_test_slice_subjects_pos=int(holding.get(1, 0)), n_test_slice_subjects_neg=int(holding.get(0, 0)))
    return values


def subject_values(r: Refit) -> dict[str, Any]:
    """Patient-level columns: ``nan`` and ``subject_note`` where not estimable (never a 0.000 or 1.000 from one patient)."""
    s = r.subjects
    values: dict[str, Any] = {"subject_rule": s.rule.rule if s.rule else None,
                              "subject_threshold": math.nan if s.threshold is None else s.threshold,
                              "subject_note": s.note}
    if s.headline is not None:
        for key in _SUBJECT_KEYS:
            est = s.headline.subject.get(key)
            if est is None:
                continue
            values[f"subject_{key}"] = est.estimate if est.estimable else math.nan
            values[f"subject_{key}_ci_low"], values[f"subject_{key}_ci_high"] = est.ci_low, est.ci_high
        values.update(subject_ci_method=s.headline.subject["auc"].ci_method,
                      subject_note=note(s.headline.subject["auc"]))
    sl = r.scores.get("subject_level") or {}  # legacy, descriptive
    values.update(subject_auc_mean=(sl.get("mean") or {}).get("auc", math.nan),
                  subject_auc_max=(sl.get("max") or {}).get("auc", math.nan))
    return values


def scan_values(r: Refit) -> dict[str, Any]:
    """Scan-level columns (``nan`` without volumes or where not estimable)."""
    if not r.scans:
        return {}
    values: dict[str, Any] = {"n_test_scans": r.scans["n_scans"], "scan_note": ""}
    for key, est in r.scans["estimates"].items():
        if key not in _SUBJECT_KEYS:
            continue
        values[f"scan_{key}"] = est.estimate if est.estimable else math.nan
        values[f"scan_{key}_ci_low"], values[f"scan_{key}_ci_high"] = est.ci_low, est.ci_high
    values["scan_note"] = note(r.scans["estimates"]["auc"])
    return values


def comparison_values(model: str, comparisons: dict[str, dict[str, Comparison]], best_model: str | None,
                       classes: list[str]) -> dict[str, Any]:
    """``compare_p``/``compare_method`` (slices, clustered), ``subject_compare_p`` (patients), ``delong_p``.

    ``delong_p`` (version 1's column, kept for its readers) holds the p-value only where DeLong's test
    was the method (one image per subject); ``nan`` where the paired cluster bootstrap was.
    """
    if model == best_model and len(classes) == 2:
        return {"compare_p": math.nan, "compare_method": "reference", "subject_compare_p": math.nan,
                "delong_p": math.nan}
    image, subject = comparisons["image"].get(model), comparisons["subject"].get(model)
    return {"compare_p": image.p_value if image else math.nan, "compare_method": image.method if image else None,
            "subject_compare_p": subject.p_value if subject else math.nan,
            "delong_p": image.p_value if image and image.method == "delong" else math.nan}


def uncertainty_report(refits: dict[str, Refit], comparisons: dict[str, dict[str, Comparison]],
                        best_model: str | None) -> dict[str, Any]:
    """The keys of ``report.json`` on uncertainty: intervals, comparisons, subject rules, headlines, methods."""
    image, subject = comparisons["image"], comparisons["subject"]
    any_refit = next(iter(refits.values()), None)
    auc = any_refit.intervals["auc"] if any_refit else None
    return {
        "ci_method": auc.ci_method if auc else None,
        "comparison_method": next((c.method for c in image.values()), None),
        "test_cohort": {"n_subjects": auc.n_subjects, "n_images": auc.n_images} if auc else None,
        "intervals": {m: {k: e.to_dict() for k, e in r.intervals.items()} for m, r in refits.items()},
        "comparisons": {m: {"vs": best_model, "image": image[m].to_dict(),
                            "subject": subject[m].to_dict() if m in subject else None} for m in image},
        "subject_rules": {m: r.subjects.to_dict() for m, r in refits.items()},
        "headline": {m: r.subjects.headline.to_dict() for m, r in refits.items() if r.subjects.headline},
    }
