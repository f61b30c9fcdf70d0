"""The model registry: one place that says which models exist and how to build them.

timm-style: ``@register_model`` files a builder under its function name together with a
:class:`ModelInfo`; :func:`create_model` is the one factory and :func:`list_models` answers what exists.
The search space, the dashboard and the Gradio dropdown all read :func:`list_models`.

Example:
    >>> import models
    >>> models.list_models(kind="deep")
    ['efficientnet_b0', 'efficientnet_lite0', 'resnet18', 'simple_cnn', 'tiny_cnn', 'vit_small', 'vit_tiny']
    >>> net = models.create_model("resnet18", num_classes=2, image_size=128, pretrained="auto")
    >>> net.init   # "imagenet:local" / "imagenet:package" / "imagenet:hub" with weights, else "random" (warning)

Builders have the signature ``builder(*, num_classes, image_size, pretrained, weights_dir, **kw)``
where ``pretrained`` is already validated; builders of models with ``supports_pretrained`` also receive
``offline`` (bool: never download weights). A builder may also receive the private keyword ``_layout``
(a card's ``init``: ``"random"`` or a pretrained init) from :func:`build_for_checkpoint`: build that
architecture without loading weights.
"""
from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models._inits import INITS, is_pretrained_init

__all__ = [
    "ModelInfo",
    "build_for_checkpoint",
    "create_model",
    "get_model_info",
    "list_models",
    "register_model",
]

logger = logging.getLogger(__name__)

_PRETRAINED_CHOICES = ("no", "yes", "auto")
_KINDS = ("deep", "classical", "frozen")
_FAMILIES = ("cnn", "resnet", "efficientnet", "vit", "classical")
# Modules whose import registers the built-in models.
_BUILTIN_MODULES = ("models.cnn", "models.timm_models", "models.classical", "models.frozen")

_model_entrypoints: dict[str, Callable[..., Any]] = {}
_model_info: dict[str, ModelInfo] = {}
_builtins_loaded = False


def _no_gradcam_layer(model: Any) -> None:
    return None


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the project needs to know about a registered model.

    Attributes:
        name: Registry name.
        kind: ``"deep"`` (a :class:`models._common.StrokeNet` trained by gradient descent), ``"frozen"`` (a
            :class:`~models._common.StrokeNet` of the frozen-feature lane, :mod:`models.frozen`: a frozen backbone
            and a scikit-learn head) or ``"classical"`` (a ``ClassicalModel``).
        family: ``"cnn"``, ``"resnet"``, ``"efficientnet"``, ``"vit"`` or ``"classical"``.
        supports_pretrained: Whether ImageNet weights exist (``pretrained="yes"`` allowed).
        timm_name: timm architecture name (``"vit_tiny_patch16_224"``), ``None`` for non-timm models.
        default_image_size: A sensible input side length for this model.
        min_image_size: Smallest accepted input side length.
        patch_size: ViT patch size (image sizes must be a multiple of it), ``None`` otherwise.
        num_prefix_tokens: Tokens before the patch tokens in a ViT sequence (1: the class token), else 0.
        param_space: The model's search ranges, read by ``automl.space`` (the one source of truth):
            ``{"low": float, "high": float, "log": bool, "default": float (optional)}`` per
            parameter. Deep models give ``lr`` (for pretrained models the fine-tuning range),
            ``lr_scratch`` (random init; absent: ``lr``) and ``weight_decay``; classical models ``C``
            (and ``gamma``). ``default`` is the value of the architecture's first trial (else the
            log-midpoint). Batch sizes follow from the data, not the model.
        backbone: Frozen-feature lane (:mod:`models.frozen`): the registered model whose ImageNet features
            the candidate uses, else ``None``.
        head: Frozen-feature lane: the scikit-learn head (``"logreg"``, ``"svm_rbf"``, ``"knn"``), else ``None``.
        description: One line for the UI.
    """

    name: str
    kind: str
    family: str
    supports_pretrained: bool = False
    timm_name: str | None = None
    default_image_size: int = 128
    min_image_size: int = 32
    patch_size: int | None = None
    num_prefix_tokens: int = 0
    param_space: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None
    head: str | None = None
    description: str = ""
    gradcam_fn: Callable[[Any], Any] = field(default=_no_gradcam_layer, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r} for model {self.name!r}.")
        if self.family not in _FAMILIES:
            raise ValueError(f"family must be one of {_FAMILIES}, got {self.family!r} for model {self.name!r}.")

    @property
    def prefers_channels_last(self) -> bool:
        """Whether this architecture runs faster with ``torch.channels_last`` weights and activations.

        True for the convolutional families (``cnn``, ``resnet``, ``efficientnet``), False for ViTs
        (one patch convolution, then matmuls) and classical models. Measured on the 2-core CPU
        (``python -m benchmarks --only training_step`` / ``--only inference``): training 1.06-1.33x and
        one-image inference 1.05-1.4x faster for the CNNs, ViT-Tiny unchanged. The training engine
        (``TrainConfig.channels_last=None``) and :class:`models.Predictor` follow this flag.
        """
        return self.kind in ("deep", "frozen") and self.family in ("cnn", "resnet", "efficientnet")

    @property
    def trains_in_bf16_on_cpu(self) -> bool:
        """Whether the training engine uses bf16 autocast for this architecture on a CPU with native bf16
        (AMX or AVX512-BF16: :func:`models.cpu_has_native_bf16`).

        True for the ``cnn`` and ``resnet`` families: the engine trained them 1.7-2.6x faster per training
        step at 128 px and 1.1-1.5x faster per whole fold at 64 px (``python -m benchmarks --only
        training_step --only bf16_accuracy``, ``benchmarks/results.json``), while the mean CV AUC over 18
        paired fits each (3 phantom seeds x the search benchmark's grid) moved by -0.0018 (tiny_cnn),
        -0.0067 (simple_cnn) and +0.0006 (resnet18), far inside the training-seed noise of 0.05-0.18 AUC
        on that surrogate. False for EfficientNet (0.55x: depthwise convolutions), ViTs (slower in the
        exploration runs that chose the defaults; no variant record) and classical models.
        """
        return self.kind == "deep" and self.family in ("cnn", "resnet")

    @property
    def search_space(self) -> dict[str, Any]:
        """Alias of :attr:`param_space`."""
        return self.param_space

    def gradcam_layer(self, model: Any) -> Any:
        """The layer Grad-CAM should hook for ``model`` (a :class:`StrokeNet` of this architecture).

        * CNNs (``simple_cnn``, ``tiny_cnn``): the activation (before pooling) of the deepest block
          whose map is at least 16×16 at the model's image size (block 3 at 64 px), see
          :func:`models.cnn.gradcam_block_index`; the last block would give a 4×4 map at 64 px.
        * ResNet: ``layer4`` (last residual stage, stride 32). EfficientNet: ``bn2`` (the activated
          1x1 ``conv_head`` output, stride 32).
        * ViT: ``blocks[-1].norm1``; its output is a token sequence ``(B, N, D)``: drop the first
          :attr:`num_prefix_tokens` tokens and reshape the rest to the :meth:`vit_patch_grid`, i.e.
          use :meth:`reshape_tokens`, to get a ``(B, D, h, w)`` map.
        * Classical models: ``None`` (no layers).
        """
        return self.gradcam_fn(model)

    def vit_patch_grid(self, image_size: int) -> tuple[int, int]:
        """Patch-token grid ``(rows, cols)`` of a ViT fed ``image_size`` pixels.

        Raises:
            ValueError: If this is not a ViT, or ``image_size`` is not a multiple of the patch size.
        """
        if self.patch_size is None:
            raise ValueError(f"{self.name!r} is not a ViT; it has no patch grid.")
        if image_size % self.patch_size:
            raise ValueError(f"image_size must be a multiple of {self.patch_size} for {self.name!r}, got {image_size}.")
        side = image_size // self.patch_size
        return side, side

    def reshape_tokens(self, activations: Any, image_size: int | None = None) -> Any:
        """ViT token activations ``(B, N, D)`` -> feature map ``(B, D, h, w)``; other tensors unchanged.

        Args:
            activations: Output of :meth:`gradcam_layer` (or its gradient).
            image_size: Input side length; if ``None`` the grid is assumed square and inferred from ``N``.
        """
        if self.patch_size is None or getattr(activations, "ndim", 0) != 3:
            return activations
        tokens = activations[:, self.num_prefix_tokens :, :]
        if image_size is not None:
            rows, cols = self.vit_patch_grid(image_size)
        else:
            rows = cols = math.isqrt(tokens.shape[1])
        if rows * cols != tokens.shape[1]:
            raise ValueError(
                f"Cannot reshape {tokens.shape[1]} patch tokens of {self.name!r} into a {rows}x{cols} grid."
            )
        return tokens.reshape(tokens.shape[0], rows, cols, tokens.shape[2]).permute(0, 3, 1, 2)


def register_model(fn: Callable[..., Any] | None = None, /, **info: Any) -> Any:
    """Register a model builder under its function name.

    Use bare (``@register_model``: a deep ``"cnn"`` model without pretrained weights) or with
    :class:`ModelInfo` fields (``@register_model(family="resnet", supports_pretrained=True, ...)``).

    Raises:
        ValueError: If the name is already registered or an info field is invalid.
    """

    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        name = builder.__name__
        if name in _model_entrypoints:
            raise ValueError(f"A model named {name!r} is already registered.")
        fields = {"kind": "deep", "family": "cnn", **info}
        _model_info[name] = ModelInfo(name=name, **fields)
        _model_entrypoints[name] = builder
        return builder

    if fn is not None:
        return decorator(fn)
    return decorator


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def list_models(kind: str | None = None) -> list[str]:
    """Names of the registered models, sorted.

    Args:
        kind: ``None`` (all), ``"deep"``, ``"frozen"`` (the frozen-feature lane) or ``"classical"``.

    Raises:
        ValueError: If ``kind`` is unknown.
    """
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"kind must be None or one of {_KINDS}, got {kind!r}.")
    _load_builtins()
    return sorted(n for n, info in _model_info.items() if kind is None or info.kind == kind)


def get_model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model.

    Raises:
        ValueError: If ``name`` is not registered (the message lists the valid names).
    """
    _load_builtins()
    if not isinstance(name, str) or name not in _model_info:
        lane = sorted({n.split("+")[0] for n in list_models(kind="frozen")})
        lane_text = f"; frozen-feature candidates: <backbone>+<logreg|svm_rbf|knn> for {', '.join(lane)}" if lane else ""
        plain = [n for n in list_models() if n not in list_models(kind="frozen")]
        raise ValueError(f"Unknown model {name!r}. Registered models: {', '.join(plain)}{lane_text}.")
    return _model_info[name]


def _validate_common(info: ModelInfo, num_classes: Any, image_size: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < info.min_image_size:
        raise ValueError(
            f"image_size must be an integer >= {info.min_image_size} for {info.name!r}, got {image_size!r}."
        )
    if info.patch_size is not None and image_size % info.patch_size:
        raise ValueError(
            f"image_size must be a multiple of {info.patch_size} for {info.name!r} "
            f"(patch-{info.patch_size} ViT), got {image_size}."
        )


def create_model(
    name: str,
    *,
    num_classes: int,
    image_size: int = 128,
    pretrained: str | bool = "no",
    weights_dir: str | Path | None = None,
    offline: bool = False,
    in_chans: int = 1,
    **kwargs: Any,
) -> Any:
    """Build a registered model.

    Args:
        name: Registry name (see :func:`list_models`).
        num_classes: Number of classes (2 -> binary, one logit).
        image_size: Input side length ``S``.
        pretrained: ``"no"`` (random init), ``"yes"`` (ImageNet weights or
            :class:`~models._pretrained.PretrainedWeightsUnavailable`), ``"auto"`` (ImageNet weights if
            available, else random init with a warning). ``True``/``False`` mean ``"yes"``/``"no"``.
            Models without ImageNet weights accept ``"no"`` and ``"auto"`` only.
        weights_dir: Folder with local weight files (``<timm_name>.safetensors`` / ``.pth`` / ``.bin``);
            ``$STROKECT_WEIGHTS`` is searched as well, then pip-packaged weights and the hub caches, then a
            download through timm (see :mod:`models._pretrained`); ``model.init`` records the source.
        offline: Never download weights (``--offline``); ``$HF_HUB_OFFLINE=1`` does the same.
        in_chans: Image channels the model will be fed: 1 (grey, one CT window) or 3 (a window set,
            :func:`data.parse_windows`). ImageNet backbones take 3 channels either way (grey is
            replicated); models trained from scratch are built for ``in_chans``.
        **kwargs: Builder options (timm: ``drop_rate``, ``drop_path_rate``; CNNs: ``drop_rate``;
            classical: ``C``, ``gamma``). Options whose value is ``None`` are ignored.

    Returns:
        A :class:`~models._common.StrokeNet` (deep) or a :class:`~models.classical.ClassicalModel`.

    Raises:
        ValueError: For an unknown name or invalid argument.
        PretrainedWeightsUnavailable: ``pretrained="yes"`` and no weights could be found.
    """
    info = get_model_info(name)
    if isinstance(pretrained, bool):
        pretrained = "yes" if pretrained else "no"
    if pretrained not in _PRETRAINED_CHOICES:
        raise ValueError(f"pretrained must be one of {_PRETRAINED_CHOICES}, got {pretrained!r}.")
    if pretrained == "yes" and not info.supports_pretrained:
        raise ValueError(
            f"{name!r} has no ImageNet weights (it is trained from scratch); use pretrained='no' or 'auto'."
        )
    _validate_common(info, num_classes, image_size)
    _check_in_chans(in_chans)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if in_chans != 1:
        kwargs["in_chans"] = in_chans
    if info.supports_pretrained:
        kwargs["offline"] = bool(offline)
    return _model_entrypoints[name](
        num_classes=num_classes, image_size=image_size, pretrained=pretrained, weights_dir=weights_dir, **kwargs
    )


def _check_in_chans(in_chans: int) -> None:
    if isinstance(in_chans, bool) or in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 (one CT window) or 3 (a window set), got {in_chans!r}.")


def build_for_checkpoint(name: str, *, num_classes: int, image_size: int, init: str, in_chans: int = 1) -> Any:
    """Build the architecture a checkpoint was saved from, without loading any pretrained weights.

    A model fine-tuned from ImageNet weights has 3 input channels and ImageNet normalisation; this
    rebuilds that layout (any pretrained ``init``, see :func:`models.is_pretrained_init`, including the
    legacy ``"imagenet"``) so the checkpoint's ``state_dict`` fits, and sets ``.init`` to the recorded
    value. Used by :func:`models.load_predictor`.

    Raises:
        ValueError: For an unknown name, invalid size or init.
    """
    info = get_model_info(name)
    _validate_common(info, num_classes, image_size)
    if info.kind == "classical":
        raise ValueError(f"{name!r} is a classical model; rebuild it with ClassicalModel.from_state_arrays().")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")
    if is_pretrained_init(init) and not info.supports_pretrained:
        raise ValueError(f"{name!r} cannot have init={init!r}: it has no pretrained weights.")
    _check_in_chans(in_chans)
    extra = {"in_chans": in_chans} if in_chans != 1 else {}
    return _model_entrypoints[name](
        num_classes=num_classes, image_size=image_size, pretrained="no", weights_dir=None, _layout=init, **extra
    )
