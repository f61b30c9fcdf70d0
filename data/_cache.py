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

import numpy as np

from data._files import atomic_save_npy
from data._io import _decode_bytes, _read_file, _resolve_window, cache_dir, resize_pad, to_uint8, window_key
from data._scan import Manifest, parallel_map

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


def _prepare(job: tuple[str, str, str, str, int]) -> np.ndarray:
    """Decode, check and resize one file (runs in worker processes)."""
    abs_path, rel_path, sha1, window, size = job
    data = _read_file(abs_path)
    actual = hashlib.sha1(data).hexdigest()
    if actual != sha1:
        raise ValueError(
            f"{rel_path} changed since the folder was scanned (SHA-1 {actual[:12]} != {sha1[:12]}); "
            "scan the folder again."
        )
    image = _decode_bytes(data, window=window, path=rel_path).image
    return to_uint8(resize_pad(image, size))


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
        window: CT window for DICOM files; ``None`` uses ``manifest.window``.
        workers: Decoding processes when the cache is filled (``None``: 2 for large manifests).

    Returns:
        uint8 array (len(manifest), size, size), rows in manifest order.

    Raises:
        ValueError: Bad ``size``/``window``, or a file changed since the scan.
        BadImageError: A file that was readable at scan time no longer is.
    """
    size = _check_size(size)
    window = manifest.window if window is None else window
    _resolve_window(window)
    path = array_cache_path(manifest, size=size, window=window)
    n = len(manifest.table)
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode=None, allow_pickle=False)
            if arr.dtype == np.uint8 and arr.shape == (n, size, size):
                logger.debug("Array cache hit: %s", path)
                return arr
            logger.warning("Ignoring array cache %s with shape %s %s; rebuilding.", path, arr.shape, arr.dtype)
        except (OSError, ValueError) as exc:
            logger.warning("Ignoring unreadable array cache %s (%s); rebuilding.", path, exc)

    t0 = time.perf_counter()
    key = window_key(window)
    jobs = [
        (str(abs_path), rel, sha1, key, size)
        for abs_path, rel, sha1 in zip(manifest.paths(), manifest.table["path"], manifest.table["sha1"])
    ]
    images = parallel_map(_prepare, jobs, workers=workers)
    arr = np.stack(images).astype(np.uint8, copy=False) if images else np.zeros((0, size, size), dtype=np.uint8)
    atomic_save_npy(arr, path)
    logger.info("Cached %d images at %dx%d (%s) in %.1f s -> %s", n, size, size, key, time.perf_counter() - t0, path)
    return arr
