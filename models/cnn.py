"""Small CNN baselines trained from scratch, as in the CT classification papers.

``simple_cnn``: five Conv3x3-BatchNorm-ReLU-MaxPool blocks (32-64-128-256-256 channels), global average
pooling and a 256-unit fully connected head with dropout — the from-scratch baseline the stroke-CT
literature compares transfer learning against. ``tiny_cnn``: three blocks (16-32-64), for quick runs and
tiny data sets.

Both take ``in_chans=1`` grey input; the :class:`~models._common.StrokeNet` wrapper normalises it as
``(x - 0.5) / 0.25``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models._common import RANDOM_INIT_MEAN, RANDOM_INIT_STD, StrokeNet, num_outputs
from models._registry import register_model

__all__ = ["GRADCAM_MIN_SIDE", "ConvBlock", "SimpleCNN", "gradcam_block_index"]

# Search ranges read by automl.space (see models/timm_models.py); these models always start from random init.
_CNN_PARAM_SPACE = {
    "lr": {"low": 1e-4, "high": 1e-3, "log": True, "default": 9.5e-4},
    "weight_decay": {"low": 1e-6, "high": 1e-3, "log": True},
}


class ConvBlock(nn.Module):
    """Conv3x3 (no bias) -> BatchNorm -> ReLU -> MaxPool2d(2)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        # Not in-place: Captum hooks this module's output for Grad-CAM.
        self.act = nn.ReLU(inplace=False)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))

    def fuse_batchnorm_(self) -> bool:
        """Fold the (eval-mode) BatchNorm into the convolution, in place, for inference.

        The block computes the same function (up to float rounding) with one operation less; it can
        no longer train its BatchNorm statistics. Used by :class:`models.predictor.Predictor`
        (the inference benchmark's one-image calls of the small CNNs).

        Returns:
            Whether a BatchNorm was folded (``False`` when it already was).

        Raises:
            RuntimeError: If the block is in training mode.
        """
        if not isinstance(self.bn, nn.BatchNorm2d):
            return False
        if self.training:
            raise RuntimeError("fuse_batchnorm_() needs the block in eval mode (call model.eval() first).")
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        self.conv = fuse_conv_bn_eval(self.conv, self.bn)
        self.bn = nn.Identity()
        return True


class SimpleCNN(nn.Module):
    """Plain VGG-style CNN: ``len(channels)`` :class:`ConvBlock` s, global average pooling, MLP head.

    Args:
        num_classes: Number of output logits.
        in_chans: Input channels.
        channels: Output channels of each block (each block halves the resolution).
        hidden: Units of the hidden fully connected layer (0: linear head).
        drop_rate: Dropout before the last linear layer.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_chans: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256, 256),
        hidden: int = 256,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one block.")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}.")
        chs = [in_chans, *channels]
        self.blocks = nn.Sequential(*(ConvBlock(a, b) for a, b in zip(chs[:-1], chs[1:])))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = chs[-1]
        layers: list[nn.Module] = [nn.Flatten()]
        width = self.num_features
        if hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers += [nn.Dropout(drop_rate), nn.Linear(width, num_classes)]
        self.head = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.global_pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cnn_stages(backbone: SimpleCNN) -> list[nn.Module]:
    return [*backbone.blocks, backbone.head]


def _cnn_head(backbone: SimpleCNN) -> nn.Module:
    return backbone.head


#: Smallest side of the Grad-CAM map of the small CNNs (see :func:`_cnn_gradcam_layer`).
GRADCAM_MIN_SIDE = 16


def gradcam_block_index(num_blocks: int, image_size: int, min_side: int = GRADCAM_MIN_SIDE) -> int:
    """Index of the block whose activation Grad-CAM hooks: the deepest one whose map is at least
    ``min_side`` pixels wide at ``image_size`` (block ``i`` sees ``image_size / 2**i`` pixels, before
    its pooling), or the first block when even that is smaller.

    Why not the last block: at the 32–64 px these CNNs are trained on here, the last block of
    ``simple_cnn`` is 2×2–4×4, too coarse to say where a lesion is (one cell covers a quarter of the
    brain). With ``min_side=16`` both CNNs use block 3 at 64 px (16×16 map, stride 4), ``simple_cnn``
    uses block 4 at 128–224 px (16×16–28×28), i.e. still a deep, class-specific layer.
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}.")
    index = 0
    for i in range(num_blocks):
        if image_size // 2**i >= min_side:
            index = i
    return index


def _cnn_gradcam_layer(model: Any) -> nn.Module:
    backbone = getattr(model, "backbone", model)
    image_size = int(getattr(model, "image_size", 0) or 64)
    return backbone.blocks[gradcam_block_index(len(backbone.blocks), image_size)].act


def _build_cnn(
    name: str,
    channels: Sequence[int],
    *,
    num_classes: int,
    image_size: int,
    drop_rate: float = 0.5,
    in_chans: int = 1,
    _layout: str = "random",
    **kwargs: Any,
) -> StrokeNet:
    if kwargs:
        raise ValueError(f"Unknown option(s) for {name!r}: {sorted(kwargs)}. Supported: drop_rate.")
    backbone = SimpleCNN(num_outputs(num_classes), in_chans=in_chans, channels=channels, drop_rate=drop_rate)
    return StrokeNet(
        backbone,
        model_name=name,
        num_classes=num_classes,
        image_size=image_size,
        init="random",
        mean=[RANDOM_INIT_MEAN] * in_chans,
        std=[RANDOM_INIT_STD] * in_chans,
        stage_fn=_cnn_stages,
        head_fn=_cnn_head,
    )


@register_model(
    family="cnn",
    default_image_size=128,
    min_image_size=32,
    param_space=_CNN_PARAM_SPACE,
    gradcam_fn=_cnn_gradcam_layer,
    description="5-block Conv-BN-ReLU-MaxPool CNN (32-64-128-256-256) + 256-unit dropout head, from scratch",
)
def simple_cnn(*, num_classes: int, image_size: int, pretrained: str, weights_dir: Any = None, **kwargs: Any) -> StrokeNet:
    """The CT-paper baseline CNN trained from scratch (``pretrained`` "auto" means random init)."""
    return _build_cnn("simple_cnn", (32, 64, 128, 256, 256), num_classes=num_classes, image_size=image_size, **kwargs)


@register_model(
    family="cnn",
    default_image_size=64,
    min_image_size=8,
    param_space=_CNN_PARAM_SPACE,
    gradcam_fn=_cnn_gradcam_layer,
    description="3-block Conv-BN-ReLU-MaxPool CNN (16-32-64) + 256-unit dropout head, from scratch",
)
def tiny_cnn(*, num_classes: int, image_size: int, pretrained: str, weights_dir: Any = None, **kwargs: Any) -> StrokeNet:
    """A smaller from-scratch CNN for quick runs (``pretrained`` "auto" means random init)."""
    return _build_cnn("tiny_cnn", (16, 32, 64), num_classes=num_classes, image_size=image_size, **kwargs)
