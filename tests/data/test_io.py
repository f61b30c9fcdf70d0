"""Tests for data._io: decoding every supported source, CT windowing, resize/pad."""
from __future__ import annotations

import io
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from data import BadImageError, apply_window, dicom_to_hu, load_image, resize_pad, to_uint8
from data._io import MAX_PIXELS, WINDOWS, is_dicom_bytes, window_key

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402


def ct_small_path() -> str:
    return get_testdata_file("CT_small.dcm")


def png_with_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims ``width x height`` (CRC fixed): a decompression bomb header."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    # signature (8) + length (4) + b"IHDR" (4) + width (4) + height (4) + 5 bytes + CRC (4)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def smooth_image(rng: np.random.Generator, h: int = 24, w: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w), dtype=np.uint8)


# --------------------------------------------------------------------------------- raster modes
def test_gray_png_exact(tmp_path: Path) -> None:
    arr = smooth_image(np.random.default_rng(0))
    Image.fromarray(arr, mode="L").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == arr.shape
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-6)


def test_16bit_png_scaled_by_full_range(tmp_path: Path) -> None:
    arr = np.array([[0, 1000, 65535], [32768, 12, 40000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")
    np.testing.assert_allclose(load_image(tmp_path / "a.png"), arr / 65535.0, atol=1e-6)


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_rgb_of_gray_equals_gray(tmp_path: Path, fmt: str, suffix: str) -> None:
    arr = smooth_image(np.random.default_rng(1))
    Image.fromarray(arr).convert("RGB").save(tmp_path / f"a{suffix}", format=fmt)
    np.testing.assert_allclose(load_image(tmp_path / f"a{suffix}"), arr / 255.0, atol=1e-5)


def test_rgb_uses_luma(tmp_path: Path) -> None:
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    np.testing.assert_allclose(out[0], [0.299, 0.587, 0.114], atol=1e-6)


def test_rgba_composited_on_black(tmp_path: Path) -> None:
    rgba = np.full((2, 2, 4), 200, dtype=np.uint8)
    rgba[0, 0, 3] = 0
    rgba[0, 1, 3] = 255
    rgba[1, 0, 3] = 51  # 20 %
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out[0, 0] == 0.0
    assert out[0, 1] == pytest.approx(200 / 255, abs=1e-5)
    assert out[1, 0] == pytest.approx(200 / 255 * 0.2, abs=1e-5)


def test_palette_png(tmp_path: Path) -> None:
    im = Image.new("P", (4, 2))
    im.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2, 1, 0, 0, 2, 2])
    im.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    np.testing.assert_allclose(out[0], [0.0, 1.0, 0.299, 1.0], atol=1e-6)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 8), (0, 0, 0, 128)).save(tmp_path / "a.jpg")
    assert Image.open(tmp_path / "a.jpg").mode == "CMYK"
    out = load_image(tmp_path / "a.jpg")
    assert out.shape == (8, 16)
    assert out.mean() == pytest.approx(127 / 255, abs=0.02)


def test_32bit_int_and_float_tiff(tmp_path: Path) -> None:
    ints = np.array([[0, 100, 65535]], dtype=np.int32)
    Image.fromarray(ints, mode="I").save(tmp_path / "i.tif")
    np.testing.assert_allclose(load_image(tmp_path / "i.tif"), ints / 65535.0, atol=1e-6)
    floats = np.array([[-100.0, 0.0, 300.0]], dtype=np.float32)
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(load_image(tmp_path / "f.tif"), [[0.0, 0.25, 1.0]], atol=1e-6)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((10, 20), dtype=np.uint8)
    arr[:, :5] = 255  # bright left band
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    im.save(tmp_path / "a.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "a.jpg")
    assert out.shape == (20, 10)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "a.jpg")), dtype=np.float32) / 255
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[:5].mean() > 0.9 and out[-5:].mean() < 0.1  # the band is now on top


@pytest.mark.parametrize(("fmt", "mode", "orientation"), [("PNG", "L", None), ("PNG", "RGB", None),
                                                     ("JPEG", "L", None), ("JPEG", "L", 6), ("TIFF", "L", None),
                                                     ("BMP", "RGB", None)])
def test_each_image_is_decoded_once(monkeypatch: pytest.MonkeyPatch, fmt: str, mode: str,
                                    orientation: int | None) -> None:
    """One pixel decoder per image (like a plain ``Image.open(...).load()``), and no extra copy."""
    rng = np.random.default_rng(0)
    files = []
    for _ in range(5):
        im = Image.fromarray(rng.integers(0, 256, size=(64, 48), dtype=np.uint8)).convert(mode)
        buf = io.BytesIO()
        exif = Image.Exif()
        if orientation:
            exif[0x0112] = orientation  # EXIF Orientation
        im.save(buf, format=fmt, **({"exif": exif} if orientation else {}))
        files.append(buf.getvalue())
    decoders, transposes = [], []
    get_decoder, transpose = Image._getdecoder, ImageOps.exif_transpose
    monkeypatch.setattr(Image, "_getdecoder", lambda *a, **k: decoders.append(1) or get_decoder(*a, **k))

    def counting_transpose(*args: object, **kwargs: object) -> object:
        if not kwargs.get("in_place"):  # PIL's TIFF loader itself calls it in place (no copy)
            transposes.append(1)
        return transpose(*args, **kwargs)

    monkeypatch.setattr(ImageOps, "exif_transpose", counting_transpose)
    for data in files:
        out = load_image(data)
        assert out.shape == ((48, 64) if orientation == 6 else (64, 48)) and out.dtype == np.float32
    assert len(decoders) == len(files)
    assert len(transposes) == (len(files) if orientation else 0), "exif_transpose copies: only call it to rotate"
    decoders.clear()
    for data in files:  # the reference: plain PIL, one decode per image
        Image.open(io.BytesIO(data)).load()
    assert len(decoders) == len(files)


def test_sources_agree(tmp_path: Path) -> None:
    arr = smooth_image(np.random.default_rng(2))
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    ref = load_image(path)
    np.testing.assert_array_equal(load_image(str(path)), ref)
    np.testing.assert_array_equal(load_image(path.read_bytes()), ref)
    np.testing.assert_array_equal(load_image(Image.open(path)), ref)
    np.testing.assert_array_equal(load_image(arr), ref)


# ------------------------------------------------------------------------------------ arrays
@pytest.mark.parametrize(
    "arr,expected",
    [
        (np.array([[0, 255]], dtype=np.uint8), [[0.0, 1.0]]),
        (np.array([[0, 65535]], dtype=np.uint16), [[0.0, 1.0]]),
        (np.array([[False, True]]), [[0.0, 1.0]]),
        (np.array([[0.25, 0.75]], dtype=np.float64), [[0.25, 0.75]]),
        (np.array([[-1000.0, 1000.0, 0.0]]), [[0.0, 1.0, 0.5]]),  # outside [0, 1]: min-max
        (np.array([[-5, 5]], dtype=np.int16), [[0.0, 1.0]]),
        (np.array([[[255, 255, 255], [0, 0, 0]]], dtype=np.uint8), [[1.0, 0.0]]),
        (np.array([[[255, 255, 255, 0], [255, 255, 255, 255]]], dtype=np.uint8), [[0.0, 1.0]]),
        (np.zeros((1, 2, 2), dtype=np.uint8), [[0.0, 0.0], [0.0, 0.0]]),
    ],
)
def test_array_inputs(arr: np.ndarray, expected: list) -> None:
    out = load_image(arr)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.asarray(expected, dtype=np.float32), atol=1e-6)


@pytest.mark.parametrize("arr", [np.zeros((0, 3)), np.zeros((2, 2, 2)), np.zeros((2, 2, 2, 2)), np.array([[np.nan, 1.0]])])
def test_bad_arrays(arr: np.ndarray) -> None:
    with pytest.raises(BadImageError):
        load_image(arr)


def test_unsupported_type() -> None:
    with pytest.raises(TypeError, match="list"):
        load_image([[0, 1]])


# ---------------------------------------------------------------------------------- bad files
def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(smooth_image(np.random.default_rng(3), 64, 64)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"this is not an image, just text\n" * 3, "not an image"),
        ("cut.jpg", _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated"),
        ("bomb.png", png_with_size(20000, 20000), "decompression bomb"),
        ("bomb60.png", png_with_size(8000, 8000), "decompression bomb"),  # between our limit and PIL's
    ],
)
def test_bad_files(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=reason) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)


def test_bomb_is_rejected_from_the_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bomb must not be decoded")

    bomb = png_with_size(8000, 8000)
    monkeypatch.setattr(Image.Image, "load", fail)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", fail)
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(bomb)
    assert 8000 * 8000 > MAX_PIXELS


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(BadImageError, match="folder"):
        load_image(tmp_path)


def test_bad_image_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(BadImageError("empty file", "a/b.png")))
    assert (err.path, err.reason, str(err)) == ("a/b.png", "empty file", "a/b.png: empty file")
    assert BadImageError("x").path is None


# --------------------------------------------------------------------------------------- DICOM
def test_ct_small_hu_and_window_by_hand() -> None:
    ds = pydicom.dcmread(ct_small_path())
    raw = ds.pixel_array.astype(np.float64)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert (slope, intercept) == (1.0, -1024.0)
    hu = dicom_to_hu(ds)
    assert hu.dtype == np.float32 and hu.shape == (128, 128)
    # hand computation on a few pixels: HU = raw * 1 - 1024
    for r, c in [(0, 0), (64, 64), (100, 30)]:
        assert hu[r, c] == raw[r, c] - 1024
    assert hu.min() == raw.min() - 1024 and hu.max() == raw.max() - 1024
    # brain window L40/W80 maps [0, 80] HU to [0, 1]
    img = load_image(ct_small_path())
    for r, c in [(0, 0), (64, 64), (100, 30)]:
        assert img[r, c] == pytest.approx(min(max((raw[r, c] - 1024 - 0.0) / 80.0, 0.0), 1.0), abs=1e-6)
    # bone window L600/W2800 maps [-800, 2000] HU to [0, 1]
    bone = load_image(ct_small_path(), window="bone")
    expected = np.clip((raw - 1024 + 800) / 2800, 0, 1)
    np.testing.assert_allclose(bone, expected, atol=1e-6)
    np.testing.assert_allclose(load_image(ct_small_path(), window=(600, 2800)), bone, atol=0)


def test_dicom_sources_agree_and_extensionless(tmp_path: Path) -> None:
    ref = load_image(ct_small_path(), window="stroke")
    copy = tmp_path / "IM0001"
    shutil.copy(ct_small_path(), copy)
    assert is_dicom_bytes(copy.read_bytes())
    np.testing.assert_array_equal(load_image(copy, window="stroke"), ref)
    np.testing.assert_array_equal(load_image(copy.read_bytes(), window="stroke"), ref)
    np.testing.assert_array_equal(load_image(pydicom.dcmread(copy), window="stroke"), ref)


def test_dicom_rescale_and_monochrome1(tmp_path: Path) -> None:
    ds = pydicom.dcmread(ct_small_path())
    raw = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -2000
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "m1.dcm"
    ds.save_as(path)
    np.testing.assert_allclose(dicom_to_hu(pydicom.dcmread(path)), raw * 2 - 2000)
    expected = 1.0 - np.clip((raw * 2 - 2000) / 80.0, 0, 1)
    np.testing.assert_allclose(load_image(path), expected, atol=1e-6)


def test_dicom_multiframe_takes_middle_frame(tmp_path: Path) -> None:
    ds = pydicom.dcmread(ct_small_path())
    raw = ds.pixel_array
    ds.PixelData = np.stack([raw, raw + 40, raw + 80]).astype(raw.dtype).tobytes()
    ds.NumberOfFrames = 3
    path = tmp_path / "mf.dcm"
    ds.save_as(path)
    expected = apply_window(raw.astype(np.float32) + 40 - 1024, "brain")
    np.testing.assert_allclose(load_image(path), expected, atol=1e-6)
    np.testing.assert_allclose(dicom_to_hu(pydicom.dcmread(path), frame=2), raw + 80 - 1024.0)
    with pytest.raises(ValueError, match="frame"):
        dicom_to_hu(pydicom.dcmread(path), frame=3)


@pytest.mark.parametrize(
    "name,reason",
    [
        ("rtplan.dcm", "DICOM without pixel data"),
        ("MR_small_jpeg_ls_lossless.dcm", "unreadable DICOM compression"),
        ("MR_truncated.dcm", "corrupt DICOM pixel data"),
    ],
)
def test_bad_dicom(tmp_path: Path, name: str, reason: str) -> None:
    src = get_testdata_file(name)
    try:  # JPEG-LS becomes readable if a plugin is installed; then there is nothing to test
        pydicom.dcmread(src).pixel_array
        if "compression" in reason:
            pytest.skip("a JPEG-LS decoder is installed")
    except Exception:
        pass
    with pytest.raises(BadImageError, match=reason):
        load_image(src)


def test_dicom_bomb_guard(tmp_path: Path) -> None:
    ds = pydicom.dcmread(ct_small_path())
    ds.Rows = ds.Columns = 10000
    path = tmp_path / "big.dcm"
    ds.save_as(path)
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(path)


# ------------------------------------------------------------------------- windows and resize
def test_apply_window_presets_and_errors() -> None:
    assert WINDOWS["brain"] == (40.0, 80.0) and WINDOWS["bone"] == (600.0, 2800.0)
    hu = np.array([-1000, 0, 40, 80, 3000], dtype=np.float32)
    np.testing.assert_allclose(apply_window(hu, "brain"), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(apply_window(hu, "stroke"), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(apply_window(hu, (0, 2000)), [0, 0.5, 0.52, 0.54, 1])
    np.testing.assert_allclose(apply_window(hu, "0,2000"), apply_window(hu, (0, 2000)))
    assert window_key((40, 80)) == "40,80" and window_key("bone") == "bone"
    for bad in ["lung", (40, 0), (40,), "a,b", None]:
        with pytest.raises(ValueError):
            apply_window(hu, bad)  # type: ignore[arg-type]


def test_resize_pad_keeps_aspect_and_pads_zero() -> None:
    out = resize_pad(np.ones((20, 40), dtype=np.float32), 32)
    assert out.shape == (32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out[8:24], 1.0, atol=1e-6)  # 16 rows of image, centred
    assert out[:8].max() == 0.0 and out[24:].max() == 0.0
    tall = resize_pad(np.ones((40, 10), dtype=np.float32), 16)
    assert tall[:, 6:10].min() == pytest.approx(1.0) and tall[:, :6].max() == 0.0 and tall[:, 10:].max() == 0.0


def test_resize_pad_antialiases() -> None:
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
    out = resize_pad(checker, 16)
    np.testing.assert_allclose(out, 0.5, atol=0.05)  # aliasing would give 0s and 1s


def test_resize_pad_identity_and_upscale() -> None:
    img = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    np.testing.assert_allclose(resize_pad(img, 16), img)
    assert resize_pad(img, 33).shape == (33, 33)


@pytest.mark.parametrize("size", [0, -1, 2.5, True, "32"])
def test_resize_pad_bad_size(size: object) -> None:
    with pytest.raises(ValueError, match="size"):
        resize_pad(np.ones((4, 4)), size)  # type: ignore[arg-type]


def test_resize_pad_bad_image() -> None:
    with pytest.raises(ValueError, match="2-D"):
        resize_pad(np.ones((4, 4, 3)), 8)


def test_to_uint8() -> None:
    out = to_uint8(np.array([0.0, 0.5, 1.0, -1.0, 2.0, 1 / 255]))
    np.testing.assert_array_equal(out, [0, 128, 255, 0, 255, 1])
    assert out.dtype == np.uint8
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([np.nan]))
