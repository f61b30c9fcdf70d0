"""Files a stranger might upload to the live demo: the bad ones (rejected with a message) and the odd
but valid ones (accepted). Each writer takes a folder and returns the file it wrote."""
from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

CT_SMALL = "CT_small.dcm"


def _ct_small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(CT_SMALL))


def _gradient(size: int = 64) -> np.ndarray:
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    return np.outer(ramp, ramp[::-1])


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


# --------------------------------------------------------------------------------- rejected
def empty_file(folder: Path) -> Path:
    path = folder / "empty.png"
    path.write_bytes(b"")
    return path


def truncated_jpeg(folder: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray((_gradient(128) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    path = folder / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


def text_named_png(folder: Path) -> Path:
    path = folder / "notes.png"
    path.write_text("This is not an image, just text with a .png name.\n" * 20)
    return path


def one_pixel(folder: Path) -> Path:
    path = folder / "one_pixel.png"
    Image.new("L", (1, 1), 128).save(path)
    return path


def decompression_bomb(folder: Path) -> Path:
    """A *valid* 20000 x 20000 1-bit PNG of ~50 kB (400 MP once decoded)."""
    side = 20_000
    row_bytes = 1 + (side + 7) // 8  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    zero_rows = bytes(row_bytes * 1000)
    idat = b"".join(compressor.compress(zero_rows) for _ in range(side // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path = folder / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def dicom_without_pixels(folder: Path) -> Path:
    import pydicom

    ds = pydicom.dcmread(_ct_small())
    del ds.PixelData
    path = folder / "no_pixels.dcm"
    ds.save_as(path)
    return path


def dicom_unsupported_syntax(folder: Path) -> Path:
    """CT_small re-labelled as JPEG-LS (no decoder installed) with a bogus encapsulated frame."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    ds = pydicom.dcmread(_ct_small())
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path = folder / "jpeg_ls.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


#: name -> (writer, fragment expected in the error message, lower-case)
REJECTED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty": (empty_file, "empty"),
    "truncated_jpeg": (truncated_jpeg, "truncated"),
    "text_named_png": (text_named_png, "not an image"),
    "one_pixel": (one_pixel, "at least"),
    "decompression_bomb": (decompression_bomb, "decompression bomb"),
    "dicom_without_pixels": (dicom_without_pixels, "without pixel data"),
    "dicom_unsupported_syntax": (dicom_unsupported_syntax, "compression"),
}


# --------------------------------------------------------------------------------- accepted
def png_16bit(folder: Path) -> Path:
    path = folder / "sixteen.png"
    Image.fromarray((_gradient() * 65535).astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    return path


def cmyk_jpeg(folder: Path) -> Path:
    path = folder / "cmyk.jpg"
    grey = (_gradient() * 255).astype(np.uint8)
    Image.fromarray(grey).convert("RGB").convert("CMYK").save(path, format="JPEG")
    assert Image.open(path).mode == "CMYK"
    return path


def rgba_png(folder: Path) -> Path:
    path = folder / "rgba.png"
    rgba = np.dstack([(_gradient() * 255).astype(np.uint8)] * 3 + [np.full((64, 64), 255, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(path)
    return path


def animated_gif(folder: Path) -> Path:
    path = folder / "animated.gif"
    frames = [Image.fromarray((np.roll(_gradient(), k * 8, axis=0) * 255).astype(np.uint8)) for k in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).is_animated
    return path


def ct_small(folder: Path) -> Path:
    return _ct_small()


ACCEPTED: dict[str, Callable[[Path], Path]] = {
    "png_16bit": png_16bit,
    "cmyk_jpeg": cmyk_jpeg,
    "rgba_png": rgba_png,
    "animated_gif": animated_gif,
    "dicom_ct": ct_small,
}


def oversized(folder: Path, n_bytes: int) -> Path:
    """A PNG-named file of ``n_bytes`` (a valid PNG header, then padding)."""
    path = folder / "oversized.png"
    buf = io.BytesIO()
    Image.fromarray((_gradient() * 255).astype(np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    path.write_bytes(data + bytes(max(0, n_bytes - len(data))))
    return path
