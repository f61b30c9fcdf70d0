"""Faults: a worker killed with SIGKILL mid-trial, a full or read-only disk, a corrupted checkpoint or
model card, a dataset folder that changes between runs.

Disk-full and read-only are real when this process may mount a small ``tmpfs`` (root with
CAP_SYS_ADMIN, as on CI): the study is copied onto it, then the file system is filled up
(``ENOSPC``) or remounted read-only (``EROFS``; root ignores permission bits, not a read-only mount).
Elsewhere the same failure is simulated in-process by making ``os.replace`` raise the errno for
files of the study folder; the test says which it did in the report.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.reliability import _studies, _support

pytestmark = pytest.mark.slow

N_TRIALS = 5


# ============================================================================================ kill -9
def _victim(study: str, storage: object, pid: int) -> object | None:
    """A RUNNING trial of worker ``pid`` that is training (its configuration is fully sampled:
    ``train_config`` recorded), once at least one trial has completed; None otherwise."""
    from optuna.trial import TrialState

    trials = _studies.load_trials(study, storage)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return None
    for t in trials:
        if (t.state == TrialState.RUNNING and (t.user_attrs.get("worker") or {}).get("pid") == pid
                and t.user_attrs.get("train_config")):
            return t
    return None


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_kill9_mid_trial_then_resume(backend: str, request: pytest.FixtureRequest, phantom_data: Path,
                                     tmp_path: Path) -> None:
    from optuna.trial import TrialState

    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    out, study = tmp_path / "leaderboards", f"kill_{backend}"
    study_dir = out / study
    # 48 px x 3 epochs: trials that take seconds even with the CPU's bf16 training, so that the trial
    # seen RUNNING is still running when the kill lands
    args = _studies.search_args(study=study, data=phantom_data, out=out, storage=url, n_trials=N_TRIALS,
                                extra=("--epochs", "3", "--image-size", "48"))
    log = tmp_path / "search.log"

    victim = None
    for attempt in range(3):  # a trial may finish between the poll and the kill: try again
        proc = _support.start_module("automl.search", args, log_path=log)
        try:
            storage = _studies.open_storage(study_dir, url) if url else None

            def ready() -> object | None:
                if proc.poll() is not None:
                    raise AssertionError(f"the worker finished before a trial could be killed:\n{_support.tail(log)}")
                return _victim(study, storage or _studies.open_storage(study_dir, None), proc.pid)

            candidate = _support.wait_until(ready, timeout=300, interval=0.2, what="a RUNNING trial of the worker")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            _support.stop_process(proc)
        assert proc.returncode == -signal.SIGKILL
        after = {t.number: t for t in _studies.load_trials(study, _studies.open_storage(study_dir, url))}
        if after[candidate.number].state == TrialState.RUNNING:
            victim = after[candidate.number]
            break
    assert victim is not None, "could not catch a trial mid-run in 3 attempts"

    storage = _studies.open_storage(study_dir, url)
    before = _studies.load_trials(study, storage)
    snapshot = _studies.finished_snapshot(before)
    # Only the files of trials that had finished: the victim may have written its own file in the
    # instant between its last fold and the storage marking it COMPLETE; a failed trial's file is
    # removed on restart (check_study_folder: no non-complete trial has one).
    oof_before = {name: digest for name, digest in
                  _studies.file_digests(study_dir / "predictions", "oof_trial_*.csv").items()
                  if int(name.removeprefix("oof_trial_").removesuffix(".csv")) in snapshot}
    assert snapshot, "no finished trial before the kill"

    # restart: the same command
    result = _studies.run_module("automl.search", args, log_path=log, timeout=420)
    assert result.returncode == 0, f"the restarted search failed:\n{_support.tail(log)}"

    trials = _studies.load_trials(study, storage)
    by_number = {t.number: t for t in trials}
    killed = by_number[victim.number]
    assert killed.state == TrialState.FAIL and "worker died" in str(killed.user_attrs.get("error")), \
        f"killed trial {victim.number}: state {killed.state.name}, error {killed.user_attrs.get('error')!r}"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1, f"the killed trial was retried {len(retries)} times"
    retry = retries[0]
    assert retry.params == victim.params, f"retry {retry.number} ran other parameters: {retry.params} != {victim.params}"
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED), f"retry ended {retry.state.name}"
    assert not [t.number for t in trials if not t.state.is_finished()], "unfinished trials left after the restart"
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) >= N_TRIALS, f"the study holds {len(counted)} finished trials, wanted {N_TRIALS}"

    # nothing finished before the kill changed, in the storage or on disk
    now = _studies.finished_snapshot(trials)
    changed = [n for n, snap in snapshot.items() if now.get(n) != snap]
    assert not changed, f"finished trials changed after the restart: {changed}"
    oof_now = _studies.file_digests(study_dir / "predictions", "oof_trial_*.csv")
    lost = [name for name, digest in oof_before.items() if oof_now.get(name) != digest]
    assert not lost, f"out-of-fold predictions of finished trials lost or rewritten: {lost}"
    numbers = _studies.check_study_folder(study_dir, trials)

    # the leaderboard regenerated from the storage alone is the same
    board_before = (study_dir / "leaderboard.csv").read_bytes()
    report_before = json.loads((study_dir / "report.json").read_text())
    result = _studies.run_module("automl.leaderboard", [str(study_dir)], log_path=tmp_path / "leaderboard.log", timeout=300)
    assert result.returncode == 0, _support.tail(tmp_path / "leaderboard.log")
    assert (study_dir / "leaderboard.csv").read_bytes() == board_before, "regenerated leaderboard.csv differs"
    report_now = json.loads((study_dir / "report.json").read_text())
    report_before.pop("generated", None), report_now.pop("generated", None)
    assert report_now == report_before, "regenerated report.json differs"
    _studies.check_study_folder(study_dir, trials)

    _support.record(
        f"test_kill9_mid_trial_then_resume[{backend}]", "fault",
        what=f"SIGKILL of a search worker mid-trial ({backend} storage)",
        outcome=f"trial {victim.number} ({victim.params.get('model')}) marked FAIL and retried as trial "
                f"{retry.number} ({retry.state.name}, same params); {len(snapshot)} earlier finished trials and "
                f"{len(oof_before)} oof files intact; study completed with {len(counted)} trials; "
                f"`python -m automl.leaderboard` regenerated identical files",
        lost=len(changed) + len(lost), attempts=attempt + 1, refitted=numbers["refitted"],
    )


# ================================================================================ disk full / read-only
@contextlib.contextmanager
def _small_tmpfs(path: Path, size_kb: int) -> Iterator[bool]:
    """Mount a ``tmpfs`` of ``size_kb`` at ``path``; yields False (and mounts nothing) where not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if sys.platform.startswith("linux") and shutil.which("mount"):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(path)],
                           capture_output=True, text=True)
        mounted = r.returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` until it reports ENOSPC; return the filler file."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        chunk = b"\0" * 65536
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with contextlib.suppress(OSError):  # the last page too
        with open(folder / "filler2.bin", "wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * 512)
                fh.flush()
    return filler


def _dir_size_kb(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024 + 4 * len(list(folder.rglob("*")))


def _regenerate(study_dir: Path, log: Path) -> tuple[int, str]:
    """``python -m automl.leaderboard STUDY --no-refit --no-audit``: (exit code, output)."""
    r = _studies.run_module("automl.leaderboard", [str(study_dir), "--no-refit", "--no-audit"], log_path=log, timeout=300)
    return r.returncode, log.read_text(errors="replace")


def _simulated_regenerate(study_dir: Path, code: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """In-process fallback: ``os.replace`` into the study folder fails with ``code``."""
    from automl import leaderboard

    real = os.replace

    def failing(src: str, dst: str, *a: object, **k: object) -> None:
        if str(dst).startswith(str(study_dir)):
            raise OSError(code, os.strerror(code), str(dst))
        real(src, dst, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", failing)
        try:
            rc = leaderboard.main([str(study_dir), "--no-refit", "--no-audit"])
            return rc, ""
        except OSError as exc:  # what the command line would show: an uncaught exception, i.e. a traceback
            return 1, f"Traceback (most recent call last):\n  (simulated)\n{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("fault", ["disk_full", "read_only"])
def test_full_or_read_only_output_folder(fault: str, smoke_study: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    size_kb = _dir_size_kb(smoke_study) * 2 + 2048
    mount = tmp_path / "fs"
    with _small_tmpfs(mount, size_kb) as real:
        study_dir = mount / "smoke"
        shutil.copytree(smoke_study, study_dir)
        board = (study_dir / "leaderboard.csv").read_bytes()
        before = _studies.file_digests(study_dir)
        code = errno.ENOSPC if fault == "disk_full" else errno.EROFS
        filler = None
        if real and fault == "disk_full":
            filler = _fill(mount)
        elif real:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        if real:
            rc, output = _regenerate(study_dir, tmp_path / f"{fault}.log")
        else:
            rc, output = _simulated_regenerate(study_dir, code, monkeypatch)
        last = [line for line in output.strip().splitlines() if line.strip()][-1] if output.strip() else ""

        assert rc != 0, f"regeneration on a {fault} folder reported success"
        after = _studies.file_digests(study_dir)
        after.pop(".leaderboard.lock", None), before.pop(".leaderboard.lock", None)
        assert after == before, f"files changed or appeared: {sorted(set(after.items()) ^ set(before.items()))}"
        assert not list(study_dir.rglob("*.tmp")), "temporary files left behind"
        assert os.strerror(code) in last, f"the error does not say {os.strerror(code)!r}: {last!r}"
        assert str(study_dir) in last, f"the error does not name the file or folder: {last!r}"
        assert "Traceback" not in output, f"a traceback instead of a one-line error:\n{output[-2000:]}"

        # space back / writable again: the same command succeeds and writes the same leaderboard
        if real and filler is not None:
            for f in mount.glob("filler*.bin"):
                f.unlink()
        elif real:
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        if real:
            rc2, output2 = _regenerate(study_dir, tmp_path / f"{fault}-after.log")
        else:
            from automl import leaderboard

            rc2, output2 = leaderboard.main([str(study_dir), "--no-refit", "--no-audit"]), ""
        assert rc2 == 0, f"regeneration failed after the fault was removed:\n{output2[-3000:]}"
        assert (study_dir / "leaderboard.csv").read_bytes() == board

    _support.record(
        f"test_full_or_read_only_output_folder[{fault}]", "fault",
        what=f"{'disk full (ENOSPC)' if fault == 'disk_full' else 'read-only file system (EROFS)'} under "
             f"`python -m automl.leaderboard`" + (" on a real tmpfs" if real else " (simulated: os.replace raises)"),
        outcome=f"exit {rc}, message: {last.replace(str(study_dir), '<study>')[:200]!r}; no file changed; same "
                "command succeeded once the fault was gone",
        lost=0, simulated=not real,
    )


# ============================================================================ corrupted checkpoint / card
def _corrupt(folder: Path, how: str) -> str:
    weights, card = folder / "model.safetensors", folder / "card.json"
    if how == "weights_truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        return weights.name
    if how == "weights_garbage":
        weights.write_bytes(b"this is not a safetensors file\n" * 10)
        return weights.name
    if how == "weights_missing":
        weights.unlink()
        return weights.name
    if how == "card_not_json":
        card.write_text('{"model": "simple_cnn", "classes": [', encoding="utf-8")
        return card.name
    if how == "card_missing":
        card.unlink()
        return card.name
    if how == "card_bad_classes":
        payload = json.loads(card.read_text())
        payload["classes"] = "Normal"
        card.write_text(json.dumps(payload), encoding="utf-8")
        return card.name
    raise AssertionError(how)


CORRUPTIONS = ["weights_truncated", "weights_garbage", "weights_missing", "card_not_json", "card_missing",
               "card_bad_classes"]


def test_corrupted_checkpoint_or_card(smoke_study: Path, tmp_path: Path) -> None:
    import models
    from automl import results

    study = results.load_study(smoke_study)
    refitted = study.refitted_models()
    deep = [m for m in refitted if (study.model_dir(m) / "model.safetensors").is_file()]
    assert deep, f"no refitted model with a checkpoint in {smoke_study}: {refitted}"
    split = study.split
    test_row = split[split["part"] == "test"].iloc[0]
    data_dir = Path(study.config["data_dir"])
    image = data_dir / test_row["path"]
    messages = {}
    for how in CORRUPTIONS:
        copy = tmp_path / how / smoke_study.name
        shutil.copytree(smoke_study, copy)
        victim = deep[0]
        folder = copy / "models" / victim
        name = _corrupt(folder, how)
        with pytest.raises(ValueError) as info:
            models.load_predictor(folder, device="cpu")
        message = str(info.value)
        assert name in message, f"{how}: the error does not name {name}: {message!r}"
        assert "Traceback" not in message
        messages[how] = message.replace(str(copy), "<study>")
        # nothing else broken: the study still reads, every other model still predicts
        again = results.load_study(copy)
        assert again.leaderboard.equals(study.leaderboard)
        for other in [m for m in refitted if m != victim]:
            out = models.load_predictor(copy / "models" / other, device="cpu").predict(image)
            assert abs(sum(out["probabilities"].values()) - 1.0) < 1e-5
    _support.record(
        "test_corrupted_checkpoint_or_card", "fault",
        what=f"corrupted predictor folder ({', '.join(CORRUPTIONS)})",
        outcome="load_predictor raised ValueError naming the file each time; the study and the other "
                f"{len(refitted) - 1} model(s) kept working",
        lost=0, messages={k: v[:160] for k, v in messages.items()},
    )


# ======================================================================================= changing data
def _write_png(path: Path, value: int, size: int = 32, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    array = np.clip(rng.normal(value, 20, (size, size)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_changed_dataset_folder_is_noticed(tmp_path: Path) -> None:
    import data
    from data._cache import array_cache_path

    root = tmp_path / "ds"
    for c, value in (("Normal", 60), ("Stroke", 160)):
        for i in range(6):
            _write_png(root / c / f"{c.lower()}{i:02d} (0).png", value, seed=i + value)
    size = 24
    m0 = data.scan_folder(root, group_by="none")
    x0 = data.load_arrays(m0, size=size)
    cache0 = array_cache_path(m0, size=size)
    assert x0.shape == (12, size, size)

    def fresh(manifest: object, rel: str) -> np.ndarray:
        return data.to_uint8(data.resize_pad(data.load_image(root / rel), size))

    tried = []
    # 1. a file added
    _write_png(root / "Stroke" / "stroke99 (0).png", 200, seed=99)
    m1 = data.scan_folder(root, group_by="none")
    x1 = data.load_arrays(m1, size=size)
    assert m1.hash != m0.hash and x1.shape == (13, size, size)
    row = m1.table.index[m1.table["path"] == "Stroke/stroke99 (0).png"][0]
    np.testing.assert_array_equal(x1[row], fresh(m1, "Stroke/stroke99 (0).png"))
    tried.append("file added: new hash, 13 rows")
    # 2. a file removed
    (root / "Normal" / "normal00 (0).png").unlink()
    m2 = data.scan_folder(root, group_by="none")
    x2 = data.load_arrays(m2, size=size)
    assert len({m0.hash, m1.hash, m2.hash}) == 3 and x2.shape == (12, size, size)
    assert "Normal/normal00 (0).png" not in set(m2.table["path"])
    tried.append("file removed: new hash, 12 rows")
    # 3. a file rewritten in place (same name, same count)
    rel = "Normal/normal01 (0).png"
    _write_png(root / rel, 30, seed=12345)
    m3 = data.scan_folder(root, group_by="none")
    x3 = data.load_arrays(m3, size=size)
    assert m3.hash != m2.hash and x3.shape == x2.shape
    row = m3.table.index[m3.table["path"] == rel][0]
    np.testing.assert_array_equal(x3[row], fresh(m3, rel))
    assert not np.array_equal(x3[row], x2[m2.table.index[m2.table["path"] == rel][0]])
    tried.append("file rewritten in place: new hash, new pixels served")
    # every row of every cached array matches its file (nothing stale)
    for i, p in enumerate(m3.table["path"]):
        np.testing.assert_array_equal(x3[i], fresh(m3, p))
    # 4. an old manifest used after the folder changed: refused, naming the file
    _write_png(root / "Stroke/stroke01 (0).png", 250, seed=7)
    with pytest.raises(ValueError, match=r"stroke01 \(0\)\.png"):
        data.load_arrays(m3, size=size + 8)  # not cached yet at this size: the files are read and checked
    tried.append("stale manifest after a change: ValueError naming the file")
    # the old entry stays under its own key and is never served for the changed folder
    keys = {array_cache_path(m, size=size) for m in (m0, m1, m2, m3)}
    assert cache0.is_file() and len(keys) == 4
    _support.record("test_changed_dataset_folder_is_noticed", "fault", what="dataset folder changed between runs",
                    outcome="; ".join(tried), lost=0)


def test_resumed_study_refuses_changed_data(tmp_path: Path) -> None:
    from automl.search import SearchConfig, run_search

    root = tmp_path / "ds"
    for c, value in (("Normal", 60), ("Stroke", 160)):
        for i in range(12):
            _write_png(root / c / f"{c.lower()}{i:02d} (0).png", value, seed=i + value)
    config = dict(preset="smoke", data=str(root), study="changing", leaderboards=str(tmp_path / "lb"), models=("logreg",),
                  n_trials=1, refit=False, leakage_audit="none", group_by="none")
    study_dir = run_search(SearchConfig(**config))
    board = (study_dir / "leaderboard.csv").read_bytes()
    _write_png(root / "Stroke" / "stroke99 (0).png", 200, seed=99)
    with pytest.raises(ValueError, match="different data"):
        run_search(SearchConfig(**config))
    assert (study_dir / "leaderboard.csv").read_bytes() == board, "the refused run touched the leaderboard"
    _support.record("test_resumed_study_refuses_changed_data", "fault",
                    what="resuming a study after a file was added to its dataset folder",
                    outcome="refused with ValueError ('run on different data'), leaderboard untouched", lost=0)
