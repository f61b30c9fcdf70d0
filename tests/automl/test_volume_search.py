"""A search on a folder of phantom DICOM series: subjects from the headers, scan-level metrics, a window set."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import models
from automl.search import SearchConfig, main, run_search
from data.phantom import generate_phantom


@pytest.fixture(scope="module")
def volume_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = generate_phantom(tmp_path_factory.mktemp("dicom") / "ds", n=120, size=32, seed=3, format="dicom",
                              difficulty=0.2)
    out = tmp_path_factory.mktemp("leaderboards")
    config = SearchConfig(preset="smoke", data=str(folder), study="volumes", leaderboards=str(out), window="ich",
                          models=("tiny_cnn", "logreg"), n_trials=2, slice_step=1)
    return run_search(config, progress_bars=False)


def test_subjects_come_from_the_dicom_headers(volume_study: Path) -> None:
    manifest = pd.read_csv(volume_study / "manifest.csv", keep_default_na=False)
    assert manifest["subject"].str.startswith("PHANTOM-").all()
    assert (manifest["volume"] != "").all() and (manifest["slice_index"] >= 0).all()
    config = json.loads((volume_study / "config.json").read_text())
    assert config["window"] == "ich" and config["subject_source"] == "dicom"
    quality = json.loads((volume_study / "quality.json").read_text())
    assert quality["summary"]["n_volumes"] == manifest["volume"].nunique() and quality["summary"]["n_volumes_dicom"]


def test_leaderboard_has_scan_level_metrics(volume_study: Path) -> None:
    board = pd.read_csv(volume_study / "leaderboard.csv")
    refits = board[board["refit"] == True]  # noqa: E712 - a CSV bool column
    assert len(refits) and (refits["n_test_scans"] > 0).all()
    test = pd.read_csv(volume_study / "predictions" / f"test_{refits['model'].iloc[0]}.csv")
    assert "scan" in test.columns and test["scan"].nunique() == int(refits["n_test_scans"].iloc[0])
    assert "## Scan level" in (volume_study / "leaderboard.md").read_text()


def test_window_set_models_take_three_channels(volume_study: Path) -> None:
    predictor = models.load_predictor(volume_study / "models" / "tiny_cnn")
    assert predictor.in_chans == 3 and predictor.window == "ich"
    files = sorted(Path(json.loads((volume_study / "config.json").read_text())["data_dir"]).glob("*/*/*.dcm"))
    assert predictor.preprocess(files[0]).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("flags, message", [
    (["--window", "brain,bone"], "--window"),
    (["--slice-step", "0"], "--slice-step"),
    (["--min-brain-fraction", "1.5"], "--min-brain-fraction"),
    (["--slice-labels", "/no/such.csv"], "--slice-labels"),
])
def test_volume_flags_are_checked_before_any_work(flags, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "smoke", *flags])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_live_app_answers_slices_and_scans_of_a_window_set_study(volume_study: Path, tmp_path: Path) -> None:
    import zipfile

    from ui import gradio_app

    view = gradio_app._study_view(volume_study)
    assert view.default_window == "ich" and view.window_choices[0] == "ich"
    data_dir = Path(json.loads((volume_study / "config.json").read_text())["data_dir"])
    series = sorted(p for p in (data_dir / "Stroke").iterdir() if p.is_dir())[0]
    analysis = gradio_app._analyze_file(view, sorted(series.glob("*.dcm"))[0], display_name="slice.dcm", window="ich",
                                        model="tiny_cnn", method="grad_cam", explain=True)
    assert analysis is not None
    archive = tmp_path / "scan.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(series.glob("*.dcm")):
            zf.write(f, f"series/{f.name}")
    answer, markdown, pictures = gradio_app._analyze_scan(view, archive, display_name="scan.zip", window="ich",
                                                         model="tiny_cnn", pictures=True)
    assert answer.to_dict()["n_slices"] == len(list(series.glob("*.dcm"))) and pictures
    with pytest.raises(gradio_app.InputRejected, match="window preset"):
        gradio_app._analyze_file(view, sorted(series.glob("*.dcm"))[0], display_name="slice.dcm", window="brain",
                                 model="tiny_cnn", method="grad_cam", explain=False)


def test_dashboard_renders_a_volume_study(volume_study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from ui.dashboard import TABS

    monkeypatch.setenv("STROKECT_LEADERBOARDS", str(volume_study.parent))
    monkeypatch.setenv("STROKECT_NO_AUTOSTART", "1")
    monkeypatch.setenv("STROKECT_NO_GRADIO", "1")
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=180)
    for tab in TABS:
        at.session_state["tab"] = tab
        at.run()
        assert not at.exception, (tab, [e.value for e in at.exception])
        if tab == "Data":
            captions = " ".join(c.value for c in at.caption)
            assert "CT volumes:" in captions and "DICOM series" in captions
