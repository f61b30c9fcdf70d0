"""Benchmark 7, end to end on real-size data: every phase of ``python -m automl.search --preset cpu``.

The folder: :func:`benchmarks.kaggle_like.kaggle_like_folder` (``n`` slices as ``side`` px JPEGs of ~80
synthetic patients, the shape of the public Kaggle stroke CT set; built once into
``cache_dir()/bench``, about 85 s for 2,500 slices). The array cache of every run goes to a fresh
temporary ``$STROKECT_CACHE``, so nothing is served from an earlier run.

Data phases, ours vs the plain way (the baseline runs on ``baseline_n`` files, half before ours and
half after, and is scaled to the whole folder per file; both sides read every file from disk):

* **scan**: :func:`data.scan_folder` (parallel decode on the CPU's cores; QC statistics counted on
  the 8-bit pixels) vs a plain PIL loop doing the same work per file: read, SHA-1, decode to grey,
  mean/std, 32-bin ``np.histogram``, ``scipy.ndimage.laplace`` variance and the perceptual hash.
* **cache**: :func:`data.load_arrays` at the preset's size vs a PIL loop
  (``Image.open().convert("L").resize((S, S))`` stacked into one array).
* **features**: :meth:`models.FrozenBackbone.extract` (``channels_last``, ``inference_mode``) vs a
  plain timm loop (``timm.create_model(..., num_classes=0)``, grey replicated to 3 channels,
  normalised, ``torch.no_grad``, batches of 32) on ``feature_n`` cached images, alternating.

The preset (``phases="all"``): :func:`automl.search.run_search` with ``--preset cpu`` on the folder
(``models``/``epochs``/``folds`` override the preset for reduced runs), each phase timed by wrapping
the function that does it: ``data.scan_folder`` (scan), ``data.load_arrays`` (decode/cache),
``FeatureCache.features`` (feature extraction, inside trials and refits), ``automl.search.optimize``
(trials), ``refit_one`` (refits), ``leakage_audit`` (audit), ``write_leaderboard`` (report: what is
left of it after refits and audit). Times are exclusive (a phase inside another is subtracted from
it); ``other`` is the rest of the wall time (study files, quality report, imports).

Targets on 2 cores (issue 19): scan + cache of the 2,500-slice folder <= 20 s; the whole preset <= 20 min.
CPU seconds (``resource.getrusage``, this process and its workers) are recorded next to wall seconds:
on a shared machine the wall time depends on the load, the CPU time much less.

Run alone: ``python -m benchmarks --only end_to_end`` (data phases), or the whole preset phase by phase::

    python -m benchmarks.end_to_end --phases all              # ~20 min on 2 cores; records into results.json
    python -m benchmarks.end_to_end --phases all --n 600 --models logreg tiny_cnn --epochs 1   # reduced
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import Record, make_record, measure_interleaved, paired_ratio

__all__ = ["PhaseTimer", "Settings", "main", "plain_cache", "plain_scan", "run", "settings"]

logger = logging.getLogger(__name__)

NAME = "end_to_end"
#: Issue 19's targets on 2 cores for the 2,500-slice folder.
SCAN_CACHE_TARGET_S = 20.0
PRESET_TARGET_S = 20 * 60.0
#: The phases of a search, in the order they run.
PHASES = ("scan", "cache", "features", "trials", "refits", "audit", "report")


@dataclass
class Settings:
    n: int = 2500
    side: int = 650
    slices_per_patient: tuple[int, int] = (26, 36)
    phases: str = "data"  # "data": scan, cache, features | "all": also the whole preset, phase by phase
    image_size: int | None = None  # None: the cpu preset's
    baseline_n: int = 400  # files the plain PIL loops run on (scaled to the folder)
    feature_model: str = "resnet18"
    feature_n: int = 128
    feature_repeats: int = 5  # a shared VM slows down in bursts of seconds: five alternating rounds
    # overrides of the cpu preset for reduced runs (None: the preset's own)
    models: tuple[str, ...] | None = None
    epochs: int | None = None
    folds: int | None = None
    absolute_targets: bool = True  # only meaningful on the real-size folder


def settings(mode: str) -> Settings:
    """``"full"``: the 2,500-slice folder, data phases (the whole preset takes ~20 min: run it with
    ``Settings(phases="all")``); ``"quick"``: 300 slices, data phases and a reduced preset
    (logreg + tiny_cnn, 1 epoch, 2 folds), no absolute targets."""
    if mode == "full":
        return Settings()
    if mode == "quick":
        return Settings(n=300, slices_per_patient=(8, 12), phases="all", baseline_n=100, feature_n=64,
                        feature_repeats=2, models=("logreg", "tiny_cnn"), epochs=1, folds=2,
                        absolute_targets=False)
    raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}.")


# ------------------------------------------------------------------------------------ timing
def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class PhaseTimer:
    """Exclusive wall seconds per phase of code run through wrapped functions (nested phases subtracted)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []  # per open phase: [start, time spent in child phases]

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` timed as ``phase``."""
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                start, children = self._stack.pop()
                total = time.perf_counter() - start
                self.seconds[phase] = self.seconds.get(phase, 0.0) + total - children
                self.calls[phase] = self.calls.get(phase, 0) + 1
                if self._stack:
                    self._stack[-1][1] += total

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    @contextlib.contextmanager
    def patched(self, targets: list[tuple[Any, str, str]]) -> Iterator[PhaseTimer]:
        """Wrap ``getattr(owner, attr)`` as ``phase`` for every ``(owner, attr, phase)`` inside the block."""
        originals = [(owner, attr, owner.__dict__.get(attr, getattr(owner, attr))) for owner, attr, _ in targets]
        try:
            for (owner, attr, phase), (_, _, fn) in zip(targets, originals):
                setattr(owner, attr, self.wrap(phase, fn))
            yield self
        finally:
            for owner, attr, fn in originals:
                setattr(owner, attr, fn)


# -------------------------------------------------------------------------------- baselines
def plain_scan(paths: list[Path]) -> list[dict[str, Any]]:
    """What a notebook does to hash and check a folder: one file after the other, with PIL and scipy."""
    from PIL import Image
    from scipy import ndimage

    from data._scan import perceptual_hash

    rows = []
    for path in paths:
        data = Path(path).read_bytes()
        image = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0
        rows.append({"sha1": hashlib.sha1(data).hexdigest(), "mean": float(image.mean()), "std": float(image.std()),
                     "hist": np.histogram(image, bins=32, range=(0.0, 1.0))[0],
                     "sharpness": float(ndimage.laplace(image.astype(np.float64), mode="reflect").var()),
                     "phash": perceptual_hash(image), "height": image.shape[0], "width": image.shape[1]})
    return rows


def plain_cache(paths: list[Path], size: int) -> np.ndarray:
    """A plain PIL loop: grey, resized to ``size x size``, stacked (what ``ImageFolder`` + ``Resize`` do)."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("L").resize((size, size), Image.Resampling.BILINEAR))
                     for p in paths])


def _timm_features(name: str, in_chans: int, mean: list[float], std: list[float]) -> Callable[[np.ndarray], np.ndarray]:
    """A plain timm feature loop on ``uint8 (N, S, S)`` images: the same input channels and normalisation
    as ours, contiguous fp32, ``torch.no_grad``, batches of 32."""
    import timm
    import torch

    import models

    info = models.get_model_info(name)
    torch.manual_seed(0)
    net = timm.create_model(info.timm_name, pretrained=False, num_classes=0, in_chans=in_chans).eval()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)

    def extract(images: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(images), 32):
                x = torch.from_numpy(images[start:start + 32]).float().div(255).unsqueeze(1).repeat(1, in_chans, 1, 1)
                out.append(net((x - m) / s).numpy())
        return np.concatenate(out)

    return extract


# ------------------------------------------------------------------------------------ phases
@contextlib.contextmanager
def _fresh_cache() -> Iterator[Path]:
    previous = os.environ.get("STROKECT_CACHE")
    with tempfile.TemporaryDirectory(prefix="bench-e2e-cache-") as tmp:
        os.environ["STROKECT_CACHE"] = tmp
        try:
            yield Path(tmp)
        finally:
            if previous is None:
                os.environ.pop("STROKECT_CACHE", None)
            else:
                os.environ["STROKECT_CACHE"] = previous


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, cpu_seconds() - c0


def _data_phases(folder: Path, cfg: Settings, size: int) -> tuple[dict[str, Any], Any, np.ndarray]:
    import data

    load0 = os.getloadavg()[0]
    paths = sorted(p for p in folder.rglob("*.jpg"))
    sample = [paths[i] for i in np.linspace(0, len(paths) - 1, min(cfg.baseline_n, len(paths))).astype(int)]
    half = len(sample) // 2
    plain_scan(sample[:1]), plain_cache(sample[:1], size)  # imports and first-call costs out of the timing
    _, base_scan_a, _ = _timed(lambda: plain_scan(sample[:half]))
    _, base_cache_a, _ = _timed(lambda: plain_cache(sample[:half], size))
    with _fresh_cache():
        manifest, scan_s, scan_cpu = _timed(lambda: data.scan_folder(folder))
        arrays, cache_s, cache_cpu = _timed(lambda: data.load_arrays(manifest, size=size))
    _, base_scan_b, _ = _timed(lambda: plain_scan(sample[half:]))
    _, base_cache_b, _ = _timed(lambda: plain_cache(sample[half:], size))
    scale = len(paths) / len(sample)
    out = {
        "n_files": len(paths), "image_size": size, "baseline_files": len(sample),
        "scan_s": scan_s, "scan_cpu_s": scan_cpu, "cache_s": cache_s, "cache_cpu_s": cache_cpu,
        "baseline_scan_s": (base_scan_a + base_scan_b) * scale, "baseline_cache_s": (base_cache_a + base_cache_b) * scale,
        "baseline_halves_s": {"scan": [base_scan_a, base_scan_b], "cache": [base_cache_a, base_cache_b]},
        "load_avg_1m_before_after": [load0, os.getloadavg()[0]],
        "subjects": int(manifest.table["subject"].nunique()), "subject_source": manifest.subject_source,
    }
    logger.info("scan %.1f s (cpu %.1f), cache %.1f s (cpu %.1f); plain loops %.1f + %.1f s (scaled)", scan_s,
                scan_cpu, cache_s, cache_cpu, out["baseline_scan_s"], out["baseline_cache_s"])
    return out, manifest, arrays


def _features(arrays: np.ndarray, cfg: Settings, size: int) -> dict[str, Any]:
    import models

    images = np.ascontiguousarray(arrays[: cfg.feature_n])
    ours = models.load_backbone(cfg.feature_model, image_size=size, pretrained="no", device="cpu")
    norm = ours.model.normalization
    plain = _timm_features(cfg.feature_model, norm["in_chans"], norm["mean"], norm["std"])
    timing = measure_interleaved({"ours": lambda: ours.extract(images), "timm": lambda: plain(images)},
                                 warmup=1, repeats=cfg.feature_repeats)
    return {"model": cfg.feature_model, "images": len(images), "size": size, "channels_last": ours.channels_last,
            "ours_ips": len(images) / timing["ours"].median, "timm_ips": len(images) / timing["timm"].median,
            "ours_ips_best": len(images) / timing["ours"].best, "timm_ips_best": len(images) / timing["timm"].best,
            "ours_s": timing["ours"].values, "timm_s": timing["timm"].values,
            "paired_time_ratio": paired_ratio(timing["ours"], timing["timm"])}


def _preset(folder: Path, cfg: Settings) -> dict[str, Any]:
    """``run_search(--preset cpu)`` on ``folder``, timed phase by phase."""
    import data
    from automl import features, leaderboard, search

    timer = PhaseTimer()
    targets = [(data, "scan_folder", "scan"), (data, "load_arrays", "cache"),
               (features.FeatureCache, "features", "features"), (search, "optimize", "trials"),
               (search, "run_workers", "trials"), (leaderboard, "refit_one", "refits"),
               (leaderboard, "leakage_audit", "audit"), (search, "write_leaderboard", "report")]
    overrides = {k: v for k, v in (("models", cfg.models), ("epochs", cfg.epochs), ("folds", cfg.folds),
                                   ("image_size", cfg.image_size)) if v is not None}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, _fresh_cache():
        config = search.SearchConfig(preset="cpu", data=str(folder), study="e2e", leaderboards=tmp, offline=True,
                                     device="cpu", **overrides)
        c0, t0 = cpu_seconds(), time.perf_counter()
        with timer.patched(targets):
            search.run_search(config, progress_bars=False)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        models = list(config.models)
        n_trials = config.n_trials
    phases = {p: timer.seconds.get(p, 0.0) for p in PHASES}
    phases["other"] = max(0.0, wall - sum(phases.values()))
    return {"wall_s": wall, "cpu_s": cpu, "phases_s": phases, "calls": dict(timer.calls), "models": models,
            "n_trials": n_trials, "overrides": overrides}


def run(cfg: Settings) -> list[Record]:
    """Build (or reuse) the folder, time the data phases against the plain loops, then the preset."""
    from automl.config import PRESETS
    from benchmarks.kaggle_like import kaggle_like_folder

    if cfg.phases not in ("data", "all"):
        raise ValueError(f"phases must be 'data' or 'all', got {cfg.phases!r}.")
    size = cfg.image_size or int(PRESETS["cpu"]["image_size"])
    t0 = time.perf_counter()
    folder = kaggle_like_folder(n=cfg.n, side=cfg.side, slices_per_patient=cfg.slices_per_patient)
    build_s = time.perf_counter() - t0
    dp, _, arrays = _data_phases(folder, cfg, size)
    dp["folder_build_or_reuse_s"] = build_s
    tag = f"kaggle{dp['n_files']}@{size}"
    ours_total = dp["scan_s"] + dp["cache_s"]
    base_total = dp["baseline_scan_s"] + dp["baseline_cache_s"]
    target = "ratio <= 1"
    meets = ours_total <= base_total
    if cfg.absolute_targets:
        target += f" and <= {SCAN_CACHE_TARGET_S:.0f} s on 2 cores"
        meets = meets and ours_total <= SCAN_CACHE_TARGET_S
    records = [
        make_record(f"{NAME}.{tag}.scan_cache", ours=ours_total, baseline=base_total, units="s", better="lower",
                    target=target, meets_target=meets,
                    details={**dp, "ours": "data.scan_folder + data.load_arrays (fresh cache)",
                             "baseline": "PIL loops (scan: read, SHA-1, decode, stats, pHash; cache: decode + "
                                         "resize), timed on baseline_files and scaled per file"}),
        make_record(f"{NAME}.{tag}.scan", ours=dp["scan_s"], baseline=dp["baseline_scan_s"], units="s",
                    better="lower", target="informational: the scan part of scan_cache", meets_target=None,
                    details={"cpu_s": dp["scan_cpu_s"]}),
        make_record(f"{NAME}.{tag}.cache", ours=dp["cache_s"], baseline=dp["baseline_cache_s"], units="s",
                    better="lower", target="informational: the decode/cache part of scan_cache", meets_target=None,
                    details={"cpu_s": dp["cache_cpu_s"]}),
    ]
    feats = _features(arrays, cfg, size)
    records.append(make_record(
        f"{NAME}.{tag}.features_{cfg.feature_model}", ours=feats["ours_ips"], baseline=feats["timm_ips"],
        units="images/s", better="higher", target="ratio >= 1", meets_target=feats["ours_ips"] >= feats["timm_ips"],
        details=feats))
    if cfg.phases == "all":
        preset = _preset(folder, cfg)
        target = "informational: phase times of a reduced preset"
        meets = None
        if cfg.absolute_targets and not preset["overrides"]:
            target, meets = f"<= {PRESET_TARGET_S / 60:.0f} min on 2 cores", preset["wall_s"] <= PRESET_TARGET_S
        records.append(make_record(f"{NAME}.{tag}.preset_cpu", ours=preset["wall_s"], baseline=None, units="s",
                                   better="lower", target=target, meets_target=meets, details=preset))
        logger.info("preset cpu: %.0f s; phases %s", preset["wall_s"],
                    {k: round(v, 1) for k, v in preset["phases_s"].items()})
    return records


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.end_to_end [--phases data|all] [--n N] [--models M ...] [--epochs E] [--folds K]``."""
    import dataclasses
    import datetime as _dt

    from benchmarks.__main__ import DEFAULT_OUT, merge_results
    from data._files import atomic_write_json
    from benchmarks._common import start_benchmark_logging

    parser = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end", description=__doc__.splitlines()[0])
    parser.add_argument("--phases", choices=("data", "all"), default="all", help="all: also the whole cpu preset")
    parser.add_argument("--n", type=int, default=2500, help="slices of the Kaggle-shaped folder (default 2500)")
    parser.add_argument("--models", nargs="+", default=None, help="override the preset's models (a reduced run)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--folds", type=int, default=None, help="override the preset's folds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    start_benchmark_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = dataclasses.replace(Settings(), phases=args.phases, n=args.n,
                              models=tuple(args.models) if args.models else None, epochs=args.epochs,
                              folds=args.folds, absolute_targets=args.n >= 2500)
    t0 = time.perf_counter()
    records = [r.to_dict() for r in run(cfg)]
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    for d in records:
        d.update(benchmark=NAME, mode="full", recorded_at=stamp, benchmark_seconds=round(time.perf_counter() - t0, 1))
        print(f"{d['name']}: ours {d['ours']:.1f} {d['units']} (target: {d['target']}; meets: {d['meets_target']})")  # noqa: T201
    atomic_write_json(merge_results(args.out, records, [NAME]), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
