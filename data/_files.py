"""The project's one place for writing files safely and for JSON-ready values.

Every writer of the project (the study folder, the array cache, model checkpoints, benchmark
results) goes through these helpers, so a crash, a full disk or Ctrl-C never leaves a half-written
file behind: the bytes go to a temporary file in the same folder, are ``fsync``-ed and then
``os.replace``-d over the target (atomic on POSIX and Windows).

* :func:`atomic_writer` — context manager yielding an open handle; the target appears only on success.
* :func:`atomic_write_text`, :func:`atomic_write_json`, :func:`atomic_write_csv`, :func:`atomic_save_npy`.
* :func:`json_clean` — plain JSON values (numpy scalars and arrays, paths, sets; non-finite floats -> ``None``).
* :func:`library_versions` — versions recorded in ``config.json``, model cards and benchmark results.
* :func:`current_umask`, :func:`usual_permissions` — ``mkstemp``/``mkdtemp`` create 0600/0700 entries;
  files the dashboard of another user must read get what a plain ``open``/``mkdir`` would give.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

__all__ = [
    "atomic_writer",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "atomic_save_npy",
    "json_clean",
    "read_json_object",
    "library_versions",
    "current_umask",
    "usual_permissions",
]


def current_umask() -> int:
    """The process umask, read without changing it where ``/proc`` allows (else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_permissions(path: str | Path, *, folder: bool = False) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would give under the current umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit fsync it and rename it over ``path``.

    Args:
        path: The target file (its folder is created).
        mode: ``"w"`` (text, UTF-8, ``\\n`` line ends) or ``"wb"``.

    Raises:
        ValueError: ``mode`` is not ``"w"`` or ``"wb"``.
        OSError: The file cannot be written (disk full, read-only, permissions). The message names
            the file, ``cannot write <path>: <reason>``, ``errno`` is kept, the temporary file is
            removed and ``path`` is left as it was. Any other exception (Ctrl-C included) also
            removes the temporary file and propagates unchanged.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        usual_permissions(tmp)
        kwargs: dict[str, Any] = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and not str(exc).startswith("cannot write"):
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}", str(path)) from exc
        raise


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, "w") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(payload: Any, path: str | Path, *, indent: int = 2) -> Path:
    """Write :func:`json_clean` ``(payload)`` as JSON atomically (``NaN`` becomes ``null``: valid JSON)."""
    return atomic_write_text(json.dumps(json_clean(payload), indent=indent, allow_nan=False) + "\n", path)


def atomic_write_csv(frame: Any, path: str | Path) -> Path:
    """Write a pandas DataFrame as CSV (no index) atomically."""
    return atomic_write_text(frame.to_csv(index=False, lineterminator="\n"), path)


def atomic_save_npy(array: Any, path: str | Path) -> Path:
    """Save a numpy array (``allow_pickle=False``) atomically."""
    import numpy as np

    with atomic_writer(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    return Path(path)


def json_clean(value: Any, *, default: Callable[[Any], Any] | None = None) -> Any:
    """``value`` as plain JSON types: numpy scalars/arrays and tensors -> Python, non-finite floats ->
    ``None``, paths -> POSIX strings, sets -> sorted lists.

    Args:
        value: Anything built of dicts, lists, tuples and the types above.
        default: Called on any other object (e.g. ``str``); ``None`` raises :class:`TypeError`.

    Raises:
        TypeError: An object of another type and no ``default``; the message names the type.
    """
    if isinstance(value, dict):
        return {str(k): json_clean(v, default=default) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v, default=default) for v in value]
    if isinstance(value, (set, frozenset)):
        return [json_clean(v, default=default) for v in sorted(value, key=str)]
    if isinstance(value, os.PathLike):
        return Path(value).as_posix()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return json_clean(value.tolist(), default=default)
    if default is not None:
        return json_clean(default(value))
    raise TypeError(f"a value of type {type(value).__name__} is not JSON serialisable: {value!r}")


def read_json_object(path: str | Path, *, missing: str) -> dict[str, Any]:
    """Read a JSON file that must hold an object.

    Args:
        path: The file.
        missing: The whole error message when the file does not exist.

    Raises:
        ValueError: ``missing``; ``<path> is not valid JSON: <reason>``; or ``<path> should hold a
            JSON object, found <type>``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(missing)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} should hold a JSON object, found {type(value).__name__}")
    return value


_VERSION_MODULES = ("numpy", "pandas", "torch", "timm", "optuna", "sklearn", "safetensors", "pydicom", "PIL")


def library_versions(modules: Iterable[str] = _VERSION_MODULES) -> dict[str, str]:
    """Python and the installed versions of ``modules`` that import (missing ones are left out)."""
    import importlib

    out = {"python": platform.python_version()}
    for name in modules:
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except Exception:  # noqa: BLE001 - a broken optional install must not stop a write
            continue
    return out
