"""Shared pieces of the benchmarks: timing, the result record, machine information.

Timing
    :func:`measure` runs a callable ``warmup`` times untimed, then ``repeats`` times timed with
    ``time.perf_counter`` and returns every duration with its median and 95th percentile. Every figure
    a benchmark reports is such a median (or a rate derived from one); baselines are timed by the
    same function in the same process on the same inputs. :func:`measure_interleaved` alternates
    ours and the baseline call by call, so that a machine shared with other processes slows both
    alike (used wherever one call is short enough).

Records
    One :class:`Record` per measured figure: ``name``, ``ours``, ``baseline``, ``ratio`` (always
    ``ours / baseline`` in ``units``), ``better`` (``"higher"`` or ``"lower"``: which direction of
    ``ours`` is good), ``units``, ``target`` (text), ``meets_target`` (``True``/``False``, ``None``
    for informational figures), ``details`` (everything else that was measured) and ``machine``.

Peak GFLOP/s
    :func:`machine_info` estimates the CPU's fp32 peak as
    ``lanes x 2 (multiply + add of one FMA) x cores x clock``, with ``lanes`` = 16 when
    ``/proc/cpuinfo`` lists ``avx512f``, 8 with ``avx2``/``fma``, 4 otherwise (SSE), ``cores`` =
    ``os.cpu_count()`` (logical CPUs the process may use) and ``clock`` = the ``cpu MHz`` of
    ``/proc/cpuinfo``. It assumes **one** FMA unit per core; server cores with two AVX-512 FMA
    ports (and turbo clocks) can reach up to twice this figure, so the reported "fraction of peak" is
    an upper bound on the true fraction. ``None`` when ``/proc/cpuinfo`` is unavailable (macOS, Windows).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data._files import json_clean

__all__ = [
    "Record",
    "start_benchmark_logging",
    "Timing",
    "cpu_peak_gflops",
    "kind_of",
    "machine_info",
    "matmul_gflops",
    "make_record",
    "measure",
    "measure_interleaved",
    "paired_ratio",
    "percentile",
    "read_cpuinfo",
    "set_threads",
]

logger = logging.getLogger(__name__)

_BETTER = ("higher", "lower")


@dataclass
class Timing:
    """Durations of the timed repeats (seconds)."""

    values: list[float]

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def p95(self) -> float:
        return percentile(self.values, 95.0)

    @property
    def total(self) -> float:
        return float(sum(self.values))

    @property
    def best(self) -> float:
        """The fastest repeat: on a shared machine, the one least slowed by other processes."""
        return float(min(self.values))


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation, as ``numpy.percentile``).

    Raises:
        ValueError: On an empty list or ``q`` outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of an empty list")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must lie in [0, 100], got {q!r}.")
    ordered = sorted(float(v) for v in values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def measure(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Raises:
        ValueError: If ``warmup < 0`` or ``repeats < 1``.
    """
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}.")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}.")
    for _ in range(warmup):
        fn()
    values = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        values.append(time.perf_counter() - t0)
    return Timing(values)


def paired_ratio(ours: Timing, baseline: Timing) -> float | None:
    """Median over rounds of ``ours / baseline`` for timings made by :func:`measure_interleaved`.

    Each round times both calls back to back, so a burst of load from other processes slows both
    alike and cancels in that round's ratio; the ratio of the two medians does not have that property
    when the bursts are longer than a call but shorter than the run.
    """
    pairs = [a / b for a, b in zip(ours.values, baseline.values) if b > 0]
    return float(statistics.median(pairs)) if pairs else None


def measure_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 5) -> dict[str, Timing]:
    """Time several callables in alternation (A, B, A, B, ...) so that they share the machine's state.

    On a machine shared with other processes the available CPU drifts; timing ``ours`` fully before
    the baseline would fold that drift into the ratio. Each round calls every function once (in
    the given order), after ``warmup`` untimed rounds.

    Raises:
        ValueError: If ``fns`` is empty, ``warmup < 0`` or ``repeats < 1``.
    """
    if not fns:
        raise ValueError("measure_interleaved needs at least one function.")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}.")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}.")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    values: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            values[name].append(time.perf_counter() - t0)
    return {name: Timing(v) for name, v in values.items()}


@dataclass
class Record:
    """One measured figure against its baseline (see the module docstring)."""

    name: str
    ours: float | None
    baseline: float | None
    ratio: float | None
    units: str
    better: str
    target: str
    meets_target: bool | None
    details: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_clean(dataclasses.asdict(self), default=str)


def make_record(
    name: str,
    *,
    ours: float | None,
    baseline: float | None,
    units: str,
    better: str,
    target: str,
    meets_target: bool | None,
    details: dict[str, Any] | None = None,
) -> Record:
    """Build a :class:`Record`; ``ratio = ours / baseline`` (``None`` when either is missing or 0).

    Raises:
        ValueError: On an empty name or ``better`` not in ("higher", "lower").
    """
    if not name:
        raise ValueError("A benchmark record needs a name.")
    if better not in _BETTER:
        raise ValueError(f"better must be one of {_BETTER}, got {better!r}.")
    ratio = None
    if ours is not None and baseline not in (None, 0) and math.isfinite(ours) and math.isfinite(baseline):
        ratio = float(ours) / float(baseline)
    return Record(
        name=name,
        ours=None if ours is None else float(ours),
        baseline=None if baseline is None else float(baseline),
        ratio=ratio,
        units=units,
        better=better,
        target=target,
        meets_target=None if meets_target is None else bool(meets_target),
        details=dict(details or {}),
        machine=machine_info(),
    )


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model, flags and clock (MHz) of the first processor in ``/proc/cpuinfo`` (empty when absent)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break  # first processor block only
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            out["model"] = value
        elif key in ("flags", "Features"):
            out["flags"] = value.split()
        elif key == "cpu MHz":
            try:
                out["mhz"] = float(value)
            except ValueError:
                pass
    return out


def cpu_peak_gflops(cpuinfo: dict[str, Any], cores: int) -> dict[str, Any] | None:
    """fp32 peak estimate ``lanes * 2 * cores * GHz`` (see the module docstring); ``None`` without a clock."""
    mhz = cpuinfo.get("mhz")
    if not mhz:
        return None
    flags = set(cpuinfo.get("flags", ()))
    if "avx512f" in flags:
        lanes, isa = 16, "avx512f"
    elif "avx2" in flags or "fma" in flags:
        lanes, isa = 8, "avx2/fma"
    else:
        lanes, isa = 4, "sse"
    ghz = float(mhz) / 1000.0
    return {
        "gflops": lanes * 2 * cores * ghz,
        "formula": f"{lanes} fp32 lanes ({isa}) x 2 (FMA) x {cores} cores x {ghz:.2f} GHz, one FMA unit per core",
    }


_MACHINE: dict[str, Any] | None = None


def machine_info() -> dict[str, Any]:
    """Where a figure came from: CPU kind, model, logical cores, clock, ISA flags, peak GFLOP/s estimate,
    torch version, threads and the 1-minute load average when the record was made (a shared machine is
    slower and noisier). ``kind`` (:func:`models.cpu_kind`) keys the results of each CPU kind apart."""
    global _MACHINE
    if _MACHINE is None:
        from models._common import cpu_capabilities, cpu_kind

        cpu = read_cpuinfo()
        caps = cpu_capabilities()
        cores = int(caps["cores"])
        # an ISA cap in the environment (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY) hides the flags above it
        hidden = {f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if not caps[f]}
        flags = {f for f in cpu.get("flags", ()) if f not in hidden}
        cpu = {**cpu, "flags": sorted(flags)}
        info: dict[str, Any] = {
            "kind": cpu_kind(caps),
            "cpu": caps["model"] or cpu.get("model") or platform.processor() or platform.machine(),
            "cores": cores,
            "mhz": cpu.get("mhz"),
            "isa": [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2", "fma") if f in flags],
            "capabilities": {k: caps[k] for k in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")},
            "isa_capped_by": caps.get("capped_by") or None,
            "peak_gflops_fp32": None,
            "peak_formula": None,
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
        peak = cpu_peak_gflops(cpu, cores)
        if peak is not None:
            info["peak_gflops_fp32"] = peak["gflops"]
            info["peak_formula"] = peak["formula"]
        try:
            import torch

            info["torch"] = torch.__version__
            info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except ImportError:  # pragma: no cover - torch is a hard dependency
            info["torch"] = None
        _MACHINE = info
    out = dict(_MACHINE)
    try:
        import torch

        out["threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        out["threads"] = None
    try:  # other processes competing for the cores make every figure slower and noisier
        out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - not on Windows
        out["load_avg_1m"] = None
    return out


def kind_of(machine: dict[str, Any]) -> str:
    """The CPU kind a record's ``machine`` block names; records written before kinds existed get theirs
    from their model, ISA list and cores, as :func:`models.cpu_kind` names it."""
    if machine.get("kind"):
        return str(machine["kind"])
    from models._common import cpu_kind

    isa = set(machine.get("isa") or ())
    caps = {"model": machine.get("cpu") or "unknown CPU", "cores": machine.get("cores") or 1,
            "avx2": "avx2" in isa, "avx512f": "avx512f" in isa, "avx512_bf16": "avx512_bf16" in isa,
            "amx_bf16": "amx_bf16" in isa}
    return cpu_kind(caps)


def matmul_gflops(*, n: int = 1024, repeats: int = 7, dtype: str = "float32") -> dict[str, float]:
    """GFLOP/s of one plain ``n x n`` matmul on this CPU (torch, its threads): best and median of ``repeats``.

    The practical ceiling of dense compute here; "best" is the least disturbed by other processes.
    """
    import torch

    dt = getattr(torch, dtype)
    a, b = torch.rand(n, n).to(dt), torch.rand(n, n).to(dt)
    timing = measure(lambda: a @ b, warmup=2, repeats=repeats)
    flop = 2.0 * n ** 3
    return {"best": flop / min(timing.values) / 1e9, "median": flop / timing.median / 1e9, "n": n}


def set_threads(n: int | None) -> int:
    """Set torch's intra-op threads (``None``: leave as is); returns the previous value."""
    import torch

    previous = torch.get_num_threads()
    if n is not None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"threads must be None or an integer >= 1, got {n!r}.")
        torch.set_num_threads(n)
    return previous


#: Loggers whose INFO lines would drown a benchmark's own progress lines.
NOISY_LOGGERS = ("optuna", "httpx", "gradio", "automl", "data", "models", "ui", "timm")


def start_benchmark_logging() -> None:
    """The benchmark CLIs' logging: our progress lines at INFO, the libraries' and the product's at WARNING."""
    from data._log import setup_logging

    setup_logging(0)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
