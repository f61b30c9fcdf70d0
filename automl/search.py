"""Optuna search over architectures and hyper-parameters, with leakage-aware CV and fold-aware pruning.

Run it::

    python -m automl.search --preset smoke                      # ~1 min on 2 CPU cores, synthetic phantom
    python -m automl.search --preset demo                       # <= 5 min on 2 CPU cores, the dashboard's demo
    python -m automl.search --data DIR --study mine --preset full --storage postgresql://user@host/db
    python -m automl.search --study mine --n-trials 40          # resume: same --study, more trials
    python -m automl.search --preset demo --workers 2           # two local processes, one study
    python -m automl.search --data DIR --study small --outer-folds 5   # nested evaluation (small cohorts)

or from Python::

    from automl.search import SearchConfig, run_search
    study_dir = run_search(SearchConfig(preset="smoke", leaderboards="leaderboards"))

What happens (one study = one folder ``<leaderboards>/<study>/``, laid out by :class:`automl.study.StudyFolder`):

1. **Data.** ``--data DIR`` is scanned with :func:`data.scan_folder` (bad files reported, never fatal);
   without ``--data`` the synthetic phantom of :func:`data.phantom.default_dataset` is used, generated
   once per setting. ``smoke`` and ``full`` label it per subject (every slice of a stroke patient is
   labelled stroke, as in public slice datasets); ``demo`` labels per slice at an easier difficulty so
   that a 3-epoch model learns the lesion itself within the time budget. Either way neighbouring
   slices of a patient are near-duplicates, so the leakage audit has something real to show. Images are decoded once into the array cache (:func:`data.load_arrays`).
2. **Split** (:func:`automl.split.make_split`): an untouched, subject-grouped, stratified test part,
   then ``StratifiedGroupKFold`` on the rest. Written to ``split.csv``.
3. **Search.** One Optuna study (TPE, seeded) maximising the mean CV AUC; the space is
   :func:`automl.space.suggest_config`. A new study first runs every architecture once at the registry's
   default hyper-parameters, then each classical baseline at a few more ``C`` values
   (:func:`automl.space.default_trials`, enqueued), so the leaderboard always compares
   all of them (in the order of ``--models``: the presets list the cheapest first, so a timeout cuts
   the costly ones, never the baselines); TPE explores from there. Each trial trains one fold after another with :func:`automl.train.fit_fold`
   and reports on one monotone step axis (see :class:`automl.objective.Objective`), so the pruner can stop a poor
   network after its first fold (classical baselines and each architecture's default trial always run every fold).
4. **Leaderboard** (:func:`automl.leaderboard.write_leaderboard`): best trial per architecture
   refitted (first CV fold's training part; threshold on its held-out calibration part, see
   :mod:`automl.leaderboard`), scored once on the test part, leakage audit, every file written
   atomically. It can be regenerated from the storage alone with ``python -m automl.leaderboard``.
5. **Nested evaluation** (``--outer-folds K``, :mod:`automl.nested`): steps 2-4 first run in each of
   ``K`` subject-grouped outer folds (``<study>/outer/<k>/``, test part = outer fold ``k``); the outer
   folds' winners, each chosen by its own inner CV, are pooled into ``nested.csv`` / ``nested.json``
   (every patient tested once), then the parent study runs as above and leads with that estimate.

``--n-trials`` is the number of finished (complete or pruned) trials the study should hold: a
re-run with the same ``--study`` resumes and only runs what is missing (raise ``--n-trials`` to add
trials). Failed trials do not count, so a trial lost to a crash is made up for.

Storage: by default a journal file ``<leaderboards>/<study>/study.journal`` (Optuna's
``JournalFileBackend``: safe for several processes on one machine, or on a shared file system);
``--storage postgresql://...`` (or ``mysql://``, ``sqlite:///``) for several machines: run the same
command on each. A worker killed mid-trial loses only that trial: on the next start its RUNNING trial
is failed and its parameters re-enqueued (same host: the recorded pid is dead; other hosts: its
heartbeat is older than ``--heartbeat-grace``; RDB storages also use Optuna's own heartbeat with
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`).
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import optuna
import pandas as pd

from automl._cli import add_logging_arguments, fail, start_logging
from automl._progress import Progress, ProgressCallback
from automl.config import PRESETS, PRUNERS, STUDY_DEFINING, SearchConfig
from automl.data_context import DataContext, prepare_data, resolve_data_dir
from automl.leaderboard import write_leaderboard
from automl.nested import inner_configs, pool_outer_folds
from automl.objective import DEFAULT_TRIAL_ATTR, Objective, worker_identity
from automl.space import default_params, default_trials, suggest_config
from automl.strategy import make_pruner, make_sampler, make_storage, open_study, sampler_seed, storage_url
from automl.study import StudyFolder
from automl.workers import count_finished, optimize, recover_stale_trials, run_workers, sigterm_as_interrupt
from data._files import atomic_write_csv, atomic_write_json, json_clean, library_versions

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "PRUNERS",
    "SearchConfig",
    "DataContext",
    "Objective",
    "suggest_config",
    "prepare_data",
    "resolve_data_dir",
    "make_storage",
    "make_pruner",
    "make_sampler",
    "open_study",
    "sampler_seed",
    "default_params",
    "default_trials",
    "recover_stale_trials",
    "worker_identity",
    "DEFAULT_TRIAL_ATTR",
    "run_search",
    "build_parser",
    "config_from_args",
    "main",
]


def _check_resume(config: SearchConfig, study: optuna.Study, manifest_hash: str) -> None:
    previous = study.user_attrs.get("search_config")
    if previous is None:
        study.set_user_attr("search_config", json_clean(config.to_dict(), default=str))
        study.set_user_attr("manifest_hash", manifest_hash)
        return
    old_hash = study.user_attrs.get("manifest_hash")
    if old_hash and old_hash != manifest_hash:
        raise ValueError(
            f"--study {config.study_name!r} was run on different data (manifest hash {old_hash} != {manifest_hash}); "
            "use a new --study name"
        )
    changed = {k: (previous.get(k), getattr(config, k)) for k in STUDY_DEFINING
               if k in previous and json_clean(previous.get(k), default=str) != json_clean(getattr(config, k), default=str)}
    if changed:
        detail = ", ".join(f"--{k.replace('_', '-')} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"--study {config.study_name!r} exists with other settings ({detail}); "
                         "its trials would not be comparable: use a new --study name or the same settings")


def write_study_files(config: SearchConfig, ctx: DataContext) -> None:
    """Write config.json, manifest.csv, bad_files.csv, quality.json and split.csv (atomically)."""
    import data

    folder = StudyFolder(config.study_dir)
    folder.predictions_dir.mkdir(parents=True, exist_ok=True)
    manifest = ctx.manifest
    payload = {
        **config.to_dict(),
        "study": config.study_name,
        "study_name": config.study_name,
        "data_dir": str(ctx.data_dir),
        "classes": list(ctx.classes),
        "manifest_hash": manifest.hash,
        "subject_source": getattr(manifest, "subject_source", None),
        "storage_url": storage_url(config),
        "n_images": int(len(manifest.table)),
        "n_subjects": int(manifest.table["subject"].nunique()),
        "versions": library_versions(),
    }
    folder.write_config(json_clean(payload, default=str))
    atomic_write_csv(manifest.table, folder.manifest_path)
    atomic_write_csv(manifest.bad_files if manifest.bad_files is not None else pd.DataFrame(columns=["path", "reason"]),
                     folder.bad_files_path)
    atomic_write_csv(ctx.split.to_frame(), folder.split_path)
    try:
        quality = data.quality_report(manifest).to_dict()
    except Exception as exc:  # noqa: BLE001 - the quality report is informative, never fatal
        logger.warning("quality report failed: %s", exc)
        quality = {"error": str(exc)}
    atomic_write_json(json_clean(quality, default=str), folder.quality_path)


def run_search(config: SearchConfig, *, on_progress: ProgressCallback | None = None,
               progress_bars: bool | None = None, verbosity: int = 0) -> Path:
    """Run (or resume) a study and write ``<out>/<study>/``; return that folder.

    With ``config.outer_folds`` (``--outer-folds K``) the study is a nested evaluation
    (:mod:`automl.nested`): first the ``K`` inner studies ``<study>/outer/<k>/`` (ordinary studies
    whose test part is outer fold ``k``), then ``nested.csv`` / ``nested.json`` (the pooled estimate),
    then the parent study itself, whose leaderboard leads with the nested estimate.

    Args:
        config: The validated search configuration.
        on_progress: Optional callback receiving progress events (see :mod:`automl._progress`),
            e.g. to drive a Streamlit progress bar with the live best score.
        progress_bars: Force tqdm bars on/off (default: on when stderr is a TTY).
        verbosity: Passed to spawned workers' logging set-up.

    Returns:
        The study folder.

    Raises:
        ValueError: Unusable data, or a resumed study with other data or settings.
        KeyboardInterrupt: Re-raised after Ctrl-C / SIGTERM, once the leaderboard of the finished
            trials is written (refits and the audit are skipped; the interrupted trial is retried on
            the next run).
    """
    options = {"on_progress": on_progress, "progress_bars": progress_bars, "verbosity": verbosity}
    if config.outer_folds is not None and config.outer_fold is None:
        for inner in inner_configs(config):
            logger.info("nested evaluation: outer fold %d (of %d) -> %s", inner.outer_fold, config.outer_folds,
                        inner.study_dir)
            _run_study(inner, **options)
        pool_outer_folds(config.study_dir, outer_folds=config.outer_folds, seed=config.seed)
    return _run_study(config, **options)


def _run_study(config: SearchConfig, *, on_progress: ProgressCallback | None, progress_bars: bool | None,
               verbosity: int) -> Path:
    """One ordinary study (see :func:`run_search`)."""
    t_start = time.monotonic()
    progress = Progress(n_trials=config.n_trials, n_folds=config.folds, n_epochs=config.epochs,
                        on_progress=on_progress, bars=progress_bars)
    interrupted = False
    try:
        progress.phase("data", "scanning and caching images")
        ctx = prepare_data(config)
        config.study_dir.mkdir(parents=True, exist_ok=True)
        max_batch = min(len(tr) for tr, _ in ctx.split.folds)
        if config.n_trials is None:  # a fixed plan: exactly the planned trials
            config.n_trials = len(default_trials(config, max_batch_size=max_batch))
            progress.n_trials = config.n_trials
        study = open_study(config)
        _check_resume(config, study, ctx.manifest.hash)
        write_study_files(config, ctx)
        if not study.get_trials(deepcopy=False):
            for params, is_default in default_trials(config, max_batch_size=max_batch):
                study.enqueue_trial(params, user_attrs={DEFAULT_TRIAL_ATTR: is_default}, skip_if_exists=True)
        recovered = recover_stale_trials(study, grace=config.heartbeat_grace)
        if recovered:
            logger.info("re-enqueued %d trial(s) lost by a previous run: %s", len(recovered), recovered)

        done = count_finished(study)
        progress.n_done = 0
        progress.n_trials = max(0, config.n_trials - done)
        if progress._trial_bar is not None:  # noqa: SLF001
            progress._trial_bar.reset(total=progress.n_trials)  # noqa: SLF001
        deadline = None if not config.timeout else t_start + float(config.timeout)
        if done >= config.n_trials:
            logger.info("study %s already holds %d finished trials (--n-trials %d): nothing to search",
                        config.study_name, done, config.n_trials)
        else:
            progress.phase("search", f"{config.n_trials - done} trial(s) to go, {config.workers} worker(s)")
            try:
                if config.workers == 1:
                    optimize(config, ctx, study, deadline=deadline, progress=progress, heartbeat=True)
                else:
                    run_workers(config, ctx, study, deadline, progress, verbosity)
            except KeyboardInterrupt:
                interrupted = True
                logger.warning("interrupted: writing the leaderboard of the finished trials "
                               "(run `python -m automl.leaderboard %s` to refit and score the test part)",
                               config.study_name)
        progress.close()
        write_leaderboard(config.study_dir, storage=make_storage(config), ctx=ctx, progress=progress,
                          refit=config.refit and not interrupted, audit=not interrupted)
        progress.phase("done", str(config.study_dir))
    finally:
        progress.close()
    logger.info("study %s written to %s in %.0f s", config.study_name, config.study_dir, time.monotonic() - t_start)
    if interrupted:
        raise KeyboardInterrupt(f"search interrupted; finished trials are in {config.study_dir}")
    return config.study_dir


def _positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects an integer, got {text!r}") from None
        return value
    return parse


def _float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} expects a finite number, got {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m automl.search`` argument parser (flags map 1:1 onto :class:`SearchConfig`)."""
    p = argparse.ArgumentParser(
        prog="python -m automl.search",
        description="Optuna search over image classifiers with subject-grouped CV, fold-aware pruning, "
                    "an untouched test part and a leakage audit. Writes <leaderboards>/<study>/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=None, help="dataset folder (class subfolders); default: synthetic phantom")
    p.add_argument("--study", default=None, help="study name (re-run to resume); default <data>_<preset>")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="defaults for unset flags")
    p.add_argument("--models", default=None, help="comma-separated registry names (default: preset's list)")
    p.add_argument("--n-trials", type=_positive_int("--n-trials"), default=None, help="finished trials the study should hold")
    p.add_argument("--timeout", type=_float("--timeout"), default=None, help="seconds for the search (0 = no limit)")
    p.add_argument("--folds", type=_positive_int("--folds"), default=None, help="CV folds")
    p.add_argument("--test-size", type=_float("--test-size"), default=None, help="fraction of subjects in the test part")
    p.add_argument("--image-size", type=_positive_int("--image-size"), default=None, help="input size in pixels")
    p.add_argument("--epochs", type=_positive_int("--epochs"), default=None, help="epochs per fold (max when searched)")
    p.add_argument("--search-epochs", action=argparse.BooleanOptionalAction, default=None, help="search epochs too")
    p.add_argument("--group-by", default="auto", help="subject grouping: auto|csv|dicom|filename|phash|none|<groups.csv>")
    p.add_argument("--phash-threshold", type=int, default=6,
                   help="perceptual-hash Hamming distance (0-64) that makes two images near-duplicates: links them "
                        "into one subject when grouping by phash, and feeds the quality report (default 6)")
    p.add_argument("--window", default="brain", help="CT window for DICOM/NIfTI: brain|stroke|subdural|bone|level,width, or a window set "
                        "(3 windows as the 3 input channels): ich | brain,subdural,bone")
    p.add_argument("--slice-labels", default=None, help="volume,slice,label CSV of per-slice labels of volumes")
    p.add_argument("--slice-step", type=_positive_int("--slice-step"), default=1,
                   help="keep every k-th slice of each DICOM series / NIfTI volume")
    p.add_argument("--min-brain-fraction", type=_float("--min-brain-fraction"), default=0.0,
                   help="keep volume slices with at least this share of brain-density pixels (HU 15-60)")
    p.add_argument("--pretrained", default=None, help="ImageNet init: auto|yes|no")
    p.add_argument("--weights-dir", default=None,
                   help="folder with local ImageNet weights (<timm_name>.safetensors|.pth), searched before "
                        "$STROKECT_WEIGHTS and the Hugging Face cache")
    p.add_argument("--offline", action="store_true",
                   help="never download ImageNet weights (also $HF_HUB_OFFLINE=1): local files, pip packages and "
                        "the hub caches only")
    p.add_argument("--pruner", default="median", help="median|halving|hyperband|none")
    p.add_argument("--n-startup-trials", type=_positive_int("--n-startup-trials"), default=None,
                   help="random trials before TPE, and before the pruner prunes")
    p.add_argument("--target-sensitivity", type=_float("--target-sensitivity"), default=None,
                   help="choose the threshold for this OOF sensitivity instead of Youden's J")
    p.add_argument("--leakage-audit", default=None, help="probe|model|none")
    p.add_argument("--no-refit", dest="refit", action="store_false", help="skip refits and test scoring")
    p.add_argument("--outer-folds", type=_positive_int("--outer-folds"), default=None,
                   help="nested evaluation: the whole search again in K subject-grouped outer folds (2-10, "
                        "<study>/outer/<k>/), every patient tested once; their pooled estimate (nested.json) "
                        "becomes the headline. --test-size then sets the parent study's own test part only")
    p.add_argument("--storage", default=None, help="Optuna storage URL (postgresql://..., sqlite:///...) or .journal file")
    p.add_argument("--workers", type=_positive_int("--workers"), default=1, help="local worker processes")
    p.add_argument("--seed", type=_positive_int("--seed"), default=0)
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    p.add_argument("--leaderboards", default="leaderboards", help="root folder of study folders: writes <leaderboards>/<study>/")
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)  # deprecated alias of --leaderboards
    p.add_argument("--phantom-n", type=_positive_int("--phantom-n"), default=None, help="phantom size without --data")
    p.add_argument("--phantom-difficulty", type=_float("--phantom-difficulty"), default=None)
    p.add_argument("--phantom-label-level", default=None, help="subject|slice (default: preset's)")
    p.add_argument("--heartbeat-interval", type=_positive_int("--heartbeat-interval"), default=30)
    p.add_argument("--heartbeat-grace", type=_positive_int("--heartbeat-grace"), default=180)
    add_logging_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """Turn parsed arguments into a validated :class:`SearchConfig` (raises ValueError)."""
    values = {k: v for k, v in vars(args).items() if k not in ("verbose", "quiet", "out")}
    if args.out is not None:  # version 1's name of --leaderboards
        logger.warning("--out is deprecated for the search: use --leaderboards (the root of study folders)")
        values["leaderboards"] = args.out
    return SearchConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))  # exit 2 with "error: ..."
    verbosity = start_logging(args)
    sigterm_as_interrupt()
    try:
        study_dir = run_search(config, progress_bars=False if args.quiet else None, verbosity=verbosity)
    except KeyboardInterrupt as exc:
        logger.warning("%s", exc or "interrupted")
        return 130
    except (ValueError, OSError) as exc:
        return fail(exc)
    print(study_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
