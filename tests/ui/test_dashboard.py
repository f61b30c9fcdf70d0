"""The Streamlit dashboard run headless through ``streamlit.testing.v1.AppTest``, and the HTML report."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix
from streamlit.testing.v1 import AppTest

from automl.results import load_study
from ui import report
from ui.dashboard import TABS

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = REPO_ROOT / "app.py" if (REPO_ROOT / "app.py").is_file() else REPO_ROOT / "ui" / "dashboard.py"
DISCLAIMER = report.DISCLAIMER


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch):
    """Point the app at a leaderboards folder; never start Gradio or the demo search."""

    def configure(root: Path) -> AppTest:
        monkeypatch.setenv("STROKECT_LEADERBOARDS", str(root))
        monkeypatch.setenv("STROKECT_NO_AUTOSTART", "1")
        monkeypatch.setenv("STROKECT_NO_GRADIO", "1")
        return AppTest.from_file(str(APP), default_timeout=180)

    return configure


def _run_tab(at: AppTest, tab: str) -> AppTest:
    at.session_state["tab"] = tab
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error if DISCLAIMER not in e.value and "Leakage audit" not in e.value]


_SMOKE = pytest.param("smoke", marks=pytest.mark.slow)  # the real smoke search takes ~1 min on 2 cores
_FIXTURES = {"handmade": "handmade_study", "handmade3": "handmade_study3", "smoke": "smoke_study"}


@pytest.fixture(params=["handmade", "handmade3", _SMOKE])
def any_study(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(_FIXTURES[request.param])


@pytest.fixture(params=["handmade", _SMOKE])
def binary_study(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(_FIXTURES[request.param])


def test_every_tab_renders_without_error(app_env, any_study: Path) -> None:
    at = app_env(any_study.parent)
    for tab in TABS:
        _run_tab(at, tab)
        assert _errors(at) == [], (tab, _errors(at))
    assert any(DISCLAIMER in e.value for e in at.sidebar.error), "'not for clinical use' must be visible"


def test_leaderboard_rows(app_env, binary_study: Path) -> None:
    at = _run_tab(app_env(binary_study.parent), "Leaderboard")
    board = pd.read_csv(binary_study / "leaderboard.csv")
    shown = at.dataframe[0].value
    assert len(shown) == len(board)
    assert set(shown["trial"]) == set(board["trial"])
    assert "init" in shown.columns and "compare_p" in shown.columns  # version 1 delong_p read as compare_p
    # the best trial of each architecture carries the star
    done = board[board["cv_auc_mean"].notna()]
    best = set(done.loc[done.groupby("model")["cv_auc_mean"].idxmax(), "trial"])
    assert set(shown.loc[shown["best"] == "★", "trial"]) == best


def test_leakage_banner_green_below_gap(app_env, handmade_study: Path) -> None:
    at = _run_tab(app_env(handmade_study.parent), "Leaderboard")
    assert any("Leakage audit" in s.value for s in at.success)  # gap 0.03 <= 0.05: green
    assert not any("Leakage audit" in e.value for e in at.error)


def test_leakage_banner_red_above_gap(app_env, handmade_study: Path) -> None:
    import json

    path = handmade_study / "report.json"
    data = json.loads(path.read_text())
    data["leakage_audit"].update(slice_auc=0.95, gap=0.15, flagged=True)
    path.write_text(json.dumps(data))
    at = _run_tab(app_env(handmade_study.parent), "Leaderboard")
    assert any("Leakage audit" in e.value and "+0.150" in e.value for e in at.error)
    assert not any("Leakage audit" in s.value for s in at.success)


def _counts(at: AppTest) -> dict[str, int]:
    labels = {"True positives": "tp", "False negatives": "fn", "False positives": "fp", "True negatives": "tn"}
    return {labels[m.label]: int(m.value) for m in at.metric if m.label in labels}


@pytest.mark.parametrize("part", ["Test part", "Calibration part", "Out-of-fold"])
def test_threshold_slider_updates_confusion_counts(app_env, binary_study: Path, part: str) -> None:
    study = load_study(binary_study)
    model = study.best_model
    frame = {"Test part": study.test_predictions, "Calibration part": study.calibration_predictions,
             "Out-of-fold": study.oof_predictions}[part](model)
    y, p = frame["y"].to_numpy(), frame[f"prob_{study.classes[1]}"].to_numpy()

    at = app_env(binary_study.parent)
    at.session_state["tab"] = "Confusion matrix"
    at.run()
    at.radio(key="cm_part").set_value(part).run()
    slider = at.slider(key=f"threshold_{model}")
    assert slider.value == pytest.approx(study.threshold(model), abs=1e-3)  # default: the chosen threshold
    seen = []
    for threshold in (0.2, 0.5, 0.8):
        at.slider(key=f"threshold_{model}").set_value(threshold).run()
        assert not at.exception
        tn, fp, fn, tp = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1]).ravel()
        assert _counts(at) == {"tp": tp, "fn": fn, "fp": fp, "tn": tn}
        sensitivity = next(m.value for m in at.metric if m.label == "Sensitivity")
        assert sensitivity == f"{tp / (tp + fn):.1%}"
        seen.append((tp, fp))
    assert len(set(seen)) > 1, "the threshold must change the counts"


def test_multiclass_confusion_is_argmax(app_env, handmade_study3: Path) -> None:
    at = _run_tab(app_env(handmade_study3.parent), "Confusion matrix")
    assert not at.slider, "no threshold slider for 3 classes"
    assert any("argmax" in c.value for c in at.caption)
    assert _errors(at) == []


def test_empty_leaderboards_shows_demo_prompt(app_env, tmp_path: Path) -> None:
    root = tmp_path / "leaderboards"
    root.mkdir()
    at = app_env(root)
    at.run()
    assert not at.exception
    assert any("No study found" in i.value and "demo" in i.value for i in at.info)
    assert any(b.label == "Build the demo study now" for b in at.button)
    assert any(DISCLAIMER in e.value for e in at.sidebar.error)
    assert list(root.iterdir()) == [], "with STROKECT_NO_AUTOSTART=1 nothing is started"


@pytest.mark.parametrize(
    ("filename", "content"),
    [("leaderboard.csv", "garbage\n"), ("config.json", "{oops")],
)
def test_broken_study_shows_error_not_traceback(app_env, handmade_study: Path, filename: str, content: str) -> None:
    (handmade_study / filename).write_text(content)
    at = app_env(handmade_study.parent)
    at.run()
    assert not at.exception
    assert any(filename in e.value for e in at.error)


@pytest.mark.parametrize(
    ("filename", "tab"),
    [("quality.json", "Data"), ("split.csv", "Data"), ("study.journal", "Search"),
     ("predictions/test_tiny_cnn.csv", "ROC / PR / calibration"), ("predictions/oof_tiny_cnn.csv", "Confusion matrix")],
)
def test_missing_file_is_reported_in_its_tab(app_env, handmade_study: Path, filename: str, tab: str) -> None:
    (handmade_study / filename).unlink()
    at = app_env(handmade_study.parent)
    at.session_state["tab"] = tab
    at.run()
    if tab == "Confusion matrix":
        at.radio(key="cm_part").set_value("Out-of-fold").run()
    assert not at.exception
    name = Path(filename).name
    assert any(name in m.value for m in list(at.error) + list(at.warning)), [e.value for e in at.error]
    _run_tab(at, "Leaderboard")  # the other tabs keep working
    assert _errors(at) == []


def test_switching_tabs_does_not_recompute(app_env, handmade_study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ui import charts

    calls = []
    original = charts.leaderboard_chart
    monkeypatch.setattr(charts, "leaderboard_chart", lambda *a, **k: calls.append(1) or original(*a, **k))
    at = app_env(handmade_study.parent)
    for tab in ("Leaderboard", "Data", "Leaderboard", "Confusion matrix", "Leaderboard"):
        _run_tab(at, tab)
    assert len(calls) == 1


def test_attribution_tab_explains_and_scores_lesion(app_env, handmade_study: Path) -> None:
    at = app_env(handmade_study.parent)
    at.session_state["tab"] = "Attributions"
    at.run()
    at.radio(key="att_source").set_value("Test part").run()
    # pick a lesion image: the phantom masks give a localisation score in the figure titles
    select = at.selectbox(key="att_image_Test part")
    stroke = next(i for i, label in enumerate(select.options) if "true Stroke" in label)
    select.set_value(stroke).run()
    at.multiselect(key="att_methods").set_value(["grad_cam", "saliency"]).run()
    assert not at.exception and _errors(at) == []
    assert any("grad_cam" in m.value and "saliency" in m.value for m in at.markdown)
    assert any("lesion mask" in c.value for c in at.caption)


def test_report_contains_tables_and_figures(handmade_study: Path, tmp_path: Path) -> None:
    out = report.write_report(handmade_study, tmp_path / "r.html")
    text = out.read_text()
    assert DISCLAIMER in text
    assert text.count("plotly.js v") == 1, "plotly.js embedded exactly once"
    assert text.count('class="plotly-graph-div"') == 7
    assert "Leakage audit" in text
    board = pd.read_csv(handmade_study / "leaderboard.csv")
    assert text.count("<tr") >= len(board) + 1  # header + one row per trial


def test_report_cli_errors(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        report.main([str(tmp_path / "nope")])
    assert info.value.code == 2



def test_demo_autostarts_in_the_background(app_env, handmade_study: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Without STROKECT_NO_AUTOSTART the demo build starts detached (automl.background), then the study shows."""
    import shutil

    import automl.background

    root = tmp_path / "empty_leaderboards"
    root.mkdir()
    calls = []

    def fake_start_search(config):  # the real one is tested by tests/automl/test_background.py
        calls.append(config)
        shutil.copytree(handmade_study, Path(config.leaderboards) / config.study)  # as if it had finished
        return automl.background.build_status(Path(config.leaderboards) / config.study)

    monkeypatch.setattr(automl.background, "start_search", fake_start_search)
    at = app_env(root)
    monkeypatch.delenv("STROKECT_NO_AUTOSTART")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(calls) == 1 and calls[0].preset == "demo" and calls[0].study == "demo"
    assert Path(calls[0].leaderboards) == root
    assert at.sidebar.selectbox(key="study").value == "demo"  # reran onto the new study
    at.run()
    assert len(calls) == 1, "later starts reuse the demo study"


@pytest.mark.parametrize("state", ["running", "partial"])
def test_a_build_in_progress_or_stopped_is_shown_not_a_broken_study(app_env, tmp_path: Path, state: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A demo folder without its leaderboard yet: progress (running) or a resume button (stopped), never an error."""
    import automl.background
    from automl.background import BuildStatus

    root = tmp_path / "leaderboards"
    (root / "demo").mkdir(parents=True)
    (root / "demo" / "config.json").write_text(json.dumps({"classes": ["Normal", "Stroke"], "n_trials": 10}))
    fake = BuildStatus(study_dir=root / "demo", state=state, pid=1, n_finished=3, n_planned=10,
                       message="building: 3 of 10 trials finished" if state == "running" else "a build stopped",
                       log_tail="trial 3: logreg")
    monkeypatch.setattr(automl.background, "build_status", lambda study_dir: fake)
    started = []
    monkeypatch.setattr(automl.background, "start_search", lambda config: started.append(config) or fake)
    at = app_env(root)
    at.run()
    assert not at.exception and _errors(at) == []
    assert not any(b.label == "Build the demo study now" for b in at.button)
    if state == "running":
        assert any("3 of 10" in (p.text or "") for p in at.get("progress")) and started == []
    else:
        at.button(key="resume_demo").click().run()
        assert len(started) == 1 and started[0].study == "demo"


def test_typed_study_path(app_env, handmade_study: Path, handmade_study3: Path) -> None:
    at = app_env(handmade_study.parent)
    at.run()
    at.sidebar.selectbox(key="study").set_value("Other folder…").run()
    assert any("Type the path" in i.value for i in at.info)
    at.sidebar.text_input(key="study_path").input(str(handmade_study3)).run()
    assert not at.exception
    assert at.sidebar.selectbox(key="model").options  # models of the typed study
    assert "handmade3" in at.title[0].value
    at.sidebar.text_input(key="study_path").input(str(handmade_study3.parent / "nope")).run()
    assert any("does not exist" in e.value for e in at.error)


# ------------------------------------------------------------------------------------------------ the verdict (issue 16)


@pytest.fixture
def scored_study(tmp_path: Path) -> Path:
    """A hand-made multi-slice study without signal, written by automl.leaderboard.write_leaderboard."""
    from automl.leaderboard import write_leaderboard
    from tests.automl._scored_study import make_scored_study

    study_dir = make_scored_study(tmp_path / "leaderboards", slices=6)
    write_leaderboard(study_dir, refit=False, audit=False)
    return study_dir


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    """Like ``scored_study`` with 1 stroke and 7 normal patients in the test part: nothing is estimable."""
    from automl.leaderboard import write_leaderboard
    from tests.automl._scored_study import make_scored_study

    study_dir = make_scored_study(tmp_path / "leaderboards", name="tiny", slices=4, test=(1, 7))
    write_leaderboard(study_dir, refit=False, audit=False)
    return study_dir


def test_the_verdict_tops_the_leaderboard_tab(app_env, scored_study: Path) -> None:
    verdict = load_study(scored_study).verdict
    assert verdict and "not distinguishable from chance" in verdict
    at = _run_tab(app_env(scored_study.parent), "Leaderboard")
    assert at.markdown[0].value == f"### {verdict}"  # the first thing of the tab, large
    assert _errors(at) == []
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Test patients (Stroke / Normal)"] == "24 / 24"
    assert float(metrics["Patient-level AUC"]) == pytest.approx(load_study(scored_study).refit_row("tiny_cnn")["subject_auc"], abs=0.005)
    assert any("selection score (CV, best of 2 trials) 0.700" in c.value for c in at.caption)
    assert "compare_p" in at.dataframe[0].value.columns


def test_only_the_winner_is_highlighted(scored_study: Path) -> None:
    from ui.dashboard import winner_style

    study = load_study(scored_study)
    table = report.leaderboard_table(study.leaderboard)
    styles = winner_style(table, study.winner_trial)._compute().ctx  # {(row, col): [(property, value)]}
    highlighted = {row for (row, _), props in styles.items() if any("background-color" in p for p, _ in props)}
    assert highlighted == {int(np.flatnonzero(table["trial"] == study.winner_trial)[0])}


def test_not_estimable_is_shown_not_zero(app_env, tiny_study: Path) -> None:
    reason = "not estimable (n = 1 Stroke / 7 Normal patients)"
    at = _run_tab(app_env(tiny_study.parent), "Leaderboard")
    assert at.markdown[0].value.startswith("### tiny_cnn: patient-level AUC not estimable (1 Stroke / 7 Normal")
    assert any(w.value.startswith("Small test part: 1 Stroke / 7 Normal patients") for w in at.warning)
    assert {m.label: m.value for m in at.metric}["Patient-level AUC"] == "–"
    assert any(c.value == reason for c in at.caption)
    shown = at.dataframe[0].value
    assert shown.loc[shown["refit"], "test_auc"].isna().all()  # no 0.000 / 1.000 from one patient
    at = _run_tab(at, "ROC / PR / calibration")
    specs = " ".join(c.proto.spec for c in at.get("plotly_chart")).replace("\\u002f", "/")
    rule = load_study(tiny_study).refit_row("tiny_cnn")["subject_rule"]
    assert f"tiny_cnn (patients, {rule}): {reason}" in specs  # the patient-level ROC
    assert f"tiny_cnn: {reason}" in specs  # the slice-level ROC and precision-recall curves
    assert "0.000)" not in specs and "1.000)" not in specs


def test_report_opens_with_the_verdict(scored_study: Path, tiny_study: Path, tmp_path: Path) -> None:
    verdict = load_study(scored_study).verdict
    text = report.build_report(scored_study)
    assert text.index(html.escape(verdict)) < text.index("<h2>Leaderboard</h2>")
    assert "class='verdict'" in text and "selection score (CV, best of 2 trials)" in text
    tiny = report.build_report(tiny_study)
    assert "Small test part: 1 Stroke / 7 Normal patients" in tiny
    assert "not estimable (n = 1 Stroke / 7 Normal patients)" in tiny
    old = report.build_report(_v1_copy(tmp_path))
    assert "No verdict recorded" in old


def _v1_copy(tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "v1" / "v1_smoke"
    shutil.copytree(REPO_ROOT / "tests" / "fixtures" / "study_v1", target)
    return target


# ------------------------------------------------------------------------------------------------ issue 17
def test_leakage_banner_names_the_probe_and_shows_both_splits(app_env, handmade_study: Path) -> None:
    path = handmade_study / "report.json"
    data = json.loads(path.read_text())
    data["leakage_audit"].update(slice_auc=0.95, gap=0.15, flagged=True, grouped_folds=[0.78, 0.82],
                                 slice_folds=[0.94, 0.96])
    path.write_text(json.dumps(data))
    at = _run_tab(app_env(handmade_study.parent), "Leaderboard")
    banner = next(e.value for e in at.error if "Leakage audit" in e.value)
    assert "logistic regression" in banner and "slice-level split" in banner and "subject-grouped split" in banner
    assert "this model" not in banner  # the probe is not the study's model
    chart = next(c for c in at.get("plotly_chart") if "Leakage audit" in c.proto.spec)
    spec = json.loads(chart.proto.spec)
    assert [round(v, 2) for v in spec["data"][0]["y"]] == [0.8, 0.95]  # honest, leaky


def test_report_leakage_text_and_number_formats(handmade_study: Path) -> None:
    text = report.build_report(handmade_study)
    assert text.count("<h2>Leaderboard</h2>") == 1, "the leaderboard heading appears once"
    board = pd.read_csv(handmade_study / "leaderboard.csv")
    for lr in board["lr"]:
        assert f"<td>{lr:.3g}</td>" in text  # 3 significant digits, not rounded to 0.000 / 0.001
    assert "<td>16</td>" in text and "<td>16.000</td>" not in text  # batch_size as an integer
    assert "would overstate this model" not in text and "logistic regression" in text


def test_leaderboard_table_integers_dashes_and_empty_columns(handmade_study: Path) -> None:
    board = load_study(handmade_study).leaderboard.copy()
    board["batch_size"] = board["batch_size"].astype(float)
    board.loc[board.index[0], "batch_size"] = np.nan  # a classical baseline: no batch size, the column reads 32.0
    board["train_precision"] = np.nan  # nothing recorded (classical baselines, older studies)
    table = report.leaderboard_table(board)
    assert "train_precision" not in table.columns
    assert str(table["batch_size"].dtype) == "Int64" and table["batch_size"].iloc[1] == 16
    board["train_precision"] = ["bf16"] + [None] * (len(board) - 1)
    table = report.leaderboard_table(board)
    assert list(table["train_precision"]) == ["bf16"] + ["–"] * (len(board) - 1)


def test_leaderboard_tab_shows_integers(app_env, handmade_study: Path) -> None:
    board = pd.read_csv(handmade_study / "leaderboard.csv")
    board.loc[board.index[0], "batch_size"] = np.nan
    board["train_precision"] = np.nan
    board.to_csv(handmade_study / "leaderboard.csv", index=False)
    shown = _run_tab(app_env(handmade_study.parent), "Leaderboard").dataframe[0].value
    assert "train_precision" not in shown.columns
    assert pd.api.types.is_integer_dtype(shown["batch_size"])


def test_threshold_reset_button_restores_the_chosen_threshold(app_env, handmade_study: Path) -> None:
    study = load_study(handmade_study)
    model = study.best_model
    at = _run_tab(app_env(handmade_study.parent), "Confusion matrix")
    key = f"threshold_{model}"
    chosen = round(study.threshold(model), 3)
    assert at.button(key=f"reset_{key}").disabled  # already at the chosen threshold
    at.slider(key=key).set_value(0.9).run()
    assert at.slider(key=key).value == pytest.approx(0.9)
    assert not at.button(key=f"reset_{key}").disabled
    at.button(key=f"reset_{key}").click().run()
    assert not at.exception
    assert at.slider(key=key).value == pytest.approx(chosen)
    tn, fp, fn, tp = _confusion_at(study, model, chosen)
    assert _counts(at) == {"tp": tp, "fn": fn, "fp": fp, "tn": tn}


def _confusion_at(study, model: str, threshold: float) -> tuple[int, int, int, int]:
    frame = study.test_predictions(model)
    y, p = frame["y"].to_numpy(), frame[f"prob_{study.classes[1]}"].to_numpy()
    return tuple(int(v) for v in confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1]).ravel())


def test_search_tab_warns_that_importances_from_few_trials_are_rough(app_env, handmade_study: Path) -> None:
    at = _run_tab(app_env(handmade_study.parent), "Search")
    assert _errors(at) == []
    warning = next(w.value for w in at.warning if "parameter importances" in w.value)
    assert "from 4 complete trial(s)" in warning and "fewer than 20" in warning


def test_search_tab_shows_optunas_own_importance_warnings(app_env, handmade_study: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from optuna import visualization

    original = visualization.plot_param_importances

    def warning_plot(study, *args, **kwargs):
        warnings.warn("The importance of the parameter may be inaccurate.", UserWarning)
        return original(study, *args, **kwargs)

    monkeypatch.setattr(visualization, "plot_param_importances", warning_plot)
    monkeypatch.setattr("ui.dashboard.FEW_TRIALS_FOR_IMPORTANCE", 1)  # enough trials: only Optuna's warning
    at = _run_tab(app_env(handmade_study.parent), "Search")
    assert any("Optuna: The importance of the parameter may be inaccurate." in w.value for w in at.warning)


def test_attribution_row_explains_one_class(app_env, handmade_study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several maps side by side explain the same class: the first map's, passed to the others explicitly."""
    import models.attribution

    original, targets = models.attribution.explain, []

    def spy(predictor, image, *, method, target=None, **kwargs):
        targets.append(target)
        return original(predictor, image, method=method, target=target, **kwargs)

    monkeypatch.setattr(models.attribution, "explain", spy)
    at = app_env(handmade_study.parent)
    at.session_state["tab"] = "Attributions"
    at.run()
    at.radio(key="att_source").set_value("Test part").run()
    at.multiselect(key="att_methods").set_value(["grad_cam", "saliency"]).run()
    assert not at.exception and _errors(at) == []
    assert targets[0] is None and len(targets) >= 2
    assert len(set(targets[1:])) == 1 and targets[1] in load_study(handmade_study).classes
    assert any(f"Every map explains the class **{targets[1]}**" in c.value for c in at.caption)
    chart = next(c for c in at.get("plotly_chart") if "colour scale" in c.proto.spec)
    assert chart is not None  # the row carries its colour bar


def test_embedded_gradio_frame_is_tall_enough(app_env, handmade_study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Gradio app's examples end with the DICOM series: the frame must not crop them (900 px did)."""
    import streamlit

    import ui.dashboard

    calls, original = [], streamlit.iframe

    def spy(src, **kwargs):
        calls.append(kwargs)
        return original(src, **kwargs)

    monkeypatch.setattr(streamlit, "iframe", spy)
    monkeypatch.setattr(ui.dashboard, "_gradio_server", lambda study_dir: ("http://127.0.0.1:9/", None))
    at = app_env(handmade_study.parent)
    monkeypatch.delenv("STROKECT_NO_GRADIO")
    _run_tab(at, "Live prediction")
    assert len(at.get("iframe")) == 1
    assert calls and calls[-1]["height"] >= 1400


def test_demo_button_goes_away_once_the_build_runs(app_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import automl.background
    from automl.background import BuildStatus

    root = tmp_path / "leaderboards"
    root.mkdir()
    states = {"now": "absent"}

    def status(study_dir):
        return BuildStatus(study_dir=root / "demo", state=states["now"], pid=1, n_finished=0, n_planned=10,
                           message="building: 0 of 10 trials finished", log_tail="")

    def start(config):
        states["now"] = "running"
        return status(None)

    monkeypatch.setattr(automl.background, "build_status", status)
    monkeypatch.setattr(automl.background, "start_search", start)
    at = app_env(root)  # STROKECT_NO_AUTOSTART=1: the button waits for a click
    at.run()
    at.button(key="start_demo").click().run()
    assert not at.exception
    assert not any(b.label == "Build the demo study now" for b in at.button)
    assert at.get("progress")


def test_streamlit_config_keeps_the_watcher_off_the_data_folders() -> None:
    """Streamlit's watchdog watches app.py's folder recursively, so a blacklist cannot keep .cache/ and
    leaderboards/ out of its inotify queue; the checked-in config polls the app's modules instead."""
    import tomllib

    from streamlit import config as st_config

    settings = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())["server"]
    for name in settings:
        assert f"server.{name}" in st_config._config_options_template, name  # real Streamlit options
    assert settings["fileWatcherType"] in ("poll", "none")
    assert {".cache", "leaderboards"} <= set(settings["folderWatchBlacklist"])
