"""Plotly figure builders for the dashboard and the HTML report.

Every builder is a pure function: plain arrays / DataFrames read from a study folder in, a
:class:`plotly.graph_objects.Figure` out. Curves come from scikit-learn (``roc_curve``,
``precision_recall_curve``, ``calibration_curve``, ``confusion_matrix``); calibration error from
:mod:`automl.metrics`. Nothing here trains a model or reads a file.

Example::

    from ui import charts
    y, p = charts.binary_series(study.test_predictions("resnet18"), study.classes)
    charts.roc_chart({"resnet18": (y, p)}).show()
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    auc,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from automl import metrics as _metrics
from automl.verdict import not_estimable_text

__all__ = [
    "attribution_figure",
    "binary_series",
    "class_count_chart",
    "estimable_rows",
    "confusion_chart",
    "cv_roc_chart",
    "distribution_chart",
    "figure_to_html",
    "leaderboard_chart",
    "leakage_chart",
    "pr_chart",
    "probability_bar",
    "reliability_chart",
    "roc_chart",
    "sample_grid",
    "slice_strip",
]

logger = logging.getLogger(__name__)

_PALETTE = px.colors.qualitative.Plotly
_TEMPLATE = "plotly_white"
Curves = Mapping[str, tuple[Any, Any]]


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[k:k + 2], 16) for k in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _check_binary(name: str, y: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).ravel()
    score = np.asarray(score, dtype=float).ravel()
    if y.shape != score.shape:
        raise ValueError(f"{name!r}: y has {y.size} values but the scores have {score.size}.")
    if y.size == 0:
        raise ValueError(f"{name!r}: no predictions.")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"{name!r}: y must be binary 0/1, found {sorted(set(np.unique(y)))[:5]}.")
    if not np.isfinite(score).all():
        raise ValueError(f"{name!r}: scores hold non-finite values.")
    return y, score


def binary_series(
    predictions: pd.DataFrame, classes: Sequence[str], positive: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest target and score of a prediction table.

    Args:
        predictions: A table with ``y`` (class index) and ``prob_<class>`` columns.
        classes: Class names in index order.
        positive: The class treated as positive; default ``classes[1]`` for binary tasks,
            ``classes[-1]`` otherwise.

    Returns:
        ``(y, score)``: ``y`` is 1 where the true class is ``positive``; ``score`` its probability.
    """
    classes = list(classes)
    positive = positive if positive is not None else classes[1 if len(classes) == 2 else -1]
    if positive not in classes:
        raise ValueError(f"Unknown positive class {positive!r}; classes are {classes}.")
    column = f"prob_{positive}"
    if column not in predictions.columns or "y" not in predictions.columns:
        raise ValueError(f"Prediction table needs 'y' and {column!r}; found {list(predictions.columns)}.")
    y = (predictions["y"].to_numpy(dtype=int) == classes.index(positive)).astype(int)
    return y, predictions[column].to_numpy(dtype=float)


# ---------------------------------------------------------------------------- leaderboard
def _interval_trace(rows: pd.DataFrame, column: str, name: str, color: str, symbol: str) -> go.Scatter:
    """Points of ``column`` with their ``<column>_ci_low``/``_ci_high`` error bars (missing ends: no bar)."""
    labels = [f"{m} #{int(t)}" for m, t in zip(rows["model"], rows["trial"])]
    value = rows[column].astype(float)
    lo = value - rows.get(f"{column}_ci_low", value).astype(float)
    hi = rows.get(f"{column}_ci_high", value).astype(float) - value
    return go.Scatter(
        x=labels, y=value, mode="markers", name=name, marker=dict(size=11, symbol=symbol, color=color),
        error_y=dict(type="data", symmetric=False, array=hi.fillna(0).to_numpy(float),
                     arrayminus=lo.fillna(0).to_numpy(float), visible=True),
        hovertemplate="%{x}<br>" + name + " %{y:.3f}<extra></extra>",
    )


def estimable_rows(rows: pd.DataFrame) -> pd.Series:
    """Rows whose test part has two or more subjects of each class (all rows when the counts are unknown)."""
    if "n_test_subjects_pos" not in rows.columns or "n_test_subjects_neg" not in rows.columns:
        return pd.Series(True, index=rows.index)
    slice_cols = ["n_test_slice_subjects_pos", "n_test_slice_subjects_neg"]  # patients holding slices of each class
    columns = slice_cols if set(slice_cols) <= set(rows.columns) else ["n_test_subjects_pos", "n_test_subjects_neg"]
    counts = rows[columns].astype(float)
    return counts.isna().any(axis=1) | (counts.min(axis=1) >= 2)


def leaderboard_chart(leaderboard: pd.DataFrame, *, max_rows: int = 30) -> go.Figure:
    """Selection score (CV AUC mean ± std) of every finished trial; test and patient-level AUC of refitted ones.

    The CV AUC is what the search maximised: the best of many is optimistic, so it is labelled a
    selection score; the test part (slices, intervals resampling subjects) and the patient-level AUC
    are the estimates. A test figure with fewer than two subjects of a class is not drawn.

    Args:
        leaderboard: ``leaderboard.csv`` as read by :func:`automl.results.load_study`.
        max_rows: Show at most this many trials (best rank first).

    Returns:
        A figure with the traces ``"Selection score: CV AUC (mean ± std)"`` and, when present,
        ``"Test AUC, slices (95% CI)"`` and ``"Patient-level AUC (95% CI)"``.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}.")
    board = leaderboard[leaderboard["cv_auc_mean"].notna()].copy()
    if "rank" in board.columns:
        board = board.sort_values("rank", kind="stable")
    board = board.head(max_rows)
    init = board["init"].astype(str) if "init" in board.columns else pd.Series("?", index=board.index)
    labels = [f"{m} #{int(t)}" for m, t in zip(board["model"], board["trial"])]
    std = board["cv_auc_std"].fillna(0.0) if "cv_auc_std" in board.columns else np.zeros(len(board))
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=labels, y=board["cv_auc_mean"], mode="markers", name="Selection score: CV AUC (mean ± std)",
        error_y=dict(type="data", array=np.asarray(std, dtype=float), visible=True),
        marker=dict(size=9, color=_color(0)),
        customdata=np.stack([init, np.asarray(std, dtype=float)], axis=1) if len(board) else None,
        hovertemplate="%{x}<br>CV AUC %{y:.3f} ± %{customdata[1]:.3f}<br>init %{customdata[0]}<extra></extra>",
    ))
    estimable = estimable_rows(board)
    if "test_auc" in board.columns and (board["test_auc"].notna() & estimable).any():
        fig.add_trace(_interval_trace(board[board["test_auc"].notna() & estimable], "test_auc",
                                      "Test AUC, slices (95% CI)", _color(1), "diamond"))
    if "subject_auc" in board.columns and board["subject_auc"].notna().any():
        fig.add_trace(_interval_trace(board[board["subject_auc"].notna()], "subject_auc",
                                      "Patient-level AUC (95% CI)", _color(2), "star"))
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance")
    fig.update_layout(template=_TEMPLATE, title="AUC by trial", yaxis_title="AUC", xaxis_title="model #trial",
                      legend=dict(orientation="h", y=1.02, x=0, yanchor="bottom"))
    fig.update_xaxes(categoryorder="array", categoryarray=labels)
    return fig


# ---------------------------------------------------------------------------- ROC / PR
def _class_counts(y: np.ndarray, groups: Any | None) -> tuple[int, int]:
    """``(negatives, positives)``: subjects per class when ``groups`` (subject ids) is given, else images.

    A subject's class is its highest label (any positive slice makes a positive subject).
    """
    if groups is None:
        return int((y == 0).sum()), int((y == 1).sum())
    ids = pd.Series(np.asarray(groups).astype(str).ravel())
    if len(ids) != len(y):
        raise ValueError(f"subject ids: {len(ids)} for {len(y)} predictions.")
    per_subject = pd.Series(y).groupby(ids.to_numpy()).max()
    return int((per_subject == 0).sum()), int((per_subject == 1).sum())


def roc_chart(curves: Curves, *, title: str = "ROC curve", subjects: Mapping[str, Any] | None = None,
              class_names: Sequence[str] = ("negative", "positive"), unit: str = "patient") -> go.Figure:
    """ROC curves with the AUC in each legend entry; "not estimable" where a class has fewer than two subjects.

    Args:
        curves: ``{name: (y, score)}`` with binary ``y`` (1 = positive class).
        title: Figure title.
        subjects: Optional ``{name: subject ids}`` (one per row of that curve); without it every row
            counts as its own subject (e.g. curves already aggregated per patient).
        class_names: ``(negative, positive)`` names for the counts.
        unit: Noun of a subject in the counts.

    Returns:
        One trace per curve named ``"<name> (AUC 0.873)"`` plus the chance diagonal. A curve with fewer
        than two subjects of a class is a legend entry ``"<name>: not estimable (n = 1 stroke / 7 normal
        patients)"`` (:func:`automl.verdict.not_estimable_text`) and no line: its AUC would be 0 or 1 by
        chance of one patient, never an estimate.
    """
    if not curves:
        raise ValueError("roc_chart needs at least one curve.")
    fig = go.Figure()
    single_class = []
    for i, (name, (y, score)) in enumerate(curves.items()):
        y, score = _check_binary(name, y, score)
        n_neg, n_pos = _class_counts(y, (subjects or {}).get(name))
        if min(n_neg, n_pos) == 0:
            single_class.append(name)
        if min(n_neg, n_pos) < 2:
            _not_estimable_trace(fig, name, (n_neg, n_pos), class_names, unit, i)
            continue
        fpr, tpr, thr = roc_curve(y, score)
        value = roc_auc_score(y, score)
        fig.add_trace(go.Scatter(
            x=fpr, y=tpr, mode="lines", name=f"{name} (AUC {value:.3f})", line=dict(color=_color(i), width=2),
            customdata=np.clip(thr, 0, 1), hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<br>threshold %{customdata:.3f}",
        ))
    if len(single_class) == len(curves):
        raise ValueError(f"No ROC curve can be drawn: every series of {list(curves)} holds a single class.")
    _diagonal(fig)
    fig.update_layout(template=_TEMPLATE, title=title, xaxis_title="False positive rate (1 - specificity)",
                      yaxis_title="True positive rate (sensitivity)")
    _legend_below(fig)
    fig.update_xaxes(range=[0, 1], constrain="domain")
    fig.update_yaxes(range=[0, 1.02], scaleanchor="x", scaleratio=1)
    return fig


def _legend_below(fig: go.Figure) -> None:
    """Horizontal legend under the plot, so long entries never cover the curves of a small figure."""
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.18, yanchor="top"),
                      margin=dict(b=40))


def _diagonal(fig: go.Figure) -> None:
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", showlegend=False,
                             line=dict(color="grey", dash="dash", width=1), hoverinfo="skip"))


def cv_roc_chart(y: Any, score: Any, folds: Any, *, name: str = "model", title: str | None = None) -> go.Figure:
    """Out-of-fold ROC: one thin curve per fold, the mean curve and a ± 1 std band.

    The mean follows scikit-learn's cross-validated ROC example: each fold's TPR is interpolated on a
    common FPR grid, then averaged.

    Args:
        y: Binary targets of the out-of-fold predictions.
        score: Positive-class probabilities.
        folds: Fold index of each prediction.
        name: Model name used in the legend.
        title: Figure title (default ``"Out-of-fold ROC — <name>"``).

    Returns:
        Traces ``"fold k/K (AUC …)"`` per fold (numbered from 1), ``"± 1 std"`` and ``"<name> mean (AUC m ± s)"``.
    """
    y, score = _check_binary(name, y, score)
    folds = np.asarray(folds).ravel()
    if folds.shape != y.shape:
        raise ValueError(f"folds has {folds.size} values but y has {y.size}.")
    grid = np.linspace(0, 1, 101)
    tprs, aucs = [], []
    fig = go.Figure()
    fold_ids = np.unique(folds)
    for i, k in enumerate(fold_ids):
        m = folds == k
        if len(np.unique(y[m])) < 2:
            logger.warning("fold %s of %s has one class only: skipped in the ROC", k, name)
            continue
        fpr, tpr, _ = roc_curve(y[m], score[m])
        value = auc(fpr, tpr)
        aucs.append(value)
        interp = np.interp(grid, fpr, tpr)
        interp[0] = 0.0
        tprs.append(interp)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"fold {i + 1}/{len(fold_ids)} (AUC {value:.3f})",
                                 line=dict(width=1), opacity=0.45))
    if not tprs:
        raise ValueError(f"{name!r}: no fold holds both classes; cannot draw a ROC curve.")
    mean_tpr = np.mean(tprs, axis=0)
    mean_tpr[-1] = 1.0
    std_tpr = np.std(tprs, axis=0)
    upper, lower = np.minimum(mean_tpr + std_tpr, 1), np.maximum(mean_tpr - std_tpr, 0)
    band = _rgba(_color(0), 0.2)
    fig.add_trace(go.Scatter(x=np.r_[grid, grid[::-1]], y=np.r_[upper, lower[::-1]], fill="toself",
                             fillcolor=band, line=dict(width=0), name="± 1 std", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=grid, y=mean_tpr, mode="lines", line=dict(color=_color(0), width=3),
                             name=f"{name} mean (AUC {auc(grid, mean_tpr):.3f} ± {np.std(aucs):.3f})"))
    _diagonal(fig)
    fig.update_layout(template=_TEMPLATE, title=title or f"Out-of-fold ROC — {name}",
                      xaxis_title="False positive rate", yaxis_title="True positive rate")
    _legend_below(fig)
    fig.update_xaxes(range=[0, 1], constrain="domain")
    fig.update_yaxes(range=[0, 1.02], scaleanchor="x", scaleratio=1)
    return fig


def _not_estimable_trace(fig: go.Figure, name: str, counts: tuple[int, int], class_names: Sequence[str],
                         unit: str, i: int) -> None:
    """A legend entry ``"<name>: not estimable (n = …)"`` and no line."""
    reason = not_estimable_text({class_names[0]: counts[0], class_names[1]: counts[1]}, unit=unit)
    logger.info("curve of %s: %s", name, reason)
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"{name}: {reason}",
                             line=dict(color=_color(i), width=2, dash="dot"), hoverinfo="skip"))


def pr_chart(curves: Curves, *, title: str = "Precision–recall curve", subjects: Mapping[str, Any] | None = None,
             class_names: Sequence[str] = ("negative", "positive"), unit: str = "patient") -> go.Figure:
    """Precision–recall curves with average precision (AP) in each legend entry.

    Args:
        curves: ``{name: (y, score)}`` with binary ``y``.
        title: Figure title.
        subjects: Optional ``{name: subject ids}``, as in :func:`roc_chart`.
        class_names: ``(negative, positive)`` names for the counts.
        unit: Noun of a subject in the counts.

    Returns:
        One trace per curve named ``"<name> (AP 0.812)"`` plus the prevalence line of the first curve; a
        curve with fewer than two subjects of a class is a "not estimable (n = …)" legend entry.
    """
    if not curves:
        raise ValueError("pr_chart needs at least one curve.")
    fig = go.Figure()
    prevalence = None
    for i, (name, (y, score)) in enumerate(curves.items()):
        y, score = _check_binary(name, y, score)
        if y.sum() == 0:
            logger.warning("PR of %s skipped: no positive sample", name)
            continue
        prevalence = prevalence if prevalence is not None else float(y.mean())
        counts = _class_counts(y, (subjects or {}).get(name))
        if min(counts) < 2:
            _not_estimable_trace(fig, name, counts, class_names, unit, i)
            continue
        precision, recall, _ = precision_recall_curve(y, score)
        ap = average_precision_score(y, score)
        fig.add_trace(go.Scatter(x=recall, y=precision, mode="lines", line=dict(color=_color(i), width=2, shape="hv"),
                                 name=f"{name} (AP {ap:.3f})"))
    if prevalence is None:
        raise ValueError(f"No precision-recall curve can be drawn: no series of {list(curves)} has a positive sample.")
    else:
        fig.add_hline(y=prevalence, line_dash="dash", line_color="grey",
                      annotation_text=f"prevalence {prevalence:.2f}")
    fig.update_layout(template=_TEMPLATE, title=title, xaxis_title="Recall (sensitivity)",
                      yaxis_title="Precision (PPV)")
    _legend_below(fig)
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig


def _bin_counts(score: np.ndarray, n_bins: int) -> np.ndarray:
    """Images in each non-empty equal-width bin, in the order of ``calibration_curve(strategy="uniform")``."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], score), minlength=n_bins)
    return counts[counts > 0]


def reliability_chart(curves: Curves, *, n_bins: int = 10, title: str = "Reliability diagram") -> go.Figure:
    """Reliability diagram (observed frequency vs mean predicted probability) with ECE, Brier and bin counts.

    A bin of three images says little: every point carries its image count (hover: ``n = …``) and a
    bar chart of the counts per bin sits under the diagram (shared probability axis).

    Args:
        curves: ``{name: (y, score)}`` with binary ``y``.
        n_bins: Number of equal-width probability bins (as for the ECE).
        title: Figure title.

    Returns:
        Per curve, a line named ``"<name> (ECE 0.041, Brier 0.118)"`` (``customdata`` = images per
        non-empty bin) and a bar trace ``"<name>: images per bin"`` below; the diagonal comes last.
    """
    if not curves:
        raise ValueError("reliability_chart needs at least one curve.")
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}.")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25], vertical_spacing=0.05)
    for i, (name, (y, score)) in enumerate(curves.items()):
        y, score = _check_binary(name, y, score)
        prob_true, prob_pred = calibration_curve(y, score, n_bins=n_bins, strategy="uniform")
        counts = _bin_counts(score, n_bins)
        ece = float(_metrics.expected_calibration_error(y, score, n_bins=n_bins))
        brier = float(_metrics.brier_score(y, score))
        fig.add_trace(go.Scatter(
            x=prob_pred, y=prob_true, mode="lines+markers", line=dict(color=_color(i)), customdata=counts,
            name=f"{name} (ECE {ece:.3f}, Brier {brier:.3f})", legendgroup=name,
            hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>n = %{customdata} images<extra></extra>",
        ), row=1, col=1)
        fig.add_trace(go.Bar(x=prob_pred, y=counts, name=f"{name}: images per bin", legendgroup=name, showlegend=False,
                             marker_color=_color(i), opacity=0.6, width=0.8 / n_bins,
                             hovertemplate="predicted %{x:.2f}<br>n = %{y} images<extra></extra>"), row=2, col=1)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(color="grey", dash="dash", width=1)), row=1, col=1)
    fig.update_layout(template=_TEMPLATE, title=title, barmode="group", height=520)
    _legend_below(fig)
    fig.update_xaxes(range=[0, 1])
    fig.update_xaxes(title_text="Mean predicted probability", row=2, col=1)
    fig.update_yaxes(range=[0, 1.02], title_text="Observed frequency (positive class)", row=1, col=1)
    fig.update_yaxes(title_text="images", row=2, col=1)
    return fig


# ---------------------------------------------------------------------------- confusion matrix
def confusion_chart(y_true: Any, y_pred: Any, classes: Sequence[str], *, title: str = "Confusion matrix") -> go.Figure:
    """Confusion-matrix heat map: counts and row rates (share of each true class) in every cell.

    Args:
        y_true: True class indices.
        y_pred: Predicted class indices.
        classes: Class names in index order.
        title: Figure title.

    Returns:
        A figure with one ``go.Heatmap``; ``z`` holds the row rates, ``customdata`` the counts
        (rows = true class, columns = predicted class, in ``classes`` order).
    """
    classes = [str(c) for c in classes]
    y_true, y_pred = np.asarray(y_true).astype(int).ravel(), np.asarray(y_pred).astype(int).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values but y_pred has {y_pred.size}.")
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    totals = cm.sum(axis=1, keepdims=True)
    rates = np.divide(cm, totals, out=np.zeros_like(cm, dtype=float), where=totals > 0)
    text = [[f"{cm[i, j]}<br>{rates[i, j]:.0%}" for j in range(len(classes))] for i in range(len(classes))]
    fig = go.Figure(go.Heatmap(
        z=rates, x=[f"pred {c}" for c in classes], y=[f"true {c}" for c in classes], customdata=cm,
        text=text, texttemplate="%{text}", textfont=dict(size=16), colorscale="Blues", zmin=0, zmax=1,
        colorbar=dict(title="row rate"),
        hovertemplate="%{y} / %{x}<br>count %{customdata}<br>rate %{z:.1%}<extra></extra>",
    ))
    fig.update_layout(template=_TEMPLATE, title=title)
    fig.update_yaxes(autorange="reversed")
    return fig


# ---------------------------------------------------------------------------- data
def class_count_chart(table: pd.DataFrame, *, label: str = "label", by: str | None = "part") -> go.Figure:
    """Bar chart of images per class (stacked by ``by``, e.g. the cv/test part, when present).

    Args:
        table: One row per image (``split.csv`` or ``manifest.csv``).
        label: Class column.
        by: Optional column to stack by; ignored when absent.
    """
    if label not in table.columns:
        raise ValueError(f"Column {label!r} not in the table; found {list(table.columns)}.")
    keys = [label] + ([by] if by and by in table.columns else [])
    counts = table.groupby(keys, dropna=False).size().reset_index(name="images")
    fig = px.bar(counts, x=label, y="images", color=keys[1] if len(keys) > 1 else None, text="images",
                 template=_TEMPLATE, title="Images per class")
    fig.update_layout(barmode="stack")
    return fig


def distribution_chart(table: pd.DataFrame, column: str, *, by: str = "label", nbins: int = 40,
                       title: str | None = None) -> go.Figure:
    """Overlaid histograms of a per-image statistic (intensity mean, sharpness, …) per class."""
    if column not in table.columns:
        raise ValueError(f"Column {column!r} not in the table; found {list(table.columns)}.")
    fig = px.histogram(table, x=column, color=by if by in table.columns else None, nbins=nbins,
                       barmode="overlay", opacity=0.6, template=_TEMPLATE, title=title or f"{column} per class")
    return fig


#: Font size (px) of a sample's caption, its line height, and the longest caption line before "…".
_CAPTION_PX, _CAPTION_LINE_PX, _CAPTION_CHARS = 11, 15, 26


def _short(line: str) -> str:
    return line if len(line) <= _CAPTION_CHARS else line[:_CAPTION_CHARS - 1] + "…"


def sample_grid(images: Sequence[np.ndarray], titles: Sequence[str], *, ncols: int = 6,
                title: str = "Samples", image_px: int = 150) -> go.Figure:
    """Grid of grayscale images (all the same size), one facet per image with its caption above it.

    The gap between rows is sized in pixels for the longest caption (``<br>`` separates lines; lines
    longer than 26 characters end in "…"), so captions never run into the image above them.

    Args:
        images: 2-D arrays (uint8 or float in [0, 1]) of identical shape.
        titles: One caption per image.
        ncols: Images per row.
        title: Figure title.
        image_px: Height of one row of images, in pixels.
    """
    if not images:
        raise ValueError("sample_grid needs at least one image.")
    if len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles.")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}.")
    captions = ["<br>".join(_short(line) for line in str(t).split("<br>")) for t in titles]
    caption_px = _CAPTION_LINE_PX * max(c.count("<br>") + 1 for c in captions) + 6
    rows = int(np.ceil(len(images) / ncols))
    top, bottom = 50 + caption_px, 10
    plot_px = rows * image_px + (rows - 1) * caption_px
    stack = np.stack([_to_uint8(im) for im in images])
    fig = px.imshow(stack, facet_col=0, facet_col_wrap=min(ncols, len(images)), binary_string=True, title=title,
                    facet_col_spacing=0.01, facet_row_spacing=caption_px / plot_px if rows > 1 else 0.0)
    for annotation in fig.layout.annotations:
        annotation.text = captions[int(annotation.text.split("=")[-1])]
        annotation.font = dict(size=_CAPTION_PX)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(height=plot_px + top + bottom, margin=dict(l=10, r=10, t=top, b=bottom))
    return fig


def _to_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"Expected a 2-D grayscale image, got shape {image.shape}.")
    if image.dtype == np.uint8:
        return image
    return (np.clip(image.astype(float), 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------- attributions
def _mpl_colorscale(name: str, n: int = 11) -> list[list[Any]]:
    """A plotly colour scale sampled from a matplotlib colour map (the one :func:`models.attribution.overlay` used)."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return [[t, "rgb({},{},{})".format(*(int(round(255 * c)) for c in cmap(t)[:3]))] for t in np.linspace(0, 1, n)]


def _colour_bar_trace(signed: bool, x: float) -> go.Scatter:
    """An invisible trace whose colour bar explains :func:`models.attribution.overlay`'s colours.

    Each map is divided by its own 99th percentile of ``|value|`` (so the bar reads in those units):
    absolute maps go 0 → 1 on ``jet``, signed maps -1 → 1 on ``RdBu_r`` (red = for the class).
    """
    low, title = (-1.0, "signed attribution<br>(÷ its 99th pct;<br>red = for, blue = against)") if signed else \
        (0.0, "attribution<br>(÷ its 99th pct)")
    return go.Scatter(
        x=[None], y=[None], mode="markers", hoverinfo="skip", showlegend=False,
        name="signed colour scale" if signed else "colour scale",
        marker=dict(colorscale=_mpl_colorscale("RdBu_r" if signed else "jet"), cmin=low, cmax=1.0, color=[low],
                    showscale=True, colorbar=dict(title=dict(text=title, side="right"), x=x, len=0.8, thickness=12)),
    )


def attribution_figure(image: np.ndarray, overlays: Mapping[str, np.ndarray], *, mask: np.ndarray | None = None,
                       scores: Mapping[str, str] | None = None, title: str = "Attributions",
                       signed: Mapping[str, bool] | None = None) -> go.Figure:
    """Original image next to one attribution overlay per method (or model), with the lesion outline.

    With ``signed`` (``{panel name: Attribution.signed}``) the row gets the colour bar of its maps: one
    for absolute maps (``jet``, 0 → 1) and one for signed maps (``RdBu_r``, -1 → 1) when both occur.

    Args:
        image: The 2-D grayscale input (uint8 or float in [0, 1]).
        overlays: ``{panel name: RGB uint8 (H, W, 3)}`` from :func:`models.attribution.overlay`.
        mask: Optional boolean lesion mask (same H, W): drawn as a green outline on every panel.
        scores: Optional ``{panel name: text}`` appended to the panel title (e.g. localisation score).
        title: Figure title.
        signed: Optional ``{panel name: signed}`` of the overlays: adds the shared colour bar(s).
    """
    gray = _to_uint8(image)
    panels = {"original": np.repeat(gray[..., None], 3, axis=2)}
    for name, rgb in overlays.items():
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != gray.shape:
            raise ValueError(f"Overlay {name!r} has shape {rgb.shape}; expected {gray.shape + (3,)}.")
        panels[name] = rgb.astype(np.uint8)
    if mask is not None and np.asarray(mask).shape != gray.shape:
        raise ValueError(f"Mask shape {np.asarray(mask).shape} differs from the image shape {gray.shape}.")
    scores = scores or {}
    names = [n if n not in scores else f"{n}<br>{scores[n]}" for n in panels]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=names, horizontal_spacing=0.02)
    for col, rgb in enumerate(panels.values(), start=1):
        fig.add_trace(go.Image(z=rgb, hoverinfo="skip"), row=1, col=col)
        if mask is not None and np.asarray(mask).any():
            fig.add_trace(go.Contour(
                z=np.asarray(mask, dtype=float), showscale=False, contours=dict(start=0.5, end=0.5, coloring="lines"),
                colorscale=[[0, "lime"], [1, "lime"]], line=dict(width=2), hoverinfo="skip", name="lesion", showlegend=False,
            ), row=1, col=col)
    kinds = sorted({bool(v) for k, v in (signed or {}).items() if k in overlays})
    for j, kind in enumerate(kinds):
        fig.add_trace(_colour_bar_trace(kind, 1.01 + 0.09 * j), row=1, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(template=_TEMPLATE, title=dict(text=title, y=0.98), height=380,
                      margin=dict(l=10, r=10 + 90 * len(kinds), t=110, b=10))
    return fig


# ---------------------------------------------------------------------------- leakage audit, live prediction
def leakage_chart(audit: Mapping[str, Any]) -> go.Figure:
    """The leakage audit as a picture: CV AUC of the same cheap fit on the honest and on the leaky split.

    Args:
        audit: ``report.json``'s ``leakage_audit`` (:func:`automl.refit.leakage_audit`): ``grouped_auc``,
            ``slice_auc`` and, when recorded, the per-fold ``grouped_folds`` / ``slice_folds``.

    Returns:
        Bars ``"mean CV AUC"`` (subject-grouped first, then slice-level) and, when the folds are recorded,
        points ``"folds"`` (one per fold).
    """
    labels = ["subject-grouped split<br>(honest)", "slice-level split<br>(leaky)"]
    means = [audit.get("grouped_auc"), audit.get("slice_auc")]
    if any(m is None for m in means):
        raise ValueError(f"The leakage audit lacks grouped_auc / slice_auc: {sorted(audit)}.")
    means = [float(m) for m in means]
    fig = go.Figure(go.Bar(x=labels, y=means, name="mean CV AUC", marker_color=[_color(2), _color(1)],
                           text=[f"{m:.3f}" for m in means], textposition="outside", width=0.5))
    folds = [list(audit.get("grouped_folds") or []), list(audit.get("slice_folds") or [])]
    if any(folds):
        fig.add_trace(go.Scatter(x=[labels[0]] * len(folds[0]) + [labels[1]] * len(folds[1]), y=folds[0] + folds[1],
                                 mode="markers", name="folds", marker=dict(color="black", size=7, symbol="circle-open"),
                                 hovertemplate="fold AUC %{y:.3f}<extra></extra>"))
    who = "pixel logistic-regression probe" if audit.get("method") == "probe" else f"{audit.get('model', 'winner')}"
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey")
    fig.update_layout(template=_TEMPLATE, title=f"Leakage audit: the same {who}, two splits", yaxis_title="CV AUC",
                      yaxis_range=[0, 1.08], height=320, showlegend=False, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def probability_bar(probabilities: Mapping[str, float], *, title: str = "", threshold: float | None = None,
                    positive: str | None = None) -> go.Figure:
    """Horizontal bars of one prediction's class probabilities, the threshold marked on the positive bar only.

    Args:
        probabilities: ``{class: probability}`` in class order.
        title: Figure title.
        threshold: The decision threshold on ``P(positive)`` (binary tasks); ``None`` draws none.
        positive: The class the threshold applies to (default: the last class).

    Returns:
        One ``go.Bar``; with a threshold, one dashed line shape spanning the positive class's bar and
        an annotation ``"threshold 0.42"`` next to it.
    """
    names, values = list(probabilities), [float(v) for v in probabilities.values()]
    if not names:
        raise ValueError("probability_bar needs at least one class.")
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", text=[f"{v:.1%}" for v in values],
                           textposition="auto"))
    fig.update_layout(template=_TEMPLATE, xaxis=dict(range=[0, 1], title="probability"), height=220,
                      margin=dict(l=10, r=10, t=30, b=10), title=title)
    if threshold is not None:
        positive = names[-1] if positive is None else positive
        if positive not in names:
            raise ValueError(f"Unknown positive class {positive!r}; classes are {names}.")
        row = names.index(positive)  # a category's position on its axis: its index
        fig.add_shape(type="line", x0=threshold, x1=threshold, y0=row - 0.45, y1=row + 0.45, xref="x", yref="y",
                      line=dict(color="black", dash="dash", width=2))
        fig.add_annotation(x=threshold, y=row + 0.45, xref="x", yref="y", text=f"threshold {threshold:.2f}",
                           showarrow=False, yanchor="bottom", font=dict(size=11))
    return fig


def slice_strip(probabilities: Sequence[float], *, positive: str, threshold: float | None = None,
                suspicious: Sequence[int] = (), slice_indices: Sequence[int] | None = None,
                title: str = "") -> go.Figure:
    """One scan's per-slice probabilities along the head: x = slice index from the feet, y = P(positive).

    Args:
        probabilities: ``P(positive)`` of each analysed slice, inferior first.
        positive: The class whose probability is drawn (axis title).
        threshold: The scan's decision threshold, drawn as a dashed horizontal line; ``None`` draws none.
        suspicious: Slice indices (values of ``slice_indices``) to mark, most suspicious first; they
            get a red marker and their rank ("#1", "#2", ...) above it.
        slice_indices: The slice index of each probability (default ``0..K-1``; a scan answered on
            every k-th slice gives ``0, k, 2k, ...``).
        title: Figure title.

    Returns:
        A line-and-marker trace of the slices, a marker trace "most suspicious" (when any) and the
        threshold line with its annotation.

    Raises:
        ValueError: On no slice, lengths that differ, probabilities outside [0, 1] or a suspicious
            index that is not a slice.
    """
    p = np.asarray(probabilities, dtype=float)
    x = np.arange(len(p)) if slice_indices is None else np.asarray(slice_indices, dtype=int)
    if p.ndim != 1 or len(p) == 0 or x.shape != p.shape:
        raise ValueError(f"slice_strip needs as many slice indices as probabilities (>= 1), got {x.shape} and {p.shape}.")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("slice_strip: probabilities must lie in [0, 1].")
    where = {int(i): k for k, i in enumerate(x)}
    missing = [int(i) for i in suspicious if int(i) not in where]
    if missing:
        raise ValueError(f"slice_strip: suspicious slices {missing} are not among the slices drawn.")
    fig = go.Figure(go.Scatter(x=x, y=p, mode="lines+markers", name=f"P({positive}) per slice",
                               line=dict(color=_PALETTE[0]), marker=dict(size=5),
                               hovertemplate="slice %{x}: %{y:.3f}<extra></extra>"))
    if len(suspicious):
        marked = [where[int(i)] for i in suspicious]
        fig.add_trace(go.Scatter(x=x[marked], y=p[marked], mode="markers+text", name="most suspicious",
                                 text=[f"#{r + 1}" for r in range(len(marked))], textposition="top center",
                                 marker=dict(size=12, color="#d62728", symbol="circle-open", line=dict(width=2)),
                                 hovertemplate="slice %{x}: %{y:.3f}<extra>most suspicious</extra>"))
    if threshold is not None:
        fig.add_hline(y=float(threshold), line_dash="dash", line_color="black",
                      annotation_text=f"threshold {float(threshold):.2f}", annotation_position="top left")
    fig.update_layout(template=_TEMPLATE, title=title, height=300, margin=dict(l=10, r=10, t=50, b=10),
                      xaxis=dict(title="slice (0 = most inferior, towards the feet)"),
                      yaxis=dict(title=f"P({positive})", range=[0, 1.08]), showlegend=True,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1.0, xanchor="right"))
    return fig


def figure_to_html(fig: go.Figure, *, include_plotlyjs: bool | str = True, full_html: bool = True) -> str:
    """Standalone HTML of a figure (plotly.js embedded by default, so it opens offline)."""
    return fig.to_html(include_plotlyjs=include_plotlyjs, full_html=full_html)
