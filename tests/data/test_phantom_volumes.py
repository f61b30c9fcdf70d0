"""Tests of the phantom's volume formats (``format="dicom"`` / ``"nifti"``, data/_phantom_volumes.py)."""
from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import apply_window, dicom_to_hu
from data import phantom
from data._volume_io import SLICE_LABELS_FILE, nifti_to_display, split_slice_ref
from data.phantom import default_dataset, generate_phantom, load_mask

ARGS = dict(n=30, size=32, seed=11, difficulty=0.4)
META_COLUMNS = ["file", "class", "patient", "slice_index", "lesion_type", "lesion_area", "territory", "side", "volume"]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _by_slice(root: Path) -> dict[tuple[str, int], dict[str, str]]:
    """``_meta.csv`` rows keyed by (patient, 1-based slice index): the same key in every format."""
    return {(r["patient"], int(r["slice_index"])): r for r in _read_csv(root / "_meta.csv")}


def _png(root: Path, row: dict[str, str]) -> np.ndarray:
    with Image.open(root / row["file"]) as im:
        return np.asarray(im)


def _rendered_hu() -> dict[tuple[str, int], np.ndarray]:
    """The float HU slices the generator renders for :data:`ARGS`, by (patient, 1-based slice)."""
    patients = phantom._plan(ARGS["n"], ARGS["seed"], ("normal", "stroke"), ARGS["difficulty"], "slice", (6, 12))
    return {
        (str(p.pid), j + 1): sl.hu
        for p in patients
        for j, sl in enumerate(phantom._render_patient(p, ARGS["size"]))
    }


@pytest.fixture(scope="module")
def png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom(tmp_path_factory.mktemp("png") / "ds", **ARGS)


@pytest.fixture(scope="module")
def dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom(tmp_path_factory.mktemp("dcm") / "ds", **ARGS, format="dicom")


@pytest.fixture(scope="module")
def nifti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom(tmp_path_factory.mktemp("nii") / "ds", **ARGS, format="nifti")


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, int], np.ndarray]:
    return _rendered_hu()


def _check_hu(stored: np.ndarray, hu: np.ndarray, png_pixels: np.ndarray) -> None:
    """Stored integer HU = rendered HU rounded; windowed, it is the png image within rounding."""
    assert np.abs(stored - np.clip(hu, -1024, 3071)).max() <= 0.5 + 1e-3
    np.testing.assert_array_equal(np.rint(apply_window(hu, "brain") * 255), png_pixels)  # same render
    windowed = np.rint(apply_window(stored, "brain") * 255)
    assert np.abs(windowed - png_pixels.astype(float)).max() <= 2  # 0.5 HU = 1.6 grey levels at W80


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------
def test_dicom_layout(dicom: Path, png: Path) -> None:
    series = sorted(p.relative_to(dicom).as_posix() for p in dicom.glob("*/P*") if p.is_dir())
    assert series and all(re.fullmatch(r"(Normal|Stroke)/P\d{4}", s) for s in series)
    meta = _by_slice(dicom)
    assert len(meta) == ARGS["n"] == len(list(dicom.glob("*/P*/*.dcm")))
    for (patient, index), row in meta.items():
        assert row["volume"] == f"{row['file'].split('/')[0]}/P{int(patient):04d}"
        assert row["file"] == f"{row['volume']}/{index:03d}.dcm"
        assert (dicom / "_masks" / row["volume"] / f"{index:03d}.png").is_file()
        # a volume lies in its patient's class folder: Stroke iff the patient has a lesion anywhere
        has_lesion = any(r["lesion_type"] != "none" for (p, _), r in meta.items() if p == patient)
        assert row["volume"].startswith("Stroke/" if has_lesion else "Normal/")
    with open(dicom / "_meta.csv", newline="", encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == META_COLUMNS
    assert all(r["volume"] == "" for r in _read_csv(png / "_meta.csv"))


def test_dicom_headers_and_geometry(dicom: Path) -> None:
    import pydicom

    params = json.loads((dicom / "_params.json").read_text())
    assert params["format"] == "dicom" and params["pixel_spacing_mm"] == pytest.approx(220 / 32)
    series_uids, study_uids = set(), set()
    for folder in sorted(p for p in dicom.glob("*/P*") if p.is_dir()):
        files = sorted(folder.glob("*.dcm"))
        datasets = [pydicom.dcmread(f) for f in files]
        pid = folder.name[1:]
        dz = params["slice_spacing_mm"][str(int(pid))]
        assert 5.0 <= dz <= 7.5
        for k, ds in enumerate(datasets, start=1):
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == pydicom.uid.CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
            assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
            assert ds.Modality == "CT" and ds.PatientID == f"PHANTOM-{pid}" and ds.InstanceNumber == k
            assert (ds.Rows, ds.Columns) == (32, 32) and ds.SamplesPerPixel == 1
            assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.PixelRepresentation == 0
            assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
            assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
            assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 80.0)
            assert [float(v) for v in ds.PixelSpacing] == pytest.approx([220 / 32] * 2, abs=1e-6)
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == pytest.approx(dz)
            assert "StudyDate" not in ds or ds.StudyDate == ""
        assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
        assert len({ds.StudyInstanceUID for ds in datasets}) == 1
        assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
        series_uids.add(datasets[0].SeriesInstanceUID)
        study_uids.add(datasets[0].StudyInstanceUID)
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        assert np.allclose(positions[:, :2], -(32 - 1) / 2 * 220 / 32, atol=1e-5)  # centred on the axis
        if len(datasets) > 1:
            steps = np.diff(positions[:, 2])
            assert np.all(steps > 0) and np.allclose(steps, dz, atol=2e-4)  # inferior -> superior
    assert len(series_uids) == len(study_uids) == params["patients"]


def test_dicom_stores_the_rendered_hu(dicom: Path, png: Path, rendered: dict) -> None:
    import pydicom

    png_rows = _by_slice(png)
    for key, row in _by_slice(dicom).items():
        ds = pydicom.dcmread(dicom / row["file"])
        assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.max() <= 4095
        _check_hu(dicom_to_hu(ds), rendered[key], _png(png, png_rows[key]))


# ---------------------------------------------------------------------------------------------
# NIfTI
# ---------------------------------------------------------------------------------------------
def test_nifti_layout_header_and_hu(nifti: Path, png: Path, rendered: dict) -> None:
    import nibabel as nib

    params = json.loads((nifti / "_params.json").read_text())
    ps = params["pixel_spacing_mm"]
    png_rows = _by_slice(png)
    meta = _by_slice(nifti)
    volumes = defaultdict(list)
    for key, row in meta.items():
        assert row["file"] == f"{row['volume']}#{key[1] - 1}"
        assert re.fullmatch(r"(Normal|Stroke)/P\d{4}\.nii\.gz", row["volume"])
        volumes[row["volume"]].append(key)
    assert sorted(volumes) == sorted(p.relative_to(nifti).as_posix() for p in nifti.glob("*/P*.nii.gz"))
    for volume, keys in volumes.items():
        image = nib.load(nifti / volume)
        assert image.get_data_dtype() == np.int16 and image.shape == (32, 32, len(keys))
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 2
        assert image.header.get_xyzt_units()[0] == "mm"
        dz = params["slice_spacing_mm"][str(int(Path(volume).name[1:5]))]
        assert np.allclose(np.diag(image.affine)[:3], [ps, ps, dz], atol=1e-5)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        canonical = nib.as_closest_canonical(image)
        data = canonical.get_fdata()
        for k, key in enumerate(sorted(keys, key=lambda x: x[1])):
            _check_hu(nifti_to_display(data[:, :, k]), rendered[key], _png(png, png_rows[key]))
        mask = nib.load(nifti / "_masks" / volume)
        assert mask.get_data_dtype() == np.uint8 and np.allclose(mask.affine, image.affine)


def test_dicom_and_nifti_share_the_scanner_geometry(dicom: Path, nifti: Path) -> None:
    """Voxel (row 0, column 0, slice k) lies at the same patient position in both formats."""
    import nibabel as nib
    import pydicom

    volume = sorted(nifti.glob("*/P*.nii.gz"))[0]
    image = nib.load(volume)
    ds = pydicom.dcmread(dicom / volume.parent.name / volume.name[:5] / "001.dcm")
    lps = np.array([float(v) for v in ds.ImagePositionPatient])
    # display (row 0, column 0) is voxel (size-1, size-1) of the RAS+ array; RAS = LPS with x, y negated
    ras = image.affine @ np.array([31, 31, 0, 1])
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Labels, masks, determinism
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_slice_labels_match_the_png_labels(fmt: str, dicom: Path, nifti: Path, png: Path) -> None:
    root = {"dicom": dicom, "nifti": nifti}[fmt]
    png_rows = _by_slice(png)
    meta = _by_slice(root)
    labels = _read_csv(root / SLICE_LABELS_FILE)
    assert len(labels) == ARGS["n"] and list(labels[0]) == ["volume", "slice", "label"]
    by_volume_slice = {(r["volume"], int(r["slice_index"]) - 1): r for r in meta.values()}
    for label in labels:
        row = by_volume_slice[label["volume"], int(label["slice"])]
        expected = png_rows[row["patient"], int(row["slice_index"])]["class"]
        assert label["label"] == row["class"] == expected
    assert {r["class"] for r in meta.values()} == {"Normal", "Stroke"}
    # slice labels: stroke volumes hold Normal (out-of-plane) slices too
    assert any(r["class"] == "Normal" and r["volume"].startswith("Stroke/") for r in meta.values())
    params = json.loads((root / "_params.json").read_text())
    assert params["class_counts"] == json.loads((png / "_params.json").read_text())["class_counts"]


def test_subject_level_labels_every_slice_with_the_volume(tmp_path: Path) -> None:
    root = generate_phantom(tmp_path / "ds", **{**ARGS, "n": 24}, label_level="subject", format="nifti")
    labels = _read_csv(root / SLICE_LABELS_FILE)
    assert len(labels) == 24
    assert all(r["label"] == r["volume"].split("/")[0] for r in labels)


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_load_mask_for_volume_slices(fmt: str, dicom: Path, nifti: Path, png: Path) -> None:
    root = {"dicom": dicom, "nifti": nifti}[fmt]
    png_rows = _by_slice(png)
    for key, row in _by_slice(root).items():
        mask = load_mask(root, row["file"])
        assert mask is not None and mask.dtype == bool and mask.shape == (32, 32)
        np.testing.assert_array_equal(mask, load_mask(png, png_rows[key]["file"]))
        assert int(mask.sum()) == int(row["lesion_area"])
    row = next(r for r in _by_slice(root).values() if r["lesion_type"] != "none")
    np.testing.assert_array_equal(load_mask(root, root / row["file"]), load_mask(root, row["file"]))
    file, _ = split_slice_ref(row["file"])
    missing = f"{file}#99" if fmt == "nifti" else f"{file.rsplit('/', 1)[0]}/999.dcm"
    assert load_mask(root, missing) is None
    assert load_mask(root, "Stroke/P9999.nii.gz#0") is None


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_same_seed_gives_identical_bytes(tmp_path: Path, fmt: str) -> None:
    kwargs = dict(n=20, size=32, seed=5, format=fmt)
    first = _digest(generate_phantom(tmp_path / "a", **kwargs))
    second = _digest(generate_phantom(tmp_path / "b", **kwargs))
    assert first == second
    other = _digest(generate_phantom(tmp_path / "c", **{**kwargs, "seed": 6}))
    assert other != first


def test_default_dataset_keeps_formats_apart() -> None:
    png = default_dataset(n=12, size=32, seed=1)
    nii = default_dataset(n=12, size=32, seed=1, format="nifti")
    assert nii != png and nii.name == f"{png.name}_nifti"
    assert list(nii.glob("*/P*.nii.gz")) and not list(png.glob("*/P*.nii.gz"))


@pytest.mark.parametrize("bad", ["jpeg", "", None, 3])
def test_bad_format_raises(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        generate_phantom(tmp_path / "ds", n=5, size=32, format=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="format"):
        default_dataset(n=5, size=32, format=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "ds").exists()


def test_cli_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert phantom.main(["--out", str(out), "--n", "8", "--size", "32", "--seed", "2", "--format", "dicom"]) == 0
    assert _digest(out) == _digest(generate_phantom(tmp_path / "api", n=8, size=32, seed=2, format="dicom"))
    with pytest.raises(SystemExit) as exc:
        phantom.main(["--out", str(tmp_path / "x"), "--format", "tiff"])
    assert exc.value.code == 2 and "tiff" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
