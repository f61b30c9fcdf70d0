"""Model zoo: one registry of deep (timm, simple CNNs) and classical baselines, checkpoints, predictors,
attributions and export.

Public names are imported lazily. See ``docs/ARCHITECTURE.md`` for the contract.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "register_model": "models._registry",
    "list_models": "models._registry",
    "get_model_info": "models._registry",
    "create_model": "models._registry",
    "ModelInfo": "models._registry",
    "PretrainedWeightsUnavailable": "models._pretrained",
    "find_pretrained_weights": "models._pretrained",
    "weights_obtainable": "models._pretrained",
    "is_pretrained_init": "models._inits",
    "extract_features": "models.features",
    "load_backbone": "models.features",
    "FrozenBackbone": "models.features",
    "FeatureHead": "models.frozen",
    "head_from_sklearn": "models.frozen",
    "assemble_lane": "models.frozen",
    "logits_to_probabilities": "models._common",
    "pick_device": "models._common",
    "image_channels": "models._common",
    "uint8_to_input": "models._common",
    "cpu_has_amx": "models._common",
    "cpu_has_native_bf16": "models._common",
    "cpu_capabilities": "models._common",
    "cpu_kind": "models._common",
    "ClassicalModel": "models.classical",
    "save_checkpoint": "models.predictor",
    "load_predictor": "models.predictor",
    "Predictor": "models.predictor",
    "InvalidInputError": "models.predictor",
    "explain": "models.attribution",
    "overlay": "models.attribution",
    "Attribution": "models.attribution",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
