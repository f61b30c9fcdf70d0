"""A Kaggle-shaped real-size folder built from the phantom: ~2,500 slices as 650 px JPEGs of ~80 subjects.

The public "Brain Stroke CT Image Dataset" holds 2,501 JPEG slices of 512-650 px in ``Normal/`` and
``Stroke/`` with patient ids in the file names (``58 (10).jpg``), labels per patient. This folder has
the same shape, so the end-to-end benchmark and the CPU preset's budget are measured on realistic
file sizes and decoding work, without a download::

    from benchmarks.kaggle_like import kaggle_like_folder
    folder = kaggle_like_folder()           # cache_dir()/bench/kaggle_like_2500_650_s0, built once

The phantom is rendered at 256 px (anatomy and lesions at the resolution the models see) and
up-sampled bicubically to 650 px, then written as JPEG quality 90 — the decoding cost of a real set.
"""
from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

__all__ = ["kaggle_like_folder"]

logger = logging.getLogger(__name__)


def _to_jpeg(job: tuple[str, str, int]) -> None:
    from PIL import Image

    src, dst, side = job
    with Image.open(src) as image:
        image.convert("L").resize((side, side), Image.BICUBIC).save(dst, "JPEG", quality=90)


def kaggle_like_folder(*, n: int = 2500, side: int = 650, slices_per_patient: tuple[int, int] = (26, 36),
                       seed: int = 0, difficulty: float = 0.5, root: Path | None = None) -> Path:
    """Build (once) and return the folder; later calls return the cached one.

    Args:
        n: Slices (images).
        side: JPEG side length in pixels.
        slices_per_patient: (min, max) slices per synthetic patient (~80 patients for 2,500 slices).
        seed: Phantom seed.
        difficulty: Phantom difficulty (0 easy .. 1 hard).
        root: Parent folder (default ``cache_dir()/bench``).
    """
    from data import cache_dir
    from data.phantom import generate_phantom

    root = Path(root or cache_dir() / "bench")
    out = root / f"kaggle_like_{n}_{side}_s{seed}"
    if (out / "_done").is_file():
        return out
    tmp = root / f".{out.name}.png"
    png = generate_phantom(tmp, n=n, size=256, seed=seed, difficulty=difficulty, label_level="subject",
                           slices_per_patient=slices_per_patient)
    staging = root / f".{out.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    jobs = []
    for path in sorted(Path(png).rglob("*.png")):
        rel = path.relative_to(png)
        if rel.parts[0].startswith("_"):
            continue
        dst = staging / rel.with_suffix(".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((str(path), str(dst), side))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_to_jpeg, jobs, chunksize=32))
    (staging / "_done").write_text(f"{len(jobs)} slices\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Kaggle-like folder: %d JPEGs of %d px in %s", len(jobs), side, out)
    return out
