"""CT volumes: NIfTI files read into axial slices, DICOM slices grouped into series.

A dataset's class folder may hold, besides single images,

* **NIfTI** files (``.nii``, ``.nii.gz``; nibabel): brought to the closest canonical (RAS+)
  orientation, cut into axial slices in HU (the stored values with the header's scaling; CT
  NIfTI stores HU), each slice a manifest row ``"<file>#<k>"`` (:mod:`data._volume_io`).
* **DICOM series**: slices sharing a *SeriesInstanceUID* (a folder per series, or several series
  in one folder) are ordered along the slice normal by *ImagePositionPatient* (else by
  *InstanceNumber*, else by file name). Each slice stays its own row; the series order is kept in
  ``slice_index`` and the position (mm along the normal) in ``slice_position``.

Volumes that a 2-D classifier should not be fed are skipped with the reason, never fatal:
4-D NIfTI (a time series), non-axial volumes (slice normal more than 45 degrees from the
head-foot axis), oblique ones (tilt above :data:`MAX_TILT_DEG`; ordinary gantry tilt is below),
missing slices (a gap of more than 1.5 times the median spacing), inconsistent spacing (a step
more than 10 % off the median), slices at the same position, orientation or image size changing
within a series, and volumes over :data:`MAX_VOLUME_SLICES` slices or :data:`MAX_VOLUME_VOXELS`
voxels. A series whose slices lie in several class folders carries its labels per slice (the
folders), so the gap checks do not apply to it.
"""
from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from data._errors import BadImageError
from data._volume_io import (
    _NON_AXIAL_DEG,
    GAP_FACTOR,
    MAX_TILT_DEG,
    MAX_VOLUME_SLICES,
    MAX_VOLUME_VOXELS,
    SPACING_TOLERANCE,
    NiftiVolume,
    _gunzip_capped,
    read_nifti,
)

__all__ = [
    "MAX_TILT_DEG",
    "MAX_UPLOAD_BYTES",
    "MAX_VOLUME_SLICES",
    "MAX_VOLUME_VOXELS",
    "NiftiVolume",
    "SeriesPlan",
    "organise_series",
    "Volume",
    "read_dicom_zip",
    "read_nifti",
    "read_volume",
    "volume_pass",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------- DICOM series
@dataclass
class SeriesPlan:
    """What :func:`organise_series` decided for the DICOM rows of a scan.

    Attributes:
        volume: Volume id per row (``""`` for single images).
        slice_index: 0-based position in the series (``-1`` for single images).
        slice_position: mm along the slice normal (NaN when unknown).
        bad: ``path -> reason`` of rows of skipped series.
        volumes: One row per kept series: ``volume, format, slices_total, slice_spacing_mm,
            pixel_spacing_mm, tilt_deg, split_across_classes, order``.
        notes: Findings worth a warning that did not skip anything.
    """

    volume: list[str]
    slice_index: list[int]
    slice_position: list[float]
    bad: dict[str, str] = field(default_factory=dict)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:], dtype=np.float64)
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else n


def _series_geometry(rows: pd.DataFrame) -> tuple[str | None, np.ndarray, np.ndarray | None, float, str]:
    """(reason to skip or None, order of the rows, positions in that order, tilt, how ordered)."""
    orientations = [o for o in rows["orientation"] if o is not None]
    positions = [p for p in rows["position"] if p is not None]
    if len(set(zip(rows["height"], rows["width"]))) > 1:
        return "image size changes within the series", np.arange(len(rows)), None, 0.0, ""
    spacings = {tuple(round(v, 4) for v in s) for s in rows["pixel_spacing"] if s is not None}
    if len(spacings) > 1:
        return "pixel spacing changes within the series", np.arange(len(rows)), None, 0.0, ""
    if len(orientations) == len(rows) and len(positions) == len(rows):
        first = np.asarray(orientations[0])
        if any(np.abs(np.asarray(o) - first).max() > 1e-3 for o in orientations):
            return "orientation changes within the series", np.arange(len(rows)), None, 0.0, ""
        normal = _normal(orientations[0])
        tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
        if tilt > _NON_AXIAL_DEG:
            return (f"not an axial series: the slice normal is {tilt:.0f} degrees from head-foot "
                    "(a sagittal or coronal series)", np.arange(len(rows)), None, tilt, "")
        if tilt > MAX_TILT_DEG:
            return f"oblique series: slices tilted {tilt:.0f} degrees (limit {MAX_TILT_DEG:.0f})", np.arange(len(rows)), None, tilt, ""
        sign = 1.0 if normal[2] >= 0 else -1.0  # count from the feet up whatever the normal's sign
        d = sign * np.asarray(positions, dtype=np.float64) @ normal
        order = np.argsort(d, kind="stable")
        return None, order, d[order], tilt, "ImagePositionPatient"
    instances = list(rows["instance"])
    if all(i is not None for i in instances):
        return None, np.argsort(np.asarray(instances), kind="stable"), None, 0.0, "InstanceNumber"
    return None, np.argsort(np.asarray(rows["path"], dtype=object), kind="stable"), None, 0.0, "file name"


def _spacing_problem(steps: np.ndarray) -> str | None:
    """Why a series' slice steps (mm, sorted positions' differences) are not one regular grid."""
    if not len(steps):
        return None
    median = float(np.median(steps))
    if median <= 0 or float(steps.min()) <= 1e-3 * max(median, 1e-6):
        return "two slices at the same position (duplicates or two acquisitions in one series)"
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if len(gaps):
        k = int(gaps[0])
        return (f"missing slices: a gap of {steps[k]:.1f} mm after slice {k} "
                f"(spacing {median:.1f} mm, {len(gaps)} gap(s))")
    if float(np.abs(steps - median).max()) > SPACING_TOLERANCE * median:
        return f"inconsistent slice spacing ({steps.min():.2f}-{steps.max():.2f} mm)"
    return None


def _volume_id(rows: pd.DataFrame, uid: str, series_per_folder: dict[str, int]) -> str:
    parents = {str(PurePosixPath(p).parent) for p in rows["path"]}
    if len(parents) == 1:
        parent = parents.pop()
        return parent if series_per_folder.get(parent, 0) == 1 else f"{parent}/{uid}"
    return f"series-{uid}"


def organise_series(table: pd.DataFrame) -> SeriesPlan:
    """Group DICOM slices into series, order them and skip the series a 2-D model should not see.

    Args:
        table: Scan rows with ``path``, ``label``, ``format``, ``height``, ``width`` and the DICOM
            columns ``series_uid``, ``position``, ``orientation``, ``pixel_spacing``, ``instance``.

    Returns:
        The :class:`SeriesPlan`, aligned with ``table``'s rows.
    """
    n = len(table)
    plan = SeriesPlan(volume=[""] * n, slice_index=[-1] * n, slice_position=[math.nan] * n)
    if not n or "series_uid" not in table:
        return plan
    frame = table.reset_index(drop=True)
    dicom = frame[(frame["format"] == "dicom") & frame["series_uid"].notna()]
    counts = dicom.groupby("series_uid").size()
    series = dicom[dicom["series_uid"].isin(counts[counts >= 2].index)]
    folders = series.assign(folder=[str(PurePosixPath(p).parent) for p in series["path"]])
    series_per_folder = folders.groupby("folder")["series_uid"].nunique().to_dict()
    for folder, k in sorted(series_per_folder.items()):
        if k > 1:
            plan.notes.append(f"{folder} mixes {k} DICOM series; each series is read as its own volume.")
    for uid, rows in series.groupby("series_uid", sort=True):
        _plan_one_series(plan, str(uid), rows, series_per_folder)
    return plan


def _plan_one_series(plan: SeriesPlan, uid: str, rows: pd.DataFrame, series_per_folder: dict[str, int]) -> None:
    volume = _volume_id(rows, uid, series_per_folder)
    split = rows["label"].nunique() > 1
    reason, order, positions, tilt, how = _series_geometry(rows)
    if reason is None and len(rows) > MAX_VOLUME_SLICES:
        reason = f"series over the size limit ({len(rows)} slices, limit {MAX_VOLUME_SLICES})"
    if reason is None and positions is not None and not split:
        reason = _spacing_problem(np.diff(positions))
    if reason is not None:
        for path in rows["path"]:
            plan.bad[str(path)] = f"series {volume}: {reason}"
        return
    index = rows.index.to_numpy()[order]
    for rank, i in enumerate(index):
        plan.volume[i] = volume
        plan.slice_index[i] = rank
        if positions is not None:
            plan.slice_position[i] = float(positions[rank])
    steps = np.diff(positions) if positions is not None and len(positions) > 1 else np.array([])
    spacing = rows["pixel_spacing"].dropna()
    if tilt > 1.0:
        plan.notes.append(f"{volume}: gantry tilt {tilt:.0f} degrees (kept; slices are read as stored).")
    plan.volumes.append({
        "volume": volume, "format": "dicom", "slices_total": len(rows),
        "slice_spacing_mm": float(np.median(steps)) if len(steps) else math.nan,
        "pixel_spacing_mm": float(spacing.iloc[0][0]) if len(spacing) else math.nan,
        "tilt_deg": round(float(tilt), 2), "split_across_classes": bool(split), "order": how,
    })



# ------------------------------------------------------------------------------ the scan's pass
def read_slice_labels(csv_path: str | os.PathLike[str], classes: list[str]) -> dict[tuple[str, int], str]:
    """``(volume, slice) -> label`` from a ``volume,slice,label`` CSV.

    Raises:
        ValueError: Unreadable file, missing columns, a slice that is not an int >= 0, a label that
            is not one of ``classes`` or a slice given two labels; the message names the value.
    """
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ValueError(f"Cannot read the slice-label file {str(csv_path)!r}: {exc}") from None
    columns = {c.strip().lower(): c for c in frame.columns}
    volume_col = columns.get("volume") or columns.get("file") or columns.get("series")
    if volume_col is None or "slice" not in columns or "label" not in columns:
        raise ValueError(f"Slice-label file {str(csv_path)!r} needs the columns volume,slice,label; "
                         f"found {list(frame.columns)}.")
    out: dict[tuple[str, int], str] = {}
    for line, (volume, index, label) in enumerate(
            zip(frame[volume_col], frame[columns["slice"]], frame[columns["label"]]), start=2):
        volume = volume.strip().replace("\\", "/").removeprefix("./").rstrip("/")
        try:
            k = int(index)
        except ValueError:
            k = -1
        if k < 0:
            raise ValueError(f"Slice-label file {str(csv_path)!r} line {line}: slice {index!r} is not an int >= 0.")
        if label.strip() not in classes:
            raise ValueError(f"Slice-label file {str(csv_path)!r} line {line}: label {label!r} is not a class "
                             f"folder {classes}.")
        if out.get((volume, k), label.strip()) != label.strip():
            raise ValueError(f"Slice-label file {str(csv_path)!r} gives {volume} slice {k} two labels.")
        out[(volume, k)] = label.strip()
    return out


def _apply_series_plan(good: list[dict[str, Any]], bad: list[dict[str, Any]]) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], SeriesPlan]:
    """Give DICOM series rows their volume/slice columns; move the rows of skipped series to ``bad``."""
    columns = ("path", "label", "format", "height", "width", "series_uid", "position", "orientation",
               "pixel_spacing", "instance")
    frame = pd.DataFrame({c: [r.get(c) for r in good] for c in columns})
    plan = organise_series(frame)
    kept = []
    for i, row in enumerate(good):
        if row["path"] in plan.bad:
            bad.append({"ok": False, "path": row["path"], "label": row["label"], "reason": plan.bad[row["path"]]})
            continue
        if row.get("format") != "nifti":
            row.update(volume=plan.volume[i], slice_index=plan.slice_index[i], slice_position=plan.slice_position[i])
        kept.append(row)
    return kept, bad, plan


def _volume_rows(good: list[dict[str, Any]], plan: SeriesPlan) -> list[dict[str, Any]]:
    """One record per volume (NIfTI files from their slices, DICOM series from the plan)."""
    records = {v["volume"]: dict(v) for v in plan.volumes}
    for row in good:
        if row.get("format") == "nifti" and row["volume"] not in records:
            spacing = row.get("spacing") or (math.nan, math.nan, math.nan)
            records[row["volume"]] = {"volume": row["volume"], "format": "nifti", "slices_total": 0,
                                      "slice_spacing_mm": float(spacing[2]), "pixel_spacing_mm": float(spacing[0]),
                                      "tilt_deg": round(float(row.get("tilt_deg") or 0.0), 2)}
        if row.get("format") == "nifti":
            records[row["volume"]]["slices_total"] += 1
    return list(records.values())


def volume_pass(
    good: list[dict[str, Any]],
    bad: list[dict[str, Any]],
    *,
    classes: list[str],
    slice_labels: str | os.PathLike[str] | None,
    slice_step: int,
    min_brain_fraction: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """The scan's volume step: order series, skip bad ones, relabel slices, keep every k-th / brain slices.

    Returns:
        ``(good rows, bad rows, volume records, notes)``; good rows gain ``volume``,
        ``slice_index`` and ``slice_position``.
    """
    good, bad, plan = _apply_series_plan(good, bad)
    for row in good:
        row.setdefault("volume", "")
        row.setdefault("slice_index", -1)
        row.setdefault("slice_position", math.nan)
    volumes = _volume_rows(good, plan)
    notes = list(plan.notes)
    if slice_labels is not None:
        mapping = read_slice_labels(slice_labels, classes)
        names = {r["volume"] for r in good if r["volume"]}
        unknown = sorted({v for v, _ in mapping} - names)
        if unknown and len(unknown) == len({v for v, _ in mapping}):
            raise ValueError(f"Slice-label file {str(slice_labels)!r} names no volume of the folder "
                             f"(e.g. {unknown[:3]}; volumes are e.g. {sorted(names)[:3]}).")
        if unknown:
            notes.append(f"The slice-label file names {len(unknown)} volume(s) the scan did not keep: {unknown[:5]}.")
        for row in good:
            row["label"] = mapping.get((row["volume"], int(row["slice_index"])), row["label"])
    kept = [r for r in good if not r["volume"] or (
        r["slice_index"] % slice_step == 0
        and not (min_brain_fraction > 0 and math.isfinite(r["brain_fraction"]) and r["brain_fraction"] < min_brain_fraction))]
    if len(kept) < len(good):
        logger.info("Kept %d of %d volume slices (every %d-th slice, brain fraction >= %g).",
                    sum(1 for r in kept if r["volume"]), sum(1 for r in good if r["volume"]), slice_step,
                    min_brain_fraction)
    return kept, bad, volumes, notes


# ------------------------------------------------------------------------------- one uploaded scan
#: Largest upload :func:`read_volume` accepts (bytes of the file, and of a zip's members once unpacked).
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
#: Largest compression ratio of one zip member; more is a zip bomb.
MAX_ZIP_RATIO = 200


@dataclass(frozen=True)
class Volume:
    """One CT scan in HU, axial slices in display orientation, slice 0 the most inferior.

    Attributes:
        hu: float32 ``(K, H, W)``.
        positions: ``(K,)`` mm along the slice normal (NaN when unknown).
        format: ``"nifti"`` or ``"dicom"``.
        patient_id: DICOM PatientID, else ``None``.
        series: SeriesInstanceUID or the file name.
    """

    hu: np.ndarray
    positions: np.ndarray
    format: str
    patient_id: str | None
    series: str


def _zip_members(data: bytes, name: str | None, max_bytes: int) -> list[tuple[str, bytes]]:
    """The files of a zip (folders, ``__MACOSX`` and hidden files left out), every size checked before reading."""
    import zipfile

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BadImageError(f"not a readable zip file ({exc})", name) from None
    infos = [i for i in archive.infolist() if not i.is_dir() and "__MACOSX" not in i.filename
             and not PurePosixPath(i.filename).name.startswith(".") and PurePosixPath(i.filename).name != "DICOMDIR"]
    if not infos:
        raise BadImageError("the zip holds no file", name)
    if len(infos) > MAX_VOLUME_SLICES:
        raise BadImageError(f"the zip holds {len(infos)} files, over the limit of {MAX_VOLUME_SLICES} slices", name)
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise BadImageError(f"the zip unpacks to {total / 1e6:.0f} MB, over the limit of {max_bytes / 1e6:.0f} MB", name)
    members = []
    for info in infos:
        if info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1) and info.file_size > 1_000_000:
            raise BadImageError(f"zip member {info.filename} expands {info.file_size // max(info.compress_size, 1)}"
                                "-fold: a zip bomb", name)
        with archive.open(info) as fh:
            content = fh.read(info.file_size + 1)  # a lying header cannot make us read more
        if len(content) > info.file_size:
            raise BadImageError(f"zip member {info.filename} is larger than its header says", name)
        members.append((info.filename, content))
    return members


def _dicom_zip_slices(members: list[tuple[str, bytes]], name: str | None) -> pd.DataFrame:
    """Decode every member as a CT slice in HU; one non-DICOM member refuses the whole zip."""
    import pydicom

    from data._io import _dicom_geometry, dicom_to_hu, is_dicom_bytes

    rows = []
    for member, content in members:
        try:
            ds = pydicom.dcmread(io.BytesIO(content), force=True)
            if not is_dicom_bytes(content) and "PixelData" not in ds:
                raise BadImageError("no DICOM marker and no pixel data")
            hu = dicom_to_hu(ds)
        except Exception as exc:  # noqa: BLE001 - any member that is not a readable DICOM slice
            reason = exc.reason if isinstance(exc, BadImageError) else f"{type(exc).__name__}"
            raise BadImageError(f"the zip holds {member}, which is not a readable DICOM slice ({reason})", name) from None
        geometry = _dicom_geometry(ds)
        rows.append({"path": member, "label": "scan", "format": "dicom", "height": hu.shape[0], "width": hu.shape[1],
                     "hu": hu, "patient_id": str(ds.get("PatientID", "") or "") or None, **geometry})
    return pd.DataFrame(rows)


def read_dicom_zip(data: bytes, *, name: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES) -> Volume:
    """One DICOM series from a zip: every member a slice, one series, ordered and checked as a scan folder's.

    Raises:
        BadImageError: Not a zip, a non-DICOM member, more than one series, a zip bomb or a series over
            the size limits, or a series the scan would skip (missing slices, inconsistent spacing,
            non-axial, oblique ...); the message is one sentence naming the reason.
    """
    frame = _dicom_zip_slices(_zip_members(data, name, max_bytes), name)
    uids = frame["series_uid"].fillna("(none)").unique()
    if len(uids) > 1:
        raise BadImageError(f"the zip mixes {len(uids)} DICOM series; upload one series per zip", name)
    frame["series_uid"] = frame["series_uid"].fillna("upload")
    if len(frame) == 1:
        return Volume(frame["hu"].iloc[0][None].astype(np.float32), np.array([math.nan]), "dicom",
                      frame["patient_id"].iloc[0], str(uids[0]))
    plan = organise_series(frame)
    if plan.bad:
        raise BadImageError(next(iter(plan.bad.values())).split(": ", 1)[-1], name)
    order = np.argsort(np.asarray(plan.slice_index))
    hu = np.stack([frame["hu"].iloc[i] for i in order]).astype(np.float32)
    return Volume(hu, np.asarray(plan.slice_position, dtype=np.float64)[order], "dicom",
                  frame["patient_id"].iloc[0], str(uids[0]))


def read_volume(source: str | os.PathLike[str] | bytes, *, name: str | None = None,
                max_bytes: int = MAX_UPLOAD_BYTES) -> Volume:
    """One uploaded CT scan: a ``.zip`` of a DICOM series or a NIfTI file (``.nii``/``.nii.gz``).

    Args:
        source: Path or bytes of the upload.
        name: Name for messages (default: the path).
        max_bytes: Largest upload (the file, a zip's unpacked members, a gzip's unpacked bytes).

    Returns:
        The :class:`Volume`.

    Raises:
        BadImageError: Anything that is not one readable axial CT volume within the limits; the
            reason is one sentence.
    """
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}.")
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        name = name if name is not None else os.fspath(source)
        size = os.path.getsize(source)
        if size > max_bytes:
            raise BadImageError(f"the file is {size / 1e6:.0f} MB, over the limit of {max_bytes / 1e6:.0f} MB", name)
        with open(source, "rb") as fh:
            data = fh.read()
    if len(data) > max_bytes:
        raise BadImageError(f"the file is {len(data) / 1e6:.0f} MB, over the limit of {max_bytes / 1e6:.0f} MB", name)
    if data[:4] == b"PK\x03\x04":
        return read_dicom_zip(data, name=name, max_bytes=max_bytes)
    if data[:2] == b"\x1f\x8b":  # a .nii.gz unpacks within max_bytes too, as a zip's members do
        data = _gunzip_capped(data, max_bytes, name)
    nifti = read_nifti(data, name=name)
    return Volume(nifti.hu, nifti.positions, "nifti", None, PurePosixPath(name or "upload.nii").name)
