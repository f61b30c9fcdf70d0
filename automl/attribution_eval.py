"""Attribution faithfulness of a study's refitted models on its test-part lesion images.

The measures (pointing game, mass in mask, random baseline, model-randomisation sanity check) are
pure functions in :mod:`models.attribution_eval`; this module applies them to a study folder and
writes ``<leaderboards>/<study>/attribution.csv`` atomically::

    python -m automl.attribution_eval --study demo
    python -m automl.attribution_eval --study demo --methods grad_cam integrated_gradients --max-images 16

The study's dataset (``config.json`` ``data_dir``) must hold lesion masks (``_masks/``, as the
phantom writes them); lesion images of the study's untouched test part are used, each explained
for its own (true) class.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from torch import nn

from automl._cli import add_logging_arguments, add_study_arguments, fail, locate_study, start_logging
from automl.results import load_study
from automl.study import StudyFolder
from data._files import atomic_write_csv
from models.attribution import METHODS
from models.attribution_eval import COLUMNS, evaluate, lesion_images

__all__ = ["evaluate_study", "write_attribution_csv", "main"]

logger = logging.getLogger(__name__)


def evaluate_study(
    study_dir: str | Path,
    *,
    methods: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    max_images: int | None = 24,
    sanity_images: int = 8,
    seed: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    """Score the attributions of a study's refitted deep models on its test-part lesion images.

    Args:
        study_dir: ``leaderboards/<study>``.
        methods: Methods to score (default: all that apply).
        models: Refitted models to score (default: all deep ones).
        max_images: At most this many lesion images (seeded subset); ``None`` for all.
        sanity_images: Images used for the model-randomisation check.
        seed: Seed of the subset, the random baseline and the re-initialisation.
        device: Device for the predictors (``"auto"``, ``"cpu"``, ``"cuda"``).

    Returns:
        The frame of :func:`evaluate`.

    Raises:
        ValueError: (``automl.results.StudyError`` included) the study, its dataset or its masks are
            missing, or a requested model was not refitted.
    """
    from models import load_predictor

    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int)
                                   or max_images < 1):
        raise ValueError(f"max_images must be a positive int or None, got {max_images!r}.")
    study = load_study(study_dir)
    data_dir = study.data_dir
    if data_dir is None or not Path(data_dir).is_dir():
        raise ValueError(f"The dataset of study {study.name!r} ({data_dir}) is not available on this machine.")
    split = study.split
    test = split[split["part"].astype(str) == "test"]
    if test.empty:
        raise ValueError(f"split.csv of study {study.name!r} has no test part.")
    if "label" not in test.columns:
        test = test.assign(label=[study.classes[int(y)] for y in test["y"]])
    images = lesion_images(data_dir, test, max_images=max_images, seed=seed)
    available = study.refitted_models()
    chosen = list(models) if models else available
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise ValueError(f"Model(s) {unknown} were not refitted in study {study.name!r}; available: {available}.")
    predictors = {}
    for name in chosen:
        predictor = load_predictor(study.model_dir(name), device=device)
        if isinstance(getattr(predictor, "model", None), nn.Module):
            predictors[name] = predictor
    if not predictors:
        raise ValueError(f"Study {study.name!r} has no refitted deep model to explain (models: {available}).")
    logger.info("Scoring %d lesion images x %d models", len(images), len(predictors))
    return evaluate(predictors, images, methods=methods, sanity_images=sanity_images, seed=seed)


def write_attribution_csv(frame: pd.DataFrame, study_dir: str | Path) -> Path:
    """Write ``attribution.csv`` into the study folder atomically (temporary file + rename).

    Args:
        frame: The frame of :func:`evaluate`.
        study_dir: ``leaderboards/<study>``.

    Returns:
        The written path.
    """
    study_dir = Path(study_dir)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"attribution frame lacks column(s) {missing}.")
    return atomic_write_csv(frame[COLUMNS], StudyFolder(study_dir).attribution_path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m automl.attribution_eval",
        description="Score attribution methods on a study's phantom lesions (pointing game, mass in mask, "
                    "model-randomisation sanity check) and write leaderboards/<study>/attribution.csv.",
    )
    add_study_arguments(parser)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                        help="methods to score (default: every method that applies to each model)")
    parser.add_argument("--models", nargs="+", default=None, help="refitted models to score (default: all deep)")
    parser.add_argument("--max-images", type=int, default=24, help="lesion images to use (default: %(default)s)")
    parser.add_argument("--sanity-images", type=int, default=8,
                        help="images for the model-randomisation check, 0 to skip (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default: %(default)s)")
    add_logging_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    if args.sanity_images < 0:
        parser.error(f"--sanity-images must be >= 0, got {args.sanity_images}")
    start_logging(args)
    study_dir = locate_study(parser, args).root
    start = time.perf_counter()
    try:
        frame = evaluate_study(study_dir, methods=args.methods, models=args.models, max_images=args.max_images,
                               sanity_images=args.sanity_images, seed=args.seed, device=args.device)
    except ValueError as exc:
        return fail(exc)
    path = write_attribution_csv(frame, study_dir)
    logger.info("Wrote %s (%d rows) in %.1f s", path, len(frame), time.perf_counter() - start)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
