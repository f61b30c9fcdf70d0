"""``leaderboard.md``: the study's leaderboard for humans, verdict first.

Internal to :mod:`automl.leaderboard`. Reads only the finished table and the ``report.json`` content;
computes nothing. Order: the verdict, the warnings (small test part), the leakage audit, the data
and selection, the patient-level headline, the slice-level test scores, all trials. A nested
evaluation (``nested.json``) comes before all of that: it is then the headline.

Not estimable is written as such: a figure whose class has fewer than two test subjects reads
``not estimable (n = 1 Stroke / 7 Normal patients)``, never 0.000 or 1.000.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from automl.refit import LEAKAGE_GAP

__all__ = ["render_markdown", "fmt"]

_SLICE_HEADER = ("| model | init | selection score (CV, best of N trials) | test AUC [95% CI] | sensitivity [95% CI] "
                 "| specificity [95% CI] | F1 | Brier | ECE | p vs best |")
_PATIENT_HEADER = ("| model | rule, threshold | patient AUC [95% CI] | sensitivity [95% CI] | specificity [95% CI] "
                   "| patients | p vs best (patients) |")


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``–`` for missing or non-finite values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_lr(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):.1e}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _with_ci(row: pd.Series, name: str, *, hide: bool = False, reason: str = "") -> str:
    """``0.712 [0.55, 0.86]``; the interval ``[–]`` when not estimable; ``reason`` instead of a hidden value."""
    value = row.get(name, math.nan)
    if hide or pd.isna(value):
        return reason or "–"
    low, high = row.get(f"{name}_ci_low", math.nan), row.get(f"{name}_ci_high", math.nan)
    ci = "[–]" if pd.isna(low) or pd.isna(high) else f"[{fmt(float(low), 2)}, {fmt(float(high), 2)}]"
    return f"{fmt(float(value))} {ci}"


def _counts(row: pd.Series, classes: list[str]) -> str:
    pos, neg = row.get("n_test_subjects_pos"), row.get("n_test_subjects_neg")
    if len(classes) != 2 or pd.isna(pos) or pd.isna(neg):
        return "–"
    return f"{int(pos)} {classes[1]} / {int(neg)} {classes[0]}"


def _too_few(row: pd.Series) -> bool:
    """Fewer than two test subjects holding slices of a class: slice figures are not estimable (studies
    written before the per-slice counts: subjects per class)."""
    pos, neg = row.get("n_test_slice_subjects_pos"), row.get("n_test_slice_subjects_neg")
    if pd.isna(pos) or pd.isna(neg):
        pos, neg = row.get("n_test_subjects_pos"), row.get("n_test_subjects_neg")
    return pd.notna(pos) and pd.notna(neg) and min(int(pos), int(neg)) < 2


def _p(row: pd.Series, p_column: str, *, with_method: bool = False) -> str:
    """A p-value against the best model; ``(best)`` on the best model's own row."""
    method = _text(row.get("compare_method"))
    if method == "reference":
        return "(best)"
    value = row.get(p_column, math.nan)
    if pd.isna(value):
        return "–"
    return f"{float(value):.3g}" + (f" ({method})" if with_method and method else "")


def _head_lines(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if report.get("verdict"):
        lines += [f"**Verdict.** {report['verdict']}", ""]
    for warning in report.get("warnings") or []:
        lines += [f"> ⚠️ {warning}", ""]
    audit = report.get("leakage_audit")
    if audit:
        flag = "⚠️ **LEAKAGE SUSPECTED**" if audit.get("flagged") else "✅ no leakage signal"
        lines.append(f"> **Leakage audit** ({audit.get('description')}): subject-grouped CV AUC "
                     f"**{fmt(audit.get('grouped_auc'))}** vs slice-level CV AUC **{fmt(audit.get('slice_auc'))}** "
                     f"(gap {fmt(audit.get('gap'))}, flag above {LEAKAGE_GAP}): {flag}.")
        if audit.get("flagged"):
            who = ("the pixel logistic-regression probe (not one of the study's models)"
                   if audit.get("method") == "probe" else "the winning configuration")
            lines.append(f"> The gap is {who} on a leaky slice-level split (slices of one patient in both training "
                         "and validation) versus the subject-grouped split: slices of a patient resemble each other, "
                         "so a slice-level split would flatter any model trained on these images. The grouped "
                         "numbers below are the honest ones.")
        lines.append("")
    return lines


def _data_lines(report: dict[str, Any], config_json: dict[str, Any], *, nested: bool = False) -> list[str]:
    n_img, n_sub = config_json.get("n_images"), config_json.get("n_subjects")
    selection = report.get("selection") or {}
    cohort = (report.get("test_cohort") or {}).get("n_subjects") or {}
    test = " / ".join(f"{n} {c}" for c, n in reversed(list(cohort.items()))) if cohort else "–"
    part = f"untouched test part ({config_json.get('test_size')})"
    estimate = "test part below is. Nested evaluation (an outer CV around the search) is not done. "
    k = config_json.get("outer_fold")
    if k is not None:  # an inner study of a nested evaluation
        part = f"test part = outer fold {k} (`outer/{k}/`) of {config_json.get('outer_folds')}"
        estimate = ("test part below is its part of the nested estimate, which the parent study pools over every "
                    "outer fold. ")
    elif nested:
        estimate = "nested estimate above is; the test part below is a second, smaller check. "
    return [
        f"Data: `{config_json.get('data_dir')}` — {n_img} images, {n_sub} subjects "
        f"(grouping: {config_json.get('subject_source')}), classes {config_json.get('classes')}. "
        f"Split: {config_json.get('folds')}-fold subject-grouped CV + {part}: {test} subjects in the test part. "
        f"Image size {config_json.get('image_size')} px, seed {config_json.get('seed')}.",
        "",
        f"Trials: {report.get('trial_states')}. Best model: **{report.get('best_model')}** "
        f"(trial {report.get('best_trial')}), chosen by its {selection.get('label', 'selection score (CV)')}: "
        f"{fmt(report.get('best_cv_auc'))} — optimistically biased by that choice, so not the estimate; the "
        f"{estimate}"
        f"Threshold: {report.get('threshold_method')} on the final model's calibration part (held-out CV images).",
        "",
    ]


def _estimate_cell(estimate: dict[str, Any] | None) -> str:
    """A ``MetricEstimate.to_dict()`` as ``0.712 [0.55, 0.86]``; its reason when not estimable."""
    if not estimate or estimate.get("estimate") is None:
        return (estimate or {}).get("reason") or "–"
    low, high = estimate.get("ci_low"), estimate.get("ci_high")
    ci = "[–]" if low is None or high is None else f"[{fmt(float(low), 2)}, {fmt(float(high), 2)}]"
    return f"{fmt(float(estimate['estimate']))} {ci}"


def _count_text(n_subjects: dict[str, Any] | None) -> str:
    return " / ".join(f"{n} {c}" for c, n in reversed(list((n_subjects or {}).items()))) or "–"


def _nested_lines(nested: dict[str, Any]) -> list[str]:
    """The nested estimate (``nested.json``): what a reader of a nested study sees first."""
    est = nested.get("estimate") or {}
    subject, slices = est.get("subject") or {}, est.get("slice") or {}
    n_images = sum((est.get("n_images") or {}).values())
    lines = [f"**{nested.get('headline')}.** {nested.get('verdict')}", "",
             "| nested estimate | AUC [95% CI] | sensitivity [95% CI] | specificity [95% CI] | cases |",
             "|---|---|---|---|---|",
             f"| patients (each outer fold's rule and threshold) | {_estimate_cell(subject.get('auc'))} | "
             f"{_estimate_cell(subject.get('sensitivity'))} | {_estimate_cell(subject.get('specificity'))} | "
             f"{_count_text(est.get('n_subjects'))} patients |",
             f"| slices (pooled; intervals resample patients) | {_estimate_cell(slices.get('auc'))} | – | – | "
             f"{n_images} images |", "",
             "| outer fold | winner, chosen by its inner CV | selection score (inner CV) | test patients | "
             "patient AUC | slice AUC |", "|---|---|---|---|---|---|"]
    for f in nested.get("folds") or []:
        lines.append(f"| {f.get('outer_fold')} (`{f.get('study')}/`) | {f.get('winner')} "
                     f"(trial {f.get('winner_trial')}) | {fmt(f.get('inner_cv_auc'))} | "
                     f"{_count_text(f.get('n_subjects'))} | {fmt(f.get('subject_auc'))} | {fmt(f.get('test_auc'))} |")
    mean = nested.get("per_fold_mean") or {}
    return lines + ["", f"Mean over the outer folds of their own test AUCs: patients {fmt(mean.get('subject_auc'))}, "
                        f"slices {fmt(mean.get('test_auc'))} (the pooled estimate above ranks patients of different "
                        "folds against each other, so the two differ where the winners' scales do).", "",
                    f"Method: {nested.get('method')} (`nested.json`, `nested.csv`). Below: this study's own "
                    "search and single test part; its winner is the model to use.", ""]


def _patient_lines(refits: pd.DataFrame, classes: list[str]) -> list[str]:
    if refits["subject_rule"].isna().all():
        return []
    lines = ["## Patient level (the headline), scored once on the test part", "",
             "Slices aggregated per patient with the rule chosen on out-of-fold predictions; the patient "
             "threshold chosen on the calibration part (never on the test part). Intervals: bootstrap over "
             "patients.", "", _PATIENT_HEADER, "|---|---|---|---|---|---|---|"]
    for _, r in refits.iterrows():
        reason = _text(r.get("subject_note"))
        rule = f"{_text(r.get('subject_rule')) or '–'}, {fmt(r.get('subject_threshold'))}"
        lines.append(f"| {r['model']} | {rule} | {_with_ci(r, 'subject_auc', reason=reason)} | "
                     f"{_with_ci(r, 'subject_sensitivity', reason=reason)} | "
                     f"{_with_ci(r, 'subject_specificity', reason=reason)} | {_counts(r, classes)} | "
                     f"{_p(r, 'subject_compare_p')} |")
    return lines + [""]


def _scan_lines(refits: pd.DataFrame) -> list[str]:
    """Scan level (CT volumes): the patient rule and threshold applied per scan; patients resampled."""
    if "n_test_scans" not in refits.columns or refits["n_test_scans"].isna().all():
        return []
    n_scans = int(refits["n_test_scans"].dropna().iloc[0])
    lines = ["## Scan level (each CT volume), scored once on the test part", "",
             f"{n_scans} test scans. Slices aggregated per scan with each model's patient rule and threshold "
             "(chosen without the test part); intervals resample patients, so a patient's scans move together.", "",
             "| model | scan AUC [95% CI] | sensitivity [95% CI] | specificity [95% CI] |", "|---|---|---|---|"]
    for _, r in refits.iterrows():
        reason = _text(r.get("scan_note"))
        lines.append(f"| {r['model']} | {_with_ci(r, 'scan_auc', reason=reason)} | "
                     f"{_with_ci(r, 'scan_sensitivity', reason=reason)} | {_with_ci(r, 'scan_specificity', reason=reason)} |")
    return lines + [""]


def _slice_lines(refits: pd.DataFrame) -> list[str]:
    method = next((m for m in refits["ci_method"] if isinstance(m, str)), "–")
    lines = ["## Slices, scored once on the test part", "",
             f"Intervals: {method} (resampling {'patients' if method == 'cluster_bootstrap' else 'images'}, "
             "stratified by label); p: paired test of each model's AUC against the best model's.", "",
             _SLICE_HEADER, "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in refits.iterrows():
        hide, reason = _too_few(r), _text(r.get("test_note"))
        n = r.get("selected_of")
        cv = f"{fmt(r['cv_auc_mean'])} ± {fmt(r['cv_auc_std'])}" + (f" (N = {int(n)})" if pd.notna(n) else "")
        lines.append(
            f"| {r['model']} | {_text(r['init']) or '–'} | {cv} | {_with_ci(r, 'test_auc', hide=hide, reason=reason)} | "
            f"{_with_ci(r, 'test_sensitivity', hide=hide, reason=reason)} | "
            f"{_with_ci(r, 'test_specificity', hide=hide, reason=reason)} | "
            f"{fmt(r['test_f1']) if not hide else '–'} | {_with_ci(r, 'test_brier')} | {_with_ci(r, 'test_ece')} | "
            f"{_p(r, 'compare_p', with_method=True)} |")
    return lines + [""]


def _trial_lines(table: pd.DataFrame) -> list[str]:
    lines = ["## All trials (ranked by mean CV AUC, the selection score; pruned trials show the folds they finished)",
             "", "| rank | trial | model | init | lr | batch | CV AUC | ± | folds | state | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['rank']} | {r['trial']} | {r['model']} | {_text(r['init']) or '–'} | {_fmt_lr(r['lr'])} | "
            f"{fmt(int(r['batch_size'])) if pd.notna(r['batch_size']) else '–'} | {fmt(r['cv_auc_mean'])} | "
            f"{fmt(r['cv_auc_std'])} | {r['cv_auc_folds']} | {r['state']} | {fmt(r['fit_seconds'], 1)} |")
    return lines


def render_markdown(table: pd.DataFrame, report: dict[str, Any], config_json: dict[str, Any], *,
                    nested: dict[str, Any] | None = None) -> str:
    """The text of ``leaderboard.md``.

    Args:
        table: The leaderboard (``automl.leaderboard.LEADERBOARD_COLUMNS``).
        report: The content of ``report.json``.
        config_json: The study's ``config.json``.
        nested: The content of ``nested.json`` (a nested evaluation, :mod:`automl.nested`): it comes
            first, and says that it is the headline.

    Returns:
        Markdown, verdict first (the nested estimate's when there is one).
    """
    classes = [str(c) for c in config_json.get("classes") or []]
    lines = [f"# Leaderboard: {config_json.get('study_name')}", ""]
    if nested:
        lines += _nested_lines(nested) + ["## This study's own test part", ""]
    lines += _head_lines(report) + _data_lines(report, config_json, nested=bool(nested))
    refits = table[table["refit"]].sort_values("rank", kind="stable")
    if not refits.empty:
        lines += _patient_lines(refits, classes) + _scan_lines(refits) + _slice_lines(refits)
    lines += _trial_lines(table)
    lines += ["", "Not for clinical use: a research tool comparing classifiers; its numbers describe this data set only.",
              ""]
    return "\n".join(lines)
