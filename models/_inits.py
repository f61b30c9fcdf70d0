"""The ``init`` strings a deep model, its card and its leaderboard row carry (no torch import).

``init`` says where a model's starting weights came from: ``"random"``, or ImageNet weights from the
Hugging Face hub (its cache, the torch hub cache, or a download through timm), a local file
(``weights_dir`` / ``$STROKECT_WEIGHTS``) or a pip package that ships them. ``"imagenet"`` alone is
what checkpoints saved before the source was recorded carry; it is still read.
"""
from __future__ import annotations

__all__ = ["INITS", "PRETRAINED_INITS", "is_pretrained_init"]

PRETRAINED_INITS = ("imagenet:hub", "imagenet:local", "imagenet:package", "imagenet")
INITS = (*PRETRAINED_INITS, "random")


def is_pretrained_init(init: object) -> bool:
    """Whether a model's ``init`` (or a card's / trial's ``"init"``) means it started from ImageNet weights.

    True for ``"imagenet:hub"``, ``"imagenet:local"``, ``"imagenet:package"`` and the legacy ``"imagenet"``;
    False for ``"random"``, ``"none"`` (classical models), ``None`` and anything else.
    """
    return isinstance(init, str) and init in PRETRAINED_INITS
