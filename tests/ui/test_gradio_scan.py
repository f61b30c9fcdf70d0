"""Scan-level answers of the live app (issue 20): a zipped DICOM series or a NIfTI file in, the scan
verdict, the per-slice strip and the pictures of the most suspicious slices out; bad scans refused
with one sentence. Handlers are called directly on a hand-made study, and once through a live
server with ``gradio_client``."""
from __future__ import annotations

import math
import os
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tests.data._volume_files import head_volume, write_nifti, write_series
from tests.ui.conftest import make_handmade_study

gr = pytest.importorskip("gradio")
gradio_app = pytest.importorskip("ui.gradio_app")
from ui import scan as scan_mod

SIZE = 32


# ------------------------------------------------------------------------------------- inputs
def _zip(path: Path, members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def _series_members(folder: Path, prefix: str = "", **kwargs) -> dict[str, bytes]:
    hu = kwargs.pop("hu", None)
    hu = head_volume(8, SIZE, lesion=True) if hu is None else hu
    paths = write_series(folder, hu, patient=kwargs.pop("patient", "p1"), uid=kwargs.pop("uid", "1.2.826.0.1.1"),
                         **kwargs)
    return {f"{prefix}{p.name}": p.read_bytes() for p in paths}


def series_zip(tmp: Path, name: str = "series.zip", **kwargs) -> Path:
    return _zip(tmp / name, _series_members(tmp / f"_{name}", **kwargs))


def nifti_gz(tmp: Path, n: int = 6) -> Path:
    return write_nifti(tmp / "head.nii.gz", head_volume(n, SIZE, seed=1))


def _text_member(tmp: Path) -> Path:
    return _zip(tmp / "with_notes.zip", {**_series_members(tmp / "s"), "notes.txt": b"patient history ..."})


def _bomb(tmp: Path) -> Path:
    return _zip(tmp / "bomb.zip", {"001.dcm": b"\0" * 20_000_000})


def _two_series(tmp: Path) -> Path:
    first = _series_members(tmp / "a", prefix="a/", uid="1.2.826.0.1.1")
    second = _series_members(tmp / "b", prefix="b/", uid="1.2.826.0.1.2", patient="p2")
    return _zip(tmp / "two_series.zip", {**first, **second})


def _four_d(tmp: Path) -> Path:
    return write_nifti(tmp / "fmri.nii.gz", None, data=np.zeros((SIZE, SIZE, 4, 3), np.int16))


def _oblique(tmp: Path) -> Path:
    tilt = math.radians(40)
    return series_zip(tmp, "oblique.zip", orientation=(1, 0, 0, 0, math.cos(tilt), -math.sin(tilt)))


def _missing_slice(tmp: Path) -> Path:
    return series_zip(tmp, "gap.zip", hu=head_volume(6, SIZE), positions=[0.0, 5.0, 10.0, 20.0, 25.0, 30.0])


def _not_a_scan(tmp: Path) -> Path:
    path = tmp / "notes.nii"
    path.write_text("just text")
    return path


#: name -> (writer, fragment of the refusal, lower case)
REFUSED = {
    "zip_with_text_member": (_text_member, "notes.txt, which is not a readable dicom slice"),
    "zip_bomb": (_bomb, "zip bomb"),
    "two_series_in_one_zip": (_two_series, "mixes 2 dicom series"),
    "four_d_nifti": (_four_d, "4-d nifti"),
    "oblique_series": (_oblique, "oblique"),
    "missing_slice": (_missing_slice, "missing slice"),
    "text_named_nii": (_not_a_scan, "not a nifti"),
}


# -------------------------------------------------------------------------------------- study
@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-made study with a patient rule recorded for the default model (``max``, threshold 0.40)."""
    folder = make_handmade_study(tmp_path_factory.mktemp("scan-leaderboards"), name="scans")
    board = pd.read_csv(folder / "leaderboard.csv")
    refit = board["refit"].astype(str).str.lower() == "true"
    board["subject_rule"], board["subject_threshold"] = None, np.nan
    board.loc[refit & (board["model"] == "tiny_cnn"), ["subject_rule", "subject_threshold"]] = ["max", 0.40]
    board.to_csv(folder / "leaderboard.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def view(study_dir: Path):
    return gradio_app._study_view(study_dir)


def _scan(view, path: Path, **kwargs):
    options = dict(display_name=path.name, window="brain", model=view.default_model, pictures=True)
    options.update(kwargs)
    return gradio_app._analyze_scan(view, path, **options)


# ----------------------------------------------------------------------------------- answers
def test_zipped_series_gives_verdict_strip_and_pictures(view, tmp_path: Path) -> None:
    from models.attribution import DISPLAY_MIN_SIZE

    assert view.default_model == "tiny_cnn"
    answer, md, pictures = _scan(view, series_zip(tmp_path))
    result = answer.to_dict()
    assert result["n_slices"] == 8 and len(result["slice_probabilities"]) == 8
    assert result["rule"] == "max" and result["threshold"] == pytest.approx(0.40) and result["rule_from_study"]
    # the study's rule, through the library: the scan probability is the max over the slices
    assert result["probability"] == pytest.approx(max(result["slice_probabilities"]), abs=1e-6)
    assert result["label"] == ("Stroke" if result["probability"] >= 0.40 else "Normal")
    scores = np.asarray(result["slice_probabilities"])
    assert result["suspicious_slices"] == list(np.argsort(-scores, kind="stable")[:3])
    assert result["ood_flagged_slices"] is None  # the hand-made models carry no OOD reference
    headline = md.split("\n\n")[0]
    assert headline.startswith(f"## {result['label']} — scan P(Stroke) ") and "(max over 8 slices)" in headline
    assert "threshold 0.40 chosen on held-out patients" in headline
    assert "DICOM series of 8 slices" in md and gradio_app.DISCLAIMER in md
    assert len(pictures) == 3
    for (picture, caption), index in zip(pictures, result["suspicious_slices"]):
        assert picture.ndim == 3 and min(picture.shape[:2]) > DISPLAY_MIN_SIZE
        assert caption.startswith(f"slice {index} · P(Stroke) ")
    import json

    json.dumps(result)  # JSON-able


def test_nifti_gives_a_verdict_and_a_model_without_rule_falls_back(view, tmp_path: Path) -> None:
    answer, md, pictures = _scan(view, nifti_gz(tmp_path), model="logreg")
    result = answer.to_dict()
    assert result["n_slices"] == 6 and result["rule"] == "mean" and not result["rule_from_study"]
    assert result["threshold"] == pytest.approx(view.study.threshold("logreg"))
    assert result["probability"] == pytest.approx(np.mean(result["slice_probabilities"]), abs=1e-6)
    assert "(mean over 6 slices)" in md and "(the slice threshold)" in md and "no patient rule" in md
    assert "NIfTI volume of 6 slices" in md
    assert len(pictures) == 3 and "classical baseline" in md  # model inputs instead of attributions


def test_strip_figure_and_handlers_through_the_blocks(study_dir: Path, tmp_path: Path) -> None:
    demo = gradio_app.build_app(study_dir)
    names = {fn.api_name: fn for fn in demo.fns.values()}
    for name in ("predict", "analyze", "predict_scan", "analyze_scan"):
        assert names[name].api_visibility == "public"
    assert [type(c).__name__ for c in names["predict_scan"].inputs] == ["File", "Dropdown", "Dropdown"]
    assert [type(c).__name__ for c in names["analyze_scan"].outputs] == ["Markdown", "Plot", "Gallery", "JSON"]
    scan_in = next(b for b in demo.blocks.values() if isinstance(b, gr.File) and str(b.label).startswith("CT scan"))
    assert {".zip", ".nii", ".nii.gz"} <= set(scan_in.file_types)

    upload = tmp_path / "upload" / "series.zip"
    upload.parent.mkdir()
    series_zip(tmp_path).rename(upload)
    demo.upload_file_set.add(str(upload))
    md, strip, pictures, result = names["analyze_scan"].fn({"path": str(upload), "orig_name": "series.zip"},
                                                           "brain", "tiny_cnn")
    assert md.startswith(f"## {result['label']} — scan")
    trace, marked = strip.data[:2]
    assert list(trace.x) == list(range(8)) and list(marked.x) == result["suspicious_slices"]
    assert strip.layout.shapes[0].y0 == pytest.approx(0.40)
    assert len(pictures) == 3


def test_long_scans_are_answered_on_every_kth_slice(view, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = gradio_app._PREDICTORS.get(view.study.model_dir(view.default_model))
    hu = head_volume(10, SIZE)
    rule = scan_mod.scan_rule(view.study, view.default_model)
    answer = scan_mod.answer_scan(predictor, hu, classes=view.classes, rule=rule, max_slices=4)
    assert answer.step == 3 and answer.slice_indices == [0, 3, 6, 9] and answer.n_slices == 10
    assert set(answer.suspicious) <= set(answer.slice_indices)
    assert scan_mod.slice_step(400) == 1 and scan_mod.slice_step(401) == 2 and scan_mod.slice_step(1200) == 3
    monkeypatch.setattr(gradio_app, "MAX_SCAN_SLICES", 4)
    volume = SimpleNamespace(hu=hu, format="nifti")
    md = gradio_app._scan_markdown(view, view.default_model, answer, volume, window="brain", notes=[])
    assert "more than 4 slices: one slice in every 3 was analysed (4 slices" in md
    assert "(max over 4 slices)" in md.split("\n\n")[0]


def test_multiclass_scan_is_the_argmax_of_the_aggregate(tmp_path: Path) -> None:
    folder = make_handmade_study(tmp_path / "leaderboards", name="three", classes=["Normal", "Hemorrhagic", "Ischemic"],
                                 n=24)
    view3 = gradio_app._study_view(folder)
    answer, md, _ = _scan(view3, nifti_gz(tmp_path), pictures=False)
    result = answer.to_dict()
    assert result["threshold"] is None and result["rule"] == "mean"
    assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
    assert "the most probable class" in md.split("\n\n")[0]


# ---------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bad_scans_are_refused_with_one_sentence(view, tmp_path: Path, name: str) -> None:
    writer, fragment = REFUSED[name]
    path = writer(tmp_path)
    with pytest.raises(gradio_app.InputRejected) as info:
        _scan(view, path)
    message = str(info.value)
    assert fragment in message.lower(), message
    assert str(tmp_path) not in message and message.startswith(f"{path.name} cannot be read as one CT scan: ")
    assert message.endswith(".") and message.count(". ") == 0, message  # one sentence


def test_scans_over_the_upload_limit_are_refused(view, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gradio_app.MAX_FILE_MB_ENV, "1")
    # a file over the limit
    noise = np.random.default_rng(0).normal(0, 500, (SIZE * 4, SIZE * 4, 40))
    big = write_nifti(tmp_path / "big.nii", None, data=noise.astype(np.int16))
    with pytest.raises(gradio_app.InputRejected, match="the limit is 1 MB"):
        _scan(view, big)
    # a small zip whose series unpacks over the limit
    flat = np.full((64, 128, 128), 35.0, np.float32)
    packed = series_zip(tmp_path, "long.zip", hu=flat)
    assert packed.stat().st_size < 2**20
    with pytest.raises(gradio_app.InputRejected, match="unpacks to 2 MB, over the limit of 1 MB") as info:
        _scan(view, packed)
    assert str(tmp_path) not in str(info.value)
    # a small .nii.gz whose voxels unpack over the limit (gzip is a zip bomb's other door)
    packed = write_nifti(tmp_path / "flat.nii.gz", np.zeros((64, 128, 128), np.float32))
    assert packed.stat().st_size < 2**20
    with pytest.raises(gradio_app.InputRejected, match="decompresses to more than 1 MB"):
        _scan(view, packed)


def test_refusals_through_the_handler_are_gr_errors_and_uploads_are_released(study_dir: Path, tmp_path: Path) -> None:
    demo = gradio_app.build_app(study_dir)
    handler = next(fn for fn in demo.fns.values() if fn.api_name == "predict_scan").fn
    bad = tmp_path / "upload" / "with_notes.zip"
    bad.parent.mkdir()
    _text_member(tmp_path).rename(bad)
    demo.upload_file_set.add(str(bad))
    with pytest.raises(gr.Error, match="not a readable DICOM slice"):
        handler({"path": str(bad), "orig_name": "with_notes.zip"})
    with pytest.raises(gr.Error, match="not uploaded to this app"):
        handler({"path": str(series_zip(tmp_path))})
    with pytest.raises(gr.Error, match="No file received"):
        handler(None)


def test_unexpected_errors_are_answered_generically(view, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uploads = gradio_app._Uploads(type("B", (), {"upload_file_set": set()})(), type("C", (), {})(), grace_seconds=0)
    path = series_zip(tmp_path)
    uploads.blocks.upload_file_set.add(str(path))

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError(f"secret {tmp_path}")

    monkeypatch.setattr(scan_mod, "answer_scan", boom)
    with pytest.raises(gr.Error) as info:
        gradio_app._guarded(uploads, str(path), lambda p, d: _scan(view, p, display_name=d))
    assert "unexpected error" in str(info.value) and str(tmp_path) not in str(info.value)
    assert not path.exists()  # released and deleted even so


# ------------------------------------------------------------------------------- live server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(study_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    pytest.importorskip("gradio_client")
    from gradio_client import Client

    saved = os.environ.get("GRADIO_TEMP_DIR")
    upload_dir = tmp_path_factory.mktemp("scan-uploads")
    os.environ["GRADIO_TEMP_DIR"] = str(upload_dir)
    demo = None
    try:
        demo = gradio_app.launch(study_dir=study_dir, server_name="127.0.0.1", server_port=_free_port(), block=False)
        yield {"client": Client(demo.local_url, verbose=False), "uploads": upload_dir, "demo": demo}
    finally:
        if demo is not None:
            demo.close()
        if saved is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved


def test_predict_scan_through_gradio_client(server: dict, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = server["client"]
    result = client.predict(handle_file(str(series_zip(tmp_path))), api_name="/predict_scan")
    assert result["n_slices"] == 8 and result["rule"] == "max" and result["label"] in ("Normal", "Stroke")
    assert len(result["suspicious_slices"]) == 3 and 0.0 <= result["probability"] <= 1.0
    for name in ("zip_with_text_member", "zip_bomb", "two_series_in_one_zip", "four_d_nifti"):
        writer, fragment = REFUSED[name]
        with pytest.raises(AppError) as info:
            client.predict(handle_file(str(writer(tmp_path / name))), api_name="/predict_scan")
        message = str(info.value)
        assert fragment in message.lower() and str(server["uploads"]) not in message and str(tmp_path) not in message
    # the server still answers: the NIfTI with the other model, and the tab's endpoint with its pictures
    again = client.predict(handle_file(str(nifti_gz(tmp_path))), "brain", "logreg", api_name="/predict_scan")
    assert again["n_slices"] == 6 and again["rule"] == "mean"
    md, _plot, gallery, answer = client.predict(handle_file(str(series_zip(tmp_path, "again.zip"))), "brain",
                                                "tiny_cnn", api_name="/analyze_scan")
    assert md.startswith(f"## {answer['label']} — scan P(Stroke)") and len(gallery) == 3
    assert gallery[0]["caption"].startswith(f"slice {answer['suspicious_slices'][0]} · P(Stroke)")
    # the single-slice endpoint stays
    data_dir = Path(server["demo"].strokect_study.data_dir)
    png = next(p for p in sorted(data_dir.rglob("*.png")) if "_masks" not in p.parts)
    assert client.predict(handle_file(str(png)), api_name="/predict")["label"] in ("Normal", "Stroke")
