"""Tests of automl.uncertainty and automl.verdict: clustered intervals, paired comparisons, subject-level headline, verdicts.

The two simulation tests check the statistical contract on data without signal: patients labelled at
random, 20-30 strongly correlated slices each. They run with one BLAS thread (small matrix products
are faster that way and the suite stays on one core).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score
from threadpoolctl import threadpool_limits

from automl import metrics as M
from automl import _resample as R
from automl import uncertainty as U
from automl import verdict as V

# --- simulated data ----------------------------------------------------------------------------------------


def _no_signal(rng: np.random.Generator, n_models: int = 1) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """30-80 patients with random labels, 20-30 slices each; slice score = patient effect + small noise."""
    n_subjects = int(rng.integers(30, 81))
    slices = rng.integers(20, 31, n_subjects)
    subject_y = rng.permutation(np.arange(n_subjects) % 2)
    subjects = np.repeat(np.arange(n_subjects), slices)
    y = subject_y[subjects]
    scores = []
    for _ in range(n_models):
        effect = rng.normal(0.0, 1.0, n_subjects)[subjects]
        scores.append(1.0 / (1.0 + np.exp(-(effect + rng.normal(0.0, 0.1, len(y))))))
    return y, subjects, scores


def coverage_of_chance(
    replicates: int = 400, n_boot: int = 300, seed: int = 0, reference: int = 200
) -> tuple[float, float]:
    """Share of 95% AUC intervals covering 0.5: (cluster bootstrap, slice bootstrap on the first ``reference``)."""
    rng = np.random.default_rng(seed)
    cluster = slices = 0
    for r in range(replicates):
        y, subjects, (p,) = _no_signal(rng)
        est = U.cluster_bootstrap(y, p, subjects, n_boot=n_boot, seed=r)["auc"]
        assert est.ci_method == "cluster_bootstrap" and est.estimable
        cluster += est.ci_low <= 0.5 <= est.ci_high
        if r < reference:  # the slower reference: every slice independent
            low, high = U.bootstrap_auc_ci(y, p, n_boot=n_boot, seed=r)
            slices += low <= 0.5 <= high
    return cluster / replicates, slices / min(reference, replicates)


def false_positive_rate(replicates: int = 400, n_boot: int = 300, seed: int = 1) -> tuple[float, float]:
    """Share of p < 0.05 comparing two no-signal models: (paired cluster bootstrap, slice-level DeLong)."""
    rng = np.random.default_rng(seed)
    cluster = slices = 0
    for r in range(replicates):
        y, subjects, (p1, p2) = _no_signal(rng, n_models=2)
        cmp = U.compare_aucs(y, p1, p2, subjects, n_boot=n_boot, seed=r)
        assert cmp.method == "paired_cluster_bootstrap" and cmp.estimable
        cluster += cmp.p_value < 0.05
        slices += U.delong_test(y, p1, p2)[1] < 0.05
    return cluster / replicates, slices / replicates


def test_cluster_interval_covers_chance_when_slices_do_not():
    with threadpool_limits(limits=1):
        cluster, slices = coverage_of_chance()
    assert cluster >= 0.90
    assert slices < 0.70


def test_paired_cluster_comparison_keeps_its_false_positive_rate():
    with threadpool_limits(limits=1):
        cluster, slices = false_positive_rate()
    assert cluster <= 0.08
    assert slices > 0.3  # what slice-level DeLong claims on the same data


@pytest.fixture
def clustered() -> pd.DataFrame:
    """A test part with signal: 24 patients (10 stroke), 3-8 slices each."""
    rng = np.random.default_rng(7)
    rows = []
    for s in range(24):
        label = int(s < 10)
        for k in range(int(rng.integers(3, 9))):
            p = float(np.clip(0.35 + 0.25 * label + rng.normal(0, 0.15), 0.01, 0.99))
            rows.append({"subject": f"pt{s:02d}", "y": label, "label": ["normal", "stroke"][label],
                         "prob_normal": 1 - p, "prob_stroke": p})
    return pd.DataFrame(rows)


# --- the engine against plain loops --------------------------------------------------------------------


def _naive_cluster_values(y, P, subjects, threshold, n_boot, seed):
    """One loop per resample, with the engine's draws: whole subjects, stratified by subject label."""
    codes, _ = pd.factorize(pd.Series(subjects).astype(str))
    subject_y = np.zeros(codes.max() + 1, dtype=int)
    np.maximum.at(subject_y, codes, y)
    rng = np.random.default_rng(seed)
    draws = np.concatenate(
        [rng.choice(np.flatnonzero(subject_y == c), size=(n_boot, int((subject_y == c).sum()))) for c in (0, 1)],
        axis=1,
    )
    out = {m: [] for m in ("auc", "sensitivity", "specificity", "accuracy", "brier", "ece")}
    for row in draws:
        idx = np.concatenate([np.flatnonzero(codes == s) for s in row])
        yy, pp = y[idx], P[idx, 1]
        m = M.binary_metrics_at_threshold(yy, pp, threshold)
        out["auc"].append(roc_auc_score(yy, pp))
        for k in ("sensitivity", "specificity", "accuracy"):
            out[k].append(m[k])
        out["brier"].append(M.brier_score(yy, pp))
        out["ece"].append(M.expected_calibration_error(yy, pp))
    return out


def test_cluster_bootstrap_equals_a_plain_loop_over_resampled_subjects(clustered):
    y = clustered["y"].to_numpy()
    P = clustered[["prob_normal", "prob_stroke"]].to_numpy(copy=True)
    P[::4] = np.round(P[::4], 1)  # some ties
    result = U.cluster_bootstrap(y, P, clustered["subject"], metrics=U.METRICS, threshold=0.5, n_boot=200,
                                 seed=3, min_subjects=2)
    naive = _naive_cluster_values(y, P, clustered["subject"].to_numpy(), 0.5, 200, 3)
    for name, est in result.items():
        assert est.ci_method == "cluster_bootstrap"
        low, high = np.quantile(naive[name], [0.025, 0.975])
        assert (est.ci_low, est.ci_high) == pytest.approx((low, high), abs=1e-12), name


def test_point_estimates_match_metrics_and_sklearn(clustered):
    y = clustered["y"].to_numpy()
    p = clustered["prob_stroke"].to_numpy()
    result = U.cluster_bootstrap(y, p, clustered["subject"], metrics=U.METRICS, threshold=0.5, n_boot=50,
                                 classes=["normal", "stroke"])
    m = M.binary_metrics_at_threshold(y, p, 0.5)
    assert result["auc"].estimate == pytest.approx(roc_auc_score(y, p))
    for name in ("sensitivity", "specificity", "accuracy"):
        assert result[name].estimate == pytest.approx(m[name])
    assert result["brier"].estimate == pytest.approx(M.brier_score(y, p))
    assert result["ece"].estimate == pytest.approx(M.expected_calibration_error(y, p))
    assert result["auc"].n_subjects == {"normal": 14, "stroke": 10}
    assert result["auc"].n_images == {"normal": int((y == 0).sum()), "stroke": int((y == 1).sum())}
    for est in result.values():
        assert est.estimable and est.ci_low <= est.estimate <= est.ci_high and est.reason == ""


def test_both_auc_kernels_agree_exactly():
    rng = np.random.default_rng(2)
    subjects = np.repeat(np.arange(30), rng.integers(1, 6, 30))
    y = rng.integers(0, 2, len(subjects))
    p = np.round(rng.random(len(subjects)), 1)
    cl = R._clusters(y, p, subjects, None)
    counts = next(R._resample_counts(cl, 100, 0))
    a = R._WeightedAuc(y == 1, p, cl.codes)(counts)
    b = R._SubjectPairAuc(y == 1, p, cl.codes, len(cl.subject_y))(counts)
    np.testing.assert_array_equal(a, b)


# --- one image per subject: the previous slice bootstrap ---------------------------------------------


def _previous_bootstrap_auc_ci(y, P, *, n_boot=1000, seed=0, alpha=0.05):
    """automl.metrics.bootstrap_auc_ci before the cluster bootstrap (commit 5b284bc), verbatim in substance."""
    y_arr, P_arr = M._check_matrix(y, P)
    present = np.unique(y_arr)
    rng = np.random.default_rng(seed)
    columns = [1] if P_arr.shape[1] == 2 else list(present)
    chunk = max(1, min(int(n_boot), 2_000_000 // max(1, len(y_arr))))
    aucs, done = [], 0
    while done < n_boot:
        b = min(chunk, int(n_boot) - done)
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(y_arr == c), size=(b, int((y_arr == c).sum())), replace=True)
             for c in present],
            axis=1,
        )
        labels = y_arr[idx]
        aucs.append(np.mean([M._rank_auc(labels == c, P_arr[idx, c]) for c in columns], axis=0))
        done += b
    values = np.concatenate(aucs)
    values = values[np.isfinite(values)]
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize(("n", "n_boot", "seed"), [(40, 300, 0), (150, 1000, 3), (3000, 800, 1)])
def test_one_image_per_subject_reproduces_previous_slice_bootstrap(n_classes, n, n_boot, seed):
    rng = np.random.default_rng(n + n_classes)
    y = np.arange(n) % n_classes
    P = rng.dirichlet(np.ones(n_classes), n)
    P[np.arange(n), y] += 0.3
    P = np.round(P / P.sum(axis=1, keepdims=True), 2)
    P = P / P.sum(axis=1, keepdims=True)
    previous = _previous_bootstrap_auc_ci(y, P, n_boot=n_boot, seed=seed)
    assert U.bootstrap_auc_ci(y, P, n_boot=n_boot, seed=seed) == pytest.approx(previous, abs=1e-12)
    est = U.cluster_bootstrap(y, P, [f"s{i}" for i in range(n)], n_boot=n_boot, seed=seed)["auc"]
    assert est.ci_method == "bootstrap"
    assert (est.ci_low, est.ci_high) == pytest.approx(previous, abs=1e-12)


def test_metrics_still_serves_the_moved_functions():
    assert M.bootstrap_auc_ci is U.bootstrap_auc_ci and M.delong_test is U.delong_test
    from automl.metrics import bootstrap_auc_ci, delong_test  # noqa: F401 - the import is the test

    with pytest.raises(AttributeError, match="no_such_name"):
        M.no_such_name  # noqa: B018


# --- not estimable is a result -------------------------------------------------------------------------


def _cohort(n_pos: int, n_neg: int, slices: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    subject_y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    subjects = np.repeat(np.arange(n_pos + n_neg), slices)
    y = subject_y[subjects]
    return y, np.clip(0.5 * y + 0.5 * rng.random(len(y)), 0, 1), subjects


def test_too_few_subjects_for_an_interval():
    y, p, subjects = _cohort(3, 12)
    est = U.cluster_bootstrap(y, p, subjects, metrics=("auc", "sensitivity"), threshold=0.5, n_boot=100,
                              classes=["normal", "stroke"])
    for e in est.values():
        assert not e.estimable
        assert e.reason == "not estimable (n = 3 stroke / 12 normal subjects)"
        assert math.isnan(e.ci_low) and math.isnan(e.ci_high)
    assert math.isfinite(est["auc"].estimate)  # 3 vs 12 subjects still define an AUC, not its interval
    assert est["auc"].to_dict()["ci_low"] is None


def test_auc_needs_two_subjects_per_class():
    y, p, subjects = _cohort(1, 12)
    est = U.cluster_bootstrap(y, p, subjects, n_boot=100, classes=["normal", "stroke"])["auc"]
    assert math.isnan(est.estimate) and not est.estimable
    assert est.reason == "not estimable (n = 1 stroke / 12 normal subjects)"
    # a single class: still a result, not an exception
    est = U.cluster_bootstrap(np.zeros(8, int), np.linspace(0, 1, 8), np.arange(8) // 2, n_boot=100)["auc"]
    assert not est.estimable and est.reason == "not estimable (n = 0 positive / 4 negative subjects)"


def test_min_subjects_is_an_option():
    y, p, subjects = _cohort(3, 12)
    assert U.cluster_bootstrap(y, p, subjects, n_boot=100, min_subjects=3)["auc"].estimable


def test_comparison_not_estimable():
    y, p, subjects = _cohort(4, 12)
    cmp = U.compare_aucs(y, p, p[::-1], subjects, n_boot=100, classes=["normal", "stroke"])
    assert not cmp.estimable and math.isnan(cmp.p_value)
    assert cmp.reason == "not estimable (n = 4 stroke / 12 normal subjects)"


# --- paired comparison -----------------------------------------------------------------------------------


def test_compare_without_clusters_is_delong():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    p1 = np.clip(0.4 * y + 0.6 * rng.random(120), 0, 1)
    p2 = np.clip(0.2 * y + 0.8 * rng.random(120), 0, 1)
    z, p_value = U.delong_test(y, p1, p2)
    for subjects in (None, np.arange(120)):
        cmp = U.compare_aucs(y, p1, p2, subjects)
        assert cmp.method == "delong" and cmp.n_boot == 0
        assert (cmp.z, cmp.p_value) == pytest.approx((z, p_value))
        assert cmp.difference == pytest.approx(roc_auc_score(y, p1) - roc_auc_score(y, p2))
        assert cmp.ci_low < cmp.difference < cmp.ci_high


def test_compare_clustered(clustered):
    y = clustered["y"].to_numpy()
    good = clustered["prob_stroke"].to_numpy()
    noise = np.random.default_rng(1).random(len(y))
    cmp = U.compare_aucs(y, good, noise, clustered["subject"], n_boot=500, seed=2)
    assert cmp.method == "paired_cluster_bootstrap" and cmp.level == "image"
    assert cmp.difference > 0 and cmp.p_value < 0.05 and cmp.ci_low > 0
    assert U.compare_aucs(y, good, noise, clustered["subject"], n_boot=500, seed=2) == cmp
    same = U.compare_aucs(y, good, good**2, clustered["subject"], n_boot=100)  # same ranks, same AUC
    assert (same.z, same.p_value) == (0.0, 1.0)
    assert json.dumps(cmp.to_dict(), allow_nan=False)


def test_compare_subject_level_is_delong_on_aggregated_frames(clustered):
    other = clustered.assign(prob_stroke=np.random.default_rng(4).random(len(clustered)))
    other["prob_normal"] = 1 - other["prob_stroke"]
    cmp = V.compare_subject_level(clustered, other, rule_1="mean", rule_2="max")
    a1 = M.aggregate_by_subject(clustered, how="mean")
    a2 = M.aggregate_by_subject(other, how="max")
    assert cmp.level == "subject" and cmp.method == "delong"
    assert cmp.auc_1 == pytest.approx(roc_auc_score(a1["y"], a1["prob_stroke"]))
    assert cmp.auc_2 == pytest.approx(roc_auc_score(a2["y"], a2["prob_stroke"]))
    assert cmp.p_value == pytest.approx(U.delong_test(a1["y"], a1["prob_stroke"], a2["prob_stroke"])[1])
    assert cmp.n_subjects == {"normal": 14, "stroke": 10}
    with pytest.raises(ValueError, match="different subjects"):
        V.compare_subject_level(clustered, other[other["subject"] != "pt03"])


# --- subject rule, headline ------------------------------------------------------------------------------


def _one_lesion_slice(seed: int = 0) -> pd.DataFrame:
    """The signal lives in one slice: positive patients have one slice at 0.9, the rest is noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(40):
        label = s % 2
        p = rng.uniform(0.05, 0.6, 12)
        if label:
            p[rng.integers(12)] = 0.9
        rows += [{"subject": f"p{s}", "y": label, "prob_normal": 1 - v, "prob_stroke": v} for v in p]
    return pd.DataFrame(rows)


def test_rule_selection_picks_max_when_the_signal_lives_in_one_slice():
    oof = _one_lesion_slice()
    choice = V.select_subject_rule(oof)
    assert choice.rule == "max"
    assert choice.auc_by_rule["max"] == 1.0 > choice.auc_by_rule["top3_mean"] > choice.auc_by_rule["mean"]
    agg = M.aggregate_by_subject(oof, how="max")
    assert choice.threshold == M.youden_threshold(agg["y"], agg["prob_stroke"])
    assert choice.threshold_method == "youden" and choice.n_subjects == {"normal": 20, "stroke": 20}
    target = V.select_subject_rule(oof, target_sensitivity=0.9)
    assert target.threshold_method == "sensitivity>=0.9"


def test_rule_selection_ties_go_to_mean():
    oof = _one_lesion_slice().groupby("subject", as_index=False).head(1)  # one slice each: all rules agree
    assert V.select_subject_rule(oof).rule == "mean"
    assert V.select_subject_rule(oof, rules=("max", "top3_mean", "mean")).rule == "mean"
    assert V.select_subject_rule(oof, rules=("max", "top3_mean")).rule == "max"


def test_headline_recomputes_with_sklearn(clustered):
    h = V.headline(clustered, rule="mean", threshold=0.5, model="simple_cnn", n_boot=300)
    agg = M.aggregate_by_subject(clustered, how="mean")
    assert h.subject["auc"].estimate == pytest.approx(roc_auc_score(agg["y"], agg["prob_stroke"]))
    tn, fp, fn, tp = confusion_matrix(agg["y"], agg["prob_stroke"] >= 0.5).ravel()
    assert h.counts == {"tp": tp, "fn": fn, "tn": tn, "fp": fp}
    assert h.subject["sensitivity"].estimate == pytest.approx(tp / (tp + fn))
    assert h.subject["specificity"].estimate == pytest.approx(tn / (tn + fp))
    assert h.slice["auc"].estimate == pytest.approx(roc_auc_score(clustered["y"], clustered["prob_stroke"]))
    assert {e.ci_method for e in h.subject.values()} == {"bootstrap"}
    assert {e.ci_method for e in h.slice.values()} == {"cluster_bootstrap"}
    assert h.n_subjects == {"normal": 14, "stroke": 10} and h.classes == ["normal", "stroke"]
    assert h.warning is None
    assert json.loads(json.dumps(h.to_dict(), allow_nan=False))["subject"]["auc"]["ci_method"] == "bootstrap"
    with_slice = V.headline(clustered, rule="max", threshold=0.5, slice_threshold=0.5, n_boot=100)
    assert set(with_slice.slice) == {"auc", "brier", "ece", "sensitivity", "specificity", "accuracy"}


def test_headline_multiclass_majority_strata():
    rng = np.random.default_rng(3)
    subjects = np.repeat(np.arange(30), 4)
    subject_y = np.arange(30) % 3
    y = subject_y[subjects].copy()
    y[::4] = 0  # one normal slice in every patient: the majority still gives the patient's class
    P = rng.dirichlet(np.ones(3), len(y))
    frame = pd.DataFrame({"subject": subjects, "y": y, "prob_n": P[:, 0], "prob_i": P[:, 1], "prob_h": P[:, 2]})
    est = U.cluster_bootstrap(y, P, subjects, metrics=("auc", "accuracy", "brier", "ece"), n_boot=100)
    assert est["auc"].n_subjects == {"class 0": 10, "class 1": 10, "class 2": 10}
    assert est["auc"].estimate == pytest.approx(roc_auc_score(y, P, multi_class="ovr"))
    h = V.headline(frame, rule="mean", threshold=None, n_boot=100)
    assert set(h.subject) == {"auc", "accuracy", "brier"} and h.counts == {}
    with pytest.raises(ValueError, match="binary"):
        U.cluster_bootstrap(y, P, subjects, metrics=("sensitivity",), threshold=0.5)


# --- words -----------------------------------------------------------------------------------------------


def _estimate(value, low, high, n_subjects, estimable=True):
    return U.MetricEstimate("auc", value, low, high, "bootstrap", 0.05, 1000, n_subjects, n_subjects, estimable,
                            "" if estimable else "not estimable")


def _headline(auc: U.MetricEstimate, model: str = "simple_cnn") -> V.Headline:
    return V.Headline(model, "mean", 0.5, ["normal", "stroke"], {"auc": auc}, {}, {}, auc.n_subjects,
                      auc.n_images)


def _comparison(diff: float, p_value: float, estimable: bool = True) -> U.Comparison:
    return U.Comparison("delong", 0.7, 0.7 - diff, diff, diff - 0.1, diff + 0.1, 1.0, p_value, 0.05, 0, {}, {},
                        estimable, "" if estimable else "not estimable")


def test_verdict_sentence():
    best = _headline(_estimate(0.654, 0.42, 0.861, {"normal": 12, "stroke": 8}))
    text = V.verdict_sentence(best, {"logreg": _comparison(0.1, 0.48)})
    assert text == ("simple_cnn: patient-level AUC 0.65 (95% CI 0.42–0.86, 8 stroke / 12 normal patients), "
                    "not distinguishable from chance; not distinguishable from logreg (p = 0.48).")
    below = _headline(_estimate(0.31, 0.12, 0.47, {"normal": 40, "stroke": 35}))
    assert V.verdict_sentence(below, {}).startswith("simple_cnn: patient-level AUC 0.31 (95% CI 0.12–0.47, "
                                                     "35 stroke / 40 normal patients), below chance;")
    strong = _headline(_estimate(0.91, 0.82, 0.97, {"normal": 40, "stroke": 35}), model="resnet18")
    text = V.verdict_sentence(strong, {"logreg": _comparison(0.2, 0.0004), "vit": _comparison(-0.05, 0.012),
                                       "efficientnet": _comparison(0.0, math.nan, estimable=False)})
    assert text == ("resnet18: patient-level AUC 0.91 (95% CI 0.82–0.97, 35 stroke / 40 normal patients); "
                    "better than logreg (p < 0.001); worse than vit (p = 0.012); "
                    "comparison with efficientnet not estimable.")


def test_verdict_sentence_not_estimable_and_single_model():
    small = _headline(_estimate(1.0, math.nan, math.nan, {"normal": 12, "stroke": 3}, estimable=False))
    text = V.verdict_sentence(small)
    assert text == ("simple_cnn: patient-level AUC not estimable (3 stroke / 12 normal patients); "
                    "the only model scored.")
    assert "1.00" not in text
    with pytest.raises(ValueError, match="Comparison"):
        V.verdict_sentence(small, {"logreg": 0.3})


@pytest.mark.parametrize(("p", "text"), [(0.48, "p = 0.48"), (0.012, "p = 0.012"), (0.0499, "p = 0.0499"),
                                          (0.0504, "p = 0.05"), (1.0, "p = 1"), (0.0009, "p < 0.001")])
def test_p_values_never_round_across_alpha(p, text):
    assert V._format_p(p, 0.05) == text


def test_verdict_from_a_real_headline_says_not_estimable():
    y, p, subjects = _cohort(3, 12)
    frame = pd.DataFrame({"subject": subjects, "y": y, "prob_normal": 1 - p, "prob_stroke": p})
    h = V.headline(frame, rule="mean", threshold=0.5, model="m", n_boot=100)
    assert V.verdict_sentence(h).startswith("m: patient-level AUC not estimable (3 stroke / 12 normal patients)")
    assert h.warning.startswith("Small test part: 3 stroke / 12 normal patients (fewer than 10 in a class)")


def test_small_cohort_warning():
    assert V.small_cohort_warning({"normal": 12, "stroke": 10}) is None
    text = V.small_cohort_warning({"normal": 12, "stroke": 8})
    assert "8 stroke / 12 normal patients" in text and "fewer than 10" in text
    assert V.small_cohort_warning({"normal": 12, "stroke": 8}, minimum=5) is None
    with pytest.raises(ValueError, match="minimum"):
        V.small_cohort_warning({"normal": 12}, minimum=0)
    with pytest.raises(ValueError, match="-1"):
        V.small_cohort_warning({"normal": -1})


# --- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_boot": 5}, "n_boot must be an integer >= 10, got 5"),
        ({"n_boot": "many"}, "'many'"),
        ({"alpha": 1.5}, "alpha must lie in \\(0, 1\\), got 1.5"),
        ({"min_subjects": 1}, "min_subjects must be an integer >= 2, got 1"),
        ({"metrics": ("auc", "f1")}, "unknown metric\\(s\\) \\['f1'\\]"),
        ({"metrics": "auc"}, "non-empty sequence"),
        ({"metrics": ("sensitivity",)}, "need a threshold"),
        ({"threshold": 1.5}, "threshold must lie in \\[0, 1\\].*1.5"),
        ({"n_bins": 0}, "n_bins must be a positive integer, got 0"),
        ({"classes": ["only"]}, "classes must name the 2 classes"),
        ({"subjects": [1, 2]}, "one id per image"),
        ({"subjects": [None] * 60}, "missing"),
    ],
)
def test_cluster_bootstrap_rejects_bad_input(kwargs, match):
    y, p, subjects = _cohort(5, 10)
    kwargs = {"subjects": subjects, **kwargs}
    with pytest.raises(ValueError, match=match):
        U.cluster_bootstrap(y, p, **kwargs)


def test_other_functions_reject_bad_input(clustered):
    y, p = clustered["y"].to_numpy(), clustered["prob_stroke"].to_numpy()
    with pytest.raises(ValueError, match="different lengths"):
        U.compare_aucs(y, p, p[:-1])
    with pytest.raises(ValueError, match="binary"):
        U.compare_aucs(np.arange(len(p)) % 3, p, p)
    with pytest.raises(ValueError, match="'median'"):
        V.select_subject_rule(clustered, rules=("mean", "median"))
    with pytest.raises(ValueError, match="two classes"):
        V.select_subject_rule(clustered[clustered["y"] == 0])
    with pytest.raises(ValueError, match="threshold is required"):
        V.headline(clustered, rule="mean", threshold=None)
    with pytest.raises(ValueError, match="top0_mean"):
        V.headline(clustered, rule="top0_mean", threshold=0.5)
    with pytest.raises(ValueError, match="prob_<class>"):
        V.headline(clustered.drop(columns="prob_normal"), rule="mean", threshold=0.5)
    with pytest.raises(ValueError, match="alpha"):
        V.verdict_sentence(V.headline(clustered, rule="mean", threshold=0.5, n_boot=20), alpha=2)


def test_labels_per_slice_count_every_patient_holding_slices_of_a_class() -> None:
    """Slice labels (a stroke patient also has normal slices): the slice AUC is estimable from the patients that
    hold slices of each class, while the patient-level AUC (1 normal patient) is not; the verdict says both."""
    rng = np.random.default_rng(3)
    rows = []
    for s in range(12):
        n = 10
        y = np.zeros(n, dtype=int) if s == 0 else (np.arange(n) >= 5).astype(int)  # patient 0 has no lesion
        p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.1, n), 0, 1)
        rows += [{"subject": f"p{s}", "y": int(a), "prob_Normal": 1 - b, "prob_Stroke": b} for a, b in zip(y, p)]
    frame = pd.DataFrame(rows)
    est = U.cluster_bootstrap(frame["y"], frame["prob_Stroke"], frame["subject"], classes=["Normal", "Stroke"],
                            n_boot=200)["auc"]
    assert est.n_subjects == {"Normal": 1, "Stroke": 11}
    assert est.estimable and est.ci_method == "cluster_bootstrap" and est.ci_low > 0.5
    best = V.headline(frame.assign(path=range(len(frame))), rule="mean", threshold=0.5, model="m", n_boot=200)
    assert not best.subject["auc"].estimable
    sentence = V.verdict_sentence(best)
    assert "patient-level AUC not estimable" in sentence and "slice-level AUC" in sentence
