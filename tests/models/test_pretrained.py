"""ImageNet weights from local files and the offline hub cache; clear errors without them; no network."""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import models
from models._pretrained import find_pretrained_file


@pytest.fixture(autouse=True)
def _offline_and_empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No weights anywhere but where a test puts them, and any network attempt fails loudly."""
    monkeypatch.delenv("STROKECT_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def _write_weights(folder: Path, timm_name: str, filename: str | None = None) -> dict[str, torch.Tensor]:
    """Save a randomly initialised 1000-class timm model as if it were the ImageNet checkpoint."""
    torch.manual_seed(7)
    state = {k: v.contiguous() for k, v in timm.create_model(timm_name, pretrained=False).state_dict().items()}
    path = folder / (filename or f"{timm_name}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


def _assert_backbone_matches(model: torch.nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...]) -> None:
    loaded = model.backbone.state_dict()
    compared = 0
    for key, value in loaded.items():
        if key.startswith(skip):
            continue
        assert torch.equal(value, state[key]), key
        compared += 1
    assert compared > 10


@pytest.mark.parametrize(
    ("name", "timm_name", "image_size", "skip"),
    [
        ("resnet18", "resnet18", 32, ("fc.",)),
        # a 32 px ViT: the 14x14 position embedding is resampled to 2x2, so it differs by design
        ("vit_tiny", "vit_tiny_patch16_224", 32, ("head.", "pos_embed")),
    ],
)
def test_pretrained_yes_loads_local_weights(
    tmp_path: Path, name: str, timm_name: str, image_size: int, skip: tuple[str, ...]
) -> None:
    weights_dir = tmp_path / "weights"
    state = _write_weights(weights_dir, timm_name)
    model = models.create_model(name, num_classes=3, image_size=image_size, pretrained="yes", weights_dir=weights_dir)
    assert model.init == "imagenet"
    assert model.normalization["in_chans"] == 3
    cfg_mean = [round(v, 6) for v in timm.models.get_pretrained_cfg(timm_name).mean]
    assert model.normalization["mean"] == pytest.approx(cfg_mean)
    _assert_backbone_matches(model, state, skip)
    # the 1000-class head was replaced by a fresh 3-class one
    assert model.head().weight.shape[0] == 3
    assert model(torch.rand(2, 1, image_size, image_size)).shape == (2, 3)


def test_grey_input_is_replicated_and_imagenet_normalised(tmp_path: Path) -> None:
    _write_weights(tmp_path, "resnet18")
    model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes", weights_dir=tmp_path)
    model.eval()
    x = torch.rand(2, 1, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.backbone((x.repeat(1, 3, 1, 1) - mean) / std))


@pytest.mark.parametrize("filename", ["resnet18.pth", "resnet18.a1_in1k.safetensors", "resnet18/model.safetensors"])
def test_weight_file_variants_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filename: str) -> None:
    state = _write_weights(tmp_path / "env-weights", "resnet18", filename)
    monkeypatch.setenv("STROKECT_WEIGHTS", str(tmp_path / "env-weights"))
    assert find_pretrained_file("resnet18") == tmp_path / "env-weights" / filename
    model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes")
    assert model.init == "imagenet"
    _assert_backbone_matches(model, state, ("fc.",))


def test_weights_dir_wins_over_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_weights(tmp_path / "a", "resnet18")
    _write_weights(tmp_path / "b", "resnet18")
    monkeypatch.setenv("STROKECT_WEIGHTS", str(tmp_path / "b"))
    assert find_pretrained_file("resnet18", tmp_path / "a") == tmp_path / "a" / "resnet18.safetensors"


def test_hugging_face_cache_is_used_offline(tmp_path: Path) -> None:
    repo = tmp_path / "hf-home" / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    state = _write_weights(repo / "snapshots" / "abc123", "resnet18", "model.safetensors")
    model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes")
    assert model.init == "imagenet"
    _assert_backbone_matches(model, state, ("fc.",))


@pytest.mark.parametrize(
    ("name", "timm_tag"),
    [("resnet18", "resnet18.a1_in1k"), ("vit_small", "vit_small_patch16_224.augreg_in21k_ft_in1k")],
)
def test_pretrained_yes_without_weights_raises_one_clear_sentence(name: str, timm_tag: str) -> None:
    with pytest.raises(models.PretrainedWeightsUnavailable) as excinfo:
        models.create_model(name, num_classes=2, image_size=32, pretrained="yes")
    message = str(excinfo.value)
    assert isinstance(excinfo.value, RuntimeError)
    assert message.startswith(f"No ImageNet weights for {name} (timm '{timm_tag}')")
    timm_name = models.get_model_info(name).timm_name
    assert f"{timm_name}.safetensors" in message and "$STROKECT_WEIGHTS" in message and "--weights-dir" in message
    assert "--pretrained auto/no" in message
    assert "\n" not in message and message.endswith(".") and ". " not in message  # one sentence


def test_pretrained_auto_without_weights_falls_back_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models"):
        model = models.create_model("efficientnet_b0", num_classes=2, image_size=32, pretrained="auto")
    assert model.init == "random"
    assert model.normalization == {"mean": [0.5], "std": [0.25], "in_chans": 1}
    assert any("Falling back to random init" in r.getMessage() for r in caplog.records)


def test_pretrained_auto_with_weights_uses_them(tmp_path: Path) -> None:
    _write_weights(tmp_path, "resnet18")
    model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="auto", weights_dir=tmp_path)
    assert model.init == "imagenet"


def test_corrupt_weight_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "resnet18.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(models.PretrainedWeightsUnavailable, match="resnet18.safetensors"):
        models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes", weights_dir=tmp_path)


def test_missing_weights_dir_is_ignored_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models"):
        assert find_pretrained_file("resnet18", tmp_path / "nope") is None
    assert any("does not exist" in r.getMessage() for r in caplog.records)
