"""Streamlit dashboard: which model wins, how sure we are, and why.

    streamlit run app.py                                    # leaderboards/ of the repo
    STROKECT_LEADERBOARDS=/data/leaderboards streamlit run app.py
    STROKECT_NO_AUTOSTART=1 streamlit run app.py            # don't start the demo search by itself

Everything shown is read from ``leaderboards/<study>/`` through :mod:`automl.results`; curves and
matrices are drawn by :mod:`ui.charts`, metrics come from :mod:`automl.metrics`, predictors and
attributions from :mod:`models`. Nothing here trains a model, except the one-off demo search
started (through :func:`automl.search.run_search`) when no study exists yet.

Environment:
    STROKECT_LEADERBOARDS: folder of studies (default ``<repo>/leaderboards``).
    STROKECT_NO_AUTOSTART=1: show the demo prompt instead of starting the demo search.
    STROKECT_NO_GRADIO=1: never start the embedded Gradio server (the live tab uses its fallback).
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from automl import results
from automl.results import StudyError, StudyResults
from automl.study import StudyFolder
from automl.study import leaderboards_root as study_root
from ui import charts, report

__all__ = ["TABS", "leaderboards_root", "main", "winner_style"]

logger = logging.getLogger(__name__)

TABS = ["Leaderboard", "ROC / PR / calibration", "Confusion matrix", "Attributions", "Data", "Search",
        "Live prediction"]
DEMO_STUDY = "demo"
OTHER_FOLDER = "Other folder…"
_TRUE = ("1", "true", "yes", "on")
#: Height (px) of the embedded Gradio app: its examples (the DICOM series last) fit without cropping.
GRADIO_FRAME_HEIGHT = 1600


def leaderboards_root() -> Path:
    """The folder of studies (:func:`automl.study.leaderboards_root`: ``$STROKECT_LEADERBOARDS``, else the
    checkout's ``leaderboards/``, else ``./leaderboards`` for an installed package)."""
    return study_root()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


# ==================================================================================== cached loaders
@st.cache_resource(show_spinner=False, max_entries=16)
def _study(study_dir: str, mtime: float) -> StudyResults:
    """The loaded study, shared by all sessions; a changed file (``mtime``) loads it afresh."""
    return results.load_study(study_dir)


def _open_study(study_dir: Path) -> StudyResults:
    return _study(str(study_dir), results.study_fingerprint(study_dir))


def _key(study: StudyResults) -> tuple[str, float]:
    return str(study.dir), results.study_fingerprint(study.dir)


@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def _predictor(model_dir: str, mtime: float) -> Any:
    from models import load_predictor

    return load_predictor(model_dir, device="auto")


def _study_predictor(study: StudyResults, model: str) -> Any:
    folder = study.model_dir(model)
    return _predictor(str(folder), max(p.stat().st_mtime for p in folder.iterdir()))


@st.cache_data(show_spinner=False, max_entries=32)
def _leaderboard_figure(study_dir: str, mtime: float) -> go.Figure:
    return charts.leaderboard_chart(_study(study_dir, mtime).leaderboard)


@st.cache_data(show_spinner=False, max_entries=64)
def _curve_figures(study_dir: str, mtime: float, models: tuple[str, ...], positive: str) -> dict[str, go.Figure]:
    study = _study(study_dir, mtime)
    curves = report.test_curves(study, models, positive)
    counts = {"subjects": report.test_subjects(study, models), "class_names": report.roc_class_names(study, positive)}
    return {"roc": charts.roc_chart(curves, title=f"ROC, test part ({positive} vs rest)", **counts),
            "pr": charts.pr_chart(curves, title="Precision–recall, test part", **counts),
            "calibration": charts.reliability_chart(curves, title="Reliability diagram, test part")}


@st.cache_data(show_spinner=False, max_entries=64)
def _oof_figures(study_dir: str, mtime: float, model: str, positive: str) -> dict[str, go.Figure]:
    study = _study(study_dir, mtime)
    frame = study.oof_predictions(model)
    y, p = charts.binary_series(frame, study.classes, positive)
    return {"roc": charts.cv_roc_chart(y, p, frame["fold"], name=model),
            "pr": charts.pr_chart({f"{model} (pooled out-of-fold)": (y, p)}, title=f"Precision–recall, out-of-fold — {model}"),
            "calibration": charts.reliability_chart({f"{model} (out-of-fold)": (y, p)},
                                                    title=f"Reliability, out-of-fold — {model}")}


@st.cache_data(show_spinner=False, max_entries=64)
def _subject_figure(study_dir: str, mtime: float, models: tuple[str, ...], positive: str) -> go.Figure | None:
    """Patient-level ROC of the test part, each model with its recorded subject rule.

    The rule comes from ``leaderboard.csv`` (``subject_rule``, chosen on out-of-fold predictions);
    studies written before it show the mean and max rules. A model with fewer than two test patients
    of a class shows "not estimable (n = …)" instead of an AUC.
    """
    from automl.metrics import aggregate_by_subject

    study = _study(study_dir, mtime)
    curves = {}
    for model in models:
        frame = study.test_predictions(model)
        if "subject" not in frame.columns or frame.groupby("subject").size().max() < 2:
            return None
        row = study.refit_row(model)
        rule = row.get("subject_rule") if row is not None else None
        for how in [rule] if isinstance(rule, str) else ["mean", "max"]:
            y, p = charts.binary_series(aggregate_by_subject(frame, how=how), study.classes, positive)
            curves[f"{model} (patients, {how})"] = (y, p)
    try:
        return charts.roc_chart(curves, title="Patient-level ROC, test part (slice probabilities aggregated per "
                                              "patient with the rule chosen on out-of-fold predictions)",
                                class_names=report.roc_class_names(study, positive))
    except ValueError as exc:  # every series holds patients of one class only
        logger.info("no patient-level ROC: %s", exc)
        return None


@st.cache_data(show_spinner=False, max_entries=16)
def _sample_images(data_dir: str, paths: tuple[str, ...], size: int = 64) -> list[np.ndarray]:
    import data

    return [data.resize_pad(data.load_image(Path(data_dir) / p), size) for p in paths]


@st.cache_data(show_spinner="Computing the attribution…", max_entries=128)
def _explain(model_dir: str, mtime: float, source: str, payload: bytes | None, method: str,
             target: str | None = None) -> Any:
    from models.attribution import explain

    predictor = _predictor(model_dir, mtime)
    return explain(predictor, payload if payload is not None else source, method=method, target=target)


@st.cache_resource(show_spinner=False)
def _png_probe() -> dict[str, bool | None]:
    """Probe once per process, in the background, whether kaleido can render PNG here.

    kaleido >= 1 drives a Chrome/Chromium install; the first render takes seconds, so the page never
    waits for it: PNG buttons appear once the probe has succeeded.
    """
    state: dict[str, bool | None] = {"ok": None}

    def probe() -> None:
        try:
            go.Figure(go.Scatter(x=[0, 1], y=[0, 1])).to_image(format="png", width=50, height=50)
            state["ok"] = True
        except Exception as exc:  # noqa: BLE001 - any failure means: offer HTML only
            logger.info("PNG export unavailable (%s): HTML downloads only", str(exc).splitlines()[0][:120])
            state["ok"] = False

    threading.Thread(target=probe, name="kaleido-probe", daemon=True).start()
    return state


def _png_export_available() -> bool:
    return _png_probe()["ok"] is True


@st.cache_resource(show_spinner="Starting the Gradio app…", max_entries=4)
def _gradio_server(study_dir: str) -> tuple[str | None, str | None]:
    """Start the Gradio app of a study once per process on a free loopback port.

    Returns:
        ``(url, None)`` when it runs, ``(None, reason)`` when it could not start.
    """
    try:
        from ui import gradio_app

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        blocks = gradio_app.launch(study_dir=study_dir, server_name="127.0.0.1", server_port=port, block=False)
        url = getattr(blocks, "local_url", None) or f"http://127.0.0.1:{port}/"
        logger.info("Gradio app of %s serving at %s", study_dir, url)
        return url, None
    except Exception as exc:  # noqa: BLE001 - the tab falls back to the native predictor
        logger.warning("Gradio app could not start: %s", exc)
        return None, str(exc)


# ==================================================================================== helpers
def _guard(fn: Callable[..., Any], *args: Any) -> Any:
    """Run one view; show study/data problems as a message instead of a traceback."""
    try:
        return fn(*args)
    except StudyError as exc:
        st.error(f"This study is incomplete: {exc}")
    except (ValueError, OSError) as exc:
        st.error(f"Could not show this view: {exc}")
    except Exception as exc:  # noqa: BLE001 - last line of defence: the page must stay usable
        logger.exception("view %s failed", getattr(fn, "__name__", fn))
        st.error(f"Unexpected error in this view ({type(exc).__name__}: {exc}). The other tabs still work.")
    return None


def figure_ui(fig: go.Figure, name: str, *, key: str) -> None:
    """Show a figure with its HTML (and, where kaleido works, PNG) download buttons."""
    st.plotly_chart(fig, key=f"chart_{key}",
                    config={"displaylogo": False, "toImageButtonOptions": {"format": "png", "filename": name}})
    cols = st.columns([1, 1, 4])
    cols[0].download_button("⬇ HTML", data=lambda: charts.figure_to_html(fig), file_name=f"{name}.html",
                            mime="text/html", key=f"html_{key}", on_click="ignore")
    if _png_export_available():
        cols[1].download_button("⬇ PNG", data=lambda: fig.to_image(format="png", scale=2), file_name=f"{name}.png",
                                mime="image/png", key=f"png_{key}", on_click="ignore")


def _positive_ui(study: StudyResults, key: str) -> str:
    if len(study.classes) == 2:
        return study.classes[1]
    return st.selectbox("Positive class (one vs rest)", study.classes[1:], index=len(study.classes) - 2, key=key)


def _set_state(key: str, value: Any) -> None:
    """Button callback: put a widget back to ``value`` (runs before the rerun draws the widget)."""
    st.session_state[key] = value


def _pct(value: float) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.1%}"


# ==================================================================================== start-up
def demo_ui(root: Path) -> None:
    """No study ready yet: build the demo in the background and show its progress (read from the study).

    The build runs detached from this page (:mod:`automl.background`): closing or refreshing the tab, a
    second visitor or a Streamlit rerun do not stop it, and a build that died can be resumed here.
    """
    from automl.background import build_status

    st.title("StrokeCT AutoML")
    st.info(
        f"No study found in `{root}`. The **demo** generates a synthetic CT phantom (normal vs stroke, with lesion "
        "masks) and runs a `--preset demo` search across ImageNet transfer learning, ResNet-18, EfficientNet, "
        "ViT-Tiny, simple CNNs and a logistic-regression baseline — a few minutes on 2 CPU cores. Later starts "
        "reuse it. To study your own data instead: `python -m automl.search --data DIR --study NAME --preset cpu`."
    )
    status = build_status(root / DEMO_STUDY)
    if status.state == "running":
        _build_progress_ui(root / DEMO_STUDY)
    elif status.resumable:
        st.warning(f"The demo build stopped: {status.message}.")
        if status.log_tail:
            st.code(status.log_tail)
        if st.button("Resume the demo build", type="primary", key="resume_demo"):
            _start_demo(root)
    elif status.state == "finished":
        st.rerun()
    else:
        start = st.button("Build the demo study now", type="primary", key="start_demo")
        if start or not _env_flag("STROKECT_NO_AUTOSTART"):
            _start_demo(root)


@st.fragment(run_every=3)
def _build_progress_ui(study_dir: Path) -> None:
    """The background build's progress, re-read from the study every 3 s; the whole page reruns when it ends."""
    from automl.background import build_status

    status = build_status(study_dir)
    if status.state != "running":
        st.rerun(scope="app")
    st.progress(status.fraction, text=f"Building the demo study in the background: {status.message} "
                                      "(you may close this tab; the build goes on)")
    if status.log_tail:
        with st.expander("Build log (last lines)"):
            st.code(status.log_tail)


def _start_demo(root: Path) -> None:
    """Start (or resume) the demo build detached from this session, then show its progress."""
    from automl.background import start_search
    from automl.search import SearchConfig

    try:
        start_search(SearchConfig(preset="demo", study=DEMO_STUDY, leaderboards=str(root)))
    except Exception as exc:  # noqa: BLE001 - show the reason, keep the page alive
        logger.exception("could not start the demo build")
        st.error(f"The demo build could not start: {exc}")
        return
    st.rerun()


# ==================================================================================== sidebar
def sidebar_ui(root: Path, studies: list[Path]) -> tuple[StudyResults | None, str | None]:
    """Study and model pickers; returns the loaded study (or None after showing why) and the model."""
    sb = st.sidebar
    sb.title("StrokeCT AutoML")
    sb.error("⚠️ " + report.DISCLAIMER)
    names = [p.name for p in studies]
    default = names.index(DEMO_STUDY) if DEMO_STUDY in names else (
        int(np.argmax([results.study_fingerprint(p) for p in studies])) if studies else 0)
    choice = sb.selectbox("Study", names + [OTHER_FOLDER], index=default, key="study")
    if choice == OTHER_FOLDER:
        typed = sb.text_input("Study folder", key="study_path", placeholder="/path/to/leaderboards/<study>")
        if not typed:
            st.info("Type the path of a study folder in the sidebar.")
            return None, None
        study_dir = Path(typed).expanduser()
    else:
        study_dir = root / choice
    try:
        study = _open_study(study_dir)
    except StudyError as exc:
        st.error(f"Cannot open the study: {exc}")
        return None, None
    models = study.refitted_models()
    model = None
    if models:
        best = study.best_model
        model = sb.selectbox("Model", models, index=models.index(best) if best in models else 0, key="model",
                             help="Refitted best configuration of each architecture.")
    else:
        sb.warning("This study has no refitted model yet.")
    sb.caption("Figure downloads: interactive HTML (opens offline)" + (
        "; PNG via kaleido." if _png_export_available() else
        "; PNG through each chart's camera icon (kaleido's PNG export needs Chrome/Chromium)."))
    sb.caption(f"{len(study.leaderboard)} trials · classes {', '.join(study.classes)} · best {study.best_model}")
    sb.download_button("⬇ One-click HTML report", data=lambda: report.build_report(study),
                       file_name=f"strokect_{study.name}_report.html", mime="text/html", key="report",
                       on_click="ignore")
    return study, model


# ==================================================================================== tabs
def verdict_ui(study: StudyResults) -> None:
    """The verdict (large), the warnings and the winner's patient-level figures, read from the study files.

    With a nested evaluation (``--outer-folds``) its pooled estimate is the headline and comes first.
    """
    nested = study.nested
    if nested is not None and nested.verdict:
        st.markdown(f"### {nested.verdict}")
        st.caption(f"Headline: {nested.method} (every patient tested once). The single test part below is a "
                   "second, smaller check.")
    verdict = study.verdict
    if verdict:
        st.markdown(f"### {verdict}")
    else:
        st.info("No verdict recorded: this study was written before the patient-level verdict. Regenerate it with "
                f"`python -m automl.leaderboard --study {study.name}`.")
    for warning in study.warnings:
        st.warning(warning, icon="⚠️")
    row = study.refit_row(study.best_model) if study.best_model else None
    if row is None or "subject_auc" not in row.index:
        return
    classes = study.classes
    note = row.get("subject_note") if isinstance(row.get("subject_note"), str) else ""
    cols = st.columns(4)
    for col, (label, column) in zip(cols, [("Patient-level AUC", "subject_auc"), ("Sensitivity (patients)",
                                           "subject_sensitivity"), ("Specificity (patients)", "subject_specificity")]):
        value = row.get(column)
        low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
        text = "–" if pd.isna(value) else f"{value:.2f}"
        ci = "" if pd.isna(low) or pd.isna(high) else f"95% CI {low:.2f}–{high:.2f}"
        col.metric(label, text, help=ci or note or None)
        col.caption(ci or note or "–")
    pos, neg = row.get("n_test_subjects_pos"), row.get("n_test_subjects_neg")
    if len(classes) == 2 and pd.notna(pos) and pd.notna(neg):
        cols[3].metric(f"Test patients ({classes[1]} / {classes[0]})", f"{int(pos)} / {int(neg)}")
    try:
        label = (study.report.get("selection") or {}).get("label") or "selection score (CV)"  # best of all trials
    except StudyError:
        label = "selection score (CV)"
    threshold = row.get("subject_threshold")
    st.caption(f"{study.best_model}: {label} {row['cv_auc_mean']:.3f} — optimistically biased by the choice, not the "
               f"estimate. Patient rule `{row.get('subject_rule')}` chosen on out-of-fold predictions, threshold "
               f"{'–' if pd.isna(threshold) else f'{threshold:.3f}'} on the calibration part. "
               + ("The nested estimate above uses every patient." if study.nested is not None else
                  "Nested evaluation (`--outer-folds K`) would use every patient; not run for this study."))


def _audit_ui(study: StudyResults) -> None:
    try:
        audit = study.report.get("leakage_audit")
    except StudyError as exc:
        st.warning(f"No study report: {exc}")
        audit = None
    if audit:
        gap = float(audit.get("gap", np.nan))
        limit = float(audit.get("threshold", 0.05))
        text = (f"**Leakage audit** ({audit.get('description', audit.get('method', ''))}): subject-grouped CV AUC "
                f"**{audit.get('grouped_auc', np.nan):.3f}** vs slice-level CV AUC **{audit.get('slice_auc', np.nan):.3f}**"
                f" — gap {gap:+.3f} (flag above {limit:.2f}). {report.leakage_sentence(audit)}")
        cols = st.columns([3, 2])
        with cols[0]:
            if report.leakage_flagged(audit):
                st.error(text, icon="🚨")
            else:
                st.success(text, icon="✅")
        if audit.get("grouped_auc") is not None and audit.get("slice_auc") is not None:
            with cols[1]:
                st.plotly_chart(charts.leakage_chart(audit), key="chart_leakage")
    else:
        st.info("No leakage audit recorded for this study.")


_COLUMN_LABELS = {
    "cv_auc_mean": ("selection score (CV AUC)", "%.3f", "Mean CV AUC: what the search maximised. The best of N trials "
                    "is optimistically biased by that choice: the test and patient columns are the estimates."),
    "cv_auc_std": ("± std", "%.3f", None), "test_auc": ("test AUC (slices)", "%.3f", None),
    "test_auc_ci_low": ("CI low", "%.3f", None), "test_auc_ci_high": ("CI high", "%.3f", None),
    "compare_p": ("p vs best", "%.3g", "Paired test of this model's test AUC against the best model's "
                  "(compare_method: paired cluster bootstrap over patients, or DeLong with one image per patient)."),
    "subject_auc": ("patient AUC", "%.3f", "Patient-level AUC (slices aggregated with subject_rule, chosen on "
                    "out-of-fold predictions). Empty where not estimable: see subject_note."),
    "subject_auc_ci_low": ("patient CI low", "%.3f", None), "subject_auc_ci_high": ("patient CI high", "%.3f", None),
}


def winner_style(table: pd.DataFrame, winner: int | None) -> Any:
    """The leaderboard styled with only the study's winner (its ``trial``) highlighted."""
    return table.style.apply(
        lambda row: ["background-color: rgba(40,167,69,0.18)" if row["trial"] == winner else "" for _ in row], axis=1)


def _leaderboard_table_ui(study: StudyResults, board: pd.DataFrame) -> None:
    table = report.leaderboard_table(board)
    styled = winner_style(table, study.winner_trial)
    formats: dict[str, Any] = {c: st.column_config.NumberColumn(c, format="%.3f") for c in table.columns
                               if pd.api.types.is_float_dtype(table[c]) and c not in ("lr", "weight_decay")}
    formats.update({c: st.column_config.NumberColumn(c, format="%.2e") for c in ("lr", "weight_decay") if c in table})
    formats.update({c: st.column_config.NumberColumn(label, format=fmt, help=help_)
                    for c, (label, fmt, help_) in _COLUMN_LABELS.items() if c in table})
    st.dataframe(styled, hide_index=True, key="leaderboard", column_config={**formats,
        "init": st.column_config.TextColumn("init", help="ImageNet or random initialisation actually used"),
        "best": st.column_config.TextColumn("best", help="★ best trial of its architecture (refitted and tested)"),
    })
    st.caption("Highlighted: the study's winner. ★: best trial of each architecture (the refitted ones carry test "
               "metrics). Empty where not estimable (fewer than two test patients of a class, or fewer than five for an "
               "interval: see subject_note and test_note).")


def leaderboard_ui(study: StudyResults) -> None:
    board = study.leaderboard
    verdict_ui(study)
    _audit_ui(study)
    if board.empty:
        st.info("The leaderboard has no trial yet: the search is still running or found nothing.")
        return
    _leaderboard_table_ui(study, board)
    st.download_button("⬇ Leaderboard CSV", data=(study.dir / "leaderboard.csv").read_bytes(),
                       file_name=f"{study.name}_leaderboard.csv", mime="text/csv", key="leaderboard_csv",
                       on_click="ignore")
    figure_ui(_leaderboard_figure(*_key(study)), f"{study.name}_auc_by_trial", key="leaderboard")


def curves_ui(study: StudyResults, model: str | None) -> None:
    models = study.refitted_models()
    if not models:
        st.info("No refitted model: test and out-of-fold curves appear once the search has refitted its best models.")
        return
    selected = st.multiselect("Models", models, default=models, key="curve_models")
    positive = _positive_ui(study, "curve_positive")
    part = st.radio("Predictions", ["Test part", "Out-of-fold (per fold)"], horizontal=True, key="curve_part")
    if not selected:
        st.info("Select at least one model.")
        return
    if part == "Test part":
        figures = _curve_figures(*_key(study), tuple(selected), positive)
        for name, fig in figures.items():
            figure_ui(fig, f"{study.name}_test_{name}", key=f"test_{name}")
        subject = _subject_figure(*_key(study), tuple(selected), positive)
        if subject is not None:
            st.subheader("Subject level")
            figure_ui(subject, f"{study.name}_subject_roc", key="subject_roc")
    else:
        for m in selected:
            st.subheader(m)
            for name, fig in _oof_figures(*_key(study), m, positive).items():
                figure_ui(fig, f"{study.name}_oof_{m}_{name}", key=f"oof_{m}_{name}")


def confusion_ui(study: StudyResults, model: str | None) -> None:
    from automl.metrics import binary_metrics_at_threshold

    if model is None:
        st.info("No refitted model in this study.")
        return
    part = st.radio("Predictions", ["Test part", "Calibration part", "Out-of-fold"], horizontal=True, key="cm_part",
                    help="Test part: scored once. Calibration part: held-out CV images on which the refitted "
                         "model's threshold was chosen. Out-of-fold: the CV fold models (other fits, so the "
                         "chosen threshold may not suit their probability scale).")
    frame = {"Test part": study.test_predictions, "Calibration part": study.calibration_predictions,
             "Out-of-fold": study.oof_predictions}[part](model)
    P = frame[results.probability_columns(study.classes)].to_numpy(dtype=float)
    y = frame["y"].to_numpy(dtype=int)
    if len(study.classes) > 2:
        st.caption("Multiclass: each image goes to its most probable class (argmax).")
        figure_ui(charts.confusion_chart(y, P.argmax(axis=1), study.classes, title=f"{model} — {part} (argmax)"),
                  f"{study.name}_{model}_confusion", key="confusion")
        return
    chosen = study.threshold(model)
    chosen = 0.5 if not np.isfinite(chosen) else float(np.clip(chosen, 0.0, 1.0))
    key = f"threshold_{model}"
    st.session_state.setdefault(key, round(chosen, 3))  # the slider's value lives in session state (reset below)
    cols = st.columns([5, 1], vertical_alignment="bottom")
    threshold = cols[0].slider(f"Decision threshold on P({study.classes[1]})", 0.0, 1.0, step=0.001, format="%.3f",
                               key=key, help=f"Default: the threshold chosen on the calibration part ({chosen:.3f}).")
    cols[1].button("↺ Chosen threshold", key=f"reset_{key}", on_click=_set_state, args=(key, round(chosen, 3)),
                   disabled=threshold == round(chosen, 3), help=f"Back to the threshold chosen on the calibration part ({chosen:.3f}).")
    m = binary_metrics_at_threshold(y, P[:, 1], threshold)
    cols = st.columns(4)
    cols[0].metric("Sensitivity", _pct(m["sensitivity"]))
    cols[1].metric("Specificity", _pct(m["specificity"]))
    cols[2].metric("PPV", _pct(m["precision"]))
    cols[3].metric("NPV", _pct(m["npv"]))
    cols = st.columns(4)
    for col, (label, k) in zip(cols, [("True positives", "tp"), ("False negatives", "fn"),
                                      ("False positives", "fp"), ("True negatives", "tn")]):
        col.metric(label, int(m[k]))
    pred = (P[:, 1] >= threshold).astype(int)  # the rule of binary_metrics_at_threshold
    figure_ui(charts.confusion_chart(y, pred, study.classes, title=f"{model} — {part}, threshold {threshold:.3f}"),
              f"{study.name}_{model}_confusion", key="confusion")


def _image_source_ui(study: StudyResults, model: str) -> tuple[str, bytes | None, str | None, str] | None:
    """Pick the image to explain. Returns ``(source, payload, relative path, caption)``."""
    test = study.test_predictions(model)
    P = test[results.probability_columns(study.classes)].to_numpy(dtype=float)
    y = test["y"].to_numpy(dtype=int)
    if len(study.classes) == 2:
        pred = (P[:, 1] >= study.threshold(model)).astype(int)
        sources = ["Test part", "False negatives", "False positives", "Upload"]
    else:
        pred = P.argmax(axis=1)
        sources = ["Test part", "Misclassified", "Upload"]
    source = st.radio("Image", sources, horizontal=True, key="att_source")
    if source == "Upload":
        upload = st.file_uploader("CT slice (PNG, JPEG, TIFF or DICOM)", key="att_upload",
                                  type=["png", "jpg", "jpeg", "tif", "tiff", "dcm", "dicom"])
        if upload is None:
            st.info("Upload an image to explain.")
            return None
        payload = upload.getvalue()
        return f"upload:{hashlib.sha1(payload).hexdigest()}", payload, None, upload.name
    mask = {"Test part": np.ones(len(test), bool), "False negatives": (y == 1) & (pred == 0),
            "False positives": (y == 0) & (pred == 1), "Misclassified": y != pred}[source]
    rows = test[mask]
    if rows.empty:
        st.success(f"No {source.lower()} in the test part at this model's threshold.")
        return None
    data_dir = study.data_dir
    if data_dir is None or not data_dir.is_dir():
        st.warning(f"The study's data folder `{data_dir}` is not available here; upload an image instead.")
        return None
    if source != "Test part":
        paths = tuple(rows["path"].astype(str).head(12))
        thumbs = _sample_images(str(data_dir), paths)
        st.image(thumbs, caption=[f"{Path(p).name} · P={v:.2f}" for p, v in
                                  zip(paths, rows[f"prob_{study.classes[-1]}"].head(12))], width=96)
    labels = [f"{r.path} — true {r.label}, P({study.classes[-1]})={getattr(r, 'prob_' + study.classes[-1]):.2f}"
              if hasattr(r, "label") else str(r.path) for r in rows.itertuples()]
    index = st.selectbox("Image", range(len(rows)), format_func=lambda i: labels[i], key=f"att_image_{source}")
    rel = str(rows["path"].iloc[index])
    return str(data_dir / rel), None, rel, labels[index]


def attributions_ui(study: StudyResults, model: str | None) -> None:
    if model is None:
        st.info("No refitted model in this study.")
        return
    from models.attribution import applicable_methods, overlay

    card = study.card(model)
    registry_name = str(card.get("model", model))
    deep = [m for m in study.refitted_models() if study.card(m).get("kind", "deep") == "deep"]
    if card.get("kind") == "classical" or not applicable_methods(registry_name):
        if not deep:
            st.info(f"{model} is a classical baseline and this study has no deep model: pixel attributions need one.")
            return
        st.info(f"{model} is a classical baseline (no pixel attributions): showing {deep[0]}, the best deep model. "
                "Pick another in the sidebar.")
        model = deep[0]
        card = study.card(model)
        registry_name = str(card.get("model", model))
    picked = _image_source_ui(study, model)
    if picked is None:
        return
    source, payload, rel, caption = picked
    methods_all = applicable_methods(registry_name, image_size=card.get("image_size"))  # best first
    cols = st.columns(3)
    target = cols[2].selectbox("Explain the class", ["predicted"] + study.classes, key="att_target",
                               help="Evidence for which class the map shows (default: the predicted one).")
    target = None if target == "predicted" else target
    methods = cols[0].multiselect("Methods", methods_all, default=methods_all[:1], key="att_methods",
                                  help="The first is the one that fits this model best: integrated gradients "
                                       "where Grad-CAM's map would be coarser than 4x4 (stride-32 backbones at 64 px).")
    others = cols[1].multiselect("Compare with models (Grad-CAM or the first method)",
                                 [m for m in deep if m != model], key="att_models")
    if not methods:
        st.info("Select at least one method.")
        return
    jobs = [(model, meth) for meth in methods] + [(o, methods[0]) for o in others
                                                   if methods[0] in applicable_methods(str(study.card(o).get("model", o)))]
    lesion = None
    if rel is not None and study.data_dir is not None:
        from data.phantom import load_mask

        lesion = load_mask(study.data_dir, rel)
    overlays, scores, signed, image, lines = {}, {}, {}, None, []
    chosen_target = target
    for m, meth in jobs:
        folder = study.model_dir(m)
        att = _explain(str(folder), max(p.stat().st_mtime for p in folder.iterdir()), source, payload, meth, target)
        target = att.target_name  # one class for the whole row: the first map's (the model's prediction by default)
        name = meth if m == model else f"{m} · {meth}"
        image = att.image if image is None else image
        overlays[name] = overlay(att.image, att.heatmap, signed=att.signed)
        signed[name] = bool(att.signed)
        precision = " (bf16)" if att.params.get("precision") == "bf16" else ""
        lines.append(f"**{name}**: P({att.target_name}) = {att.probability:.3f}, {att.seconds * 1000:.0f} ms{precision}")
        if lesion is not None and lesion.any():
            from models.attribution_eval import mass_in_mask, pointing_game

            mask_s = _resize_mask(lesion, att.heatmap.shape[0])
            if mask_s.any():
                scores[name] = (f"pointing {pointing_game(att.heatmap, mask_s):.0f} · "
                                f"mass in lesion {mass_in_mask(att.heatmap, mask_s):.0%}")
    mask_s = _resize_mask(lesion, image.shape[0]) if lesion is not None and lesion.any() else None
    fig = charts.attribution_figure(image, overlays, mask=mask_s, scores=scores, title=caption, signed=signed)
    figure_ui(fig, f"{study.name}_{model}_attribution", key="attribution")
    st.caption(f"Every map explains the class **{target}**"
               + (" (chosen above)." if chosen_target is not None else f" ({model}'s prediction for this image).")
               + " Each map is scaled by its own 99th percentile of |attribution| (colour bar): compare where, "
                 "not how much.")
    st.markdown(" · ".join(lines))
    if mask_s is not None:
        st.caption("Green outline: the phantom's true lesion mask. Pointing game = 1 when the map's maximum lies inside "
                   "the lesion; mass = share of positive attribution inside it.")
    if study.attribution is not None:
        st.subheader("Localisation and sanity checks over the test part (attribution.csv)")
        st.dataframe(study.attribution, hide_index=True)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    import data

    return data.resize_pad(mask.astype(np.float32), size) > 0.5


def data_ui(study: StudyResults) -> None:
    split = study.split
    cfg = study.config
    n_subjects = split["subject"].nunique() if "subject" in split.columns else None
    cols = st.columns(4)
    cols[0].metric("Images", len(split))
    cols[1].metric("Subjects", n_subjects if n_subjects is not None else "–")
    cols[2].metric("Test images", int((split["part"] == "test").sum()))
    cols[3].metric("Grouping", str(cfg.get("subject_source") or "–"))
    figure_ui(charts.class_count_chart(split), f"{study.name}_class_counts", key="class_counts")
    if n_subjects:
        per_subject = split.groupby("subject").agg(slices=("path", "size"), label=("label", "first")).reset_index()
        st.caption(f"Subject grouping `{cfg.get('subject_source')}`: {n_subjects} subjects, "
                   f"{per_subject['slices'].median():.0f} slices per subject (median, max {per_subject['slices'].max()}). "
                   "No subject appears in two folds or in both CV and test.")
    data_dir = study.data_dir
    if data_dir is not None and data_dir.is_dir():
        per_class = int(st.number_input("Samples per class", 1, 12, 6, key="samples_per_class"))
        picks = split.groupby("label", sort=True).head(per_class)
        images = _sample_images(str(data_dir), tuple(picks["path"].astype(str)))
        figure_ui(charts.sample_grid(images, [f"{r.label}<br>{Path(r.path).name}" for r in picks.itertuples()],
                                     ncols=per_class, title="Samples per class"),
                  f"{study.name}_samples", key="samples")
    else:
        st.info(f"The data folder `{data_dir}` is not available here: no sample images.")
    try:
        manifest = study.manifest
    except StudyError as exc:
        st.warning(str(exc))
        manifest = None
    if manifest is not None:
        cols = st.columns(2)
        for col, column, title in ((cols[0], "mean", "Mean intensity (windowed, 0–1)"), (cols[1], "sharpness", "Sharpness")):
            if column in manifest.columns:
                with col:
                    figure_ui(charts.distribution_chart(manifest, column, title=title), f"{study.name}_{column}",
                              key=f"dist_{column}")
    try:
        quality = study.quality
    except StudyError as exc:
        st.warning(str(exc))
        quality = {}
    for warning in quality.get("warnings") or []:
        st.warning(str(warning))
    if isinstance(quality.get("class_counts"), list) and quality["class_counts"]:
        st.dataframe(pd.DataFrame(quality["class_counts"]), hide_index=True)
    summary = quality.get("summary") or {}
    if summary.get("n_volumes") or summary.get("n_skipped_volumes"):
        problems = ", ".join(f"{k} {n}" for k, n in (summary.get("volume_problems") or {}).items()) or "none"
        st.caption(f"CT volumes: {summary.get('n_volumes', 0)} read ({summary.get('n_volumes_dicom', 0)} DICOM series, "
                   f"{summary.get('n_volumes_nifti', 0)} NIfTI), {summary.get('n_skipped_volumes', 0)} skipped "
                   f"(problems: {problems}); slices per volume median {summary.get('slices_per_volume_median')}, "
                   f"{summary.get('volume_slices_kept', 0)} kept.")
    for key, title in (("intensity", "Intensity per class"), ("sharpness", "Sharpness per class"),
                       ("subjects", "Slices per subject, per class"), ("volumes", "Volumes (DICOM series, NIfTI)")):
        if isinstance(quality.get(key), list) and quality[key]:
            with st.expander(title):
                st.dataframe(pd.DataFrame(quality[key]), hide_index=True)
    for key, title in (("duplicates", "Exact duplicates"), ("near_duplicates", "Near duplicates (perceptual hash)"),
                       ("conflicts", "Conflicting labels")):
        value = quality.get(key)
        count = len(value) if isinstance(value, (list, dict)) else 0
        with st.expander(f"{title}: {count}", expanded=False):
            if count:
                st.dataframe(pd.DataFrame(value) if isinstance(value, list) else pd.DataFrame([value]), hide_index=True)
            else:
                st.write("None found.")
    bad = study.bad_files
    with st.expander(f"Unreadable files: {len(bad)}"):
        st.dataframe(bad, hide_index=True) if len(bad) else st.write("None.")
    if quality:
        with st.expander("Full quality report (quality.json)"):
            st.json(quality, expanded=False)


def search_ui(study: StudyResults) -> None:
    from optuna import visualization as vis
    from optuna.trial import TrialState

    optuna_study = study.load_optuna_study()
    trials = optuna_study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    states = pd.Series([t.state.name for t in trials]).value_counts().to_dict()
    st.caption("Trials by state: " + ", ".join(f"{k} {v}" for k, v in states.items()) + f" — storage `{study.storage_url}`")
    if not complete:
        st.info("No complete trial yet.")
        return
    figure_ui(vis.plot_optimization_history(optuna_study), f"{study.name}_history", key="history")
    if len(complete) >= 2 and any(t.params for t in complete):
        _importances_ui(study, optuna_study, complete)
    else:
        st.info("Parameter importances need at least two complete trials with parameters.")
    figure_ui(vis.plot_parallel_coordinate(optuna_study), f"{study.name}_parallel", key="parallel")
    if any(t.intermediate_values for t in trials):
        st.caption("Intermediate values: the running mean of validation AUC over folds and epochs (pruned trials "
                   "stop early).")
        figure_ui(vis.plot_intermediate_values(optuna_study), f"{study.name}_intermediate", key="intermediate")


#: Fewer complete trials than this: the parameter importances are called rough on the page.
FEW_TRIALS_FOR_IMPORTANCE = 20


def _importances_ui(study: StudyResults, optuna_study: Any, complete: list[Any]) -> None:
    """Optuna's parameter importances, with Optuna's own warnings (e.g. "may be inaccurate") shown on the page."""
    import warnings

    from optuna import visualization as vis

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fig = vis.plot_param_importances(optuna_study)
        except (ValueError, RuntimeError) as exc:
            st.info(f"Parameter importances are not available yet: {exc}")
            return
    messages = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    n_models = len({t.params.get("model") for t in complete})
    few = len(complete) < FEW_TRIALS_FOR_IMPORTANCE
    if few or messages:
        st.warning(f"Rough estimate: parameter importances from {len(complete)} complete trial(s) of {n_models} "
                   "model(s)" + (f", fewer than {FEW_TRIALS_FOR_IMPORTANCE}: the ranking may change with more trials "
                                 "(a parameter that only some models have is judged on their trials alone)." if few
                                 else ".")
                   + "".join(f"\n\n- Optuna: {m}" for m in messages), icon="⚠️")
    figure_ui(fig, f"{study.name}_importances", key="importances")


def live_ui(study: StudyResults, model: str | None) -> None:
    if model is None:
        st.info("No refitted model in this study.")
        return
    embedded = False
    if _env_flag("STROKECT_NO_GRADIO"):
        st.info("The embedded Gradio app is disabled (STROKECT_NO_GRADIO=1): native predictor below.")
    else:
        url, reason = _gradio_server(str(study.dir))
        host = (st.context.headers.get("Host") or "localhost").rsplit(":", 1)[0].strip("[]")
        if url is None:
            st.warning(f"The Gradio app could not start ({reason}); native predictor below.")
        elif host in ("localhost", "127.0.0.1", "::1"):
            st.iframe(url, height=GRADIO_FRAME_HEIGHT)
            embedded = True
            st.link_button("Open the Gradio app in its own tab", url)
        else:
            st.info(f"The Gradio app runs on this server's loopback ({url}), which your browser cannot reach from "
                    f"`{host}`: run `python app.py` for the standalone app, or use the native predictor below.")
    with st.expander("Native predictor (no Gradio)", expanded=not embedded):
        upload = st.file_uploader("CT slice (PNG, JPEG, TIFF or DICOM)", key="live_upload",
                                  type=["png", "jpg", "jpeg", "tif", "tiff", "dcm", "dicom"])
        if upload is None:
            return
        from models import InvalidInputError

        predictor = _study_predictor(study, model)
        try:
            result = predictor.predict(upload.getvalue())
        except InvalidInputError as exc:
            st.error(f"This file cannot be used: {exc}")
            return
        probs = result["probabilities"]
        threshold = study.threshold(model)
        cols = st.columns([1, 2])
        seen = predictor.preprocess(upload.getvalue())[0, 0].cpu().numpy()  # a window set: its first window
        cols[0].image(seen, caption="What the model saw",
                      clamp=True, width=200)
        binary = len(study.classes) == 2 and np.isfinite(threshold)
        bar = charts.probability_bar(probs, title=f"{model}: {result['label']}", threshold=threshold if binary else None,
                                     positive=study.classes[1] if binary else None)
        with cols[1]:
            st.plotly_chart(bar, key="live_probabilities")
        st.caption(report.DISCLAIMER)


# ==================================================================================== main
def main() -> None:
    """The Streamlit page (``streamlit run app.py``)."""
    st.set_page_config(page_title="StrokeCT AutoML", page_icon="🧠", layout="wide")
    root = leaderboards_root()
    # a study is shown once its leaderboard exists; until then the page shows the (background) demo build
    studies = [p for p in results.list_studies(root) if StudyFolder(p).leaderboard_csv.is_file()]
    if not studies:
        st.sidebar.title("StrokeCT AutoML")
        st.sidebar.error("⚠️ " + report.DISCLAIMER)
        demo_ui(root)
        return
    study, model = sidebar_ui(root, studies)
    if study is None:
        return
    st.title(f"Study `{study.name}`")
    st.caption(f"{report.DISCLAIMER} Every number below is read from `{study.dir}`.")
    tabs = st.tabs(TABS, key="tab", on_change="rerun")
    views: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
        (leaderboard_ui, (study,)), (curves_ui, (study, model)), (confusion_ui, (study, model)),
        (attributions_ui, (study, model)), (data_ui, (study,)), (search_ui, (study,)), (live_ui, (study, model)),
    ]
    for tab, (view, args) in zip(tabs, views):
        if tab.open is False:  # lazy tabs: only the open one runs (None = state not tracked: run all)
            continue
        with tab:
            _guard(view, *args)


if __name__ == "__main__":  # `streamlit run ui/dashboard.py` works too
    main()
