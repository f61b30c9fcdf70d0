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

import functools
import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models._inits import INITS

__all__ = [
    "RANDOM_INIT_MEAN",
    "RANDOM_INIT_STD",
    "ModuleGroup",
    "StrokeNet",
    "cpu_capabilities",
    "cpu_has_amx",
    "cpu_has_native_bf16",
    "cpu_kind",
    "fuse_batchnorm_",
    "logits_to_probabilities",
    "num_outputs",
    "pick_device",
]

logger = logging.getLogger(__name__)

RANDOM_INIT_MEAN = 0.5
RANDOM_INIT_STD = 0.25
_DEVICE_PREFERENCES = ("auto", "cpu", "cuda", "mps")


def _fuse_resnet_batchnorm_(module: nn.Module) -> int:
    """Fold the BatchNorms of one timm ResNet module (the stem, a ``BasicBlock`` or a ``Bottleneck``) into the
    convolutions they follow: in these modules' ``forward`` every ``bn<i>`` is applied right after ``conv<i>``,
    and a ``downsample`` is ``Sequential(conv, bn)``."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for i in (1, 2, 3):
        conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(module, f"conv{i}", fuse_conv_bn_eval(conv, bn))
            setattr(module, f"bn{i}", nn.Identity())
            folded += 1
    down = getattr(module, "downsample", None)
    if (isinstance(down, nn.Sequential) and len(down) == 2 and isinstance(down[0], nn.Conv2d)
            and isinstance(down[1], nn.BatchNorm2d)):
        down[0], down[1] = fuse_conv_bn_eval(down[0], down[1]), nn.Identity()
        folded += 1
    return folded


def fuse_batchnorm_(model: nn.Module) -> int:
    """Fold BatchNorm into the preceding convolution wherever that is known to be safe, in place.

    Calls ``fuse_batchnorm_()`` on every submodule that defines it (e.g. :class:`models.cnn.ConvBlock`),
    and folds the BatchNorms of timm's ResNets (stem, ``BasicBlock``, ``Bottleneck``, downsample): one
    memory-bound pass less per convolution (ResNet-18 one-image inference on the CPU spent about a fifth of
    its time in BatchNorm). The model must be in eval mode and is then for inference only; its outputs are
    the same up to float rounding.

    Returns:
        How many BatchNorm layers were folded.

    Raises:
        RuntimeError: If a module to fold is in training mode.
    """
    try:
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet
        resnet_types: tuple[type, ...] = (BasicBlock, Bottleneck, ResNet)
    except ImportError:  # pragma: no cover - timm is a hard dependency
        resnet_types = ()
    folded = 0
    for m in list(model.modules()):
        if m is not model and callable(getattr(m, "fuse_batchnorm_", None)):
            folded += bool(m.fuse_batchnorm_())
        elif resnet_types and type(m) in resnet_types:
            if m.training:
                raise RuntimeError("fuse_batchnorm_() needs the model in eval mode (call model.eval() first).")
            folded += _fuse_resnet_batchnorm_(m)
    return folded


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
        """``(B, 1, S, S)`` grey or ``(B, in_chans, S, S)`` windows in ``[0, 1]`` -> the normalised backbone input.

        Grey input is replicated to the backbone's channels; a window set (one channel per CT window,
        :func:`data.parse_windows`) goes in as it is.
        """
        if x.ndim != 4 or x.shape[1] not in (1, self.in_chans):
            raise ValueError(f"{self.model_name} expects a (B, 1, S, S) or (B, {self.in_chans}, S, S) tensor, "
                             f"got shape {tuple(x.shape)}.")
        if self.in_chans != x.shape[1]:
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


#: The ISA flags a choice can depend on, from the oldest to the newest.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _read_cpuinfo(path: str | Path) -> tuple[str | None, set[str]]:
    """Model name and flags of the first processor in ``/proc/cpuinfo`` (``None``, empty set when absent)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None, set()
    model: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        if not line.strip():
            if model is not None or flags:
                break  # first processor block only
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


#: What each ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` cap leaves of the ISA flags (the caps are how
#: one machine is run as an older kind: ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` is an AVX2 CPU).
_ISA_CAPS = {
    "SSE41": (), "AVX": (), "AVX2": ("avx2",), "AVX2_VNNI": ("avx2",), "AVX2_VNNI_2": ("avx2",),
    "AVX512_CORE": ("avx2", "avx512f"), "AVX512_CORE_VNNI": ("avx2", "avx512f"),
    "AVX512_CORE_BF16": ("avx2", "avx512f", "avx512_bf16"), "AVX512_CORE_FP16": ("avx2", "avx512f", "avx512_bf16"),
    "DEFAULT": ("avx2",), "AVX512": ("avx2", "avx512f", "avx512_bf16", "amx_bf16"),
}


def _isa_caps() -> dict[str, str]:
    """The ISA caps set in the environment (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``) that lower the flags."""
    caps = {}
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if onednn in _ISA_CAPS:
        caps["ONEDNN_MAX_CPU_ISA"] = onednn
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().upper()
    if aten in ("DEFAULT", "AVX2", "AVX512"):
        caps["ATEN_CPU_CAPABILITY"] = aten
    return caps


@functools.lru_cache(maxsize=4)
def cpu_capabilities(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """What this CPU can do, for every choice that depends on it (bf16, batch sizes, the benchmarks' records).

    Read from the ``flags`` of ``/proc/cpuinfo`` (Linux); elsewhere from torch's own dispatch level
    (``torch.backends.cpu.get_cpu_capability()``) and its AMX probe. ``ONEDNN_MAX_CPU_ISA`` and
    ``ATEN_CPU_CAPABILITY`` caps in the environment lower the flags to what torch may use (``capped_by``).

    Args:
        cpuinfo: The file to read (tests pass a fixture).

    Returns:
        ``{"model": str, "cores": int, "avx2": bool, "avx512f": bool, "avx512_bf16": bool,
        "amx_bf16": bool, "source": "cpuinfo" | "torch", "capped_by": {variable: value}}``; ``cores`` =
        logical CPUs this process may use.
    """
    model, flags = _read_cpuinfo(cpuinfo)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    caps: dict[str, Any] = {"model": model or platform.processor() or platform.machine() or "unknown CPU",
                            "cores": int(cores)}
    if flags:
        caps.update({flag: flag in flags for flag in _ISA_FLAGS})
        caps["source"] = "cpuinfo"
    else:  # pragma: no cover - macOS / Windows
        try:
            level = str(torch.backends.cpu.get_cpu_capability()).upper()
        except (AttributeError, RuntimeError):
            level = ""
        try:
            amx = bool(torch.cpu._is_amx_tile_supported())
        except (AttributeError, RuntimeError):
            amx = False
        caps.update({"avx2": level.startswith("AVX"), "avx512f": level.startswith("AVX512"),
                     "avx512_bf16": False, "amx_bf16": amx, "source": "torch"})
    limits = _isa_caps()
    for value in limits.values():
        allowed = set(_ISA_CAPS[value])
        for flag in _ISA_FLAGS:
            caps[flag] = bool(caps[flag] and flag in allowed)
    caps["capped_by"] = limits
    return caps


def cpu_kind(caps: dict[str, Any] | None = None) -> str:
    """A short name of the CPU kind: model, newest ISA level, cores, e.g. ``"AMD EPYC (avx512_bf16, 2 cores)"``.

    Results measured on different kinds are kept apart under this name (``benchmarks/results.json``).
    """
    caps = cpu_capabilities() if caps is None else caps
    isa = next((flag for flag in reversed(_ISA_FLAGS) if caps.get(flag)), "sse")
    capped = " capped" if caps.get("capped_by") else ""
    return f"{caps['model']} ({isa}{capped}, {caps['cores']} cores)"


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units: Intel Sapphire Rapids and later)."""
    return bool(cpu_capabilities()["amx_bf16"])


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AMX tiles or AVX512-BF16 dot products (Intel Cooper Lake
    and later, AMD Zen 4 and later).

    On these CPUs bf16 autocast trained ResNets and small CNNs 1.2-2.2x faster in the benchmarks (AMX:
    Intel Xeon; AVX512-BF16: AMD EPYC Zen 4); without them (AVX2, plain AVX-512) oneDNN emulates bf16
    by converting to fp32, which is slower than fp32 itself, so the defaults stay in fp32 there.
    """
    caps = cpu_capabilities()
    return bool(caps["amx_bf16"] or caps["avx512_bf16"])


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


def image_channels(images: Any) -> int:
    """Channels of a batch of cached images: 1 for ``(N, S, S)``, ``C`` for ``(N, C, S, S)`` (a window set)."""
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) == 3:
        return 1
    if len(shape) == 4:
        return int(shape[1])
    raise ValueError(f"images must be (N, S, S) or (N, C, S, S), got shape {shape}.")


def uint8_to_input(x: torch.Tensor) -> torch.Tensor:
    """Cached uint8 images ``(B, S, S)`` or ``(B, C, S, S)`` -> float ``(B, C, S, S)`` in [0, 1] (C = 1 for grey)."""
    x = x.float().div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x
