"""Frozen backbone features: shape, determinism, flip TTA, memory format, input checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from models.features import FrozenBackbone


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("STROKECT_WEIGHTS", raising=False)


def _images(n: int = 5, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size)).astype(np.uint8)


@pytest.mark.parametrize(("name", "dim", "channels_last"), [("resnet18", 512, True), ("vit_tiny", 192, False)])
def test_features_have_the_backbone_width_and_are_deterministic(name: str, dim: int, channels_last: bool) -> None:
    images = _images()
    torch.manual_seed(0)
    backbone = models.load_backbone(name, image_size=32, pretrained="no", device="cpu")
    assert isinstance(backbone, FrozenBackbone)
    assert backbone.init == "random" and backbone.num_features == dim and backbone.channels_last is channels_last
    assert not backbone.model.training and not any(p.requires_grad for p in backbone.model.parameters())
    a = backbone.extract(images, batch_size=2)
    assert a.shape == (5, dim) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(backbone.extract(images, batch_size=2), a)
    np.testing.assert_allclose(backbone.extract(images, batch_size=5), a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(backbone.extract(images[3:4]), a[3:4], rtol=1e-5, atol=1e-5)
    assert backbone.extract(images[:0]).shape == (0, dim)


def test_features_are_the_pooled_pre_logits() -> None:
    images = _images(3)
    backbone = models.load_backbone("resnet18", image_size=32, pretrained="no", device="cpu")
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    with torch.no_grad():
        expected = backbone.model.backbone.forward_head(
            backbone.model.backbone.forward_features(backbone.model.normalize(x)), pre_logits=True)
    np.testing.assert_allclose(backbone.extract(images), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_flip_tta_averages_the_image_and_its_mirror() -> None:
    images = _images(4)
    backbone = models.load_backbone("resnet18", image_size=32, pretrained="no", device="cpu")
    plain = backbone.extract(images, batch_size=3)
    mirrored = backbone.extract(np.ascontiguousarray(images[:, :, ::-1]), batch_size=3)
    tta = backbone.extract(images, batch_size=3, flip_tta=True)
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta, plain)


def test_extract_features_in_one_call_matches_the_backbone() -> None:
    images = _images(3, size=64)
    torch.manual_seed(1)
    one_call = models.extract_features("efficientnet_b0", images, pretrained="no", batch_size=2, device="cpu")
    torch.manual_seed(1)
    backbone = models.load_backbone("efficientnet_b0", image_size=64, pretrained="no", device="cpu")
    assert one_call.shape == (3, 1280)
    np.testing.assert_allclose(one_call, backbone.extract(images, batch_size=2), rtol=1e-5, atol=1e-6)


def test_package_weights_give_imagenet_features() -> None:
    backbone = models.load_backbone("efficientnet_lite0", image_size=64, pretrained="yes", offline=True, device="cpu")
    assert backbone.init == "imagenet:package" and backbone.num_features == 1280
    assert backbone.extract(_images(2, size=64)).shape == (2, 1280)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((2, 32, 32), dtype=np.float32), "uint8"),
        (np.zeros((2, 2, 32, 32), dtype=np.uint8), r"\(N, S, S\)"),
        (np.zeros((2, 48, 48), dtype=np.uint8), "32x32"),
        ([[0]], "uint8"),
    ],
)
def test_bad_images_are_refused(images: object, match: str) -> None:
    backbone = models.load_backbone("resnet18", image_size=32, pretrained="no", device="cpu")
    with pytest.raises(ValueError, match=match):
        backbone.extract(images)  # type: ignore[arg-type]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="no timm backbone"):
        models.load_backbone("simple_cnn", image_size=32)
    with pytest.raises(ValueError, match="batch_size"):
        models.extract_features("resnet18", _images(2), pretrained="no", batch_size=0)
    with pytest.raises(ValueError, match=r"\(N, S, S\)"):
        models.extract_features("resnet18", np.zeros((32, 32), dtype=np.uint8))
