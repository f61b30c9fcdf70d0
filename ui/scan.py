"""Scan-level answers: one uploaded CT volume -> slice probabilities -> the study's verdict for the scan.

The library does the work: :meth:`models.Predictor.preprocess_volume` (each HU slice through the
training path), :meth:`~models.Predictor.predict_proba`, and
:func:`automl.metrics.aggregate_by_subject` with the scan as the one subject, under the rule and
threshold the study chose for patients (``leaderboard.csv`` columns ``subject_rule`` and
``subject_threshold``: the rule on out-of-fold predictions, the threshold on held-out data, never the
test part). That is the rule the leaderboard's scan level uses (:func:`automl.scoring.assess_scans`).
A study without one for the model (written before the rule existed, or no rule could be chosen)
falls back to ``"mean"`` and the slice threshold, and :attr:`ScanRule.note` says so.

Long volumes: a scan of more than :data:`MAX_SCAN_SLICES` slices is answered on every k-th slice
(``k = ceil(K / MAX_SCAN_SLICES)``, slice 0 always included), so a request costs at most
:data:`MAX_SCAN_SLICES` forward passes; the answer says which slices (``slice_indices``) and why.

This module computes; :mod:`ui.gradio_app` words and draws the answer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FALLBACK_RULE", "MAX_SCAN_SLICES", "TOP_SLICES", "ScanAnswer", "ScanRule", "answer_scan",
           "scan_rule", "slice_step"]

#: Most slices of one scan that are run through the model; longer scans are answered on every k-th slice.
MAX_SCAN_SLICES = 400
#: Most suspicious slices reported (and explained by the live app).
TOP_SLICES = 3
#: Aggregation rule of a study that recorded none for the model.
FALLBACK_RULE = "mean"


@dataclass(frozen=True)
class ScanRule:
    """How a model's slice probabilities become one scan answer.

    Attributes:
        rule: ``"mean"``, ``"max"`` or ``"top<k>_mean"`` (:func:`automl.metrics.aggregate_by_subject`).
        threshold: Threshold on the aggregated ``P(classes[1])`` (binary), else ``None``.
        from_study: ``True`` when the study chose the rule (and threshold) for patients; ``False`` for
            the fallback (``"mean"`` and the slice threshold).
        note: Why the fallback was used; ``""`` otherwise.
    """

    rule: str
    threshold: float | None
    from_study: bool
    note: str = ""


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def scan_rule(study: Any, model: str) -> ScanRule:
    """The rule and threshold the study chose for ``model``'s patients, else the fallback.

    Args:
        study: An :class:`automl.results.StudyResults`.
        model: A refitted model of the study.
    """
    binary = len(study.classes) == 2
    row = study.refit_row(model)
    rule = row.get("subject_rule") if row is not None else None
    threshold = _finite(row.get("subject_threshold")) if row is not None else None
    if isinstance(rule, str) and rule and (threshold is not None or not binary):
        return ScanRule(rule, threshold if binary else None, True)
    note = (f"this study recorded no patient rule for {model}, so the scan probability is the mean over the slices"
            + (" and the threshold the slice threshold" if binary else ""))
    return ScanRule(FALLBACK_RULE, float(study.threshold(model)) if binary else None, False, note)


def slice_step(n_slices: int, max_slices: int = MAX_SCAN_SLICES) -> int:
    """Every how many slices a scan of ``n_slices`` is answered (1 up to ``max_slices`` slices)."""
    if n_slices < 1 or max_slices < 1:
        raise ValueError(f"n_slices and max_slices must be >= 1, got {n_slices} and {max_slices}.")
    return max(1, math.ceil(n_slices / max_slices))


@dataclass
class ScanAnswer:
    """One scan's answer (see :func:`answer_scan`).

    Attributes:
        classes: Class names, negative first.
        label: The decision (binary: ``classes[1]`` when ``probability >= threshold``; else the argmax).
        probabilities: Aggregated probability of each class.
        probability: Binary: aggregated ``P(classes[1])``; multiclass: that of ``label``.
        threshold: The scan threshold (binary) or ``None``.
        rule: The :class:`ScanRule` used.
        n_slices: Slices in the scan.
        slice_indices: The slices answered (``0, step, 2*step, ...``), 0 the most inferior.
        slice_scores: Per answered slice: ``P(classes[1])`` (binary) or ``1 - P(classes[0])``
            (multiclass: the probability of any lesion class).
        slice_probabilities: ``(len(slice_indices), C)`` per-slice probabilities in class order.
        suspicious: Up to :data:`TOP_SLICES` slice indices, highest score first.
        ood_flagged: Answered slices beyond the model's out-of-distribution threshold; ``None``
            when the model has no reference.
        step: Every how many slices the scan was answered.
        inputs: uint8 ``(len(slice_indices), S, S)``: what the model saw.
    """

    classes: list[str]
    label: str
    probabilities: dict[str, float]
    probability: float
    threshold: float | None
    rule: ScanRule
    n_slices: int
    slice_indices: list[int]
    slice_scores: list[float]
    slice_probabilities: np.ndarray
    suspicious: list[int]
    ood_flagged: int | None
    step: int = 1
    inputs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8), repr=False)

    @property
    def score_of(self) -> str:
        """The event whose probability :attr:`slice_scores` hold: ``"Stroke"`` or ``"not Normal"``."""
        return self.classes[1] if len(self.classes) == 2 else f"not {self.classes[0]}"

    @property
    def score_name(self) -> str:
        """What :attr:`slice_scores` measure, e.g. ``"P(Stroke)"``."""
        return f"P({self.score_of})"

    def position(self, index: int) -> int:
        """Row of slice ``index`` in :attr:`slice_indices` (and :attr:`inputs`)."""
        return self.slice_indices.index(int(index))

    def to_dict(self) -> dict[str, Any]:
        """The JSON answer of ``/predict_scan``."""
        return {"label": self.label, "probability": self.probability, "threshold": self.threshold,
                "rule": self.rule.rule, "rule_from_study": self.rule.from_study, "n_slices": self.n_slices,
                "slice_step": self.step, "slice_indices": list(self.slice_indices),
                "slice_probabilities": [round(p, 6) for p in self.slice_scores],
                "suspicious_slices": list(self.suspicious), "ood_flagged_slices": self.ood_flagged,
                "probabilities": dict(self.probabilities)}


def _aggregate(probs: np.ndarray, classes: list[str], rule: str) -> dict[str, float]:
    from automl.metrics import aggregate_by_subject

    frame = pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes])
    frame.insert(0, "y", 0)
    frame.insert(0, "subject", "scan")
    row = aggregate_by_subject(frame, how=rule).iloc[0]
    return {c: float(row[f"prob_{c}"]) for c in classes}


def _ood_flagged(predictor: Any, inputs: np.ndarray) -> int | None:
    if getattr(predictor, "ood", None) is None:
        return None
    return int(sum(predictor.ood.score(d).flagged for d in predictor.ood_distances(inputs)))


def answer_scan(predictor: Any, hu: np.ndarray, *, classes: list[str], rule: ScanRule,
                window: str | tuple[float, float] | None = None, max_slices: int = MAX_SCAN_SLICES,
                top_k: int = TOP_SLICES) -> ScanAnswer:
    """Predict every slice of a volume (every k-th beyond ``max_slices``) and aggregate them to one answer.

    Args:
        predictor: A :class:`models.Predictor` whose classes are ``classes`` (in any order).
        hu: float ``(K, H, W)`` Hounsfield units, slice 0 the most inferior (``data.Volume.hu``).
        classes: The study's class names, negative first.
        rule: The :class:`ScanRule` (:func:`scan_rule`).
        window: CT window (default: the predictor's).
        max_slices: Most slices answered.
        top_k: Suspicious slices reported.

    Raises:
        ValueError: On a bad volume (:meth:`models.Predictor.preprocess_volume`) or when the
            predictor's classes are not the study's.
    """
    if sorted(predictor.classes) != sorted(classes):
        raise ValueError(f"The model predicts {predictor.classes}, the study has {classes}.")
    n_slices = int(np.asarray(hu).shape[0]) if np.ndim(hu) == 3 else 0
    step = slice_step(max(n_slices, 1), max_slices)
    indices = list(range(0, n_slices, step))
    inputs = predictor.preprocess_volume(np.asarray(hu)[::step], window=window)
    raw = predictor.predict_proba(inputs)
    probs = raw[:, [list(predictor.classes).index(c) for c in classes]]
    probabilities = _aggregate(probs, classes, rule.rule)
    binary = len(classes) == 2 and rule.threshold is not None
    if binary:
        label = classes[1] if probabilities[classes[1]] >= rule.threshold else classes[0]
        scores = probs[:, 1]
    else:
        label = max(classes, key=lambda c: probabilities[c])
        scores = 1.0 - probs[:, 0]
    order = np.argsort(-scores, kind="stable")[:top_k]
    return ScanAnswer(classes=list(classes), label=label, probabilities=probabilities,
                      probability=probabilities[classes[1]] if binary else probabilities[label],
                      threshold=rule.threshold if binary else None, rule=rule, n_slices=n_slices,
                      slice_indices=indices, slice_scores=[float(s) for s in scores], slice_probabilities=probs,
                      suspicious=[indices[i] for i in order], ood_flagged=_ood_flagged(predictor, inputs),
                      step=step, inputs=inputs)
