"""Tests of the nested evaluation (automl.nested, ``--outer-folds K``): a real K=2 run on the tiny phantom.

One module-scoped nested study (logistic regression only, 32 px, 2 outer folds, no leakage audit) is
shared by the read-only tests; the resume test works on a copy.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from automl import search
from automl.nested import NESTED_COLUMNS, headline_text, inner_config, pool_outer_folds
from automl.results import StudyError, load_study
from automl.search import SearchConfig, run_search
from automl.split import make_split, outer_test_parts
from automl.study import StudyFolder

K = 2


def _config(out: Path, **kwargs) -> SearchConfig:
    values = dict(preset="smoke", study="nest", leaderboards=str(out), models=("logreg",), n_trials=2,
                  leakage_audit="none", outer_folds=K)
    values.update(kwargs)
    return SearchConfig(**values)


@pytest.fixture(scope="module")
def nested_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_search(_config(tmp_path_factory.mktemp("leaderboards")), progress_bars=False)


def _manifest(n_subjects: int = 30, n_classes: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"path": f"c{s % n_classes}/{s} ({k}).png", "label": f"c{s % n_classes}", "y": s % n_classes,
             "subject": f"p{s:03d}"} for s in range(n_subjects) for k in range(int(rng.integers(2, 8)))]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ split and config


@pytest.mark.parametrize("n_outer", [2, 3, 5])
def test_outer_parts_partition_the_subjects_stratified(n_outer: int) -> None:
    table = _manifest()
    parts = outer_test_parts(table, n_outer, seed=0)
    assert len(parts) == n_outer
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(table)))  # every image exactly once
    subjects = [set(table["subject"].iloc[p]) for p in parts]
    assert sum(len(s) for s in subjects) == table["subject"].nunique()  # no subject in two parts
    per_class = [table.iloc[p].groupby("y")["subject"].nunique() for p in parts]
    assert all(abs(c[y] - 15 / n_outer) <= 1 for c in per_class for y in (0, 1))  # subjects stratified by label
    for k, part in enumerate(parts):
        split = make_split(table, n_folds=3, seed=0, outer=(n_outer, k))
        assert np.array_equal(split.test_index, part)
        assert not set(table["subject"].iloc[split.test_index]) & set(table["subject"].iloc[split.cv_index])
    assert [p.tolist() for p in outer_test_parts(table, n_outer, seed=0)] == [p.tolist() for p in parts]


def test_the_ordinary_split_ignores_outer_folds() -> None:
    table = _manifest()
    plain = make_split(table, test_size=0.25, n_folds=3, seed=0)
    assert np.array_equal(plain.test_index, make_split(table, test_size=0.25, n_folds=3, seed=0, outer=None).test_index)
    with pytest.raises(ValueError, match="outer"):
        make_split(table, n_folds=3, outer=(3, 3))
    with pytest.raises(ValueError, match="--outer-folds"):
        outer_test_parts(_manifest(n_subjects=6), 4)  # 3 subjects per class, 4 outer folds


@pytest.mark.parametrize("value", [0, 1, 11, 2.5, "3", True])
def test_bad_outer_folds_raise_naming_the_flag(value: object) -> None:
    with pytest.raises(ValueError, match="--outer-folds"):
        SearchConfig(preset="smoke", outer_folds=value)


def test_outer_folds_need_the_refits_and_outer_fold_needs_outer_folds() -> None:
    with pytest.raises(ValueError, match="--outer-folds needs the refits"):
        SearchConfig(preset="smoke", outer_folds=3, refit=False)
    with pytest.raises(ValueError, match="outer_fold"):
        SearchConfig(preset="smoke", outer_fold=0)
    with pytest.raises(ValueError, match="outer_fold"):
        SearchConfig(preset="smoke", outer_folds=3, outer_fold=3)


@pytest.mark.parametrize("argv", [["--outer-folds", "1"], ["--outer-folds", "three"], ["--outer-folds", "12"]])
def test_cli_bad_outer_folds_exit_2_naming_the_flag(argv: list[str], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        search.main([*argv, "--leaderboards", str(tmp_path)])
    assert info.value.code == 2
    assert "--outer-folds" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_inner_configs_live_under_the_parent(tmp_path: Path) -> None:
    parent = _config(tmp_path, outer_folds=3, test_size=0.3)
    inner = inner_config(parent, 2)
    assert inner.study_dir == StudyFolder(parent.study_dir).outer_study(2).root == tmp_path / "nest" / "outer" / "2"
    assert (inner.outer_folds, inner.outer_fold, inner.storage) == (3, 2, None)
    assert inner.models == parent.models and inner.folds == parent.folds and inner.seed == parent.seed
    args = search.build_parser().parse_args(["--outer-folds", "3", "--leaderboards", str(tmp_path)])
    assert search.config_from_args(args).outer_folds == 3


def test_the_nested_file_names_live_in_the_folder_object(tmp_path: Path) -> None:
    folder = StudyFolder(tmp_path / "nest")
    assert (folder.nested_csv.name, folder.nested_json.name) == ("nested.csv", "nested.json")
    assert folder.outer_study(3).root == folder.outer_dir / "3" == tmp_path / "nest" / "outer" / "3"
    for bad in (-1, True, "1"):
        with pytest.raises(ValueError, match="outer fold"):
            folder.outer_study(bad)


# ------------------------------------------------------------------------------------------------ the nested study


def test_every_subject_is_tested_in_exactly_one_outer_fold(nested_study: Path) -> None:
    folder = StudyFolder(nested_study)
    nested = pd.read_csv(folder.nested_csv)
    config = json.loads(folder.config_path.read_text())
    assert list(nested.columns) == [*NESTED_COLUMNS, *(f"prob_{c}" for c in config["classes"])]
    manifest = pd.read_csv(folder.manifest_path)
    assert sorted(nested["path"]) == sorted(manifest["path"])  # every image once
    assert (nested.groupby("subject")["outer_fold"].nunique() == 1).all()
    assert set(nested["subject"].astype(str)) == set(manifest["subject"].astype(str))
    for k in range(K):
        inner = folder.outer_study(k)
        split = pd.read_csv(inner.split_path)
        test = set(split.loc[split["part"] == "test", "path"])
        assert test == set(nested.loc[nested["outer_fold"] == k, "path"])
        cv_subjects = set(split.loc[split["part"] == "cv", "subject"].astype(str))
        assert not cv_subjects & set(split.loc[split["part"] == "test", "subject"].astype(str))
        inner_config_json = json.loads(inner.config_path.read_text())
        assert (inner_config_json["outer_folds"], inner_config_json["outer_fold"]) == (K, k)
        assert inner.journal_path.is_file() and inner.leaderboard_csv.is_file()


def test_winners_are_chosen_by_inner_cv_not_by_test(nested_study: Path) -> None:
    folder = StudyFolder(nested_study)
    summary = json.loads(folder.nested_json.read_text())
    nested = pd.read_csv(folder.nested_csv)
    assert summary["outer_folds"] == K and summary["method"] == f"nested subject-grouped CV, {K} outer folds"
    for record in summary["folds"]:
        inner = folder.outer_study(record["outer_fold"])
        board = pd.read_csv(inner.leaderboard_csv)
        best = board[board["state"] == "COMPLETE"].sort_values("cv_auc_mean", ascending=False).iloc[0]
        assert record["winner"] == best["model"] and record["winner_trial"] == int(best["trial"])
        assert record["inner_cv_auc"] == pytest.approx(best["cv_auc_mean"])
        test = pd.read_csv(inner.test_predictions_path(record["winner"]))
        fold = nested[nested["outer_fold"] == record["outer_fold"]].reset_index(drop=True)
        assert (fold["model"] == record["winner"]).all()
        pd.testing.assert_frame_equal(fold[test.columns], test)  # the winner's own test predictions


def _aggregate(frame: pd.DataFrame, pos: str, rule: str) -> pd.DataFrame:
    k = {"mean": None, "max": 1, "top3_mean": 3}[rule]
    score = (frame.groupby("subject")[pos].mean() if k is None
             else frame.groupby("subject")[pos].apply(lambda s: s.nlargest(k).mean()))
    return pd.DataFrame({"y": frame.groupby("subject")["y"].max(), "p": score})


def test_nested_csv_recomputes_nested_json_with_sklearn(nested_study: Path) -> None:
    folder = StudyFolder(nested_study)
    summary = json.loads(folder.nested_json.read_text())
    nested = pd.read_csv(folder.nested_csv)
    pos = f"prob_{summary['classes'][1]}"
    estimate = summary["estimate"]
    assert estimate["slice"]["auc"]["estimate"] == pytest.approx(roc_auc_score(nested["y"], nested[pos]))
    patients = []
    for record in summary["folds"]:
        agg = _aggregate(nested[nested["outer_fold"] == record["outer_fold"]], pos, record["subject_rule"])
        patients.append(agg.assign(decision=(agg["p"] >= record["subject_threshold"]).astype(int)))
    patients = pd.concat(patients)
    assert estimate["subject"]["auc"]["estimate"] == pytest.approx(roc_auc_score(patients["y"], patients["p"]))
    tp = int(((patients["y"] == 1) & (patients["decision"] == 1)).sum())
    tn = int(((patients["y"] == 0) & (patients["decision"] == 0)).sum())
    assert estimate["counts"]["tp"] == tp and estimate["counts"]["tn"] == tn
    assert estimate["subject"]["sensitivity"]["estimate"] == pytest.approx(tp / (patients["y"] == 1).sum())
    assert estimate["subject"]["specificity"]["estimate"] == pytest.approx(tn / (patients["y"] == 0).sum())
    n_subjects = patients.groupby("y").size()
    assert estimate["n_subjects"] == {c: int(n_subjects[y]) for y, c in enumerate(summary["classes"])}
    auc = estimate["subject"]["auc"]
    if auc["estimable"]:
        assert auc["ci_low"] <= auc["estimate"] <= auc["ci_high"]
    assert "patient-level AUC" in summary["verdict"] and "every patient tested once" in summary["verdict"]
    for key in ("subject_auc", "test_auc"):
        values = [r[key] for r in summary["folds"] if r[key] is not None]
        assert summary["per_fold_mean"][key] == pytest.approx(np.mean(values) if values else None)
    for record in summary["folds"]:  # each fold's slice AUC: its own part of nested.csv
        fold = nested[nested["outer_fold"] == record["outer_fold"]]
        assert record["test_auc"] == pytest.approx(roc_auc_score(fold["y"], fold[pos]))


def test_the_parent_leaderboard_leads_with_the_nested_estimate(nested_study: Path) -> None:
    folder = StudyFolder(nested_study)
    md = folder.leaderboard_md.read_text()
    first = md.split("\n\n")[1]
    assert first.startswith(f"**{headline_text(K)}.**") and "(every patient tested once)" in first
    assert "Nested evaluation (an outer CV around the search) is not done." not in md
    report = json.loads(folder.report_path.read_text())
    assert report["headline_evaluation"] == "nested"
    assert report["nested"]["outer_folds"] == K
    inner_report = json.loads(folder.outer_study(0).report_path.read_text())
    assert inner_report["headline_evaluation"] == "single test part"
    inner_md = folder.outer_study(0).leaderboard_md.read_text()
    assert "test part = outer fold 0" in inner_md and "Headline: nested" not in inner_md


def test_results_reads_the_nested_evaluation(nested_study: Path, tmp_path: Path) -> None:
    study = load_study(nested_study)
    assert study.headline_evaluation == "nested"
    nested = study.nested
    assert nested is not None and nested.outer_folds == K
    assert nested.method == f"nested subject-grouped CV, {K} outer folds"
    assert nested.verdict and nested.estimate["subject"]["auc"]["metric"] == "auc"
    assert list(nested.folds["outer_fold"]) == list(range(K))
    assert len(nested.predictions) == len(study.manifest)
    inner = nested.inner_study(1)
    assert inner.nested is None and inner.headline_evaluation == "single test part"
    copy = tmp_path / "nest"
    shutil.copytree(nested_study, copy, ignore=shutil.ignore_patterns("outer"))
    StudyFolder(copy).nested_csv.unlink()
    with pytest.raises(StudyError, match="nested.csv"):
        _ = load_study(copy).nested


def test_resume_resumes_each_inner_study(nested_study: Path, tmp_path: Path) -> None:
    out = tmp_path / "lb"
    shutil.copytree(nested_study, out / "nest")
    before = json.loads((out / "nest" / "nested.json").read_text())
    config = _config(out)
    run_search(config, progress_bars=False)  # nothing to search: every study already holds its trials
    for k in range(K):
        board = pd.read_csv(StudyFolder(out / "nest").outer_study(k).leaderboard_csv)
        assert len(board) == 2
    after = json.loads((out / "nest" / "nested.json").read_text())
    assert after["estimate"] == before["estimate"] and after["folds"] == before["folds"]
    with pytest.raises(ValueError, match="--outer-folds 2"):
        run_search(_config(out, outer_folds=3), progress_bars=False)


def test_pooling_names_a_missing_fold(nested_study: Path, tmp_path: Path) -> None:
    copy = tmp_path / "nest"
    shutil.copytree(nested_study, copy)
    winner = json.loads(StudyFolder(copy).nested_json.read_text())["folds"][1]["winner"]
    StudyFolder(copy).outer_study(1).test_predictions_path(winner).unlink()
    with pytest.raises(ValueError, match="outer fold 1"):
        pool_outer_folds(copy, outer_folds=K)


def test_the_dashboard_and_the_report_lead_with_the_nested_estimate(nested_study: Path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    from ui.report import build_report

    study = load_study(nested_study)
    text = build_report(nested_study)
    assert study.nested.verdict and text.index("Nested estimate.") < text.index("Verdict.")
    assert html_escape(study.nested.verdict) in text
    monkeypatch.setenv("STROKECT_LEADERBOARDS", str(nested_study.parent))
    monkeypatch.setenv("STROKECT_NO_AUTOSTART", "1")
    monkeypatch.setenv("STROKECT_NO_GRADIO", "1")
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert at.markdown[0].value == f"### {study.nested.verdict}"
    assert any("every patient tested once" in c.value for c in at.caption)


def html_escape(text: str) -> str:
    import html

    return html.escape(text)
