"""Benchmark 6, attributions: our ``models.attribution.explain`` vs Captum called with default arguments.

Per model (``resnet18``, ``vit_tiny``; random init, one logit) on one 224 px input, the same target:

"Ours" explains through a :class:`models.Predictor` holding a copy of the model, as the dashboard and
the Gradio app do (convolutional models in ``channels_last``); Captum gets the plain model.

* Grad-CAM: ``explain(predictor, x, method="grad_cam")`` (eval mode, parameters temporarily frozen so no
  weight gradients are computed, upsampled to 224 px) vs ``captum.attr.LayerGradCam(model,
  layer).attribute(x, target=0)`` on the same layer with Captum's defaults, plus
  ``LayerAttribution.interpolate`` to 224 px for CNNs. For the ViT the plain Captum call on the
  token output yields no spatial map (ours reshapes tokens to the patch grid); it is timed as is.
* Integrated gradients, 32 steps: ``explain(..., method="integrated_gradients", n_steps=32)``
  (``internal_batch_size=16``, default ``precision="auto"``: bf16 autocast for ResNets, CNNs and ViTs on
  a CPU with AMX; ``details`` has the precision used, the correlation of its map with the fp32 map and both
  completeness errors; the ``.fp32`` record times ``precision="fp32"``) vs ``captum.attr.IntegratedGradients(model).attribute(x, target=0,
  n_steps=32)`` with every other argument at Captum's default (all 32 interpolated images in one
  batch, parameters requiring gradients). Captum's own default ``n_steps`` is 50; 32 is used on both
  sides so that both do the same number of forward/backward passes.

Seconds per image: median over ``repeats`` calls (``cam_repeats`` for Grad-CAM) after ``warmup``,
ours and Captum alternating.
ResNet-18 also has absolute targets (issue 5): Grad-CAM <= 0.2 s and IG-32 <= 2 s per image.

Peak memory of IG: ``tracemalloc`` does not see torch's CPU allocations, so each variant runs in its
own subprocess (``python -m benchmarks.attributions --ig-memory ...``) that builds the model, makes one
1-step warm-up call, reads its resident set (``VmRSS``), resets the kernel's peak-RSS mark
(``/proc/self/clear_refs`` = 5), runs the 32-step call and reads the peak (``VmHWM``). The figure is
``peak - RSS before the call`` in MiB: the memory the call itself needed. Where the reset is refused,
``ru_maxrss`` (the process-lifetime peak) is used instead and the figure is only a lower bound;
``details`` carries the raw values and which method was used.

Run alone: ``python -m benchmarks --only attributions``.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import Record, make_record, measure_interleaved, paired_ratio

__all__ = ["Settings", "ig_memory", "run", "settings"]

logger = logging.getLogger(__name__)

NAME = "attributions"
#: Issue targets in seconds per 224 px image, on 2 CPU cores.
_ABSOLUTE_TARGETS = {"resnet18": {"grad_cam": 0.2, "integrated_gradients": 2.0}}
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Settings:
    models: tuple[str, ...] = ("resnet18", "vit_tiny")
    size: int = 224
    n_steps: int = 32
    warmup: int = 1
    repeats: int = 5  # IG calls take seconds; a shared VM slows down in bursts, and the median of 5 outlasts two
    cam_repeats: int = 30  # Grad-CAM takes tens of milliseconds: more repeats for a stable median
    memory: bool = True


def settings(mode: str) -> Settings:
    """``"full"`` or ``"quick"`` settings (quick: resnet18 only, one timed call)."""
    if mode == "full":
        return Settings()
    if mode == "quick":
        return Settings(models=("resnet18",), repeats=1, cam_repeats=5)
    raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}.")


def _model_and_input(name: str, size: int) -> tuple[Any, Any]:
    import torch

    import models

    torch.manual_seed(0)
    model = models.create_model(name, num_classes=2, image_size=size, pretrained="no").eval()
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    return model, x


def _ours(model: Any, name: str, size: int) -> Any:
    """The product path: a :class:`models.Predictor` around a copy of ``model`` (the dashboard and the
    Gradio app explain through a loaded predictor, which puts convolutional models in channels_last)."""
    import copy

    import models

    card = {"model": name, "kind": "deep", "init": "random", "classes": ["normal", "stroke"], "image_size": size}
    return models.Predictor(copy.deepcopy(model), card, device="cpu")


def _captum_grad_cam(model: Any, name: str, x: Any) -> Any:
    from captum.attr import LayerAttribution, LayerGradCam

    import models

    info = models.get_model_info(name)
    layer = info.gradcam_layer(model)
    cam = LayerGradCam(model, layer).attribute(x, target=0)
    if cam.ndim == 4:
        cam = LayerAttribution.interpolate(cam, x.shape[-2:])
    return cam


def _captum_ig(model: Any, x: Any, n_steps: int) -> Any:
    from captum.attr import IntegratedGradients

    return IntegratedGradients(model).attribute(x, target=0, n_steps=n_steps)


def _status_kib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def ig_memory(name: str, size: int, n_steps: int, variant: str) -> dict[str, Any]:
    """In *this* process: resident memory before and at the peak of one IG call (MiB).

    Meant for a fresh subprocess per variant. The peak mark is reset just before the call
    (``/proc/self/clear_refs``) and read afterwards (``VmHWM``); where the reset is not allowed the
    process-lifetime ``ru_maxrss`` is used and the figure is a lower bound (``method`` says which).

    Raises:
        ValueError: On an unknown ``variant`` ("ours" or "captum_default").
    """
    if variant not in ("ours", "captum_default"):
        raise ValueError(f"variant must be 'ours' or 'captum_default', got {variant!r}.")
    from models.attribution import explain

    model, x = _model_and_input(name, size)
    ours = _ours(model, name, size)

    def call(steps: int) -> None:
        if variant == "ours":
            explain(ours, x, method="integrated_gradients", n_steps=steps)
        else:
            _captum_ig(model, x.clone().requires_grad_(), steps)

    call(1)
    before = _status_kib("VmRSS") / 1024.0
    if _reset_peak():
        method = "VmHWM after resetting the peak mark (clear_refs 5)"
        call(n_steps)
        peak = _status_kib("VmHWM") / 1024.0
    else:
        method = "ru_maxrss (process lifetime; lower bound)"
        call(n_steps)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    return {"rss_before_mib": before, "peak_mib": peak, "delta_mib": max(0.0, peak - before), "method": method}


def _memory_subprocess(name: str, size: int, n_steps: int, variant: str, threads: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.attributions", "--ig-memory", name, str(size), str(n_steps), variant,
           "--threads", str(threads)]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"IG memory probe {name}/{variant} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(cfg: Settings) -> list[Record]:
    """Run the benchmark; per model: Grad-CAM and IG seconds per image, IG peak memory."""
    import torch

    from models.attribution import explain

    records: list[Record] = []
    threads = torch.get_num_threads()
    for name in cfg.models:
        model, x = _model_and_input(name, cfg.size)
        ours_predictor = _ours(model, name, cfg.size)
        ig_kwargs = {"method": "integrated_gradients", "n_steps": cfg.n_steps}
        cam = measure_interleaved(
            {"ours": lambda: explain(ours_predictor, x, method="grad_cam"),
             "captum": lambda: _captum_grad_cam(model, name, x.clone())},
            warmup=max(cfg.warmup, 3), repeats=cfg.cam_repeats)
        ig = measure_interleaved(
            {"ours": lambda: explain(ours_predictor, x, **ig_kwargs),
             "ours_fp32": lambda: explain(ours_predictor, x, precision="fp32", **ig_kwargs),
             "captum": lambda: _captum_ig(model, x.clone().requires_grad_(), cfg.n_steps)},
            warmup=cfg.warmup, repeats=cfg.repeats)
        # How far the default precision moves the map: both maps for the same (fp32-resolved) target.
        auto_map = explain(ours_predictor, x, **ig_kwargs)
        fp32_map = explain(ours_predictor, x, precision="fp32", **ig_kwargs)
        agreement = {
            "precision_default": auto_map.params["precision"],
            "map_correlation_default_vs_fp32": float(np.corrcoef(auto_map.heatmap.ravel(),
                                                                 fp32_map.heatmap.ravel())[0, 1]),
            "convergence_delta_default": auto_map.convergence_delta,
            "convergence_delta_fp32": fp32_map.convergence_delta,
        }
        limits = _ABSOLUTE_TARGETS.get(name, {})
        timings = {
            "grad_cam": ("grad_cam", cam["ours"], cam["captum"], "LayerGradCam(model, layer).attribute(x, target=0)"
                         + (" + interpolate" if name != "vit_tiny" else " (token output, no spatial map)"), {}),
            f"integrated_gradients_{cfg.n_steps}": (
                "integrated_gradients", ig["ours"], ig["captum"],
                f"IntegratedGradients(model).attribute(x, target=0, n_steps={cfg.n_steps})", agreement),
        }
        for record_name, (method, ours, base, captum_call, extra) in timings.items():
            limit = limits.get(method)
            target = "ratio <= 1" + (f" and <= {limit:g} s" if limit else "")
            meets = ours.median <= base.median and (limit is None or ours.median <= limit)
            records.append(make_record(
                f"{NAME}.{name}@{cfg.size}.{record_name}", ours=ours.median, baseline=base.median, units="s per image",
                better="lower", target=target, meets_target=meets,
                details={"model": name, "size": cfg.size, "ours_seconds": ours.values, "captum_seconds": base.values,
                         "best_s_ours": ours.best, "best_s_captum": base.best, "paired_ratio": paired_ratio(ours, base),
                         "ours_call": f"models.attribution.explain(predictor, x, method={method!r}...)"
                                      " (default precision='auto')",
                         "captum_call": captum_call, "threads": threads, **extra},
            ))
        fp32 = ig["ours_fp32"]
        records.append(make_record(
            f"{NAME}.{name}@{cfg.size}.integrated_gradients_{cfg.n_steps}.fp32", ours=fp32.median,
            baseline=ig["captum"].median, units="s per image", better="lower",
            target="informational: explain(..., precision='fp32') vs Captum's defaults", meets_target=None,
            details={"model": name, "size": cfg.size, "ours_seconds": fp32.values, "threads": threads},
        ))
        if cfg.memory:
            mem = {v: _memory_subprocess(name, cfg.size, cfg.n_steps, v, threads) for v in ("ours", "captum_default")}
            records.append(make_record(
                f"{NAME}.{name}@{cfg.size}.ig_peak_memory", ours=mem["ours"]["delta_mib"],
                baseline=mem["captum_default"]["delta_mib"], units="MiB", better="lower",
                target="ratio <= 1 (internal_batch_size=16 vs all steps in one batch)",
                meets_target=mem["ours"]["delta_mib"] <= mem["captum_default"]["delta_mib"],
                details={"model": name, "size": cfg.size, "n_steps": cfg.n_steps, "ours": mem["ours"],
                         "captum_default": mem["captum_default"],
                         "method": "peak RSS during the call - RSS before it, one subprocess per variant"},
            ))
        logger.info("%s: attribution records written", name)
    return records


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.attributions --ig-memory MODEL SIZE N_STEPS VARIANT [--threads N]``: print JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attributions")
    parser.add_argument("--ig-memory", nargs=4, metavar=("MODEL", "SIZE", "N_STEPS", "VARIANT"), required=True)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    name, size, n_steps, variant = args.ig_memory
    print(json.dumps(ig_memory(name, int(size), int(n_steps), variant)))  # noqa: T201 - the probe's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
