"""Disk cache of decoded, windowed, resized images: decode once, train many times.

``load_arrays(manifest, size=S)`` returns ``uint8 (N, S, S)`` in manifest row order, built with
:func:`data.load_image` -> :func:`data.resize_pad` -> :func:`data.to_uint8` and stored at
``cache_dir()/arrays/<manifest.hash>_<S>_<window>.npy``. The manifest hash covers every file's
path, label and SHA-1 plus the window, so a changed folder gives a new key and a stale cache is
never served; while filling, each file's SHA-1 is checked against the manifest.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from data._files import atomic_save_npy
from data._io import (
    _decode_bytes,
    _read_file,
    apply_window,
    cache_dir,
    resize_pad,
    parse_windows,
    to_uint8,
    window_key,
    windows_key,
)
from data._scan import Manifest, parallel_map
from data._volume_io import is_nifti_name, slice_ref, split_slice_ref
from data._volume_io import read_nifti

__all__ = ["array_cache_path", "load_arrays"]

logger = logging.getLogger(__name__)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}.")
    return int(size)


def array_cache_path(manifest: Manifest, *, size: int, window: str | tuple[float, float] | None = None) -> Path:
    """Where :func:`load_arrays` keeps the arrays of ``manifest`` at ``size`` and ``window``."""
    size = _check_size(size)
    key = window_key(manifest.window if window is None else window)
    safe = re.sub(r"[^A-Za-z0-9.+-]", "_", key)
    return cache_dir() / "arrays" / f"{manifest.hash}_{size}_{safe}.npy"


def _changed(rel_path: str, actual: str, expected: str) -> ValueError:
    return ValueError(f"{rel_path} changed since the folder was scanned (SHA-1 {actual[:12]} != {expected[:12]}); "
                      "scan the folder again.")


def _prepare(job: tuple[str, str, tuple[tuple[int, str], ...], tuple[str, ...], int]) -> list[np.ndarray]:
    """Read, check and resize one file, or the listed slices of one NIfTI volume, in every window (runs in
    worker processes): one read per file whatever the number of windows.

    ``job`` is ``(abs path, rel path, ((slice or -1, sha1), ...), window keys, size)``; each result is
    ``uint8 (len(windows), size, size)``.
    """
    abs_path, rel_path, items, windows, size = job
    if is_nifti_name(rel_path):
        volume = read_nifti(abs_path, name=rel_path)
        out = []
        for k, sha1 in items:
            if not 0 <= k < len(volume.hu):
                raise _changed(slice_ref(rel_path, k), "missing slice", sha1)
            hu = volume.hu[k]
            actual = hashlib.sha1(hu.tobytes()).hexdigest()
            if actual != sha1:
                raise _changed(slice_ref(rel_path, k), actual, sha1)
            out.append(np.stack([to_uint8(resize_pad(apply_window(hu, w), size)) for w in windows]))
        return out
    data = _read_file(abs_path)
    actual = hashlib.sha1(data).hexdigest()
    if actual != items[0][1]:
        raise _changed(rel_path, actual, items[0][1])
    first = _decode_bytes(data, window=windows[0], path=rel_path)
    images = [first.image] + [  # a raster image is already windowed: the same pixels in every window
        first.image if first.format != "dicom" else _decode_bytes(data, window=w, path=rel_path).image
        for w in windows[1:]]
    return [np.stack([to_uint8(resize_pad(image, size)) for image in images])]


def _cache_jobs(manifest: Manifest, windows: tuple[str, ...], size: int) -> tuple[list[tuple[Any, ...]], list[list[int]]]:
    """One decode job per file (a NIfTI volume once for all its slices) and the manifest rows each fills."""
    root = Path(manifest.root).resolve()
    items: dict[str, list[tuple[int, str]]] = {}
    rows: dict[str, list[int]] = {}
    for i, (path, sha1) in enumerate(zip(manifest.table["path"], manifest.table["sha1"])):
        file, k = split_slice_ref(path)
        key = file if k is not None else path  # a plain file is its own job, even if listed twice
        items.setdefault(key, []).append((-1 if k is None else k, sha1))
        rows.setdefault(key, []).append(i)
    jobs = [(str(root / split_slice_ref(key)[0]), split_slice_ref(key)[0], tuple(entries), windows, size)
            for key, entries in items.items()]
    return jobs, list(rows.values())


def _read_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array at ``path`` when it has ``shape`` (uint8), else ``None``."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode=None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring unreadable array cache %s (%s); rebuilding.", path, exc)
        return None
    if arr.dtype == np.uint8 and arr.shape == shape:
        logger.debug("Array cache hit: %s", path)
        return arr
    logger.warning("Ignoring array cache %s with shape %s %s; rebuilding.", path, arr.shape, arr.dtype)
    return None


def load_arrays(
    manifest: Manifest,
    *,
    size: int,
    window: str | tuple[float, float] | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Images of a manifest as ``uint8 (N, size, size)``, from the disk cache when possible.

    Args:
        manifest: From :func:`data.scan_folder`.
        size: Side length of the square images (aspect ratio kept, padded with 0).
        window: CT window for DICOM/NIfTI, or a window set (:func:`data.parse_windows`, e.g.
            ``"brain,subdural,bone"``): then the result is ``uint8 (N, 3, size, size)``, one channel
            per window. ``None`` uses ``manifest.window``.
        workers: Decoding processes when the cache is filled (``None``: 2 for large manifests).

    Returns:
        uint8 array (len(manifest), size, size) (``(N, 3, size, size)`` for a window set), rows in
        manifest order.

    Raises:
        ValueError: Bad ``size``/``window``, or a file changed since the scan.
        BadImageError: A file that was readable at scan time no longer is.
    """
    size = _check_size(size)
    window = manifest.window if window is None else window
    windows = tuple(window_key(w) for w in parse_windows(window))
    if len(windows) > 1 and not manifest.table["format"].isin(["dicom", "nifti"]).any():
        logger.warning("Window set %s on raster images: they carry no HU, so the %d channels are identical.",
                       windows_key(window), len(windows))
    n = len(manifest.table)
    arrays = {w: _read_cached(array_cache_path(manifest, size=size, window=w), (n, size, size)) for w in windows}
    missing = tuple(w for w in windows if arrays[w] is None)
    if missing:  # one pass over the files fills every missing window's cache
        t0 = time.perf_counter()
        jobs, rows_of = _cache_jobs(manifest, missing, size)
        filled = np.zeros((len(missing), n, size, size), dtype=np.uint8)
        for images, rows in zip(parallel_map(_prepare, jobs, workers=workers), rows_of):
            filled[:, rows] = np.stack(images, axis=1)
        for w, arr in zip(missing, filled):
            path = array_cache_path(manifest, size=size, window=w)
            atomic_save_npy(arr, path)
            arrays[w] = arr
        logger.info("Cached %d images at %dx%d (%s) in %.1f s -> %s", n, size, size, "+".join(missing),
                    time.perf_counter() - t0, array_cache_path(manifest, size=size, window=missing[0]).parent)
    if len(windows) == 1:
        return arrays[windows[0]]
    return np.stack([arrays[w] for w in windows], axis=1)  # a window set: one channel per window
