"""Tests for data._files: the project's one atomic writer, JSON cleaner and version collector."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data import _files as files
from data._files import (
    atomic_save_npy,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    json_clean,
    library_versions,
)


def test_atomic_writes_leave_no_temp_files_and_normal_permissions(tmp_path: Path) -> None:
    atomic_write_text("hello", tmp_path / "a" / "x.txt")
    atomic_write_json({"nan": float("nan"), "arr": np.arange(2), "f": np.float32(0.5)}, tmp_path / "x.json")
    atomic_write_csv(pd.DataFrame({"a": [1, 2]}), tmp_path / "x.csv")
    assert (tmp_path / "a" / "x.txt").read_text() == "hello"
    assert json.loads((tmp_path / "x.json").read_text()) == {"nan": None, "arr": [0, 1], "f": 0.5}
    assert pd.read_csv(tmp_path / "x.csv")["a"].tolist() == [1, 2]
    assert not list(tmp_path.rglob("*.tmp"))
    # the usual permissions (umask applied), not mkstemp's private 0600
    assert (tmp_path / "x.csv").stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "board.json"
    atomic_write_json({"v": 1}, target)
    with pytest.raises(TypeError):
        atomic_write_json({"v": object()}, target)  # not JSON serialisable: fails before any write

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_json({"v": 2}, target)
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["board.json"]  # the temp file was removed


@pytest.mark.parametrize("where", ["fsync", "replace", "mkstemp"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_atomic_write_error_names_the_file(where: str, code: int, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "leaderboard.csv"
    atomic_write_text("old\n", target)

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os if where != "mkstemp" else files.tempfile, where, fail)
    with pytest.raises(OSError) as info:
        atomic_write_text("new\n", target)
    assert info.value.errno == code
    assert str(info.value.strerror) == f"cannot write {target}: {os.strerror(code)}"
    assert info.value.filename == str(target)
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["leaderboard.csv"]  # no temp file left


def test_atomic_write_passes_keyboard_interrupt_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text("x", tmp_path / "x.txt")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_atomic_save_npy_round_trips(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = atomic_save_npy(arr, tmp_path / "a.npy")
    assert np.array_equal(np.load(path), arr)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]


def test_json_clean_types_and_default() -> None:
    import torch

    value = {1: np.float32(0.25), "a": (np.int64(3), float("inf")), "p": Path("x/y"), "s": {"b", "a"},
             "t": torch.tensor([1.5]), "b": np.bool_(True)}
    assert json_clean(value) == {"1": 0.25, "a": [3, None], "p": "x/y", "s": ["a", "b"], "t": [1.5], "b": True}
    with pytest.raises(TypeError, match="object"):
        json_clean({"v": object()})
    assert json_clean({"v": object}, default=lambda v: v.__name__) == {"v": "object"}


def test_atomic_writer_rejects_a_bad_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'a'"):
        with files.atomic_writer(tmp_path / "x", "a"):
            pass


def test_library_versions_names_python_and_skips_missing_modules() -> None:
    versions = library_versions(("numpy", "no_such_module_xyz"))
    assert versions["numpy"] == np.__version__ and "python" in versions and "no_such_module_xyz" not in versions


def test_cache_and_leaderboards_never_inside_an_installed_package(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    from automl.study import leaderboards_root
    from data import _io

    monkeypatch.delenv("STROKECT_CACHE", raising=False)
    monkeypatch.delenv("STROKECT_LEADERBOARDS", raising=False)
    assert _io.cache_dir() == _io.checkout_root() / ".cache"  # a checkout: the repo's own folders
    monkeypatch.setattr(_io, "checkout_root", lambda: None)  # as from site-packages after `pip install .`
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert _io.cache_dir() == tmp_path / "xdg" / "strokect"
    assert leaderboards_root() == tmp_path / "leaderboards"
    monkeypatch.setenv("STROKECT_LEADERBOARDS", str(tmp_path / "mine"))
    assert leaderboards_root() == tmp_path / "mine"
