"""The logging set-up every command line of the project shares (``-v``/``-q`` mean the same everywhere).

In the bottom layer so that ``python -m data``, ``python -m data.phantom``, ``python -m models.export``,
the ``automl`` commands, the UI servers and the benchmarks all log alike: one handler on the root
logger, ``HH:MM:SS LEVEL logger: message``, written through ``tqdm.write`` while progress bars run.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["setup_logging", "add_logging_arguments", "start_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """``-v`` (repeatable: more log lines) and ``-q`` (warnings only)."""
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")


def start_logging(args: argparse.Namespace, *, default: int = 0) -> int:
    """Set up logging from ``-v``/``-q`` and return the verbosity (``-1`` warnings, ``0`` info, ``1+`` debug).

    Args:
        args: Parsed arguments of a parser given :func:`add_logging_arguments`.
        default: The verbosity without ``-v``/``-q`` (``-1`` for commands whose output is their stdout).
    """
    verbose = int(getattr(args, "verbose", 0) or 0)
    if getattr(args, "quiet", False):
        verbosity = -1
    elif verbose:
        verbosity = max(0, default + verbose) if default < 0 else default + verbose - 1
    else:
        verbosity = default
    setup_logging(verbosity)
    return verbosity


def setup_logging(verbosity: int = 0, *, stream: Any = None) -> None:
    """Configure the root logger once for a command-line entry point.

    Args:
        verbosity: ``-1`` warnings only, ``0`` info, ``1+`` debug.
        stream: Where to log (default ``sys.stderr``).
    """
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_strokect", False):
            root.removeHandler(handler)
    handler = _TqdmAwareHandler(stream or sys.stderr)
    handler._strokect = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    # Optuna logs every trial itself; our own lines say the same with more context.
    try:
        import optuna

        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
        optuna.logging.set_verbosity(logging.WARNING if verbosity <= 0 else logging.INFO)
    except ImportError:  # pragma: no cover
        pass
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "timm"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


class _TqdmAwareHandler(logging.StreamHandler):
    """A stream handler that writes through ``tqdm.write`` so log lines do not break the bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            if getattr(tqdm, "_instances", None):
                tqdm.write(self.format(record), file=self.stream)
                return
        except Exception:  # pragma: no cover - fall back to the plain handler
            pass
        super().emit(record)
