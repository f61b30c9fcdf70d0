"""The patient-level summary of a study: subject rule, headline numbers, verdict, small-cohort warning.

Built on the subject-clustered intervals and tests of :mod:`automl.uncertainty`:

* :func:`select_subject_rule`: how slices become one patient score (mean, max, top-3 mean) and the
  patient threshold, chosen on **out-of-fold** (or other non-test) predictions only.
* :func:`headline`: a model's test-part numbers, patient level first (AUC, sensitivity, specificity
  with intervals and subject counts), slices second (subject-clustered intervals).
* :func:`compare_subject_level`: two models' patient-level AUC compared (DeLong on patients).
* :func:`verdict_sentence` and :func:`small_cohort_warning`: the words a reader sees first.

Not estimable is a result here too: fewer than two subjects of a class give ``nan`` and a reason
such as ``"not estimable (n = 1 stroke / 7 normal subjects)"``, never 0.000 or 1.000.

Example:
    >>> import pandas as pd
    >>> from automl import verdict as V
    >>> oof = pd.DataFrame({"subject": list("aabbccdd"), "y": [0, 0, 0, 0, 1, 1, 1, 1],
    ...                     "prob_N": [.8, .7, .6, .7, .4, .3, .5, .2], "prob_S": [.2, .3, .4, .3, .6, .7, .5, .8]})
    >>> V.select_subject_rule(oof).rule
    'mean'
"""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from automl._resample import _count_phrase, _is_int
from automl.metrics import (
    UndefinedMetricWarning,
    _rule_k,
    aggregate_by_subject,
    binary_metrics_at_threshold,
    roc_auc,
    threshold_for_sensitivity,
    youden_threshold,
)
from automl.uncertainty import (
    Comparison,
    MetricEstimate,
    cluster_bootstrap,
    compare_aucs,
)
from data._files import json_clean

__all__ = [
    "SUBJECT_RULES",
    "Headline",
    "SubjectRule",
    "compare_subject_level",
    "headline",
    "not_estimable_text",
    "select_subject_rule",
    "small_cohort_warning",
    "verdict_sentence",
]

logger = logging.getLogger(__name__)

SUBJECT_RULES = ("mean", "max", "top3_mean")
"""Subject aggregation rules tried by :func:`select_subject_rule` (see :func:`aggregate_by_subject`)."""


# ----------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------


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
        return json_clean(asdict(self))


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
        return json_clean(out)


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


def not_estimable_text(n_subjects: Mapping[str, int], *, unit: str = "patient") -> str:
    """``"not estimable (n = 1 stroke / 7 normal patients)"``: what a display shows instead of a number.

    Args:
        n_subjects: Subjects per class, class name -> count, negative class first.
        unit: Noun for a subject.

    Returns:
        The phrase (lesion classes first, as in every count of this module).
    """
    return f"not estimable (n = {_count_phrase(n_subjects, unit + 's')})"


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
    no_comparison: str = "the only model scored",
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
        no_comparison: The closing clause when ``comparisons`` is empty (e.g. ``"no paired test for a
            multiclass task"`` when other models exist but cannot be compared).

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
    elif best.slice.get("auc") is not None and best.slice["auc"].estimable:
        # labels per slice (a stroke patient has normal slices too): the slices are then the honest unit,
        # with an interval that resamples patients
        sl = best.slice["auc"]
        level = round(100 * (1 - sl.alpha))
        text = (f"{name}: {unit}-level AUC not estimable ({who}); slice-level AUC {sl.estimate:.2f} ({level}% CI "
                f"{sl.ci_low:.2f}–{sl.ci_high:.2f}, resampling {unit}s)")
        if sl.ci_high < 0.5:
            text += ", below chance"
        elif sl.ci_low <= 0.5:
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
    if not comparisons and no_comparison:
        clauses.append(no_comparison)
    return "; ".join([text, *clauses]) + "."
