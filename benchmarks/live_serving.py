"""Benchmark 7, live serving: the Gradio app under concurrent ``gradio_client`` clients vs one client.

A tiny real study is built first (``automl.search.run_search`` with the ``smoke`` preset restricted to
``models``, into a temporary ``leaderboards/``), then :func:`ui.gradio_app.launch` serves it with
``block=False`` on a free **loopback** port (127.0.0.1; nothing else is contacted). Each client is
its own ``gradio_client.Client`` in its own thread and sends ``requests`` calls of the public
``/predict`` endpoint (upload of one phantom test image + prediction) one after another; the loops
are bounded and every call has a timeout.

* baseline: 1 client x ``requests`` calls;
* ours: ``clients`` clients x ``requests`` calls at the same time (the app's queue runs
  ``CONCURRENCY_LIMIT`` predictions at once).

Figures: requests/s (completed calls / wall time of the phase), p50/p95 latency of a call (ms), and
errors (exceptions or malformed answers), which must be 0. ``ui.gradio_app`` lowers torch's threads
for its request concurrency; the previous setting is restored afterwards.

Run alone: ``python -m benchmarks --only live_serving``.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import Record, make_record, percentile

__all__ = ["Settings", "run", "settings"]

logger = logging.getLogger(__name__)

NAME = "live_serving"
CALL_TIMEOUT_S = 120.0


@dataclass
class Settings:
    clients: int = 4
    requests: int = 50
    models: tuple[str, ...] = ("tiny_cnn",)
    warmup: int = 3


def settings(mode: str) -> Settings:
    """``"full"`` or ``"quick"`` settings (quick: 4 clients x 10 requests)."""
    if mode == "full":
        return Settings()
    if mode == "quick":
        return Settings(requests=10, warmup=2)
    raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}.")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(url: str) -> Any:
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False, analytics_enabled=False,
                  httpx_kwargs={"timeout": CALL_TIMEOUT_S})


def _session(client: Any, image: Path, n: int, classes: list[str]) -> dict[str, Any]:
    """One client: ``n`` sequential /predict calls; latencies of the successful ones and the errors."""
    from gradio_client import handle_file

    latencies: list[float] = []
    errors: list[str] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                job = client.submit(handle_file(str(image)), api_name="/predict")
                result = job.result(timeout=CALL_TIMEOUT_S)
                if not isinstance(result, dict) or result.get("label") not in classes:
                    raise ValueError(f"malformed answer {str(result)[:200]}")
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
    return {"latencies": latencies, "errors": errors}


def _phase(url: str, image: Path, clients: int, n: int, classes: list[str]) -> dict[str, Any]:
    """``clients`` connected clients (connected before the clock starts) x ``n`` calls each."""
    connected = [_client(url) for _ in range(clients)]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        sessions = list(pool.map(lambda c: _session(c, image, n, classes), connected))
    wall = time.perf_counter() - t0
    latencies = [x for s in sessions for x in s["latencies"]]
    errors = [e for s in sessions for e in s["errors"]]
    return {
        "clients": clients, "requests": clients * n, "completed": len(latencies), "errors": len(errors),
        "error_samples": errors[:5], "wall_s": wall, "rps": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": statistics.median(latencies) * 1e3 if latencies else None,
        "p95_ms": percentile(latencies, 95) * 1e3 if latencies else None,
    }


def _build_study(out: Path, models: tuple[str, ...]) -> Path:
    from automl.search import SearchConfig, run_search

    config = SearchConfig(preset="smoke", study="bench_serving", leaderboards=str(out), models=tuple(models),
                          n_trials=len(models), leakage_audit="none", device="cpu")
    return Path(run_search(config))


def run(cfg: Settings) -> list[Record]:
    """Build a tiny study, serve it, and measure 1 client vs ``cfg.clients`` clients."""
    import torch

    from automl.results import load_study
    from ui import gradio_app

    threads = torch.get_num_threads()
    saved_env = {k: os.environ.get(k) for k in ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED")}
    demo = None
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        try:
            os.environ["GRADIO_TEMP_DIR"] = str(Path(tmp) / "gradio")
            os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
            t0 = time.perf_counter()
            study_dir = _build_study(Path(tmp) / "leaderboards", cfg.models)
            build_s = time.perf_counter() - t0
            study = load_study(study_dir)
            test = study.split[study.split["part"] == "test"].sort_values("path")
            image = Path(study.data_dir) / test["path"].iloc[0]
            demo = gradio_app.launch(study_dir=study_dir, server_name="127.0.0.1", server_port=_free_port(),
                                     block=False, leaderboards_root=Path(tmp) / "leaderboards")
            url = demo.local_url
            served_threads = torch.get_num_threads()
            _phase(url, image, 1, cfg.warmup, list(study.classes))  # warm-up, not reported
            single = _phase(url, image, 1, cfg.requests, list(study.classes))
            multi = _phase(url, image, cfg.clients, cfg.requests, list(study.classes))
        finally:
            if demo is not None:
                demo.close()
            torch.set_num_threads(threads)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    common = {"study_models": list(cfg.models), "study_build_s": build_s, "endpoint": "/predict",
              "concurrency_limit": gradio_app.CONCURRENCY_LIMIT, "torch_threads_while_serving": served_threads,
              "single_client": single, "concurrent": multi, "loopback": "127.0.0.1"}
    errors = single["errors"] + multi["errors"]
    return [
        make_record(
            f"{NAME}.{cfg.clients}_clients_x_{cfg.requests}.throughput", ours=multi["rps"], baseline=single["rps"],
            units="requests/s", better="higher", target="0 errors", meets_target=errors == 0, details=common,
        ),
        make_record(
            f"{NAME}.{cfg.clients}_clients_x_{cfg.requests}.latency_p50", ours=multi["p50_ms"],
            baseline=single["p50_ms"], units="ms", better="lower",
            target="informational: latency under concurrency vs one client", meets_target=None,
            details={"p95_ms_concurrent": multi["p95_ms"], "p95_ms_single": single["p95_ms"],
                     "errors": errors},
        ),
    ]
