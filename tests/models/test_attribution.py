"""Tests for models.attribution: every method on every deep model, completeness, inputs, overlay."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import models
from models.attribution import (
    DISPLAY_MIN_SIZE,
    METHODS,
    Attribution,
    applicable_methods,
    enlarge,
    explain,
    flat_map_message,
    is_flat,
    overlay,
    render_input,
    render_overlay,
)

SIZE = 32
DEEP = models.list_models(kind="deep")


@pytest.fixture(scope="module")
def nets() -> dict[str, torch.nn.Module]:
    """One seeded random-init binary model per registered deep architecture, built once."""
    out = {}
    for name in DEEP:
        torch.manual_seed(0)
        out[name] = models.create_model(name, num_classes=2, image_size=SIZE, pretrained="no").eval()
    return out


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A head-like test image in [0, 1]: a bright ring with a brighter blob inside, over faint noise.

    No pixel is exactly 0: a randomly initialised timm ResNet (zero-initialised residual branches)
    samples only a sparse set of pixels, and IG from a black baseline is 0 wherever the input is.
    """
    yy, xx = np.mgrid[:SIZE, :SIZE] / (SIZE - 1) - 0.5
    r = np.hypot(xx, yy)
    img = 0.35 * (r < 0.4) + 0.55 * ((r > 0.36) & (r < 0.42)) + 0.4 * (np.hypot(xx - 0.12, yy + 0.1) < 0.08)
    img = img + 0.05 + 0.1 * np.random.default_rng(0).random((SIZE, SIZE))
    return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))[None, None]


def _vit_only(method: str, name: str) -> bool:
    return method == "attention_rollout" and models.get_model_info(name).family != "vit"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", DEEP)
def test_each_method_on_each_model(nets, image, name, method) -> None:
    net = nets[name]
    if _vit_only(method, name):
        with pytest.raises(ValueError, match=rf"attention_rollout.*{name}"):
            explain(net, image, method=method)
        assert method not in applicable_methods(name)
        return
    assert method in applicable_methods(name)
    att = explain(net, image, method=method)
    assert isinstance(att, Attribution)
    assert att.heatmap.shape == (SIZE, SIZE) and att.heatmap.dtype == np.float32
    assert np.isfinite(att.heatmap).all()
    assert np.abs(att.heatmap).max() > 0, "an all-zero map explains nothing"
    assert att.image.shape == (SIZE, SIZE)
    np.testing.assert_allclose(att.image, image[0, 0].numpy())
    assert att.method == method and att.model == name
    assert att.target in (0, 1) and att.target_name in ("negative", "positive")
    assert 0.0 <= att.probability <= 1.0 and att.seconds > 0
    if not att.signed:
        assert att.heatmap.min() >= 0


@pytest.mark.parametrize("name", ["simple_cnn", "resnet18", "vit_tiny"])
@pytest.mark.parametrize("target", ["positive", "negative"])
def test_integrated_gradients_completeness(nets, image, name, target) -> None:
    """Sum of IG attributions = f(x) - f(baseline) for the explained logit (black baseline).

    In fp32: on a CPU with native bf16 the default precision runs IG under bf16 autocast, whose reported
    completeness error is itself a bf16 figure (test_bf16_maps_follow_fp32... covers that path)."""
    net = nets[name]
    att = explain(net, image, method="integrated_gradients", target=target, n_steps=64, precision="fp32")
    with torch.inference_mode():
        z_x = float(net(image))
        z_b = float(net(torch.zeros_like(image)))
    sign = 1.0 if target == "positive" else -1.0
    expected = sign * (z_x - z_b)
    total = float(att.heatmap.astype(np.float64).sum())
    assert abs(total - expected) <= 0.05 * abs(expected) + 1e-2, (total, expected)
    assert att.convergence_delta is not None
    assert att.convergence_delta == pytest.approx(total - expected, abs=1e-3)


def test_negative_target_negates_linear_attributions(nets, image) -> None:
    net = nets["simple_cnn"]
    pos = explain(net, image, method="integrated_gradients", target="positive")
    neg = explain(net, image, method="integrated_gradients", target="negative")
    assert pos.target == 1 and neg.target == 0
    np.testing.assert_allclose(neg.heatmap, -pos.heatmap, rtol=1e-4, atol=1e-6)
    assert pos.probability + neg.probability == pytest.approx(1.0, abs=1e-5)


def test_blurred_baseline_and_internal_batch(nets, image) -> None:
    net = nets["resnet18"]
    a = explain(net, image, method="integrated_gradients", baseline="blurred", n_steps=16, internal_batch_size=4)
    b = explain(net, image, method="integrated_gradients", baseline="blurred", n_steps=16, internal_batch_size=16)
    np.testing.assert_allclose(a.heatmap, b.heatmap, rtol=1e-3, atol=1e-6)
    assert abs(a.convergence_delta) < 0.05
    black = explain(net, image, method="integrated_gradients", n_steps=16)
    assert not np.allclose(a.heatmap, black.heatmap)
    assert a.params["baseline"] == "blurred" and a.params["internal_batch_size"] == 4


def test_multiclass_targets(image) -> None:
    torch.manual_seed(0)
    net = models.create_model("simple_cnn", num_classes=3, image_size=SIZE)
    classes = ["Normal", "Ischemic", "Hemorrhagic"]
    att = explain(net, image, method="grad_cam", target="Hemorrhagic", classes=classes)
    assert att.target == 2 and att.target_name == "Hemorrhagic"
    with torch.inference_mode():
        predicted = int(net(image).argmax())
    assert explain(net, image, method="saliency", classes=classes).target == predicted
    with pytest.raises(ValueError, match="positive"):
        explain(net, image, method="saliency", target="positive", classes=classes)


def test_gradient_shap_is_seeded(nets, image) -> None:
    a = explain(nets["tiny_cnn"], image, method="gradient_shap", n_samples=8, stdevs=0.05, seed=3)
    b = explain(nets["tiny_cnn"], image, method="gradient_shap", n_samples=8, stdevs=0.05, seed=3)
    c = explain(nets["tiny_cnn"], image, method="gradient_shap", n_samples=8, stdevs=0.05, seed=4)
    np.testing.assert_array_equal(a.heatmap, b.heatmap)
    assert not np.array_equal(a.heatmap, c.heatmap)
    state = np.random.get_state()[1].copy()
    chunked = explain(nets["tiny_cnn"], image, method="gradient_shap", n_samples=7, internal_batch_size=3)
    assert np.array_equal(np.random.get_state()[1], state), "numpy's global RNG is left as it was"
    assert chunked.params["internal_batch_size"] == 3 and np.isfinite(chunked.heatmap).all()


def test_occlusion_window_scales_with_image() -> None:
    torch.manual_seed(0)
    net = models.create_model("tiny_cnn", num_classes=2, image_size=64)
    att = explain(net, torch.rand(1, 1, 64, 64), method="occlusion")
    assert att.params["window_size"] == 8 and att.params["stride"] == 4
    assert att.heatmap.shape == (64, 64)


def test_vit_gradcam_uses_patch_grid_and_rollout_restores_fused_attention() -> None:
    torch.manual_seed(0)
    net = models.create_model("vit_tiny", num_classes=2, image_size=64)
    x = torch.rand(1, 1, 64, 64)
    cam = explain(net, x, method="grad_cam")
    assert cam.params["grid"] == [4, 4]
    fused = [blk.attn.fused_attn for blk in net.backbone.blocks]
    roll = explain(net, x, method="attention_rollout", head_fusion="max")
    assert [blk.attn.fused_attn for blk in net.backbone.blocks] == fused
    assert roll.params["grid"] == [4, 4] and 0.9 < roll.heatmap.max() <= 1.0 + 1e-6  # peak-normalised
    assert np.ptp(roll.heatmap) > 0
    with pytest.raises(ValueError, match="head_fusion"):
        explain(net, x, method="attention_rollout", head_fusion="median")


def _count_forwards(net: torch.nn.Module, call) -> int:
    """How many times ``net`` itself runs while ``call()`` executes (a forward hook counter)."""
    calls = []
    handle = net.register_forward_hook(lambda module, inputs, output: calls.append(1))
    try:
        call()
    finally:
        handle.remove()
    return len(calls)


def _negative_predicting(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of a binary model whose logit is shifted far below 0: it predicts the negative class."""
    import copy

    net = copy.deepcopy(net)
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias -= 50.0
    return net


def _plain_captum(method: str, net: torch.nn.Module, name: str, image: torch.Tensor, sign: float) -> torch.Tensor:
    """What the method computes with Captum alone on ``sign * logit`` (the pre-change computation)."""
    from captum.attr import LayerAttribution, LayerGradCam, Occlusion, Saliency

    def fwd(x: torch.Tensor) -> torch.Tensor:
        return sign * net(x).reshape(-1, 1)

    x = image.clone().requires_grad_(method != "occlusion")
    if method == "grad_cam":
        layer = models.get_model_info(name).gradcam_layer(net)
        cam = LayerGradCam(fwd, layer).attribute(x, target=0, relu_attributions=True)
        return LayerAttribution.interpolate(cam, (SIZE, SIZE), interpolate_mode="bilinear")
    if method == "saliency":
        return Saliency(fwd).attribute(x, target=0)
    with torch.inference_mode():
        return Occlusion(fwd).attribute(x, sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2), baselines=0.0,
                                        target=0, perturbations_per_eval=16)


@pytest.mark.parametrize("target", [None, "negative", "positive"])
@pytest.mark.parametrize(("name", "method"), [("resnet18", "grad_cam"), ("simple_cnn", "grad_cam"),
                                              ("tiny_cnn", "saliency"), ("tiny_cnn", "occlusion"),
                                              ("vit_tiny", "attention_rollout")])
def test_no_extra_forward_pass(nets, image, name, method, target) -> None:
    """The target is resolved from the method's own forward pass: as many model calls as Captum alone."""
    net = nets[name]
    if method == "attention_rollout":
        plain = 1  # one pass that records the attention maps
    else:
        plain = _count_forwards(net, lambda: _plain_captum(method, net, name, image, 1.0))
    ours = _count_forwards(net, lambda: explain(net, image, method=method, target=target, precision="fp32"))
    assert ours == plain, (ours, plain)
    if method == "grad_cam":
        assert plain == 1


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_shap"])
def test_interpolating_methods_need_one_pass_on_the_image(nets, image, method) -> None:
    """IG and gradient SHAP never run the model on the image itself: one inference pass resolves the target."""
    net = nets["tiny_cnn"]
    opts = {"n_steps": 8} if method == "integrated_gradients" else {"n_samples": 8}
    batches = []
    handle = net.register_forward_hook(lambda module, inputs, output: batches.append(inputs[0].shape[0]))
    try:
        explain(net, image, method=method, **opts)
    finally:
        handle.remove()
    assert batches.count(1) >= 1 and sum(batches) - 1 >= 8


@pytest.mark.parametrize(("name", "method"), [("resnet18", "grad_cam"), ("vit_tiny", "grad_cam"),
                                              ("simple_cnn", "grad_cam"), ("tiny_cnn", "saliency"),
                                              ("tiny_cnn", "occlusion")])
def test_predicted_negative_class_map_equals_plain_captum_on_minus_logit(nets, image, name, method) -> None:
    """target=None on a model predicting "negative" explains -z exactly as a separate pre-pass did."""
    net = _negative_predicting(nets[name])
    opts = {"window_size": 4, "stride": 2} if method == "occlusion" else {}
    att = explain(net, image, method=method, precision="fp32", **opts)
    with torch.inference_mode():
        z = float(net(image))
    assert z < 0 and att.target == 0 and att.target_name == "negative"
    assert att.probability == pytest.approx(float(torch.sigmoid(torch.tensor(-z))), rel=1e-5)
    if method == "grad_cam" and name == "vit_tiny":  # plain Captum gives no spatial map on ViT tokens
        pos = explain(net, image, method=method, target="positive")
        neg = explain(net, image, method=method, target="negative")
        np.testing.assert_allclose(att.heatmap, neg.heatmap, rtol=1e-5, atol=1e-7)
        assert not np.allclose(pos.heatmap, neg.heatmap)
        return
    expected = _plain_captum(method, net, name, image, -1.0).detach().reshape(SIZE, SIZE).numpy()
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(att.heatmap, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_state_is_restored(nets, image) -> None:
    net = nets["tiny_cnn"]
    frozen = next(net.parameters())
    frozen.requires_grad_(False)
    net.train()
    try:
        explain(net, image, method="integrated_gradients", n_steps=8)
        explain(net, image, method="grad_cam")
        assert net.training
        flags = [p.requires_grad for p in net.parameters()]
        assert flags[0] is False and all(flags[1:])
        assert all(p.grad is None for p in net.parameters())
    finally:
        frozen.requires_grad_(True)
        net.eval()


def test_uint8_and_2d_inputs_are_accepted(nets, image) -> None:
    net = nets["tiny_cnn"]
    as_float = explain(net, image[0, 0].numpy(), method="saliency", target=1)
    as_uint8 = explain(net, (image[0, 0].numpy() * 255).round().astype(np.uint8), method="saliency", target=1)
    np.testing.assert_allclose(as_float.image, as_uint8.image, atol=1 / 255)
    assert as_float.heatmap.shape == as_uint8.heatmap.shape == (SIZE, SIZE)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "lime"}, "Unknown attribution method 'lime'"),
        ({"method": "grad-cam"}, "Unknown attribution method"),
        ({"method": "saliency", "n_steps": 3}, r"Unknown option\(s\) \['n_steps'\]"),
        ({"method": "integrated_gradients", "baseline": "white"}, "baseline 'white'"),
        ({"method": "integrated_gradients", "n_steps": 0}, "n_steps must be a positive int"),
        ({"method": "occlusion", "window_size": 99}, "window_size 99 is larger"),
        ({"method": "occlusion", "window": 4}, r"Unknown option\(s\) \['window'\]"),
        ({"method": "saliency", "target": 2}, "target 2 is out of range"),
        ({"method": "saliency", "target": "Stroke"}, "Unknown target 'Stroke'"),
        ({"method": "saliency", "target": 0.5}, "target must be None"),
        ({"method": "saliency", "precision": "fp16"}, r"precision must be one of \['auto', 'fp32', 'bf16'\], got 'fp16'"),
    ],
)
def test_bad_arguments(nets, image, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        explain(nets["tiny_cnn"], image, **kwargs)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.rand(1, 1, 48, 48), r"does not match the model's input size 32x32"),
        (torch.rand(2, 1, SIZE, SIZE), r"one image, one channel"),
        (torch.rand(1, 3, SIZE, SIZE), r"one image, one channel"),
        (torch.rand(3, SIZE, SIZE), r"one grey channel"),
        (torch.rand(1, 1, 1, SIZE, SIZE), r"expected \(S, S\)"),
        (torch.rand(SIZE), r"expected \(S, S\)"),
        (torch.rand(SIZE, SIZE + 2), "not square"),
        (torch.rand(SIZE, SIZE) * 255, r"\[0, 1\]"),
        (torch.full((SIZE, SIZE), float("nan")), "NaN"),
        (torch.rand(SIZE, SIZE).index_put_((torch.tensor([3]), torch.tensor([4])), torch.tensor(float("nan"))),
         "NaN"),  # one NaN among valid pixels
        (torch.rand(SIZE, SIZE).index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("inf"))),
         "infinite"),
        (torch.rand(SIZE, SIZE).index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("-inf"))),
         "infinite"),
        ("scan.png", "Predictor"),
        (np.zeros((SIZE, SIZE), dtype=np.complex64), "dtype"),
    ],
)
def test_bad_inputs(nets, bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        explain(nets["resnet18"], bad, method="grad_cam")


def test_gradcam_needs_a_model_name(image) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match="model_name"):
        explain(net, image, method="grad_cam")
    # gradient methods work on any module with the project's input/output convention
    assert explain(net, image, method="saliency").heatmap.shape == (SIZE, SIZE)


def test_classical_models_are_rejected(image) -> None:
    with pytest.raises(ValueError, match="deep model"):
        explain(models.create_model("logreg", num_classes=2, image_size=SIZE), image, method="saliency")
    assert applicable_methods("logreg") == []


def test_predictor_raw_image(tmp_path, nets) -> None:
    folder = models.save_checkpoint(nets["simple_cnn"], tmp_path / "ck", card={"classes": ["Normal", "Stroke"]})
    predictor = models.load_predictor(folder, device="cpu")
    raw = np.zeros((48, 48), dtype=np.uint8)
    raw[10:30, 14:40] = 200
    path = tmp_path / "scan.png"
    Image.fromarray(raw).save(path)
    att = explain(predictor, path, method="grad_cam", target="Stroke")
    assert att.heatmap.shape == (SIZE, SIZE), "heat map is on the preprocessed S x S image"
    np.testing.assert_allclose(att.image, predictor.preprocess(path)[0, 0].numpy())
    assert att.target == 1 and att.target_name == "Stroke" and att.model == "simple_cnn"
    probs = predictor.predict(path)["probabilities"]
    assert att.probability == pytest.approx(probs["Stroke"], abs=1e-5)
    # None -> the predictor's own decision (its threshold)
    assert explain(predictor, path, method="saliency").target_name == predictor.predict(path)["label"]
    # an already preprocessed tensor is taken as is
    same = explain(predictor, predictor.preprocess(path), method="grad_cam", target="Stroke")
    np.testing.assert_allclose(same.heatmap, att.heatmap, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="does not match"):
        explain(predictor, torch.rand(1, 1, 48, 48), method="grad_cam")
    with pytest.raises(models.InvalidInputError):
        explain(predictor, b"not an image", method="grad_cam")


def test_predictor_model_is_used_as_loaded_unless_someone_switched_it_to_training(tmp_path, nets, image) -> None:
    folder = models.save_checkpoint(nets["simple_cnn"], tmp_path / "ck", card={"classes": ["Normal", "Stroke"]})
    predictor = models.load_predictor(folder, device="cpu")
    net = predictor.model
    assert not net.training and not any(p.requires_grad for p in net.parameters())  # as the predictor loads it
    reference = explain(predictor, image, method="saliency", precision="fp32")
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    net.train()  # dropout and batch statistics would change the map: explain must switch to eval and back
    try:
        again = explain(predictor, image, method="saliency", precision="fp32")
        assert net.training
    finally:
        net.eval()
    np.testing.assert_allclose(again.heatmap, reference.heatmap, rtol=1e-5, atol=1e-7)


def test_randomised_weights_change_the_maps(image) -> None:
    from models.attribution_eval import rank_similarity

    maps = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = models.create_model("resnet18", num_classes=2, image_size=SIZE)
        maps.append(explain(net, image, method="grad_cam", target=1).heatmap)
    assert rank_similarity(maps[0], maps[0]) == pytest.approx(1.0)
    assert rank_similarity(maps[0], maps[1]) < 0.9


# ------------------------------------------------------------------------------------- overlay
def test_overlay_absolute_and_signed() -> None:
    img = np.full((16, 16), 0.5, dtype=np.float32)
    heat = np.zeros((16, 16), dtype=np.float32)
    heat[:, :8] = 1.0
    heat[:, 8:] = -1.0
    heat[0, 0] = 0.0
    absolute = overlay(img, heat, alpha=0.5)
    assert absolute.shape == (16, 16, 3) and absolute.dtype == np.uint8
    np.testing.assert_array_equal(absolute[0, 0], [128, 128, 128])  # zero attribution shows the scan
    signed = overlay(img, heat, alpha=0.8, signed=True)
    left, right = signed[5, 2].astype(int), signed[5, 12].astype(int)
    assert left[0] > left[2], "positive evidence is red in the diverging map"
    assert right[2] > right[0], "negative evidence is blue"
    np.testing.assert_array_equal(signed[0, 0], [128, 128, 128])  # centred at 0
    # absolute: the sign is ignored, both halves get the same colour
    np.testing.assert_array_equal(absolute[5, 2], absolute[5, 12])


def test_overlay_percentile_clipping() -> None:
    img = np.zeros((10, 10), dtype=np.uint8)
    heat = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (10, 1))
    heat[0, 0] = 1000.0  # one outlier must not wash out the rest
    clipped = overlay(img, heat, alpha=1.0, clip_percentile=95, colormap="gray")
    unclipped = overlay(img, heat, alpha=1.0, clip_percentile=100, colormap="gray")
    assert clipped[5, 8].mean() > 150
    assert unclipped[5, 8].mean() < 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"heatmap": np.zeros((8, 9))}, "differ"),
        ({"heatmap": np.zeros((8, 8, 1))}, "2-D"),
        ({"alpha": 1.5}, "alpha"),
        ({"clip_percentile": 0}, "clip_percentile"),
        ({"colormap": "no-such-map"}, "Unknown colormap 'no-such-map'"),
    ],
)
def test_overlay_errors(kwargs, match) -> None:
    args = {"heatmap": np.zeros((8, 8)), **kwargs}
    heat = args.pop("heatmap")
    with pytest.raises(ValueError, match=match):
        overlay(np.zeros((8, 8)), heat, **args)


def test_overlay_of_an_attribution(nets, image) -> None:
    att = explain(nets["resnet18"], image, method="integrated_gradients", n_steps=8)
    rgb = overlay(att.image, att.heatmap, signed=att.signed)
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8


# ---------------------------------------------------------------------------- pictures for people
@pytest.mark.parametrize(("shape", "factor"), [((64, 64), 5), ((224, 224), 2), ((32, 48), 10), ((400, 400), 1)])
def test_enlarge_by_an_integer_factor(shape, factor) -> None:
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    big, k = enlarge(img)
    assert k == factor and big.shape == (shape[0] * k, shape[1] * k) and min(big.shape) >= min(DISPLAY_MIN_SIZE, 400)
    # nearest neighbour: every model pixel is a k x k block, nothing invented
    np.testing.assert_array_equal(big[::k, ::k], img)
    np.testing.assert_array_equal(big[k - 1::k, k - 1::k], img)
    rgb, k = enlarge(np.repeat(img[..., None], 3, axis=2), upsample="bicubic", min_size=100)
    assert rgb.shape[:2] == (shape[0] * k, shape[1] * k) and rgb.shape[2] == 3


@pytest.mark.parametrize(("kwargs", "match"), [({"upsample": "lanczos"}, "upsample"), ({"min_size": 0}, "min_size"),
                                               ({"image": np.zeros((8, 8))}, "uint8")])
def test_enlarge_errors(kwargs, match) -> None:
    image = kwargs.pop("image", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=match):
        enlarge(image, **kwargs)


def test_is_flat() -> None:
    assert is_flat(np.zeros((8, 8))) and is_flat(np.full((8, 8), 0.3)) and is_flat(np.full((8, 8), np.nan))
    tiny = np.zeros((8, 8))
    tiny[3, 3] = 1e-12
    assert not is_flat(tiny)


def _strongly_coloured(rgb: np.ndarray, colour: np.ndarray, tol: int = 6) -> bool:
    return bool(np.any(np.all(np.abs(rgb.astype(int) - colour) <= tol, axis=-1)))


@pytest.mark.parametrize("signed", [False, True])
def test_render_overlay_is_large_and_has_a_colour_bar(signed) -> None:
    import matplotlib

    img = np.full((64, 64), 0.5, dtype=np.float32)
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[10:30, 10:30] = 1.0
    if signed:
        heat[40:60, 40:60] = -1.0
    rgb = render_overlay(img, heat, signed=signed, target_name="Stroke", method_label="Grad-CAM")
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and min(rgb.shape[:2]) > DISPLAY_MIN_SIZE
    # the overlay itself (alpha <= 0.45) never shows a pure colour-map end: only the colour bar does
    cmap = matplotlib.colormaps["RdBu_r" if signed else "jet"]
    for end in (0.0, 1.0):
        assert _strongly_coloured(rgb, np.rint(np.asarray(cmap(end)[:3]) * 255).astype(int)), end
    # the enlarged overlay is in the picture, block for block
    big, k = enlarge(overlay(img, heat, signed=signed))
    assert k == 5 and _contains(rgb, big)


def _contains(canvas: np.ndarray, block: np.ndarray) -> bool:
    h, w = block.shape[:2]
    return any(np.array_equal(canvas[r:r + h, c:c + w], block)
               for r in range(canvas.shape[0] - h + 1) for c in range(min(64, canvas.shape[1] - w + 1)))


def test_render_overlay_of_a_flat_map_says_so() -> None:
    img = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    rgb = render_overlay(img, np.zeros((64, 64)), target_name="Stroke", method_label="Grad-CAM")
    assert min(rgb.shape[:2]) > DISPLAY_MIN_SIZE
    spread = rgb.astype(int).max(axis=-1) - rgb.astype(int).min(axis=-1)
    assert spread.max() <= 1, "a flat map gets no colour layer (and no colour bar)"
    assert rgb.std() > 10, "never an empty picture: the scan and the message are drawn"
    assert flat_map_message("Grad-CAM", "Stroke") == "Grad-CAM found no evidence for Stroke in this image (a flat map)."


def test_render_input_is_large() -> None:
    img = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    rgb = render_input(img, note="after windowing")
    assert rgb.dtype == np.uint8 and min(rgb.shape[:2]) > DISPLAY_MIN_SIZE
    big, _ = enlarge(img)
    assert _contains(rgb, np.repeat(big[..., None], 3, axis=2))
    with pytest.raises(ValueError, match="2-D"):
        render_input(np.zeros((4, 4, 3)))


def test_precision_auto_picks_bf16_only_where_it_was_measured_faster(monkeypatch) -> None:
    from models import attribution

    cpu = torch.device("cpu")
    monkeypatch.setattr(attribution, "cpu_has_native_bf16", lambda: True)
    assert attribution._use_bf16("auto", "integrated_gradients", "resnet18", cpu)
    assert attribution._use_bf16("auto", "occlusion", "simple_cnn", cpu)
    assert attribution._use_bf16("auto", "gradient_shap", "tiny_cnn", cpu)
    assert not attribution._use_bf16("auto", "grad_cam", "resnet18", cpu)  # one pass: nothing to gain
    assert attribution._use_bf16("auto", "integrated_gradients", "vit_tiny", cpu)
    assert not attribution._use_bf16("auto", "integrated_gradients", "efficientnet_b0", cpu)
    assert not attribution._use_bf16("auto", "integrated_gradients", None, cpu)  # unknown architecture
    assert not attribution._use_bf16("auto", "integrated_gradients", "resnet18", torch.device("cuda"))
    assert attribution._use_bf16("bf16", "grad_cam", "vit_tiny", cpu)
    assert not attribution._use_bf16("fp32", "integrated_gradients", "resnet18", cpu)
    monkeypatch.setattr(attribution, "cpu_has_native_bf16", lambda: False)
    assert not attribution._use_bf16("auto", "integrated_gradients", "resnet18", cpu)


def test_bf16_maps_follow_fp32_and_the_target_comes_from_an_fp32_pass(nets, image) -> None:
    net = nets["simple_cnn"]
    fp32 = explain(net, image, method="integrated_gradients", precision="fp32", n_steps=16)
    bf16 = explain(net, image, method="integrated_gradients", precision="bf16", n_steps=16)
    assert (fp32.params["precision"], bf16.params["precision"]) == ("fp32", "bf16")
    assert bf16.target == fp32.target and bf16.probability == fp32.probability
    assert np.corrcoef(fp32.heatmap.ravel(), bf16.heatmap.ravel())[0, 1] > 0.9
    assert not np.array_equal(fp32.heatmap, bf16.heatmap)  # it really ran in bf16
    # occlusion's first pass is on the image; under bf16 one extra fp32 pass resolves the target instead
    plain = _count_forwards(net, lambda: explain(net, image, method="occlusion", precision="fp32"))
    ours = _count_forwards(net, lambda: explain(net, image, method="occlusion", precision="bf16"))
    assert ours == plain + 1


def test_coarse_grad_cam_is_offered_last() -> None:
    from models.attribution import applicable_methods, gradcam_side

    assert gradcam_side("resnet18", 64) == 2 and gradcam_side("resnet18", 224) == 7
    assert gradcam_side("efficientnet_lite0+svm_rbf", 64) == 2 and gradcam_side("vit_tiny", 64) == 4
    assert applicable_methods("resnet18", image_size=64)[0] == "integrated_gradients"
    assert applicable_methods("resnet18", image_size=64)[-1] == "grad_cam"
    assert applicable_methods("resnet18", image_size=224)[0] == "grad_cam"
    assert applicable_methods("simple_cnn", image_size=64)[0] == "grad_cam"
    assert applicable_methods("resnet18") == applicable_methods("resnet18", image_size=224)
