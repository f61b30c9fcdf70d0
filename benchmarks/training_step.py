"""Benchmark 2, training step: our fold trainer vs a plain hand-written PyTorch loop, and distance to peak.

For each model (``resnet18``, ``efficientnet_b0``, ``vit_tiny``, ``simple_cnn``; random init, one
input channel, one logit) at ``size`` px:

* ours: :func:`automl.train.fit_fold` with ``aug_strength=0`` (the baseline does not augment either),
  ``scheduler="none"``, no early stopping; images/s of each epoch's training part as the engine
  reports it (``FitResult.history[i]["images_per_second"]``, validation excluded);
* baseline: the loop everybody writes: the same ``models.create_model`` module, the whole training
  set as one float tensor prepared in advance, a shuffled index per epoch,
  ``forward -> BCEWithLogitsLoss -> zero_grad -> backward -> AdamW.step``; images/s of each epoch.

Same model, image size, batch size, number of steps per epoch and threads. The first epoch of each
side is a warm-up; the figure is the median over the remaining epochs (pooled over ``rounds``
rounds; even rounds run engine -> loop, odd rounds loop -> engine, so a drifting machine speed
favours neither side). Target: ratio >= 0.95.

Achieved GFLOP/s = training FLOPs per image x images/s, with training FLOPs = 3 x the forward FLOPs
counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, 2 FLOPs per
multiply-add; see :func:`training_flops` for why the backward is not counted directly), reported
against the CPU's estimated fp32 peak for the threads used (see :mod:`benchmarks._common`).

The engine steps a fused AdamW (one kernel for all parameters; the plain loop uses PyTorch's
default), trains convolutional models in ``channels_last`` by default
(:attr:`models.ModelInfo.prefers_channels_last`) and CNNs/ResNets under bf16 autocast on a CPU with
AMX (:attr:`models.ModelInfo.trains_in_bf16_on_cpu`), both chosen from this benchmark's variants; the
record compares it with the plain fp32 loop everybody writes (contiguous), and
``details.ratio_same_format`` with the hand loop in the engine's memory format, precision and fused AdamW (the
overhead of the engine itself).

Variants (``variant_models``): the engine with ``channels_last=True`` against ``channels_last=False``,
the engine with ``amp=True`` (bf16 autocast) against ``amp=False``, the hand loop under ``torch.compile`` (inductor)
against the plain hand loop, and (``all_cores``, only when the run uses fewer threads than cores) the
engine with ``num_threads = os.cpu_count()`` against the engine at the run's thread count. The
engine's defaults are not changed here; the records say which wins.

Run alone: ``python -m benchmarks --only training_step``.
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks._common import Record, machine_info, make_record

__all__ = ["Settings", "run", "settings", "training_flops"]

logger = logging.getLogger(__name__)

NAME = "training_step"


@dataclass
class Settings:
    models: tuple[str, ...] = ("resnet18", "efficientnet_b0", "vit_tiny", "simple_cnn")
    size: int = 128
    batch_size: int = 16
    steps_per_epoch: int = 3
    epochs: int = 3  # the first is a warm-up
    variant_models: tuple[str, ...] = ("resnet18", "efficientnet_b0", "simple_cnn")
    variants: tuple[str, ...] = ("channels_last", "bf16", "compile", "all_cores")
    rounds: int = 4  # rounds per model (ABBA order, see _round); epochs pooled over rounds


def settings(mode: str) -> Settings:
    """``"full"`` or ``"quick"`` settings (quick: resnet18 and simple_cnn at 64 px, 2 steps, 2 epochs, no variants)."""
    if mode == "full":
        return Settings()
    if mode == "quick":
        return Settings(models=("resnet18", "simple_cnn"), size=64, batch_size=16, steps_per_epoch=2, epochs=2,
                        variant_models=(), variants=(), rounds=1)
    raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}.")


def _data(n_train: int, n_val: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(n_train + n_val, size, size), dtype=np.uint8)
    y = np.tile([0, 1], (n_train + n_val + 1) // 2)[: n_train + n_val].astype(np.int64)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def training_flops(model: Any, x: Any) -> dict[str, int]:
    """FLOPs of one training step of ``model`` on the batch ``x``.

    Returns ``forward`` (counted by ``FlopCounterMode``: convolutions and matmuls, 2 FLOPs per
    multiply-add), ``estimate = 3 * forward`` (the backward pass costs about twice the forward: one
    product for the input gradient, one for the weight gradient) and ``counted_forward_backward``
    (FlopCounterMode over forward + backward). The estimate is what the GFLOP/s figures use: torch's
    counter charges ``convolution_backward`` of grouped/depthwise convolutions as if they were dense
    (e.g. about 40x the real work for EfficientNet-B0's depthwise layers), while for dense networks
    the counted figure and the estimate agree within a few per cent (ResNet-18: 2.98x forward).
    """
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    forward = FlopCounterMode(display=False)
    with forward:
        model(x)
    both = FlopCounterMode(display=False)
    with both:
        out = model(x)
        out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    fwd = int(forward.get_total_flops())
    return {"forward": fwd, "estimate": 3 * fwd, "counted_forward_backward": int(both.get_total_flops())}


def _engine(model_name: str, data, cfg: Settings, **overrides: Any) -> dict[str, Any]:
    from automl.train import TrainConfig, fit_fold

    config = TrainConfig(model=model_name, lr=1e-4, batch_size=cfg.batch_size, epochs=cfg.epochs, aug_strength=0.0,
                         scheduler="none", patience=None, pretrained="no", device="cpu", seed=0, **overrides)
    result = fit_fold(*data, config=config, num_classes=2)
    per_epoch = [float(h["images_per_second"]) for h in result.history]
    timed = per_epoch[1:] or per_epoch
    return {"ips": statistics.median(timed), "epochs_ips": per_epoch, "fit_seconds": result.fit_seconds}


def _hand_loop(model_name: str, data, cfg: Settings, *, compile_model: bool = False,
               channels_last: bool = False, amp: bool = False, fused: bool = False) -> dict[str, Any]:
    import models
    import torch

    Xtr, ytr, _, _ = data
    torch.manual_seed(0)
    model = models.create_model(model_name, num_classes=2, image_size=cfg.size, pretrained="no").train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=fused)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    X = torch.from_numpy(Xtr).float().div_(255.0).unsqueeze(1)
    y = torch.from_numpy(ytr).float().unsqueeze(1)
    gen = torch.Generator().manual_seed(0)
    per_epoch = []
    for _ in range(cfg.epochs):
        t0 = time.perf_counter()
        for idx in torch.randperm(len(X), generator=gen).split(cfg.batch_size):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(step_model(X[idx]).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        per_epoch.append(len(X) / (time.perf_counter() - t0))
    timed = per_epoch[1:] or per_epoch
    return {"ips": statistics.median(timed), "epochs_ips": per_epoch}


def _round(name: str, data, cfg: Settings, index: int, *, same_format: tuple[bool, bool]) -> tuple:
    """One round: (engine, plain hand loop, hand loop with the engine's (channels_last, amp) and fused AdamW).

    Even rounds run the engine first, odd rounds last (ABBA order), so that a machine whose speed
    drifts during the benchmark (a shared 2-core VM does) favours neither side.
    """
    def same() -> dict[str, Any]:
        return _hand_loop(name, data, cfg, channels_last=same_format[0], amp=same_format[1], fused=True)

    if index % 2 == 0:
        engine = _engine(name, data, cfg)
        return engine, _hand_loop(name, data, cfg), same()
    same_run, loop = same(), _hand_loop(name, data, cfg)
    return _engine(name, data, cfg), loop, same_run


def _pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median images/s over the timed (non-first) epochs of several runs."""
    timed = [ips for r in runs for ips in (r["epochs_ips"][1:] or r["epochs_ips"])]
    out = dict(runs[0])
    out["ips"] = statistics.median(timed)
    out["epochs_ips"] = [ips for r in runs for ips in r["epochs_ips"]]
    return out


def _model_record(
    name: str,
    cfg: Settings,
    ours: dict[str, Any],
    base: dict[str, Any],
    same_format: dict[str, Any],
    flops: dict[str, int],
    *,
    peak_threads: float | None,
    engine_cl: bool,
    engine_amp: bool,
) -> tuple[Record, float]:
    """The engine-vs-hand-loop record of one model and the engine's achieved GFLOP/s."""
    flops_per_image = flops["estimate"] / cfg.batch_size
    gflops_ours = flops_per_image * ours["ips"] / 1e9
    gflops_base = flops_per_image * base["ips"] / 1e9
    ratio = ours["ips"] / base["ips"]
    record = make_record(
        f"{NAME}.{name}@{cfg.size}", ours=ours["ips"], baseline=base["ips"], units="images/s", better="higher",
        target="ratio >= 0.95", meets_target=ratio >= 0.95,
        details={
            "batch_size": cfg.batch_size, "steps_per_epoch": cfg.steps_per_epoch, "epochs": cfg.epochs,
            "rounds": cfg.rounds,
            "ours_epochs_ips": ours["epochs_ips"], "baseline_epochs_ips": base["epochs_ips"],
            "ours_fit_seconds": ours["fit_seconds"],
            "gflop_per_image_train_step": flops_per_image / 1e9,
            "gflop_per_image_forward": flops["forward"] / cfg.batch_size / 1e9,
            "gflop_per_image_counted_fwd_bwd": flops["counted_forward_backward"] / cfg.batch_size / 1e9,
            "achieved_gflops_ours": gflops_ours, "achieved_gflops_baseline": gflops_base,
            "peak_gflops_for_threads": peak_threads,
            # against the fp32 peak; under bf16 autocast on AMX tiles the fp32 peak is no bound (> 1 possible)
            "fraction_of_peak_ours": gflops_ours / peak_threads if peak_threads else None,
            "ours": "automl.train.fit_fold (aug_strength=0, scheduler=none, its defaults here: "
                    f"{'channels_last' if engine_cl else 'contiguous'}, {'bf16 autocast' if engine_amp else 'fp32'}),"
                    " training part of each epoch",
            "baseline": "hand-written loop on the same module, AdamW, pre-converted float tensor, contiguous, fp32",
            "engine_channels_last": engine_cl, "engine_bf16": engine_amp,
            "baseline_same_format_ips": same_format["ips"],
            "ratio_same_format": ours["ips"] / same_format["ips"],
            "same_format": "the hand loop with the engine's memory format, precision and fused AdamW "
                           "(overhead of the engine itself)",
        },
    )
    return record, gflops_ours


def _measure_variant(
    variant: str, name: str, data, cfg: Settings, *, ours: dict[str, Any], base: dict[str, Any], threads: int
) -> tuple[float, float, str] | None:
    """``(variant images/s, reference images/s, reference)``; ``None`` when ``all_cores`` has nothing to compare."""
    if variant == "channels_last":
        v = _engine(name, data, cfg, channels_last=True)["ips"]
        ref = _engine(name, data, cfg, channels_last=False)["ips"]
        return v, ref, "engine with channels_last=False"
    if variant == "bf16":
        v = _engine(name, data, cfg, amp=True)["ips"]
        ref = _engine(name, data, cfg, amp=False)["ips"]
        return v, ref, "engine with amp=False"
    if variant == "all_cores":
        cores = os.cpu_count() or 1
        if cores <= threads:
            return None  # already on every core: nothing to compare
        v = _engine(name, data, cfg, num_threads=cores)["ips"]
        return v, ours["ips"], f"engine at {threads} thread(s) vs {cores}"
    if variant == "compile":
        return _hand_loop(name, data, cfg, compile_model=True)["ips"], base["ips"], "hand loop"
    raise ValueError(f"Unknown variant {variant!r}; expected channels_last, bf16, compile or all_cores.")


def _variant_records(
    name: str, data, cfg: Settings, *, ours: dict[str, Any], base: dict[str, Any], threads: int
) -> list[Record]:
    """One informational record per variant of ``cfg.variants`` tried on ``name``."""
    records: list[Record] = []
    for variant in cfg.variants:
        try:
            measured = _measure_variant(variant, name, data, cfg, ours=ours, base=base, threads=threads)
            if measured is None:
                continue
            v, ref, kind = measured
            error = None
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler for inductor: report, go on
            logger.warning("variant %s of %s failed: %s", variant, name, exc)
            v, ref, kind, error = None, ours["ips"], "engine", f"{type(exc).__name__}: {exc}"[:300]
        records.append(make_record(
            f"{NAME}.variant.{name}@{cfg.size}.{variant}", ours=v, baseline=ref, units="images/s",
            better="higher", target="informational: ratio > 1 means the variant wins on this CPU",
            meets_target=None,
            details={
                "compared_with": kind if variant in ("all_cores", "channels_last", "bf16")
                else f"{kind} default (fp32, eager)",
                "error": error, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
                "note": "compile: the first (warm-up) epoch includes compilation" if variant == "compile" else "",
            },
        ))
    return records


def run(cfg: Settings) -> list[Record]:
    """Run the benchmark; one record per model, plus one per variant tried."""
    import models
    import torch

    n_train = cfg.batch_size * cfg.steps_per_epoch
    data = _data(n_train, cfg.batch_size, cfg.size)
    machine = machine_info()
    threads = torch.get_num_threads()
    peak = machine.get("peak_gflops_fp32")
    peak_threads = peak * min(threads, machine["cores"]) / machine["cores"] if peak else None
    records: list[Record] = []
    for name in cfg.models:
        from automl.train import default_amp

        # the engine's defaults on this machine: memory format and bf16 autocast
        engine_cl = models.get_model_info(name).prefers_channels_last
        engine_amp = default_amp(torch.device("cpu"), name)
        runs = [_round(name, data, cfg, r, same_format=(engine_cl, engine_amp)) for r in range(max(1, cfg.rounds))]
        ours, base = _pool([r[0] for r in runs]), _pool([r[1] for r in runs])
        same_format = _pool([r[2] for r in runs])
        model = models.create_model(name, num_classes=2, image_size=cfg.size, pretrained="no")
        flops = training_flops(model, torch.rand(cfg.batch_size, 1, cfg.size, cfg.size))
        record, gflops_ours = _model_record(name, cfg, ours, base, same_format, flops, peak_threads=peak_threads,
                                            engine_cl=engine_cl, engine_amp=engine_amp)
        records.append(record)
        logger.info("%s: ours %.1f img/s, loop %.1f img/s, %.2f GFLOP/s", name, ours["ips"], base["ips"], gflops_ours)
        if name in cfg.variant_models:
            records.extend(_variant_records(name, data, cfg, ours=ours, base=base, threads=threads))
    return records
