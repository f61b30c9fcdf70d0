"""Tests for data._scan: folder layout, bad files, class order, errors, manifest hash."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from data import Manifest, scan_folder
from data._scan import MANIFEST_COLUMNS, class_order, perceptual_hash, sharpness
from tests.data.test_io import png_with_size

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402


def smooth_field(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A random smooth image in [0, 1] (distinct ones have unrelated perceptual hashes)."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=4)
    field -= field.min()
    return field / field.max()


def u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


#: Bad files of :func:`make_mixed_dataset` and the words their reasons must contain.
BAD_FILES = {
    "Stroke/cut.jpg": "truncated",
    "Stroke/empty.png": "empty file",
    "Normal/notes.png": "not an image",
    "Normal/bomb.png": "decompression bomb",
}


def make_mixed_dataset(root: Path, seed: int = 0) -> Path:
    """Two classes with every raster flavour, mixed-case extensions and four bad files.

    Normal: 5 good (gray PNG, RGB .Jpeg, RGBA .PNG, 16-bit png, palette png) + text-as-png + bomb.
    Stroke: 5 good (CMYK .jpg, gray .BMP, .TIF, 2 gray png) + truncated JPEG + zero-byte file.
    Plus ignored entries: a .txt file, a _masks/ folder, a .hidden/ folder.
    """
    rng = np.random.default_rng(seed)
    normal, stroke = root / "Normal", root / "Stroke"
    for d in (normal, stroke, root / "_masks" / "Normal", root / ".hidden"):
        d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(u8(smooth_field(rng))).save(normal / "gray.png")
    Image.fromarray(u8(smooth_field(rng))).convert("RGB").save(normal / "rgb.Jpeg", format="JPEG", quality=95)
    rgba = Image.fromarray(u8(smooth_field(rng))).convert("RGBA")
    rgba.save(normal / "rgba.PNG")
    Image.fromarray((smooth_field(rng) * 65535).astype(np.uint16)).save(normal / "deep16.png")
    Image.fromarray(u8(smooth_field(rng))).convert("P").save(normal / "palette.png")
    (normal / "notes.png").write_text("not an image at all\n")
    (normal / "bomb.png").write_bytes(png_with_size(20000, 20000))
    (normal / "readme.txt").write_text("ignored")
    Image.fromarray(u8(smooth_field(rng))).save(root / "_masks" / "Normal" / "gray.png")
    Image.fromarray(u8(smooth_field(rng))).save(root / ".hidden" / "x.png")

    Image.fromarray(u8(smooth_field(rng))).convert("CMYK").save(stroke / "cmyk.jpg", format="JPEG")
    Image.fromarray(u8(smooth_field(rng))).save(stroke / "gray.BMP", format="BMP")
    Image.fromarray(u8(smooth_field(rng))).save(stroke / "scan.TIF", format="TIFF")
    Image.fromarray(u8(smooth_field(rng))).save(stroke / "a.png")
    Image.fromarray(u8(smooth_field(rng, 40))).save(stroke / "b.png")
    buf = io.BytesIO()
    Image.fromarray(u8(smooth_field(rng, 64))).save(buf, format="JPEG", quality=90)
    (stroke / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (stroke / "empty.png").write_bytes(b"")
    return root


def make_simple_dataset(root: Path, counts: dict[str, int], *, seed: int = 0, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(u8(smooth_field(rng, size))).save(root / cls / f"img{i}.png")
    return root


# -------------------------------------------------------------------------------- mixed folder
def test_mixed_folder(tmp_path: Path) -> None:
    m = scan_folder(make_mixed_dataset(tmp_path / "ds"))
    assert isinstance(m, Manifest)
    assert m.classes == ["Normal", "Stroke"]
    assert list(m.table.columns) == MANIFEST_COLUMNS
    assert len(m) == 10
    assert dict(zip(m.bad_files["path"], m.bad_files["reason"])).keys() == BAD_FILES.keys()
    for path, reason in zip(m.bad_files["path"], m.bad_files["reason"]):
        assert BAD_FILES[path] in reason, (path, reason)
    assert set(m.table["path"]) == {
        "Normal/gray.png", "Normal/rgb.Jpeg", "Normal/rgba.PNG", "Normal/deep16.png", "Normal/palette.png",
        "Stroke/cmyk.jpg", "Stroke/gray.BMP", "Stroke/scan.TIF", "Stroke/a.png", "Stroke/b.png",
    }
    assert (m.table.loc[m.table["label"] == "Normal", "y"] == 0).all()
    assert (m.table.loc[m.table["label"] == "Stroke", "y"] == 1).all()
    assert list(m.table["label"]) == ["Normal"] * 5 + ["Stroke"] * 5  # class order, then file order
    fmt = dict(zip(m.table["path"], m.table["format"]))
    assert fmt["Normal/rgb.Jpeg"] == "jpeg" and fmt["Stroke/gray.BMP"] == "bmp" and fmt["Stroke/scan.TIF"] == "tiff"
    assert m.table["phash"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert m.table["sha1"].str.fullmatch(r"[0-9a-f]{40}").all()
    assert ((m.table["mean"] > 0) & (m.table["mean"] < 1) & (m.table["std"] > 0) & (m.table["sharpness"] > 0)).all()
    assert m.table.set_index("path").loc["Stroke/b.png", ["height", "width"]].tolist() == [40, 40]
    assert all(p.is_file() and p.is_absolute() for p in m.paths())
    assert m.histograms.shape == (10, 32) and (m.histograms.sum(axis=1) == m.table["height"] * m.table["width"]).all()
    assert "Manifest(" in repr(m) and m.hash in repr(m)


def test_manifest_hash_is_content_based(tmp_path: Path) -> None:
    root = make_simple_dataset(tmp_path / "ds", {"normal": 3, "stroke": 3})
    h1 = scan_folder(root).hash
    assert scan_folder(root).hash == h1 and len(h1) == 16
    assert scan_folder(root, window="bone").hash != h1
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "stroke" / "img1.png")  # same path, new bytes
    h2 = scan_folder(root).hash
    assert h2 != h1
    (root / "stroke" / "img1.png").rename(root / "normal" / "img_moved.png")
    assert scan_folder(root).hash != h2


def test_pool_and_sequential_agree(tmp_path: Path) -> None:
    root = make_mixed_dataset(tmp_path / "ds")
    seq = scan_folder(root, workers=0)
    par = scan_folder(root, workers=2)
    pd.testing.assert_frame_equal(seq.table, par.table)
    pd.testing.assert_frame_equal(seq.bad_files, par.bad_files)
    assert seq.hash == par.hash


def test_natural_file_order(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for cls in ("A", "B"):
        (root / cls).mkdir(parents=True)
        for i in (10, 2, 1):
            Image.fromarray(u8(smooth_field(np.random.default_rng(i)))).save(root / cls / f"5 ({i}).png")
    m = scan_folder(root, group_by="none")
    assert list(m.table["path"][:3]) == ["A/5 (1).png", "A/5 (2).png", "A/5 (10).png"]


def test_nested_files_are_found(tmp_path: Path) -> None:
    root = make_simple_dataset(tmp_path / "ds", {"normal": 2, "stroke": 2})
    (root / "stroke" / "patient9").mkdir()
    Image.fromarray(u8(smooth_field(np.random.default_rng(9)))).save(root / "stroke" / "patient9" / "s1.png")
    m = scan_folder(root)
    assert "stroke/patient9/s1.png" in set(m.table["path"])


# ---------------------------------------------------------------------------------------- DICOM
def test_dicom_folder_groups_by_patient(tmp_path: Path) -> None:
    src = get_testdata_file("CT_small.dcm")
    root = tmp_path / "ds"
    for cls, patients in (("Normal", ["P1", "P2"]), ("Stroke", ["P3", "P4"])):
        (root / cls).mkdir(parents=True)
        for patient in patients:
            for k in range(2):
                ds = pydicom.dcmread(src)
                ds.PatientID = patient
                ds.PixelData = (ds.pixel_array + 10 * k).astype(ds.pixel_array.dtype).tobytes()
                name = f"{patient}_{k}.dcm" if k == 0 else f"{patient}_{k}"  # second one extensionless
                ds.save_as(root / cls / name)
    (root / "Stroke" / "plan.dcm").write_bytes(Path(get_testdata_file("rtplan.dcm")).read_bytes())
    m = scan_folder(root)
    assert len(m) == 8 and (m.table["format"] == "dicom").all()
    assert m.subject_source == "dicom"
    assert sorted(m.table["subject"].unique()) == ["P1", "P2", "P3", "P4"]
    assert m.bad_files["path"].tolist() == ["Stroke/plan.dcm"]
    assert m.bad_files["reason"].iloc[0] == "DICOM without pixel data"
    assert "Normal/P1_1" in set(m.table["path"])
    assert scan_folder(root, window="bone").table["mean"].mean() != pytest.approx(m.table["mean"].mean())


# -------------------------------------------------------------------------------- class order
@pytest.mark.parametrize(
    "names,expected",
    [
        (["Stroke", "Normal"], ["Normal", "Stroke"]),
        (["yes", "no"], ["no", "yes"]),
        (["tumor", "Healthy"], ["Healthy", "tumor"]),
        (["b", "a", "No_Finding"], ["No_Finding", "a", "b"]),
        (["positive", "NEGATIVE"], ["NEGATIVE", "positive"]),
        (["normal", "ischemic", "hemorrhagic"], ["normal", "hemorrhagic", "ischemic"]),
        (["b", "A", "c"], ["A", "b", "c"]),
        (["abnormal", "nothing"], ["abnormal", "nothing"]),
    ],
)
def test_class_order(names: list[str], expected: list[str]) -> None:
    assert class_order(names) == expected


def test_class_order_in_scan(tmp_path: Path) -> None:
    root = make_simple_dataset(tmp_path / "ds", {"Ischemic": 2, "Normal": 2, "Hemorrhagic": 2})
    m = scan_folder(root)
    assert m.classes == ["Normal", "Hemorrhagic", "Ischemic"]
    assert m.table.groupby("label")["y"].first().to_dict() == {"Normal": 0, "Hemorrhagic": 1, "Ischemic": 2}


# --------------------------------------------------------------------------------------- errors
def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a folder"):
        scan_folder(tmp_path / "file.png")


def test_single_class(tmp_path: Path) -> None:
    root = make_simple_dataset(tmp_path / "ds", {"normal": 3})
    (root / "_masks").mkdir()
    with pytest.raises(ValueError, match=r"has 1 class subfolder.*at least 2") as info:
        scan_folder(root)
    assert str(root) in str(info.value)


def test_empty_class(tmp_path: Path) -> None:
    root = make_simple_dataset(tmp_path / "ds", {"normal": 3})
    (root / "stroke").mkdir()
    (root / "stroke" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"stroke.*empty: 0 image files"):
        scan_folder(root)


def test_too_few_per_class(tmp_path: Path) -> None:
    root = make_simple_dataset(tmp_path / "ds", {"normal": 5, "stroke": 2})
    (root / "stroke" / "broken.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"min_per_class=3.*'stroke': 2 readable, 1 bad") as info:
        scan_folder(root, min_per_class=3)
    assert str(root) in str(info.value)
    assert len(scan_folder(root, min_per_class=2)) == 7


def test_all_files_bad_in_a_class(tmp_path: Path) -> None:
    root = make_simple_dataset(tmp_path / "ds", {"normal": 2})
    (root / "stroke").mkdir()
    (root / "stroke" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="'stroke': 0 readable, 1 bad"):
        scan_folder(root)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"min_per_class": 0}, "min_per_class"),
        ({"phash_threshold": 65}, "phash_threshold"),
        ({"window": "lung"}, "window"),
        ({"group_by": "patients"}, "group_by"),
        ({"workers": -1}, "workers"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    root = make_simple_dataset(tmp_path / "ds", {"normal": 2, "stroke": 2})
    with pytest.raises(ValueError, match=match):
        scan_folder(root, **kwargs)


# ---------------------------------------------------------------------------------- QC statistics
def test_sharpness_drops_with_blur() -> None:
    img = np.random.default_rng(0).random((64, 64))
    assert sharpness(ndimage.gaussian_filter(img, 2)) < 0.1 * sharpness(img)
    assert sharpness(np.full((8, 8), 0.5)) == 0.0


def test_perceptual_hash_is_robust_and_discriminative() -> None:
    rng = np.random.default_rng(0)
    a, b = smooth_field(rng, 64), smooth_field(rng, 64)
    noisy = np.clip(a + rng.normal(0, 0.02, a.shape), 0, 1)
    brighter = np.clip(a * 0.9 + 0.05, 0, 1)

    def dist(x: np.ndarray, y: np.ndarray) -> int:
        return bin(int(perceptual_hash(x), 16) ^ int(perceptual_hash(y), 16)).count("1")

    assert perceptual_hash(a) == perceptual_hash(a.copy()) and len(perceptual_hash(a)) == 16
    assert dist(a, noisy) <= 4 and dist(a, brighter) <= 4
    assert dist(a, b) > 12
    with pytest.raises(ValueError):
        perceptual_hash(np.zeros((2, 2, 2)))


def test_copy_of_dataset_has_same_hash(tmp_path: Path) -> None:
    root = make_simple_dataset(tmp_path / "ds", {"normal": 2, "stroke": 2})
    shutil.copytree(root, tmp_path / "copy")
    assert scan_folder(root).hash == scan_folder(tmp_path / "copy").hash


def test_numpy_qc_matches_scipy() -> None:
    from scipy.fft import dct

    from data._scan import _DCT8

    x = np.random.default_rng(1).random((32, 32))
    np.testing.assert_allclose(_DCT8 @ x @ _DCT8.T, dct(dct(x, axis=0), axis=1)[:8, :8], atol=1e-9)
    y = np.random.default_rng(2).random((20, 30))
    assert sharpness(y) == pytest.approx(float(ndimage.laplace(y, mode="reflect").var()), rel=1e-12)


def test_intensity_histogram_matches_numpy() -> None:
    from data._scan import intensity_histogram

    x = np.random.default_rng(3).random((40, 50)).astype(np.float32)
    x[0, :3] = [0.0, 1.0, 0.5]
    np.testing.assert_array_equal(intensity_histogram(x), np.histogram(x, bins=32, range=(0.0, 1.0))[0])


def test_eight_bit_qc_matches_the_float_computation(tmp_path: Path) -> None:
    """8-bit grey files take a faster route (statistics counted on the 256 grey levels, an integer
    Laplacian): same histogram, same pHash, the same mean/std/sharpness up to float rounding."""
    from data._io import _decode_bytes
    from data._scan import _gray8_stats, _inspect_file, intensity_histogram

    rng = np.random.default_rng(3)
    for shape in [(1, 1), (1, 7), (5, 1), (33, 47)]:
        g = rng.integers(0, 256, size=shape, dtype=np.uint8)
        f = np.divide(g, np.float32(255.0), dtype=np.float32)
        stats = _gray8_stats(g)
        np.testing.assert_array_equal(stats["hist"], intensity_histogram(f))
        assert stats["mean"] == pytest.approx(f.mean(dtype=np.float64), rel=1e-12, abs=1e-15)
        assert stats["std"] == pytest.approx(f.std(dtype=np.float64), rel=1e-9, abs=1e-12)
        assert stats["sharpness"] == pytest.approx(sharpness(f), rel=1e-6, abs=1e-12)
    image = u8(smooth_field(rng, 80))
    for name, fmt in (("a.png", "PNG"), ("b.jpg", "JPEG")):
        Image.fromarray(image).save(tmp_path / name, fmt)
        decoded = _decode_bytes((tmp_path / name).read_bytes(), window="brain", path=name)
        assert decoded.gray8 is not None and decoded.gray8.dtype == np.uint8
        np.testing.assert_array_equal(decoded.image, decoded.gray8 / np.float32(255.0))
        row = _inspect_file((str(tmp_path / name), name, "brain"))[0]
        f = decoded.image
        assert row["phash"] == perceptual_hash(f)
        np.testing.assert_array_equal(row["hist"], intensity_histogram(f))
        assert row["mean"] == pytest.approx(float(f.mean(dtype=np.float64)), rel=1e-12)
        assert row["sharpness"] == pytest.approx(sharpness(f), rel=1e-6)
    Image.fromarray(np.stack([image] * 3, axis=-1)).save(tmp_path / "rgb.png")
    assert _decode_bytes((tmp_path / "rgb.png").read_bytes(), window="brain", path="rgb.png").gray8 is None
