"""One-click HTML report of a study: the dashboard's key figures and tables in one offline file.

    python -m ui.report leaderboards/demo            # writes leaderboards/demo/report.html
    python -m ui.report leaderboards/demo -o out.html

Every figure is built by :mod:`ui.charts` from the files of the study folder (read through
:mod:`automl.results`); plotly.js is embedded once, so the file opens without a network.
"""
from __future__ import annotations

import argparse
import html
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from automl._cli import add_logging_arguments, add_study_arguments, fail, locate_study, start_logging
from automl.results import StudyError, StudyResults, load_study
from ui import charts

__all__ = ["DISCLAIMER", "build_report", "leaderboard_html", "leaderboard_table", "leakage_flagged", "leakage_sentence", "positive_class", "roc_class_names", "test_curves",
           "test_subjects", "write_report", "main"]

logger = logging.getLogger(__name__)

DISCLAIMER = "Research and teaching only — not for clinical use."

#: Leaderboard columns shown to humans (in this order, when present). ``cv_auc_mean`` is the selection
#: score; the patient-level columns are the headline; ``subject_auc_mean``/``subject_auc_max`` only for
#: studies written before the patient-level headline.
TABLE_COLUMNS = [
    "rank", "trial", "model", "init", "train_precision", "state", "cv_auc_mean", "cv_auc_std",
    "subject_rule", "subject_auc", "subject_auc_ci_low", "subject_auc_ci_high", "subject_sensitivity",
    "subject_specificity", "n_test_subjects_pos", "n_test_subjects_neg", "subject_note",
    "test_auc", "test_auc_ci_low", "test_auc_ci_high", "compare_p", "compare_method", "test_sensitivity",
    "test_specificity", "test_balanced_accuracy", "test_f1", "test_brier", "test_ece", "ci_method", "test_note",
    "subject_auc_mean", "subject_auc_max", "threshold", "lr", "batch_size", "weight_decay", "finetune",
    "fit_seconds", "refit",
]
#: Shown even when empty (the identity of a row and the selection score).
_ALWAYS_SHOWN = ("rank", "trial", "model", "init", "state", "cv_auc_mean", "compare_p")  # empty p: not estimable, say so
#: Whole-number columns: shown as integers (a column of ints with a gap is read back as floats).
_INTEGER_COLUMNS = ("rank", "trial", "batch_size", "n_test_subjects_pos", "n_test_subjects_neg")
#: Text columns: a missing value reads "–" (not "None" / "nan").
_TEXT_COLUMNS = ("init", "train_precision", "state", "subject_rule", "subject_note", "compare_method", "ci_method",
                 "test_note", "finetune")
#: Floats spanning decades (learning rate, weight decay): three significant digits, never rounded to 0.001.
_SIGNIFICANT_COLUMNS = ("lr", "weight_decay")
_LEGACY_COLUMNS = {"subject_auc_mean": "subject_auc", "subject_auc_max": "subject_auc"}  # shown without the new one
#: Slice-level figures hidden where the test part has fewer than two subjects of a class.
_SLICE_FIGURES = ("test_auc", "test_auc_ci_low", "test_auc_ci_high", "test_sensitivity", "test_specificity",
                  "test_balanced_accuracy", "test_f1", "test_accuracy")


def positive_class(study: StudyResults) -> str:
    """The class treated as positive in one-vs-rest curves: ``classes[1]`` (binary) or the last class."""
    return study.classes[1] if len(study.classes) == 2 else study.classes[-1]


def test_curves(study: StudyResults, models: Sequence[str], positive: str | None = None) -> dict[str, tuple[Any, Any]]:
    """``{model: (y, score)}`` of the test part for :func:`ui.charts.roc_chart` and friends."""
    positive = positive or positive_class(study)
    return {m: charts.binary_series(study.test_predictions(m), study.classes, positive) for m in models}


def test_subjects(study: StudyResults, models: Sequence[str]) -> dict[str, Any]:
    """``{model: subject ids}`` of the test part (models whose predictions name subjects), for the
    "not estimable" counts of :func:`ui.charts.roc_chart`."""
    frames = {m: study.test_predictions(m) for m in models}
    return {m: f["subject"].to_numpy() for m, f in frames.items() if "subject" in f.columns}


def roc_class_names(study: StudyResults, positive: str | None = None) -> tuple[str, str]:
    """``(negative, positive)`` names of a one-vs-rest ROC."""
    positive = positive or positive_class(study)
    return (study.classes[0], positive) if len(study.classes) == 2 else (f"non-{positive}", positive)


def best_per_architecture(board: pd.DataFrame) -> pd.Index:
    """Index of the best finished trial (highest CV AUC) of each architecture."""
    done = board[board["cv_auc_mean"].notna()]
    if done.empty:
        return pd.Index([])
    return pd.Index(done.groupby("model")["cv_auc_mean"].idxmax().to_list())


def _as_integers(column: pd.Series) -> pd.Series:
    """``column`` as nullable integers when every value present is a whole number (else unchanged)."""
    values = pd.to_numeric(column, errors="coerce")
    present = values.dropna()
    if present.empty or values.notna().sum() != column.notna().sum() or not np.all(np.mod(present, 1) == 0):
        return column
    return values.astype("Int64")


def leaderboard_table(board: pd.DataFrame) -> pd.DataFrame:
    """The human-facing leaderboard: selected columns, plus ``best`` (★ = best of its architecture).

    Slice-level test figures of a row whose test part has fewer than two subjects of a class are
    blanked (its ``test_note`` says "not estimable (n = …)"): a 0.000 or 1.000 from one patient is no
    result. The file itself keeps every value. A column with no value in any row (e.g.
    ``train_precision`` of a study of classical baselines, or one written before it was recorded) is
    left out; missing text reads "–"; whole-number columns (``batch_size``, counts) are integers,
    so ``32`` never shows as ``32.000``.
    """
    columns = [c for c in TABLE_COLUMNS if c in board.columns
               and not (c in _LEGACY_COLUMNS and _LEGACY_COLUMNS[c] in board.columns)
               and (c in _ALWAYS_SHOWN or board[c].notna().any())]
    table = board[columns].copy()
    hidden = ~charts.estimable_rows(board)  # fewer than two patients of a class (unknown counts: shown)
    for column in (c for c in _SLICE_FIGURES if c in table.columns):
        table[column] = table[column].astype(float).mask(hidden)
    for column in (c for c in _INTEGER_COLUMNS if c in table.columns):
        table[column] = _as_integers(table[column])
    for column in (c for c in _TEXT_COLUMNS if c in table.columns):
        table[column] = table[column].astype(object).where(table[column].notna(), "–")
    table.insert(min(3, len(columns)), "best", np.where(board.index.isin(best_per_architecture(board)), "★", ""))
    return table


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def _significant(value: Any) -> str:
    """Three significant digits (``9.49e-04``, not ``0.001``); "–" when missing."""
    return "–" if pd.isna(value) else f"{float(value):.3g}"


def leaderboard_html(table: pd.DataFrame) -> str:
    """:func:`leaderboard_table` as HTML: three decimals, learning rate and weight decay to 3 significant digits."""
    formatters = {c: _significant for c in _SIGNIFICANT_COLUMNS if c in table.columns}
    return table.to_html(index=False, formatters=formatters, float_format=lambda v: f"{v:.3f}", na_rep="–")


def leakage_flagged(audit: dict[str, Any]) -> bool:
    """Whether the leakage audit's gap is above its threshold (or the audit flagged itself)."""
    gap = audit.get("gap")
    gap = float(gap) if gap is not None else math.nan
    return bool(audit.get("flagged")) or (math.isfinite(gap) and gap > float(audit.get("threshold", 0.05)))


def leakage_sentence(audit: dict[str, Any]) -> str:
    """What the leakage audit's gap means, naming what was fitted (the pixel probe or the winner).

    The audit fits one cheap model twice on the same CV rows: on the study's subject-grouped folds and
    on slice-level folds that let slices of one patient sit on both sides (a leaky split). The gap is
    between those two splits; with ``method="probe"`` the model is a pixel logistic regression, not
    the study's winner, so the sentence never says "this model".
    """
    if audit.get("method") == "probe":
        who = "The probe (a logistic regression on down-sampled pixels, not one of the study's models)"
    else:
        who = f"The winning configuration ({audit.get('model', '?')}, {audit.get('epochs', '?')} epoch(s))"
    gap = audit.get("gap")
    gap_text = "–" if gap is None or not math.isfinite(float(gap)) else f"{float(gap):+.3f}"
    if leakage_flagged(audit):
        return (f"{who} scores {gap_text} AUC higher on the leaky slice-level split (slices of one patient in both "
                "training and validation) than on the subject-grouped split: slices of a patient look alike, so a "
                "slice-level split would flatter any model trained on these images. The subject-grouped numbers "
                "of this study are the honest ones.")
    return (f"No leakage signal: {who[0].lower() + who[1:]} scores about the same on the leaky slice-level split "
            f"and on the subject-grouped split (gap {gap_text}).")


def _audit_html(report: dict[str, Any]) -> str:
    audit = report.get("leakage_audit")
    if not audit:
        return "<p class='info'>No leakage audit recorded for this study.</p>"
    css = "bad" if leakage_flagged(audit) else "good"
    return (f"<p class='{css}'><b>Leakage audit</b> ({html.escape(str(audit.get('description', '')))}): "
            f"subject-grouped CV AUC <b>{_fmt(audit.get('grouped_auc'))}</b> vs slice-level CV AUC "
            f"<b>{_fmt(audit.get('slice_auc'))}</b>. {html.escape(leakage_sentence(audit))}</p>")


def _verdict_html(study: StudyResults, report: dict[str, Any]) -> str:
    """The verdict (large), the warnings, and what the selection score is."""
    verdict = study.verdict
    nested = study.nested
    parts = [f"<p class='verdict'><b>Nested estimate.</b> {html.escape(nested.verdict)}</p>"
             f"<p>Headline: {html.escape(nested.method)} (every patient tested once); the single test part "
             "below is a second, smaller check.</p>"] if nested is not None and nested.verdict else []
    parts += [f"<p class='verdict'><b>Verdict.</b> {html.escape(verdict)}</p>" if verdict else
             "<p class='info'>No verdict recorded: this study was written before the patient-level verdict; "
             f"regenerate it with <code>python -m automl.leaderboard --study {html.escape(study.name)}</code>.</p>"]
    parts += [f"<p class='bad'>⚠️ {html.escape(w)}</p>" for w in study.warnings]
    label = (report.get("selection") or {}).get("label", "selection score (CV)")
    if report.get("best_cv_auc") is not None:
        parts.append(f"<p>Best model chosen by its {html.escape(label)}: {_fmt(report.get('best_cv_auc'))} — "
                     "optimistically biased by that choice, so not the estimate; "
                     + ("the nested estimate is.</p>" if nested is not None else
                        "the test part is. Nested evaluation (<code>--outer-folds K</code>) was not run.</p>"))
    return "\n".join(parts)


def _figures(study: StudyResults) -> list[tuple[str, go.Figure]]:
    figures: list[tuple[str, go.Figure]] = [("", charts.leaderboard_chart(study.leaderboard))]
    models = study.refitted_models()
    best = study.best_model
    positive = positive_class(study)

    def attempt(title: str, build: Any) -> None:
        try:
            figures.append((title, build()))
        except (StudyError, ValueError) as exc:
            logger.warning("report: %s skipped: %s", title, exc)
            figures.append((title, None))  # type: ignore[arg-type]

    if models:
        attempt(f"ROC on the test part ({positive} vs rest)",
                lambda: charts.roc_chart(test_curves(study, models), subjects=test_subjects(study, models),
                                         class_names=roc_class_names(study)))
        attempt("Precision–recall on the test part",
                lambda: charts.pr_chart(test_curves(study, models), subjects=test_subjects(study, models),
                                        class_names=roc_class_names(study)))
        attempt("Reliability on the test part", lambda: charts.reliability_chart(test_curves(study, models)))
    if best:
        def oof_roc() -> go.Figure:
            frame = study.oof_predictions(best)
            y, p = charts.binary_series(frame, study.classes, positive)
            return charts.cv_roc_chart(y, p, frame["fold"], name=best)

        attempt(f"Out-of-fold ROC of {best}", oof_roc)

        def confusion() -> go.Figure:
            frame = study.test_predictions(best)
            P = frame[[f"prob_{c}" for c in study.classes]].to_numpy(float)
            if len(study.classes) == 2:
                thr = study.threshold(best)
                pred = (P[:, 1] >= thr).astype(int)
                title = f"Confusion matrix of {best} at threshold {thr:.3f}"
            else:
                pred, title = P.argmax(axis=1), f"Confusion matrix of {best} (argmax)"
            return charts.confusion_chart(frame["y"], pred, study.classes, title=title)

        attempt("Confusion matrix", confusion)
    attempt("Images per class", lambda: charts.class_count_chart(study.split))
    return figures


def build_report(study: StudyResults | str | Path) -> str:
    """Build the HTML report of a study.

    Args:
        study: A loaded study or its folder.

    Returns:
        A complete HTML document (plotly.js embedded once; opens offline).

    Raises:
        StudyError: When the study folder cannot be loaded.
    """
    if not isinstance(study, StudyResults):
        study = load_study(study)
    try:
        report = study.report
    except StudyError as exc:
        logger.warning("report.json unreadable: %s", exc)
        report = {}
    cfg = study.config
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>StrokeCT AutoML — {html.escape(study.name)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 6px}"
        ".bad{background:#f8d7da;padding:.6em}.good{background:#d4edda;padding:.6em}"
        ".info{background:#e2e3e5;padding:.6em}.warn{color:#842029;font-weight:bold}"
        ".verdict{font-size:1.4em;background:#fff3cd;padding:.6em}</style></head><body>",
        f"<h1>StrokeCT AutoML study: {html.escape(study.name)}</h1>",
        _verdict_html(study, report),
        f"<p class='warn'>{DISCLAIMER}</p>",
        f"<p>Classes: {html.escape(', '.join(study.classes))}. Data: <code>{html.escape(str(cfg.get('data_dir')))}</code> "
        f"({_fmt(cfg.get('n_images'))} images, {_fmt(cfg.get('n_subjects'))} subjects, grouping "
        f"{html.escape(str(cfg.get('subject_source')))}). Preset {html.escape(str(cfg.get('preset')))}, "
        f"{_fmt(cfg.get('folds'))}-fold grouped CV, image size {_fmt(cfg.get('image_size'))} px, seed {_fmt(cfg.get('seed'))}. "
        f"Best model: <b>{html.escape(str(study.best_model))}</b>. Generated {time.strftime('%Y-%m-%d %H:%M')}.</p>",
        _audit_html(report),
        "<h2>Leaderboard</h2>",
        "<p>cv_auc_mean: the selection score (what the search maximised); subject_*: patient level, the "
        "headline; test_*: slices, intervals by ci_method; compare_p: paired test against the best model "
        "(compare_method); '–' where not estimable (see subject_note, test_note).</p>",
        leaderboard_html(leaderboard_table(study.leaderboard)),
    ]
    first = True
    for title, fig in _figures(study):
        if title:  # the leaderboard chart goes under the table's heading, no second "Leaderboard"
            parts.append(f"<h2>{html.escape(title)}</h2>")
        if fig is None:
            parts.append("<p class='info'>Not available for this study (see the log).</p>")
            continue
        parts.append(fig.to_html(full_html=False, include_plotlyjs=True if first else False))
        first = False
    if study.attribution is not None:
        parts += ["<h2>Attribution localisation and sanity checks</h2>",
                  study.attribution.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–")]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write :func:`build_report` to ``out`` (default ``<study_dir>/report.html``) and return the path."""
    out = Path(out) if out is not None else Path(study_dir) / "report.html"
    text = build_report(study_dir)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    logger.info("report written to %s", out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m ui.report --study NAME [--out FILE]`` (a study folder path works as ``STUDY`` too)."""
    parser = argparse.ArgumentParser(prog="python -m ui.report", description=__doc__.splitlines()[0])
    add_study_arguments(parser, positional=True)
    parser.add_argument("-o", "--out", default=None, help="the HTML file to write (default <study>/report.html)")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    start_logging(args)
    folder = locate_study(parser, args)
    try:
        path = write_report(folder.root, args.out)
    except (StudyError, OSError) as exc:
        return fail(exc)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
