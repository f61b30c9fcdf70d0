"""What every command line of the project shares: the study options, logging flags and error lines.

The convention (Optuna's CLI is the model): a study is named by ``--study NAME`` and found under
``--leaderboards ROOT`` (default ``leaderboards/``; a path to a study folder is accepted as
``--study`` too); ``--out`` always names the file or folder *this command writes*; ``-v``/``-q``
set the log level the same way everywhere; a bad argument or an unreadable file ends with one
``error: ...`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from data._log import add_logging_arguments, start_logging
from automl.study import DEFAULT_LEADERBOARDS, StudyFolder

__all__ = ["add_study_arguments", "add_logging_arguments", "start_logging", "locate_study", "cli_error_message",
           "fail"]


def add_study_arguments(parser: argparse.ArgumentParser, *, required: bool = True, positional: bool = False) -> None:
    """``--study NAME`` (or a study folder path) and ``--leaderboards ROOT``.

    Args:
        parser: The command's parser.
        required: Whether ``--study`` must be given.
        positional: Also accept the study as an optional first positional argument (the form
            version 1's ``python -m automl.leaderboard STUDY`` documented).
    """
    if positional:
        parser.add_argument("study_positional", nargs="?", metavar="STUDY", help="study name or study folder")
    parser.add_argument("--study", default=None, required=required and not positional,
                        help="study name under --leaderboards, or a path to a study folder")
    parser.add_argument("--leaderboards", default=DEFAULT_LEADERBOARDS, help="root folder of study folders")


def locate_study(parser: argparse.ArgumentParser, args: argparse.Namespace, *, must_exist: bool = True) -> StudyFolder:
    """The :class:`StudyFolder` named by ``--study``/the positional study and ``--leaderboards``.

    Ends the command through ``parser.error`` (exit 2, one line) when none is named or it does not exist.
    """
    name = getattr(args, "study", None) or getattr(args, "study_positional", None)
    if not name:
        parser.error("name a study: --study NAME (under --leaderboards) or a study folder")
    try:
        folder = StudyFolder.locate(name, args.leaderboards)
    except ValueError as exc:
        parser.error(str(exc))
    if must_exist and not folder.root.is_dir():
        parser.error(f"no study {name!r}: the folder {folder.root} does not exist")
    if must_exist and not folder.config_path.is_file():
        parser.error(f"no study {name!r}: {folder.config_path} is missing")
    return folder


def cli_error_message(exc: BaseException) -> str:
    """An error for the command line: an ``OSError`` as ``<reason>: <file>``, anything else its message."""
    if isinstance(exc, OSError) and exc.strerror:
        message = str(exc.strerror)
        if exc.filename is not None and str(exc.filename) not in message:
            message += f": {exc.filename}"
        return message
    return str(exc)


def fail(exc: BaseException) -> int:
    """Print ``error: <message>`` for ``exc`` on stderr and return exit status 2."""
    print(f"error: {cli_error_message(exc)}", file=sys.stderr)
    return 2
