"""Tests of the plotly figure builders in ui.charts."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, confusion_matrix, roc_auc_score

from automl.metrics import expected_calibration_error
from automl.results import load_study
from ui import charts


@pytest.fixture
def scores() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    p = np.clip(0.5 * y + rng.random(80) * 0.7, 0, 1)
    folds = np.tile(np.arange(4), 20)
    return y, p, folds


def _number(name: str, key: str) -> float:
    match = re.search(rf"{key} ([0-9.]+)", name)
    assert match, f"{key} not in legend entry {name!r}"
    return float(match.group(1))


def test_roc_chart_auc_in_legend(scores) -> None:
    y, p, _ = scores
    other = 1 - p
    fig = charts.roc_chart({"good": (y, p), "bad": (y, other)})
    assert isinstance(fig, go.Figure)
    named = [t for t in fig.data if t.showlegend is not False]
    assert [t.name.split(" (")[0] for t in named] == ["good", "bad"]
    assert _number(named[0].name, "AUC") == pytest.approx(roc_auc_score(y, p), abs=5e-4)
    assert _number(named[1].name, "AUC") == pytest.approx(roc_auc_score(y, other), abs=5e-4)
    assert named[0].x[0] == 0 and named[0].x[-1] == 1


def test_cv_roc_chart_has_folds_band_and_mean(scores) -> None:
    y, p, folds = scores
    fig = charts.cv_roc_chart(y, p, folds, name="m")
    names = [t.name for t in fig.data]
    fold_traces = [n for n in names if n.startswith("fold ")]
    assert len(fold_traces) == 4
    for k, name in zip(range(4), fold_traces):
        m = folds == k
        assert _number(name, "AUC") == pytest.approx(roc_auc_score(y[m], p[m]), abs=5e-4)
    assert "± 1 std" in names
    band = next(t for t in fig.data if t.name == "± 1 std")
    assert band.fill == "toself"
    mean = next(t for t in fig.data if t.name.startswith("m mean"))
    assert mean.y[0] == 0 and mean.y[-1] == 1


def test_cv_roc_chart_errors(scores) -> None:
    y, p, folds = scores
    with pytest.raises(ValueError, match="folds"):
        charts.cv_roc_chart(y, p, folds[:-1])
    with pytest.raises(ValueError, match="no fold holds both classes"):
        charts.cv_roc_chart(np.r_[np.zeros(4, int), np.ones(4, int)], np.linspace(0, 1, 8), np.r_[[0] * 4, [1] * 4])


def test_pr_chart_ap_in_legend(scores) -> None:
    y, p, _ = scores
    fig = charts.pr_chart({"m": (y, p)})
    trace = fig.data[0]
    assert _number(trace.name, "AP") == pytest.approx(average_precision_score(y, p), abs=5e-4)


def test_reliability_chart_ece_brier(scores) -> None:
    y, p, _ = scores
    fig = charts.reliability_chart({"m": (y, p)}, n_bins=5)
    name = fig.data[0].name
    assert _number(name, "ECE") == pytest.approx(expected_calibration_error(y, p, n_bins=5), abs=5e-4)
    assert _number(name, "Brier") == pytest.approx(brier_score_loss(y, p), abs=5e-4)
    assert fig.data[-1].name == "perfect calibration"


@pytest.mark.parametrize("builder", [charts.roc_chart, charts.pr_chart, charts.reliability_chart])
def test_curve_builders_reject_bad_input(builder) -> None:
    with pytest.raises(ValueError, match="at least one"):
        builder({})
    with pytest.raises(ValueError, match="binary"):
        builder({"m": ([0, 1, 2], [0.1, 0.2, 0.3])})
    with pytest.raises(ValueError, match="scores have"):
        builder({"m": ([0, 1], [0.1, 0.2, 0.3])})
    with pytest.raises(ValueError, match="non-finite"):
        builder({"m": ([0, 1], [0.1, np.nan])})


@pytest.mark.parametrize("n_classes", [2, 3])
def test_confusion_chart_counts_and_rates(n_classes: int) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, n_classes, 50)
    pred = np.where(rng.random(50) < 0.7, y, rng.integers(0, n_classes, 50))
    classes = ["a", "b", "c"][:n_classes]
    fig = charts.confusion_chart(y, pred, classes)
    heat = fig.data[0]
    cm = confusion_matrix(y, pred, labels=list(range(n_classes)))
    np.testing.assert_array_equal(np.asarray(heat.customdata), cm)
    np.testing.assert_allclose(np.asarray(heat.z), cm / cm.sum(axis=1, keepdims=True))
    assert list(heat.y) == [f"true {c}" for c in classes]
    assert str(cm[0, 0]) in heat.text[0][0]
    with pytest.raises(ValueError, match="y_pred"):
        charts.confusion_chart(y, pred[:-1], classes)


def test_binary_series(handmade_study: Path) -> None:
    study = load_study(handmade_study)
    frame = study.test_predictions("tiny_cnn")
    y, p = charts.binary_series(frame, study.classes)
    np.testing.assert_array_equal(y, frame["y"].to_numpy())
    np.testing.assert_allclose(p, frame["prob_Stroke"].to_numpy())
    y0, _ = charts.binary_series(frame, study.classes, positive="Normal")
    np.testing.assert_array_equal(y0, 1 - y)
    with pytest.raises(ValueError, match="Unknown positive class"):
        charts.binary_series(frame, study.classes, positive="Ischemic")


def test_leaderboard_chart(handmade_study: Path) -> None:
    board = load_study(handmade_study).leaderboard
    fig = charts.leaderboard_chart(board)
    names = [t.name for t in fig.data]
    assert names == ["Selection score: CV AUC (mean ± std)", "Test AUC, slices (95% CI)"]
    finished = board[board["cv_auc_mean"].notna()]
    assert len(fig.data[0].x) == len(finished)
    np.testing.assert_allclose(fig.data[0].y, finished["cv_auc_mean"])
    np.testing.assert_allclose(fig.data[0].error_y.array, finished["cv_auc_std"])
    refit = board[board["test_auc"].notna()]
    np.testing.assert_allclose(fig.data[1].y, refit["test_auc"])
    np.testing.assert_allclose(fig.data[1].error_y.arrayminus, refit["test_auc"] - refit["test_auc_ci_low"])
    assert len(charts.leaderboard_chart(board, max_rows=2).data[0].x) == 2
    with pytest.raises(ValueError, match="max_rows"):
        charts.leaderboard_chart(board, max_rows=0)


def test_data_charts(handmade_study: Path) -> None:
    study = load_study(handmade_study)
    fig = charts.class_count_chart(study.split)
    total = sum(sum(t.y) for t in fig.data)
    assert total == len(study.split)
    assert {t.name for t in fig.data} == {"cv", "test"}
    hist = charts.distribution_chart(study.manifest, "sharpness")
    assert {t.name for t in hist.data} == set(study.classes)
    assert sum(len(t.x) for t in hist.data) == len(study.manifest)
    with pytest.raises(ValueError, match="nope"):
        charts.distribution_chart(study.manifest, "nope")
    with pytest.raises(ValueError, match="nope"):
        charts.class_count_chart(study.split, label="nope")


def test_sample_grid() -> None:
    images = [np.full((16, 16), i / 5, dtype=np.float32) for i in range(5)]
    fig = charts.sample_grid(images, [f"img {i}" for i in range(5)], ncols=3)
    assert len(fig.data) == 5
    assert sorted(a.text for a in fig.layout.annotations) == [f"img {i}" for i in range(5)]
    with pytest.raises(ValueError, match="titles"):
        charts.sample_grid(images, ["x"])
    with pytest.raises(ValueError, match="2-D"):
        charts.sample_grid([np.zeros((4, 4, 3))], ["x"])
    with pytest.raises(ValueError, match="at least one"):
        charts.sample_grid([], [])


def test_attribution_figure() -> None:
    image = np.zeros((16, 16), np.float32)
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    overlays = {"grad_cam": np.zeros((16, 16, 3), np.uint8), "saliency": np.ones((16, 16, 3), np.uint8)}
    fig = charts.attribution_figure(image, overlays, mask=mask, scores={"grad_cam": "pointing 1"})
    images = [t for t in fig.data if isinstance(t, go.Image)]
    contours = [t for t in fig.data if isinstance(t, go.Contour)]
    assert len(images) == 3 and len(contours) == 3
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0] == "original" and "pointing 1" in titles[1]
    assert len([t for t in charts.attribution_figure(image, overlays).data if isinstance(t, go.Contour)]) == 0
    with pytest.raises(ValueError, match="Overlay"):
        charts.attribution_figure(image, {"x": np.zeros((8, 8, 3), np.uint8)})
    with pytest.raises(ValueError, match="Mask shape"):
        charts.attribution_figure(image, overlays, mask=np.zeros((4, 4), bool))


def test_figure_to_html_is_standalone(scores) -> None:
    y, p, _ = scores
    html = charts.figure_to_html(charts.roc_chart({"m": (y, p)}))
    assert "<html>" in html and "plotly.js v" in html  # plotly.js inlined: opens offline
    assert '<script src="https://cdn.plot.ly' not in html


def test_single_class_series_raise() -> None:
    with pytest.raises(ValueError, match="single class"):
        charts.roc_chart({"m": ([1, 1, 1], [0.2, 0.5, 0.9])})
    with pytest.raises(ValueError, match="no series"):
        charts.pr_chart({"m": ([0, 0], [0.2, 0.5])})


def test_one_patient_of_a_class_is_not_estimable() -> None:
    y = [1, 1, 1, 0, 0, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # slice AUC 1.000 — from a single stroke patient
    subjects = ["s", "s", "s", "a", "a", "b", "c", "d", "e"]
    for builder in (charts.roc_chart, charts.pr_chart):
        fig = builder({"m": (y, p)}, subjects={"m": subjects}, class_names=("Normal", "Stroke"))
        names = [t.name for t in fig.data if t.showlegend is not False and t.name != "chance"]
        assert names == ["m: not estimable (n = 1 Stroke / 5 Normal patients)"], builder
    # counted as images (no subject ids), three stroke slices make a curve
    assert "(AUC 1.000)" in charts.roc_chart({"m": (y, p)}).data[0].name


# ------------------------------------------------------------------------------------------------ issue 17
@pytest.mark.parametrize("builder", ["roc", "pr", "cv_roc", "reliability"])
def test_curve_legends_sit_below_the_plot(scores, builder: str) -> None:
    """Small figures: the legend is horizontal under the axes, never over the curves."""
    y, p, folds = scores
    fig = {"roc": lambda: charts.roc_chart({"a model with a long name": (y, p)}),
           "pr": lambda: charts.pr_chart({"m": (y, p)}),
           "cv_roc": lambda: charts.cv_roc_chart(y, p, folds),
           "reliability": lambda: charts.reliability_chart({"m": (y, p)})}[builder]()
    assert fig.layout.legend.orientation == "h"
    assert fig.layout.legend.y < 0 and fig.layout.legend.yanchor == "top"


def test_cv_roc_folds_are_numbered_from_one(scores) -> None:
    y, p, folds = scores
    names = [t.name for t in charts.cv_roc_chart(y, p, folds).data if t.name.startswith("fold ")]
    assert [n.split(" (")[0] for n in names] == ["fold 1/4", "fold 2/4", "fold 3/4", "fold 4/4"]


def test_reliability_chart_shows_images_per_bin(scores) -> None:
    y, p, _ = scores
    fig = charts.reliability_chart({"m": (y, p)}, n_bins=5)
    line, bars = fig.data[0], fig.data[1]
    expected = np.bincount(np.minimum((p * 5).astype(int), 4), minlength=5)
    expected = expected[expected > 0]
    np.testing.assert_array_equal(np.asarray(line.customdata), expected)  # hover: n per point
    assert "n = %{customdata}" in line.hovertemplate
    assert isinstance(bars, go.Bar) and bars.name == "m: images per bin"
    np.testing.assert_array_equal(np.asarray(bars.y), expected)
    assert sum(bars.y) == len(y)
    np.testing.assert_allclose(bars.x, line.x)  # one bar under each point
    assert bars.yaxis != line.yaxis  # the counts have their own axis under the diagram


def test_sample_grid_captions_fit_between_rows() -> None:
    """Two-line captions: the pixel gap between rows holds them (they used to run into the images above)."""
    images = [np.zeros((16, 16), np.uint8) for _ in range(12)]
    captions = [f"Stroke<br>subject_{i:04d}_slice_with_a_long_file_name.png" for i in range(12)]
    fig = charts.sample_grid(images, captions, ncols=6)
    plot_px = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    domains = sorted({tuple(fig.layout[k].domain) for k in fig.layout if k.startswith("yaxis")})
    assert len(domains) == 2
    gap_px = (domains[1][0] - domains[0][1]) * plot_px
    assert gap_px >= 2 * fig.layout.annotations[0].font.size  # two caption lines
    assert fig.layout.margin.t - 40 >= 2 * fig.layout.annotations[0].font.size  # the top row's captions
    assert all(len(line) <= 26 for a in fig.layout.annotations for line in a.text.split("<br>"))


@pytest.mark.parametrize(("signed", "bars"), [(None, 0), ({"grad_cam": False}, 1),
                                              ({"grad_cam": False, "saliency": True}, 2)])
def test_attribution_figure_colour_bars(signed, bars: int) -> None:
    image = np.zeros((16, 16), np.float32)
    overlays = {"grad_cam": np.zeros((16, 16, 3), np.uint8), "saliency": np.zeros((16, 16, 3), np.uint8)}
    fig = charts.attribution_figure(image, overlays, signed=signed)
    scales = [t for t in fig.data if isinstance(t, go.Scatter) and t.marker.showscale]
    assert len(scales) == bars
    for trace in scales:
        assert (trace.marker.cmin, trace.marker.cmax) == ((-1.0, 1.0) if "signed" in trace.name else (0.0, 1.0))


def test_leakage_chart_shows_both_splits_and_their_folds() -> None:
    audit = {"method": "probe", "grouped_auc": 0.71, "slice_auc": 0.93, "grouped_folds": [0.7, 0.72],
             "slice_folds": [0.92, 0.94], "gap": 0.22}
    fig = charts.leakage_chart(audit)
    bars, folds = fig.data
    assert list(bars.y) == [0.71, 0.93] and "honest" in bars.x[0] and "leaky" in bars.x[1]
    assert list(folds.y) == [0.7, 0.72, 0.92, 0.94]
    assert "probe" in fig.layout.title.text
    with pytest.raises(ValueError, match="grouped_auc"):
        charts.leakage_chart({"method": "probe"})


def test_probability_bar_marks_the_threshold_on_the_positive_bar_only() -> None:
    fig = charts.probability_bar({"Normal": 0.3, "Stroke": 0.7}, threshold=0.42, positive="Stroke")
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == 0.42 and line.yref == "y"
    assert 0.5 < line.y0 < line.y1 < 1.5  # inside the Stroke bar (category 1), away from Normal (category 0)
    assert fig.layout.annotations[0].text == "threshold 0.42"
    assert not charts.probability_bar({"a": 0.2, "b": 0.3, "c": 0.5}).layout.shapes  # multiclass: no threshold
    with pytest.raises(ValueError, match="positive"):
        charts.probability_bar({"Normal": 0.3, "Stroke": 0.7}, threshold=0.5, positive="Ischemic")


def test_slice_strip_draws_the_threshold_and_marks_the_suspicious_slices() -> None:
    p = [0.1, 0.2, 0.9, 0.6, 0.3]
    fig = charts.slice_strip(p, positive="Stroke", threshold=0.4, suspicious=[4, 6], slice_indices=[0, 2, 4, 6, 8])
    strip, marked = fig.data
    assert list(strip.x) == [0, 2, 4, 6, 8] and list(strip.y) == p
    assert list(marked.x) == [4, 6] and list(marked.y) == [0.9, 0.6] and list(marked.text) == ["#1", "#2"]
    (line,) = fig.layout.shapes
    assert line.y0 == line.y1 == 0.4
    assert fig.layout.annotations[0].text == "threshold 0.40"
    assert fig.layout.yaxis.title.text == "P(Stroke)" and "inferior" in fig.layout.xaxis.title.text
    # no threshold (multiclass), nothing marked: one trace, no line
    plain = charts.slice_strip([0.5], positive="any lesion")
    assert len(plain.data) == 1 and not plain.layout.shapes


@pytest.mark.parametrize("kwargs, match", [
    (dict(probabilities=[]), ">= 1"),
    (dict(probabilities=[0.1, 0.2], slice_indices=[0]), "as many"),
    (dict(probabilities=[0.1, 1.2]), r"\[0, 1\]"),
    (dict(probabilities=[0.1, 0.2], suspicious=[5]), "not among"),
])
def test_slice_strip_validates(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        charts.slice_strip(positive="Stroke", **kwargs)
