"""Image decoding, CT windowing and resizing: the one preprocessing path used by the cache,
the predictor and the live app."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

__all__ = ["WINDOWS", "apply_window", "cache_dir"]

logger = logging.getLogger(__name__)

#: CT window presets, name -> (level, width) in Hounsfield units.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "stroke": (40.0, 40.0),
    "subdural": (75.0, 215.0),
    "bone": (600.0, 2800.0),
}


def _resolve_window(window: str | tuple[float, float]) -> tuple[float, float]:
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"Unknown CT window {window!r}; choose one of {sorted(WINDOWS)} or pass (level, width).")
        return WINDOWS[window]
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"A CT window is a preset name or (level, width), got {window!r}.") from None
    if not width > 0:
        raise ValueError(f"CT window width must be > 0, got {width}.")
    return level, width


def apply_window(hu: np.ndarray, window: str | tuple[float, float] = "brain") -> np.ndarray:
    """Map Hounsfield units to [0, 1] through a CT window.

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


def cache_dir() -> Path:
    """Root of generated data (phantoms, array caches): ``$STROKECT_CACHE`` or ``<repo>/.cache``."""
    env = os.environ.get("STROKECT_CACHE")
    root = Path(env) if env else Path(__file__).resolve().parents[1] / ".cache"
    root.mkdir(parents=True, exist_ok=True)
    return root
