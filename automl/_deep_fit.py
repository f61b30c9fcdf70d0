"""The deep-model engine behind :func:`automl.train.fit_fold`: one fold of a network, epoch by epoch.

See :mod:`automl.train` for the recipe (loss, optimiser, schedule, early stopping, fine-tuning
strategies, head-feature caching, augmentation, determinism).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

import models
from automl._fit_parts import _pos_weight, _to_float, _unweighted_loss, extract_head_inputs, val_auc
from automl.augment import augment_batch
from automl.train_config import FitResult, ReportCallback, TrainConfig, default_amp

__all__ = ["extract_head_inputs", "fit_deep", "val_auc"]

logger = logging.getLogger(__name__)

_DEVICE_DATA_LIMIT_BYTES = 1 << 30



class _Stop(Exception):
    """Raised inside the epoch loop when ``report`` prunes the fit."""


class _DeepFit:
    """State of one deep fit: data on the device, loss, RNGs, best weights and the epoch history."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        num_classes: int,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        device: torch.device,
        report: ReportCallback | None,
    ) -> None:
        Xtr, ytr, Xva, yva = data
        self.model, self.config, self.num_classes, self.device, self.report = model, config, num_classes, device, report
        self.channels_last = (
            config.channels_last
            if config.channels_last is not None
            else models.get_model_info(config.model).prefers_channels_last and device.type in ("cpu", "cuda")
        )
        self.amp = config.amp if config.amp is not None else default_amp(device, config.model)
        fits = Xtr.nbytes + Xva.nbytes <= _DEVICE_DATA_LIMIT_BYTES
        data_device = device if device.type != "cpu" and fits else torch.device("cpu")
        self.Xtr = torch.from_numpy(Xtr).to(data_device)
        self.Xva = torch.from_numpy(Xva).to(data_device)
        self.ytr_np, self.yva_np = ytr, yva
        target_dtype = torch.float32 if num_classes == 2 else torch.long
        self.ytr = torch.from_numpy(ytr).to(device, target_dtype)
        self.yva = torch.from_numpy(yva).to(device)
        if num_classes == 2:
            self.ytr = self.ytr.unsqueeze(1)
        weight = _pos_weight(config, ytr, num_classes)
        weight = weight.to(device) if weight is not None else None
        self.criterion: nn.Module = (
            nn.BCEWithLogitsLoss(pos_weight=weight) if num_classes == 2 else nn.CrossEntropyLoss(weight=weight)
        )
        n = len(Xtr)
        self.batch_size = min(config.batch_size, n)
        # Skip a trailing batch of one image: BatchNorm cannot train on it.
        self.n_per_epoch = n - 1 if n % self.batch_size == 1 and n > 1 else n
        self.eval_batch_size = config.eval_batch_size or min(512, max(64, 2 * config.batch_size))
        self.order_gen = torch.Generator().manual_seed(config.seed)
        self.aug_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.frozen: list[nn.Module] = []  # modules kept in eval mode while frozen (BatchNorm statistics)
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_probs: np.ndarray | None = None
        self.best_epoch = -1
        self.full_images = 0
        self.full_seconds = 0.0
        self.all_images = 0
        self.all_seconds = 0.0

    # -- one epoch of training ------------------------------------------------------------------------

    def _batches(self) -> list[torch.Tensor]:
        perm = torch.randperm(len(self.Xtr), generator=self.order_gen)[: self.n_per_epoch]
        return list(perm.to(self.Xtr.device).split(self.batch_size))

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def _step(
        self, optimizer: torch.optim.Optimizer, forward: Callable[[], torch.Tensor], yb: torch.Tensor
    ) -> torch.Tensor:
        with self._autocast():
            loss = self.criterion(forward(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def train_epoch_full(self, optimizer: torch.optim.Optimizer) -> tuple[float, int, float]:
        """One epoch through the whole network (frozen parts in eval mode); returns (loss, images, seconds)."""
        t0 = time.perf_counter()
        self.model.train()
        for module in self.frozen:
            module.eval()
        total = torch.zeros((), device=self.device)
        strength, config = float(self.config.aug_strength), self.config
        for idx in self._batches():
            xb = _to_float(self.Xtr[idx], self.device, False)
            if strength > 0:
                xb = augment_batch(xb, strength=strength, hflip=config.hflip, generator=self.aug_gen)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = self.ytr[idx.to(self.ytr.device)]
            total += self._step(optimizer, lambda: self.model(xb), yb) * len(idx)
        return float(total) / self.n_per_epoch, self.n_per_epoch, time.perf_counter() - t0

    def train_epoch_head(self, optimizer: torch.optim.Optimizer, features: torch.Tensor) -> tuple[float, int, float]:
        """One epoch of the head alone on cached backbone features."""
        t0 = time.perf_counter()
        head = self.model.head()
        head.train()
        total = torch.zeros((), device=self.device)
        for idx in self._batches():
            idx = idx.to(features.device)
            yb = self.ytr[idx.to(self.ytr.device)]
            total += self._step(optimizer, lambda: head(features[idx]), yb) * len(idx)
        return float(total) / self.n_per_epoch, self.n_per_epoch, time.perf_counter() - t0

    # -- validation -----------------------------------------------------------------------------------

    def _val_logits(self, head_features: torch.Tensor | None) -> torch.Tensor:
        self.model.eval()
        out = []
        # Validation in full precision even when training runs under bf16 autocast: the out-of-fold
        # probabilities (AUCs, thresholds) are then exactly what the returned model predicts, as the
        # predictor serves it in fp32.
        with torch.inference_mode():
            if head_features is not None:
                head = self.model.head()
                for chunk in head_features.split(self.eval_batch_size):
                    out.append(head(chunk).float())
            else:
                for start in range(0, len(self.Xva), self.eval_batch_size):
                    xb = _to_float(self.Xva[start : start + self.eval_batch_size], self.device, self.channels_last)
                    out.append(self.model(xb).float())
        return torch.cat(out)

    def evaluate(self, head_features: torch.Tensor | None = None) -> tuple[np.ndarray, float, float]:
        """Validation probabilities (N, C), loss and AUC; ``head_features`` = cached validation features."""
        logits = self._val_logits(head_features)
        probs = models.logits_to_probabilities(logits, self.num_classes).cpu().numpy().astype(np.float64)
        loss = _unweighted_loss(logits, self.yva, self.num_classes)
        return probs, loss, val_auc(self.yva_np, probs)

    # -- the epoch loop shared by every stage ---------------------------------------------------------

    def run_stage(
        self,
        stage: str | Callable[[], str],
        n_epochs: int,
        optimizer: torch.optim.Optimizer,
        train_epoch: Callable[[], tuple[float, int, float]],
        evaluate: Callable[[], tuple[np.ndarray, float, float]],
        *,
        full_network: bool,
        on_epoch_start: Callable[[int], bool] | None = None,
    ) -> None:
        """Train ``n_epochs`` with scheduler, early stopping and reporting; raises :class:`_Stop` on pruning.

        ``stage`` names the epochs (or is called each epoch for the name). ``on_epoch_start(i)`` may
        change what trains; returning ``True`` resets the patience counter.
        """
        config = self.config
        if config.scheduler == "cosine":
            scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, n_epochs))
        elif config.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.5, patience=max(1, (config.patience or 4) // 2)
            )
        else:
            scheduler = None
        stale = 0
        for i in range(n_epochs):
            if on_epoch_start is not None and on_epoch_start(i):
                stale = 0
            t0 = time.perf_counter()
            lr = float(optimizer.param_groups[0]["lr"])
            train_loss, images, train_seconds = train_epoch()
            probs, val_loss, val_auc = evaluate()
            seconds = time.perf_counter() - t0
            self.all_images += images
            self.all_seconds += train_seconds
            if full_network:
                self.full_images += images
                self.full_seconds += train_seconds
            epoch = len(self.history)
            metrics = {
                "epoch": epoch,
                "stage": stage if isinstance(stage, str) else stage(),
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_auc": val_auc,
                "lr": lr,
                "seconds": seconds,
                "images_per_second": images / train_seconds if train_seconds > 0 else math.inf,
            }
            self.history.append(metrics)
            score = val_auc if math.isfinite(val_auc) else -val_loss
            if score > self.best_score:
                self.best_score, self.best_epoch, self.best_probs = score, epoch, probs
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                stale = 0
            else:
                stale += 1
            logger.debug("epoch %d (%s): %s", epoch, stage, metrics)
            if self.report is not None and self.report(epoch, dict(metrics)):
                logger.info("Fit pruned by the report callback after epoch %d.", epoch)
                raise _Stop
            if scheduler is not None:
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(score)
                else:
                    scheduler.step()
            if config.patience is not None and stale >= config.patience:
                logger.info("Early stopping in stage %s after epoch %d (best epoch %d).", stage, epoch, self.best_epoch)
                break

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    # -- building blocks of the strategies ------------------------------------------------------------

    def optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        cls = torch.optim.AdamW if self.config.optimizer == "adamw" else torch.optim.Adam
        # The fused kernel updates every parameter in one pass instead of PyTorch's default multi-tensor
        # loop: it lifted vit_tiny's training step above the plain loop on the 2-core CPU (training_step
        # benchmark). Same update rule; CPU and CUDA only (MPS support depends on the torch version).
        return cls(groups, lr=groups[0]["lr"], weight_decay=self.config.weight_decay,
                   fused=self.device.type in ("cpu", "cuda"))

    def set_trainable(self, trainable: list[nn.Module] | None) -> None:
        """Freeze every parameter except those of ``trainable`` (``None`` = unfreeze all)."""
        if trainable is None:
            self.model.requires_grad_(True)
            self.frozen = []
            return
        self.model.requires_grad_(False)
        for module in trainable:
            module.requires_grad_(True)
        inside = {id(m) for t in trainable for m in t.modules()}
        self.frozen = [
            m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and id(m) not in inside
        ]

    def train_head(self, n_epochs: int, stage: str) -> None:
        """Head-only epochs: cached features when possible, else the frozen backbone every epoch."""
        head = self.model.head()
        self.set_trainable([head])
        optimizer = self.optimizer([{"params": list(head.parameters()), "lr": self.config.lr}])
        train_feats = val_feats = None
        if self.config.cache_features:
            t0 = time.perf_counter()
            train_feats, val_feats = self._lane_features()
            if train_feats is None:
                options = {"batch_size": self.eval_batch_size, "device": self.device,
                           "channels_last": self.channels_last}
                train_feats = extract_head_inputs(self.model, self.Xtr, **options)
                if train_feats is not None:
                    val_feats = extract_head_inputs(self.model, self.Xva, **options)
            if train_feats is not None:
                logger.info(
                    "Cached frozen-backbone features %s in %.2f s.", tuple(train_feats.shape), time.perf_counter() - t0
                )
        if train_feats is not None and val_feats is not None:
            self.run_stage(
                stage, n_epochs, optimizer,
                lambda: self.train_epoch_head(optimizer, train_feats),
                lambda: self.evaluate(val_feats),
                full_network=False,
            )
        else:
            self.run_stage(
                stage, n_epochs, optimizer, lambda: self.train_epoch_full(optimizer), self.evaluate, full_network=False
            )

    def _lane_features(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The head stage of a pretrained timm model starts from the frozen-feature lane's disk cache
        (:mod:`automl.features`, the same pooled vectors), when it holds the same weights and reproduces
        the model's output on a probe batch; ``(None, None)`` otherwise."""
        from automl.features import feature_cache

        info = models.get_model_info(self.config.model)
        if not info.timm_name or info.head is not None or not models.is_pretrained_init(self.model.init):
            return None, None
        try:
            cache = feature_cache(self.config.model, image_size=int(self.Xtr.shape[-1]), pretrained=self.config.pretrained,
                                  weights_dir=self.config.weights_dir, offline=self.config.offline,
                                  device=str(self.device))
        except Exception as exc:  # noqa: BLE001 - the per-fold extraction below still works
            logger.debug("no feature cache for %s: %s", self.config.model, exc)
            return None, None
        if cache.backbone.init != self.model.init:
            return None, None
        train = torch.from_numpy(cache.features(self.Xtr)).to(self.device)
        probe = _to_float(torch.from_numpy(np.ascontiguousarray(self.Xtr[:4])).to(self.device), self.device,
                          self.channels_last)
        self.model.eval()
        with torch.no_grad():
            same = torch.allclose(self.model.head()(train[:4]).float(), self.model(probe).float(), atol=1e-3, rtol=1e-3)
        if not same:
            return None, None
        return train, torch.from_numpy(cache.features(self.Xva)).to(self.device)

    # -- strategies -----------------------------------------------------------------------------------

    def fit_full(self, n_epochs: int, lr: float, stage: str = "full") -> None:
        self.set_trainable(None)
        optimizer = self.optimizer([{"params": [p for p in self.model.parameters()], "lr": lr}])
        self.run_stage(
            stage, n_epochs, optimizer, lambda: self.train_epoch_full(optimizer), self.evaluate, full_network=True
        )

    def fit_two_stage(self) -> None:
        epochs = self.config.epochs
        head_epochs = max(1, round(epochs * self.config.head_fraction)) if epochs > 1 else 1
        self.train_head(head_epochs, "head")
        if epochs - head_epochs > 0:
            self.restore_best()
            self.fit_full(epochs - head_epochs, self.config.lr * self.config.unfreeze_lr_factor, stage="unfrozen")

    def fit_gradual(self) -> None:
        stages = list(self.model.stages())
        head = self.model.head()
        if stages and stages[-1] is head:
            stages = stages[:-1]
        epochs, config = self.config.epochs, self.config
        n_phases = len(stages) + 1
        phase_len = max(1, epochs // n_phases)
        head_epochs = min(phase_len, epochs)
        self.train_head(head_epochs, "gradual_0")
        remaining = epochs - head_epochs
        if remaining <= 0:
            return
        self.restore_best()
        # Parameter groups: head at lr, the k-th stage below the head at lr * decay**k; parameters in no
        # stage (none for the models of the zoo) join the first stage.
        seen = {id(p) for p in head.parameters()}
        groups = [{"params": list(head.parameters()), "lr": config.lr}]
        stage_groups: list[tuple[nn.Module, list[nn.Parameter]]] = []
        for k, module in enumerate(reversed(stages), start=1):
            params = [p for p in module.parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            stage_groups.append((module, params))
            groups.append({"params": params, "lr": config.lr * config.layer_decay**k})
        rest = [p for p in self.model.parameters() if id(p) not in seen]
        if rest and stage_groups:
            stage_groups[-1][1].extend(rest)
            groups[-1]["params"].extend(rest)
        groups = [g for g in groups if g["params"]]
        optimizer = self.optimizer(groups)
        n_unfrozen = 0  # backbone stages unfrozen so far, counted from the head

        def on_epoch_start(i: int) -> bool:
            # Phase k >= 1 (k stages unfrozen) starts at epoch (k - 1) * phase_len of this loop.
            nonlocal n_unfrozen
            target = min(len(stage_groups), 1 + i // phase_len)
            if target == n_unfrozen:
                return False
            n_unfrozen = target
            self.set_trainable([head] + [module for module, _ in stage_groups[:n_unfrozen]])
            for _, params in stage_groups[:n_unfrozen]:
                for p in params:
                    p.requires_grad_(True)
            logger.info("gradual: %d of %d backbone stages unfrozen.", n_unfrozen, len(stage_groups))
            return True

        self.run_stage(
            lambda: f"gradual_{n_unfrozen}", remaining, optimizer, lambda: self.train_epoch_full(optimizer),
            self.evaluate, full_network=True, on_epoch_start=on_epoch_start,
        )


def fit_deep(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    config: TrainConfig,
    num_classes: int,
    report: ReportCallback | None,
    t_start: float,
) -> FitResult:
    device = models.pick_device(config.device)
    image_size = int(data[0].shape[-1])
    torch.manual_seed(config.seed)
    model = models.create_model(
        config.model,
        num_classes=num_classes,
        image_size=image_size,
        in_chans=models.image_channels(data[0]),
        pretrained=config.pretrained,
        weights_dir=config.weights_dir,
        offline=config.offline,
    )
    init = str(getattr(model, "init", "random"))
    finetune = config.finetune
    if finetune != "full" and not models.is_pretrained_init(init):
        logger.info("finetune=%r needs an ImageNet-initialised model; %s has init=%r, using 'full'.",
                    finetune, config.model, init)
        finetune = "full"
    model = model.to(device)
    fit = _DeepFit(model, config, num_classes, data, device, report)
    if fit.channels_last:
        model.to(memory_format=torch.channels_last)
    pruned = False
    try:
        if finetune == "full":
            fit.fit_full(config.epochs, config.lr)
        elif finetune == "two_stage":
            fit.fit_two_stage()
        else:
            fit.fit_gradual()
    except _Stop:
        pruned = True
    fit.restore_best()
    model.requires_grad_(True)
    if fit.channels_last:
        model.to(memory_format=torch.contiguous_format)  # safetensors needs contiguous weights
    model.eval()
    assert fit.best_probs is not None  # at least one epoch always runs
    if fit.full_seconds > 0:
        ips = fit.full_images / fit.full_seconds
    else:
        ips = fit.all_images / fit.all_seconds if fit.all_seconds > 0 else math.nan
    return FitResult(
        model=model,
        init=init,
        history=fit.history,
        best_epoch=fit.best_epoch,
        best_metrics=dict(fit.history[fit.best_epoch]),
        val_probabilities=fit.best_probs,
        fit_seconds=time.perf_counter() - t_start,
        images_per_second=ips,
        pruned=pruned,
        finetune_used=finetune,
        device=str(device),
        precision="bf16" if fit.amp else "fp32",
    )
