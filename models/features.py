"""Frozen backbone features: global-pooled embeddings of grey slices from a registered timm model, no training.

The frozen-features lane of the search fits a small classifier on these vectors; caching them on disk
belongs to that caller (``automl``), this module stays pure.

Example:
    >>> import models
    >>> backbone = models.load_backbone("resnet18", image_size=128, pretrained="auto")
    >>> backbone.init            # "imagenet:hub" / "imagenet:local" / "imagenet:package" / "random"
    >>> X = backbone.extract(images_uint8, batch_size=32, flip_tta=True)   # (N, backbone.num_features)
    >>> X = models.extract_features("resnet18", images_uint8, pretrained="auto")  # the same in one call

The input passes the model wrapper's own normalisation (grey replicated to 3 channels, the weights'
mean/std), then ``forward_features`` and ``forward_head(pre_logits=True)``: the pooled vector the
classifier would see. Eval mode, fp32, ``torch.inference_mode``, ``channels_last`` for the
convolutional families (:attr:`models.ModelInfo.prefers_channels_last`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models._common import pick_device, uint8_to_input

__all__ = ["FrozenBackbone", "extract_features", "load_backbone"]

logger = logging.getLogger(__name__)


class FrozenBackbone:
    """A registered timm model, frozen, that turns ``uint8 (N, S, S)`` images into ``(N, D)`` features.

    Build it with :func:`load_backbone`.

    Attributes:
        model: The :class:`~models._common.StrokeNet` (eval mode, no gradients, on :attr:`device`).
        model_name: Registry name.
        init: Where its weights came from (``"imagenet:hub"``, ``"imagenet:local"``, ``"imagenet:package"``
            or ``"random"``); the features are only as useful as this.
        image_size: The side length ``S`` it takes.
        num_features: ``D``, the length of one feature vector.
        device: The torch device it runs on.
        channels_last: Whether weights and inputs use ``torch.channels_last``.
    """

    def __init__(self, model: Any, *, device: torch.device, channels_last: bool) -> None:
        self.model = model.eval().float().requires_grad_(False).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model_name: str = model.model_name
        self.init: str = model.init
        self.image_size: int = model.image_size
        self.num_features: int = int(model.backbone.num_features)
        self.device = device
        self.channels_last = channels_last

    def __repr__(self) -> str:
        return (f"FrozenBackbone(model={self.model_name!r}, init={self.init!r}, image_size={self.image_size}, "
                f"num_features={self.num_features}, device={str(self.device)!r})")

    def _check_images(self, images: Any) -> np.ndarray:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4) \
                or images.ndim == 4 and images.shape[1] not in (1, 3):
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise ValueError(f"images must be a uint8 array (N, S, S) or (N, 3, S, S) (a window set), got {got}.")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images must be {self.image_size}x{self.image_size} for this {self.model_name} backbone, "
                f"got {images.shape[-2]}x{images.shape[-1]}."
            )
        return images

    def _features(self, batch: np.ndarray) -> torch.Tensor:
        x = uint8_to_input(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        x = self.model.normalize(x)
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        backbone = self.model.backbone
        return backbone.forward_head(backbone.forward_features(x), pre_logits=True).float()

    def extract(self, images: np.ndarray, *, batch_size: int = 32, flip_tta: bool = False) -> np.ndarray:
        """Global-pooled features of ``images``.

        Args:
            images: ``uint8 (N, S, S)`` with ``S == image_size``.
            batch_size: Images per forward pass.
            flip_tta: Average the features of each image and of its horizontal mirror.

        Returns:
            ``float32 (N, num_features)``, rows in input order.

        Raises:
            ValueError: For images of the wrong type, dtype, shape or size, or a non-positive batch size.
        """
        images = self._check_images(images)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        out = np.empty((len(images), self.num_features), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                feats = self._features(batch)
                if flip_tta:
                    feats = (feats + self._features(batch[..., ::-1])) / 2  # mirror the columns
                out[start : start + len(batch)] = feats.cpu().numpy()
        return out


def load_backbone(
    model_name: str,
    *,
    image_size: int,
    pretrained: str | bool = "auto",
    weights_dir: str | Path | None = None,
    offline: bool = False,
    device: str | torch.device = "auto",
) -> FrozenBackbone:
    """Build a registered timm model as a :class:`FrozenBackbone`.

    Args:
        model_name: A registered model with a timm backbone (``resnet18``, ``efficientnet_lite0``, ``vit_tiny`` ...).
        image_size: Side length of the images it will take.
        pretrained: ``"auto"``, ``"yes"`` or ``"no"``, as for :func:`models.create_model`.
        weights_dir: Folder with local weight files.
        offline: Never download weights.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` (see :func:`models.pick_device`).

    Raises:
        ValueError: For a model without a timm backbone, or an invalid argument.
        PretrainedWeightsUnavailable: ``pretrained="yes"`` and no weights could be found.
    """
    from models._registry import create_model, get_model_info

    info = get_model_info(model_name)
    if info.timm_name is None:
        raise ValueError(f"{model_name!r} has no timm backbone to extract features from; use a model with "
                         f"ImageNet weights (resnet18, efficientnet_b0, efficientnet_lite0, vit_tiny, vit_small).")
    # 3 input channels whatever the init: an ImageNet backbone has them, and a random one then takes grey
    # images (replicated) and window sets alike
    model = create_model(model_name, num_classes=2, image_size=image_size, pretrained=pretrained,
                         weights_dir=weights_dir, offline=offline, in_chans=3)
    return FrozenBackbone(model, device=pick_device(device), channels_last=info.prefers_channels_last)


def extract_features(
    model_name: str,
    images: np.ndarray,
    *,
    pretrained: str | bool = "auto",
    weights_dir: str | Path | None = None,
    offline: bool = False,
    batch_size: int = 32,
    flip_tta: bool = False,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Global-pooled backbone features of ``images`` (builds the backbone, then :meth:`FrozenBackbone.extract`).

    Use :func:`load_backbone` instead to learn the ``init`` first or to reuse the model across calls.

    Args:
        model_name: A registered model with a timm backbone.
        images: ``uint8 (N, S, S)``; ``S`` is the image size the backbone is built for.
        pretrained: ``"auto"``, ``"yes"`` or ``"no"``.
        weights_dir: Folder with local weight files.
        offline: Never download weights.
        batch_size: Images per forward pass.
        flip_tta: Average the features of each image and of its horizontal mirror.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.

    Returns:
        ``float32 (N, D)``.

    Raises:
        ValueError: For a model without a timm backbone, or invalid images or arguments.
        PretrainedWeightsUnavailable: ``pretrained="yes"`` and no weights could be found.
    """
    if not isinstance(images, np.ndarray) or images.ndim not in (3, 4):
        got = f"shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 array (N, S, S) or (N, C, S, S), got {got}.")
    backbone = load_backbone(model_name, image_size=int(images.shape[-1]), pretrained=pretrained,
                             weights_dir=weights_dir, offline=offline, device=device)
    return backbone.extract(images, batch_size=batch_size, flip_tta=flip_tta)
