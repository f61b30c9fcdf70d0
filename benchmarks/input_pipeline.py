"""Benchmark 1, input pipeline: our cached uint8 arrays vs ImageFolder + PIL decode + resize per epoch.

Both sides produce the same thing, shuffled float batches ``(B, 1, S, S)`` in ``[0, 1]`` of every image
of a phantom folder (PNGs at ``disk_size`` px, resized to ``size``), and both are timed over a
**second** epoch (the first fills our disk cache and warms the OS file cache for both):

* ours: ``data.load_arrays(manifest, size=S)`` (a cache hit: one ``np.load``) and then the engine's
  batch path (:mod:`automl.train`: a seeded permutation, ``uint8 -> float / 255``, one batch at a time);
* baseline: ``torchvision.datasets.ImageFolder`` with ``Grayscale -> Resize((S, S)) -> ToTensor`` and a
  ``DataLoader(shuffle=True, num_workers=0)`` (same process, same threads).

The timed epochs alternate (ours, baseline, ours, ...), each figure is the median epoch.

Second figure: the data time of one batch against one training step (forward + backward + AdamW) of
``step_model`` at the same size and batch; target < 5 %.

Run alone: ``python -m benchmarks --only input_pipeline``.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import Record, make_record, measure, measure_interleaved

__all__ = ["Settings", "run", "settings"]

logger = logging.getLogger(__name__)

NAME = "input_pipeline"


@dataclass
class Settings:
    n_images: int = 400  # phantom images on disk
    disk_size: int = 256  # side of the PNGs on disk
    size: int = 128  # model input side
    batch_size: int = 32
    repeats: int = 3  # timed epochs (after one warm-up epoch) per pipeline
    step_model: str = "resnet18"  # the training step the data time is compared with
    step_repeats: int = 3


def settings(mode: str) -> Settings:
    """``"full"`` or ``"quick"`` settings."""
    if mode == "full":
        return Settings()
    if mode == "quick":
        return Settings(n_images=120, repeats=2, step_repeats=2)
    raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}.")


def _ours_epoch(manifest, size: int, batch_size: int, seed: int) -> int:
    """One epoch of our path: cache hit + the engine's per-batch conversion; returns images seen."""
    import data
    import torch

    X = torch.from_numpy(data.load_arrays(manifest, size=size))
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    n = 0
    for idx in perm.split(batch_size):
        xb = X[idx].float().div_(255.0).unsqueeze(1)
        n += xb.shape[0]
    return n


def _baseline_loader(root: Path, size: int, batch_size: int):
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Grayscale(1), transforms.Resize((size, size)), transforms.ToTensor()])
    dataset = datasets.ImageFolder(
        str(root), transform=tf, is_valid_file=lambda p: "/_masks/" not in Path(p).as_posix() and p.endswith(".png"),
        allow_empty=True,
    )
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                                       generator=torch.Generator().manual_seed(0))


def _baseline_epoch(loader) -> int:
    n = 0
    for xb, _ in loader:
        n += xb.shape[0]
    return n


def _train_step_seconds(model_name: str, size: int, batch_size: int, repeats: int) -> float:
    import models
    import torch

    torch.manual_seed(0)
    model = models.create_model(model_name, num_classes=2, image_size=size, pretrained="no").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.rand(batch_size, 1, size, size)
    y = torch.randint(0, 2, (batch_size, 1)).float()

    def step() -> None:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return measure(step, warmup=1, repeats=repeats).median


def run(cfg: Settings) -> list[Record]:
    """Run the benchmark; returns the records (images/s ratio, data-time share of a step)."""
    import data
    from data.phantom import generate_phantom

    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        root = generate_phantom(Path(tmp) / "phantom", n=cfg.n_images, size=cfg.disk_size, seed=0)
        manifest = data.scan_folder(root, group_by="none")
        n = len(manifest.table)
        seeds = iter(range(10_000))
        loader = _baseline_loader(root, cfg.size, cfg.batch_size)
        if len(loader.dataset) != n:
            raise RuntimeError(f"ImageFolder found {len(loader.dataset)} images, the manifest {n}.")
        # the untimed warm-up round is epoch 1 (it fills our cache); timed rounds alternate the two
        timings = measure_interleaved(
            {"ours": lambda: _ours_epoch(manifest, cfg.size, cfg.batch_size, next(seeds)),
             "baseline": lambda: _baseline_epoch(loader)},
            warmup=1, repeats=cfg.repeats,
        )
        t_ours, t_base = timings["ours"], timings["baseline"]

    ours_ips, base_ips = n / t_ours.median, n / t_base.median
    n_batches = -(-n // cfg.batch_size)
    data_per_batch = t_ours.median / n_batches
    step = _train_step_seconds(cfg.step_model, cfg.size, cfg.batch_size, cfg.step_repeats)
    common = {"n_images": n, "disk_size": cfg.disk_size, "size": cfg.size, "batch_size": cfg.batch_size,
              "repeats": cfg.repeats}
    return [
        make_record(
            f"{NAME}.epoch2_throughput", ours=ours_ips, baseline=base_ips, units="images/s", better="higher",
            target="ratio >= 5", meets_target=ours_ips / base_ips >= 5.0,
            details={**common, "ours_epoch_s": t_ours.values, "baseline_epoch_s": t_base.values,
                     "ours": "data.load_arrays (cache hit) + engine batch conversion",
                     "baseline": "torchvision ImageFolder + PIL decode + Resize + ToTensor, DataLoader num_workers=0"},
        ),
        make_record(
            f"{NAME}.data_share_of_step", ours=data_per_batch * 1e3, baseline=step * 1e3, units="ms per batch",
            better="lower", target="ratio < 0.05 (data time < 5 % of a training step)",
            meets_target=data_per_batch / step < 0.05,
            details={**common, "step_model": cfg.step_model,
                     "baseline": f"one training step of {cfg.step_model} (forward+backward+AdamW), median of "
                                 f"{cfg.step_repeats}"},
        ),
    ]
