"""Writers of small DICOM series and NIfTI volumes for the volume tests (real headers, real HU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data._volume_io import display_to_nifti


def head_volume(n_slices: int = 6, size: int = 24, *, seed: int = 0, lesion: bool = False) -> np.ndarray:
    """float32 (K, H, W) HU: air, a skull ring, brain at ~35 HU, a bright blob when ``lesion``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5) / (size / 2)
    base = np.where(r < 0.8, 35.0, np.where(r < 0.95, 1000.0, -1000.0)).astype(np.float32)
    vol = np.stack([base + rng.normal(0, 3, base.shape).astype(np.float32) for _ in range(n_slices)])
    if lesion:
        vol[:, size // 3: size // 2, size // 3: size // 2] = 75.0
    return vol.astype(np.float32)


def write_series(folder: Path, hu: np.ndarray, *, patient: str, uid: str, spacing: float = 5.0,
                 positions: list[float] | None = None, orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
                 shuffle_names: bool = True, start: int = 1) -> list[Path]:
    """One DICOM file per slice of ``hu`` (slice 0 inferior); file names in reverse order when ``shuffle_names``."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    positions = positions if positions is not None else [k * spacing for k in range(len(hu))]
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    paths = []
    for k, (hu_k, z) in enumerate(zip(hu, positions)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{uid}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"{uid}.{k + 1}"
        ds.PatientID, ds.Modality = patient, "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{uid}.0", uid
        ds.Rows, ds.Columns = hu_k.shape
        ds.PixelSpacing = [0.5, 0.5]
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = [float(v) for v in (normal * z)]
        ds.InstanceNumber = k + start
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.rint(hu_k).astype(np.int16).tobytes()
        name = f"{(len(hu) - k) if shuffle_names else k + 1:03d}.dcm"
        path = folder / name
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti(path: Path, hu: np.ndarray, *, spacing: tuple[float, float, float] = (0.5, 0.5, 5.0),
                affine: np.ndarray | None = None, data: np.ndarray | None = None) -> Path:
    """``hu`` (K, H, W, display orientation) as an int16 RAS+ NIfTI; ``data`` overrides the stored array."""
    import nibabel as nib

    arr = data if data is not None else np.stack([display_to_nifti(s) for s in hu], axis=-1)
    aff = affine if affine is not None else np.diag([*spacing, 1.0])
    img = nib.Nifti1Image(np.asarray(np.rint(arr) if data is None else arr).astype(np.int16 if data is None else arr.dtype), aff)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path
