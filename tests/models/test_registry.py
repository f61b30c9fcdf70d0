"""Registry, deep wrappers, probabilities/device helpers and the classical baselines."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import models
from models._common import StrokeNet
from models._registry import register_model
from models.classical import ClassicalModel, area_resize

DEEP = ["efficientnet_b0", "efficientnet_lite0", "resnet18", "simple_cnn", "tiny_cnn", "vit_small", "vit_tiny"]
CLASSICAL = ["logreg", "svm_rbf"]


# --- registry ---------------------------------------------------------------------------------------------
def test_list_models_sorted_and_by_kind() -> None:
    assert models.list_models() == sorted(DEEP + CLASSICAL + models.list_models(kind="frozen"))
    assert models.list_models(kind="deep") == DEEP
    assert models.list_models(kind="classical") == CLASSICAL


def test_list_models_bad_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        models.list_models(kind="shallow")


@pytest.mark.parametrize("bad", ["resnet50", "", None])
def test_unknown_model_lists_valid_names(bad: object) -> None:
    with pytest.raises(ValueError, match="Registered models: efficientnet_b0, efficientnet_lite0, logreg, resnet18"):
        models.get_model_info(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown model"):
        models.create_model(bad, num_classes=2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "family", "pretrained", "timm_name"),
    [
        ("resnet18", "resnet", True, "resnet18"),
        ("efficientnet_b0", "efficientnet", True, "efficientnet_b0"),
        ("efficientnet_lite0", "efficientnet", True, "tf_efficientnet_lite0"),
        ("vit_tiny", "vit", True, "vit_tiny_patch16_224"),
        ("vit_small", "vit", True, "vit_small_patch16_224"),
        ("simple_cnn", "cnn", False, None),
        ("tiny_cnn", "cnn", False, None),
        ("logreg", "classical", False, None),
        ("svm_rbf", "classical", False, None),
    ],
)
def test_model_info(name: str, family: str, pretrained: bool, timm_name: str | None) -> None:
    info = models.get_model_info(name)
    assert info.name == name
    assert info.family == family
    assert info.kind == ("classical" if family == "classical" else "deep")
    assert info.supports_pretrained is pretrained
    assert info.timm_name == timm_name
    assert info.param_space and info.search_space is info.param_space
    for spec in info.param_space.values():  # ranges only (automl.space reads them); batch sizes follow the data
        assert spec["low"] < spec["high"] and spec["low"] <= spec.get("default", spec["low"]) <= spec["high"]
    if info.head is not None:  # the frozen-feature lane searches its head only
        assert set(info.param_space) <= {"C", "gamma", "n_neighbors"}
    elif info.kind == "deep":
        assert {"lr", "weight_decay"} <= set(info.param_space) and "batch_size" not in info.param_space
    else:
        assert "C" in info.param_space


def test_register_model_rejects_duplicates() -> None:
    models.list_models()  # make sure the built-ins are registered

    def resnet18(**kwargs: object) -> None:  # same name as a built-in
        return None

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet18)


def test_model_info_rejects_bad_family() -> None:
    with pytest.raises(ValueError, match="family"):
        models.ModelInfo(name="x", kind="deep", family="transformer")


# --- deep models ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("name", DEEP)
def test_forward_backward_shapes(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=num_classes, image_size=32)
    assert isinstance(model, StrokeNet)
    assert model.init == "random" and model.num_classes == num_classes and model.image_size == 32
    x = torch.rand(2, 1, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 1 if num_classes == 2 else num_classes)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    probs = models.logits_to_probabilities(logits.detach(), num_classes)
    assert probs.shape == (2, num_classes)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))


@pytest.mark.parametrize("name", DEEP)
def test_stages_partition_parameters_and_end_with_head(name: str) -> None:
    model = models.create_model(name, num_classes=3, image_size=32)
    stages = model.stages()
    assert len(stages) >= 3
    assert stages[-1] is model.head()
    staged = [id(p) for stage in stages for p in stage.parameters()]
    assert len(staged) == len(set(staged)), "a parameter is in two stages"
    assert set(staged) == {id(p) for p in model.parameters()}
    # the head is the classifier: its output size is the number of logits
    last_linear = [m for m in model.head().modules() if isinstance(m, nn.Linear)][-1]
    assert last_linear.out_features == 3
    # stage views do not leak into the checkpoint
    assert not any("ModuleGroup" in k for k in model.state_dict())


@pytest.mark.parametrize("name", DEEP)
def test_gradcam_layer_gives_a_spatial_map(name: str) -> None:
    info = models.get_model_info(name)
    model = models.create_model(name, num_classes=2, image_size=64).eval()
    layer = info.gradcam_layer(model)
    assert any(layer is m for m in model.modules())
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda mod, inp, out: captured.append(out))
    with torch.no_grad():
        model(torch.rand(2, 1, 64, 64))
    handle.remove()
    fmap = info.reshape_tokens(captured[-1], 64)
    assert fmap.ndim == 4 and fmap.shape[0] == 2
    assert fmap.shape[2] >= 2 and fmap.shape[3] >= 2
    if info.family == "vit":
        assert info.num_prefix_tokens == 1
        assert info.vit_patch_grid(64) == (4, 4) == tuple(fmap.shape[2:])
        assert torch.equal(info.reshape_tokens(captured[-1]), fmap)  # inferred square grid
    else:
        assert info.num_prefix_tokens == 0
        with pytest.raises(ValueError, match="not a ViT"):
            info.vit_patch_grid(64)


def test_classical_has_no_gradcam_layer() -> None:
    model = models.create_model("logreg", num_classes=2, image_size=32)
    assert models.get_model_info("logreg").gradcam_layer(model) is None


@pytest.mark.parametrize("name", ["vit_tiny", "vit_small"])
@pytest.mark.parametrize("size", [48, 100])
def test_vit_image_size_multiple_of_16(name: str, size: int) -> None:
    if size % 16 == 0:
        model = models.create_model(name, num_classes=2, image_size=size)
        assert model(torch.rand(1, 1, size, size)).shape == (1, 1)
        assert model.backbone.patch_embed.grid_size == (size // 16, size // 16)
    else:
        with pytest.raises(ValueError, match="multiple of 16"):
            models.create_model(name, num_classes=2, image_size=size)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"num_classes": 2, "image_size": 16}, "image_size"),
        ({"num_classes": 2, "image_size": "64"}, "image_size"),
        ({"num_classes": 2, "pretrained": "maybe"}, "pretrained"),
        ({"num_classes": 2, "pretrained": "yes"}, "no ImageNet weights"),
        ({"num_classes": 2, "dropout": 0.1}, "Unknown option"),
    ],
)
def test_create_model_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        models.create_model("simple_cnn", **kwargs)


def test_none_options_are_ignored_and_auto_means_random_for_scratch_models() -> None:
    model = models.create_model("tiny_cnn", num_classes=2, image_size=32, pretrained="auto", C=None, gamma=None)
    assert model.init == "random"
    with pytest.raises(ValueError, match="no ImageNet weights"):
        models.create_model("logreg", num_classes=2, image_size=32, pretrained="yes")


def test_timm_options_pass_through() -> None:
    model = models.create_model("resnet18", num_classes=2, image_size=32, drop_rate=0.3)
    assert model.backbone.drop_rate == 0.3
    with pytest.raises(ValueError, match="Unknown option"):
        models.create_model("resnet18", num_classes=2, image_size=32, C=1.0)


@pytest.mark.parametrize("name", ["simple_cnn", "resnet18", "vit_tiny"])
def test_create_model_is_deterministic_under_seed(name: str) -> None:
    torch.manual_seed(123)
    a = models.create_model(name, num_classes=2, image_size=32).state_dict()
    torch.manual_seed(123)
    b = models.create_model(name, num_classes=2, image_size=32).state_dict()
    torch.manual_seed(124)
    c = models.create_model(name, num_classes=2, image_size=32).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_random_init_normalisation_is_inside_the_model() -> None:
    model = models.create_model("simple_cnn", num_classes=2, image_size=32).eval()
    assert model.normalization == {"mean": [0.5], "std": [0.25], "in_chans": 1}
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.backbone((x - 0.5) / 0.25))
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        model(torch.rand(3, 3, 32, 32))


def test_channels_last_gives_the_same_logits() -> None:
    model = models.create_model("resnet18", num_classes=3, image_size=32).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_prefers_channels_last_for_convolutional_families_only() -> None:
    chosen = {name: models.get_model_info(name).prefers_channels_last for name in models.list_models()}
    assert chosen == {name: models.get_model_info(name).family in ("cnn", "resnet", "efficientnet")
                      for name in models.list_models()}
    assert chosen["resnet18"] and chosen["simple_cnn"] and not chosen["vit_tiny"] and not chosen["logreg"]


# --- helpers ----------------------------------------------------------------------------------------------
def test_logits_to_probabilities() -> None:
    binary = models.logits_to_probabilities(torch.tensor([[0.0], [2.0]]), 2)
    torch.testing.assert_close(binary[:, 1], torch.sigmoid(torch.tensor([0.0, 2.0])))
    torch.testing.assert_close(binary.sum(1), torch.ones(2))
    torch.testing.assert_close(models.logits_to_probabilities(torch.tensor([0.0, 2.0]), 2), binary)
    multi = models.logits_to_probabilities(torch.tensor([[1.0, 2.0, 3.0]]), 3)
    torch.testing.assert_close(multi, torch.softmax(torch.tensor([[1.0, 2.0, 3.0]]), 1))


@pytest.mark.parametrize(("shape", "num_classes"), [((2, 3), 2), ((2, 1), 3), ((2, 2), 3), ((2, 1), 1)])
def test_logits_to_probabilities_rejects_wrong_shapes(shape: tuple, num_classes: int) -> None:
    with pytest.raises(ValueError):
        models.logits_to_probabilities(torch.zeros(shape), num_classes)


def test_pick_device() -> None:
    assert models.pick_device("cpu") == torch.device("cpu")
    assert models.pick_device(torch.device("cpu")) == torch.device("cpu")
    assert models.pick_device("auto").type in ("cpu", "cuda", "mps")
    for bad in ("gpu", "", 3):
        with pytest.raises(ValueError, match="device"):
            models.pick_device(bad)  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        assert models.pick_device("auto") != torch.device("cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            models.pick_device("cuda")


# --- classical baselines ----------------------------------------------------------------------------------
def _toy_images(n: int, size: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class k has a bright square in quadrant k, over noise: linearly separable in pixels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    X = rng.integers(0, 90, (n, size, size)).astype(np.uint8)
    h = size // 2
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        X[i, r * h : r * h + h, c * h : c * h + h] += 120
    return X, y


def test_area_resize() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64)).astype(np.uint8)
    expected = images.reshape(3, 32, 2, 32, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(area_resize(images, 32), expected, atol=1e-12)
    constant = np.full((1, 45, 45), 7, dtype=np.uint8)  # non-integer factor keeps constants constant
    np.testing.assert_allclose(area_resize(constant, 32), 7.0, atol=1e-12)
    np.testing.assert_allclose(area_resize(images, 64), images)


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("name", CLASSICAL)
def test_classical_fit_predict_and_state_round_trip(name: str, num_classes: int) -> None:
    X, y = _toy_images(36, 40, num_classes)
    model = models.create_model(name, num_classes=num_classes, image_size=40)
    assert isinstance(model, ClassicalModel) and model.kind == "classical"
    assert model.fit(X, y) is model
    X_test, y_test = _toy_images(30, 40, num_classes, seed=1)
    proba = model.predict_proba(X_test)
    assert proba.shape == (30, num_classes)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    assert (proba.argmax(1) == y_test).mean() >= 0.9  # the toy task is easy
    state = model.state_arrays()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    restored = ClassicalModel.from_state_arrays(state)
    assert restored.pipeline is None and restored.model_name == name
    np.testing.assert_allclose(restored.predict_proba(X_test), proba, rtol=0, atol=1e-6)


def test_classical_hyperparameters_are_used() -> None:
    X, y = _toy_images(30, 32, 2)
    X_test, _ = _toy_images(10, 32, 2, seed=3)
    p1 = models.create_model("svm_rbf", num_classes=2, image_size=32, C=1.0, gamma=1e-3).fit(X, y)
    p2 = models.create_model("svm_rbf", num_classes=2, image_size=32, C=1.0, gamma=1.0).fit(X, y)
    assert p1.state_arrays()["svm0.gamma"][0] == 1e-3
    assert not np.allclose(p1.predict_proba(X_test), p2.predict_proba(X_test))
    weak = models.create_model("logreg", num_classes=2, image_size=32, C=1e-6).fit(X, y)
    strong = models.create_model("logreg", num_classes=2, image_size=32, C=10.0).fit(X, y)
    assert np.abs(weak.state_arrays()["logreg.coef"]).sum() < np.abs(strong.state_arrays()["logreg.coef"]).sum()
    with pytest.raises(ValueError, match="Unknown option"):
        models.create_model("logreg", num_classes=2, image_size=32, gamma=0.1)


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.zeros((8, 32, 32), np.float32), np.arange(8) % 2, "uint8"),
        (np.zeros((8, 16, 16), np.uint8), np.arange(8) % 2, "shape"),
        (np.zeros((8, 32, 32), np.uint8), np.array([0] * 7 + [1]), "at least 2"),
        (np.zeros((8, 32, 32), np.uint8), np.arange(8) % 3, "class indices"),
        (np.zeros((8, 32, 32), np.uint8), np.arange(8) % 2 * 0.5, "integer"),
    ],
)
def test_classical_fit_validation(X: np.ndarray, y: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        models.create_model("logreg", num_classes=2, image_size=32).fit(X, y)


def test_classical_errors_before_fit_and_on_bad_state() -> None:
    model = models.create_model("svm_rbf", num_classes=2, image_size=32)
    with pytest.raises(ValueError, match="not fitted"):
        model.predict_proba(np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="not fitted"):
        model.state_arrays()
    X, y = _toy_images(12, 32, 2)
    state = model.fit(X, y).state_arrays()
    del state["pca.components"]
    with pytest.raises(ValueError, match="pca.components"):
        ClassicalModel.from_state_arrays(state)
    with pytest.raises(ValueError, match="gamma"):
        models.create_model("svm_rbf", num_classes=2, image_size=32, gamma=-1.0)


@pytest.mark.parametrize(
    ("name", "image_size", "block", "side"),
    [
        ("simple_cnn", 32, 1, 16),
        ("simple_cnn", 64, 2, 16),
        ("simple_cnn", 128, 3, 16),
        ("simple_cnn", 224, 3, 28),
        ("simple_cnn", 512, 4, 32),
        ("tiny_cnn", 16, 0, 16),
        ("tiny_cnn", 64, 2, 16),
        ("tiny_cnn", 8, 0, 8),
    ],
)
def test_small_cnn_gradcam_map_is_fine_enough(name: str, image_size: int, block: int, side: int) -> None:
    """The small CNNs' Grad-CAM layer is the deepest block with a map of at least 16x16 (the last block
    of simple_cnn is only 4x4 at 64 px: too coarse to localise a lesion)."""
    info = models.get_model_info(name)
    model = models.create_model(name, num_classes=2, image_size=image_size).eval()
    layer = info.gradcam_layer(model)
    assert layer is model.backbone.blocks[block].act
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda mod, inp, out: captured.append(out))
    with torch.no_grad():
        model(torch.rand(1, 1, image_size, image_size))
    handle.remove()
    assert tuple(captured[-1].shape[2:]) == (side, side)


def test_gradcam_block_index_rejects_no_blocks() -> None:
    from models.cnn import gradcam_block_index

    with pytest.raises(ValueError, match="num_blocks"):
        gradcam_block_index(0, 64)
