"""Tests of automl.metrics against scikit-learn, hand-computed values and reference implementations."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from automl import metrics as M


@pytest.fixture
def binary() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 150)
    p = np.clip(0.35 * y + 0.65 * rng.random(150), 0, 1)
    return y, p


@pytest.fixture
def multiclass() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    P = rng.dirichlet([1.0, 1.0, 1.0], 200)
    P[np.arange(200), y] += 0.4
    return y, P / P.sum(axis=1, keepdims=True)


# --- roc_auc ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_matrix", [False, True])
def test_roc_auc_binary_matches_sklearn(binary, as_matrix):
    y, p = binary
    P = np.stack([1 - p, p], axis=1) if as_matrix else p
    assert M.roc_auc(y, P) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_roc_auc_hand_computed_with_ties():
    # pairs (pos, neg): (0.4 vs 0.1) win, (0.4 vs 0.4) tie, (0.8 vs both) win -> (1 + 0.5 + 2) / 4
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8]) == pytest.approx(3.5 / 4)


def test_roc_auc_multiclass_macro_ovr_matches_sklearn(multiclass):
    y, P = multiclass
    assert M.roc_auc(y, P) == pytest.approx(roc_auc_score(y, P, multi_class="ovr", average="macro"), abs=1e-12)


def test_roc_auc_single_class_returns_nan_with_warning():
    with pytest.warns(M.UndefinedMetricWarning, match="single class"):
        assert math.isnan(M.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))


def test_roc_auc_multiclass_missing_class_averages_present(multiclass):
    y, P = multiclass
    keep = y != 2
    with pytest.warns(M.UndefinedMetricWarning, match="lacks classes"):
        value = M.roc_auc(y[keep], P[keep])
    expected = np.mean([roc_auc_score(y[keep] == c, P[keep, c]) for c in (0, 1)])
    assert value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("y", "P", "match"),
    [
        ([0, 1], [0.5, 0.5, 0.5], "different lengths"),
        ([0, 1], [0.2, 1.5], r"\[0, 1\]"),
        ([0, 1], [0.2, np.nan], "NaN"),
        ([0, 3], [[0.5, 0.5], [0.5, 0.5]], "class index 3"),
        ([0, -1], [0.1, 0.2], ">= 0"),
        ([0.5, 1], [0.1, 0.2], "integer"),
        ([], [], "empty"),
    ],
)
def test_roc_auc_rejects_bad_input(y, P, match):
    with pytest.raises(ValueError, match=match):
        M.roc_auc(y, P)


# --- bootstrap -------------------------------------------------------------------------------------------


def _pairwise_auc(y: np.ndarray, p: np.ndarray) -> float:
    """O(m n) AUC by counting pairs: an independent (and, at these sizes, fast) reference."""
    pos, neg = p[y == 1], p[y == 0]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def test_bootstrap_ci_contains_auc_and_is_reproducible(binary):
    y, p = binary
    low, high = M.bootstrap_auc_ci(y, p, n_boot=500, seed=3)
    assert low < M.roc_auc(y, p) < high
    assert 0.0 <= low < high <= 1.0
    assert M.bootstrap_auc_ci(y, p, n_boot=500, seed=3) == (low, high)
    assert M.bootstrap_auc_ci(y, p, n_boot=500, seed=4) != (low, high)


def test_bootstrap_ci_matches_naive_stratified_bootstrap(binary):
    """The vectorised rank formula must agree with a plain loop of stratified resamples."""
    y, p = binary
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    naive = []
    for _ in range(300):
        idx = np.concatenate([rng.choice(neg, len(neg)), rng.choice(pos, len(pos))])
        naive.append(_pairwise_auc(y[idx], p[idx]))
    low, high = M.bootstrap_auc_ci(y, p, n_boot=300, seed=0)
    # Same distribution, different draws: the interval ends agree within Monte-Carlo error.
    assert low == pytest.approx(np.quantile(naive, 0.025), abs=0.02)
    assert high == pytest.approx(np.quantile(naive, 0.975), abs=0.02)


def test_bootstrap_ci_narrower_with_larger_alpha(multiclass):
    y, P = multiclass
    wide = M.bootstrap_auc_ci(y, P, n_boot=200, alpha=0.05)
    narrow = M.bootstrap_auc_ci(y, P, n_boot=200, alpha=0.5)
    assert wide[0] <= narrow[0] < narrow[1] <= wide[1]


def test_bootstrap_ci_single_class_is_nan():
    with pytest.warns(M.UndefinedMetricWarning):
        low, high = M.bootstrap_auc_ci([0, 0, 0], [0.1, 0.2, 0.3], n_boot=20)
    assert math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"n_boot": 5}, "n_boot"), ({"alpha": 1.5}, "alpha"), ({"alpha": 0}, "alpha")]
)
def test_bootstrap_ci_rejects_bad_options(binary, kwargs, match):
    y, p = binary
    with pytest.raises(ValueError, match=match):
        M.bootstrap_auc_ci(y, p, **kwargs)


# --- DeLong ----------------------------------------------------------------------------------------------


def _delong_reference(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> tuple[float, float]:
    """Textbook DeLong (1988) with the O(m n) kernel psi(x, y) = 1[x > y] + 0.5 1[x == y]."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()
    v10, v01, aucs = [], [], []
    for s in (p1, p2):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (aucs[0] - aucs[1]) / np.sqrt(var)
    return float(z), float(2 * stats.norm.sf(abs(z)))


def test_delong_matches_textbook_reference(binary):
    y, p1 = binary
    rng = np.random.default_rng(5)
    p2 = np.clip(p1 + rng.normal(0, 0.25, len(p1)), 0, 1)
    p2[:10] = np.round(p2[:10], 1)  # some ties
    z, p_value = M.delong_test(y, p1, p2)
    z_ref, p_ref = _delong_reference(y, p1, p2)
    assert z == pytest.approx(z_ref, rel=1e-9)
    assert p_value == pytest.approx(p_ref, rel=1e-9)
    assert z > 0 and p_value < 0.05  # the noisy copy is clearly worse on 150 cases


def test_delong_symmetry_and_identity(binary):
    y, p1 = binary
    p2 = np.clip(p1 ** 2 + 0.1 * np.sin(np.arange(len(p1))), 0, 1)
    z12, p12 = M.delong_test(y, p1, p2)
    z21, p21 = M.delong_test(y, p2, p1)
    assert z12 == pytest.approx(-z21) and p12 == pytest.approx(p21)
    assert M.delong_test(y, p1, p1) == (0.0, 1.0)
    # A monotone transform keeps the ranks, hence the AUC: no difference either.
    assert M.delong_test(y, p1, p1**3)[1] == pytest.approx(1.0)


def test_delong_agrees_with_bootstrap_standard_error(binary):
    y, p1 = binary
    rng = np.random.default_rng(2)
    p2 = np.clip(p1 + rng.normal(0, 0.2, len(p1)), 0, 1)
    z, _ = M.delong_test(y, p1, p2)
    diff = roc_auc_score(y, p1) - roc_auc_score(y, p2)
    boot = []
    for _ in range(400):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) == 2:
            boot.append(_pairwise_auc(y[idx], p1[idx]) - _pairwise_auc(y[idx], p2[idx]))
    assert diff / z == pytest.approx(np.std(boot), rel=0.25)


def test_delong_rejects_multiclass_and_mismatch(binary):
    y, p = binary
    with pytest.raises(ValueError, match="binary"):
        M.delong_test(np.arange(len(p)) % 3, p, p)
    with pytest.raises(ValueError, match="different lengths"):
        M.delong_test(y, p, p[:-1])


# --- calibration -----------------------------------------------------------------------------------------


def test_ece_hand_computed():
    # bins of width 0.5: [0.1, 0.2] (no positives) and [0.7, 0.9] (both positive)
    y, p = [0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]
    expected = 0.5 * abs(0 - 0.15) + 0.5 * abs(1 - 0.8)
    assert M.expected_calibration_error(y, p, n_bins=2) == pytest.approx(expected)


def test_ece_perfectly_calibrated_is_small_and_edges_included():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert M.expected_calibration_error(y, p) < 0.02
    assert M.expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0


def test_ece_multiclass_top_label(multiclass):
    y, P = multiclass
    conf, hit = P.max(axis=1), (P.argmax(axis=1) == y)
    bins = np.minimum((conf * 10).astype(int), 9)
    expected = sum(abs(hit[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean() for b in np.unique(bins))
    assert M.expected_calibration_error(y, P) == pytest.approx(expected)


@pytest.mark.parametrize("n_bins", [0, 2.5, -1])
def test_ece_rejects_bad_bins(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        M.expected_calibration_error([0, 1], [0.2, 0.8], n_bins=n_bins)


def test_brier_binary_and_multiclass(binary, multiclass):
    y, p = binary
    assert M.brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    assert M.brier_score([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0
    y3, P = multiclass
    assert M.brier_score(y3, P) == pytest.approx(np.mean(((P - np.eye(3)[y3]) ** 2).sum(axis=1)))


# --- thresholds ------------------------------------------------------------------------------------------


def test_youden_threshold_matches_roc_curve(binary):
    y, p = binary
    fpr, tpr, thr = roc_curve(y, p)
    best = thr[np.argmax(tpr - fpr)]
    t = M.youden_threshold(y, p)
    assert t == pytest.approx(best)
    m = M.binary_metrics_at_threshold(y, p, t)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))


def test_youden_threshold_perfect_separation():
    t = M.youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9])
    assert t == 0.6
    assert M.binary_metrics_at_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9], t)["accuracy"] == 1.0


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_threshold_for_sensitivity_reaches_target_with_best_specificity(binary, target):
    y, p = binary
    t = M.threshold_for_sensitivity(y, p, target)
    m = M.binary_metrics_at_threshold(y, p, t)
    assert m["sensitivity"] >= target
    higher = p[p > t]
    if higher.size:  # the next higher observed score no longer reaches the target
        assert M.binary_metrics_at_threshold(y, p, float(higher.min()))["sensitivity"] < target


@pytest.mark.parametrize("target", [0, -0.1, 1.2, "high"])
def test_threshold_for_sensitivity_rejects_bad_target(binary, target):
    y, p = binary
    with pytest.raises(ValueError, match="target"):
        M.threshold_for_sensitivity(y, p, target)


def test_thresholds_need_two_classes():
    with pytest.raises(ValueError, match="both classes"):
        M.youden_threshold([1, 1], [0.2, 0.3])


def test_binary_metrics_hand_computed():
    y = [1, 1, 1, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05]
    m = M.binary_metrics_at_threshold(y, p, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert m["f1"] == pytest.approx(2 / 3)


def test_binary_metrics_threshold_is_inclusive_and_undefined_ratios_are_nan():
    m = M.binary_metrics_at_threshold([0, 1], [0.5, 0.5], 0.5)
    assert (m["tp"], m["fp"]) == (1, 1)
    m = M.binary_metrics_at_threshold([0, 0], [0.1, 0.2], 0.5)
    assert math.isnan(m["precision"]) and math.isnan(m["sensitivity"]) and m["specificity"] == 1.0


@pytest.mark.parametrize("threshold", [-0.1, 1.1, "0.5"])
def test_binary_metrics_rejects_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        M.binary_metrics_at_threshold([0, 1], [0.2, 0.8], threshold)


# --- subject aggregation ---------------------------------------------------------------------------------


@pytest.fixture
def slices() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject": ["a", "a", "a", "b", "b", "c"],
            "y": [0, 1, 0, 0, 0, 1],
            "label": ["normal", "stroke", "normal", "normal", "normal", "stroke"],
            "prob_normal": [0.9, 0.3, 0.8, 0.7, 0.6, 0.2],
            "prob_stroke": [0.1, 0.7, 0.2, 0.3, 0.4, 0.8],
        }
    )


def test_aggregate_by_subject_mean(slices):
    out = M.aggregate_by_subject(slices, how="mean")
    assert out["subject"].tolist() == ["a", "b", "c"]
    assert out["y"].tolist() == [1, 0, 1]  # any positive slice makes a positive subject
    assert out["label"].tolist() == ["stroke", "normal", "stroke"]
    assert out["n_slices"].tolist() == [3, 2, 1]
    assert out["prob_stroke"].tolist() == pytest.approx([1.0 / 3, 0.35, 0.8])
    assert (out["prob_normal"] + out["prob_stroke"]).tolist() == pytest.approx([1.0] * 3)


def test_aggregate_by_subject_max_binary(slices):
    out = M.aggregate_by_subject(slices, how="max")
    assert out["prob_stroke"].tolist() == pytest.approx([0.7, 0.4, 0.8])
    assert out["prob_normal"].tolist() == pytest.approx([0.3, 0.6, 0.2])


def test_aggregate_by_subject_max_multiclass_rows_sum_to_one():
    df = pd.DataFrame(
        {
            "subject": ["a", "a"],
            "y": [0, 2],
            "prob_n": [0.8, 0.1],
            "prob_i": [0.1, 0.2],
            "prob_h": [0.1, 0.7],
        }
    )
    out = M.aggregate_by_subject(df, how="max")
    row = out.iloc[0]
    assert row["y"] == 2
    total = 0.1 + 0.2 + 0.7  # negative class: min over slices; lesion classes: max
    assert [row["prob_n"], row["prob_i"], row["prob_h"]] == pytest.approx([0.1 / total, 0.2 / total, 0.7 / total])


def test_aggregate_by_subject_top_k_mean(slices):
    # stroke probabilities: a [0.1, 0.7, 0.2] -> (0.7 + 0.2) / 2; b [0.3, 0.4] -> 0.35; c [0.8] -> 0.8
    out = M.aggregate_by_subject(slices, how="top2_mean")
    assert out["prob_stroke"].tolist() == pytest.approx([0.45, 0.35, 0.8])
    assert out["prob_normal"].tolist() == pytest.approx([0.55, 0.65, 0.2])
    # no subject has more than three slices: top3_mean is the mean, top1_mean the max
    top3 = M.aggregate_by_subject(slices, how="top3_mean")
    assert top3["prob_stroke"].tolist() == pytest.approx(M.aggregate_by_subject(slices)["prob_stroke"].tolist())
    pd.testing.assert_frame_equal(M.aggregate_by_subject(slices, how="top1_mean"),
                                  M.aggregate_by_subject(slices, how="max"))


def test_aggregate_by_subject_top_k_mean_multiclass():
    df = pd.DataFrame({"subject": ["a"] * 3, "y": [0, 1, 2], "prob_n": [0.8, 0.5, 0.2],
                       "prob_i": [0.1, 0.4, 0.2], "prob_h": [0.1, 0.1, 0.6]})
    row = M.aggregate_by_subject(df, how="top2_mean").iloc[0]
    raw = [(0.5 + 0.2) / 2, (0.4 + 0.2) / 2, (0.6 + 0.1) / 2]  # negative: the two smallest
    assert [row["prob_n"], row["prob_i"], row["prob_h"]] == pytest.approx([v / sum(raw) for v in raw])


@pytest.mark.parametrize(
    ("mutate", "kwargs", "match"),
    [
        (lambda d: d.drop(columns="subject"), {}, "subject"),
        (lambda d: d.drop(columns="prob_normal"), {}, "two prob_"),
        (lambda d: d, {"how": "median"}, "how"),
        (lambda d: d, {"how": "top0_mean"}, "top0_mean"),
        (lambda d: d.assign(prob_stroke=d["prob_stroke"] + 1), {}, r"\[0, 1\]"),
    ],
)
def test_aggregate_by_subject_rejects_bad_input(slices, mutate, kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.aggregate_by_subject(mutate(slices), **kwargs)
