"""Conventions shared by every reader and writer of CT volumes (DICOM series, NIfTI files), and the NIfTI reader.

* **Slice references.** A manifest row of a NIfTI volume names its slice as ``"<file>#<k>"``
  (e.g. ``"Stroke/P0007.nii.gz#12"``), ``k`` the 0-based index of the axial slice counted from
  the feet (inferior) to the head (superior). A slice of a DICOM series is its own file, so its
  row keeps the plain file path; the series order (same direction) is kept in ``slice_index``.
* **Display orientation.** Every slice is handed on in radiological display orientation, as a
  DICOM axial image with ImageOrientationPatient ``[1,0,0, 0,1,0]`` is stored: row 0 anterior,
  column 0 the patient's right. A NIfTI volume is first brought to the closest canonical (RAS+)
  orientation with nibabel (``nibabel.as_closest_canonical``), then each axial slice
  ``data[:, :, k]`` is flipped by :func:`nifti_to_display`.
* **Per-slice labels** of volumes come from a CSV named :data:`SLICE_LABELS_FILE` at the dataset
  root (or a path given to the scan) with columns ``volume,slice,label``: ``volume`` the NIfTI
  file or DICOM series folder relative to the root, ``slice`` the 0-based index above.
"""
from __future__ import annotations

import math
import os
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from data._errors import BadImageError

__all__ = [
    "MAX_TILT_DEG",
    "MAX_VOLUME_SLICES",
    "MAX_VOLUME_VOXELS",
    "NIFTI_SUFFIXES",
    "NiftiVolume",
    "read_nifti",
    "SLICE_LABELS_FILE",
    "display_to_nifti",
    "is_nifti_name",
    "nifti_to_display",
    "slice_ref",
    "split_slice_ref",
]

#: File-name endings read as NIfTI volumes (compared lower-case).
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Default name of the per-slice label CSV of a volume dataset (``volume,slice,label``).
SLICE_LABELS_FILE = "_slice_labels.csv"

_REF = re.compile(r"^(?P<file>.+)#(?P<k>\d+)$")


def is_nifti_name(name: str) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz`` (any letter case)."""
    return name.lower().endswith(NIFTI_SUFFIXES)


def slice_ref(volume: str, index: int) -> str:
    """``"<volume>#<index>"``: the manifest path of slice ``index`` (0-based) of a NIfTI file."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"slice index must be an int >= 0, got {index!r}.")
    return f"{volume}#{int(index)}"


def split_slice_ref(path: str) -> tuple[str, int | None]:
    """``"a/b.nii.gz#3"`` -> ``("a/b.nii.gz", 3)``; any other path -> ``(path, None)``."""
    match = _REF.match(str(path))
    if match is None or not is_nifti_name(match["file"]):
        return str(path), None
    return match["file"], int(match["k"])


def nifti_to_display(axial: np.ndarray) -> np.ndarray:
    """One axial slice ``data[:, :, k]`` of a canonical (RAS+) array -> display orientation.

    In RAS+ the index ``i`` grows toward the patient's right (``i = 0`` is the far left) and ``j``
    toward the anterior. Radiological display puts the patient's right at column 0 and the anterior
    at row 0, so the display is ``a.T`` with rows (``j``) and columns (``i``) reversed.
    """
    a = np.asarray(axial)
    if a.ndim != 2:
        raise ValueError(f"an axial slice is 2-D, got shape {a.shape}.")
    return np.ascontiguousarray(a.T[::-1, ::-1])


def display_to_nifti(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`nifti_to_display`: a display-oriented slice -> ``data[:, :, k]`` (RAS+)."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"a display slice is 2-D, got shape {a.shape}.")
    return np.ascontiguousarray(a[::-1, ::-1].T)


# ------------------------------------------------------------------------------------- NIfTI
#: Largest tilt (degrees between the slice normal and the head-foot axis) of a volume that is read;
#: gantry tilt of head CT is usually below 25 degrees.
MAX_TILT_DEG = 30.0
#: Beyond this tilt a volume is not axial at all (sagittal or coronal).
_NON_AXIAL_DEG = 45.0
#: Most slices one volume may have.
MAX_VOLUME_SLICES = 2000
#: Most voxels one volume may have (512 x 512 x 610): larger ones are refused before decoding.
MAX_VOLUME_VOXELS = 160_000_000
#: Relative deviation of a slice step from the median step tolerated as the same spacing.
SPACING_TOLERANCE = 0.1
#: A step longer than this many median steps means missing slices.
GAP_FACTOR = 1.5


@dataclass(frozen=True)
class NiftiVolume:
    """Axial slices of one NIfTI file in display orientation.

    Attributes:
        hu: float32 ``(K, H, W)``, slice 0 the most inferior.
        spacing: ``(row, column, slice)`` spacing in mm.
        positions: ``(K,)`` superior coordinate of each slice (mm, scanner space).
        tilt_deg: Angle between the acquisition's slice normal and the head-foot axis.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    positions: np.ndarray
    tilt_deg: float


def _gunzip_capped(data: bytes, limit: int, name: str | None) -> bytes:
    """Decompress gzip bytes, refusing more than ``limit`` bytes of output (a zip bomb)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BadImageError(f"corrupt gzip data ({exc})", name) from None
    if len(out) > limit:
        raise BadImageError(f"decompresses to more than {limit / 1e6:.0f} MB (the volume size limit)", name)
    return out


def _load_nifti_image(source: str | os.PathLike[str] | bytes, name: str | None) -> Any:
    """A nibabel image from a path or the file's bytes (header only; data stays lazy for paths)."""
    import nibabel as nib

    try:
        if isinstance(source, (bytes, bytearray)):
            raw = bytes(source)
            if raw[:2] == b"\x1f\x8b":
                raw = _gunzip_capped(raw, MAX_VOLUME_VOXELS * 4 + 1_000_000, name)
            for klass in (nib.Nifti1Image, nib.Nifti2Image):
                try:
                    return klass.from_bytes(raw)
                except Exception:  # noqa: BLE001 - try the other NIfTI version
                    continue
            raise BadImageError("not a NIfTI-1 or NIfTI-2 file", name)
        return nib.load(os.fspath(source))
    except BadImageError:
        raise
    except Exception as exc:  # nibabel raises many types for bad files
        raise BadImageError(f"not a readable NIfTI file ({type(exc).__name__}: {exc})", name) from None


def _check_nifti_shape(shape: tuple[int, ...], name: str | None) -> None:
    if len(shape) == 4 and shape[3] > 1:
        raise BadImageError(f"4-D NIfTI ({shape[3]} volumes of {shape[:3]}): a time series, not one CT volume", name)
    if len(shape) > 4 or len(shape) < 2 or any(s < 1 for s in shape):
        raise BadImageError(f"unsupported NIfTI shape {shape}", name)
    n_slices = shape[2] if len(shape) >= 3 else 1
    voxels = int(np.prod(shape[:3], dtype=np.int64))
    if n_slices > MAX_VOLUME_SLICES or voxels > MAX_VOLUME_VOXELS:
        raise BadImageError(
            f"volume over the size limit: {shape[:3]} = {voxels:,} voxels "
            f"(limit {MAX_VOLUME_SLICES} slices, {MAX_VOLUME_VOXELS:,} voxels)", name)


def _acquisition_tilt(affine: np.ndarray, name: str | None) -> float:
    """Angle (degrees) of the third data axis from the head-foot axis; raises for non-axial/oblique volumes."""
    axis = np.asarray(affine, dtype=np.float64)[:3, 2]
    norm = float(np.linalg.norm(axis))
    if not math.isfinite(norm) or norm == 0:
        raise BadImageError("NIfTI affine without a slice axis (zero or non-finite third column)", name)
    tilt = math.degrees(math.acos(min(1.0, abs(axis[2]) / norm)))
    if tilt > _NON_AXIAL_DEG:
        raise BadImageError(f"not an axial volume: the slice axis is {tilt:.0f} degrees from head-foot "
                            "(a sagittal or coronal acquisition)", name)
    if tilt > MAX_TILT_DEG:
        raise BadImageError(f"oblique volume: slices tilted {tilt:.0f} degrees (limit {MAX_TILT_DEG:.0f})", name)
    return tilt


def read_nifti(source: str | os.PathLike[str] | bytes, *, name: str | None = None) -> NiftiVolume:
    """Read a NIfTI CT volume into axial HU slices in display orientation.

    Args:
        source: Path of a ``.nii``/``.nii.gz`` file, or its bytes (gzip or not).
        name: Name used in error messages (default: the path).

    Returns:
        The :class:`NiftiVolume`.

    Raises:
        BadImageError: Unreadable file, 4-D or higher, non-axial or oblique, over the size limits
            (checked from the header before the voxels are read).
    """
    import nibabel as nib

    name = name if name is not None else (None if isinstance(source, (bytes, bytearray)) else os.fspath(source))
    img = _load_nifti_image(source, name)
    shape = tuple(int(s) for s in img.shape)
    _check_nifti_shape(shape, name)
    if len(shape) == 4:
        img = img.slicer[..., 0]
    elif len(shape) == 2:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, None], img.affine, img.header)
    tilt = _acquisition_tilt(img.affine, name)
    try:
        canon = nib.as_closest_canonical(img)
        data = np.asarray(canon.get_fdata(dtype=np.float32))
    except Exception as exc:  # truncated data, bad scaling ...
        raise BadImageError(f"unreadable NIfTI voxels ({type(exc).__name__}: {exc})", name) from None
    if not np.isfinite(data).all():
        raise BadImageError("NIfTI voxels with NaN or infinite values", name)
    hu = np.stack([nifti_to_display(data[:, :, k]) for k in range(data.shape[2])]).astype(np.float32)
    zooms = tuple(float(z) for z in canon.header.get_zooms()[:3])
    positions = (canon.affine @ np.stack([np.zeros(data.shape[2]), np.zeros(data.shape[2]),
                                          np.arange(data.shape[2]), np.ones(data.shape[2])]))[2]
    return NiftiVolume(hu=hu, spacing=(zooms[1], zooms[0], zooms[2]), positions=positions.astype(np.float64),
                       tilt_deg=float(tilt))


