"""The GPU benchmark: our training engine and ``--preset full`` on a CUDA GPU, against a plain timm loop.

Run it on a machine with a CUDA GPU (it changes nothing where there is none: it says so and exits 0)::

    python -m benchmarks.gpu                         # training-step comparison + the full preset (timeout 480 s)
    python -m benchmarks.gpu --preset-timeout 0      # the whole full preset, however long it takes
    python -m benchmarks.gpu --skip-preset --models resnet18

What it measures, on the synthetic phantom of ``--preset full`` (2,000 slices, 224 px, subject labels):

* **training step**, per model (``resnet18``, ``efficientnet_b0``, ``vit_tiny``), on the first CV fold of
  that preset's split: :func:`automl.train.fit_fold` (the engine: bf16 autocast where the GPU supports it,
  ``channels_last`` for convolutional models, the fold's arrays moved to the GPU once, larger validation
  batches, fused AdamW) vs a plain timm loop as a tutorial writes it (``timm.create_model``, fp32,
  contiguous, a ``DataLoader`` over CPU tensors with ``pin_memory=True``, AdamW, BCE-with-logits).
  Both train ``epochs`` epochs from the same random init with the same batch size; the figure is
  training images per second over the training steps (validation excluded; CUDA synchronised before
  every clock read), plus peak GPU memory (``torch.cuda.max_memory_allocated``) and wall seconds of
  the whole fit. Target: ours >= 0.95x the plain loop. A second baseline, the plain loop with bf16
  autocast and ``channels_last`` (what the engine does), isolates the engine's own overhead (details).
* **the preset**: :func:`automl.search.run_search` with ``--preset full --device cuda`` (``timeout``
  seconds of search at most, then the leaderboard, refits and audit), each phase timed as in
  :mod:`benchmarks.end_to_end`; wall seconds, trials finished and phase seconds.

Records go to ``benchmarks/results.json`` (``--out``) under the GPU's own kind (e.g. ``"NVIDIA H100 80GB
HBM3 (cuda)"``), next to the CPU kinds. Every record carries the GPU name, its memory and the torch/CUDA
versions in ``details.gpu``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import Record, make_record

__all__ = ["NO_GPU_MESSAGE", "gpu_info", "main", "ours_fit", "plain_fit", "run"]

logger = logging.getLogger("benchmarks.gpu")

NAME = "gpu"
NO_GPU_MESSAGE = "no CUDA GPU on this machine: the GPU benchmark measures nothing here (run it where one exists)"
DEFAULT_MODELS = ("resnet18", "efficientnet_b0", "vit_tiny")


def gpu_info() -> dict[str, Any] | None:
    """Name, memory and versions of CUDA device 0; ``None`` without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gib": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}",
            "count": torch.cuda.device_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "bf16": bool(torch.cuda.is_bf16_supported())}


def _sync(device: str = "cuda") -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if str(device).startswith("cuda") else None


def plain_fit(name: str, X: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, lr: float = 3e-4,
              seed: int = 0, amp: bool = False, channels_last: bool = False, device: str = "cuda") -> dict[str, Any]:
    """A plain timm training loop (binary task, one logit); images/s over the training steps.

    ``device`` is ``"cuda"`` in the benchmark; the tests run the same loop on the CPU.
    """
    import timm
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import models

    torch.manual_seed(seed)
    dev = torch.device(device)
    info = models.get_model_info(name)
    net = timm.create_model(info.timm_name, pretrained=False, num_classes=1, in_chans=1).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    data = TensorDataset(torch.from_numpy(X), torch.from_numpy(y.astype(np.float32)))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, pin_memory=dev.type == "cuda", drop_last=False)
    _reset_peak(device)
    t_fit, train_s, images = time.perf_counter(), 0.0, 0
    for _ in range(epochs):
        net.train()
        _sync(device)
        t0 = time.perf_counter()
        for xb, yb in loader:
            xb = xb.to(dev, non_blocking=True).float().div_(255.0).unsqueeze(1).sub_(0.5).div_(0.25)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = yb.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xb).float().squeeze(1), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(xb)
        _sync(device)
        train_s += time.perf_counter() - t0
    return {"images_per_second": images / train_s, "wall_s": time.perf_counter() - t_fit,
            "peak_gpu_mib": _peak_mib(device), "amp": amp, "channels_last": channels_last}


def ours_fit(name: str, ctx: Any, tr: np.ndarray, va: np.ndarray, *, epochs: int, batch_size: int,
             device: str = "cuda") -> dict[str, Any]:
    """:func:`automl.train.fit_fold` on one fold with the engine's defaults; images/s of its training steps."""
    from automl import train

    config = train.TrainConfig(model=name, epochs=epochs, batch_size=batch_size, lr=3e-4, pretrained="no",
                               device=device, patience=None, scheduler="none", aug_strength=0.0)
    _reset_peak(device)
    _sync(device)
    t0 = time.perf_counter()
    result = train.fit_fold(ctx.X[tr], ctx.y[tr], ctx.X[va], ctx.y[va], config=config, num_classes=ctx.num_classes)
    _sync(device)
    return {"images_per_second": result.images_per_second, "wall_s": time.perf_counter() - t0,
            "peak_gpu_mib": _peak_mib(device), "precision": result.precision,
            "val_auc": result.best_metrics.get("val_auc")}


def _preset(out_dir: str, timeout: float, n_trials: int | None) -> dict[str, Any]:
    import data
    from automl import features, leaderboard, search
    from benchmarks.end_to_end import PHASES, PhaseTimer

    timer = PhaseTimer()
    targets = [(data, "scan_folder", "scan"), (data, "load_arrays", "cache"),
               (features.FeatureCache, "features", "features"), (search, "optimize", "trials"),
               (search, "run_workers", "trials"), (leaderboard, "refit_one", "refits"),
               (leaderboard, "leakage_audit", "audit"), (search, "write_leaderboard", "report")]
    extra = {"n_trials": n_trials} if n_trials else {}
    config = search.SearchConfig(preset="full", study="gpu_full", leaderboards=out_dir, device="cuda",
                                 timeout=float(timeout), offline=True, **extra)
    t0 = time.perf_counter()
    with timer.patched(targets):
        folder = search.run_search(config, progress_bars=False)
    wall = time.perf_counter() - t0
    phases = {p: timer.seconds.get(p, 0.0) for p in PHASES}
    phases["other"] = max(0.0, wall - sum(phases.values()))
    report = json.loads((Path(folder) / "report.json").read_text()) if (Path(folder) / "report.json").is_file() else {}
    return {"wall_s": wall, "phases_s": phases, "timeout_s": timeout, "trial_states": report.get("trial_states"),
            "best_model": report.get("best_model"), "models": list(config.models)}


def run(*, models_: Sequence[str] = DEFAULT_MODELS, epochs: int = 3, batch_size: int = 64,
        preset: bool = True, preset_timeout: float = 480.0, preset_trials: int | None = None) -> list[Record]:
    """The training-step records per model, then the preset record; ``[]`` without a GPU."""
    import models as zoo
    from automl import search

    gpu = gpu_info()
    if gpu is None:
        logger.warning(NO_GPU_MESSAGE)
        return []
    records: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        config = search.SearchConfig(preset="full", study="gpu_data", leaderboards=tmp, device="cuda", offline=True)
        ctx = search.prepare_data(config)
        tr, va = ctx.split.folds[0]
        for name in models_:
            ours_fit(name, ctx, tr[: batch_size * 2], va[:batch_size], epochs=1, batch_size=batch_size)  # warm-up
            plain_fit(name, ctx.X[tr[: batch_size * 2]], ctx.y[tr[: batch_size * 2]], epochs=1, batch_size=batch_size)
            ours = ours_fit(name, ctx, tr, va, epochs=epochs, batch_size=batch_size)
            plain = plain_fit(name, ctx.X[tr], ctx.y[tr], epochs=epochs, batch_size=batch_size)
            same = plain_fit(name, ctx.X[tr], ctx.y[tr], epochs=epochs, batch_size=batch_size, amp=gpu["bf16"],
                             channels_last=zoo.get_model_info(name).prefers_channels_last)
            ratio = ours["images_per_second"] / plain["images_per_second"]
            records.append(make_record(
                f"{NAME}.train_step.{name}@{config.image_size}", ours=ours["images_per_second"],
                baseline=plain["images_per_second"], units="images/s", better="higher", target="ratio >= 0.95",
                meets_target=ratio >= 0.95,
                details={"gpu": gpu, "ours": ours, "plain": plain, "plain_same_format": same,
                         "ratio_same_format": ours["images_per_second"] / same["images_per_second"],
                         "train_images": len(tr), "epochs": epochs, "batch_size": batch_size}))
            logger.info("%s: ours %.0f img/s (%.0f MiB), plain %.0f img/s (%.0f MiB), plain+amp %.0f img/s", name,
                        ours["images_per_second"], ours["peak_gpu_mib"], plain["images_per_second"],
                        plain["peak_gpu_mib"], same["images_per_second"])
        if preset:
            result = _preset(tmp, preset_timeout, preset_trials)
            records.append(make_record(
                f"{NAME}.preset_full@{config.image_size}", ours=result["wall_s"], baseline=None, units="s",
                better="lower", target="informational: wall time of --preset full (search capped by timeout_s)",
                meets_target=None, details={"gpu": gpu, **result}))
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.gpu [--models M ...] [--epochs E] [--skip-preset] [--preset-timeout S] [--out PATH]``."""
    import models as model_zoo
    from benchmarks.__main__ import DEFAULT_OUT, merge_results
    from data._files import atomic_write_json
    from benchmarks._common import start_benchmark_logging

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="models of the training-step part")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (default 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch (default 64)")
    parser.add_argument("--skip-preset", action="store_true", help="only the training-step comparison")
    parser.add_argument("--preset-timeout", type=float, default=480.0,
                        help="seconds of search in the preset run (0: no limit; default 480)")
    parser.add_argument("--preset-trials", type=int, default=None, help="trials of the preset run (default: preset's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    start_benchmark_logging()
    unknown = [m for m in args.models if m not in model_zoo.list_models("deep")]
    if unknown:
        parser.error(f"unknown deep model(s) {unknown}")
    gpu = gpu_info()
    if gpu is None:
        print(NO_GPU_MESSAGE)  # noqa: T201 - the command's output
        return 0
    t0 = time.perf_counter()
    records = [r.to_dict() for r in run(models_=args.models, epochs=args.epochs, batch_size=args.batch_size,
                                         preset=not args.skip_preset, preset_timeout=args.preset_timeout,
                                         preset_trials=args.preset_trials)]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    for d in records:
        d.update(benchmark=NAME, mode="full", recorded_at=stamp, benchmark_seconds=round(time.perf_counter() - t0, 1))
    kind = f"{gpu['name']} (cuda)"
    document = merge_results(args.out, records, [NAME], kind=kind)
    atomic_write_json(document, args.out)
    for d in records:
        ratio = d.get("ratio")
        print(f"{d['name']}: ours {d['ours']:.1f} {d['units']}"  # noqa: T201
              + (f", baseline {d['baseline']:.1f}, ratio {ratio:.2f}" if ratio is not None and math.isfinite(ratio)
                 else ""))
    print(f"wrote {args.out} under kind {kind!r}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
