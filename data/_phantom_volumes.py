"""Volume writers of the synthetic phantom: one DICOM series or one NIfTI file per patient.

Used by :mod:`data.phantom` (``format="dicom"`` / ``"nifti"``); the conventions of
:mod:`data._volume_io` hold (slice ``k`` counted inferior -> superior, display orientation).

Geometry (shared by both formats, so a DICOM series and a NIfTI file of the same patient lie at
the same place in the scanner):

* Field of view :data:`FIELD_OF_VIEW_MM` across ``size`` pixels: pixel spacing
  ``ps = FIELD_OF_VIEW_MM / size`` (rounded to 1e-6 mm), the image centred on the scanner axis.
* The phantom's normalised level ``z`` (0 = skull base, 1 = vertex) maps to ``z * HEAD_HEIGHT_MM``
  millimetres; a patient's slice spacing is ``dz = z_step * HEAD_HEIGHT_MM`` (rounded to 1e-4 mm,
  so about 5.4 to 7.2 mm) and slice ``k`` lies at ``z0 + k * dz``.
* DICOM (patient coordinates LPS): ImageOrientationPatient ``[1,0,0, 0,1,0]``, so row 0 is
  anterior and column 0 the patient's right, as rendered; ImagePositionPatient
  ``[-(size-1)/2 * ps, -(size-1)/2 * ps, z_k]`` (z grows superiorly).
* NIfTI (RAS+): affine ``diag(ps, ps, dz, 1)`` with origin ``(-(size-1)/2 * ps, -(size-1)/2 * ps, z0)``,
  qform code 1 (scanner) and sform code 2 (aligned), units mm; slice ``k`` is stored as
  :func:`~data._volume_io.display_to_nifti` of the rendered slice.

Stored values: Hounsfield units rounded to integers and clipped to [-1024, 3071]. DICOM keeps them
as ``uint16 = HU + 1024`` (12 bits stored, RescaleSlope 1, RescaleIntercept -1024); NIfTI as
``int16`` HU (no scaling). Lesion masks: DICOM slices get 0/255 PNGs, NIfTI files a ``uint8`` 0/1
volume with the image's header. Every byte is a function of the generator's arguments: UIDs come
from :func:`pydicom.uid.generate_uid` with fixed entropy sources, no dates or times are written
and gzip headers carry ``mtime=0``.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from data._volume_io import display_to_nifti, nifti_to_display

__all__ = [
    "FIELD_OF_VIEW_MM",
    "HEAD_HEIGHT_MM",
    "HU_RANGE",
    "VolumeGeometry",
    "read_nifti_mask_slice",
    "volume_geometry",
    "write_dicom_series",
    "write_nifti_volume",
]

#: Head field of view across the image width (mm).
FIELD_OF_VIEW_MM = 220.0
#: Height from the skull base (``z = 0``) to the vertex (``z = 1``) (mm).
HEAD_HEIGHT_MM = 120.0
#: Range of the stored Hounsfield units (12-bit CT range).
HU_RANGE = (-1024, 3071)

_INTERCEPT = -1024
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_IMPLEMENTATION_VERSION = "STROKECT_PHANTOM"


@dataclasses.dataclass(frozen=True)
class VolumeGeometry:
    """Where one patient's slices lie (mm).

    Attributes:
        size: Rows = columns of each slice.
        pixel_spacing: In-plane spacing ``ps`` (mm).
        slice_spacing: Distance ``dz`` between neighbouring slices (mm).
        z0: Level of slice 0 (the most inferior) above the skull base (mm).
    """

    size: int
    pixel_spacing: float
    slice_spacing: float
    z0: float

    @property
    def corner(self) -> float:
        """Coordinate of the first pixel centre in both in-plane axes (mm, negative)."""
        return round(-(self.size - 1) / 2.0 * self.pixel_spacing, 6)

    def z(self, k: int) -> float:
        """Level of slice ``k`` (0-based, inferior -> superior) in mm."""
        return round(self.z0 + k * self.slice_spacing, 4)

    def affine(self) -> np.ndarray:
        """The RAS+ NIfTI affine ``diag(ps, ps, dz, 1)`` with the origin at slice 0's first voxel."""
        ps, dz = self.pixel_spacing, self.slice_spacing
        return np.array(
            [[ps, 0.0, 0.0, self.corner], [0.0, ps, 0.0, self.corner], [0.0, 0.0, dz, self.z0], [0.0, 0.0, 0.0, 1.0]]
        )


def volume_geometry(size: int, z_levels: Sequence[float], z_step: float) -> VolumeGeometry:
    """The geometry of a patient rendered at normalised levels ``z_levels`` spaced by ``z_step``."""
    return VolumeGeometry(
        size=int(size),
        pixel_spacing=round(FIELD_OF_VIEW_MM / size, 6),
        slice_spacing=round(float(z_step) * HEAD_HEIGHT_MM, 4),
        z0=round(float(z_levels[0]) * HEAD_HEIGHT_MM, 4),
    )


def _hu_integers(hu: np.ndarray) -> np.ndarray:
    """Rendered float HU -> rounded integer HU clipped to :data:`HU_RANGE` (int32)."""
    return np.clip(np.rint(hu), HU_RANGE[0], HU_RANGE[1]).astype(np.int32)


def _mask_png(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------
def write_dicom_series(
    folder: Path,
    mask_folder: Path,
    hu: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    geometry: VolumeGeometry,
    *,
    patient_id: str,
    patient_name: str,
    entropy: Sequence[str],
) -> list[str]:
    """Write one CT series: ``folder/<k:03d>.dcm`` (k = 1..n) and ``mask_folder/<k:03d>.png``.

    Args:
        folder: The series folder (created).
        mask_folder: Folder of the mask PNGs (created).
        hu: Display-oriented float HU slices, inferior -> superior.
        masks: bool lesion masks of the same slices.
        geometry: Where the slices lie.
        patient_id: PatientID.
        patient_name: PatientName (DICOM person name, ``Family^Given``).
        entropy: Strings that make the UIDs unique and deterministic (generator arguments, patient).

    Returns:
        The file names written, in slice order.
    """
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    mask_folder.mkdir(parents=True)
    uids = {part: generate_uid(entropy_srcs=[*entropy, part]) for part in ("study", "series", "frame")}
    names = []
    for k, (image, mask) in enumerate(zip(hu, masks)):
        name = f"{k + 1:03d}.dcm"
        sop = generate_uid(entropy_srcs=[*entropy, "instance", str(k)])
        ds = _ct_dataset(image, geometry, k, patient=(patient_id, patient_name), uids=uids, sop_uid=sop)
        ds.save_as(folder / name, enforce_file_format=True)
        _mask_png(mask, mask_folder / f"{k + 1:03d}.png")
        names.append(name)
    return names


def _ct_dataset(
    image: np.ndarray,
    geometry: VolumeGeometry,
    k: int,
    *,
    patient: tuple[str, str],
    uids: dict[str, str],
    sop_uid: str,
):  # noqa: ANN202 - pydicom.FileDataset, imported lazily
    """One CT Image Storage instance (slice ``k``) with its file meta (Explicit VR Little Endian)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
    ds = FileDataset(f"{k + 1:03d}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = _CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "PatientBirthDate"):
        setattr(ds, keyword, "")  # type 2: present, empty (no timestamps, so bytes stay reproducible)
    ds.Modality = "CT"
    ds.Manufacturer = "StrokeCT AutoML synthetic phantom"
    ds.StudyDescription = "Synthetic head CT"
    ds.SeriesDescription = "Axial brain, synthetic phantom"
    ds.PatientID, ds.PatientName = patient
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = geometry.slice_spacing
    ds.KVP = 120
    ds.SpacingBetweenSlices = geometry.slice_spacing
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [geometry.corner, geometry.corner, geometry.z(k)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = geometry.z(k)
    _set_pixels(ds, image, geometry)
    return ds


def _set_pixels(ds, image: np.ndarray, geometry: VolumeGeometry) -> None:  # noqa: ANN001 - pydicom Dataset
    """Image pixel module: uint16 ``HU + 1024`` with 12 bits stored, rescale to HU, brain window."""
    stored = (_hu_integers(image) - _INTERCEPT).astype("<u2")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [geometry.pixel_spacing, geometry.pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 40
    ds.WindowWidth = 80
    ds.RescaleIntercept = _INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------
def write_nifti_volume(
    path: Path, mask_path: Path, hu: Sequence[np.ndarray], masks: Sequence[np.ndarray], geometry: VolumeGeometry
) -> None:
    """Write ``path`` (int16 HU) and ``mask_path`` (uint8 0/1), both ``(size, size, n)`` and RAS+.

    Args:
        path: The image file (``.nii.gz``).
        mask_path: The mask file (``.nii.gz``); its folder is created.
        hu: Display-oriented float HU slices, inferior -> superior.
        masks: bool lesion masks of the same slices.
        geometry: Where the slices lie.
    """
    volume = np.stack([display_to_nifti(_hu_integers(s)) for s in hu], axis=-1).astype(np.int16)
    labels = np.stack([display_to_nifti(m) for m in masks], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_nifti_gz_bytes(volume, geometry, "StrokeCT phantom HU"))
    mask_path.write_bytes(_nifti_gz_bytes(labels, geometry, "StrokeCT phantom lesion mask"))


def _nifti_gz_bytes(data: np.ndarray, geometry: VolumeGeometry, description: str) -> bytes:
    """A gzipped NIfTI-1 file of ``data`` (no scaling), with a fixed gzip header (``mtime=0``)."""
    import nibabel as nib

    affine = geometry.affine()
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_data_dtype(data.dtype)
    header.set_xyzt_units(xyz="mm")
    header["descrip"] = description.encode("ascii")
    image.set_qform(affine, code=1)  # scanner
    image.set_sform(affine, code=2)  # aligned
    raw = image.to_bytes()
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as fh:
        fh.write(raw)
    return buffer.getvalue()


def read_nifti_mask_slice(path: str | os.PathLike[str], k: int) -> np.ndarray | None:
    """Slice ``k`` of a NIfTI mask volume in display orientation (bool), or ``None`` if out of range."""
    stat = os.stat(path)
    volume = _canonical_mask(str(path), stat.st_mtime_ns, stat.st_size)
    if volume.ndim < 3 or not 0 <= k < volume.shape[2]:
        return None
    return nifti_to_display(volume[:, :, k]) > 0


@functools.lru_cache(maxsize=4)
def _canonical_mask(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """The mask volume brought to RAS+ (cached per file version: masks are read slice by slice)."""
    import nibabel as nib

    del mtime_ns, size  # cache key only
    image = nib.as_closest_canonical(nib.load(path))
    volume = np.asarray(image.dataobj)
    volume.setflags(write=False)
    return volume
