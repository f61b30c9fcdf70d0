"""Run the benchmarks, print a table and write ``benchmarks/results.json``.

Run it::

    python -m benchmarks                        # full run (what the README quotes; ~15-25 min on 2 cores)
    python -m benchmarks --quick                # smaller sizes, ~1.5 min; writes results_quick.json (never pass/fail on time)
    python -m benchmarks --only inference --only attributions
    python -m benchmarks --threads 1 --out /tmp/results.json
    python -m benchmarks --markdown             # the results file as a Markdown table (runs nothing)

Each benchmark (``benchmarks/<name>.py``) runs our code path and its baseline in this process on the
same inputs and returns records: ``name, ours, baseline, ratio (= ours / baseline), units, better,
target, meets_target, details, machine``. The JSON file keeps the records of each **CPU kind** apart
(``kinds[<kind>]``, the kind named by :func:`models.cpu_kind`: model, newest ISA level, cores; a GPU run
is its own kind): a run replaces only its own kind's records of the benchmarks it ran, so figures of
an Intel Xeon with AMX and of an AMD EPYC stay side by side, and ``--markdown`` prints one column per
kind. Every record carries ``benchmark``, ``mode``, ``recorded_at`` and its ``machine`` (CPU model,
flags, cores, torch version, threads, 1-minute load average). A benchmark that fails is logged with
its traceback and written as one record with ``details.error`` and no figures; the exit status is then 1.
Results files of schema 1 (one flat list) are read as the kind their records' machine names.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data._files import atomic_write_json
from benchmarks._common import Record, kind_of, machine_info, matmul_gflops, set_threads, start_benchmark_logging

__all__ = ["BENCHMARKS", "format_kinds_table", "format_table", "main", "merge_results", "run_benchmarks"]

logger = logging.getLogger("benchmarks")

#: Benchmark names in run order (the Gradio one last: it lowers torch's threads while serving).
BENCHMARKS = (
    "input_pipeline",
    "training_step",
    "bf16_accuracy",
    "search_efficiency",
    "frozen_backbone",
    "transfer_lane",
    "inference",
    "attributions",
    "end_to_end",
    "live_serving",
)
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"
#: Where ``--quick`` writes by default (git-ignored: ``/benchmarks/results_*.json``).
QUICK_OUT = DEFAULT_OUT.with_name("results_quick.json")
SCHEMA_VERSION = 2


def run_benchmarks(names: Sequence[str], *, mode: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the named benchmarks in ``mode`` ("full" | "quick"); returns (record dicts, failed names).

    Raises:
        ValueError: On an unknown benchmark name or mode.
    """
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"Unknown benchmark(s) {unknown}; available: {', '.join(BENCHMARKS)}.")
    if mode not in ("full", "quick"):
        raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}.")
    out: list[dict[str, Any]] = []
    failed: list[str] = []
    for name in names:
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        t0, c0 = time.perf_counter(), _cpu_seconds()
        logger.info("running %s (%s)...", name, mode)
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            records: list[Record] = module.run(module.settings(mode))
            dicts = [r.to_dict() for r in records]
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            logger.error("benchmark %s failed:\n%s", name, traceback.format_exc())
            failed.append(name)
            dicts = [{
                "name": f"{name}.error", "ours": None, "baseline": None, "ratio": None, "units": "", "better": "higher",
                "target": "", "meets_target": None, "details": {"error": f"{type(exc).__name__}: {exc}"[:2000]},
                "machine": machine_info(),
            }]
        seconds = time.perf_counter() - t0
        # the share of the machine's cores this benchmark's process (and its workers) had: well below 1
        # when other processes competed for the cores (a shared machine), whatever the load average says
        share = (_cpu_seconds() - c0) / (seconds * (os.cpu_count() or 1)) if seconds > 0 else None
        for d in dicts:
            d.update(benchmark=name, mode=mode, recorded_at=stamp, benchmark_seconds=round(seconds, 1),
                     cpu_share=None if share is None else round(share, 2))
        out.extend(dicts)
        logger.info("%s done in %.0f s", name, seconds)
    return out, failed


def _kinds_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{kind: {"machine", "updated", "records"}}`` of a results document of either schema."""
    if isinstance(document.get("kinds"), dict):
        return {k: dict(v) for k, v in document["kinds"].items() if isinstance(v, dict)}
    kinds: dict[str, dict[str, Any]] = {}
    for record in document.get("records", []):  # schema 1: one flat list, one machine
        kind = kind_of(record.get("machine") or document.get("machine") or {})
        entry = kinds.setdefault(kind, {"machine": record.get("machine") or document.get("machine") or {},
                                        "updated": document.get("updated"), "records": []})
        entry["records"].append(record)
    return kinds


def _order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    return sorted(records, key=lambda r: order.get(r.get("benchmark"), len(order)))


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def merge_results(path: Path, records: list[dict[str, Any]], ran: Sequence[str],
                  *, kind: str | None = None, machine_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The results document: ``records`` filed under ``kind`` (default: this machine's), replacing that
    kind's records of the benchmarks in ``ran``; every other record in ``path`` is kept as it was.
    ``machine_extra`` is added to that kind's ``machine`` block (e.g. the measured matmul GFLOP/s)."""
    machine = {**machine_info(), **(machine_extra or {})}
    kind = kind or machine["kind"]
    kinds: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            kinds = _kinds_of(json.loads(path.read_text()))
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("Ignoring unreadable %s (%s); writing a new file.", path, exc)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    previous = kinds.get(kind, {}).get("records", [])
    kept = [r for r in previous if r.get("benchmark") not in set(ran)]
    kinds[kind] = {"machine": machine, "updated": now, "records": _order(kept + records)}
    return {
        "schema_version": SCHEMA_VERSION,
        "updated": now,
        "ratio": "ours / baseline, in the record's units; 'better' says which direction of ours is good",
        "kinds": kinds,
    }


def all_records(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every record of a results document, kinds one after the other."""
    return [r for entry in _kinds_of(document).values() for r in entry.get("records", [])]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:,.0f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def format_table(records: list[dict[str, Any]], *, markdown: bool = False) -> str:
    """A table of the records: name, ours, baseline, ratio, units, target, meets target."""
    header = ["benchmark", "ours", "baseline", "ratio", "units", "target", "meets"]
    rows = []
    for r in records:
        meets = {True: "yes", False: "NO", None: "-"}[r.get("meets_target")]
        rows.append([r["name"], _fmt(r.get("ours")), _fmt(r.get("baseline")), _fmt(r.get("ratio")), r.get("units", ""),
                     r.get("target", ""), meets])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * 3 + ["---"] * 3) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    widths[5] = min(widths[5], 48)
    lines = []
    for row in [header, *rows]:
        cells = [str(c)[: widths[i]].ljust(widths[i]) if i in (0, 4, 5, 6) else str(c).rjust(widths[i])
                 for i, c in enumerate(row)]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_kinds_table(document: dict[str, Any]) -> str:
    """A Markdown table of a results document with one column per CPU kind:
    ``ours / baseline = ratio (meets)`` in each, and the load average of that kind's run in its header."""
    kinds = _kinds_of(document)
    names: list[str] = []
    info: dict[str, dict[str, Any]] = {}
    for entry in kinds.values():
        for r in _order(entry.get("records", [])):
            if r["name"] not in info:
                names.append(r["name"])
                info[r["name"]] = r
    header = ["benchmark", "units", "target"]
    for kind, entry in kinds.items():
        loads = [r.get("machine", {}).get("load_avg_1m") for r in entry.get("records", [])]
        loads = [x for x in loads if isinstance(x, (int, float))]
        load = f", load {min(loads):.1f}-{max(loads):.1f}" if loads else ""
        header.append(f"{kind}{load}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    by_kind = {kind: {r["name"]: r for r in entry.get("records", [])} for kind, entry in kinds.items()}
    for name in names:
        r0 = info[name]
        row = [name, r0.get("units", ""), r0.get("target", "")]
        for kind in kinds:
            r = by_kind[kind].get(name)
            if r is None:
                row.append("")
                continue
            meets = {True: "yes", False: "NO", None: "-"}[r.get("meets_target")]
            row.append(f"{_fmt(r.get('ours'))} / {_fmt(r.get('baseline'))} = {_fmt(r.get('ratio'))} ({meets})")
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks [--quick] [--only NAME ...] [--out PATH] [--threads N] [--markdown]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes (a few minutes); figures not for the README")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results file (default {DEFAULT_OUT}; with --quick {QUICK_OUT.name}, git-ignored, so a "
                             "quick run never replaces the full figures)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for every benchmark (default: torch's default, = CPU cores)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the results file (--out) as a Markdown table and exit; runs nothing")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    if args.markdown:
        if not args.out.is_file():
            parser.error(f"no results file at {args.out}; run the benchmarks first")
        print(format_kinds_table(json.loads(args.out.read_text())))  # noqa: T201
        return 0
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    start_benchmark_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:  # pragma: no cover - a hard dependency
        pass
    set_threads(args.threads)
    names = list(dict.fromkeys(args.only)) if args.only else list(BENCHMARKS)
    mode = "quick" if args.quick else "full"
    machine = machine_info()
    logger.info("machine: %s, torch %s, %d threads, load %.1f", machine["kind"], machine.get("torch"),
                machine["threads"], machine.get("load_avg_1m") or 0.0)
    # the practical dense-compute ceiling of this CPU right now (a shared machine: fastest of 7)
    from models._common import cpu_has_native_bf16

    dtypes = ("float32", "bfloat16") if cpu_has_native_bf16() else ("float32",)  # emulated bf16: seconds a call
    ceiling = {f"matmul_gflops_{dtype}": round(matmul_gflops(dtype=dtype)["best"], 1) for dtype in dtypes}
    logger.info("plain 1024x1024 matmul: %s", ceiling)
    records, failed = run_benchmarks(names, mode=mode)
    document = merge_results(args.out, records, names, machine_extra=ceiling)
    atomic_write_json(document, args.out)
    print(format_table(records))  # noqa: T201 - the command's output
    kind = machine["kind"]
    print(f"\nwrote {args.out} ({len(document['kinds'][kind]['records'])} records of {kind}; "  # noqa: T201
          f"{len(document['kinds'])} kind(s) in the file)")
    if failed:
        logger.error("failed: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
