"""End-to-end: the Gradio app served on a free loopback port (``launch(block=False)``) on a real smoke
study, driven by ``gradio_client`` the way a script or a Space visitor would."""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ui import _inputs

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from ui import gradio_app  # noqa: E402

MAX_MB = 1  # the server under test refuses uploads above 1 MB


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smoke_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    pytest.importorskip("models.predictor")
    saved = {k: os.environ.get(k) for k in ("GRADIO_TEMP_DIR", gradio_app.MAX_FILE_MB_ENV)}
    upload_dir = tmp_path_factory.mktemp("gradio-uploads")
    os.environ["GRADIO_TEMP_DIR"] = str(upload_dir)
    os.environ[gradio_app.MAX_FILE_MB_ENV] = str(MAX_MB)
    demo = None
    grace = gradio_app.UPLOAD_GRACE_SECONDS
    gradio_app.UPLOAD_GRACE_SECONDS = 1.0  # the clean-up test below waits for it
    try:
        demo = gradio_app.launch(study_dir=smoke_study, server_name="127.0.0.1", server_port=_free_port(),
                                 block=False)
        client = Client(demo.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
        yield {"demo": demo, "client": client, "url": demo.local_url, "uploads": upload_dir,
               "study": demo.strokect_study}
    finally:
        gradio_app.UPLOAD_GRACE_SECONDS = grace
        if demo is not None:
            demo.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def phantom_images(server: dict) -> dict[str, Path]:
    """One test-part phantom image per class of the served study."""
    study = server["study"]
    split = study.split[study.split["part"] == "test"].sort_values("path")
    out = {}
    for y, group in split.groupby("y"):
        out[study.classes[int(y)]] = study.data_dir / group["path"].iloc[0]
    assert len(out) == len(study.classes)
    return out


def _check_label(result: dict, classes: list[str]) -> None:
    assert result["label"] in classes
    confidences = {c["label"]: c["confidence"] for c in result["confidences"]}
    assert set(confidences) == set(classes)
    assert all(0.0 <= p <= 1.0 for p in confidences.values())
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-5)


def _predict(server: dict, path: Path, **kwargs) -> dict:
    return server["client"].predict(handle_file(str(path)), api_name="/predict", **kwargs)


def _good_request(server: dict, phantom_images: dict[str, Path]) -> None:
    _check_label(_predict(server, next(iter(phantom_images.values()))), server["study"].classes)


# ----------------------------------------------------------------------------- valid requests
def test_phantom_images_of_each_class(server: dict, phantom_images: dict[str, Path]) -> None:
    classes = server["study"].classes
    for path in phantom_images.values():
        _check_label(_predict(server, path), classes)


def test_dicom_ct_slice(server: dict) -> None:
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("CT_small.dcm"))
    classes = server["study"].classes
    for window in ("brain", "bone"):
        _check_label(_predict(server, path, window=window), classes)


def test_predict_label_is_the_decision_at_the_study_threshold(server: dict,
                                                              phantom_images: dict[str, Path]) -> None:
    study = server["study"]
    for model in study.refitted_models():
        result = _predict(server, next(iter(phantom_images.values())), model=model)
        confidences = {c["label"]: c["confidence"] for c in result["confidences"]}
        assert result["label"] == gradio_app.decide(study.classes, confidences, study.threshold(model))


def test_analyze_endpoint_returns_everything_the_ui_shows(server: dict, phantom_images: dict[str, Path]) -> None:
    from PIL import Image

    from models.attribution import DISPLAY_MIN_SIZE

    study = server["study"]
    label, decision_md, overlay, seen = server["client"].predict(
        handle_file(str(phantom_images[study.classes[-1]])), "brain", study.best_model, "grad_cam",
        api_name="/analyze")
    # the page's bars: the classes, then the decision threshold (binary studies)
    bars = {c["label"]: c["confidence"] for c in label["confidences"]}
    if len(study.classes) == 2:
        entry = gradio_app.threshold_entry(study.classes[1])
        assert label["confidences"][-1]["label"] == entry
        assert bars.pop(entry) == pytest.approx(study.threshold(study.best_model))
    _check_label({"label": label["label"], "confidences": [{"label": k, "confidence": v} for k, v in bars.items()]},
                 study.classes)
    assert f"## {label['label']} — " in decision_md and "sensitivity" in decision_md
    assert gradio_app.DISCLAIMER in decision_md
    card = study.card(study.best_model)
    with Image.open(seen) as im:  # the model input, enlarged for a screen or a projector
        assert min(im.size) > DISPLAY_MIN_SIZE
    if card.get("kind") == "deep":
        with Image.open(overlay) as im:
            assert im.mode == "RGB" and min(im.size) > DISPLAY_MIN_SIZE
    else:
        assert overlay is None and "classical baseline" in decision_md


def test_analyze_overlay_of_a_deep_model(server: dict) -> None:
    from PIL import Image
    from pydicom.data import get_testdata_file

    study = server["study"]
    deep = [m for m in study.refitted_models() if study.card(m).get("kind") == "deep"]
    if not deep:
        pytest.skip("the smoke study refitted no deep model")
    _, decision_md, overlay, seen = server["client"].predict(
        handle_file(get_testdata_file("CT_small.dcm")), "stroke", deep[0], "saliency", api_name="/analyze")
    assert "Saliency" in decision_md and "DICOM" in decision_md
    with Image.open(overlay) as im_overlay, Image.open(seen) as im_seen:
        assert im_overlay.mode == "RGB" and min(im_overlay.size) > 320 and min(im_seen.size) > 320


def test_refit_saved_an_ood_reference_and_the_page_reports_it(server: dict, phantom_images: dict[str, Path]) -> None:
    from models.ood import OOD_FILE, load_reference

    study = server["study"]
    for model in study.refitted_models():
        reference = load_reference(study.model_dir(model))
        assert reference is not None, f"{model}: no {OOD_FILE}"
        assert 0 < reference.threshold < float("inf") and reference.n_calibration > 0
    _, decision_md, _, _ = server["client"].predict(
        handle_file(str(next(iter(phantom_images.values())))), "brain", study.best_model, "none", api_name="/analyze")
    assert "Like the training images" in decision_md or "unlike the images the model was trained on" in decision_md


@pytest.mark.parametrize("name", sorted(_inputs.ACCEPTED))
def test_odd_but_valid_uploads_get_probabilities(server: dict, tmp_path: Path, name: str) -> None:
    _check_label(_predict(server, _inputs.ACCEPTED[name](tmp_path)), server["study"].classes)


def test_concurrent_requests(server: dict, phantom_images: dict[str, Path]) -> None:
    jobs = [server["client"].submit(handle_file(str(p)), api_name="/predict")
            for p in list(phantom_images.values()) * 3]
    for job in jobs:
        _check_label(job.result(timeout=120), server["study"].classes)


# ------------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize("name", sorted(_inputs.REJECTED))
def test_bad_upload_is_a_clean_error_and_the_server_keeps_serving(server: dict, phantom_images: dict[str, Path],
                                                                  tmp_path: Path, name: str) -> None:
    writer, fragment = _inputs.REJECTED[name]
    path = writer(tmp_path)
    with pytest.raises(AppError) as info:
        _predict(server, path)
    message = str(info.value)
    assert fragment in message.lower()
    assert str(server["uploads"]) not in message and str(tmp_path) not in message
    _good_request(server, phantom_images)


def _uploaded(root: Path, name: str) -> bool:
    """Whether a file ``name`` lies under ``root`` (Gradio removes its temporary folders meanwhile: ignore
    the ones that vanish during the walk)."""
    return any(name in files for _, _, files in os.walk(root, onerror=lambda error: None))


def test_oversized_upload_is_refused(server: dict, phantom_images: dict[str, Path], tmp_path: Path) -> None:
    path = _inputs.oversized(tmp_path, (MAX_MB + 1) * 2**20)
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        _predict(server, path)
    with path.open("rb") as fh:  # a client that does not check: the upload route answers 413
        response = httpx.post(server["url"] + "gradio_api/upload", files=[("files", (path.name, fh))])
    assert response.status_code == 413
    assert not _uploaded(server["uploads"], path.name)
    _good_request(server, phantom_images)


@pytest.mark.parametrize("settings, fragment", [
    (dict(window="lung"), "Unknown window"),
    (dict(model="../../etc"), "Unknown model"),
])
def test_bad_settings_are_clean_errors(server: dict, phantom_images: dict[str, Path], settings: dict,
                                       fragment: str) -> None:
    with pytest.raises((AppError, ValueError), match=fragment):
        _predict(server, next(iter(phantom_images.values())), **settings)


def test_paths_outside_the_upload_folder_are_refused(server: dict, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"private")
    payload = {"data": [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}, "brain"]}
    response = httpx.post(server["url"] + "gradio_api/call/predict", json=payload)
    assert response.status_code == 200
    events = httpx.get(server["url"] + f"gradio_api/call/predict/{response.json()['event_id']}").text
    assert "event: error" in events
    assert secret.read_bytes() == b"private"


# ------------------------------------------------------------------------------------ privacy
def test_uploads_are_deleted_after_the_request(server: dict, tmp_path: Path) -> None:
    good = _inputs.png_16bit(tmp_path).rename(tmp_path / "unique-good-upload.png")
    bad = _inputs.truncated_jpeg(tmp_path).rename(tmp_path / "unique-bad-upload.jpg")
    _predict(server, good)
    with pytest.raises(AppError):
        _predict(server, bad)
    deadline = time.monotonic() + 15
    while True:
        leftovers = [name for _, _, files in os.walk(server["uploads"], onerror=lambda error: None)
                     for name in files if name.startswith("unique-")]
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert leftovers == []
    assert not any(p.name.startswith("unique-") for p in map(Path, server["demo"].upload_file_set))


def test_no_share_link_and_no_extra_allowed_paths(server: dict) -> None:
    demo = server["demo"]
    assert demo.share is False and demo.share_url is None
    assert demo.allowed_paths == []
    assert demo.max_file_size == MAX_MB * 2**20
    assert demo.local_url.startswith("http://127.0.0.1:")


# ------------------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hammer(server: dict, files: list[Path], n: int) -> None:
    for i in range(n):
        with pytest.raises(AppError):
            _predict(server, files[i % len(files)])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("n", [30, pytest.param(100, marks=pytest.mark.slow)])
def test_memory_does_not_grow_with_bad_requests(server: dict, phantom_images: dict[str, Path], tmp_path: Path,
                                                n: int) -> None:
    files = [writer(tmp_path) for writer, _ in _inputs.REJECTED.values()]
    _hammer(server, files, len(files))  # warm-up: decoders, caches, first allocations
    before = _rss_bytes()
    _hammer(server, files, n)
    grown = _rss_bytes() - before
    print(f"RSS growth over {n} bad requests: {grown / 2**20:.1f} MB")
    assert grown < 20 * 2**20, f"RSS grew by {grown / 2**20:.1f} MB over {n} bad requests"
    _good_request(server, phantom_images)
    assert threading.active_count() < 100
