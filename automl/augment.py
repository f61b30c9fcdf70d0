"""CT-appropriate data augmentation on batched float tensors, on the training device.

Images arrive from the cache as float tensors ``(B, 1, S, S)`` in [0, 1] (already windowed), so there
is no decoding, no PIL and no per-image Python in the training loop: one batch costs one
:func:`torch.nn.functional.affine_grid` / :func:`~torch.nn.functional.grid_sample` call (rotation,
shift, scale and horizontal flip folded into one affine matrix per image) plus a few elementwise ops.

Ranges at ``strength = s`` (``0 <= s <= 1``), drawn independently per image:

==========================  ==============================================================
rotation                    uniform in ``±10·s`` degrees (the literature's ±5–10° is s = 0.5–1)
shift                       uniform in ``±5·s`` % of the image side, per axis
scale                       uniform in ``1 ± 0.1·s``
horizontal flip             probability 0.5 when ``hflip`` (any ``s > 0``)
contrast                    factor uniform in ``1 ± 0.2·s`` around the image mean
brightness                  offset uniform in ``±0.1·s`` (window units)
Gaussian noise              standard deviation uniform in ``[0, 0.03·s]`` (scanner noise)
==========================  ==============================================================

Pixels moved in from outside the image are 0 (air / below the window), and the result is clamped
to [0, 1] because intensities live inside the CT window. ``strength = 0`` is the identity (the input
tensor is returned unchanged, flips included), which is what validation and benchmarks use.

Horizontal flips assume left/right symmetry of the label (true for "stroke vs normal"). They are
**wrong for lateralised tasks** (e.g. "left vs right hemisphere lesion"): pass ``hflip=False``.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(8, 1, 64, 64)
    >>> augment_batch(x, strength=0.5, generator=g).shape
    torch.Size([8, 1, 64, 64])
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentParams", "augment_batch"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentParams:
    """Maximum magnitudes at ``strength = 1``; each is scaled linearly by the strength."""

    rotation_degrees: float = 10.0  # ± degrees
    shift_fraction: float = 0.05  # ± fraction of the image side, per axis
    scale_delta: float = 0.10  # scale in 1 ± delta
    contrast_delta: float = 0.20  # contrast factor in 1 ± delta around the image mean
    brightness_delta: float = 0.10  # additive offset in ± delta
    noise_std: float = 0.03  # Gaussian noise standard deviation drawn from [0, noise_std]
    flip_probability: float = 0.5  # horizontal flip probability when hflip is on


def _uniform(
    n: int, low: float, high: float, *, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def augment_batch(
    x: torch.Tensor,
    *,
    strength: float,
    hflip: bool = True,
    generator: torch.Generator | None = None,
    params: AugmentParams | None = None,
) -> torch.Tensor:
    """Randomly augment a batch of windowed CT images.

    Args:
        x: Float tensor ``(B, 1, H, W)`` (or ``(B, C, H, W)``) with values in [0, 1].
        strength: Overall magnitude in [0, 1]; 0 returns ``x`` itself.
        hflip: Allow horizontal flips (keep ``False`` for lateralised labels).
        generator: Seeded generator on ``x.device`` for reproducible draws; ``None`` uses torch's
            global generator.
        params: Magnitudes at full strength (defaults: :class:`AugmentParams`).

    Returns:
        A new tensor of the same shape, dtype and device, clamped to [0, 1].

    Raises:
        ValueError: If ``strength`` is outside [0, 1] or ``x`` is not a 4-D floating tensor.
    """
    if not (isinstance(strength, (int, float)) and 0.0 <= float(strength) <= 1.0):
        raise ValueError(f"strength must lie in [0, 1], got {strength!r}.")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating tensor of shape (B, C, H, W), got {shape}.")
    if strength == 0.0 or x.shape[0] == 0:
        return x
    if generator is not None and generator.device != x.device:
        raise ValueError(f"generator is on {generator.device} but x is on {x.device}; create it on the same device.")
    p = params or AugmentParams()
    s = float(strength)
    n, device = x.shape[0], x.device

    def u(low: float, high: float) -> torch.Tensor:
        return _uniform(n, low, high, generator=generator, device=device)

    # Geometry: one affine matrix per image mapping output to input coordinates (normalised [-1, 1]).
    angle = u(-1.0, 1.0) * math.radians(p.rotation_degrees * s)
    scale = u(1.0 - p.scale_delta * s, 1.0 + p.scale_delta * s)
    shift = torch.stack([u(-1.0, 1.0), u(-1.0, 1.0)], dim=1) * (2.0 * p.shift_fraction * s)
    flip_draw = u(0.0, 1.0)
    flip = torch.where(flip_draw < p.flip_probability, -1.0, 1.0) if hflip else torch.ones(n, device=device)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Intensity: contrast around the image mean, brightness offset, scanner noise, then the window.
    view = (n, 1, 1, 1)
    contrast = u(1.0 - p.contrast_delta * s, 1.0 + p.contrast_delta * s).view(view).to(x.dtype)
    brightness = u(-p.brightness_delta * s, p.brightness_delta * s).view(view).to(x.dtype)
    sigma = u(0.0, p.noise_std * s).view(view).to(x.dtype)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean).mul_(contrast).add_(mean + brightness)
    noise = torch.randn(out.shape, generator=generator, device=device, dtype=out.dtype)
    out.add_(noise.mul_(sigma))
    return out.clamp_(0.0, 1.0)
