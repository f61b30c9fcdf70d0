"""Tests for data._cache: array cache content, keys, staleness and atomic writes."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data._cache as cache_mod
from data import cache_dir, load_arrays, load_image, resize_pad, scan_folder, to_uint8
from data._cache import array_cache_path
from tests.data.test_scan import make_mixed_dataset, make_simple_dataset, smooth_field, u8

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402


def test_arrays_follow_the_pipeline_in_row_order(tmp_path: Path) -> None:
    m = scan_folder(make_mixed_dataset(tmp_path / "ds"))
    arr = load_arrays(m, size=24)
    assert arr.dtype == np.uint8 and arr.shape == (len(m), 24, 24)
    for i, path in enumerate(m.paths()):
        np.testing.assert_array_equal(arr[i], to_uint8(resize_pad(load_image(path), 24)))
    path = array_cache_path(m, size=24)
    assert path == cache_dir() / "arrays" / f"{m.hash}_24_brain.npy" and path.is_file()
    assert not list(path.parent.glob("*.tmp"))


def test_second_call_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = scan_folder(make_simple_dataset(tmp_path / "ds", {"normal": 3, "stroke": 3}))
    first = load_arrays(m, size=16)

    def boom(job: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_mod, "_prepare", boom)
    np.testing.assert_array_equal(load_arrays(m, size=16), first)
    with pytest.raises(AssertionError, match="decoded again"):
        load_arrays(m, size=17)  # another size is another cache entry


def test_changed_folder_is_never_served_stale(tmp_path: Path) -> None:
    root = make_simple_dataset(tmp_path / "ds", {"normal": 3, "stroke": 3})
    m1 = scan_folder(root)
    a1 = load_arrays(m1, size=16)
    Image.fromarray(u8(smooth_field(np.random.default_rng(99), 32))).save(root / "stroke" / "new.png")
    m2 = scan_folder(root)
    assert m2.hash != m1.hash
    a2 = load_arrays(m2, size=16)
    assert len(a2) == len(a1) + 1
    assert array_cache_path(m1, size=16).is_file() and array_cache_path(m2, size=16).is_file()


def test_file_changed_after_scan_is_detected(tmp_path: Path) -> None:
    root = make_simple_dataset(tmp_path / "ds", {"normal": 2, "stroke": 2})
    m = scan_folder(root)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "normal" / "img0.png")
    with pytest.raises(ValueError, match="changed since the folder was scanned"):
        load_arrays(m, size=16)


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    m = scan_folder(make_simple_dataset(tmp_path / "ds", {"normal": 2, "stroke": 2}))
    good = load_arrays(m, size=16)
    path = array_cache_path(m, size=16)
    path.write_bytes(b"garbage")
    np.testing.assert_array_equal(load_arrays(m, size=16), good)
    np.save(path, np.zeros((1, 16, 16), np.uint8))  # wrong shape
    np.testing.assert_array_equal(load_arrays(m, size=16), good)


def test_window_selects_dicom_rendering(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for cls in ("normal", "stroke"):
        (root / cls).mkdir(parents=True)
        for k in range(2):
            shutil.copy(get_testdata_file("CT_small.dcm"), root / cls / f"{k}.dcm")
    m = scan_folder(root, group_by="none")
    brain = load_arrays(m, size=32)
    bone = load_arrays(m, size=32, window="bone")
    custom = load_arrays(m, size=32, window=(600, 2800))
    assert not np.array_equal(brain, bone)
    np.testing.assert_array_equal(bone, custom)
    assert array_cache_path(m, size=32, window="bone") != array_cache_path(m, size=32)
    assert array_cache_path(m, size=32, window=(40, 80)).name == f"{m.hash}_32_40_80.npy"
    expected = to_uint8(resize_pad(load_image(get_testdata_file("CT_small.dcm"), window="bone"), 32))
    np.testing.assert_array_equal(bone[0], expected)


@pytest.mark.parametrize("kwargs,match", [({"size": 0}, "size"), ({"size": 1.5}, "size"), ({"size": 8, "window": "x"}, "window")])
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    m = scan_folder(make_simple_dataset(tmp_path / "ds", {"normal": 2, "stroke": 2}))
    with pytest.raises(ValueError, match=match):
        load_arrays(m, **kwargs)


def test_parallel_fill_matches_sequential(tmp_path: Path) -> None:
    m = scan_folder(make_simple_dataset(tmp_path / "ds", {"normal": 4, "stroke": 4}))
    seq = load_arrays(m, size=12, workers=0)
    array_cache_path(m, size=12).unlink()
    np.testing.assert_array_equal(load_arrays(m, size=12, workers=2), seq)
