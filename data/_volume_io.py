"""Conventions shared by every reader and writer of CT volumes (DICOM series, NIfTI files).

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

import re

import numpy as np

__all__ = [
    "NIFTI_SUFFIXES",
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
