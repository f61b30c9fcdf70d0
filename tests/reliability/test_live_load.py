"""The Gradio app under concurrent load on loopback: 8 ``gradio_client`` clients x 25 requests mixing
good uploads and bad ones. Every good request must come back with the predictor's probabilities and
the study's decision, every bad one with a clean error naming the upload, and the server must keep
serving with a bounded resident memory (start/end RSS are reported).
"""
from __future__ import annotations

import struct
import threading
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.reliability import _support

pytestmark = pytest.mark.slow

CLIENTS = 8
REQUESTS_PER_CLIENT = 25
#: Allowed growth of the server's resident memory over the whole load, after warm-up.
RSS_GROWTH_LIMIT_MB = 150.0


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _bad_inputs(folder: Path, good_png: Path) -> dict[str, Path]:
    """Files a stranger might upload that must be refused cleanly."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["empty"] = folder / "empty.png"
    files["empty"].write_bytes(b"")
    files["text"] = folder / "notes.png"
    files["text"].write_text("this is a text file with a .png name\n" * 20)
    data = good_png.read_bytes()
    files["truncated"] = folder / "truncated.png"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["tiny"] = folder / "one_pixel.png"
    Image.fromarray(np.full((1, 1), 128, dtype=np.uint8)).save(files["tiny"])
    # a 20000 x 20000 "decompression bomb": a valid header, almost no data
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    files["bomb"] = folder / "bomb.png"
    files["bomb"].write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                              + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _png_chunk(b"IEND", b""))
    return files


def _wait_http(url: str, proc: object, log: Path, timeout: float = 180) -> None:
    def up() -> bool:
        if proc.poll() is not None:  # type: ignore[attr-defined]
            raise AssertionError(f"the Gradio server exited:\n{_support.tail(log)}")
        with urllib.request.urlopen(url + "config", timeout=5) as r:  # noqa: S310 - loopback
            return r.status == 200

    _support.wait_until(up, timeout=timeout, interval=0.5, what=f"the Gradio app at {url}")


def test_gradio_app_under_concurrent_load(smoke_study: Path, tmp_path: Path) -> None:
    import shutil

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    import models
    from automl import results
    from ui.gradio_app import decide

    study_dir = tmp_path / "leaderboards" / smoke_study.name
    shutil.copytree(smoke_study, study_dir)
    study = results.load_study(study_dir)
    model = study.best_model
    predictor = models.load_predictor(study.model_dir(model), device="cpu")
    threshold = float(study.threshold(model)) if len(study.classes) == 2 else None

    # good inputs: test-part images of each class (+ an RGB copy), with the expected answer
    data_dir = Path(study.config["data_dir"])
    test = study.split[study.split["part"] == "test"]
    picks = [data_dir / p for _, g in test.groupby("label") for p in g["path"].head(2)]
    from PIL import Image

    rgb = tmp_path / "inputs" / "rgb_copy.png"
    rgb.parent.mkdir(parents=True)
    Image.open(picks[0]).convert("RGB").save(rgb)
    picks.append(rgb)
    expected = {}
    for p in picks:
        probs = predictor.predict(p)["probabilities"]
        expected[str(p)] = (decide(study.classes, probs, threshold), probs)
    bad = _bad_inputs(tmp_path / "inputs" / "bad", picks[0])
    plan = [("good", p) for p in picks] + [("bad", p) for p in bad.values()]

    port = _support.free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "gradio.log"
    env = _support.subprocess_env(GRADIO_TEMP_DIR=str(tmp_path / "gradio-tmp"))
    proc = _support.start_module("ui.gradio_app", ["--study", str(study_dir), "--host", "127.0.0.1", "--port", str(port)],
                                 log_path=log, env=env)
    outcomes: list[tuple[str, str, str, float]] = []
    lock = threading.Lock()
    try:
        _wait_http(url, proc, log)

        def ask(client: Client, kind: str, path: Path) -> tuple[str, str]:
            try:
                answer = client.predict(handle_file(str(path)), api_name="/predict")
            except AppError as exc:
                message = str(exc)
                if kind == "good":
                    return "good_refused", message
                clean = (path.name in message and "unexpected error" not in message
                         and "Traceback" not in message and str(tmp_path) not in message)
                return ("bad_clean" if clean else "bad_unclear"), message
            if kind == "bad":
                return "bad_accepted", repr(answer)[:200]
            label, probs = expected[str(path)]
            got = {c["label"]: float(c["confidence"]) for c in answer["confidences"]}
            ok = answer["label"] == label and set(got) == set(probs) and all(abs(got[c] - probs[c]) < 1e-4 for c in probs)
            return ("good_ok" if ok else "good_wrong"), repr(answer)[:200]

        warm = Client(url, verbose=False, download_files=False)
        for kind, path in plan:  # warm-up: every input once (loads the model, compiles nothing else)
            result, message = ask(warm, kind, path)
            assert result in ("good_ok", "bad_clean"), f"warm-up {path.name}: {result}: {message}"
        rss_start = _support.process_rss_mb(proc.pid)
        rss_peak = rss_start

        def client_loop(index: int) -> None:
            nonlocal rss_peak
            client = Client(url, verbose=False, download_files=False)
            for i in range(REQUESTS_PER_CLIENT):
                kind, path = plan[(index * REQUESTS_PER_CLIENT + i) % len(plan)]
                t0 = time.perf_counter()
                try:
                    result, message = ask(client, kind, path)
                except Exception as exc:  # noqa: BLE001 - transport errors count as lost requests
                    result, message = "transport_error", f"{type(exc).__name__}: {exc}"
                with lock:
                    outcomes.append((kind, result, message, time.perf_counter() - t0))
                    rss_peak = max(rss_peak, _support.process_rss_mb(proc.pid))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            list(pool.map(client_loop, range(CLIENTS)))
        seconds = time.perf_counter() - t0
        assert proc.poll() is None, f"the server died under load:\n{_support.tail(log)}"
        final, message = ask(warm, *plan[0])  # still serving
        assert final == "good_ok", message
        rss_end = _support.process_rss_mb(proc.pid)
    finally:
        _support.stop_process(proc)

    counts: dict[str, int] = {}
    for _, result, _, _ in outcomes:
        counts[result] = counts.get(result, 0) + 1
    problems = [o for o in outcomes if o[1] not in ("good_ok", "bad_clean")]
    n_good = sum(1 for o in outcomes if o[0] == "good")
    latencies = np.array([o[3] for o in outcomes])
    _support.record(
        "test_gradio_app_under_concurrent_load", "load",
        what=f"{CLIENTS} concurrent gradio_client clients x {REQUESTS_PER_CLIENT} requests to /predict on loopback",
        outcome=f"{len(outcomes)} requests in {seconds:.1f} s: {counts}; server RSS {rss_start:.0f} MiB after "
                f"warm-up, {rss_peak:.0f} MiB peak, {rss_end:.0f} MiB at the end; latency median "
                f"{np.median(latencies):.2f} s, p95 {np.percentile(latencies, 95):.2f} s",
        lost=len(problems), requests=len(outcomes), good=n_good, bad=len(outcomes) - n_good,
        rss_start_mb=round(rss_start, 1), rss_end_mb=round(rss_end, 1), rss_peak_mb=round(rss_peak, 1),
    )
    _support.record(
        "test_gradio_app_under_concurrent_load", "bad_input",
        what="bad uploads mixed into the load: " + ", ".join(f"{k} ({p.name})" for k, p in bad.items()),
        outcome=f"{counts.get('bad_clean', 0)} clean refusals naming the upload, {counts.get('bad_unclear', 0)} "
                f"unclear, {counts.get('bad_accepted', 0)} wrongly accepted",
        lost=counts.get("bad_unclear", 0) + counts.get("bad_accepted", 0),
    )
    assert len(outcomes) == CLIENTS * REQUESTS_PER_CLIENT
    assert not problems, f"{len(problems)} requests not answered as expected, e.g. {problems[:3]}"
    assert rss_end - rss_start < RSS_GROWTH_LIMIT_MB, f"server RSS grew {rss_end - rss_start:.0f} MiB under load"
