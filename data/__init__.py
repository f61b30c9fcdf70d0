"""Data layer: read CT folders (raster, DICOM, DICOM series, NIfTI), window, cache, audit quality, make a phantom.

Public names are imported lazily so that ``import data`` stays cheap (no torch, no pandas until used).
See ``docs/ARCHITECTURE.md`` for the contract.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WINDOWS": "data._io",
    "BadImageError": "data._io",
    "load_image": "data._io",
    "load_channels": "data._io",
    "parse_windows": "data._io",
    "windows_key": "data._io",
    "WINDOW_SETS": "data._io",
    "dicom_to_hu": "data._io",
    "apply_window": "data._io",
    "resize_pad": "data._io",
    "to_uint8": "data._io",
    "cache_dir": "data._io",
    "Manifest": "data._scan",
    "scan_folder": "data._scan",
    "load_arrays": "data._cache",
    "Volume": "data._volumes",
    "read_volume": "data._volumes",
    "read_nifti": "data._volume_io",
    "brain_fraction": "data._io",
    "QualityReport": "data.quality",
    "quality_report": "data.quality",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
