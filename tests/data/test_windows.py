"""Window sets: three windows of one HU slice as three channels (the ICH-model input)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import data
from data._io import apply_window, resize_pad, to_uint8
from tests.data._volume_files import head_volume, write_nifti, write_series


@pytest.mark.parametrize("spec", ["ich", "brain,subdural,bone", "brain+75,215+600,2800", ["brain", "subdural", "bone"]])
def test_window_sets_parse_to_three_windows(spec):
    windows = data.parse_windows(spec)
    assert len(windows) == 3 and data.windows_key(spec) in ("brain+subdural+bone", "brain+75,215+600,2800")


@pytest.mark.parametrize("spec", ["brain", "40,80", (40, 80)])
def test_single_windows_stay_single(spec):
    assert len(data.parse_windows(spec)) == 1


@pytest.mark.parametrize("spec", ["brain,bone", "brain+bone+stroke+subdural", "brain,nope,bone", "ich2"])
def test_bad_window_sets_name_the_value(spec):
    with pytest.raises(ValueError, match="window"):
        data.parse_windows(spec)


def test_load_channels_windows_dicom_hu_and_replicates_raster(tmp_path):
    hu = head_volume(2, size=24, lesion=True)
    path = write_series(tmp_path / "s", hu, patient="P", uid="1.2.9")[0]
    channels = data.load_channels(path, window="ich")
    assert channels.shape == (3, 24, 24)
    for c, w in zip(channels, ("brain", "subdural", "bone")):
        np.testing.assert_allclose(c, apply_window(np.rint(hu[0]), w), atol=1e-6)
    assert not np.allclose(channels[0], channels[2])
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(tmp_path / "grey.png")
    grey = data.load_channels(tmp_path / "grey.png", window="ich")
    assert grey.shape == (3, 16, 16) and np.array_equal(grey[0], grey[2])
    assert data.load_channels(path, window="brain").shape == (1, 24, 24)


def test_load_arrays_stacks_one_cache_per_window(tmp_path):
    for cls, lesion in (("Normal", False), ("Stroke", True)):
        for i in range(2):
            write_nifti(tmp_path / cls / f"sub-{cls}{i}.nii.gz", head_volume(3, size=16, seed=i, lesion=lesion))
    m = data.scan_folder(tmp_path)
    stack = data.load_arrays(m, size=16, window="ich")
    assert stack.shape == (len(m), 3, 16, 16) and stack.dtype == np.uint8
    for k, w in enumerate(("brain", "subdural", "bone")):
        np.testing.assert_array_equal(stack[:, k], data.load_arrays(m, size=16, window=w))
    row = int(np.flatnonzero(m.table["path"] == "Stroke/sub-Stroke1.nii.gz#2")[0])
    hu = np.rint(head_volume(3, size=16, seed=1, lesion=True)[2])
    np.testing.assert_array_equal(stack[row, 2], to_uint8(resize_pad(apply_window(hu, "bone"), 16)))
