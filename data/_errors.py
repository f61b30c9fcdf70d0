"""The error every reader raises for a file or buffer that is not a usable image (one module below all readers)."""
from __future__ import annotations

import os
from typing import Any

__all__ = ["BadImageError"]


class BadImageError(ValueError):
    """A file or buffer that cannot be turned into an image.

    Attributes:
        path: The offending file (``None`` for in-memory sources).
        reason: Short human-readable cause, e.g. ``"empty file"``.
    """

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None) -> None:
        self.reason = str(reason)
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {self.reason}" if self.path else self.reason)

    def __reduce__(self) -> tuple[Any, ...]:  # keep .path/.reason across process pools
        return (type(self), (self.reason, self.path))
