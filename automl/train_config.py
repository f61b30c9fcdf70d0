"""What one fold fit is asked to do (:class:`TrainConfig`) and what it returns (:class:`FitResult`)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models

__all__ = ["FitResult", "ReportCallback", "TrainConfig", "default_amp"]

ReportCallback = Callable[[int, dict[str, Any]], "bool | None"]

_OPTIMIZERS = ("adamw", "adam")
_SCHEDULERS = ("cosine", "plateau", "none")
_FINETUNES = ("full", "two_stage", "gradual")
_PRETRAINED = ("no", "yes", "auto")
_GAMMA_NAMES = ("scale", "auto")
#: Fold arrays up to this size are moved to the accelerator once; larger ones are copied per batch.
_DEVICE_DATA_LIMIT_BYTES = 1 << 30


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass
class TrainConfig:
    """Everything that decides how one model is trained on one fold.

    Saved with every result (``to_dict()``) so any number can be traced back to its configuration.
    ``hflip`` is on by default (stroke vs normal is left/right symmetric); it is wrong for lateralised
    tasks such as left- vs right-hemisphere lesions, where it must be set to ``False``.

    Raises:
        ValueError: On any invalid field, naming the field and the value.
    """

    model: str = "simple_cnn"  # registry name, see models.list_models()
    lr: float = 3e-4  # peak learning rate (search range 1e-5 .. 1e-3); must be > 0
    batch_size: int = 32  # training mini-batch (capped by the training-set size)
    epochs: int = 10  # maximum epochs (early stopping may end sooner)
    weight_decay: float = 1e-4  # decoupled for AdamW, L2 for Adam
    optimizer: str = "adamw"  # "adamw" | "adam"
    scheduler: str = "cosine"  # "cosine" (per epoch) | "plateau" (on val AUC) | "none"
    finetune: str = "full"  # "full" | "two_stage" | "gradual" (pretrained models only)
    aug_strength: float = 0.5  # 0 = no augmentation at all (flips included) .. 1 = strongest
    # Horizontal flips assume left/right symmetry of the label: right for stroke vs normal,
    # WRONG for lateralised tasks (e.g. left- vs right-hemisphere lesions) -> set False.
    hflip: bool = True
    patience: int | None = 5  # epochs without val-AUC improvement before stopping; None = never stop early
    pos_weight: float | str | None = None  # None | "balanced" | float > 0 (binary positive-class weight)
    pretrained: str = "auto"  # "no" | "yes" | "auto" (ImageNet weights if available, else random init)
    weights_dir: str | None = None  # folder with <timm_name>.safetensors|.pth (else $STROKECT_WEIGHTS / hub cache)
    offline: bool = False  # never download ImageNet weights (also when $HF_HUB_OFFLINE=1)
    seed: int = 0  # weight init, data order, augmentation, dropout
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"
    C: float = 1.0  # inverse regularisation strength of the classical baselines
    gamma: float | str = "scale"  # RBF kernel width of svm_rbf: float > 0 | "scale" | "auto"
    n_neighbors: int = 15  # k of the frozen-feature lane's knn head
    # None = auto: on for convolutional models (ModelInfo.prefers_channels_last) on CPU and CUDA (not measured on MPS)
    channels_last: bool | None = None
    num_threads: int | None = None  # torch intra-op threads during the fit; None = leave torch's setting
    eval_batch_size: int | None = None  # validation batch; None = max(64, 2 * batch_size), at most 512
    head_fraction: float = 1.0 / 3.0  # two_stage: share of the epochs that train only the head
    unfreeze_lr_factor: float = 0.1  # two_stage: stage-2 learning rate = lr * this
    layer_decay: float = 0.5  # gradual: learning-rate multiplier per stage below the head
    cache_features: bool = True  # head-only epochs reuse frozen-backbone features computed once per fold
    # bf16 autocast; None = auto: on for CUDA with bf16 support, and on a CPU with native bf16 (AMX or
    # AVX512-BF16: models.cpu_has_native_bf16) for the models whose
    # ModelInfo.trains_in_bf16_on_cpu says it was measured faster without changing the AUCs (CNNs, ResNets)
    amp: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty registry name, got {self.model!r}.")
        if not _is_number(self.lr) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}.")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}.")
        if not _is_int(self.epochs) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}.")
        if not _is_number(self.weight_decay) or not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}.")
        for name, allowed in (
            ("optimizer", _OPTIMIZERS),
            ("scheduler", _SCHEDULERS),
            ("finetune", _FINETUNES),
            ("pretrained", _PRETRAINED),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if not _is_number(self.aug_strength) or not 0.0 <= self.aug_strength <= 1.0:
            raise ValueError(f"aug_strength must lie in [0, 1], got {self.aug_strength!r}.")
        if not isinstance(self.hflip, bool):
            raise ValueError(f"hflip must be True or False, got {self.hflip!r}.")
        if self.patience is not None and (not _is_int(self.patience) or self.patience < 1):
            raise ValueError(f"patience must be None or an integer >= 1, got {self.patience!r}.")
        if self.pos_weight is not None and self.pos_weight != "balanced":
            if not _is_number(self.pos_weight) or not math.isfinite(self.pos_weight) or self.pos_weight <= 0:
                raise ValueError(f"pos_weight must be None, 'balanced' or a number > 0, got {self.pos_weight!r}.")
        if self.weights_dir is not None:
            if not isinstance(self.weights_dir, (str, Path)):
                raise ValueError(f"weights_dir must be a folder path or None, got {self.weights_dir!r}.")
            self.weights_dir = str(self.weights_dir)
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}.")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        if not _is_number(self.C) or not math.isfinite(self.C) or self.C <= 0:
            raise ValueError(f"C must be a finite number > 0, got {self.C!r}.")
        if self.gamma not in _GAMMA_NAMES and (
            not _is_number(self.gamma) or not math.isfinite(self.gamma) or self.gamma <= 0
        ):
            raise ValueError(f"gamma must be a number > 0, 'scale' or 'auto', got {self.gamma!r}.")
        for name in ("channels_last", "amp"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} must be None (auto), True or False, got {getattr(self, name)!r}.")
        if self.num_threads is not None and (not _is_int(self.num_threads) or self.num_threads < 1):
            raise ValueError(f"num_threads must be None or an integer >= 1, got {self.num_threads!r}.")
        if self.eval_batch_size is not None and (not _is_int(self.eval_batch_size) or self.eval_batch_size < 1):
            raise ValueError(f"eval_batch_size must be None or an integer >= 1, got {self.eval_batch_size!r}.")
        if not _is_number(self.head_fraction) or not 0.0 < self.head_fraction < 1.0:
            raise ValueError(f"head_fraction must lie in (0, 1), got {self.head_fraction!r}.")
        if not _is_number(self.unfreeze_lr_factor) or not 0.0 < self.unfreeze_lr_factor <= 1.0:
            raise ValueError(f"unfreeze_lr_factor must lie in (0, 1], got {self.unfreeze_lr_factor!r}.")
        if not _is_number(self.layer_decay) or not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must lie in (0, 1], got {self.layer_decay!r}.")
        if not _is_int(self.n_neighbors) or self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be an integer >= 1, got {self.n_neighbors!r}.")
        if not isinstance(self.offline, bool):
            raise ValueError(f"offline must be True or False, got {self.offline!r}.")
        if not isinstance(self.cache_features, bool):
            raise ValueError(f"cache_features must be True or False, got {self.cache_features!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: On unknown keys (naming them) or invalid values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**values)


def default_amp(device: torch.device, model_name: str) -> bool:
    """``TrainConfig.amp=None``: bf16 autocast on CUDA with bf16 support, and on a CPU that computes bf16
    natively (AMX or AVX512-BF16, :func:`models.cpu_has_native_bf16`) for the architectures that train
    faster that way (:attr:`models.ModelInfo.trains_in_bf16_on_cpu`). CPUs without native bf16 (AVX2,
    plain AVX-512) emulate it more slowly than fp32, so they train in fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return models.get_model_info(model_name).trains_in_bf16_on_cpu and models.cpu_has_native_bf16()
    return False


@dataclass
class FitResult:
    """What :func:`fit_fold` returns.

    Attributes:
        model: The trained model with its best-epoch weights, in eval mode (a ``StrokeNet`` on the
            training device, or a classical model).
        init: ``"imagenet:local"`` / ``"imagenet:package"`` / ``"imagenet:hub"`` (where the ImageNet weights came from) or ``"random"`` for deep models (the init actually used), ``"none"`` for
            classical ones.
        history: One dict per epoch: ``epoch`` (0-based, continuous across stages), ``stage``
            (``"full"``, ``"head"``, ``"unfrozen"`` or ``"gradual_<k>"``), ``train_loss``, ``val_loss``,
            ``val_auc``, ``lr`` (of the head's parameter group), ``seconds`` (the whole epoch), and
            ``images_per_second`` (training images per second of the epoch's training part).
        best_epoch: Index of the epoch whose weights were kept.
        best_metrics: The history entry of ``best_epoch``.
        val_probabilities: ``(N_val, C)`` float probabilities of the best epoch.
        fit_seconds: Wall time of the whole fit (model creation to restored best weights).
        images_per_second: Training images per second over the epochs that ran the whole network
            (training steps only, validation excluded); over all epochs when none did (head-only or
            classical fits).
        pruned: ``True`` when ``report`` asked to stop.
        finetune_used: The strategy actually applied (``"full"`` whenever the init is random).
        device: The device trained on.
        precision: ``"bf16"`` when the fit ran under bf16 autocast (``TrainConfig.amp``), else ``"fp32"``.
    """

    model: Any
    init: str
    history: list[dict[str, Any]]
    best_epoch: int
    best_metrics: dict[str, Any]
    val_probabilities: np.ndarray
    fit_seconds: float
    images_per_second: float
    pruned: bool = False
    finetune_used: str = "full"
    device: str = "cpu"
    precision: str = "fp32"

