"""Volumes in dataset folders: DICOM series and NIfTI files become ordered axial slices; bad volumes are skipped."""
from __future__ import annotations

import gzip
import math

import numpy as np
import pandas as pd
import pytest

import data
from data import _volume_io, _volumes
from data._io import BadImageError, apply_window, resize_pad, to_uint8
from data._volume_io import read_nifti
from tests.data._volume_files import head_volume, write_nifti, write_series


@pytest.fixture()
def volume_folder(tmp_path):
    root = tmp_path / "ds"
    write_series(root / "Normal" / "P1", head_volume(6, seed=1), patient="PAT-1", uid="1.2.3.1")
    write_nifti(root / "Normal" / "sub-02_ct.nii.gz", head_volume(5, seed=2))
    write_series(root / "Stroke" / "P3", head_volume(6, seed=3, lesion=True), patient="PAT-3", uid="1.2.3.3")
    write_nifti(root / "Stroke" / "sub-04_ct.nii.gz", head_volume(5, seed=4, lesion=True))
    return root


def test_series_and_nifti_become_ordered_slices_with_header_subjects(volume_folder):
    m = data.scan_folder(volume_folder)
    t = m.table
    assert len(t) == 22 and m.bad_files.empty
    assert m.subject_source == "dicom"
    assert sorted(t["subject"].unique()) == ["PAT-1", "PAT-3", "sub-02", "sub-04"]
    assert sorted(m.volumes["volume"]) == ["Normal/P1", "Normal/sub-02_ct.nii.gz", "Stroke/P3", "Stroke/sub-04_ct.nii.gz"]
    assert m.volumes.set_index("volume").loc["Normal/P1", "slices_total"] == 6
    assert m.volumes.set_index("volume").loc["Normal/P1", "slice_spacing_mm"] == pytest.approx(5.0)
    # file names run backwards (006.dcm is the most inferior slice); the order follows ImagePositionPatient
    p1 = t[t["volume"] == "Normal/P1"].sort_values("slice_index")
    assert list(p1["path"]) == [f"Normal/P1/{k:03d}.dcm" for k in range(6, 0, -1)]
    assert list(p1["slice_position"]) == [5.0 * k for k in range(6)]
    nii = t[t["volume"] == "Stroke/sub-04_ct.nii.gz"]
    assert list(nii["path"]) == [f"Stroke/sub-04_ct.nii.gz#{k}" for k in range(5)]
    assert (nii["format"] == "nifti").all() and nii["brain_fraction"].between(0.3, 0.7).all()
    assert t["sha1"].is_unique


def test_nifti_slices_arrive_in_display_orientation_in_the_cache(volume_folder):
    m = data.scan_folder(volume_folder)
    arrays = data.load_arrays(m, size=24)
    hu = head_volume(5, seed=4, lesion=True)
    row = int(np.flatnonzero(m.table["path"] == "Stroke/sub-04_ct.nii.gz#3")[0])
    np.testing.assert_array_equal(arrays[row], to_uint8(resize_pad(apply_window(np.rint(hu[3]), "brain"), 24)))
    # the lesion (top-left quadrant in display orientation) is where it was drawn
    assert arrays[row][8:12, 8:12].mean() > arrays[row][14:18, 14:18].mean()
    row = int(np.flatnonzero(m.table["path"] == "Normal/P1/004.dcm")[0])  # slice index 2 of P1
    np.testing.assert_array_equal(arrays[row], to_uint8(resize_pad(apply_window(np.rint(head_volume(6, seed=1)[2]),
                                                                                "brain"), 24)))


def test_slice_step_and_brain_rule_thin_the_volumes(volume_folder, tmp_path):
    m = data.scan_folder(volume_folder, slice_step=2)
    assert len(m) == 3 + 3 + 3 + 3 and set(m.table["slice_index"] % 2) == {0}
    assert m.volumes.set_index("volume").loc["Normal/P1", "slices_kept"] == 3
    air = head_volume(5, seed=5)
    air[4] = -1000.0  # above the vertex: no brain
    write_nifti(volume_folder / "Normal" / "sub-05_ct.nii.gz", air)
    m = data.scan_folder(volume_folder, min_brain_fraction=0.05)
    kept = m.table[m.table["volume"] == "Normal/sub-05_ct.nii.gz"]
    assert list(kept["slice_index"]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="slice_step"):
        data.scan_folder(volume_folder, slice_step=0)
    with pytest.raises(ValueError, match="min_brain_fraction"):
        data.scan_folder(volume_folder, min_brain_fraction=1.5)


def test_slice_labels_csv_relabels_slices(volume_folder):
    csv = volume_folder / "_slice_labels.csv"
    csv.write_text("volume,slice,label\nStroke/P3,0,Normal\nStroke/P3,1,Normal\nStroke/sub-04_ct.nii.gz,4,Normal\n")
    m = data.scan_folder(volume_folder)
    t = m.table.set_index("path")
    assert t.loc["Stroke/sub-04_ct.nii.gz#4", "label"] == "Normal" and t.loc["Stroke/sub-04_ct.nii.gz#4", "y"] == 0
    assert t.loc["Stroke/sub-04_ct.nii.gz#3", "label"] == "Stroke"
    p3 = m.table[m.table["volume"] == "Stroke/P3"].sort_values("slice_index")
    assert list(p3["label"]) == ["Normal", "Normal", "Stroke", "Stroke", "Stroke", "Stroke"]
    csv.write_text("volume,slice,label\nStroke/P3,0,Bleed\n")
    with pytest.raises(ValueError, match="'Bleed'"):
        data.scan_folder(volume_folder)
    csv.write_text("volume,slice,label\nStroke/nothing,0,Normal\n")
    with pytest.raises(ValueError, match="names no volume"):
        data.scan_folder(volume_folder)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(positions=[0, 5, 10, 20, 25, 30]), "missing slices: a gap of 10.0 mm after slice 2"),
        (dict(positions=[0, 5, 10, 13, 18, 23]), "inconsistent slice spacing"),
        (dict(positions=[0, 5, 5, 10, 15, 20]), "same position"),
        (dict(orientation=(0, 1, 0, 0, 0, -1)), "not an axial series"),
        (dict(orientation=(1, 0, 0, 0, math.cos(math.radians(40)), -math.sin(math.radians(40)))), "oblique series"),
    ],
)
def test_bad_series_are_skipped_with_the_reason(volume_folder, kwargs, reason):
    write_series(volume_folder / "Stroke" / "BAD", head_volume(6, seed=9), patient="PAT-9", uid="1.2.3.9", **kwargs)
    m = data.scan_folder(volume_folder)
    bad = m.bad_files[m.bad_files["path"].str.startswith("Stroke/BAD/")]
    assert len(bad) == 6 and bad["reason"].str.contains(reason, regex=False).all(), bad["reason"].tolist()
    assert not m.table["path"].str.startswith("Stroke/BAD/").any() and len(m) == 22


def test_gantry_tilt_below_the_limit_is_kept_with_a_note(volume_folder):
    tilt = math.radians(15)
    write_series(volume_folder / "Stroke" / "TILT", head_volume(6, seed=8), patient="PAT-8", uid="1.2.3.8",
                 orientation=(1, 0, 0, 0, math.cos(tilt), -math.sin(tilt)))
    m = data.scan_folder(volume_folder)
    assert (m.table["volume"] == "Stroke/TILT").sum() == 6
    assert any("TILT: gantry tilt 15 degrees" in n for n in m.notes)


def test_mixed_series_in_one_folder_are_split_and_reported(volume_folder):
    folder = volume_folder / "Normal" / "MIX"
    write_series(folder / "a", head_volume(4, seed=6), patient="PAT-6", uid="1.2.3.6")
    write_series(folder / "b", head_volume(3, seed=7), patient="PAT-6", uid="1.2.3.7", start=10)
    for f in list((folder / "b").iterdir()):  # one folder holding both series, names not clashing
        f.rename(folder / "a" / f"b{f.name}")
    m = data.scan_folder(volume_folder)
    vols = set(m.table["volume"])
    assert {"Normal/MIX/a/1.2.3.6", "Normal/MIX/a/1.2.3.7"} <= vols
    assert any("mixes 2 DICOM series" in n for n in m.notes)


def test_series_split_across_class_folders_keeps_slice_labels(tmp_path):
    hu = head_volume(6, seed=3, lesion=True)
    paths = write_series(tmp_path / "tmp" / "P", hu, patient="PAT-3", uid="1.2.3.3", shuffle_names=False)
    for k, p in enumerate(paths):
        dest = tmp_path / "ds" / ("Stroke" if 2 <= k <= 3 else "Normal") / "P" / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        p.rename(dest)
    write_series(tmp_path / "ds" / "Normal" / "Q", head_volume(4, seed=1), patient="PAT-1", uid="1.2.3.1")
    write_series(tmp_path / "ds" / "Stroke" / "R", head_volume(4, seed=2), patient="PAT-2", uid="1.2.3.2")
    m = data.scan_folder(tmp_path / "ds")
    split = m.table[m.table["volume"] == "series-1.2.3.3"].sort_values("slice_index")
    assert list(split["label"]) == ["Normal", "Normal", "Stroke", "Stroke", "Normal", "Normal"]
    assert m.volumes.set_index("volume").loc["series-1.2.3.3", "label"] == "several"


def test_bad_nifti_files_are_reported_not_fatal(volume_folder):
    four_d = np.zeros((8, 8, 3, 2), dtype=np.int16)
    write_nifti(volume_folder / "Normal" / "fmri.nii.gz", None, data=four_d)
    (volume_folder / "Normal" / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30))
    sagittal = np.array([[0, 0, 5.0, 0], [0, 0.5, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 1]])
    write_nifti(volume_folder / "Stroke" / "sag.nii", head_volume(4, seed=2), affine=sagittal)
    m = data.scan_folder(volume_folder)
    reasons = m.bad_files.set_index("path")["reason"]
    assert "4-D NIfTI" in reasons["Normal/fmri.nii.gz"]
    assert "not a readable NIfTI" in reasons["Normal/broken.nii.gz"]
    assert "not an axial volume" in reasons["Stroke/sag.nii"]
    assert len(m) == 22


def test_read_nifti_limits_and_bytes(tmp_path, monkeypatch):
    path = write_nifti(tmp_path / "v.nii.gz", head_volume(4, seed=1))
    from_bytes = read_nifti(path.read_bytes(), name="upload.nii.gz")
    np.testing.assert_array_equal(from_bytes.hu, read_nifti(path).hu)
    assert from_bytes.spacing == (0.5, 0.5, 5.0) and list(from_bytes.positions) == [0, 5, 10, 15]
    monkeypatch.setattr(_volume_io, "MAX_VOLUME_VOXELS", 1000)
    with pytest.raises(BadImageError, match="over the size limit"):
        read_nifti(path)
    bomb = gzip.compress(b"\0" * 20_000_000)
    with pytest.raises(BadImageError, match="more than"):
        read_nifti(bomb, name="bomb.nii.gz")


def test_plain_images_keep_empty_volume_columns(tmp_path):
    from PIL import Image

    for cls in ("Normal", "Stroke"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i + (cls == "Stroke") * 100, np.uint8)).save(tmp_path / cls / f"{i}.png")
    m = data.scan_folder(tmp_path)
    assert (m.table["volume"] == "").all() and (m.table["slice_index"] == -1).all()
    assert m.table["brain_fraction"].isna().all() and m.volumes.empty
    assert isinstance(m.volumes, pd.DataFrame)


def test_read_volume_unpacks_a_nifti_gz_within_max_bytes(tmp_path):
    path = write_nifti(tmp_path / "flat.nii.gz", np.zeros((64, 64, 64), np.float32))  # 0.5 MB of voxels
    assert path.stat().st_size < 20_000
    assert data.read_volume(path, max_bytes=1_000_000).hu.shape == (64, 64, 64)
    with pytest.raises(BadImageError, match="decompresses to more than 0 MB"):
        data.read_volume(path, max_bytes=100_000)


def test_series_over_the_size_limit_is_skipped(volume_folder, monkeypatch):
    monkeypatch.setattr(_volumes, "MAX_VOLUME_SLICES", 5)
    m = data.scan_folder(volume_folder)
    reasons = m.bad_files[m.bad_files["path"].str.startswith("Normal/P1/")]["reason"]
    assert len(reasons) == 6 and reasons.str.contains("over the size limit").all()


def test_quality_report_counts_volumes_and_their_problems(volume_folder):
    write_series(volume_folder / "Stroke" / "GAP", head_volume(6, seed=9), patient="PAT-9", uid="1.2.3.9",
                 positions=[0, 5, 10, 20, 25, 30])
    write_series(volume_folder / "Stroke" / "SAG", head_volume(6, seed=8), patient="PAT-8", uid="1.2.3.8",
                 orientation=(0, 1, 0, 0, 0, -1))
    report = data.quality_report(volume_folder)
    s = report.summary
    assert s["n_volumes"] == 4 and s["n_volumes_dicom"] == 2 and s["n_volumes_nifti"] == 2
    assert s["n_skipped_volumes"] == 2 and s["volume_problems"] == {"missing slices": 1, "orientation": 1}
    assert s["slices_per_volume_min"] == 5 and s["slices_per_volume_max"] == 6
    text = report.summary_text()
    assert "Volumes: 4 read (2 DICOM series, 2 NIfTI), 2 skipped" in text and "skipped for orientation: 1" in text
    assert any("2 volume(s) skipped" in w for w in report.warnings)
    again = type(report).from_dict(report.to_dict())
    assert list(again.volumes["volume"]) == list(report.volumes["volume"])


def test_a_manifest_row_of_a_nifti_slice_loads_like_any_image(volume_folder):
    m = data.scan_folder(volume_folder)
    arrays = data.load_arrays(m, size=24)
    for i in np.flatnonzero(m.table["format"] == "nifti")[:3]:
        image = data.load_image(m.root / m.table["path"].iloc[i])
        np.testing.assert_array_equal(to_uint8(resize_pad(image, 24)), arrays[i])
    ref = m.root / "Stroke/sub-04_ct.nii.gz#2"
    assert data.load_channels(ref, window="ich").shape == (3, 24, 24)
    with pytest.raises(BadImageError, match="out of range"):
        data.load_image(m.root / "Stroke/sub-04_ct.nii.gz#9")
    with pytest.raises(BadImageError, match="does not exist"):
        data.load_image(m.root / "Stroke/missing.nii.gz#1")
