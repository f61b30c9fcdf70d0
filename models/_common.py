"""Pieces shared by every deep model: the input wrapper, logits -> probabilities, device choice.

Every deep model in the zoo is a :class:`StrokeNet`: it takes the project's one input format,
grey float tensors ``(B, 1, S, S)`` in ``[0, 1]``, and does the channel handling and normalisation
itself, so that training, the predictor, attributions and ONNX export all feed the same tensor.

Input handling, by the init the model was built for:

* a pretrained init (``"imagenet:hub"``, ``"imagenet:local"``, ``"imagenet:package"``, see
  :func:`models.is_pretrained_init`; timm backbone with 3 input channels): the grey channel is replicated
  to 3 channels, then normalised with the backbone's own ``pretrained_cfg`` mean/std (ImageNet
  ``(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)`` for ResNet/EfficientNet-B0, ``0.5 / 0.5`` for the
  AugReg ViTs and the TensorFlow-ported EfficientNet-Lite0).
* ``init == "random"`` (trained from scratch): the backbone has ``in_chans=1`` and the input is
  normalised as ``(x - 0.5) / 0.25``, which maps a windowed CT slice to roughly zero mean, unit scale.

The mean/std live in (persistent) buffers, so a checkpoint carries its own normalisation.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models._inits import INITS

__all__ = [
    "RANDOM_INIT_MEAN",
    "RANDOM_INIT_STD",
    "ModuleGroup",
    "StrokeNet",
    "fuse_batchnorm_",
    "logits_to_probabilities",
    "num_outputs",
    "pick_device",
]

logger = logging.getLogger(__name__)

RANDOM_INIT_MEAN = 0.5
RANDOM_INIT_STD = 0.25
_DEVICE_PREFERENCES = ("auto", "cpu", "cuda", "mps")


def fuse_batchnorm_(model: nn.Module) -> int:
    """Fold BatchNorm into the preceding convolution wherever a module knows how, in place.

    Calls ``fuse_batchnorm_()`` on every submodule that defines it (e.g.
    :class:`models.cnn.ConvBlock`); the model must be in eval mode and is then for inference only.

    Returns:
        How many BatchNorm layers were folded.
    """
    return sum(bool(m.fuse_batchnorm_()) for m in list(model.modules())
               if m is not model and callable(getattr(m, "fuse_batchnorm_", None)))


def num_outputs(num_classes: int) -> int:
    """Number of logits a model emits: 1 for a binary task, ``num_classes`` otherwise.

    Raises:
        ValueError: If ``num_classes`` is not an integer >= 2.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    return 1 if num_classes == 2 else num_classes


class ModuleGroup(nn.Module):
    """A view that groups existing modules and bare parameters into one module.

    Used by :meth:`StrokeNet.stages` for parts of a backbone that are not one child module
    (a ResNet stem is ``conv1`` + ``bn1``; a ViT stem also owns ``cls_token`` and ``pos_embed``).
    The group shares the very same ``Parameter`` objects, so freezing it freezes the backbone.
    It is never attached to the model, so it does not change the model's ``state_dict``.
    """

    def __init__(self, modules: dict[str, nn.Module], params: dict[str, nn.Parameter] | None = None) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        for name, param in (params or {}).items():
            self.register_parameter(name, param)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - a view, not a layer
        raise RuntimeError("ModuleGroup is a parameter view for (un)freezing; it has no forward().")


class StrokeNet(nn.Module):
    """The one deep-model wrapper: ``(B, 1, S, S)`` in ``[0, 1]`` -> logits ``(B, 1)`` or ``(B, C)``.

    Args:
        backbone: The network (a timm model or one of :mod:`models.cnn`), taking ``in_chans`` channels.
        model_name: Registry name (``"resnet18"``, ``"simple_cnn"``, ...).
        num_classes: Number of classes of the task (2 -> one logit).
        image_size: Side length ``S`` the model was built for.
        init: The initialisation actually used: one of :data:`models._inits.INITS`.
        mean: Per-channel input mean (length ``in_chans``).
        std: Per-channel input std (length ``in_chans``).
        stage_fn: Returns the backbone's stages, input to head (see :meth:`stages`).
        head_fn: Returns the backbone's classifier module.

    Attributes:
        init: ``"imagenet:hub"``, ``"imagenet:local"``, ``"imagenet:package"`` (legacy ``"imagenet"``) or
            ``"random"``; test it with :func:`models.is_pretrained_init`.
        normalization: ``{"mean": [...], "std": [...], "in_chans": int}``.
        backbone: The wrapped network.
        model_name, num_classes, image_size: As given.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        model_name: str,
        num_classes: int,
        image_size: int,
        init: str,
        mean: Sequence[float],
        std: Sequence[float],
        stage_fn: Any,
        head_fn: Any,
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}.")
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(f"mean/std must both have 1 or 3 entries, got {list(mean)} and {list(std)}.")
        if any(s <= 0 for s in std):
            raise ValueError(f"std entries must be positive, got {list(std)}.")
        self.backbone = backbone
        self.model_name = model_name
        self.num_classes = num_classes
        self.image_size = image_size
        self.init = init
        self.in_chans = len(mean)
        self.register_buffer("input_mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("input_std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self._stage_fn = stage_fn
        self._head_fn = head_fn

    @property
    def normalization(self) -> dict[str, Any]:
        """``{"mean": [...], "std": [...], "in_chans": int}`` applied inside :meth:`forward`."""
        return {
            "mean": [round(float(v), 6) for v in self.input_mean.flatten().tolist()],
            "std": [round(float(v), 6) for v in self.input_std.flatten().tolist()],
            "in_chans": self.in_chans,
        }

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Grey ``(B, 1, S, S)`` in ``[0, 1]`` -> the backbone's normalised ``(B, in_chans, S, S)`` input."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"{self.model_name} expects a (B, 1, S, S) tensor, got shape {tuple(x.shape)}.")
        if self.in_chans != 1:
            x = x.expand(-1, self.in_chans, -1, -1)
        return (x - self.input_mean) / self.input_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1)`` for a binary task, ``(B, C)`` otherwise."""
        return self.backbone(self.normalize(x))

    def stages(self) -> list[nn.Module]:
        """The model cut into consecutive stages, from input to classifier, for gradual unfreezing.

        Every trainable parameter belongs to exactly one stage; the last stage is :meth:`head`.
        """
        return list(self._stage_fn(self.backbone))

    def head(self) -> nn.Module:
        """The classifier: the freshly initialised part when fine-tuning a pretrained backbone."""
        return self._head_fn(self.backbone)

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, num_classes={self.num_classes}, init={self.init!r}"


def logits_to_probabilities(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Turn model logits into class probabilities ``(B, C)``.

    Args:
        logits: ``(B, 1)`` or ``(B,)`` for a binary task (the logit of ``classes[1]``), ``(B, C)`` otherwise.
        num_classes: Number of classes ``C`` (>= 2).

    Returns:
        ``(B, C)`` probabilities; for a binary task ``[1 - p, p]`` with ``p = sigmoid(logit)``.

    Raises:
        ValueError: If the logits do not have the shape ``num_classes`` implies.
    """
    expected = num_outputs(num_classes)
    if not isinstance(logits, torch.Tensor):
        logits = torch.as_tensor(logits)
    if expected == 1:
        if logits.ndim == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]
        if logits.ndim != 1:
            raise ValueError(
                f"Binary logits must have shape (B, 1) or (B,), got {tuple(logits.shape)} for num_classes=2."
            )
        p = torch.sigmoid(logits)
        return torch.stack([1.0 - p, p], dim=1)
    if logits.ndim != 2 or logits.shape[1] != expected:
        raise ValueError(
            f"Logits must have shape (B, {expected}) for num_classes={num_classes}, got {tuple(logits.shape)}."
        )
    return torch.softmax(logits, dim=1)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (native bf16 matrix units: Intel Sapphire Rapids and later).

    Where it does, bf16 autocast made convolutions and matmuls 1.3-2.2x faster in the benchmarks; the
    training engine and the attributions use it for the architectures where that was measured.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch or exotic CPU
        return False


def pick_device(preference: str | torch.device = "auto") -> torch.device:
    """Choose the torch device.

    Args:
        preference: ``"auto"`` (CUDA, then Apple MPS, then CPU), ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``),
            ``"mps"``, or a ``torch.device``.

    Returns:
        The device.

    Raises:
        ValueError: If ``preference`` is unknown, or names an accelerator this machine does not have.
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    if not isinstance(preference, str):
        raise ValueError(f"device must be one of {_DEVICE_PREFERENCES}, got {preference!r}.")
    pref = preference.strip().lower()
    mps_available = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available:
            return torch.device("mps")
        return torch.device("cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" or pref.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={preference!r} was requested but CUDA is not available here; use 'auto' or 'cpu'.")
        try:
            device = torch.device(pref)
        except RuntimeError as err:
            raise ValueError(f"Invalid CUDA device {preference!r}: {err}") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={preference!r} but only {torch.cuda.device_count()} CUDA device(s) exist.")
        return device
    if pref == "mps":
        if not mps_available:
            raise ValueError("device='mps' was requested but Apple MPS is not available here; use 'auto' or 'cpu'.")
        return torch.device("mps")
    raise ValueError(f"device must be one of {_DEVICE_PREFERENCES} (or 'cuda:N'), got {preference!r}.")
