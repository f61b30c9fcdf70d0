"""Checkpoints (safetensors + card.json) and the predictor on every kind of input."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import data
import models
from models.predictor import CARD_FILE, WEIGHTS_FILE

CLASSES = ["normal", "stroke"]
S = 32
CARD_KEYS = {"model", "kind", "init", "classes", "image_size", "window", "normalization", "train_config",
             "metrics", "threshold", "manifest_hash", "versions", "created"}


def _toy_uint8(n: int, size: int = S, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.integers(0, 120, (n, size, size)).astype(np.uint8)
    X[y == 1, : size // 2] += 100
    return X, y


def _make_model(name: str, num_classes: int = 2, tmp_path: Path | None = None) -> object:
    torch.manual_seed(0)
    if name == "resnet18_imagenet":  # fine-tuned layout: 3 channels + ImageNet normalisation
        assert tmp_path is not None
        state = timm.create_model("resnet18", pretrained=False).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "resnet18.safetensors"))
        model = models.create_model("resnet18", num_classes=num_classes, image_size=S, pretrained="yes",
                                    weights_dir=tmp_path)
        assert model.init == "imagenet:local"
    else:
        model = models.create_model(name, num_classes=num_classes, image_size=S)
    if getattr(model, "kind", "deep") == "classical":
        X, y = _toy_uint8(24)
        y = np.arange(24) % num_classes
        model.fit(X, y)
    else:
        # one training step so that BatchNorm statistics and weights differ from a fresh model
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model(torch.rand(4, 1, S, S)).sum().backward()
        opt.step()
        model.eval()
    return model


def _reference_proba(model: object, X: np.ndarray, num_classes: int) -> np.ndarray:
    if getattr(model, "kind", "deep") == "classical":
        return model.predict_proba(X)  # type: ignore[attr-defined]
    with torch.no_grad():
        logits = model(torch.from_numpy(X).float().div(255.0)[:, None])  # type: ignore[operator]
    return models.logits_to_probabilities(logits, num_classes).numpy()


@pytest.fixture
def binary_folder(tmp_path: Path) -> Path:
    model = _make_model("simple_cnn")
    return models.save_checkpoint(model, tmp_path / "ckpt", card={"classes": CLASSES, "window": "brain",
                                                                     "metrics": {"val_auc": 0.9}})


@pytest.fixture
def png_image(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (50, 40)).astype(np.uint8)
    path = tmp_path / "scan.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


# --- checkpoints ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("name", ["simple_cnn", "tiny_cnn", "resnet18_imagenet", "vit_tiny", "logreg", "svm_rbf"])
def test_checkpoint_round_trip_gives_identical_probabilities(tmp_path: Path, name: str, num_classes: int) -> None:
    model = _make_model(name, num_classes, tmp_path)
    classes = CLASSES if num_classes == 2 else ["hemorrhagic", "ischemic", "normal"]
    folder = models.save_checkpoint(model, tmp_path / "ckpt", card={"classes": classes, "threshold": 0.3})
    assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    card = json.loads((folder / CARD_FILE).read_text())
    assert CARD_KEYS <= set(card)
    assert card["model"] == model.model_name and card["init"] == model.init
    assert card["image_size"] == S and card["classes"] == classes and card["threshold"] == 0.3
    assert card["versions"]["torch"] == torch.__version__

    predictor = models.load_predictor(folder, device="cpu")
    assert predictor.classes == classes and predictor.image_size == S and predictor.threshold == 0.3
    assert predictor.init == model.init
    X, _ = _toy_uint8(6, seed=9)
    expected = _reference_proba(model, X, num_classes)
    if getattr(model, "kind", "deep") == "deep":
        # same weights; CNNs run in channels_last (other kernels): equal up to float32 rounding
        assert predictor.channels_last == models.get_model_info(model.model_name).prefers_channels_last
        np.testing.assert_allclose(predictor.predict_proba(X), expected, rtol=1e-5, atol=1e-7)
    else:  # the saved form recomputes the sklearn pipeline in numpy
        np.testing.assert_allclose(predictor.predict_proba(X), expected, rtol=0, atol=1e-12)
    # other batch sizes may pick other kernels: equal up to float32 rounding
    np.testing.assert_allclose(predictor.predict_proba(X, batch_size=4), expected, rtol=1e-4, atol=1e-7)
    if getattr(model, "kind", "deep") == "deep":
        assert predictor.model.normalization == model.normalization
        assert not any(p.requires_grad for p in predictor.model.parameters())  # inference only


def test_default_batch_size_follows_the_memory_format(tmp_path: Path) -> None:
    """Convolutional models on the CPU: channels_last, 8 images per pass; ViTs: contiguous, 32."""
    for name, channels_last, batch in (("simple_cnn", True, 8), ("vit_tiny", False, 32)):
        model = _make_model(name, 2, tmp_path)
        predictor = models.load_predictor(
            models.save_checkpoint(model, tmp_path / name, card={"classes": CLASSES}), device="cpu")
        assert (predictor.channels_last, predictor.default_batch_size) == (channels_last, batch)
        convs = [m for m in predictor.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
        assert bool(convs) == channels_last  # the ViT's only convolution is the 1-channel patch embedding
        assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        X, _ = _toy_uint8(11, seed=3)  # 11 images: one full pass of 8 and a partial one
        np.testing.assert_allclose(predictor.predict_proba(X), predictor.predict_proba(X, batch_size=11),
                                   rtol=1e-4, atol=1e-7)
        with pytest.raises(ValueError, match="batch_size"):
            predictor.predict_proba(X, batch_size=True)


@pytest.mark.parametrize(("name", "blocks"), [("tiny_cnn", 3), ("simple_cnn", 5), ("resnet18", 20)])
def test_the_small_cnns_are_served_with_batchnorm_folded_into_their_convolutions(
        tmp_path: Path, name: str, blocks: int) -> None:
    model = _make_model(name)
    model.eval()
    X, _ = _toy_uint8(5, seed=4)
    expected = _reference_proba(model, X, 2)
    predictor = models.load_predictor(models.save_checkpoint(model, tmp_path / name, card={"classes": CLASSES}),
                                      device="cpu")
    assert predictor.fused_batchnorm == blocks
    if blocks:
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.model.modules())
    np.testing.assert_allclose(predictor.predict_proba(X), expected, rtol=1e-5, atol=1e-6)
    # Grad-CAM hooks the blocks' activations, which folding leaves in place
    from models.attribution import explain

    result = explain(predictor, X[0], method="grad_cam")
    assert result.heatmap.shape == (S, S) and np.isfinite(result.heatmap).all() and np.abs(result.heatmap).max() > 0
    assert result.probability == pytest.approx(float(expected[0, result.target]), abs=1e-5)


def test_fuse_batchnorm_refuses_a_block_in_training_mode_and_is_idempotent() -> None:
    from models._common import fuse_batchnorm_
    from models.cnn import ConvBlock

    block = ConvBlock(1, 4)
    with pytest.raises(RuntimeError, match="eval mode"):
        block.fuse_batchnorm_()
    block.eval()
    x = torch.rand(2, 1, 8, 8)
    before = block(x)
    assert fuse_batchnorm_(torch.nn.Sequential(block)) == 1 and isinstance(block.bn, torch.nn.Identity)
    assert fuse_batchnorm_(torch.nn.Sequential(block)) == 0
    torch.testing.assert_close(block(x), before, rtol=1e-5, atol=1e-6)


def test_save_checkpoint_overwrites_in_place_and_keeps_other_files(tmp_path: Path, binary_folder: Path) -> None:
    (binary_folder / "config.json").write_text("{}")
    other = _make_model("simple_cnn")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    models.save_checkpoint(other, binary_folder, card={"classes": CLASSES, "threshold": 0.7})
    assert sorted(p.name for p in binary_folder.iterdir()) == ["card.json", "config.json", "model.safetensors"]
    predictor = models.load_predictor(binary_folder)
    assert predictor.threshold == 0.7
    X, _ = _toy_uint8(3)
    np.testing.assert_array_equal(predictor.predict_proba(X), _reference_proba(other, X, 2).astype(np.float64))
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
@pytest.mark.parametrize("name", ["tiny_cnn", "logreg"])
def test_save_checkpoint_gives_the_usual_permissions(tmp_path: Path, name: str, umask: int) -> None:
    """Folder 0777 & ~umask, files 0666 & ~umask (as mkdir/open would), not mkdtemp's 0700 or
    safetensors' 0600: a dashboard running as another user must be able to read the model."""
    model = _make_model(name, 2, tmp_path)
    old = os.umask(umask)
    try:
        folder = models.save_checkpoint(model, tmp_path / "models" / name, card={"classes": CLASSES})
        modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
        assert modes == {WEIGHTS_FILE: 0o666 & ~umask, CARD_FILE: 0o666 & ~umask}
        models.save_checkpoint(model, folder, card={"classes": CLASSES})  # overwrite in place
        assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == modes
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    ("card", "match"),
    [
        ({}, "classes"),
        ({"classes": ["a", "b", "c"]}, "num_classes=2"),
        ({"classes": ["a", "a"]}, "duplicate"),
        ({"classes": CLASSES, "threshold": 1.5}, "threshold"),
        ({"classes": CLASSES, "metrics": {"x": object()}}, "JSON"),
    ],
)
def test_save_checkpoint_validates_the_card(tmp_path: Path, card: dict, match: str) -> None:
    model = models.create_model("tiny_cnn", num_classes=2, image_size=S)
    with pytest.raises(ValueError, match=match):
        models.save_checkpoint(model, tmp_path / "ckpt", card=card)
    assert not (tmp_path / "ckpt").exists()


def test_save_checkpoint_rejects_foreign_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="create_model"):
        models.save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x", card={"classes": CLASSES})


def _corrupt(folder: Path, how: str) -> str:
    card_path, weights_path = folder / CARD_FILE, folder / WEIGHTS_FILE
    if how == "no folder":
        return str(folder / "missing")
    if how == "no card":
        card_path.unlink()
    elif how == "bad json":
        card_path.write_text("{not json")
    elif how == "missing keys":
        card_path.write_text(json.dumps({"model": "simple_cnn"}))
    elif how == "unknown model":
        card = json.loads(card_path.read_text())
        card["model"] = "resnet50"
        card_path.write_text(json.dumps(card))
    elif how == "no weights":
        weights_path.unlink()
    elif how == "garbage weights":
        weights_path.write_bytes(b"\x00" * 100)
    elif how == "truncated weights":
        weights_path.write_bytes(weights_path.read_bytes()[:1000])
    elif how == "wrong architecture":
        card = json.loads(card_path.read_text())
        card["model"] = "tiny_cnn"
        card_path.write_text(json.dumps(card))
    return how


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("no folder", "does not exist"),
        ("no card", "card.json is missing"),
        ("bad json", "card.json is not valid JSON"),
        ("missing keys", r"card.json lacks the required key\(s\)"),
        ("unknown model", "Unknown model 'resnet50'"),
        ("no weights", "model.safetensors is missing"),
        ("garbage weights", "model.safetensors cannot be read"),
        ("truncated weights", "model.safetensors cannot be read"),
        ("wrong architecture", "model.safetensors does not fit a tiny_cnn"),
    ],
)
def test_load_predictor_names_the_broken_file(binary_folder: Path, how: str, match: str) -> None:
    target = _corrupt(binary_folder, how)
    folder = Path(target) if how == "no folder" else binary_folder
    with pytest.raises(ValueError, match=match):
        models.load_predictor(folder)


# --- inputs -----------------------------------------------------------------------------------------------
def test_preprocess_is_the_training_path_bit_for_bit(binary_folder: Path, png_image: tuple[Path, np.ndarray]) -> None:
    predictor = models.load_predictor(binary_folder)
    path, _ = png_image
    x = predictor.preprocess(path)
    assert x.shape == (1, 1, S, S) and x.dtype == torch.float32
    expected = data.to_uint8(data.resize_pad(data.load_image(path, window="brain"), S))
    assert torch.equal(x, torch.from_numpy(expected).float().div(255.0)[None, None])
    assert torch.equal(torch.round(x * 255) / 255, x)  # exactly the uint8 grid of the cache


def test_predictor_matches_the_disk_cache(tmp_path: Path, binary_folder: Path) -> None:
    """Live inputs and cached training inputs are the same bytes (data.load_arrays vs Predictor)."""
    rng = np.random.default_rng(3)
    for label in CLASSES:
        (tmp_path / "ds" / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (37 + i, 45)).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "ds" / label / f"p{label}{i}.png")
    manifest = data.scan_folder(tmp_path / "ds", group_by="none")
    cached = data.load_arrays(manifest, size=S)
    predictor = models.load_predictor(binary_folder)
    for row, path in zip(cached, manifest.paths()):
        np.testing.assert_array_equal(predictor.preprocess_uint8(path), row)
    live = [predictor.predict(p)["probabilities"]["stroke"] for p in manifest.paths()]
    np.testing.assert_allclose(live, predictor.predict_proba(cached)[:, 1], rtol=0, atol=0)


def test_all_input_kinds_agree(binary_folder: Path, png_image: tuple[Path, np.ndarray]) -> None:
    predictor = models.load_predictor(binary_folder)
    path, pixels = png_image
    reference = predictor.predict(path)
    assert set(reference) == {"label", "probabilities", "ood"} and reference["ood"] is None  # no ood.safetensors
    assert set(reference["probabilities"]) == set(CLASSES)
    assert sum(reference["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    for source in (str(path), path.read_bytes(), Image.open(path), pixels, io.BytesIO(path.read_bytes())):
        assert predictor.predict(source) == reference
    assert predictor.predict_many([path, pixels, path.read_bytes()], batch_size=2) == [reference] * 3


@pytest.mark.parametrize("use_dataset", [True, False])
def test_dicom_input_uses_the_card_window(binary_folder: Path, use_dataset: bool) -> None:
    dcm_path = pydicom.data.get_testdata_file("CT_small.dcm")
    source = pydicom.dcmread(dcm_path) if use_dataset else dcm_path
    predictor = models.load_predictor(binary_folder)
    result = predictor.predict(source)
    assert result["label"] in CLASSES
    brain = predictor.preprocess(source)
    bone = predictor.preprocess(source, window="bone")
    assert not torch.equal(brain, bone)
    np.testing.assert_array_equal(
        brain[0, 0].numpy() * 255, data.to_uint8(data.resize_pad(data.load_image(dcm_path, window="brain"), S))
    )
    assert predictor.predict(source, window=(600, 2800)) == predictor.predict(source, window="bone")


def test_predict_volume_is_the_slice_path_for_every_slice(binary_folder: Path) -> None:
    rng = np.random.default_rng(3)
    hu = rng.normal(35, 40, (5, 40, 28)).astype(np.float32)  # non-square: resize_pad pads
    predictor = models.load_predictor(binary_folder)
    expected = np.stack([data.to_uint8(data.resize_pad(data.apply_window(s, "brain"), S)) for s in hu])
    np.testing.assert_array_equal(predictor.preprocess_volume(hu), expected)
    probs = predictor.predict_volume(hu, batch_size=2)
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs, predictor.predict_proba(expected), atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    bone = predictor.preprocess_volume(hu, window="bone")
    np.testing.assert_array_equal(bone, predictor.preprocess_volume(hu, window=(600, 2800)))
    assert not np.array_equal(bone, expected)
    # one slice is a volume too
    assert predictor.predict_volume(hu[:1]).shape == (1, 2)


@pytest.mark.parametrize("hu, match", [
    (np.zeros((32, 32), np.float32), "K >= 1"),
    (np.zeros((0, 32, 32), np.float32), "K >= 1"),
    (np.zeros((2, 32, 32), np.int16), "floating-point"),
    (np.full((2, 8, 8), np.nan, np.float32), "NaN"),
])
def test_predict_volume_validates_the_volume(binary_folder: Path, hu: np.ndarray, match: str) -> None:
    predictor = models.load_predictor(binary_folder)
    with pytest.raises(ValueError, match=match):
        predictor.predict_volume(hu)
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict_volume(np.zeros((2, 8, 8), np.float32), batch_size=0)


def test_one_pixel_image_is_accepted(binary_folder: Path) -> None:
    predictor = models.load_predictor(binary_folder)
    result = predictor.predict(np.array([[200]], dtype=np.uint8))
    assert result["label"] in CLASSES


def _truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()[:80]


@pytest.mark.parametrize(
    "bad",
    [b"", b"this is plain text, not an image", _truncated_png(), "does/not/exist.png", 42, np.zeros((2, 3, 4, 5)),
     np.array([[np.nan, 0.5]], dtype=np.float32), np.zeros((0, 10))],
    ids=["empty", "text", "truncated", "missing-path", "int", "4d-array", "nan", "zero-size"],
)
def test_bad_inputs_raise_invalid_input_error(binary_folder: Path, bad: object) -> None:
    predictor = models.load_predictor(binary_folder)
    with pytest.raises(models.InvalidInputError) as excinfo:
        predictor.predict(bad)
    assert isinstance(excinfo.value, ValueError)
    message = str(excinfo.value)
    assert message and "\n" not in message and "Traceback" not in message


def test_text_file_named_png(tmp_path: Path, binary_folder: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    with pytest.raises(models.InvalidInputError, match="fake.png"):
        models.load_predictor(binary_folder).predict(fake)


def test_predict_many_reports_the_bad_index(binary_folder: Path, png_image: tuple[Path, np.ndarray]) -> None:
    predictor = models.load_predictor(binary_folder)
    with pytest.raises(models.InvalidInputError, match="^Input 1: "):
        predictor.predict_many([png_image[0], b""])
    with pytest.raises(ValueError, match="list"):
        predictor.predict_many(png_image[0])  # type: ignore[arg-type]
    assert predictor.predict_many([]) == []


# --- decisions --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("threshold", "label"), [(0.0, "stroke"), (1.0, "normal")])
def test_binary_label_uses_the_card_threshold(tmp_path: Path, threshold: float, label: str) -> None:
    folder = models.save_checkpoint(_make_model("tiny_cnn"), tmp_path / "m", card={"classes": CLASSES,
                                                                                 "threshold": threshold})
    predictor = models.load_predictor(folder)
    results = predictor.predict_many([np.full((20, 20), v, np.uint8) for v in (0, 90, 255)])
    assert [r["label"] for r in results] == [label] * 3


def test_multiclass_label_is_the_argmax(tmp_path: Path) -> None:
    classes = ["hemorrhagic", "ischemic", "normal"]
    folder = models.save_checkpoint(_make_model("tiny_cnn", 3), tmp_path / "m", card={"classes": classes})
    predictor = models.load_predictor(folder)
    for value in (0, 128, 255):
        result = predictor.predict(np.full((S, S), value, np.uint8))
        probs = result["probabilities"]
        assert list(probs) == classes
        assert result["label"] == max(probs, key=probs.get)


def test_predict_proba_accepts_float_batches(binary_folder: Path) -> None:
    predictor = models.load_predictor(binary_folder)
    X, _ = _toy_uint8(5)
    as_float = torch.from_numpy(X).float().div(255.0)[:, None]
    np.testing.assert_array_equal(predictor.predict_proba(as_float), predictor.predict_proba(X))
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict_proba(np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict_proba(X, batch_size=0)
