"""Image decoding, CT windowing and resizing: the one preprocessing path used by the cache,
the predictor and the live app.

Everything that reads pixels goes through :func:`load_image`, which returns a grayscale
``float32`` image in ``[0, 1]``. Choices made here (and nowhere else):

* **DICOM** (``.dcm``/``.dicom`` or any file with the ``DICM`` marker at byte 128): stored values
  -> Hounsfield units with *RescaleSlope*/*RescaleIntercept* (:func:`dicom_to_hu`) -> CT window
  (:func:`apply_window`) -> inverted when *PhotometricInterpretation* is ``MONOCHROME1``.
  Multi-frame files contribute their **middle frame** (``frames // 2``). Non-CT grayscale DICOM
  (MR, CR, ...) is not in HU, so it uses the file's own *WindowCenter*/*WindowWidth* when present
  and a min-max stretch otherwise; colour DICOM becomes luma like a raster.
* **Raster** (PNG, JPEG, BMP, TIFF, ...): the EXIF orientation is applied, then every mode
  becomes one grey channel: 8-bit modes are divided by 255, 16-bit modes (``I;16*``) by 65535,
  32-bit integer (``I``) images by 65535 when they fit in 16 bits and min-max stretched
  otherwise, float (``F``) images are kept when already in ``[0, 1]`` and min-max stretched
  otherwise. Colour uses ITU-R 601 luma (the weights of ``PIL.Image.convert("L")``). Alpha is
  **composited on black** (grey * alpha), the same black used for padding. Raster files are taken
  as already windowed: the ``window`` argument does not apply to them. Multi-page files
  contribute their first page.
* Anything unreadable raises :class:`BadImageError` with a short reason; images above
  :data:`MAX_PIXELS` are rejected from their header, before any pixel is decoded.
"""
from __future__ import annotations

import functools
import io
import math
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from data._errors import BadImageError

__all__ = [
    "DICOM_EXTENSIONS",
    "MAX_PIXELS",
    "RASTER_EXTENSIONS",
    "WINDOWS",
    "BadImageError",
    "BRAIN_HU",
    "WINDOW_SETS",
    "apply_window",
    "brain_fraction",
    "load_channels",
    "parse_windows",
    "windows_key",
    "cache_dir",
    "dicom_to_hu",
    "is_dicom_bytes",
    "load_image",
    "resize_pad",
    "to_uint8",
    "window_key",
]

logger = logging.getLogger(__name__)

# BadImageError lives in data._errors (below every reader, so NIfTI reading needs no import of this module)

#: CT window presets, name -> (level, width) in Hounsfield units.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "stroke": (40.0, 40.0),
    "subdural": (75.0, 215.0),
    "bone": (600.0, 2800.0),
}

#: Named window sets: three windows of one HU slice stacked as the 3 input channels (the input of the
#: strongest public intracranial-haemorrhage models: brain, subdural, bone).
WINDOW_SETS: dict[str, tuple[str, ...]] = {
    "ich": ("brain", "subdural", "bone"),
}
#: Channels a window set must have (the RGB input of pretrained backbones).
WINDOW_SET_SIZE = 3

#: Hounsfield range counted as brain parenchyma by :func:`brain_fraction` (white matter ~20-30 HU, grey
#: matter ~35-45 HU; CSF, fat, bone and air fall outside).
BRAIN_HU = (15.0, 60.0)

#: Largest image (pixels of one frame) that is decoded; larger ones are decompression bombs.
MAX_PIXELS = 50_000_000

#: File extensions read as raster images (compared lower-case).
RASTER_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
#: File extensions read as DICOM (compared lower-case); extensionless files are sniffed.
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})

# ITU-R 601-2 luma, the transform of PIL's convert("L").
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class _Decoded(NamedTuple):
    """An image plus what the scanner needs to know about its file."""

    image: np.ndarray  # float32 (H, W) in [0, 1]
    format: str  # "png" | "jpeg" | "bmp" | "tiff" | "dicom" | ... | "array" | "pil"
    patient_id: str | None = None
    study_uid: str | None = None
    # uint8 (H, W) when the pixels were 8-bit grey (PIL mode "L"): ``image == gray8 / 255`` exactly,
    # so the scanner can count its statistics on 256 levels instead of ~400,000 floats
    gray8: np.ndarray | None = None
    # where a DICOM slice sits in its series (see data._volumes): SeriesInstanceUID, ImagePositionPatient,
    # ImageOrientationPatient, PixelSpacing, InstanceNumber; and the share of brain-density pixels of a CT slice
    series_uid: str | None = None
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, ...] | None = None
    pixel_spacing: tuple[float, float] | None = None
    instance: int | None = None
    brain_fraction: float | None = None


# ----------------------------------------------------------------------------------- windows
def _resolve_window(window: str | tuple[float, float]) -> tuple[float, float]:
    """Turn a preset name, ``"level,width"`` string or ``(level, width)`` into floats."""
    if isinstance(window, str):
        if window in WINDOWS:
            return WINDOWS[window]
        parts = window.replace("/", ",").split(",")
        if len(parts) == 2:
            try:
                return _resolve_window((float(parts[0]), float(parts[1])))
            except ValueError:
                pass
        raise ValueError(
            f"Unknown CT window {window!r}; choose one of {sorted(WINDOWS)}, 'level,width' or pass (level, width)."
        )
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"A CT window is a preset name or (level, width), got {window!r}.") from None
    if not width > 0 or not np.isfinite(level) or not np.isfinite(width):
        raise ValueError(f"CT window width must be finite and > 0 (level finite), got level={level}, width={width}.")
    return level, width


def parse_windows(window: str | tuple[float, float] | Sequence[Any]) -> tuple[str | tuple[float, float], ...]:
    """A window or a window set -> the tuple of single windows (one per input channel).

    Accepted sets: a name of :data:`WINDOW_SETS` (``"ich"``), three preset names separated by commas
    (``"brain,subdural,bone"``), three window specs separated by ``+`` (``"brain+75,215+600,2800"``), or
    a list of three windows. Anything else is one window (a preset, ``"level,width"``, ``(level, width)``).

    Raises:
        ValueError: An unknown window, or a set that does not have :data:`WINDOW_SET_SIZE` windows.
    """
    if isinstance(window, str):
        if window in WINDOW_SETS:
            return WINDOW_SETS[window]
        if "+" in window:
            parts: list[Any] = [p.strip() for p in window.split("+")]
        elif "," in window and all(p.strip() in WINDOWS for p in window.split(",")):
            parts = [p.strip() for p in window.split(",")]
        else:
            _resolve_window(window)
            return (window,)
    elif isinstance(window, (list, tuple)) and window and all(isinstance(w, (str, list, tuple)) for w in window):
        parts = [tuple(w) if isinstance(w, list) else w for w in window]
    else:
        _resolve_window(window)  # (level, width)
        return (tuple(float(v) for v in window),)  # type: ignore[union-attr]
    if len(parts) != WINDOW_SET_SIZE:
        raise ValueError(f"A window set has {WINDOW_SET_SIZE} windows (one per input channel), got {len(parts)} "
                         f"in {window!r}; e.g. 'brain,subdural,bone' or one of {sorted(WINDOW_SETS)}.")
    for part in parts:
        _resolve_window(part)
    return tuple(parts)


def windows_key(window: str | tuple[float, float] | Sequence[Any]) -> str:
    """Canonical string of a window or window set: ``"brain"``, ``"40,80"``, ``"brain+subdural+bone"``."""
    return "+".join(window_key(w) for w in parse_windows(window))


def brain_fraction(hu: np.ndarray) -> float:
    """Share of a slice's pixels whose HU lies in :data:`BRAIN_HU` (0 below the skull base and above the vertex)."""
    arr = np.asarray(hu)
    if arr.size == 0:
        return 0.0
    return float(np.count_nonzero((arr >= BRAIN_HU[0]) & (arr <= BRAIN_HU[1])) / arr.size)


def window_key(window: str | tuple[float, float]) -> str:
    """Canonical string for a window: the preset name, or ``"level,width"`` (e.g. ``"40,80"``)."""
    if isinstance(window, str) and window in WINDOWS:
        return window
    level, width = _resolve_window(window)
    return f"{level:g},{width:g}"


def apply_window(hu: np.ndarray, window: str | tuple[float, float] = "brain") -> np.ndarray:
    """Map Hounsfield units to [0, 1] through a CT window.

    ``level - width / 2`` maps to 0 and ``level + width / 2`` to 1, linearly, clipped outside.

    Args:
        hu: Array of Hounsfield units.
        window: Preset name (see ``WINDOWS``) or ``(level, width)``.

    Returns:
        float32 array in [0, 1], same shape as ``hu``.
    """
    level, width = _resolve_window(window)
    low = level - width / 2.0
    out = (np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(width)
    return np.clip(out, 0.0, 1.0, out=out)


def checkout_root() -> Path | None:
    """The repository this code runs from, or ``None`` when it is an installed package (site-packages)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() or (root / ".git").exists() else None


def cache_dir() -> Path:
    """Root of generated data (phantoms, array and feature caches, converted weights).

    ``$STROKECT_CACHE``; else ``<repo>/.cache`` in a checkout; else (``pip install .``) the user cache,
    ``$XDG_CACHE_HOME/strokect`` or ``~/.cache/strokect`` — never inside site-packages.
    """
    env = os.environ.get("STROKECT_CACHE")
    checkout = checkout_root()
    if env:
        root = Path(env)
    elif checkout is not None:
        root = checkout / ".cache"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "strokect"
    root.mkdir(parents=True, exist_ok=True)
    return root


# ------------------------------------------------------------------------------ small helpers
def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32, copy=False)


def _unit_float(arr: np.ndarray, path: str | None) -> np.ndarray:
    """Float array -> [0, 1]: kept when already inside, min-max stretched otherwise."""
    arr = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise BadImageError("image contains NaN or infinite values", path)
    if arr.min() >= 0.0 and arr.max() <= 1.0:
        return arr
    return _minmax(arr)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return np.tensordot(np.asarray(rgb[..., :3], dtype=np.float32), _LUMA, axes=([-1], [0])).astype(np.float32)


def is_dicom_bytes(data: bytes | bytearray | memoryview) -> bool:
    """Whether a buffer carries the DICOM Part 10 marker (``b"DICM"`` at byte 128)."""
    return len(data) >= 132 and bytes(data[128:132]) == b"DICM"


def _check_pixels(height: int, width: int, path: str | None, frames: int = 1) -> None:
    if height <= 0 or width <= 0:
        raise BadImageError(f"image has no pixels ({width}x{height})", path)
    if height * width > MAX_PIXELS:
        raise BadImageError(
            f"decompression bomb guard: {width}x{height} = {height * width / 1e6:.1f} MP exceeds the "
            f"{MAX_PIXELS / 1e6:.0f} MP limit",
            path,
        )


# ------------------------------------------------------------------------------------ raster
def _pil_to_gray(im: Any, path: str | None) -> np.ndarray:
    """Any PIL mode -> float32 (H, W) in [0, 1] (see the module docstring for the rules)."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / np.float32(65535.0)
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.float32) / np.float32(65535.0)
        return _minmax(arr)
    if mode == "F":
        return _unit_float(np.asarray(im), path)
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        # one pass, bit-identical to astype(float32) followed by / 255
        return np.divide(np.asarray(im), np.float32(255.0), dtype=np.float32)
    if mode in ("LA", "La"):
        arr = np.asarray(im.convert("LA")).astype(np.float32) / np.float32(255.0)
        return arr[..., 0] * arr[..., 1]
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode in ("RGBA", "RGBa"):
        arr = np.asarray(im.convert("RGBA")).astype(np.float32) / np.float32(255.0)
        return _luma(arr) * arr[..., 3]
    if mode != "RGB":  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        im = im.convert("RGB")
    return _luma(np.asarray(im)) / np.float32(255.0)


def _decode_pil_image(im: Any, path: str | None) -> np.ndarray:
    return _decode_pil(im, path)[0]


def _decode_pil(im: Any, path: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode a PIL image: the float32 grey image and, for 8-bit grey pixels, the uint8 array it came from."""
    from PIL import ImageOps

    _check_pixels(im.height, im.width, path)
    try:
        im.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib/struct errors...
        raise BadImageError(f"truncated or corrupt image data ({exc})", path) from None
    try:
        # exif_transpose copies the whole image even when there is nothing to rotate: only call it
        # for an orientation other than 1 (normal); PIL's load() above was the one and only decode.
        if im.getexif().get(0x0112, 1) not in (1, None):  # 0x0112: EXIF Orientation
            transposed = ImageOps.exif_transpose(im)
            if transposed is not None:
                im = transposed
    except Exception as exc:  # a broken EXIF block must not lose an otherwise good image
        logger.debug("Ignoring unreadable EXIF orientation of %s: %s", path, exc)
    if im.mode == "L":
        gray8 = np.asarray(im)
        return np.divide(gray8, np.float32(255.0), dtype=np.float32), gray8  # == _pil_to_gray's "L" rule
    try:
        gray = _pil_to_gray(im, path)
    except BadImageError:
        raise
    except Exception as exc:
        raise BadImageError(f"unsupported image mode {im.mode!r} ({exc})", path) from None
    return np.ascontiguousarray(gray, dtype=np.float32), None


def _decode_raster_bytes(data: bytes, path: str | None) -> _Decoded:
    from PIL import Image, UnidentifiedImageError

    # Image.open reads the header only; PIL itself refuses > 2 * MAX_IMAGE_PIXELS (about 179 MP) here,
    # and _decode_pil_image refuses > MAX_PIXELS before any pixel is decoded.
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.1f} MP" if found else "the image"
        reason = f"decompression bomb guard: {size} exceeds the {MAX_PIXELS / 1e6:.0f} MP limit"
        raise BadImageError(reason, path) from None
    except UnidentifiedImageError:
        raise BadImageError("not an image (unrecognised file format)", path) from None
    except Exception as exc:
        raise BadImageError(f"truncated or corrupt image header ({exc})", path) from None
    with im:
        fmt = (im.format or "raster").lower()
        fmt = {"mpo": "jpeg"}.get(fmt, fmt)
        image, gray8 = _decode_pil(im, path)
    return _Decoded(image, fmt, gray8=gray8)


# ------------------------------------------------------------------------------------- DICOM
def _first(value: Any) -> Any:
    """First item of a DICOM multi-value (or the value itself)."""
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)):
            return value
        return value[0]
    except (TypeError, IndexError, KeyError):
        return value


def _rescale_params(ds: Any, frame: int) -> tuple[float, float]:
    """(slope, intercept) from the top level or the (per-frame / shared) functional groups."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return float(_first(ds.get("RescaleSlope", 1.0)) or 1.0), float(_first(ds.get("RescaleIntercept", 0.0)) or 0.0)
    for seq_name, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(seq_name)
        if not seq or len(seq) <= index:
            continue
        pvt = seq[index].get("PixelValueTransformationSequence")
        if pvt:
            item = pvt[0]
            return float(item.get("RescaleSlope", 1.0) or 1.0), float(item.get("RescaleIntercept", 0.0) or 0.0)
    return 1.0, 0.0


def _n_frames(ds: Any) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _dicom_pixels(ds: Any, path: str | None, frame: int | None = None) -> tuple[np.ndarray, int]:
    """Decode one frame of ``ds`` (default: the middle one); returns (array, frame index)."""
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise BadImageError("DICOM without pixel data", path)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise BadImageError("DICOM without image dimensions (Rows/Columns)", path) from None
    _check_pixels(rows, cols, path)
    frames = _n_frames(ds)
    frame = frames // 2 if frame is None else frame
    try:
        if frames > 1:
            try:  # pydicom >= 3 decodes a single frame
                from pydicom.pixels import pixel_array

                arr = pixel_array(ds, index=frame)
            except ImportError:  # pragma: no cover - pydicom 2.x
                arr = ds.pixel_array[frame]
        else:
            arr = ds.pixel_array
    except Exception as exc:
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        message = message if len(message) <= 300 else message[:297] + "..."
        if tsyntax is not None and getattr(tsyntax, "is_compressed", False):
            raise BadImageError(f"unreadable DICOM compression ({tsyntax.name}): {message}", path) from None
        raise BadImageError(f"corrupt DICOM pixel data ({message})", path) from None
    arr = np.asarray(arr)
    if frames == 1 and arr.ndim == 3 and arr.shape[0] > 1 and arr.shape[-1] not in (3, 4):
        arr = arr[arr.shape[0] // 2]  # NumberOfFrames missing but several frames decoded
    return arr, frame


def _is_ct(ds: Any) -> bool:
    modality = str(ds.get("Modality", "") or "").upper()
    rescale_type = str(ds.get("RescaleType", "") or "").upper()
    return modality == "CT" or rescale_type == "HU" or (not modality and "RescaleIntercept" in ds)


def dicom_to_hu(ds: Any, *, frame: int | None = None) -> np.ndarray:
    """Stored DICOM values -> Hounsfield units (``value * RescaleSlope + RescaleIntercept``).

    Args:
        ds: A ``pydicom.Dataset`` with pixel data.
        frame: Frame of a multi-frame dataset; ``None`` takes the middle frame (``frames // 2``).
            The slope/intercept are read from the top level, else from the per-frame or shared
            functional groups (enhanced CT). A missing rescale means slope 1, intercept 0.

    Returns:
        float32 (H, W) array of HU.

    Raises:
        BadImageError: No pixel data, unreadable compression or corrupt pixel data.
        ValueError: ``frame`` out of range.
    """
    frames = _n_frames(ds)
    if frame is not None and not 0 <= frame < frames:
        raise ValueError(f"frame must be in [0, {frames}), got {frame}.")
    path = getattr(ds, "filename", None)
    path = path if isinstance(path, str) else None
    arr, frame = _dicom_pixels(ds, path, frame)
    if arr.ndim != 2:
        raise BadImageError(f"expected a grayscale DICOM frame, got pixel array of shape {arr.shape}", path)
    slope, intercept = _rescale_params(ds, frame)
    return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    """``n`` finite floats from a DICOM multi-value, else ``None``."""
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _dicom_geometry(ds: Any) -> dict[str, Any]:
    """Series id and slice geometry of a DICOM slice (missing elements are ``None``)."""
    try:
        instance = int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") not in (None, "") else None
    except (TypeError, ValueError):
        instance = None
    return {
        "series_uid": str(ds.get("SeriesInstanceUID", "") or "").strip() or None,
        "position": _floats(ds.get("ImagePositionPatient"), 3),
        "orientation": _floats(ds.get("ImageOrientationPatient"), 6),
        "pixel_spacing": _floats(ds.get("PixelSpacing"), 2),
        "instance": instance,
    }


def _decode_dicom_dataset(ds: Any, window: str | tuple[float, float], path: str | None) -> _Decoded:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    arr, frame = _dicom_pixels(ds, path)
    patient = str(ds.get("PatientID", "") or "").strip() or None
    study = str(ds.get("StudyInstanceUID", "") or "").strip() or None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # RGB / YBR (already converted) / palette
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr if arr.ndim == 2 else arr[..., 0], ds)
        rgb = arr.astype(np.float32)
        bits = int(ds.get("BitsStored", 8) or 8)
        return _Decoded(np.clip(_luma(rgb) / np.float32(2**bits - 1), 0, 1).astype(np.float32), "dicom", patient, study)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds).astype(np.float32)
        return _Decoded(_minmax(_luma(rgb)), "dicom", patient, study)
    if arr.ndim != 2:
        raise BadImageError(f"unsupported DICOM pixel array of shape {arr.shape}", path)
    slope, intercept = _rescale_params(ds, frame)
    values = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    extra: dict[str, Any] = _dicom_geometry(ds) if _n_frames(ds) == 1 else {}
    if _is_ct(ds):
        image = apply_window(values, window)
        extra["brain_fraction"] = brain_fraction(values)
    else:
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        try:
            image = apply_window(values, (float(center), float(width)))
        except (TypeError, ValueError):
            image = _minmax(values)
    if photometric == "MONOCHROME1":
        image = np.float32(1.0) - image
    return _Decoded(np.ascontiguousarray(image, dtype=np.float32), "dicom", patient, study, **extra)


def _decode_dicom_bytes(data: bytes, window: str | tuple[float, float], path: str | None) -> _Decoded:
    import pydicom

    has_marker = is_dicom_bytes(data)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise BadImageError(f"not a readable DICOM file ({exc})", path) from None
    if not has_marker and "PixelData" not in ds and "SOPClassUID" not in ds:
        raise BadImageError("not a DICOM file (no DICM marker, no DICOM image elements)", path)
    return _decode_dicom_dataset(ds, window, path)


# ------------------------------------------------------------------------------- entry points
def _decode_bytes(data: bytes, *, window: str | tuple[float, float], path: str | None = None) -> _Decoded:
    """Decode a whole file's bytes; ``path`` (its name) only picks DICOM by extension and names errors."""
    if len(data) == 0:
        raise BadImageError("empty file", path)
    suffix = Path(path).suffix.lower() if path else ""
    if is_dicom_bytes(data) or suffix in DICOM_EXTENSIONS:
        return _decode_dicom_bytes(data, window, path)
    return _decode_raster_bytes(data, path)


def _read_file(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    if not p.exists():
        raise BadImageError("file does not exist", str(p))
    if p.is_dir():
        raise BadImageError("is a folder, not an image file", str(p))
    try:
        return p.read_bytes()
    except OSError as exc:
        raise BadImageError(f"cannot read file ({exc.strerror or exc})", str(p)) from None


def _decode_array(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.size == 0:
        raise BadImageError(f"empty array of shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[0] == 1 and arr.shape[-1] not in (3, 4):  # channels-last wins when ambiguous
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        alpha = None
        if arr.shape[-1] == 4:
            alpha = _decode_array(arr[..., 3])
        channels = arr[..., :3]
        if channels.dtype == np.uint8:
            gray = _luma(channels) / np.float32(255.0)
        elif channels.dtype == np.uint16:
            gray = _luma(channels) / np.float32(65535.0)
        else:
            gray = _decode_array(_luma(channels.astype(np.float32)))
        return (gray * alpha if alpha is not None else gray).astype(np.float32)
    if arr.ndim != 2:
        raise BadImageError(f"expected a (H, W), (H, W, 1|3|4) or (1, H, W) array, got shape {arr.shape}")
    _check_pixels(arr.shape[0], arr.shape[1], None)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(arr.dtype, np.floating):
        return _unit_float(arr, None)
    if np.issubdtype(arr.dtype, np.integer):
        return _minmax(arr)
    raise BadImageError(f"unsupported array dtype {arr.dtype}")


def _slice_reference(path: str) -> tuple[str, int | None]:
    """``(file, k)`` for a NIfTI slice reference whose file exists (and that is no file itself), else ``(path, None)``."""
    from data._volume_io import split_slice_ref

    volume_file, index = split_slice_ref(path)
    if index is None or os.path.exists(path) or not os.path.isfile(volume_file):
        return path, None
    return volume_file, index


@functools.lru_cache(maxsize=2)
def _nifti_volume(volume_file: str, mtime_ns: int, size: int) -> np.ndarray:
    """The HU slices of a NIfTI file (the last two read are kept: a dashboard shows several slices of one scan)."""
    from data._volume_io import read_nifti

    return read_nifti(volume_file).hu


def _nifti_slice(volume_file: str, index: int) -> np.ndarray:
    stat = os.stat(volume_file)
    hu = _nifti_volume(os.path.abspath(volume_file), stat.st_mtime_ns, stat.st_size)
    if not 0 <= index < len(hu):
        raise BadImageError(f"slice {index} is out of range: the volume has {len(hu)} slices", volume_file)
    return hu[index]


def _decode_source(source: Any, *, window: str | tuple[float, float] = "brain") -> _Decoded:
    """Decode any supported source; see :func:`load_image`."""
    _resolve_window(window)  # fail fast on a bad window, whatever the source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        volume_file, index = _slice_reference(path)
        if index is not None:  # "<file>.nii.gz#k": slice k of a NIfTI volume (a manifest row)
            hu = _nifti_slice(volume_file, index)
            return _Decoded(apply_window(hu, window), "nifti", brain_fraction=brain_fraction(hu))
        return _decode_bytes(_read_file(path), window=window, path=path)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(source), window=window, path=None)
    if isinstance(source, np.ndarray):
        return _Decoded(_decode_array(source), "array")
    try:
        from PIL import Image

        if isinstance(source, Image.Image):
            return _Decoded(_decode_pil_image(source, getattr(source, "filename", None) or None), "pil")
    except ImportError:  # pragma: no cover
        pass
    try:
        import pydicom

        if isinstance(source, pydicom.Dataset):
            name = getattr(source, "filename", None)
            return _decode_dicom_dataset(source, window, name if isinstance(name, str) else None)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(
        "load_image() takes a path, bytes, PIL.Image.Image, numpy.ndarray or pydicom.Dataset; "
        f"got {type(source).__name__}."
    )


def load_image(source: Any, *, window: str | tuple[float, float] = "brain") -> np.ndarray:
    """Read one image as grayscale float32 in [0, 1].

    Args:
        source: A file path (``str``/``Path``; also ``"<file>.nii.gz#k"``, slice ``k`` of a NIfTI volume as
            the manifest names it), the file's bytes, a ``PIL.Image.Image``, a numpy
            array (``uint8`` /255, ``uint16`` /65535, ``bool``, floats kept in [0, 1] or min-max
            stretched, other integers min-max stretched; ``(H, W)``, ``(H, W, 1|3|4)`` or
            ``(1, H, W)``) or a ``pydicom.Dataset``. DICOM is recognised by a ``.dcm``/``.dicom``
            extension or the ``DICM`` marker at byte 128 (extensionless files included).
        window: CT window for DICOM CT: a preset of ``WINDOWS`` or ``(level, width)`` in HU.
            Raster images are assumed to be windowed already and ignore it.

    Returns:
        float32 array (H, W) with values in [0, 1].

    Raises:
        BadImageError: Empty file, truncated/corrupt data, not an image, larger than
            ``MAX_PIXELS`` (checked from the header, never decoded), DICOM without pixel data,
            unreadable DICOM compression. ``.path`` and ``.reason`` say which and why.
        ValueError: Unknown window.
        TypeError: Unsupported source type.
    """
    return _decode_source(source, window=window).image


def load_channels(source: Any, *, window: str | tuple[float, float] | Sequence[Any] = "brain") -> np.ndarray:
    """Read one image as float32 ``(C, H, W)`` in [0, 1]: one channel per window of ``window``.

    A DICOM CT slice gives each window of its HU values; a raster image carries no HU, so every
    channel is the same (already windowed) grey image. One window gives ``(1, H, W)``.
    """
    windows = parse_windows(window)
    if len(windows) == 1:
        return load_image(source, window=windows[0])[None]
    if isinstance(source, (str, os.PathLike)) and _slice_reference(os.fspath(source))[1] is None:
        source = _read_file(os.fspath(source))  # read once, window thrice
    return np.stack([load_image(source, window=w) for w in windows]).astype(np.float32)


# ------------------------------------------------------------------------------------- resize
def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (H, W), got shape {arr.shape}.")
    return arr


def resize_pad(image: np.ndarray, size: int) -> np.ndarray:
    """Fit an image into a ``size x size`` square, keeping its aspect ratio.

    The longer side is resized to ``size`` with PIL's antialiased bilinear filter (a triangle
    filter widened by the scale factor when shrinking, i.e. area-like averaging); the shorter side
    is centred and padded with **0** (black, the value of air in every CT window).

    Args:
        image: 2-D array, typically float32 in [0, 1] from :func:`load_image`.
        size: Output side length in pixels (>= 1).

    Returns:
        float32 array (size, size), clipped to [0, 1].

    Raises:
        ValueError: ``size`` not a positive int or ``image`` not a non-empty 2-D array.
    """
    from PIL import Image

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}.")
    size = int(size)
    arr = _check_image(image).astype(np.float32, copy=False)
    h, w = arr.shape
    scale = size / max(h, w)
    new_h, new_w = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    if (new_h, new_w) != (h, w):
        resized = Image.fromarray(np.ascontiguousarray(arr), mode="F").resize(
            (new_w, new_h), resample=Image.Resampling.BILINEAR
        )
        arr = np.asarray(resized, dtype=np.float32)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = arr
    return np.clip(out, 0.0, 1.0, out=out)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float image -> uint8 (values clipped, then rounded: ``round(x * 255)``).

    Args:
        image: Array of any shape with values in [0, 1] (out-of-range values are clipped).

    Returns:
        uint8 array of the same shape.

    Raises:
        ValueError: ``image`` contains NaN.
    """
    arr = np.asarray(image, dtype=np.float32)
    if np.isnan(arr).any():
        raise ValueError("to_uint8() got an image with NaN values.")
    return np.rint(np.clip(arr, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
