"""Scoring a refitted model's predictions: thresholds, test metrics, intervals, subject-level headline.

Pure functions on prediction frames (the files under ``predictions/``); every number can be
recomputed from those files with scikit-learn. Binary tasks: metrics at the chosen threshold.
Multiclass: macro one-vs-rest AUC; the other metrics at the arg-max class (sensitivity, precision,
F1 macro-averaged over classes, specificity the macro mean of one-vs-rest specificities); no threshold.

**The patient is the unit** (issue 16). Slices of one patient are correlated, so:

* :func:`interval_scores`: every test interval (AUC, sensitivity, specificity, accuracy, Brier, ECE)
  is a cluster bootstrap that resamples subjects, stratified by subject label
  (:func:`automl.uncertainty.cluster_bootstrap`); with one image per subject it is the ordinary
  stratified bootstrap and gives the numbers of :func:`automl.uncertainty.bootstrap_auc_ci`.
* :func:`assess_subjects`: the subject aggregation rule (mean, max, top-3 mean) is chosen on the
  model's **out-of-fold** predictions, the subject threshold on its **calibration-part** predictions
  (the final model itself, held-out CV subjects; the out-of-fold predictions come from other fits,
  whose probability scale differs, so they serve only as a fallback), never on the test part; then
  :func:`automl.verdict.headline` scores the test part at patient level.
* :func:`compare_with_best` (paired cluster bootstrap on slices, DeLong with one image per subject)
  and :func:`compare_subject_level` (DeLong on patients) compare models on the same test part;
  :func:`study_verdict` writes the one sentence a reader sees first.

A figure needs two subjects of each class, an interval five (``automl.uncertainty``); below that the
result is ``nan`` with a reason such as ``"not estimable (n = 1 Stroke / 7 Normal patients)"``.
"""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from automl import metrics
from automl.study import probability_columns
from automl.uncertainty import Comparison, MetricEstimate, cluster_bootstrap, compare_aucs
from automl.verdict import (
    Headline,
    SubjectRule,
    compare_subject_level,
    headline,
    not_estimable_text,
    select_subject_rule,
    small_cohort_warning,
    verdict_sentence,
)

__all__ = [
    "N_BOOT",
    "PIXEL_BASELINE",
    "SubjectAssessment",
    "assess_scans",
    "assess_subjects",
    "calibration_threshold",
    "choose_threshold",
    "compare_subjects_with_best",
    "compare_with_best",
    "interval_scores",
    "score_predictions",
    "note",
    "study_verdict",
    "study_warnings",
    "subject_level",
]

logger = logging.getLogger(__name__)

N_BOOT = 2000
"""Resamples of every test interval (the count the slice bootstrap used, so single-slice numbers stay)."""
PIXEL_BASELINE = "logreg"
"""The registry name of the pixel baseline every verdict compares the winner with."""
UNIT = "patient"
"""The noun of a subject in the written notes and the verdict."""


def choose_threshold(y: np.ndarray, p: np.ndarray, target_sensitivity: float | None) -> tuple[float, str]:
    """Threshold on held-out positive-class probabilities: Youden's J or a target sensitivity."""
    if target_sensitivity is None:
        return float(metrics.youden_threshold(y, p)), "youden"
    return float(metrics.threshold_for_sensitivity(y, p, target_sensitivity)), f"sensitivity>={target_sensitivity:g}"


def score_predictions(y: np.ndarray, P: np.ndarray, threshold: float | None, *, seed: int = 0,
                      with_ci: bool = True) -> dict[str, float]:
    """Test metrics of one model (see the module docstring for the multiclass conventions).

    ``with_ci`` adds ``auc_ci_low``/``auc_ci_high`` from the image bootstrap (images independent);
    the study writer passes ``False`` and takes every interval from :func:`interval_scores`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        out: dict[str, float] = {"auc": metrics.roc_auc(y, P)}
        if with_ci:
            out["auc_ci_low"], out["auc_ci_high"] = metrics.bootstrap_auc_ci(y, P, n_boot=N_BOOT, seed=seed)
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
    """Legacy subject-level AUC on the test part (mean and max aggregation), when subjects have several slices.

    Descriptive only (both rules shown on the test part, no minimum count, no interval): kept for the
    ``subject_auc_mean``/``subject_auc_max`` columns of old readers. The headline is
    :func:`assess_subjects`.
    """
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


# ---------------------------------------------------------------------------------------------------- intervals


def _subjects(frame: pd.DataFrame) -> np.ndarray | None:
    return frame["subject"].astype(str).to_numpy() if "subject" in frame.columns else None


def interval_scores(frame: pd.DataFrame, classes: Sequence[str], threshold: float | None, *, seed: int = 0,
                    n_boot: int = N_BOOT) -> dict[str, MetricEstimate]:
    """Intervals of a model's test metrics, resampling subjects (see the module docstring).

    Args:
        frame: Test predictions, one row per image: ``y``, ``subject``, ``prob_<class>``.
        classes: Class names, negative first.
        threshold: The model's decision threshold (binary tasks).
        seed: Seed of the resampling.
        n_boot: Resamples.

    Returns:
        Metric name -> :class:`~automl.uncertainty.MetricEstimate`: AUC, sensitivity, specificity,
        accuracy, Brier, ECE (binary); AUC, accuracy (arg-max), Brier, ECE (multiclass).
    """
    binary = len(classes) == 2
    wanted: tuple[str, ...] = ("auc", "accuracy", "brier", "ece")
    if binary:
        wanted = ("auc", "sensitivity", "specificity", "accuracy", "brier", "ece") if threshold is not None else (
            "auc", "brier", "ece")
    P = frame[probability_columns(classes)].to_numpy(dtype=float)
    return cluster_bootstrap(frame["y"].to_numpy(dtype=int), P, _subjects(frame), metrics=wanted,
                             threshold=float(threshold) if binary and threshold is not None else None,
                             n_boot=n_boot, seed=seed, classes=list(classes))


def note(estimate: MetricEstimate) -> str:
    """``""`` for an estimable result, else ``"not estimable (n = 1 Stroke / 7 Normal patients)"``."""
    return "" if estimate.estimable else not_estimable_text(estimate.n_subjects, unit=UNIT)


# ---------------------------------------------------------------------------------------------------- patients


@dataclass
class SubjectAssessment:
    """How a model's slices become patients, and its patient-level headline on the test part.

    Attributes:
        rule: The aggregation rule chosen on the out-of-fold predictions (``None``: none could be chosen).
        threshold: Threshold on the aggregated positive-class probability (``None``: multiclass, no rule).
        threshold_source: ``"calibration"`` (the final model's calibration part), ``"oof"`` (fallback)
            or ``""``.
        headline: :func:`automl.verdict.headline` of the test part, or ``None``.
        note: Why there is no headline; ``""`` otherwise.
    """

    rule: SubjectRule | None
    threshold: float | None
    threshold_source: str
    headline: Headline | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``subject_rules`` entry of ``report.json``)."""
        return {"rule": self.rule.rule if self.rule else None, "threshold": self.threshold,
                "threshold_source": self.threshold_source, "oof_choice": self.rule.to_dict() if self.rule else None,
                "note": self.note}


def _slim(frame: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    return frame[["subject", "y", *probability_columns(classes)]]


def _subject_threshold(rule: SubjectRule, calibration: pd.DataFrame | None, classes: Sequence[str],
                       target: float | None) -> tuple[float | None, str]:
    """The subject threshold on the final model's calibration part, else the out-of-fold one."""
    if len(classes) != 2:
        return None, ""
    if calibration is not None:
        try:
            chosen = select_subject_rule(_slim(calibration, classes), rules=(rule.rule,), target_sensitivity=target)
            return chosen.threshold, "calibration"
        except (KeyError, ValueError) as exc:
            logger.warning("subject threshold from the out-of-fold predictions: calibration part unusable (%s)", exc)
    return rule.threshold, "oof"


def assess_subjects(test: pd.DataFrame, oof: pd.DataFrame, calibration: pd.DataFrame | None,
                    classes: Sequence[str], *, model: str, slice_threshold: float | None,
                    target_sensitivity: float | None = None, seed: int = 0,
                    n_boot: int = N_BOOT) -> SubjectAssessment:
    """Choose the subject rule (out-of-fold) and threshold (calibration part), then score the test part.

    Args:
        test: Test predictions (``predictions/test_<model>.csv``).
        oof: Out-of-fold predictions of the same configuration (``predictions/oof_<model>.csv``).
        calibration: The final model's calibration-part predictions, or ``None``.
        classes: Class names, negative first.
        model: Model name (carried into the headline).
        slice_threshold: The slice-level threshold (binary), for the headline's slice metrics.
        target_sensitivity: ``None`` for Youden's J, else the subject sensitivity to reach.
        seed: Seed of the resampling.
        n_boot: Resamples.

    Returns:
        A :class:`SubjectAssessment`; problems (no subject column, one class in the out-of-fold data)
        come back as its ``note``, never as an exception.
    """
    binary = len(classes) == 2
    target = target_sensitivity if binary else None
    try:
        rule = select_subject_rule(_slim(oof, classes), target_sensitivity=target)
    except (KeyError, ValueError) as exc:
        return SubjectAssessment(None, None, "", None, f"no subject rule for {model}: {exc}")
    threshold, source = _subject_threshold(rule, calibration, classes, target)
    try:
        result = headline(_slim(test, classes), rule=rule.rule, threshold=threshold, model=model,
                          slice_threshold=slice_threshold if binary else None, n_boot=n_boot, seed=seed)
    except (KeyError, ValueError) as exc:
        return SubjectAssessment(rule, threshold, source, None, f"no {UNIT}-level headline for {model}: {exc}")
    return SubjectAssessment(rule, threshold, source, result)


def assess_scans(test: pd.DataFrame, subjects: SubjectAssessment, classes: Sequence[str], *, seed: int = 0,
                 n_boot: int = N_BOOT) -> dict[str, Any] | None:
    """Scan-level metrics on the test part: slices aggregated per scan with the **patient** rule and threshold.

    A scan is one CT volume (the ``scan`` column: NIfTI file or DICOM series). The rule and the
    threshold are the ones :func:`assess_subjects` chose for patients (out-of-fold and calibration
    part), so nothing is tuned on the test part; the intervals resample **patients** (a patient's
    scans move together), so a patient with two scans does not count twice.

    Returns:
        ``{"n_scans", "n_patients", "same_as_patients", "estimates": {metric: MetricEstimate}}``, or
        ``None`` when the test part holds no volume or no rule was chosen.
    """
    if "scan" not in test.columns or subjects.rule is None:
        return None
    frame = test[test["scan"].fillna("").astype(str) != ""]
    if frame.empty:
        return None
    cols = probability_columns(classes)
    binary = len(classes) == 2
    work = frame[["scan", "y", *cols]].rename(columns={"scan": "subject"})
    agg = metrics.aggregate_by_subject(work, how=subjects.rule.rule)
    patient_of = frame.groupby(frame["scan"].astype(str))["subject"].first()
    wanted = ("auc", "sensitivity", "specificity", "accuracy") if binary and subjects.threshold is not None else (
        "auc", "accuracy")
    estimates = cluster_bootstrap(agg["y"].to_numpy(dtype=int), agg[cols].to_numpy(dtype=float),
                                  patient_of.loc[agg["subject"]].to_numpy(), metrics=wanted,
                                  threshold=subjects.threshold if binary else None, n_boot=n_boot, seed=seed,
                                  classes=list(classes))
    n_patients = int(patient_of.nunique())
    return {"n_scans": int(len(agg)), "n_patients": n_patients, "same_as_patients": n_patients == len(agg),
            "estimates": estimates}


# ---------------------------------------------------------------------------------------------------- comparisons


def _aligned(frame: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s rows in ``reference``'s order (matched on ``path``); labels must agree."""
    if "path" in frame.columns and "path" in reference.columns and frame["path"].is_unique:
        if set(frame["path"]) != set(reference["path"]):
            raise ValueError("the test predictions hold different images")
        frame = frame.set_index("path").loc[reference["path"]].reset_index()
    if len(frame) != len(reference) or not np.array_equal(frame["y"].to_numpy(), reference["y"].to_numpy()):
        raise ValueError("the test predictions disagree on the images or their labels")
    return frame


def compare_with_best(frames: Mapping[str, pd.DataFrame], best: str | None, classes: Sequence[str], *,
                      seed: int = 0, n_boot: int = N_BOOT) -> dict[str, Comparison]:
    """Each model's test AUC against the best model's (**best as model 1**), on the same images.

    :func:`automl.uncertainty.compare_aucs`: a paired cluster bootstrap when some subject has several
    images, DeLong's test otherwise. Binary tasks only (``{}`` otherwise).
    """
    if best not in frames or len(classes) != 2:
        return {}
    column, reference = f"prob_{classes[1]}", frames[best]
    out: dict[str, Comparison] = {}
    for model, frame in frames.items():
        if model == best:
            continue
        try:
            other = _aligned(frame, reference)
        except (KeyError, ValueError) as exc:
            logger.warning("%s not compared with %s: %s", model, best, exc)
            continue
        out[model] = compare_aucs(reference["y"].to_numpy(dtype=int), reference[column].to_numpy(dtype=float),
                                  other[column].to_numpy(dtype=float), _subjects(reference), n_boot=n_boot,
                                  seed=seed, classes=list(classes))
    return out


def compare_subjects_with_best(frames: Mapping[str, pd.DataFrame], assessments: Mapping[str, SubjectAssessment],
                               best: str | None, classes: Sequence[str]) -> dict[str, Comparison]:
    """Each model's **patient-level** test AUC against the best model's (each with its own rule; DeLong)."""
    if len(classes) != 2 or best not in frames or best not in assessments or assessments[best].rule is None:
        return {}
    reference, best_rule = frames[best], assessments[best].rule.rule
    out: dict[str, Comparison] = {}
    for model, frame in frames.items():
        a = assessments.get(model)
        if model == best or a is None or a.rule is None:
            continue
        try:
            out[model] = compare_subject_level(_slim(reference, classes), _slim(_aligned(frame, reference), classes),
                                               rule_1=best_rule, rule_2=a.rule.rule)
        except (KeyError, ValueError) as exc:
            logger.warning("%s not compared with %s at %s level: %s", model, best, UNIT, exc)
    return out


# ---------------------------------------------------------------------------------------------------- words


def _named_comparisons(best: str, order: Sequence[str], comparisons: Mapping[str, Comparison]) -> dict[str, Comparison]:
    """The pixel baseline and the runner-up (next in ``order``), as the verdict names them."""
    others = [m for m in order if m != best]
    runner = others[0] if others else None
    named: dict[str, Comparison] = {}
    if PIXEL_BASELINE in others and PIXEL_BASELINE != runner and PIXEL_BASELINE in comparisons:
        named[f"the pixel baseline {PIXEL_BASELINE}"] = comparisons[PIXEL_BASELINE]
    if runner is not None and runner in comparisons:
        role = "the runner-up and pixel baseline" if runner == PIXEL_BASELINE else "the runner-up"
        named[f"{role} {runner}"] = comparisons[runner]
    return named


def study_verdict(best: str | None, order: Sequence[str], assessments: Mapping[str, SubjectAssessment],
                  comparisons: Mapping[str, Comparison], classes: Sequence[str]) -> str | None:
    """The study's verdict: the best model's patient-level AUC, against the pixel baseline and the runner-up.

    Args:
        best: The winner (architecture of the best selection score).
        order: Scored models, best selection score first: the runner-up is the next one, ranked by
            cross-validation like the winner, never by the test part.
        assessments: :func:`assess_subjects` of each model.
        comparisons: :func:`compare_subjects_with_best` (patient level, the level of the headline).
        classes: Class names.

    Returns:
        One sentence (:func:`automl.verdict.verdict_sentence`), or ``None`` without a scored winner.
    """
    a = assessments.get(best) if best is not None else None
    if a is None:
        return None
    if a.headline is None:
        return f"{best}: no {UNIT}-level result ({a.note})."
    named = _named_comparisons(best, order, comparisons)
    others = any(m != best for m in order)
    fallback = "the only model scored"
    if others:
        fallback = "no paired test for a multiclass task" if len(classes) != 2 else "no paired test was possible"
    return verdict_sentence(a.headline, named, unit=UNIT, no_comparison=fallback)


def study_warnings(assessments: Mapping[str, SubjectAssessment], intervals: Mapping[str, Mapping[str, MetricEstimate]],
                   best: str | None) -> list[str]:
    """Warnings of ``report.json``: a small test part (< 10 patients in a class), subject rules not chosen."""
    out: list[str] = []
    counts = next((e["auc"].n_subjects for e in intervals.values() if "auc" in e), None)
    if counts:
        cohort = small_cohort_warning(counts, unit=UNIT)
        if cohort:
            out.append(cohort)
    out += [a.note for m, a in assessments.items() if a.note]
    if best is not None and best not in assessments:
        out.append(f"the best model {best} was not scored on the test part")
    return out
