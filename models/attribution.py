"""Attributions: why did the model say "stroke"? Heat maps through Captum, plus ViT attention rollout.

One entry point, :func:`explain`, works on any registered deep model (a bare ``nn.Module`` from
:func:`models.create_model` or a :class:`models.Predictor`) and returns an :class:`Attribution`
whose ``heatmap`` has the size of the image the model saw. :func:`overlay` turns it into an RGB
picture for the dashboard and the Gradio demo.

Methods (all gradient / perturbation methods are Captum's; only attention rollout is written here
because Captum has none):

==========================  =======  ====================================================================
method                      signed   what it is
==========================  =======  ====================================================================
``integrated_gradients``    yes      ``captum.attr.IntegratedGradients``; ``n_steps`` (32),
                                     ``internal_batch_size`` (16: never more than 16 interpolated images
                                     in memory), ``baseline`` ``"black"`` or ``"blurred"`` (Gaussian blur of
                                     the input, ``blur_sigma`` = S/16 by default). Completeness error is
                                     returned as ``Attribution.convergence_delta``.
``saliency``                no       ``captum.attr.Saliency`` (absolute input gradient; ``abs=False`` for
                                     the signed gradient).
``gradient_shap``           yes      ``captum.attr.GradientShap`` with three baselines (black, blurred,
                                     uniform noise), ``n_samples`` (16) evaluated ``internal_batch_size``
                                     (16) at a time, ``stdevs`` (0.0), ``seed`` (0).
``occlusion``               yes      ``captum.attr.Occlusion`` with a black patch; square window S/8 and
                                     stride S/16 by default (``window_size``, ``stride``),
                                     ``perturbations_per_eval`` (16).
``grad_cam``                no       ``captum.attr.LayerGradCam`` on the layer the registry names
                                     (:meth:`models.ModelInfo.gradcam_layer`), ReLU, upsampled with
                                     ``LayerAttribution.interpolate`` (bilinear) to S x S. For ViTs the
                                     token output of that layer is reshaped to the patch grid (prefix /
                                     class tokens dropped) by a small module Captum hooks.
``attention_rollout``       no       ViT only. Abnar & Zuidema (2020): per block the head-averaged
                                     attention plus identity, row-normalised, multiplied through the blocks;
                                     the class token's row over the patch tokens, upsampled to S x S.
                                     ``head_fusion`` ``"mean"|"max"|"min"``, ``discard_ratio`` (0.0).
                                     Class-agnostic: ``target`` is recorded but does not change the map.
==========================  =======  ====================================================================

Sizes: the heat map always has the size of the **model input** S x S. Given a tensor or array that
already is the model input (``(S, S)``, ``(1, S, S)`` or ``(1, 1, S, S)`` float in [0, 1]; uint8 is
divided by 255), that is the size of the image given. Given a raw image (path, bytes, PIL, DICOM, or
an array of any size) together with a predictor, the image is first preprocessed exactly like for a
prediction, and the heat map is S x S of the preprocessed image, which is returned as
``Attribution.image`` so that :func:`overlay` draws on the right picture.

Targets: ``None`` explains the predicted class; an int is a class index; a string is a class name,
or ``"positive"`` / ``"negative"`` for a binary model. Binary models output one logit ``z``; the
positive class is explained through ``z`` and the negative class through ``-z`` (the logit of the
negative class), so both directions are meaningful. The target and its probability come from the
model's output in the forward pass the method itself makes (no separate inference pass for
Grad-CAM, saliency, occlusion and attention rollout, whose first pass is on the image itself;
integrated gradients and gradient SHAP start on interpolated images and need one more pass).

Precision: ``explain(..., precision="auto")`` runs integrated gradients, gradient SHAP and occlusion
under bf16 autocast on CPUs with native bf16 (AMX or AVX512-BF16) for ResNets, CNNs and ViTs (measured
1.2-2.4x faster, maps correlating >= 0.98 with fp32), fp32 everywhere else; ``"fp32"`` and ``"bf16"`` force one.

Resources: the model's own device is used (GPU when the model lives there); the model is put in
``eval()`` and its parameters stop requiring gradients for the duration of the call (only input or
layer gradients are needed, so no weight gradients are computed); training mode and
``requires_grad`` flags are restored afterwards. A :class:`models.Predictor`'s model already is in
eval mode with frozen parameters (the predictor sets both when it loads), so it is used as it is
unless its root module is in training mode. No copy of the model is made. Calls are serialised by a
lock because of that temporary state (safe under Gradio's threads).

Example::

    from models import load_predictor
    from models.attribution import explain, overlay

    predictor = load_predictor("leaderboards/demo/models/resnet18")
    att = explain(predictor, "scan.png", method="grad_cam")
    rgb = overlay(att.image, att.heatmap)            # (S, S, 3) uint8
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from models._common import cpu_has_native_bf16

__all__ = ["DISPLAY_MIN_SIZE", "METHODS", "Attribution", "applicable_methods", "enlarge", "explain",
           "flat_map_message", "is_flat", "overlay", "render_input", "render_overlay"]

logger = logging.getLogger(__name__)

#: Interpolated images per forward/backward pass of integrated gradients and gradient SHAP: with 8,
#: vit_tiny's IG-32 at 224 px was slower than Captum's all-steps-at-once call; with 16 it is faster, at
#: a quarter of that call's peak memory (attributions benchmark, benchmarks/README.md).
INTERNAL_BATCH_SIZE = 16

#: Every method :func:`explain` knows, in the order the UI lists them.
METHODS: tuple[str, ...] = (
    "grad_cam",
    "integrated_gradients",
    "saliency",
    "gradient_shap",
    "occlusion",
    "attention_rollout",
)

#: Methods whose maps are signed (positive = evidence for the target, negative = against it).
_SIGNED = {"integrated_gradients": True, "gradient_shap": True, "occlusion": True,
           "saliency": False, "grad_cam": False, "attention_rollout": False}

#: Options each method accepts (anything else is a ValueError naming the option).
_OPTIONS: dict[str, set[str]] = {
    "integrated_gradients": {"n_steps", "internal_batch_size", "baseline", "blur_sigma", "ig_method"},
    "saliency": {"abs"},
    "gradient_shap": {"n_samples", "stdevs", "seed", "blur_sigma", "internal_batch_size"},
    "occlusion": {"window_size", "stride", "perturbations_per_eval"},
    "grad_cam": set(),
    "attention_rollout": {"head_fusion", "discard_ratio"},
}

_MIN_SIZE = 8
_LOCK = threading.RLock()


@dataclass
class Attribution:
    """One explanation of one image.

    Attributes:
        heatmap: float32 (S, S) attribution map on the model input. Signed methods keep the sign
            (positive = evidence for ``target``); see ``signed``.
        image: float32 (S, S) in [0, 1]: the model input the map belongs to (draw overlays on this).
        target: Class index that was explained.
        target_name: Class name of ``target``.
        method: The method name (one of :data:`METHODS`).
        seconds: Wall time of the call (input preparation, attribution), in seconds.
        signed: Whether the map is signed (integrated gradients, gradient SHAP, occlusion).
        probability: The model's probability for ``target`` on this image.
        model: Registry name of the model when known.
        params: The resolved method options (for reproducibility and display).
        convergence_delta: Integrated gradients only: ``sum(attributions) - (f(x) - f(baseline))``
            in logit units (Captum's completeness error); ``None`` for other methods.
    """

    heatmap: np.ndarray
    image: np.ndarray
    target: int
    target_name: str
    method: str
    seconds: float
    signed: bool
    probability: float
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    convergence_delta: float | None = None


# ---------------------------------------------------------------------------------------- helpers
class _TargetForward(nn.Module):
    """The model's score for the explained class, one column; the target is resolved on the first call.

    Class scores are the model's logits, with binary one-logit models giving ``[-z, z]`` (negative,
    positive). The target (``None`` = predicted class) needs the model's output on the image ``x``, so
    it is resolved from the first forward call: when that call is on ``x`` itself (Grad-CAM, saliency,
    occlusion and attention rollout run the model on the unmodified input first), its output is
    reused and no extra inference pass is made (unless ``fp32_target``: the method runs under bf16
    autocast, and the target and its probability come from one fp32 pass, as a prediction does);
    otherwise (integrated gradients and gradient SHAP
    start on interpolated images) ``x`` is run once more without gradients. From then on every call
    returns ``scores[:, index]`` as a ``(B, 1)`` column, so Captum is called with ``target=0``.

    Attributes:
        index: Resolved class index (``None`` until the first call).
        names: Class names (given ones, or ``negative``/``positive``, or ``"0"``, ``"1"``, ...).
        probability: The model's probability for ``index`` on ``x``.
        extra_passes: Inference passes run only to resolve the target (0 or 1).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, target: int | str | None, classes: list[str] | None,
                 threshold: float | None, *, fp32_target: bool = False) -> None:
        super().__init__()
        self.model = model
        self._fp32_target = fp32_target
        self._x = x
        self._target = target
        self._classes = classes
        self._threshold = threshold
        self.index: int | None = None
        self.names: list[str] = []
        self.probability = float("nan")
        self.extra_passes = 0

    @staticmethod
    def _scores(z: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if z.ndim == 1:
            z = z[:, None]
        binary = z.shape[1] == 1
        return (torch.cat([-z, z], dim=1) if binary else z), binary

    def _resolve(self, scores: torch.Tensor, binary: bool) -> None:
        scores = scores.detach()
        index, names = _resolve_target(self._target, scores, binary, self._classes, self._threshold)
        probs = torch.sigmoid(scores[0]) if binary else torch.softmax(scores[0], dim=0)
        self.probability = float(probs[index])
        self.names = names
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores, binary = self._scores(self.model(x))
        if self.index is None:
            if not self._fp32_target and x.shape == self._x.shape and torch.equal(x.detach(), self._x):
                self._resolve(scores[:1], binary)
            else:
                with torch.no_grad(), torch.autocast(self._x.device.type, enabled=False):
                    own, own_binary = self._scores(self.model(self._x))
                self.extra_passes += 1
                self._resolve(own, own_binary)
        return scores[:, self.index : self.index + 1]


class _TokenGrid(nn.Module):
    """(B, P + h*w, D) tokens -> (B, D, h, w) patch grid, dropping the P prefix (class/register) tokens.

    The reshape is the registry's :meth:`models.ModelInfo.reshape_tokens`. Captum's ``LayerGradCam``
    hooks this module, so its output is an ordinary channels-first activation map for which
    Grad-CAM's channel weighting is defined.
    """

    def __init__(self, info: Any, image_size: int) -> None:
        super().__init__()
        self.info = info
        self.image_size = image_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.info.reshape_tokens(tokens, self.image_size)


@dataclass
class _Resolved:
    model: nn.Module
    name: str | None
    x: torch.Tensor  # (1, 1, S, S) on the model's device
    classes: list[str] | None
    threshold: float | None


def _is_predictor(obj: Any) -> bool:
    return hasattr(obj, "preprocess") and hasattr(obj, "model") and hasattr(obj, "classes")


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _backbone(model: nn.Module) -> nn.Module:
    return getattr(model, "backbone", model)


def _is_vit(model: nn.Module) -> bool:
    bb = _backbone(model)
    return hasattr(bb, "blocks") and hasattr(bb, "patch_embed") and hasattr(bb, "num_prefix_tokens")


def _expected_size(model: nn.Module) -> int | None:
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return size
    if _is_vit(model):
        bb = _backbone(model)
        if not getattr(bb, "dynamic_img_size", False):
            img = getattr(bb.patch_embed, "img_size", None)
            if img is not None:
                return int(img[0]) if isinstance(img, (tuple, list)) else int(img)
    return None


def _to_input(image: Any, expected: int | None, channels: frozenset[int] = frozenset({1})) -> torch.Tensor:
    """Validate a model-input image and return a float32 (1, C, S, S) CPU tensor in [0, 1].

    ``channels``: the channel counts the model takes (1, and 3 for a model of a window set).
    """
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
                  or arr.dtype == bool):
            raise ValueError(f"image array has unsupported dtype {arr.dtype}; expected float in [0, 1] or uint8.")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    elif isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        elif not t.is_floating_point():
            raise ValueError(f"image tensor has unsupported dtype {t.dtype}; expected float in [0, 1] or uint8.")
        # clone outside inference mode: inference tensors cannot take part in autograd
        t = t.to("cpu", torch.float32).clone()
    else:
        raise ValueError(
            f"image must be a numpy array or torch tensor when explaining a bare model, got "
            f"{type(image).__name__}; pass a Predictor to explain files, bytes, PIL or DICOM images."
        )
    shape = tuple(t.shape)
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        if shape[0] not in channels:
            raise ValueError(f"image of shape {shape}: a 3-D input must be (1, S, S) (one grey channel)"
                             + (" or (3, S, S) (a window set)." if 3 in channels else "."))
        t = t[None]
    elif t.ndim == 4:
        if shape[0] != 1 or shape[1] not in channels:
            raise ValueError(f"image of shape {shape}: a 4-D input must be (1, 1, S, S) (one image, one channel)"
                             + (" or (1, 3, S, S) (a window set)." if 3 in channels else "."))
    else:
        raise ValueError(f"image of shape {shape}: expected (S, S), (1, S, S) or (1, 1, S, S).")
    h, w = t.shape[-2:]
    if h != w:
        raise ValueError(f"image of shape {shape} is not square; the model takes S x S inputs.")
    if h < _MIN_SIZE:
        raise ValueError(f"image of shape {shape} is smaller than {_MIN_SIZE} px.")
    if expected is not None and h != expected:
        raise ValueError(f"image of shape {shape} does not match the model's input size {expected}x{expected}.")
    lo_t, hi_t = torch.aminmax(t)  # one pass; NaN propagates into both, infinities show in lo or hi
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("image holds NaN or infinite values.")
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"image values must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}).")
    return t.clamp_(0.0, 1.0)


def _resolve(model_or_predictor: Any, image: Any, *, model_name: str | None, classes: Sequence[str] | None,
             window: str | tuple[float, float] | None) -> _Resolved:
    threshold = None
    if _is_predictor(model_or_predictor):
        pred = model_or_predictor
        card = getattr(pred, "card", None) or {}
        name = model_name or card.get("model")
        model = pred.model
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"explain needs a deep model; {name or type(model).__name__!r} is a classical model "
                f"(no gradients or layers to attribute)."
            )
        classes = list(classes) if classes is not None else list(pred.classes)
        threshold = getattr(pred, "threshold", None)
        size = getattr(pred, "image_size", None)
        channels = frozenset({1, int(getattr(pred, "in_chans", 1))})
        if isinstance(image, torch.Tensor):
            x = _to_input(image, size, channels)
        else:
            x = pred.preprocess(image, window=window)
            x = _to_input(x, size, channels)
    elif isinstance(model_or_predictor, nn.Module):
        model = model_or_predictor
        name = model_name or getattr(model, "model_name", None) or getattr(model, "name", None)
        name = name if isinstance(name, str) else None
        classes = list(classes) if classes is not None else None
        x = _to_input(image, _expected_size(model), frozenset({1, int(getattr(model, "in_chans", 1) or 1)}))
    else:
        raise ValueError(
            f"explain needs a deep model (torch.nn.Module) or a Predictor, got {type(model_or_predictor).__name__}."
        )
    return _Resolved(model=model, name=name, x=x.to(_model_device(model)), classes=classes,
                     threshold=None if threshold is None else float(threshold))


@contextlib.contextmanager
def _frozen_eval(model: nn.Module) -> Iterator[None]:
    """eval() and no parameter gradients for the duration; both restored afterwards."""
    # Only what needs changing is changed: Module.train() walks every submodule (milliseconds for a
    # ViT), and a loaded Predictor's model is already in eval mode with frozen parameters.
    was_training = model.training
    switch_mode = any(m.training for m in model.modules())
    unfrozen = [p for p in model.parameters() if p.requires_grad]
    if switch_mode:
        model.eval()
    for p in unfrozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in unfrozen:
            p.requires_grad_(True)
        if switch_mode:
            model.train(was_training)


def _resolve_target(target: Any, logits: torch.Tensor, binary: bool, classes: list[str] | None,
                    threshold: float | None) -> tuple[int, list[str]]:
    n = 2 if binary else logits.shape[1]
    names = classes if classes is not None and len(classes) == n else (
        ["negative", "positive"] if binary else [str(i) for i in range(n)])
    if target is None:
        if binary:
            p = float(torch.sigmoid(logits[0, 1]))
            return int(p >= (0.5 if threshold is None else threshold)), names
        return int(logits[0].argmax()), names
    if isinstance(target, (bool, np.bool_)):
        raise ValueError(f"target must be a class index or name, got {target!r}.")
    if isinstance(target, (int, np.integer)):
        if not 0 <= int(target) < n:
            raise ValueError(f"target {int(target)} is out of range for a model with {n} classes {names}.")
        return int(target), names
    if isinstance(target, str):
        if target in names:
            return names.index(target), names
        if binary and target in ("positive", "negative"):
            return int(target == "positive"), names
        allowed = names + (["positive", "negative"] if binary else [])
        raise ValueError(f"Unknown target {target!r}; expected one of {allowed} or a class index.")
    raise ValueError(f"target must be None, a class index or a class name, got {type(target).__name__}.")


def _blur(x: torch.Tensor, sigma: float | None) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    size = x.shape[-1]
    sigma = float(size / 16.0 if sigma is None else sigma)
    if not sigma > 0:
        raise ValueError(f"blur_sigma must be > 0, got {sigma}.")
    kernel = 2 * int(np.ceil(3 * sigma)) + 1
    kernel = min(kernel, 2 * (size - 1) - 1 if size > 2 else 1)  # reflect padding must fit
    kernel = max(kernel if kernel % 2 else kernel - 1, 1)
    return gaussian_blur(x, [kernel, kernel], [sigma, sigma])


#: Methods that run the model many times per image: the ones bf16 autocast can speed up.
_MULTI_PASS = ("integrated_gradients", "gradient_shap", "occlusion")
_PRECISIONS = ("auto", "fp32", "bf16")
#: Families whose multi-pass attributions measured faster under bf16 autocast on a CPU with AMX, IG
#: with 32 steps at 224 px on 2 cores: resnet18 2.04 -> 0.84 s, vit_tiny 1.72 -> 1.40 s, maps
#: correlating 0.996 and 0.99999 with fp32 (attributions benchmark, benchmarks/results.json; simple_cnn
#: 0.43 -> 0.22 s at 128 px in the exploration run). EfficientNet-B0 stays in fp32: its depthwise
#: convolutions got slower (1.88 -> 2.52 s in the exploration run).
_BF16_FAMILIES = ("resnet", "cnn", "vit")


def _use_bf16(precision: str, method: str, model_name: str | None, device: torch.device) -> bool:
    """Resolve ``precision`` ("auto" | "fp32" | "bf16") for one call; True = run under bf16 autocast."""
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {list(_PRECISIONS)}, got {precision!r}.")
    if precision != "auto":
        return precision == "bf16"
    if method not in _MULTI_PASS or device.type != "cpu" or not cpu_has_native_bf16() or model_name is None:
        return False
    from models import get_model_info

    try:
        family = get_model_info(model_name).family
    except ValueError:
        return False
    return family in _BF16_FAMILIES


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def _model_info(name: str | None, method: str) -> Any:
    from models import get_model_info

    if name is None:
        raise ValueError(
            f"method {method!r} needs the model's registry name: pass model_name=... "
            f"(models from models.create_model and predictors know it)."
        )
    return get_model_info(name)


def _vit_grid(model: nn.Module, size: int) -> tuple[int, tuple[int, int]]:
    bb = _backbone(model)
    prefix = int(bb.num_prefix_tokens)
    patch = bb.patch_embed.patch_size
    ph, pw = (patch if isinstance(patch, (tuple, list)) else (patch, patch))
    return prefix, (size // int(ph), size // int(pw))


# ---------------------------------------------------------------------------------------- methods
def _integrated_gradients(fwd: nn.Module, x: torch.Tensor, target: int, opts: dict[str, Any]):
    from captum.attr import IntegratedGradients

    n_steps = _positive_int("n_steps", opts.get("n_steps", 32))
    batch = _positive_int("internal_batch_size", opts.get("internal_batch_size", INTERNAL_BATCH_SIZE))
    baseline = opts.get("baseline", "black")
    if baseline == "black":
        base = torch.zeros_like(x)
    elif baseline == "blurred":
        base = _blur(x, opts.get("blur_sigma"))
    else:
        raise ValueError(f"Unknown integrated_gradients baseline {baseline!r}; expected 'black' or 'blurred'.")
    ig_method = opts.get("ig_method", "gausslegendre")
    attr, delta = IntegratedGradients(fwd).attribute(
        x.requires_grad_(), baselines=base, target=target, n_steps=n_steps, method=ig_method,
        internal_batch_size=batch, return_convergence_delta=True)
    params = {"n_steps": n_steps, "internal_batch_size": batch, "baseline": baseline, "ig_method": ig_method}
    return attr, params, float(delta.reshape(-1)[0])


def _saliency(fwd: nn.Module, x: torch.Tensor, target: int, opts: dict[str, Any]):
    from captum.attr import Saliency

    absolute = bool(opts.get("abs", True))
    attr = Saliency(fwd).attribute(x.requires_grad_(), target=target, abs=absolute)
    return attr, {"abs": absolute}, None


def _gradient_shap(fwd: nn.Module, x: torch.Tensor, target: int, opts: dict[str, Any]):
    from captum.attr import GradientShap

    n_samples = _positive_int("n_samples", opts.get("n_samples", 16))
    batch = _positive_int("internal_batch_size", opts.get("internal_batch_size", INTERNAL_BATCH_SIZE))
    stdevs = float(opts.get("stdevs", 0.0))
    if stdevs < 0:
        raise ValueError(f"stdevs must be >= 0, got {stdevs}.")
    seed = int(opts.get("seed", 0))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.rand(x.shape, generator=gen).to(x.device)
    baselines = torch.cat([torch.zeros_like(x), _blur(x, opts.get("blur_sigma")), noise], dim=0)
    # Captum draws the baselines and path points from numpy's global RNG and the input noise from
    # torch's: seed both for reproducible maps, and leave the caller's RNG states as they were.
    devices = [x.device] if x.device.type == "cuda" else []
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            # Captum evaluates all n_samples in one batch; chunks of internal_batch_size keep memory
            # bounded, and the sample-weighted mean of the chunks is the same expectation.
            explainer, x, attr, done = GradientShap(fwd), x.requires_grad_(), None, 0
            while done < n_samples:
                chunk = min(batch, n_samples - done)
                part = explainer.attribute(x, baselines=baselines, target=target, n_samples=chunk, stdevs=stdevs)
                attr = part * chunk if attr is None else attr + part * chunk
                done += chunk
            attr = attr / n_samples
    finally:
        np.random.set_state(np_state)
    return attr, {"n_samples": n_samples, "stdevs": stdevs, "seed": seed, "internal_batch_size": batch,
                  "baselines": ["black", "blurred", "noise"]}, None


def _occlusion(fwd: nn.Module, x: torch.Tensor, target: int, opts: dict[str, Any]):
    from captum.attr import Occlusion

    size = x.shape[-1]
    window = _positive_int("window_size", opts.get("window_size", max(1, round(size / 8))))
    stride = _positive_int("stride", opts.get("stride", max(1, round(size / 16))))
    per_eval = _positive_int("perturbations_per_eval", opts.get("perturbations_per_eval", 16))
    if window > size:
        raise ValueError(f"occlusion window_size {window} is larger than the image ({size} px).")
    with torch.inference_mode():
        attr = Occlusion(fwd).attribute(x, sliding_window_shapes=(1, window, window), strides=(1, stride, stride),
                                        baselines=0.0, target=target, perturbations_per_eval=per_eval)
    return attr, {"window_size": window, "stride": stride, "perturbations_per_eval": per_eval}, None


def _grad_cam(fwd: nn.Module, x: torch.Tensor, target: int, opts: dict[str, Any], *, model: nn.Module,
              name: str | None):
    from captum.attr import LayerAttribution, LayerGradCam

    size = x.shape[-1]
    info = _model_info(name, "grad_cam")
    layer = info.gradcam_layer(model)
    if layer is None:
        raise ValueError(f"method 'grad_cam' does not apply to model {name!r} (the registry names no layer).")
    handle = None
    if info.family == "vit":
        prefix = info.num_prefix_tokens
        to_grid = _TokenGrid(info, size)

        def _route_through_grid(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            # tokens -> grid (hooked by Captum) -> tokens again: the rest of the network now depends
            # on the grid tensor, so Captum's gradient w.r.t. it is the gradient w.r.t. the tokens.
            if not isinstance(output, torch.Tensor) or output.ndim != 3:
                return output
            patches = to_grid(output).flatten(2).transpose(1, 2)
            return torch.cat([output[:, :prefix], patches], dim=1)

        handle = layer.register_forward_hook(_route_through_grid)
        cam_layer: nn.Module = to_grid
    else:
        cam_layer = layer
    try:
        cam = LayerGradCam(fwd, cam_layer).attribute(x, target=target, relu_attributions=True)
    finally:
        if handle is not None:
            handle.remove()
    if cam.ndim != 4:
        raise ValueError(
            f"method 'grad_cam' does not apply to model {name!r}: layer output has shape {tuple(cam.shape)}, "
            f"expected a (B, C, h, w) map."
        )
    grid_shape = tuple(cam.shape[-2:])
    cam = LayerAttribution.interpolate(cam, (size, size), interpolate_mode="bilinear")
    return cam, {"layer": type(layer).__name__, "grid": list(grid_shape)}, None


def _attention_rollout(fwd: nn.Module, x: torch.Tensor, target: int, opts: dict[str, Any], *, model: nn.Module,
                       name: str | None):
    from captum.attr import LayerAttribution

    if not _is_vit(model):
        raise ValueError(f"method 'attention_rollout' does not apply to model {name or type(model).__name__!r} "
                         f"(vision transformers only).")
    fusion = opts.get("head_fusion", "mean")
    if fusion not in ("mean", "max", "min"):
        raise ValueError(f"Unknown head_fusion {fusion!r}; expected 'mean', 'max' or 'min'.")
    discard = float(opts.get("discard_ratio", 0.0))
    if not 0.0 <= discard < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard}.")
    bb = _backbone(model)
    attns = [getattr(blk, "attn", None) for blk in bb.blocks]
    if not attns or any(a is None or not hasattr(a, "fused_attn") or not hasattr(a, "attn_drop") for a in attns):
        raise ValueError(f"method 'attention_rollout' does not apply to model {name!r}: its blocks are not timm "
                         f"Attention modules exposing attention weights.")
    maps: list[torch.Tensor] = []
    fused = [a.fused_attn for a in attns]
    # timm computes attention with F.scaled_dot_product_attention unless fused_attn is False; only the
    # unfused path materialises the softmax weights, which pass through attn_drop (identity in eval).
    hooks = [a.attn_drop.register_forward_hook(lambda m, i, o: maps.append(o.detach())) for a in attns]
    try:
        for a in attns:
            a.fused_attn = False
        with torch.inference_mode():
            fwd(x)
    finally:
        for a, f in zip(attns, fused):
            a.fused_attn = f
        for h in hooks:
            h.remove()
    if len(maps) != len(attns):
        raise ValueError(f"method 'attention_rollout': captured {len(maps)} attention maps for {len(attns)} blocks.")
    prefix, grid = _vit_grid(model, x.shape[-1])
    n_tokens = maps[0].shape[-1]
    eye = torch.eye(n_tokens, device=x.device)
    rollout = eye.clone()
    for att in maps:  # (1, heads, N, N)
        fused_att = {"mean": att.mean(1), "max": att.amax(1), "min": att.amin(1)}[fusion][0]
        if discard > 0:
            flat = fused_att.flatten()
            k = int(flat.numel() * discard)
            if k > 0:
                idx = flat.topk(k, largest=False).indices
                idx = idx[idx != 0]  # never drop the class token's self-attention
                flat = flat.clone()
                flat[idx] = 0
                fused_att = flat.view_as(fused_att)
        a = 0.5 * fused_att + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    rows = rollout[0] if prefix > 0 else rollout.mean(0)
    patch = rows[prefix:]
    h, w = grid
    if patch.numel() != h * w:
        raise ValueError(f"attention_rollout: {patch.numel()} patch tokens do not form a {h}x{w} grid.")
    patch = patch / patch.max().clamp_min(1e-12)
    heat = LayerAttribution.interpolate(patch.reshape(1, 1, h, w), (x.shape[-1], x.shape[-1]),
                                        interpolate_mode="bilinear")
    return heat, {"head_fusion": fusion, "discard_ratio": discard, "grid": [h, w]}, None


_IMPL = {
    "integrated_gradients": _integrated_gradients,
    "saliency": _saliency,
    "gradient_shap": _gradient_shap,
    "occlusion": _occlusion,
    "grad_cam": _grad_cam,
    "attention_rollout": _attention_rollout,
}


#: Grad-CAM maps coarser than this many cells a side cannot point at a lesion (a 2x2 map upsampled to the
#: image puts its maximum on a quadrant); a UI then offers integrated gradients first.
MIN_GRADCAM_SIDE = 4


def applicable_methods(model_name: str, image_size: int | None = None) -> list[str]:
    """Methods of :data:`METHODS` that apply to a registered model (what a UI should offer), best first.

    Args:
        model_name: Registry name (see :func:`models.list_models`).
        image_size: The model's input size; when given and Grad-CAM's map would have fewer than
            :data:`MIN_GRADCAM_SIDE` cells a side (stride-32 backbones below 128 px: a 2x2 map at 64 px),
            integrated gradients comes first and Grad-CAM last.

    Returns:
        The applicable method names; empty for classical models.
    """
    from models import get_model_info

    info = get_model_info(model_name)
    if info.kind == "classical":
        return []
    methods = [m for m in METHODS if m != "attention_rollout" or info.family == "vit"]
    if image_size is not None and "grad_cam" in methods and gradcam_side(model_name, int(image_size)) < MIN_GRADCAM_SIDE:
        methods = ["integrated_gradients", *[m for m in methods if m not in ("integrated_gradients", "grad_cam")],
                   "grad_cam"]
    return methods


@functools.lru_cache(maxsize=64)
def gradcam_side(model_name: str, image_size: int) -> int:
    """Cells a side of the map Grad-CAM hooks for ``model_name`` at ``image_size`` (one forward pass of an
    untrained copy: the layer's output size depends on the architecture only)."""
    from models import create_model, get_model_info

    info = get_model_info(model_name)
    model = create_model(info.backbone or model_name, num_classes=2, image_size=image_size, pretrained="no").eval()
    layer = info.gradcam_layer(model) if info.backbone is None else get_model_info(info.backbone).gradcam_layer(model)
    sizes: list[int] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: sizes.append(
        int(out.shape[-1]) if out.ndim == 4 else int(math.isqrt(max(out.shape[1] - int(info.num_prefix_tokens or 0), 1)))))
    try:
        with torch.inference_mode():
            model(torch.zeros(1, model.in_chans, image_size, image_size))
    finally:
        handle.remove()
    return sizes[-1] if sizes else image_size


def _check_method(method: str, opts: dict[str, Any]) -> None:
    """Raise for an unknown method or an option the method does not take."""
    if method not in _IMPL:
        raise ValueError(f"Unknown attribution method {method!r}; expected one of {list(METHODS)}.")
    unknown = sorted(set(opts) - _OPTIONS[method])
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for method {method!r}; accepted: {sorted(_OPTIONS[method])}.")


def _check_applicable(method: str, res: _Resolved, target: Any) -> None:
    """Raise for attention rollout on a non-ViT model or a target of the wrong type."""
    if method == "attention_rollout" and not _is_vit(res.model):
        raise ValueError(f"method 'attention_rollout' does not apply to model {res.name or type(res.model).__name__!r} "
                         f"(vision transformers only).")
    if target is not None and not isinstance(target, (int, np.integer, str)):
        raise ValueError(f"target must be None, a class index or a class name, got {type(target).__name__}.")


def _run_method(
    method: str, model_or_predictor: Any, res: _Resolved, target: Any, opts: dict[str, Any], *, bf16: bool
) -> tuple[_TargetForward, torch.Tensor, dict[str, Any], float | None]:
    """Run one method on ``res.x`` under the lock, frozen eval mode and autocast; return its forward and outputs."""
    model, x = res.model, res.x
    # A Predictor put its model in eval mode with frozen parameters when it loaded it; walking every
    # submodule and parameter again costs milliseconds on a ViT. Only a root in training mode (someone
    # called predictor.model.train()) brings the full check back. (Parameters that require gradients
    # would only cost time: every method differentiates with respect to the input or a layer.)
    trusted = _is_predictor(model_or_predictor) and not model.training
    state = contextlib.nullcontext() if trusted else _frozen_eval(model)
    with _LOCK, state, torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        # The target is resolved inside Captum's own forward pass (see _TargetForward): no extra
        # inference pass for the methods whose first forward call is on x itself.
        fwd = _TargetForward(model, x, target, res.classes, res.threshold, fp32_target=bf16)
        impl = _IMPL[method]
        if method in ("grad_cam", "attention_rollout"):
            attr, params, delta = impl(fwd, x.clone(), 0, opts, model=model, name=res.name)
        else:
            attr, params, delta = impl(fwd, x.clone(), 0, opts)
    return fwd, attr, params, delta


def _finite_heatmap(attr: torch.Tensor, method: str, name: str | None) -> np.ndarray:
    """The attribution as a 2-D float32 numpy map, non-finite values replaced by 0 (with a warning)."""
    attr = attr.detach()
    if attr.ndim == 4 and attr.shape[1] > 1:  # a window set: the evidence of every window's channel, summed
        attr = attr.sum(1, keepdim=True)
    heat = attr.reshape(attr.shape[-2:]).to("cpu", torch.float32).numpy()
    if not np.isfinite(heat).all():
        logger.warning("%s on %s produced non-finite values; replaced by 0.", method, name)
        heat = np.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    return heat


def explain(
    model_or_predictor: Any,
    image: Any,
    *,
    method: str,
    target: int | str | None = None,
    model_name: str | None = None,
    classes: Sequence[str] | None = None,
    ct_window: str | tuple[float, float] | None = None,
    precision: str = "auto",
    **opts: Any,
) -> Attribution:
    """Explain one image with one attribution method.

    Args:
        model_or_predictor: A deep model from :func:`models.create_model` (takes (B, 1, S, S) in
            [0, 1]) or a :class:`models.Predictor`.
        image: For a bare model: the model input as an array/tensor (S, S), (1, S, S) or
            (1, 1, S, S), float in [0, 1] or uint8. For a predictor: additionally anything
            ``Predictor.preprocess`` accepts (path, bytes, PIL image, array of any size, DICOM);
            tensors are taken as already preprocessed.
        method: One of :data:`METHODS`.
        target: Class to explain: ``None`` (the predicted class), an index, a class name, or for
            binary models ``"positive"`` / ``"negative"``.
        model_name: Registry name of a bare model (needed by ``grad_cam`` to pick its layer; read
            from ``model.model_name`` when present and from the predictor's card otherwise).
        classes: Class names of a bare model (a predictor knows them).
        ct_window: CT window for DICOM input through a predictor (name or ``(level, width)``;
            default: the predictor's window, as for a prediction).
        precision: ``"fp32"``, ``"bf16"`` (the method's passes under ``torch.autocast`` with
            bfloat16) or ``"auto"``: bf16 for the multi-pass methods (integrated gradients, gradient
            SHAP, occlusion) of ResNets, CNNs and ViTs on a CPU with native bf16 (AMX or AVX512-BF16),
            where it measured 1.2-2.4x
            as fast with maps correlating >= 0.98 with fp32 (``python -m benchmarks --only
            attributions``), fp32 otherwise (EfficientNet, GPUs, other CPUs). The target and its
            probability always come from an fp32 pass. The precision used is in
            ``Attribution.params["precision"]``.
        **opts: Method options, see the module docstring (e.g. ``n_steps=64``, ``baseline="blurred"``).

    Returns:
        The :class:`Attribution` (heat map of the model-input size S x S).

    Raises:
        ValueError: Unknown method or option, a method that does not apply to the model (e.g.
            attention rollout on a CNN), a bad target, or an input of the wrong size, shape, dtype or
            range (a predictor's bad files raise :class:`models.InvalidInputError`, also a ValueError).
    """
    _check_method(method, opts)
    start = time.perf_counter()
    res = _resolve(model_or_predictor, image, model_name=model_name, classes=classes, window=ct_window)
    x = res.x
    _check_applicable(method, res, target)
    bf16 = _use_bf16(precision, method, res.name, x.device)
    fwd, attr, params, delta = _run_method(method, model_or_predictor, res, target, opts, bf16=bf16)
    params = {**params, "precision": "bf16" if bf16 else "fp32"}
    if fwd.index is None:  # pragma: no cover - every method calls the model
        raise RuntimeError(f"{method} never called the model, so the target could not be resolved.")
    index, names, probability = fwd.index, fwd.names, fwd.probability
    heat = _finite_heatmap(attr, method, res.name)
    seconds = time.perf_counter() - start
    logger.debug("%s on %s (target %s) took %.3f s", method, res.name, names[index], seconds)
    return Attribution(
        heatmap=np.ascontiguousarray(heat, dtype=np.float32),
        image=x.detach()[0, 0].to("cpu", torch.float32).numpy().copy(),  # a window set: its first window
        target=index,
        target_name=names[index],
        method=method,
        seconds=seconds,
        signed=_SIGNED[method] if method != "saliency" else not params.get("abs", True),
        probability=probability,
        model=res.name,
        params=params,
        convergence_delta=delta,
    )


# ---------------------------------------------------------------------------------------- display
def _colormap(name: str):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"Unknown colormap {name!r}; use a matplotlib colormap name such as 'jet', 'inferno', "
                         f"'RdBu_r'.") from None


def _grey(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else np.clip(img.astype(np.float64), 0.0, 1.0)


def _colour_scale(heat: np.ndarray, clip_percentile: float) -> float:
    """The ``|value|`` that :func:`overlay` maps to full colour: a percentile of ``|heat|`` (else its max, else 1)."""
    magnitude = np.abs(np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0))
    scale = float(np.percentile(magnitude, clip_percentile)) if magnitude.size else 0.0
    if scale <= 0:
        scale = float(magnitude.max()) if magnitude.size else 0.0
    return scale or 1.0


def overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    alpha: float = 0.45,
    colormap: str | None = None,
    signed: bool = False,
    clip_percentile: float = 99.0,
) -> np.ndarray:
    """Blend a heat map over a grey image for display.

    Normalisation (the same for every method, so maps are comparable):

    - absolute (``signed=False``): ``|heatmap|`` is divided by its ``clip_percentile``-th
      percentile and clipped to [0, 1]; colour map ``"jet"`` by default. The opacity of the colour
      grows with the value (``alpha * value``), so unimportant regions show the scan itself.
    - signed (``signed=True``): the heat map is divided by the ``clip_percentile``-th percentile of
      its absolute value and clipped to [-1, 1], then mapped with a diverging colour map centred on
      0 (``"RdBu_r"`` by default: red = evidence for the target, blue = against); opacity
      ``alpha * |value|``.

    Args:
        image: Grey image (H, W), float in [0, 1] or uint8 (e.g. ``Attribution.image``).
        heatmap: Attribution map (H, W) (e.g. ``Attribution.heatmap``).
        alpha: Maximum opacity of the colour layer, in [0, 1].
        colormap: A matplotlib colour map name; default ``"jet"`` (absolute) / ``"RdBu_r"`` (signed).
        signed: Keep the sign (see above). Use ``Attribution.signed`` to follow the method.
        clip_percentile: Percentile of ``|heatmap|`` that maps to full colour, in (0, 100].

    Returns:
        RGB uint8 array (H, W, 3).

    Raises:
        ValueError: Shapes differ, are not 2-D, or an argument is out of range.
    """
    img = np.asarray(image)
    heat = np.asarray(heatmap, dtype=np.float64)
    if img.ndim != 2 or heat.ndim != 2:
        raise ValueError(f"image and heatmap must be 2-D, got shapes {img.shape} and {heat.shape}.")
    if img.shape != heat.shape:
        raise ValueError(f"image shape {img.shape} and heatmap shape {heat.shape} differ.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    if not 0.0 < clip_percentile <= 100.0:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}.")
    cmap = _colormap(colormap or ("RdBu_r" if signed else "jet"))
    grey = _grey(img)
    heat = np.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    magnitude = np.abs(heat)
    scale = _colour_scale(heat, clip_percentile)
    if signed:
        norm = np.clip(heat / scale, -1.0, 1.0)
        colours = cmap((norm + 1.0) / 2.0)[..., :3]
        weight = alpha * np.abs(norm)
    else:
        norm = np.clip(magnitude / scale, 0.0, 1.0)
        colours = cmap(norm)[..., :3]
        weight = alpha * norm
    base = np.repeat(grey[..., None], 3, axis=2)
    out = (1.0 - weight[..., None]) * base + weight[..., None] * colours
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------- pictures for people
#: Smallest side, in pixels, of the image part of :func:`render_overlay` / :func:`render_input`.
DISPLAY_MIN_SIZE = 320
_UPSAMPLING = ("nearest", "bicubic")
_UPSAMPLING_WORDS = {"nearest": "nearest-neighbour", "bicubic": "bicubic"}
_INK, _PAPER = (20, 20, 20), (255, 255, 255)


def is_flat(heatmap: np.ndarray) -> bool:
    """Whether a map carries no information: every value the same (all zero included; NaN/inf count as 0)."""
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if heat.size == 0:
        return True
    return float(heat.max() - heat.min()) <= 1e-9 * max(float(np.abs(heat).max()), 1e-30)


def flat_map_message(method_label: str, target_name: str) -> str:
    """The sentence shown instead of a flat map's empty colour layer."""
    return f"{method_label} found no evidence for {target_name} in this image (a flat map)."


def enlarge(image: np.ndarray, *, min_size: int = DISPLAY_MIN_SIZE, upsample: str = "nearest") -> tuple[np.ndarray, int]:
    """Upsample an image by the smallest integer factor that makes its shorter side ``>= min_size``.

    Args:
        image: uint8 ``(H, W)`` or ``(H, W, 3)``.
        min_size: Target for the shorter side (images already that large are returned as they are).
        upsample: ``"nearest"`` (every model pixel becomes a k x k block: nothing invented) or ``"bicubic"``.

    Returns:
        ``(enlarged uint8 image, factor)``.

    Raises:
        ValueError: Bad ``upsample``, ``min_size`` or image.
    """
    from PIL import Image

    if upsample not in _UPSAMPLING:
        raise ValueError(f"upsample must be one of {_UPSAMPLING}, got {upsample!r}.")
    if not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size must be a positive integer, got {min_size!r}.")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) or 0 in arr.shape:
        raise ValueError(f"image must be uint8 (H, W) or (H, W, 3), got {arr.dtype} {arr.shape}.")
    factor = max(1, math.ceil(min_size / min(arr.shape[:2])))
    if factor == 1:
        return arr, 1
    if upsample == "nearest":
        return np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1), factor
    h, w = arr.shape[:2]
    return np.asarray(Image.fromarray(arr).resize((w * factor, h * factor), Image.BICUBIC)), factor


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except Exception:  # noqa: BLE001 - any font beats none
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            return ImageFont.load_default()


def _wrap(draw: Any, text: str, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _size_caption(shape: tuple[int, ...], factor: int, upsample: str) -> str:
    h, w = shape[:2]
    if factor == 1:
        return f"{w}×{h} model input, shown at its own size."
    return (f"{w}×{h} model input shown at {w * factor}×{h * factor} "
            f"({_UPSAMPLING_WORDS[upsample]} upsampling ×{factor}).")


def _compose(picture: np.ndarray, *, title: str, caption: str, colour_bar: Any = None,
             message: str | None = None) -> np.ndarray:
    """White canvas: title, ``picture``, an optional colour bar to its right, a caption below.

    ``colour_bar``: ``(rgb (n, 3) from top to bottom, [(fraction from the top, label), ...])``.
    ``message``: drawn over the picture's middle in a white box (used for flat maps).
    """
    from PIL import Image, ImageDraw

    side_h, side_w = picture.shape[:2]
    size = max(16, round(min(side_h, side_w) / 20))
    font, small = _font(size), _font(max(12, round(size * 0.85)))
    pad = max(6, size // 2)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    bar_w = max(14, side_w // 16) if colour_bar is not None else 0
    label_w = 0
    if colour_bar is not None:
        label_w = int(max(probe.textlength(text, font=small) for _, text in colour_bar[1])) + pad
    width = pad + side_w + (pad + bar_w + pad // 2 + label_w if colour_bar is not None else 0) + pad
    line_h = int(size * 1.3)
    small_h = int(small.size * 1.3) if hasattr(small, "size") else line_h
    title_lines = _wrap(probe, title, font, width - 2 * pad)
    caption_lines = _wrap(probe, caption, small, width - 2 * pad)
    top = pad + line_h * len(title_lines) + pad // 2
    height = top + side_h + pad + small_h * len(caption_lines) + pad
    canvas = Image.new("RGB", (width, height), _PAPER)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title_lines):
        draw.text((pad, pad + i * line_h), line, fill=_INK, font=font)
    rgb = picture if picture.ndim == 3 else np.repeat(picture[..., None], 3, axis=2)
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (pad, top))
    if colour_bar is not None:
        colours, labels = colour_bar
        x0 = pad + side_w + pad
        column = np.asarray(colours, dtype=np.float64)
        rows = np.interp(np.linspace(0, len(column) - 1, side_h), np.arange(len(column)), np.arange(len(column)))
        strip = column[np.rint(rows).astype(int)]
        strip = np.clip(np.rint(strip * 255.0), 0, 255).astype(np.uint8)
        canvas.paste(Image.fromarray(np.repeat(strip[:, None, :], bar_w, axis=1)), (x0, top))
        draw.rectangle([x0, top, x0 + bar_w - 1, top + side_h - 1], outline=_INK)
        for fraction, text in labels:
            y = top + fraction * (side_h - 1)
            draw.line([x0 + bar_w, y, x0 + bar_w + pad // 2, y], fill=_INK)
            draw.text((x0 + bar_w + pad // 2 + 2, y), text, fill=_INK, font=small, anchor="lm")
    if message:
        box_w = side_w - 2 * pad
        lines = _wrap(draw, message, font, box_w - 2 * pad)
        box_h = line_h * len(lines) + 2 * pad
        y0 = top + (side_h - box_h) // 2
        draw.rectangle([pad + pad, y0, pad + pad + box_w, y0 + box_h], fill=_PAPER, outline=_INK)
        for i, line in enumerate(lines):
            draw.text((pad + side_w // 2, y0 + pad + i * line_h + line_h // 2), line, fill=_INK, font=font,
                      anchor="mm")
    y = top + side_h + pad
    for i, line in enumerate(caption_lines):
        draw.text((pad, y + i * small_h), line, fill=_INK, font=small)
    return np.asarray(canvas)


def _number(value: float) -> str:
    return f"{value:.2g}" if 1e-2 <= abs(value) < 1e3 else f"{value:.1e}"


def render_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    signed: bool = False,
    target_name: str | None = None,
    method_label: str = "This method",
    min_size: int = DISPLAY_MIN_SIZE,
    upsample: str = "nearest",
    alpha: float = 0.45,
    colormap: str | None = None,
    clip_percentile: float = 99.0,
) -> np.ndarray:
    """An attribution picture for a screen or a projector: never a bare 64-pixel image, never a blank one.

    The :func:`overlay` of ``heatmap`` on ``image`` is enlarged (:func:`enlarge`) until its shorter
    side is at least ``min_size`` pixels, with a title naming the method and the class explained,
    a colour bar labelled with the values that map to its ends (the ``clip_percentile``-th
    percentile of ``|heatmap|``; larger values are clipped) and a caption saying the input size and
    the upsampling. A flat map (:func:`is_flat`: all zero or constant, e.g. Grad-CAM whose ReLU
    removed everything) gives the enlarged grey input with the message "<method> found no evidence
    for <class> in this image (a flat map)" instead of a colour layer.

    Args:
        image: Grey model input (H, W), float in [0, 1] or uint8 (``Attribution.image``).
        heatmap: The map (H, W) (``Attribution.heatmap``).
        signed: Keep the sign (``Attribution.signed``): red = evidence for the class, blue = against.
        target_name: The class explained (``Attribution.target_name``).
        method_label: The method's name for people (``"Grad-CAM"``).
        min_size: Smallest side of the image part, in pixels.
        upsample: ``"nearest"`` or ``"bicubic"`` (see :func:`enlarge`).
        alpha, colormap, clip_percentile: As for :func:`overlay`.

    Returns:
        RGB uint8 ``(H', W', 3)`` with ``H', W' > min_size``.

    Raises:
        ValueError: As :func:`overlay` and :func:`enlarge`.
    """
    img = np.asarray(image)
    blended = overlay(img, heatmap, alpha=alpha, colormap=colormap, signed=signed, clip_percentile=clip_percentile)
    target = target_name if target_name is not None else "the explained class"
    flat = is_flat(heatmap)
    if flat:
        grey = np.clip(np.rint(_grey(img) * 255.0), 0, 255).astype(np.uint8)
        blended = np.repeat(grey[..., None], 3, axis=2)
    picture, factor = enlarge(blended, min_size=min_size, upsample=upsample)
    title = f"{method_label} for class {target}"
    size_note = _size_caption(img.shape, factor, upsample)
    if flat:
        value = float(np.nan_to_num(np.asarray(heatmap, dtype=np.float64)).flat[0]) if np.size(heatmap) else 0.0
        message = flat_map_message(method_label, target)
        caption = f"Every value of the map is {_number(value) if value else '0'}: nothing to colour. {size_note}"
        return _compose(picture, title=title, caption=caption, message=message)
    cmap = _colormap(colormap or ("RdBu_r" if signed else "jet"))
    scale = _colour_scale(heatmap, clip_percentile)
    steps = np.linspace(1.0, 0.0, 256)
    if signed:
        colours = cmap(steps)[:, :3]
        labels = [(0.0, f"+{_number(scale)}"), (0.5, "0"), (1.0, f"−{_number(scale)}")]
        meaning = (f"Colour bar: red = evidence for {target}, blue = evidence against it; the colour grows "
                   f"stronger with |value|, values beyond ±{_number(scale)} (the {clip_percentile:g}th percentile "
                   f"of |map|) are clipped.")
    else:
        colours = cmap(steps)[:, :3]
        labels = [(0.0, _number(scale)), (1.0, "0")]
        meaning = (f"Colour bar: importance for {target}, from 0 (no colour) to {_number(scale)} (the "
                   f"{clip_percentile:g}th percentile of the map; larger values are clipped).")
    return _compose(picture, title=title, caption=f"{meaning} {size_note}", colour_bar=(colours, labels))


def render_input(image: np.ndarray, *, title: str = "What the model saw", min_size: int = DISPLAY_MIN_SIZE,
                 upsample: str = "nearest", note: str = "") -> np.ndarray:
    """The model input as a picture for people: enlarged (:func:`enlarge`), with a title and a caption
    saying its size and the upsampling.

    Args:
        image: Grey model input (H, W), float in [0, 1] or uint8.
        title: The title line.
        min_size: Smallest side of the image part, in pixels.
        upsample: ``"nearest"`` or ``"bicubic"``.
        note: Text put before the size in the caption.

    Returns:
        RGB uint8 ``(H', W', 3)``.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}.")
    grey = np.clip(np.rint(_grey(img) * 255.0), 0, 255).astype(np.uint8)
    picture, factor = enlarge(grey, min_size=min_size, upsample=upsample)
    caption = f"{note} {_size_caption(img.shape, factor, upsample)}".strip()
    return _compose(picture, title=title, caption=caption)
