"""Benchmark 5, inference: ``models.load_predictor(...).predict`` vs a naive per-call PIL + ``model.eval()``.

For each architecture at its study size (``ModelInfo.default_image_size``; random init, saved with
:func:`models.save_checkpoint` and loaded back with :func:`models.load_predictor` on the CPU), on one
phantom PNG (``disk_size`` px on disk, so both sides decode and resize):

* ours: ``predictor.predict(path)`` (decode + window + aspect-preserving resize + uint8 + one
  forward in ``torch.inference_mode``; convolutional models in ``channels_last``, the small CNNs with
  BatchNorm folded into their convolutions), and
  ``predictor.predict_many(paths)`` for 32 paths (``Predictor.default_batch_size`` images per pass);
* naive: what a notebook does per call, on its own copy of the same weights built by
  ``models.create_model`` + ``load_state_dict``: ``PIL.Image.open(path).convert("L").resize((S, S))``
  -> ``to_tensor`` -> ``model.eval()`` -> ``model(x)`` under ``torch.no_grad`` -> ``sigmoid``, and
  for 32 images the same call 32 times.

Figures: one-image latency p50 (record), p95 and the fastest call (details) over ``repeats`` calls after ``warmup``;
batch-32 throughput (images/s, median over ``batch_repeats``). Ours and naive calls alternate.
Targets: our p50 <= naive p50, and
ResNet-18 at 224 px one-image p50 <= 50 ms.

Run alone: ``python -m benchmarks --only inference``.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import Record, make_record, measure_interleaved, paired_ratio

__all__ = ["Settings", "run", "settings"]

logger = logging.getLogger(__name__)

NAME = "inference"
RESNET_P50_TARGET_MS = 50.0


@dataclass
class Settings:
    models: tuple[str, ...] = ("resnet18", "efficientnet_b0", "vit_tiny", "simple_cnn", "tiny_cnn")
    sizes: dict[str, int] | None = None  # model -> size; None = each model's default_image_size
    disk_size: int = 256
    warmup: int = 3
    repeats: int = 100  # one-image calls take 3-40 ms: many repeats for a stable median
    batch: int = 32
    batch_repeats: int = 3


def settings(mode: str) -> Settings:
    """``"full"`` or ``"quick"`` settings (quick: resnet18 at 224 and simple_cnn, fewer repeats)."""
    if mode == "full":
        return Settings()
    if mode == "quick":
        return Settings(models=("resnet18", "simple_cnn"), warmup=2, repeats=10, batch_repeats=1)
    raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}.")


def _naive_predict(model: Any, path: Path, size: int) -> float:
    import torch
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    image = Image.open(path).convert("L").resize((size, size))
    x = to_tensor(image).unsqueeze(0)
    model.eval()
    with torch.no_grad():
        return float(torch.sigmoid(model(x)).reshape(-1)[0])


def run(cfg: Settings) -> list[Record]:
    """Run the benchmark; two records per model (p50 latency, batch throughput)."""
    import torch

    import models
    from data.phantom import generate_phantom

    records: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        root = generate_phantom(Path(tmp) / "phantom", n=max(cfg.batch, 8), size=cfg.disk_size, seed=0)
        paths = sorted(p for p in root.glob("*/*.png"))[: cfg.batch]
        one = paths[0]
        for name in cfg.models:
            size = (cfg.sizes or {}).get(name) or models.get_model_info(name).default_image_size
            torch.manual_seed(0)
            net = models.create_model(name, num_classes=2, image_size=size, pretrained="no")
            folder = models.save_checkpoint(net, Path(tmp) / name, card={"classes": ["normal", "stroke"]})
            predictor = models.load_predictor(folder, device="cpu")
            # The naive side gets its own copy of the same weights, as a notebook builds it (contiguous
            # memory format): the predictor's model may have been converted to channels_last.
            naive_model = models.create_model(name, num_classes=2, image_size=size, pretrained="no")
            naive_model.load_state_dict(net.state_dict())
            single = measure_interleaved(
                {"ours": lambda: predictor.predict(one), "naive": lambda: _naive_predict(naive_model, one, size)},
                warmup=cfg.warmup, repeats=cfg.repeats)
            ours, naive = single["ours"], single["naive"]
            p_ours = predictor.predict(one)["probabilities"]["stroke"]
            p_naive = _naive_predict(naive_model, one, size)
            batch = measure_interleaved(
                {"ours": lambda: predictor.predict_many(paths),
                 "naive": lambda: [_naive_predict(naive_model, p, size) for p in paths]},
                warmup=1, repeats=cfg.batch_repeats)
            ours_b, naive_b = batch["ours"], batch["naive"]
            p50, base50 = ours.median * 1e3, naive.median * 1e3
            target = "ratio <= 1 (our p50 <= naive p50)"
            meets = p50 <= base50
            if name == "resnet18" and size == 224:
                target += f" and p50 <= {RESNET_P50_TARGET_MS:.0f} ms"
                meets = meets and p50 <= RESNET_P50_TARGET_MS
            common = {"model": name, "size": size, "disk_size": cfg.disk_size, "threads": torch.get_num_threads(),
                      "probability_ours": p_ours, "probability_naive": p_naive,
                      "naive": "PIL open/convert L/resize + to_tensor + model.eval() + no_grad, per call"}
            records.append(make_record(
                f"{NAME}.{name}@{size}.p50", ours=p50, baseline=base50, units="ms", better="lower", target=target,
                meets_target=meets,
                details={**common, "p95_ms_ours": ours.p95 * 1e3, "p95_ms_naive": naive.p95 * 1e3,
                         # the fastest call: what the code does when no other process takes the cores
                         "best_ms_ours": ours.best * 1e3, "best_ms_naive": naive.best * 1e3,
                         "paired_ratio": paired_ratio(ours, naive),
                         "warmup": cfg.warmup, "repeats": cfg.repeats},
            ))
            ips, base_ips = len(paths) / ours_b.median, len(paths) / naive_b.median
            records.append(make_record(
                f"{NAME}.{name}@{size}.batch{len(paths)}", ours=ips, baseline=base_ips, units="images/s",
                better="higher", target="ratio >= 1", meets_target=ips >= base_ips,
                details={**common, "batch": len(paths), "repeats": cfg.batch_repeats,
                         "ours_call": f"predict_many(paths) ({len(paths)} paths, "
                                      f"{predictor.default_batch_size} per forward pass)",
                         "channels_last": predictor.channels_last,
                         "fused_batchnorm": predictor.fused_batchnorm,
                         "naive_call": "the naive one-image call in a Python loop"},
            ))
            logger.info("%s@%d: p50 %.1f ms (naive %.1f), batch %.1f img/s (naive %.1f)", name, size, p50, base50,
                        ips, base_ips)
    return records
