"""Scan-level scoring: slices of CT volumes aggregated per scan with the patient rule; patients resampled."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from automl.scoring import SubjectAssessment, assess_scans
from automl.verdict import SubjectRule


def _assessment(rule: str = "mean", threshold: float = 0.5) -> SubjectAssessment:
    return SubjectAssessment(SubjectRule(rule, threshold, "youden", {}, {}), threshold, "calibration", None)


def _frame(seed: int = 0, n_patients: int = 24, scans_per_patient: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for s in range(scans_per_patient):
            y = int((p + s) % 2)  # a patient has one normal and one stroke scan
            for k in range(5):
                prob = float(np.clip(0.5 + (0.1 if y else -0.1) + rng.normal(0, 0.4), 0.01, 0.99))
                rows.append({"path": f"P{p}/S{s}.nii.gz#{k}", "y": y, "subject": f"P{p}", "scan": f"P{p}/S{s}.nii.gz",
                             "prob_Normal": 1 - prob, "prob_Stroke": prob})
    return pd.DataFrame(rows)


def test_scan_auc_is_the_auc_of_the_aggregated_scans_and_intervals_resample_patients():
    frame = _frame()
    result = assess_scans(frame, _assessment("mean"), ["Normal", "Stroke"], n_boot=300)
    assert result["n_scans"] == 48 and result["n_patients"] == 24 and not result["same_as_patients"]
    agg = frame.groupby("scan").agg(y=("y", "max"), p=("prob_Stroke", "mean"))
    auc = result["estimates"]["auc"]
    assert auc.estimate == pytest.approx(roc_auc_score(agg["y"], agg["p"]))
    assert auc.ci_method == "cluster_bootstrap" and auc.ci_low < auc.estimate < auc.ci_high
    sens = result["estimates"]["sensitivity"]
    assert sens.estimate == pytest.approx(((agg["p"] >= 0.5) & (agg["y"] == 1)).sum() / (agg["y"] == 1).sum())


def test_max_rule_is_applied_per_scan():
    frame = _frame(seed=1)
    result = assess_scans(frame, _assessment("max", 0.7), ["Normal", "Stroke"], n_boot=200)
    agg = frame.groupby("scan").agg(y=("y", "max"), p=("prob_Stroke", "max"))
    assert result["estimates"]["auc"].estimate == pytest.approx(roc_auc_score(agg["y"], agg["p"]))


def test_no_scan_column_or_no_rule_gives_none():
    frame = _frame().drop(columns="scan")
    assert assess_scans(frame, _assessment(), ["Normal", "Stroke"]) is None
    no_rule = SubjectAssessment(None, None, "", None, "no rule")
    assert assess_scans(_frame(), no_rule, ["Normal", "Stroke"]) is None
    images = _frame().assign(scan="")
    assert assess_scans(images, _assessment(), ["Normal", "Stroke"]) is None
