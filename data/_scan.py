"""Scan a dataset folder into a :class:`Manifest`: one row per readable image, bad files apart.

Layout: ``root/<class>/**/<image>``. Every subfolder of ``root`` not starting with ``.`` or ``_``
is a class; files are collected recursively inside it (hidden and ``_`` entries skipped). Images
are ``.png .jpg .jpeg .bmp .tif .tiff`` in any letter case, ``.dcm``/``.dicom``, and extensionless
files carrying the DICOM marker. Each file is read and decoded exactly once here, to record its
SHA-1, a 64-bit perceptual hash and QC statistics; a file that cannot be decoded goes to
``Manifest.bad_files`` with the reason and never stops the scan.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import math
import multiprocessing
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from data._groups import GROUP_SOURCES, _check_threshold, assign_subjects
from data._volume_io import SLICE_LABELS_FILE, is_nifti_name, slice_ref, split_slice_ref
from data._volumes import volume_pass
from data._io import (
    DICOM_EXTENSIONS,
    RASTER_EXTENSIONS,
    BadImageError,
    _decode_bytes,
    _read_file,
    _resolve_window,
    apply_window,
    brain_fraction,
    window_key,
)

__all__ = [
    "HIST_BINS", "MANIFEST_COLUMNS", "Manifest", "class_order", "intensity_histogram", "parallel_map",
    "perceptual_hash", "scan_folder", "sharpness",
]

logger = logging.getLogger(__name__)

#: Columns of ``Manifest.table``, in order.
MANIFEST_COLUMNS = [
    "path", "label", "y", "subject", "format", "sha1", "phash", "height", "width", "mean", "std", "sharpness",
    "volume", "slice_index", "slice_position", "brain_fraction",
]
#: Columns of ``Manifest.volumes``.
VOLUME_COLUMNS = [
    "volume", "label", "format", "subject", "slices_total", "slices_kept", "slice_spacing_mm", "pixel_spacing_mm",
    "tilt_deg",
]
#: Number of bins of the per-image intensity histograms on [0, 1] kept for the quality report.
HIST_BINS = 32
#: Scans and cache fills of at least this many files use a process pool.
POOL_MIN_FILES = 200

_NEGATIVE_CLASS = re.compile(r"^(normal|healthy|negative|controls?|no|no[-_ ].+)$", re.IGNORECASE)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class Manifest:
    """The readable images of a dataset folder, their labels, subjects and QC statistics.

    Attributes:
        root: Dataset folder.
        classes: Class names (folder names), sorted, a conventional negative class first.
        table: One row per readable image, columns :data:`MANIFEST_COLUMNS`: ``path`` (posix,
            relative to ``root``), ``label``, ``y`` (index into ``classes``), ``subject``,
            ``format``, ``sha1`` (of the file bytes), ``phash`` (16 hex digits), ``height``,
            ``width``, ``mean``, ``std`` (of the [0, 1] image), ``sharpness`` (variance of its
            Laplacian), ``volume`` (the NIfTI file or DICOM series a slice belongs to, ``""`` for
            single images), ``slice_index`` (0-based from the feet, -1 for single images),
            ``slice_position`` (mm along the slice normal, NaN when unknown) and
            ``brain_fraction`` (share of pixels at brain density, :func:`data.brain_fraction`;
            NaN for raster images, which carry no HU). A NIfTI slice's ``path`` is
            ``"<file>#<k>"`` and its ``sha1`` hashes the slice's HU values.
        bad_files: Files that could not be read, columns ``path`` and ``reason``.
        subject_source: ``"groups.csv"``, ``"dicom"``, ``"filename"``, ``"phash"`` or ``"none"``.
        window: CT window used for DICOM (preset name or ``"level,width"``).
        hash: Content hash of the ``(path, label, sha1)`` rows and the window (16 hex digits).
        histograms: int64 (N, 32) pixel histograms on [0, 1] per row (for the quality report),
            ``None`` when the manifest was built elsewhere.
        phash_threshold: Hamming threshold the scan used for near-duplicates.
        volumes: One row per volume (NIfTI file or DICOM series): ``volume, label, format,
            subject, slices_total, slices_kept, slice_spacing_mm, pixel_spacing_mm, tilt_deg``
            (empty without volumes).
        notes: Findings about the volumes that skipped nothing (mixed series in a folder, tilt).
    """

    root: Path
    classes: list[str]
    table: pd.DataFrame
    bad_files: pd.DataFrame
    subject_source: str
    window: str
    hash: str
    histograms: np.ndarray | None = field(default=None, repr=False)
    phash_threshold: int = 6
    volumes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=VOLUME_COLUMNS), repr=False)
    notes: list[str] = field(default_factory=list)

    def paths(self) -> list[Path]:
        """Absolute paths of the images, in table order."""
        root = Path(self.root).resolve()
        return [root / split_slice_ref(p)[0] for p in self.table["path"]]

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        counts = ", ".join(f"{c}={int((self.table['label'] == c).sum())}" for c in self.classes)
        return (
            f"Manifest(root={str(self.root)!r}, images={len(self.table)} [{counts}], bad_files={len(self.bad_files)}, "
            f"subjects={self.table['subject'].nunique()} ({self.subject_source}), window={self.window!r}, "
            f"hash={self.hash!r})"
        )


# ------------------------------------------------------------------------------ QC statistics
def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of a [0, 1] image (higher = sharper; blur lowers it).

    The 4-neighbour Laplacian with symmetric edges, identical to ``scipy.ndimage.laplace(image,
    mode="reflect")``, in plain numpy.
    """
    arr = np.asarray(image)
    # a one-pixel symmetric pad repeats the edge: pad in the input's (narrower) dtype, then widen once
    p = np.pad(arr, 1, mode="edge").astype(np.float64, copy=False)
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * p[1:-1, 1:-1]
    return float(lap.var())


def intensity_histogram(image: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Pixel counts of a [0, 1] image in ``bins`` equal bins (1.0 in the last), like ``np.histogram``."""
    scaled = np.asarray(image, dtype=np.float32) * np.float32(bins)
    # clipping to [0, bins - 1] before truncation is the same as truncating, then clipping
    idx = np.clip(scaled, 0, bins - 1, out=scaled).astype(np.uint8 if bins <= 256 else np.int64)
    return np.bincount(idx.ravel(), minlength=bins).astype(np.int64)


#: The float32 value of each 8-bit grey level (``level / 255``), as the decoder produces it.
_LEVELS = np.divide(np.arange(256, dtype=np.uint8), np.float32(255.0), dtype=np.float32)


def _gray8_stats(gray8: np.ndarray) -> dict[str, Any]:
    """``mean``, ``std``, ``sharpness`` and ``hist`` of ``gray8 / 255`` from the 8-bit pixels.

    The same figures as :func:`intensity_histogram` (identical), ``mean``/``std`` of the float image
    (summed per grey level instead of per pixel: equal up to float64 rounding) and :func:`sharpness`
    (the Laplacian in exact integers, divided by 255^2 at the end: within ~1e-7 relative of the float
    computation, which rounds every pixel to float32 first), in a few passes over uint8 data.
    """
    from PIL import Image

    levels = np.asarray(Image.fromarray(gray8).histogram(), dtype=np.int64)  # 2-3x np.bincount's speed
    n = int(gray8.size)
    values = _LEVELS.astype(np.float64)
    mean = float(levels @ values) / n
    std = math.sqrt(float(levels @ np.square(values - mean)) / n)
    bins = np.clip(_LEVELS * np.float32(HIST_BINS), 0, HIST_BINS - 1).astype(np.int64)
    hist = np.bincount(bins, weights=levels, minlength=HIST_BINS).astype(np.int64)
    p = np.pad(gray8, 1, mode="edge").astype(np.int16)  # the Laplacian of 8-bit values lies in [-1020, 1020]
    lap = p[:-2, 1:-1] + p[2:, 1:-1]
    lap += p[1:-1, :-2]
    lap += p[1:-1, 2:]
    lap -= 4 * p[1:-1, 1:-1]
    s1 = int(lap.sum(dtype=np.int64))
    s2 = int(np.einsum("ij,ij->", lap, lap, dtype=np.int64))
    sharp = (s2 - s1 * s1 / n) / n / (255.0 * 255.0)
    return {"mean": mean, "std": std, "sharpness": float(sharp), "hist": hist}


def _dct_rows(n: int = 32, k: int = 8) -> np.ndarray:
    """First ``k`` rows of the unnormalised DCT-II matrix (``scipy.fft.dct(x, type=2)``)."""
    i = np.arange(n)
    return 2.0 * np.cos(np.pi * np.arange(k)[:, None] * (2 * i[None, :] + 1) / (2 * n))


_DCT8 = _dct_rows()


def perceptual_hash(image: np.ndarray) -> str:
    """64-bit DCT perceptual hash (pHash) of a 2-D image as 16 hex digits.

    The image is resized to 32x32 (antialiased bilinear), a 2-D DCT-II is taken, and its 8x8
    lowest frequencies are compared with their median: the construction of
    ``imagehash.phash``. Small noise, blur and intensity changes keep the hash within a few bits.
    """
    from PIL import Image

    arr = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"perceptual_hash() needs a non-empty 2-D image, got shape {arr.shape}.")
    small = np.asarray(Image.fromarray(arr, mode="F").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    coeffs = _DCT8 @ small @ _DCT8.T  # == scipy.fft.dct(scipy.fft.dct(small, axis=0), axis=1)[:8, :8]
    bits = (coeffs > np.median(coeffs)).reshape(-1)
    return np.packbits(bits).tobytes().hex()


def _image_row(image: np.ndarray, gray8: np.ndarray | None) -> dict[str, Any]:
    """Hash and QC statistics of one decoded [0, 1] image."""
    if gray8 is not None:
        stats = _gray8_stats(gray8)
    else:
        stats = {"mean": float(image.mean(dtype=np.float64)), "std": float(image.std(dtype=np.float64)),
                 "sharpness": sharpness(image), "hist": intensity_histogram(image)}
    return {
        "ok": True, "phash": perceptual_hash(image), "height": int(image.shape[0]), "width": int(image.shape[1]),
        "mean": stats["mean"], "std": stats["std"], "sharpness": stats["sharpness"],
        "hist": stats["hist"].astype(np.int64),
    }


def _inspect_nifti(abs_path: str, rel_path: str, window: str) -> list[dict[str, Any]]:
    """One row per axial slice of a NIfTI volume."""
    from data._volume_io import read_nifti

    volume = read_nifti(abs_path, name=rel_path)
    rows = []
    for k, hu in enumerate(volume.hu):
        image = apply_window(hu, window)
        row = _image_row(image, None)
        row.update(path=slice_ref(rel_path, k), format="nifti", sha1=hashlib.sha1(hu.tobytes()).hexdigest(),
                   patient_id=None, study_uid=None, volume=rel_path, slice_index=k,
                   slice_position=float(volume.positions[k]), brain_fraction=brain_fraction(hu),
                   spacing=volume.spacing, tilt_deg=volume.tilt_deg)
        rows.append(row)
    return rows


def _inspect_file(job: tuple[str, str, str]) -> list[dict[str, Any]]:
    """Read, hash and decode one file (runs in worker processes): result rows (several for a volume) or a reason."""
    abs_path, rel_path, window = job
    try:
        if is_nifti_name(rel_path):
            return _inspect_nifti(abs_path, rel_path, window)
        data = _read_file(abs_path)
        decoded = _decode_bytes(data, window=window, path=rel_path)
        row = _image_row(decoded.image, decoded.gray8)
        row.update(
            path=rel_path, format=decoded.format, sha1=hashlib.sha1(data).hexdigest(),
            patient_id=decoded.patient_id, study_uid=decoded.study_uid, series_uid=decoded.series_uid,
            position=decoded.position, orientation=decoded.orientation, pixel_spacing=decoded.pixel_spacing,
            instance=decoded.instance,
            brain_fraction=math.nan if decoded.brain_fraction is None else decoded.brain_fraction,
        )
        return [row]
    except BadImageError as exc:
        return [{"ok": False, "path": rel_path, "reason": exc.reason}]
    except Exception as exc:  # never let one file stop a scan
        logger.debug("Unexpected error reading %s", abs_path, exc_info=True)
        return [{"ok": False, "path": rel_path, "reason": f"unexpected error: {type(exc).__name__}: {exc}"}]


# ----------------------------------------------------------------------------------- helpers
def _executor(workers: int) -> cf.Executor:
    """Process pool when forking is safe (POSIX, no other Python thread), else a thread pool.

    ``fork`` starts workers in milliseconds and never re-imports ``__main__`` (``spawn`` and
    ``forkserver`` re-run a script that lacks an ``if __name__ == "__main__"`` guard). Forking a
    multi-threaded process (a Streamlit or Gradio server) can deadlock the child, so there the
    work goes to threads: PNG/JPEG decoding and most numpy work release the GIL.
    """
    if "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin" and threading.active_count() == 1:
        return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="strokect-decode")


def parallel_map(func: Callable[[T], R], items: Sequence[T], *, workers: int | None = None) -> list[R]:
    """``[func(x) for x in items]`` on ``workers`` parallel workers for large inputs.

    Args:
        func: Picklable top-level function.
        items: Picklable inputs.
        workers: ``None``: 2 workers (at most the CPU count) from :data:`POOL_MIN_FILES` items
            on, sequential below; ``0`` or ``1``: sequential; ``k``: ``k`` workers. Workers are
            processes where forking is safe, threads otherwise (see :func:`_executor`).

    Returns:
        Results in input order. Falls back to sequential work if the pool cannot start.
    """
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(items) >= POOL_MIN_FILES else 0
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be None or an int >= 0, got {workers!r}.")
    if workers <= 1 or len(items) < 2:
        return [func(x) for x in items]
    chunksize = max(1, len(items) // (workers * 8))
    try:
        with _executor(workers) as pool:
            return list(pool.map(func, items, chunksize=chunksize))
    except (OSError, cf.process.BrokenProcessPool, PermissionError) as exc:
        logger.warning("Worker pool unavailable (%s); continuing sequentially.", exc)
        return [func(x) for x in items]


def _natural_key(text: str) -> tuple[list[Any], str]:
    parts = re.split(r"(\d+)", text)
    return [int(p) if p.isdigit() else p.lower() for p in parts], text


def class_order(names: Iterable[str]) -> list[str]:
    """Sort class names; conventional negatives (normal, healthy, negative, control, no_*) first."""
    names = list(names)
    return sorted(names, key=lambda n: (_NEGATIVE_CLASS.match(n) is None, n.lower(), n))


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _is_candidate(path: Path) -> bool:
    if is_nifti_name(path.name):
        return True
    suffix = path.suffix.lower()
    if suffix in RASTER_EXTENSIONS or suffix in DICOM_EXTENSIONS:
        return True
    if suffix == "":
        try:
            with path.open("rb") as fh:
                head = fh.read(132)
        except OSError:
            return False
        return len(head) == 132 and head[128:132] == b"DICM"
    return False


def _class_files(folder: Path) -> tuple[list[Path], int]:
    """Image candidates under ``folder`` (recursive, hidden entries skipped) and the ignored count."""
    found: list[Path] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in filenames:
            if _is_hidden(name):
                continue
            path = Path(dirpath) / name
            if _is_candidate(path):
                found.append(path)
            else:
                ignored += 1
    return found, ignored


def _manifest_hash(table: pd.DataFrame, window: str) -> str:
    digest = hashlib.sha256()
    for path, label, sha1 in zip(table["path"], table["label"], table["sha1"]):
        digest.update(f"{path}\t{label}\t{sha1}\n".encode())
    digest.update(f"window={window}".encode())
    return digest.hexdigest()[:16]


def _check_scan_args(
    min_per_class: int, phash_threshold: int, group_by: str | os.PathLike[str], window: str | tuple[float, float]
) -> str:
    """Validate the scan options in the documented order; return the window key."""
    if isinstance(min_per_class, bool) or not isinstance(min_per_class, (int, np.integer)) or min_per_class < 1:
        raise ValueError(f"min_per_class must be an int >= 1, got {min_per_class!r}.")
    _check_threshold(phash_threshold)
    if not (isinstance(group_by, (str, os.PathLike)) and (group_by in GROUP_SOURCES or Path(group_by).is_file())):
        raise ValueError(
            f"group_by must be one of {list(GROUP_SOURCES)} or the path of a groups CSV file; got {group_by!r}."
        )
    _resolve_window(window)
    return window_key(window)


def _check_volume_args(
    root_path: Path, slice_labels: str | os.PathLike[str] | None, slice_step: int, min_brain_fraction: float
) -> Path | None:
    """Validate the volume options; return the slice-label CSV to use (``None``: none)."""
    if isinstance(slice_step, bool) or not isinstance(slice_step, (int, np.integer)) or slice_step < 1:
        raise ValueError(f"slice_step must be an int >= 1, got {slice_step!r}.")
    if isinstance(min_brain_fraction, bool) or not isinstance(min_brain_fraction, (int, float)) \
            or not 0.0 <= float(min_brain_fraction) < 1.0:
        raise ValueError(f"min_brain_fraction must be a number in [0, 1), got {min_brain_fraction!r}.")
    if slice_labels is not None:
        path = Path(slice_labels).expanduser()
        if not path.is_file():
            raise ValueError(f"slice_labels {str(slice_labels)!r} is not a file (a volume,slice,label CSV).")
        return path
    default = root_path / SLICE_LABELS_FILE
    return default if default.is_file() else None


def _dataset_root(root: str | os.PathLike[str]) -> Path:
    """Resolve ``root`` and check that it is an existing folder."""
    root_path = Path(root).expanduser().resolve()
    if not root_path.exists():
        raise ValueError(f"Dataset folder {str(root_path)!r} does not exist.")
    if not root_path.is_dir():
        raise ValueError(f"Dataset path {str(root_path)!r} is not a folder (expected one subfolder per class).")
    return root_path


def _scan_jobs(root_path: Path, window_name: str) -> tuple[list[str], list[tuple[str, str, str]], dict[str, str]]:
    """Classes, ``(abs path, rel path, window)`` decode jobs and the label of each rel path."""
    classes = class_order(p.name for p in root_path.iterdir() if p.is_dir() and not _is_hidden(p.name))
    if len(classes) < 2:
        raise ValueError(
            f"Dataset folder {str(root_path)!r} has {len(classes)} class subfolder(s) {classes}; "
            "at least 2 are needed (e.g. Normal/ and Stroke/)."
        )
    jobs: list[tuple[str, str, str]] = []
    labels: dict[str, str] = {}
    for cls in classes:
        files, ignored = _class_files(root_path / cls)
        if ignored:
            logger.info("Ignored %d non-image file(s) in %s.", ignored, root_path / cls)
        if not files:
            raise ValueError(
                f"Class folder {str(root_path / cls)!r} is empty: 0 image files "
                f"({', '.join(sorted(RASTER_EXTENSIONS | DICOM_EXTENSIONS))} or DICOM)."
            )
        for f in sorted(files, key=lambda p: _natural_key(p.relative_to(root_path).as_posix())):
            rel = f.relative_to(root_path).as_posix()
            labels[rel] = cls
            jobs.append((str(f), rel, window_name))
    return classes, jobs, labels


def _check_class_counts(
    root_path: Path,
    classes: list[str],
    good: list[dict[str, Any]],
    bad: list[dict[str, Any]],
    min_per_class: int,
) -> None:
    """Raise if a class has fewer than ``min_per_class`` readable images."""
    counts = {c: 0 for c in classes}
    for r in good:
        counts[r["label"]] += 1
    n_bad = {c: 0 for c in classes}
    for r in bad:
        n_bad[r["label"]] += 1
    short = [c for c in classes if counts[c] < min_per_class]
    if short:
        detail = "; ".join(f"{c!r}: {counts[c]} readable, {n_bad[c]} bad" for c in short)
        raise ValueError(
            f"Dataset folder {str(root_path)!r}: class folder(s) with fewer than min_per_class={min_per_class} "
            f"readable images: {detail}."
        )


def _results_table(good: list[dict[str, Any]], classes: list[str]) -> pd.DataFrame:
    """One row per readable image or slice, subjects still blank, plus the DICOM id columns for grouping."""
    y_of = {c: i for i, c in enumerate(classes)}
    table = pd.DataFrame(
        {
            "path": [r["path"] for r in good],
            "label": [r["label"] for r in good],
            "y": [y_of[r["label"]] for r in good],
            "subject": "",
            "format": [r["format"] for r in good],
            "sha1": [r["sha1"] for r in good],
            "phash": [r["phash"] for r in good],
            "height": [r["height"] for r in good],
            "width": [r["width"] for r in good],
            "mean": [r["mean"] for r in good],
            "std": [r["std"] for r in good],
            "sharpness": [r["sharpness"] for r in good],
            "patient_id": [r["patient_id"] for r in good],
            "study_uid": [r["study_uid"] for r in good],
            "volume": [r["volume"] for r in good],
            "slice_index": [r["slice_index"] for r in good],
            "slice_position": [r["slice_position"] for r in good],
            "brain_fraction": [r["brain_fraction"] for r in good],
        }
    )
    return table.astype({"y": "int64", "height": "int64", "width": "int64", "slice_index": "int64",
                         "slice_position": "float64", "brain_fraction": "float64", "volume": str})


def _volume_table(volumes: list[dict[str, Any]], table: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """``Manifest.volumes``: each volume's class folder (``"several"`` for a series split across them), subject
    and kept slices."""
    if not volumes:
        return pd.DataFrame(columns=VOLUME_COLUMNS)
    rows = table[table["volume"] != ""]
    kept = rows.groupby("volume").size()
    subject = rows.groupby("volume")["subject"].first()
    frame = pd.DataFrame(volumes)
    frame["label"] = [v.split("/", 1)[0] if v.split("/", 1)[0] in classes else "several" for v in frame["volume"]]
    frame["subject"] = [subject.get(v, "") for v in frame["volume"]]
    frame["slices_kept"] = [int(kept.get(v, 0)) for v in frame["volume"]]
    return frame[VOLUME_COLUMNS].reset_index(drop=True)


def _read_rows(jobs: list[tuple[str, str, str]], labels: dict[str, str], classes: list[str], workers: int | None,
               **volume_options: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Decode every file (in parallel), label its rows, then the volume pass (:func:`data._volumes.volume_pass`)."""
    results = [row for rows in parallel_map(_inspect_file, jobs, workers=workers) for row in rows]
    for r in results:
        r["label"] = labels[split_slice_ref(r["path"])[0]]
    good, bad, volumes, notes = volume_pass(
        [r for r in results if r["ok"]], [r for r in results if not r["ok"]], classes=classes, **volume_options)
    for r in bad:
        logger.warning("Skipping bad file %s: %s", r["path"], r["reason"])
    return good, bad, volumes, notes


# ------------------------------------------------------------------------------------- scan
def scan_folder(
    root: str | os.PathLike[str],
    *,
    group_by: str | os.PathLike[str] = "auto",
    filename_regex: str | None = None,
    phash_threshold: int = 6,
    window: str | tuple[float, float] = "brain",
    min_per_class: int = 2,
    workers: int | None = None,
    slice_labels: str | os.PathLike[str] | None = None,
    slice_step: int = 1,
    min_brain_fraction: float = 0.0,
) -> Manifest:
    """Scan a folder of class subfolders into a :class:`Manifest`.

    Args:
        root: Dataset folder; its subfolders (not starting with ``.``/``_``) are the classes.
        group_by: Subject source: ``"auto"``, ``"csv"``, ``"dicom"``, ``"filename"``, ``"phash"``,
            ``"none"`` or a path to a ``file,subject`` CSV (see :mod:`data._groups`).
        filename_regex: Regex for the subject id in file names (group ``subject``).
        phash_threshold: Largest perceptual-hash Hamming distance of near-duplicates (0..64).
        window: CT window for DICOM: preset name or ``(level, width)``.
        min_per_class: Fewest readable images a class may have (e.g. the number of CV folds).
        workers: Decoding processes; ``None`` picks 2 for large folders, sequential otherwise.
        slice_labels: ``volume,slice,label`` CSV of per-slice labels of volumes (see
            :mod:`data._volume_io`); ``None`` uses ``_slice_labels.csv`` in ``root`` when present.
            Volumes not listed keep their folder's label.
        slice_step: Keep every ``slice_step``-th slice of each volume (1: all), so a 300-slice
            scan does not flood the search. Single images are always kept.
        min_brain_fraction: Keep only volume slices with at least this share of pixels at brain
            density (:func:`data.brain_fraction`, HU in 15..60): 0 keeps all; 0.05 drops the
            slices below the skull base and above the vertex.

    Returns:
        The manifest; rows sorted by class order, then natural file order.

    Raises:
        ValueError: ``root`` is not a folder, has fewer than 2 classes, a class folder holds no
            image file, or a class has fewer than ``min_per_class`` readable images; also bad
            arguments. The message names the folder and the counts.
    """
    t0 = time.perf_counter()
    window_name = _check_scan_args(min_per_class, phash_threshold, group_by, window)
    root_path = _dataset_root(root)
    slice_labels = _check_volume_args(root_path, slice_labels, slice_step, min_brain_fraction)
    classes, jobs, labels = _scan_jobs(root_path, window_name)

    good, bad, volumes, notes = _read_rows(jobs, labels, classes, workers, slice_labels=slice_labels,
                                           slice_step=slice_step, min_brain_fraction=min_brain_fraction)
    _check_class_counts(root_path, classes, good, bad, min_per_class)

    table = _results_table(good, classes)
    subjects, source = assign_subjects(
        table, root_path, group_by=group_by, filename_regex=filename_regex, phash_threshold=phash_threshold
    )
    table["subject"] = [str(s) for s in subjects]
    table = table[MANIFEST_COLUMNS].reset_index(drop=True)
    bad_files = pd.DataFrame({"path": [r["path"] for r in bad], "reason": [r["reason"] for r in bad]},
                             columns=["path", "reason"])
    histograms = np.stack([r["hist"] for r in good]).astype(np.int64)
    manifest = Manifest(
        root=root_path,
        classes=classes,
        table=table,
        bad_files=bad_files,
        subject_source=source,
        window=window_name,
        hash=_manifest_hash(table, window_name),
        histograms=histograms,
        phash_threshold=int(phash_threshold),
        volumes=_volume_table(volumes, table, classes),
        notes=notes,
    )
    logger.info(
        "Scanned %s in %.1f s: %d images in %d classes, %d bad files, %d subjects (%s).",
        root_path, time.perf_counter() - t0, len(table), len(classes), len(bad_files),
        table["subject"].nunique(), source,
    )
    return manifest
