"""Smoke tests of the benchmarks: every benchmark runs at a minuscule size and returns well-formed
records. Timings are never asserted (they depend on the machine); the schema, the ratio arithmetic,
the targets' bookkeeping and the error paths are."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from benchmarks import _common
from benchmarks import __main__ as cli

RECORD_KEYS = {"name", "ours", "baseline", "ratio", "units", "better", "target", "meets_target", "details", "machine"}


def _check_records(records: list, prefix: str) -> list[dict]:
    assert records, "a benchmark must return at least one record"
    dicts = []
    for record in records:
        d = record.to_dict() if hasattr(record, "to_dict") else record
        assert RECORD_KEYS <= set(d), set(d) ^ RECORD_KEYS
        assert d["name"].startswith(prefix + ".")
        assert d["better"] in ("higher", "lower")
        assert isinstance(d["units"], str) and d["units"]
        assert isinstance(d["target"], str) and d["target"]
        assert d["meets_target"] in (True, False, None)
        assert isinstance(d["details"], dict)
        for key in ("kind", "cpu", "cores", "capabilities", "torch", "threads", "peak_gflops_fp32", "load_avg_1m"):
            assert key in d["machine"]
        if d["ours"] is not None and d["baseline"] not in (None, 0):
            assert d["ratio"] == pytest.approx(d["ours"] / d["baseline"])
        json.dumps(d, allow_nan=False)  # plain JSON, no NaN/inf
        dicts.append(d)
    return dicts


# ------------------------------------------------------------------------------------------ _common
def test_percentile_matches_numpy() -> None:
    np = pytest.importorskip("numpy")
    values = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for q in (0, 25, 50, 95, 100):
        assert _common.percentile(values, q) == pytest.approx(np.percentile(values, q))


@pytest.mark.parametrize("values, q", [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_rejects_bad_input(values: list, q: float) -> None:
    with pytest.raises(ValueError):
        _common.percentile(values, q)


def test_measure_counts_calls_and_validates() -> None:
    calls = []
    timing = _common.measure(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(timing.values) == 3
    assert min(timing.values) <= timing.median <= timing.p95 <= max(timing.values)
    with pytest.raises(ValueError, match="repeats"):
        _common.measure(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        _common.measure(lambda: None, warmup=-1)


def test_make_record_ratio_and_validation() -> None:
    r = _common.make_record("x.y", ours=3.0, baseline=2.0, units="s", better="lower", target="t", meets_target=False)
    assert r.ratio == pytest.approx(1.5) and r.meets_target is False
    assert _common.make_record("x.y", ours=1.0, baseline=0.0, units="s", better="lower", target="t",
                               meets_target=None).ratio is None
    assert _common.make_record("x.y", ours=None, baseline=2.0, units="s", better="lower", target="t",
                               meets_target=None).ratio is None
    assert _common.make_record("x.y", ours=math.inf, baseline=2.0, units="s", better="lower", target="t",
                               meets_target=None).to_dict()["ours"] is None
    with pytest.raises(ValueError, match="better"):
        _common.make_record("x.y", ours=1.0, baseline=1.0, units="s", better="faster", target="t", meets_target=None)
    with pytest.raises(ValueError, match="name"):
        _common.make_record("", ours=1.0, baseline=1.0, units="s", better="lower", target="t", meets_target=None)


@pytest.mark.parametrize(
    "flags, lanes",
    [("fpu sse2 avx avx2 fma avx512f avx512bw", 16), ("fpu sse2 avx avx2 fma", 8), ("fpu sse2", 4)],
)
def test_cpu_peak_from_cpuinfo(tmp_path: Path, flags: str, lanes: int) -> None:
    text = (f"processor\t: 0\nmodel name\t: Test CPU\ncpu MHz\t\t: 2500.000\nflags\t\t: {flags}\n\n"
            f"processor\t: 1\nmodel name\t: Other CPU\ncpu MHz\t\t: 1000.000\nflags\t\t: fpu\n")
    (tmp_path / "cpuinfo").write_text(text)
    info = _common.read_cpuinfo(tmp_path / "cpuinfo")
    assert info["model"] == "Test CPU" and info["mhz"] == 2500.0  # first processor only
    peak = _common.cpu_peak_gflops(info, cores=2)
    assert peak["gflops"] == pytest.approx(lanes * 2 * 2 * 2.5)
    assert _common.cpu_peak_gflops({"flags": ["avx2"]}, cores=2) is None  # no clock, no estimate
    assert _common.read_cpuinfo(tmp_path / "missing") == {}


def test_set_threads_round_trip() -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    assert _common.set_threads(None) == before
    with pytest.raises(ValueError):
        _common.set_threads(0)
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------------------ the CLI
def _record(name: str, benchmark: str) -> dict:
    d = _common.make_record(name, ours=1.0, baseline=2.0, units="s", better="lower", target="t",
                            meets_target=True).to_dict()
    d["benchmark"] = benchmark
    return d


def test_run_benchmarks_rejects_unknown_names_and_modes() -> None:
    with pytest.raises(ValueError, match="nonsense"):
        cli.run_benchmarks(["nonsense"], mode="quick")
    with pytest.raises(ValueError, match="mode"):
        cli.run_benchmarks(["inference"], mode="fast")


def _records_of(doc: dict, kind: str | None = None) -> list[str]:
    kind = kind or _common.machine_info()["kind"]
    return [r["name"] for r in doc["kinds"][kind]["records"]]


def test_merge_keeps_records_of_benchmarks_not_rerun(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"records": [_record("inference.a", "inference"),
                                            _record("input_pipeline.old", "input_pipeline")]}))
    doc = cli.merge_results(path, [_record("input_pipeline.new", "input_pipeline")], ["input_pipeline"])
    assert doc["schema_version"] == 2
    assert _records_of(doc) == ["input_pipeline.new", "inference.a"]  # run order
    path.write_text("{not json")
    assert _records_of(cli.merge_results(path, [], ["inference"])) == []


def test_merge_keeps_other_cpu_kinds_side_by_side(tmp_path: Path) -> None:
    """A schema-1 file of another CPU (the Intel Xeon with AMX) survives a run here, under its own kind."""
    path = tmp_path / "results.json"
    xeon = {"cpu": "Intel(R) Xeon(R) Processor", "cores": 2, "isa": ["avx512f", "avx512_bf16", "amx_bf16", "avx2"]}
    old = _record("inference.a", "inference")
    old["machine"] = xeon
    path.write_text(json.dumps({"schema_version": 1, "machine": xeon, "records": [old]}))
    here = _common.machine_info()["kind"]
    doc = cli.merge_results(path, [_record("inference.a", "inference")], ["inference"], kind="Other CPU (avx2, 2 cores)")
    assert set(doc["kinds"]) == {"Intel(R) Xeon(R) Processor (amx_bf16, 2 cores)", "Other CPU (avx2, 2 cores)"}
    path.write_text(json.dumps(doc))
    doc = cli.merge_results(path, [_record("inference.b", "inference")], ["inference"])
    assert _records_of(doc, "Intel(R) Xeon(R) Processor (amx_bf16, 2 cores)") == ["inference.a"]
    assert _records_of(doc, here) == ["inference.b"] and len(doc["kinds"]) == 3 - (here == "Other CPU (avx2, 2 cores)")
    table = cli.format_kinds_table(doc).splitlines()
    assert "Intel(R) Xeon(R) Processor (amx_bf16, 2 cores)" in table[0] and here in table[0]
    assert len(table) == 2 + 2 and "0.5" in table[2]


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse2 avx avx2 fma", {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False}),
    ("avx2 avx512f avx512bw avx512_bf16", {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": False}),
    ("avx2 avx512f avx512_bf16 amx_bf16 amx_tile", {"avx2": True, "avx512f": True, "avx512_bf16": True,
                                                    "amx_bf16": True}),
])
def test_cpu_capabilities_from_cpuinfo_flags(tmp_path: Path, flags: str, expected: dict) -> None:
    from models._common import cpu_capabilities, cpu_kind

    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\n"
                                      f"processor\t: 1\nmodel name\t: Test CPU\nflags\t\t: fpu\n")
    caps = cpu_capabilities(str(tmp_path / "cpuinfo"))
    assert {k: caps[k] for k in expected} == expected and caps["model"] == "Test CPU" and caps["cores"] >= 1
    newest = [k for k in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if expected[k]][0]
    assert cpu_kind(caps) == f"Test CPU ({newest}, {caps['cores']} cores)"


def test_native_bf16_means_amx_or_avx512_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    import models
    from models import _common as common

    base = {"model": "x", "cores": 2, "avx2": True, "avx512f": True, "avx512_bf16": False, "amx_bf16": False}
    for extra, native in (({}, False), ({"avx512_bf16": True}, True), ({"amx_bf16": True}, True)):
        monkeypatch.setattr(common, "cpu_capabilities", lambda: {**base, **extra})
        assert models.cpu_has_native_bf16() is native
    monkeypatch.setattr(common, "cpu_capabilities", lambda: {**base, "avx512_bf16": True})
    assert models.cpu_has_amx() is False


def test_format_table_lists_every_record() -> None:
    records = [_record("input_pipeline.a", "input_pipeline"), _record("inference.b|c", "inference")]
    text = cli.format_table(records)
    assert "input_pipeline.a" in text and "yes" in text and " 0.5 " in text
    md = cli.format_table(records, markdown=True).splitlines()
    assert md[0].startswith("| benchmark") and len(md) == 4 and "inference.b\\|c" in md[3]


@pytest.fixture
def _restore_logging():
    """``main`` configures logging like any entry point; give the other tests their settings back."""
    import logging

    names = ["", "benchmarks", "optuna", "httpx", "gradio", "automl", "data", "models", "ui", "timm"]
    levels = {n: logging.getLogger(n).level for n in names}
    handlers = list(logging.getLogger().handlers)
    optuna = pytest.importorskip("optuna")
    verbosity = optuna.logging.get_verbosity()
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
    logging.getLogger().handlers[:] = handlers
    optuna.logging.set_verbosity(verbosity)


@pytest.mark.usefixtures("_restore_logging")
def test_main_writes_json_and_reports_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    from benchmarks import inference

    monkeypatch.setattr(inference, "settings", lambda mode: _tiny_inference())
    out = tmp_path / "r.json"
    assert cli.main(["--only", "inference", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    records = cli.all_records(doc)
    assert {r["benchmark"] for r in records} == {"inference"}
    assert all(r["mode"] == "full" for r in records)
    assert all(r["machine"]["kind"] == _common.machine_info()["kind"] for r in records)
    _check_records(records, "inference")
    assert "inference.tiny_cnn@32.p50" in capsys.readouterr().out
    assert cli.main(["--markdown", "--out", str(out)]) == 0
    assert "| inference.tiny_cnn@32.p50 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--markdown", "--out", str(tmp_path / "missing.json")])

    def broken(cfg):
        raise RuntimeError("boom")

    monkeypatch.setattr(inference, "run", broken)
    assert cli.main(["--only", "inference", "--quick", "--out", str(out)]) == 1
    records = cli.all_records(json.loads(out.read_text()))
    assert [r["name"] for r in records] == ["inference.error"]
    assert "boom" in records[0]["details"]["error"]


# ------------------------------------------------------------------------------------------ benchmarks
def test_input_pipeline_tiny() -> None:
    from benchmarks import input_pipeline

    cfg = input_pipeline.Settings(n_images=12, disk_size=48, size=32, batch_size=4, repeats=1,
                                  step_model="tiny_cnn", step_repeats=1)
    dicts = _check_records(input_pipeline.run(cfg), "input_pipeline")
    assert {d["units"] for d in dicts} == {"images/s", "ms per batch"}
    assert all(d["ours"] > 0 and d["baseline"] > 0 for d in dicts)
    assert dicts[0]["details"]["n_images"] == 12


def test_training_step_tiny_with_variants() -> None:
    from benchmarks import training_step

    cfg = training_step.Settings(models=("tiny_cnn",), size=32, batch_size=4, steps_per_epoch=2, epochs=2,
                                 variant_models=("tiny_cnn",), variants=("channels_last", "bf16", "all_cores"))
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    dicts = _check_records(training_step.run(cfg), "training_step")
    assert torch.get_num_threads() == threads
    main, *variants = dicts
    assert main["name"] == "training_step.tiny_cnn@32" and main["target"] == "ratio >= 0.95"
    assert main["details"]["gflop_per_image_train_step"] == pytest.approx(
        3 * main["details"]["gflop_per_image_forward"])
    assert len(main["details"]["ours_epochs_ips"]) == len(main["details"]["baseline_epochs_ips"]) == 2 * cfg.rounds
    expected = ["channels_last", "bf16"] + (["all_cores"] if (os.cpu_count() or 1) > threads else [])
    assert [v["name"].rsplit(".", 1)[1] for v in variants] == expected
    assert all(v["meets_target"] is None for v in variants)


def test_training_step_rejects_unknown_variant() -> None:
    from benchmarks import training_step

    cfg = training_step.Settings(models=("tiny_cnn",), size=16, batch_size=2, steps_per_epoch=1, epochs=1,
                                 variant_models=("tiny_cnn",), variants=("fp8",))
    with pytest.raises(ValueError, match="fp8"):
        training_step.run(cfg)


def test_training_flops_of_a_linear_layer() -> None:
    torch = pytest.importorskip("torch")
    from benchmarks.training_step import training_flops

    layer = torch.nn.Linear(8, 4, bias=False)
    flops = training_flops(layer, torch.rand(3, 8))
    assert flops["forward"] == 2 * 3 * 8 * 4
    assert flops["estimate"] == 3 * flops["forward"]
    # counted backward: the weight gradient only (the input needs no gradient) = one more forward
    assert flops["counted_forward_backward"] == 2 * flops["forward"]
    assert layer.weight.grad is None  # the counting pass leaves no gradients behind


def test_search_efficiency_tiny() -> None:
    from benchmarks import search_efficiency

    cfg = search_efficiency.Settings(seeds=(0,), models=("tiny_cnn", "logreg"), lr_grid=(1e-3,), batch_grid=(8,),
                                     c_grid=(1.0,), n_trials=2, n_startup_trials=1, phantom_n=60, image_size=16,
                                     folds=2, epochs=1, retrain_seeds=(1000,))
    dicts = _check_records(search_efficiency.run(cfg), "search_efficiency")
    ours = dicts[0]
    entry = ours["details"]["per_seed"][0]
    assert entry["grid_best_params"]["model"] in ("tiny_cnn", "logreg")
    assert len(entry["grid_best_retrained_aucs"]) == 1 and 0.0 <= entry["grid_best_retrained_aucs"][0] <= 1.0
    assert ours["details"]["grid_best_drop_when_retrained"] == [
        entry["grid_best_auc"] - entry["grid_best_retrained_aucs"][0]]
    assert ours["units"] == "image-passes" and ours["better"] == "lower"
    seed = ours["details"]["per_seed"][0]
    assert seed["grid_trials"] == 2 and seed["grid_image_passes"] > 0
    assert seed["ours"]["image_passes_to_reach"] <= seed["ours"]["total_image_passes"]
    assert dicts[1]["meets_target"] is None  # random search is a reference


def test_count_compute_counts_training_images_times_epochs() -> None:
    np = pytest.importorskip("numpy")
    from automl import train
    from benchmarks.search_efficiency import count_compute

    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, size=(12, 16, 16), dtype=np.uint8)
    y = np.tile([0, 1], 6)
    counter = {"image_passes": 0.0, "seconds": 0.0}
    original = train.fit_fold
    with count_compute(counter):
        train.fit_fold(X[:8], y[:8], X[8:], y[8:], config=train.TrainConfig(model="tiny_cnn", epochs=2, batch_size=4,
                                                                           patience=None), num_classes=2)
    assert train.fit_fold is original
    assert counter["image_passes"] == 8 * 2 and counter["seconds"] > 0


def test_frozen_backbone_tiny() -> None:
    from benchmarks import frozen_backbone

    cfg = frozen_backbone.Settings(model="resnet18", size=32, n_train=16, n_val=8, batch_size=8, head_epochs=2)
    dicts = _check_records(frozen_backbone.run(cfg), "frozen_backbone")
    assert [d["units"] for d in dicts] == ["s per epoch", "s per fit"]
    assert len(dicts[0]["details"]["cached_epoch_seconds"][0]) == 2


def test_transfer_lane_tiny() -> None:
    from benchmarks import transfer_lane

    dicts = _check_records(transfer_lane.run(transfer_lane.Settings(n=120, size=32, folds=2, epochs=1)),
                           "transfer_lane")
    details = dicts[0]["details"]
    assert dicts[0]["units"] == "CV AUC per CPU-second"
    assert details["lane_cpu_seconds"] > 0 and details["scratch_cpu_seconds"] > 0
    assert dicts[0]["ours"] == pytest.approx(details["lane_cv_auc"] / details["lane_cpu_seconds"])


def test_frozen_backbone_needs_a_timm_model(tmp_path: Path) -> None:
    from benchmarks.frozen_backbone import write_random_weights

    with pytest.raises(ValueError, match="simple_cnn"):
        write_random_weights("simple_cnn", tmp_path)


def _tiny_inference():
    from benchmarks import inference

    return inference.Settings(models=("tiny_cnn",), sizes={"tiny_cnn": 32}, disk_size=48, warmup=1, repeats=3,
                              batch=4, batch_repeats=1)


def test_inference_tiny() -> None:
    from benchmarks import inference

    dicts = _check_records(inference.run(_tiny_inference()), "inference")
    assert [d["name"] for d in dicts] == ["inference.tiny_cnn@32.p50", "inference.tiny_cnn@32.batch4"]
    p50 = dicts[0]
    assert p50["details"]["p95_ms_ours"] >= p50["ours"]
    # both paths see the same weights and nearly the same pixels
    assert p50["details"]["probability_ours"] == pytest.approx(p50["details"]["probability_naive"], abs=0.05)


def test_attributions_tiny_without_memory_probe() -> None:
    from benchmarks import attributions

    cfg = attributions.Settings(models=("resnet18", "vit_tiny"), size=32, n_steps=4, warmup=0, repeats=1, cam_repeats=2,
                                memory=False)
    dicts = _check_records(attributions.run(cfg), "attributions")
    assert [d["name"].split(".", 1)[1] for d in dicts] == [
        "resnet18@32.grad_cam", "resnet18@32.integrated_gradients_4", "resnet18@32.integrated_gradients_4.fp32",
        "vit_tiny@32.grad_cam", "vit_tiny@32.integrated_gradients_4", "vit_tiny@32.integrated_gradients_4.fp32",
    ]
    ig = dicts[1]["details"]
    assert ig["precision_default"] in ("fp32", "bf16")  # bf16 only on a CPU with AMX
    assert -1.0 <= ig["map_correlation_default_vs_fp32"] <= 1.0
    assert "2 s" in dicts[1]["target"] and "2 s" not in dicts[4]["target"]  # resnet18's absolute target only
    assert dicts[2]["meets_target"] is None  # the fp32 timing is informational


def test_ig_memory_rejects_unknown_variant() -> None:
    from benchmarks.attributions import ig_memory

    with pytest.raises(ValueError, match="variant"):
        ig_memory("resnet18", 32, 2, "mine")


@pytest.mark.slow
def test_attributions_memory_probe_subprocess() -> None:
    from benchmarks import attributions

    cfg = attributions.Settings(models=("resnet18",), size=64, n_steps=16, warmup=0, repeats=1, cam_repeats=2, memory=True)
    dicts = _check_records(attributions.run(cfg), "attributions")
    mem = dicts[-1]
    assert mem["name"] == "attributions.resnet18@64.ig_peak_memory" and mem["units"] == "MiB"
    assert mem["details"]["ours"]["peak_mib"] >= mem["details"]["ours"]["rss_before_mib"]


@pytest.mark.slow
def test_live_serving_tiny() -> None:
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    torch = pytest.importorskip("torch")
    from benchmarks import live_serving

    threads = torch.get_num_threads()
    dicts = _check_records(live_serving.run(live_serving.Settings(clients=2, requests=2, warmup=1)), "live_serving")
    assert torch.get_num_threads() == threads  # restored after serving
    details = dicts[0]["details"]
    assert details["concurrent"]["requests"] == 4 and details["single_client"]["requests"] == 2
    assert dicts[0]["meets_target"] == (details["concurrent"]["errors"] + details["single_client"]["errors"] == 0)


def test_bf16_accuracy_tiny() -> None:
    from benchmarks import bf16_accuracy

    cfg = bf16_accuracy.Settings(seeds=(0,), models=("tiny_cnn",), lr_grid=(1e-3,), batch_grid=(8, 16), phantom_n=60,
                                 image_size=16, folds=2, epochs=1)
    dicts = _check_records(bf16_accuracy.run(cfg), "bf16_accuracy")
    assert [d["name"] for d in dicts] == ["bf16_accuracy.tiny_cnn@16"]
    details = dicts[0]["details"]
    assert details["n_pairs"] == 2 and len(details["pairs"]) == 2
    diffs = [p["bf16"] - p["fp32"] for p in details["pairs"]]
    assert details["mean_paired_difference"] == pytest.approx(sum(diffs) / 2)
    assert dicts[0]["meets_target"] is None and details["speedup_bf16"] > 0


def test_quick_settings_fit_the_search_space() -> None:
    """Quick mode once crashed: a grid batch of 32 on folds that allow (8, 16); and the search benchmark's
    quick budget equalled its grid, so both strategies read 1.00 whenever neither reached the grid's best."""
    from benchmarks import bf16_accuracy, search_efficiency

    quick = bf16_accuracy.settings("quick")
    assert set(quick.batch_grid) <= set(search_efficiency.feasible_batch_sizes(24))
    cfg = search_efficiency.settings("quick")
    grid_points = len(cfg.lr_grid) * len(cfg.batch_grid) + len(cfg.c_grid)
    assert cfg.n_trials < grid_points
    assert search_efficiency.feasible_batch_sizes(20) == (8, 16)


def test_bf16_accuracy_skips_batches_the_folds_do_not_allow() -> None:
    from benchmarks import bf16_accuracy

    cfg = bf16_accuracy.Settings(seeds=(0,), models=("tiny_cnn",), lr_grid=(1e-3,), batch_grid=(8, 64), phantom_n=60,
                                 image_size=16, folds=2, epochs=1)
    details = _check_records(bf16_accuracy.run(cfg), "bf16_accuracy")[0]["details"]
    assert details["n_pairs"] == 1 and [p["batch_size"] for p in details["skipped_points"]] == [64]


def test_phase_timer_subtracts_nested_phases() -> None:
    import time
    import types

    from benchmarks.end_to_end import PhaseTimer

    owner = types.SimpleNamespace()
    owner.inner = lambda: time.sleep(0.02)
    owner.outer = lambda: (time.sleep(0.01), owner.inner())
    timer = PhaseTimer()
    with timer.patched([(owner, "inner", "features"), (owner, "outer", "trials")]):
        owner.outer()
    assert timer.calls == {"features": 1, "trials": 1}
    assert 0.015 < timer.seconds["features"] and timer.seconds["trials"] < 0.02
    assert not hasattr(owner.inner, "__wrapped__")  # restored


def test_end_to_end_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import end_to_end

    monkeypatch.setenv("STROKECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = end_to_end.Settings(n=60, side=96, slices_per_patient=(2, 3), phases="all", image_size=32, baseline_n=6,
                              feature_n=8, feature_repeats=1, models=("logreg", "tiny_cnn"), epochs=1, folds=2,
                              absolute_targets=False)
    dicts = _check_records(end_to_end.run(cfg), "end_to_end")
    names = [d["name"].split(".", 2)[2] for d in dicts]
    assert names == ["scan_cache", "scan", "cache", "features_resnet18", "preset_cpu"]
    scan_cache, preset = dicts[0], dicts[-1]
    assert scan_cache["details"]["n_files"] == 60 and scan_cache["ours"] > 0 and scan_cache["baseline"] > 0
    phases = preset["details"]["phases_s"]
    assert set(phases) == {*end_to_end.PHASES, "other"} and phases["trials"] > 0 and phases["scan"] > 0
    assert sum(phases.values()) == pytest.approx(preset["ours"], rel=0.05)
    assert preset["meets_target"] is None  # a reduced preset has no target


def test_gpu_benchmark_exits_cleanly_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run")
    from benchmarks import gpu

    out = tmp_path / "r.json"
    assert gpu.main(["--out", str(out)]) == 0
    assert gpu.NO_GPU_MESSAGE in capsys.readouterr().out
    assert not out.exists() and gpu.run() == []


def test_gpu_benchmark_loops_run_on_the_cpu() -> None:
    """The two training loops of the GPU benchmark, on the CPU at a minuscule size (the GPU run is the same code)."""
    np = pytest.importorskip("numpy")
    import types

    from benchmarks import gpu

    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, size=(16, 32, 32), dtype=np.uint8)
    y = np.tile([0, 1], 8)
    plain = gpu.plain_fit("resnet18", X, y, epochs=1, batch_size=8, device="cpu")
    assert plain["images_per_second"] > 0 and plain["peak_gpu_mib"] is None
    ctx = types.SimpleNamespace(X=X, y=y, num_classes=2)
    ours = gpu.ours_fit("resnet18", ctx, np.arange(12), np.arange(12, 16), epochs=1, batch_size=4, device="cpu")
    assert ours["images_per_second"] > 0 and ours["precision"] in ("fp32", "bf16")


def test_quick_runs_write_their_own_file_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import benchmarks.__main__ as cli

    written: list[Path] = []
    monkeypatch.setattr(cli, "run_benchmarks", lambda names, mode: ([], []))
    monkeypatch.setattr(cli, "matmul_gflops", lambda dtype: {"best": 1.0})
    monkeypatch.setattr(cli, "merge_results", lambda out, records, names, machine_extra: {"kinds": {
        cli.machine_info()["kind"]: {"records": []}}})
    monkeypatch.setattr(cli, "atomic_write_json", lambda document, out: written.append(Path(out)))
    assert cli.main(["--quick", "--only", "inference"]) == 0
    assert cli.main(["--only", "inference"]) == 0
    assert written == [cli.QUICK_OUT, cli.DEFAULT_OUT] and cli.QUICK_OUT.name == "results_quick.json"
