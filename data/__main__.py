"""Print the data quality report of a dataset folder.

Usage::

    python -m data path/to/dataset
    python -m data path/to/dataset --group-by filename --json quality.json
    python -m data path/to/dicom_folder --window stroke --min-per-class 5
    python -m data path/to/volumes --slice-step 2 --min-brain-fraction 0.05   # DICOM series / NIfTI

Exit status: 0 when the folder is usable (also with bad files, which are listed), 2 with a
one-line ``error: ...`` on stderr when it is not (missing folder, one class, empty class,
too few images per class, bad arguments).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data._log import add_logging_arguments, start_logging
from data._groups import GROUP_SOURCES
from data._io import WINDOWS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data",
        description="Scan a folder of class subfolders (PNG/JPEG/BMP/TIFF/DICOM images, DICOM series, NIfTI volumes) and print its data quality report.",
    )
    parser.add_argument("dir", help="dataset folder: one subfolder per class")
    parser.add_argument("--group-by", default="auto",
                        help=f"subject source: {', '.join(GROUP_SOURCES)} or a CSV file (file,subject); default auto")
    parser.add_argument("--filename-regex", default=None,
                        help="regex with a (?P<subject>...) group for the subject id in file names")
    parser.add_argument("--phash-threshold", type=int, default=6,
                        help="Hamming distance (0-64) for near-duplicates; default 6")
    parser.add_argument("--window", default="brain",
                        help=f"CT window for DICOM: {', '.join(WINDOWS)} or level,width; default brain")
    parser.add_argument("--min-per-class", type=int, default=2, help="fewest readable images per class; default 2")
    parser.add_argument("--slice-labels", default=None,
                        help="volume,slice,label CSV of per-slice labels of volumes (default: _slice_labels.csv if present)")
    parser.add_argument("--slice-step", type=int, default=1, help="keep every k-th slice of each volume; default 1")
    parser.add_argument("--min-brain-fraction", type=float, default=0.0,
                        help="keep volume slices with at least this share of brain-density pixels (HU 15-60); default 0")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: auto)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON to this file")
    parser.add_argument("--max-rows", type=int, default=10, help="longest list printed per section; default 10")
    add_logging_arguments(parser)  # -v: log progress and every skipped file
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    start_logging(args, default=-1)
    from data.quality import quality_report

    try:
        report = quality_report(
            Path(args.dir),
            group_by=args.group_by,
            filename_regex=args.filename_regex,
            phash_threshold=args.phash_threshold,
            window=args.window,
            min_per_class=args.min_per_class,
            workers=args.workers,
            slice_labels=args.slice_labels,
            slice_step=args.slice_step,
            min_brain_fraction=args.min_brain_fraction,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary_text(max_rows=args.max_rows))
    if args.json_out:
        out = Path(args.json_out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report.to_dict(), indent=2))
        except OSError as exc:
            print(f"error: cannot write {str(out)!r}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
