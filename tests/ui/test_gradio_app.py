"""Unit tests of ui.gradio_app: settings, app construction (no server), upload bookkeeping, the
inference path on a real smoke study (bad inputs -> InputRejected, odd valid inputs -> probabilities)."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tests.ui import _inputs
from tests.ui.conftest import make_handmade_study

gr = pytest.importorskip("gradio")
gradio_app = pytest.importorskip("ui.gradio_app")


# ----------------------------------------------------------------------------------- settings
def test_max_file_bytes_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(gradio_app.MAX_FILE_MB_ENV, raising=False)
    assert gradio_app.max_file_bytes() == 20 * 1024 * 1024


@pytest.mark.parametrize("value, expected", [("1", 2**20), ("0.5", 2**19), (" 100 ", 100 * 2**20)])
def test_max_file_bytes_from_env(monkeypatch: pytest.MonkeyPatch, value: str, expected: int) -> None:
    monkeypatch.setenv(gradio_app.MAX_FILE_MB_ENV, value)
    assert gradio_app.max_file_bytes() == expected


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "20MB"])
def test_max_file_bytes_rejects_bad_env(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(gradio_app.MAX_FILE_MB_ENV, value)
    with pytest.raises(ValueError, match=gradio_app.MAX_FILE_MB_ENV):
        gradio_app.max_file_bytes()


def test_resolve_server_defaults_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    assert gradio_app.resolve_server() == ("127.0.0.1", 7860)


def test_resolve_server_env_and_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8123")
    assert gradio_app.resolve_server() == ("0.0.0.0", 8123)
    assert gradio_app.resolve_server("localhost", 9000) == ("localhost", 9000)


@pytest.mark.parametrize("port", ["http", "0", "70000", "-1"])
def test_resolve_server_rejects_bad_port(monkeypatch: pytest.MonkeyPatch, port: str) -> None:
    monkeypatch.setenv("GRADIO_SERVER_PORT", port)
    with pytest.raises(ValueError, match="GRADIO_SERVER_PORT"):
        gradio_app.resolve_server()


@pytest.mark.parametrize("cpus, before, after", [(2, 8, 1), (16, 8, 8), (16, 32, 8), (1, 1, 1), (8, 1, 1)])
def test_limit_torch_threads_only_lowers(monkeypatch: pytest.MonkeyPatch, cpus: int, before: int,
                                         after: int) -> None:
    import torch

    old = torch.get_num_threads()
    monkeypatch.setattr(gradio_app.os, "cpu_count", lambda: cpus)
    try:
        torch.set_num_threads(before)
        gradio_app._limit_torch_threads(2)
        assert torch.get_num_threads() == after
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------------- build_app
def _dependency(demo: gr.Blocks, api_name: str):
    matches = [fn for fn in demo.fns.values() if fn.api_name == api_name]
    assert len(matches) == 1, [fn.api_name for fn in demo.fns.values()]
    return matches[0]


def _component(demo: gr.Blocks, cls: type, label_start: str):
    found = [b for b in demo.blocks.values() if isinstance(b, cls) and str(b.label or "").startswith(label_start)]
    assert len(found) == 1, label_start
    return found[0]


def test_build_app_without_launching(handmade_study: Path) -> None:
    from automl.results import load_study
    from data import WINDOWS

    study = load_study(handmade_study)
    demo = gradio_app.build_app(handmade_study)
    assert isinstance(demo, gr.Blocks)
    assert not demo.is_running

    predict = _dependency(demo, "predict")
    analyze = _dependency(demo, "analyze")
    assert predict.api_visibility == "public" and analyze.api_visibility == "public"
    assert [type(c).__name__ for c in predict.inputs] == ["File", "Dropdown", "Dropdown"]
    assert [type(c).__name__ for c in predict.outputs] == ["Label"]
    assert [type(c).__name__ for c in analyze.outputs] == ["Label", "Markdown", "Image", "Image"]
    assert predict.preprocess is False and analyze.preprocess is False  # handlers validate raw values

    model_dd = _component(demo, gr.Dropdown, "Model")
    assert [c[1] for c in model_dd.choices] == study.refitted_models()
    assert model_dd.value == study.best_model
    window_dd = _component(demo, gr.Dropdown, "DICOM window")
    assert [c[1] for c in window_dd.choices] == list(WINDOWS) and window_dd.value == "brain"
    method_dd = _component(demo, gr.Dropdown, "Attribution")
    assert method_dd.value == "grad_cam"
    assert [c[1] for c in method_dd.choices][-1] == gradio_app.NO_ATTRIBUTION

    file_in = _component(demo, gr.File, "CT slice")
    assert ".dcm" in file_in.file_types and ".png" in file_in.file_types

    # the decision Markdown holds the headline; the bars carry no second headline of their own
    label = _component(demo, gr.Label, "Class probabilities")
    assert label.show_heading is False and "decision threshold on P(Stroke)" in label.label
    assert label.num_top_classes == len(study.classes) + 1
    # examples come right under the file input (an embedded frame of limited height still shows them)
    order = [b for b in demo.blocks.values() if isinstance(b, (gr.File, gr.Dataset, gr.Dropdown))]
    assert [type(b).__name__ for b in order[:3]] == ["File", "Dataset", "Dropdown"]

    assert demo.delete_cache == gradio_app.DELETE_CACHE
    assert demo._queue.default_concurrency_limit == gradio_app.CONCURRENCY_LIMIT
    assert demo._queue.max_size == gradio_app.QUEUE_MAX_SIZE


def test_build_app_examples_cover_both_classes(handmade_study: Path) -> None:
    demo = gradio_app.build_app(handmade_study)
    dataset = next(b for b in demo.blocks.values() if isinstance(b, gr.Dataset))
    labels = dataset.sample_labels
    for cls in ("Normal", "Stroke"):
        assert sum(label.startswith(f"{cls}:") for label in labels) == gradio_app.EXAMPLES_PER_CLASS
    assert any("CT_small.dcm" in label for label in labels)
    # every example was copied into Gradio's cache and is protected from the upload clean-up
    file_in = _component(demo, gr.File, "CT slice")
    assert len(file_in.keep_in_cache) == len(labels)
    # ... and survives Gradio's delete_cache sweep (which removes every other file the app created)
    from gradio.route_utils import delete_files_created_by_app

    delete_files_created_by_app(demo, age=None)
    assert all(Path(p).is_file() for p in file_in.keep_in_cache)


def test_build_app_picks_latest_study_under_root(tmp_path: Path) -> None:
    root = tmp_path / "leaderboards"
    make_handmade_study(root, name="older")
    time.sleep(0.05)
    make_handmade_study(root, name="newer", seed=1)
    demo = gradio_app.build_app(leaderboards_root=root)
    assert demo.strokect_study.name == "newer"


def test_build_app_without_any_study(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No study under"):
        gradio_app.build_app(leaderboards_root=tmp_path / "empty")


def test_build_app_missing_study_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        gradio_app.build_app(tmp_path / "nope")


def test_build_app_without_refitted_models(handmade_study: Path) -> None:
    import shutil

    shutil.rmtree(handmade_study / "models")
    with pytest.raises(ValueError, match="no refitted model"):
        gradio_app.build_app(handmade_study)


# ------------------------------------------------------------------------------ decision text
def _view(study_dir: Path):
    return gradio_app._study_view(study_dir)


@pytest.mark.parametrize("offset, decision, relation", [(0.0, "Stroke", "≥"), (0.3, "Stroke", "≥"),
                                                        (-0.01, "Normal", "<")])
def test_decision_at_study_threshold(handmade_study: Path, offset: float, decision: str, relation: str) -> None:
    view = _view(handmade_study)
    model = view.default_model
    board = pd.read_csv(handmade_study / "leaderboard.csv")
    refit = board["refit"].astype(str).str.lower() == "true"
    board.loc[refit & (board["model"] == model), ["test_sensitivity", "test_specificity"]] = [0.875, 0.625]
    board.to_csv(handmade_study / "leaderboard.csv", index=False)
    view = _view(handmade_study)
    threshold = view.study.threshold(model)
    assert 0.0 < threshold < 1.0
    p_stroke = threshold + offset
    probabilities = {"Normal": 1 - p_stroke, "Stroke": p_stroke}
    md = gradio_app._decision_markdown(view, model, probabilities, window="brain", image_size=32,
                                       notes=["a note"])
    headline = md.split("\n\n")[0]
    # the headline holds the decision, the probability and the threshold together
    assert headline.startswith(f"## {decision} — P(Stroke) ") and f" {relation} threshold " in headline
    assert f"threshold {threshold:.3f}" in md and "held-out" in md
    assert "sensitivity 0.88" in md and "specificity 0.62" in md
    assert gradio_app.DISCLAIMER in md and "- a note" in md
    assert "out-of-distribution" not in md  # not computed: no OOD line
    assert gradio_app.decide(view.classes, probabilities, threshold) == decision
    payload = gradio_app._label_payload(probabilities, decision)
    assert payload["label"] == decision
    assert [c["label"] for c in payload["confidences"]] == sorted(probabilities, key=probabilities.get, reverse=True)
    # the page's bars end with the threshold, so it sits next to the probability it is compared with
    ui = gradio_app._ui_label_payload(view.classes, probabilities, decision, threshold)
    assert ui["confidences"][:2] == payload["confidences"]
    assert ui["confidences"][2] == {"label": gradio_app.threshold_entry("Stroke"), "confidence": threshold}


@pytest.mark.parametrize("p, threshold, expected", [
    (0.24, 0.215, "Stroke — P(Stroke) 0.24 ≥ threshold 0.21"),  # the case: bars say Normal 76 %
    (0.2146, 0.2149, "Normal — P(Stroke) 0.2146 < threshold 0.2149"),  # never "0.21 < 0.21"
    (0.2151, 0.2151, "Stroke — P(Stroke) 0.22 ≥ threshold 0.22"),
    (0.90, 0.5, "Stroke — P(Stroke) 0.90 ≥ threshold 0.50"),
])
def test_headline_numbers_never_contradict_the_decision(p: float, threshold: float, expected: str) -> None:
    probabilities = {"Normal": 1 - p, "Stroke": p}
    assert gradio_app.decision_headline(["Normal", "Stroke"], probabilities, threshold) == expected


def test_headline_multiclass() -> None:
    probabilities = {"A": 0.2, "B": 0.5, "C": 0.3}
    assert gradio_app.decision_headline(["A", "B", "C"], probabilities, None) == "B — the most probable class (P 0.50)"
    assert gradio_app._ui_label_payload(["A", "B", "C"], probabilities, "B", None)["confidences"][-1]["label"] == "A"


def test_ood_lines() -> None:
    from models.ood import OODScore

    flagged = gradio_app.ood_markdown(OODScore(12.34, 4.1, True))
    assert "This scan is unlike the images the model was trained on (distance 12.3 > 4.1" in flagged.replace("**", "")
    assert "caution" in flagged
    assert "4.1" in gradio_app.ood_markdown(OODScore(3.0, 4.1, False)) and "unlike" not in \
        gradio_app.ood_markdown(OODScore(3.0, 4.1, False))
    assert "no out-of-distribution reference for this model" in gradio_app.ood_markdown(None).lower()


def test_decide_differs_from_argmax_below_half() -> None:
    assert gradio_app.decide(["Normal", "Stroke"], {"Normal": 0.6, "Stroke": 0.4}, 0.3) == "Stroke"
    assert gradio_app.decide(["Normal", "Stroke"], {"Normal": 0.6, "Stroke": 0.4}, 0.5) == "Normal"
    assert gradio_app.decide(["A", "B", "C"], {"A": 0.2, "B": 0.5, "C": 0.3}, None) == "B"


def test_decision_multiclass_is_argmax() -> None:
    row = pd.Series({"test_balanced_accuracy": 0.71, "test_auc": 0.8, "test_sensitivity": float("nan")})
    study = SimpleNamespace(classes=["Hemorrhagic", "Ischemic", "Normal"], refit_row=lambda model: row,
                            threshold=lambda model: 0.5)
    view = gradio_app._StudyView(study=study, models=["cnn"], default_model="cnn", default_window="brain")
    md = gradio_app._decision_markdown(view, "cnn", {"Hemorrhagic": 0.2, "Ischemic": 0.5, "Normal": 0.3},
                                       window="brain", image_size=32, notes=[])
    assert md.startswith("## Ischemic — the most probable class (P 0.50)")
    assert "balanced accuracy 0.71" in md and "threshold" not in md


# ---------------------------------------------------------------------------- upload clean-up
def _uploads(tmp_path: Path, grace_seconds: float = 0.0):
    upload = tmp_path / "gradio" / "abc123" / "scan.png"
    example = tmp_path / "gradio" / "def456" / "example.png"
    for p in (upload, example):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    blocks = SimpleNamespace(upload_file_set={str(upload)})
    component = SimpleNamespace(keep_in_cache={str(example)}, temp_files={str(upload), str(example)})
    return gradio_app._Uploads(blocks, component, grace_seconds=grace_seconds), upload, example, blocks, component


def test_uploads_are_deleted_examples_kept(tmp_path: Path) -> None:
    uploads, upload, example, blocks, component = _uploads(tmp_path)
    assert uploads.resolve({"path": str(upload), "orig_name": "../../My scan.png"}) == (upload, "My scan.png")
    uploads.discard(upload)
    assert not upload.exists() and not upload.parent.exists()
    assert str(upload) not in blocks.upload_file_set and str(upload) not in component.temp_files
    assert uploads.resolve(str(example)) == (example, "example.png")
    uploads.discard(example)
    assert example.exists()


def test_shared_upload_survives_until_last_request(tmp_path: Path) -> None:
    # Gradio stores identical uploads under one path: two clients sending the same file share it.
    uploads, upload, *_ = _uploads(tmp_path)
    first = uploads.resolve({"path": str(upload)})
    second = uploads.resolve({"path": str(upload)})
    uploads.discard(first[0])
    assert upload.exists(), "deleted while another request still used it"
    uploads.discard(second[0])
    assert not upload.exists()


def test_deletion_is_deferred_past_a_new_request(tmp_path: Path) -> None:
    uploads, upload, *_ = _uploads(tmp_path, grace_seconds=0.3)
    uploads.discard(uploads.resolve({"path": str(upload)})[0])
    time.sleep(0.05)
    late = uploads.resolve({"path": str(upload)})  # a second client's request starts within the grace period
    time.sleep(0.5)
    assert upload.exists(), "the first request's timer deleted a file a newer request was using"
    uploads.discard(late[0])
    deadline = time.monotonic() + 5
    while upload.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not upload.exists()


def test_reupload_after_the_last_request_is_not_deleted(tmp_path: Path) -> None:
    uploads, upload, *_ = _uploads(tmp_path, grace_seconds=0.3)
    uploads.discard(uploads.resolve({"path": str(upload)})[0])
    time.sleep(0.05)
    upload.write_bytes(b"x")  # Gradio moves every upload into place, even when the content is the same
    os.utime(upload, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    time.sleep(0.6)
    assert upload.exists(), "a newer upload (whose request is still queued) was deleted"


def test_uploads_refuse_foreign_paths(tmp_path: Path) -> None:
    uploads, *_ = _uploads(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me")
    assert uploads.resolve(None) is None
    for payload in ({"path": str(secret)}, str(secret), {"path": ""}, {"path": 3}):
        with pytest.raises(gradio_app.InputRejected):
            uploads.resolve(payload)
    uploads.discard(secret)
    assert secret.read_text() == "keep me"


def test_sanitize_removes_server_paths(tmp_path: Path) -> None:
    path = tmp_path / "h" / "scan.png"
    message = f"{path}: image file is truncated; see {path.as_posix()}"
    out = gradio_app._sanitize(message, path, "scan.png")
    assert str(tmp_path) not in out and out.startswith("scan.png")


# --------------------------------------------------------------------------- predictor cache
def test_predictor_cache_loads_each_model_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import models

    calls: list[Path] = []

    def slow_load(folder: Path, **_: object) -> object:
        calls.append(Path(folder))
        time.sleep(0.05)
        return object()

    monkeypatch.setattr(models, "load_predictor", slow_load, raising=False)
    cache = gradio_app._PredictorCache()
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(tmp_path / "a"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1
    assert cache.get(tmp_path / "b") is not results[0]
    assert len(calls) == 2


# ------------------------------------------------------------------ inference on a real study
@pytest.fixture(scope="module")
def study_view(tmp_path_factory: pytest.TempPathFactory):
    """A study with real predictor folders (an untrained tiny CNN and a fitted logistic regression)."""
    return gradio_app._study_view(make_handmade_study(tmp_path_factory.mktemp("leaderboards")))


def _analyze(view, path: Path, **kwargs):
    options = dict(display_name=path.name, window="brain", model=view.default_model, method="grad_cam",
                   explain=True)
    options.update(kwargs)
    return gradio_app._analyze_file(view, path, **options)


@pytest.mark.parametrize("name", sorted(_inputs.REJECTED))
def test_bad_inputs_are_rejected_with_a_message(study_view, tmp_path: Path, name: str) -> None:
    writer, fragment = _inputs.REJECTED[name]
    path = writer(tmp_path)
    with pytest.raises(gradio_app.InputRejected) as info:
        _analyze(study_view, path)
    message = str(info.value)
    assert fragment in message.lower()
    assert str(tmp_path) not in message and path.name in message


def test_oversized_file_is_rejected(study_view, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gradio_app.MAX_FILE_MB_ENV, "0.25")
    path = _inputs.oversized(tmp_path, 300_000)
    with pytest.raises(gradio_app.InputRejected, match="the limit is"):
        _analyze(study_view, path)


def test_deleted_upload_asks_to_upload_again(study_view, tmp_path: Path) -> None:
    with pytest.raises(gradio_app.InputRejected, match="upload it again"):
        _analyze(study_view, tmp_path / "gone.png")


@pytest.mark.parametrize("name", sorted(_inputs.ACCEPTED))
def test_odd_but_valid_inputs_are_predicted(study_view, tmp_path: Path, name: str) -> None:
    path = _inputs.ACCEPTED[name](tmp_path)
    result = _analyze(study_view, path)
    assert set(result.probabilities) == set(study_view.classes)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.label in study_view.classes
    predictor = gradio_app._PREDICTORS.get(study_view.study.model_dir(study_view.default_model))
    assert result.seen.dtype == np.uint8 and result.seen.shape == (predictor.image_size,) * 2
    if name == "animated_gif":
        assert "first frame" in result.decision_md
    if name == "dicom_ct":
        assert "DICOM" in result.decision_md


def test_window_preset_changes_what_the_model_sees(study_view, tmp_path: Path) -> None:
    path = _inputs.ct_small(tmp_path)
    brain = _analyze(study_view, path, window="brain", explain=False, method="none")
    bone = _analyze(study_view, path, window="bone", explain=False, method="none")
    assert not np.array_equal(brain.seen, bone.seen)


def test_classical_model_gets_no_overlay_and_a_note(study_view, tmp_path: Path) -> None:
    classical = [m for m in study_view.models if study_view.methods(m) == [gradio_app.NO_ATTRIBUTION]]
    assert classical, study_view.models
    result = _analyze(study_view, _inputs.png_16bit(tmp_path), model=classical[0], method="grad_cam")
    assert result.overlay is None and "classical baseline" in result.decision_md


def test_attribution_overlay_for_each_offered_method(study_view, tmp_path: Path) -> None:
    from models.attribution import DISPLAY_MIN_SIZE

    path = _inputs.png_16bit(tmp_path)
    for model in study_view.models:
        for method in study_view.methods(model):
            result = _analyze(study_view, path, model=model, method=method)
            # pictures for a projector: at least DISPLAY_MIN_SIZE px, the model input itself stays S x S
            assert result.seen_picture.ndim == 3 and min(result.seen_picture.shape[:2]) > DISPLAY_MIN_SIZE
            if method == gradio_app.NO_ATTRIBUTION:
                assert result.overlay is None
            else:
                assert result.overlay.ndim == 3 and min(result.overlay.shape[:2]) > DISPLAY_MIN_SIZE
                assert "Attribution:" in result.decision_md


def test_attribution_explains_the_decided_class(study_view, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models import attribution

    targets: list[object] = []
    real = attribution.explain

    def spy(*args: object, **kwargs: object):
        targets.append(kwargs.get("target"))
        return real(*args, **kwargs)

    monkeypatch.setattr(attribution, "explain", spy)
    deep = next(m for m in study_view.models if len(study_view.methods(m)) > 1)
    result = _analyze(study_view, _inputs.png_16bit(tmp_path), model=deep, method="saliency")
    assert targets == [study_view.classes.index(result.label)]
    assert f"class `{result.label}`" in result.decision_md


def test_flat_map_says_so(study_view, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models import attribution

    real = attribution.explain

    def flat(*args: object, **kwargs: object):
        att = real(*args, **kwargs)
        att.heatmap[:] = 0.0
        return att

    monkeypatch.setattr(attribution, "explain", flat)
    deep = next(m for m in study_view.models if len(study_view.methods(m)) > 1)
    result = _analyze(study_view, _inputs.png_16bit(tmp_path), model=deep, method="grad_cam")
    assert f"Grad-CAM found no evidence for `{result.label}` in this image (a flat map" in result.decision_md
    assert result.overlay is not None and result.overlay.std() > 0  # a picture with a message, never blank


def test_models_without_ood_reference_say_so(study_view, tmp_path: Path) -> None:
    result = _analyze(study_view, _inputs.png_16bit(tmp_path), explain=False, method="none")
    assert result.ood is None
    assert "No out-of-distribution reference for this model" in result.decision_md


def test_a_reference_that_does_not_fit_still_answers(study_view, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = gradio_app._PREDICTORS.get(study_view.study.model_dir(study_view.default_model))

    def broken(_x: object) -> None:
        raise ValueError("features must be (N, 1024) for this reference")

    monkeypatch.setattr(predictor, "ood", object())
    monkeypatch.setattr(predictor, "ood_score", broken)
    result = _analyze(study_view, _inputs.png_16bit(tmp_path), explain=False, method="none")
    assert result.ood is None and "out-of-distribution check failed" in result.decision_md
    assert "No out-of-distribution reference" not in result.decision_md


def test_ood_warning_above_the_headline(tmp_path: Path) -> None:
    """A study whose models carry an OOD reference: a photograph is flagged above the headline."""
    from PIL import Image
    from skimage.data import camera

    import models
    from models.ood import compute_reference

    study_dir = make_handmade_study(tmp_path / "leaderboards", name="with_ood")
    view = gradio_app._study_view(study_dir)
    split = view.study.split
    X = np.stack([np.asarray(Image.open(view.study.data_dir / p)) for p in split["path"]])
    cv = (split["part"] == "cv").to_numpy()
    fit, calibration = cv & (split["fold"] != 0).to_numpy(), cv & (split["fold"] == 0).to_numpy()
    for model in view.models:
        folder = view.study.model_dir(model)
        model_obj = models.load_predictor(folder).model
        compute_reference(model_obj, X[fit], X[calibration]).save(folder)
    gradio_app._PREDICTORS.clear()
    photo = tmp_path / "camera.png"
    Image.fromarray(camera()).save(photo)
    own = view.study.data_dir / split.loc[split["part"] == "test", "path"].iloc[0]
    try:
        for model in view.models:
            inside = _analyze(view, own, model=model, explain=False, method="none")
            outside = _analyze(view, photo, model=model, explain=False, method="none")
            assert inside.ood is not None and outside.ood is not None
            assert outside.ood.flagged and outside.ood.distance > 2 * outside.ood.threshold, outside.ood
            first = outside.decision_md.split("\n\n")[0]
            assert first.startswith("> ⚠️") and "unlike the images the model was trained on" in first
            # (that held-out scans pass is measured in tests/models/test_ood.py; this study is tiny)
            assert inside.ood.distance < outside.ood.distance / 3, (inside.ood, outside.ood)
            assert ("Like the training images" in inside.decision_md) != inside.ood.flagged
    finally:
        gradio_app._PREDICTORS.clear()


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(window="lung"), "Unknown window"),
    (dict(model="not_a_model"), "Unknown model"),
    (dict(method="lime"), "does not apply"),
    (dict(method="attention_rollout"), "does not apply"),
])
def test_bad_settings_are_rejected(study_view, tmp_path: Path, kwargs: dict, fragment: str) -> None:
    path = _inputs.png_16bit(tmp_path)
    deep = next(m for m in study_view.models if len(study_view.methods(m)) > 1)
    with pytest.raises(gradio_app.InputRejected, match=fragment):
        _analyze(study_view, path, **{"model": deep, **kwargs})


# ------------------------------------------------------------------------------------- launch
def test_launch_is_quiet_and_never_shares(monkeypatch: pytest.MonkeyPatch, handmade_study: Path) -> None:
    calls: list[dict] = []

    def fake_launch(self: gr.Blocks, **kwargs: object) -> None:
        calls.append(kwargs)
        self.local_url = "http://127.0.0.1:1/"

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    gradio_app.launch(study_dir=handmade_study, server_port=7999, block=True)
    assert len(calls) == 1
    # quiet=True silences Gradio's "To create a public link, set `share=True`" hint; share stays off
    assert calls[0]["share"] is False and calls[0]["quiet"] is True and calls[0]["allowed_paths"] == []


# ------------------------------------------------------------------------------- first start
def test_first_start_builds_the_demo_study(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    calls: list[dict] = []

    class FakeConfig:
        def __init__(self, **kwargs: object) -> None:
            self.kwargs = kwargs

    def fake_run_search(config: FakeConfig) -> Path:
        calls.append(config.kwargs)
        return make_handmade_study(Path(str(config.kwargs["leaderboards"])), name=str(config.kwargs["study"]))

    monkeypatch.setitem(sys.modules, "automl.search",
                        SimpleNamespace(SearchConfig=FakeConfig, run_search=fake_run_search))
    root = tmp_path / "leaderboards"
    assert gradio_app._ensure_study(None, root) == root / "demo"
    assert calls == [{"preset": "demo", "study": "demo", "leaderboards": str(root)}]
    # a second start finds the study and does not search again
    assert gradio_app._ensure_study(None, root) == root / "demo"
    assert len(calls) == 1
