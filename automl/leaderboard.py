"""The leaderboard of a study, regenerated from the Optuna storage (the single source of truth).

Run it::

    python -m automl.leaderboard --study phantom_demo         # leaderboards/phantom_demo/
    python -m automl.leaderboard --study path/to/study_dir --no-refit   # tables only, no training

What :func:`write_leaderboard` does, in order (every file written atomically, temp file + rename,
under an exclusive lock so two processes finishing at once do not interleave):

1. **Trial table.** One row per finished trial (complete, pruned, failed) from the storage:
   parameters, ``init``, CV AUC mean/std/per fold (partial for pruned trials), fit time, state,
   error. Rank: complete trials first by ``cv_auc_mean``, then pruned, then failed.
2. **Final model ("refit").** For the best complete trial of each architecture: train its
   configuration on the first CV fold's training part for ``E`` epochs, where ``E`` is the median,
   over folds, of the epoch whose weights the CV fits kept (early stopping's choice); as in CV, the
   epoch kept is the best one on the held-out **calibration part** (that fold's validation part:
   subject-grouped, stratified, 1/K of the CV data). The test part is never looked at while
   training. The model is saved with :func:`models.save_checkpoint` to ``models/<model>/`` (card +
   ``config.json``), its calibration-part predictions to ``predictions/calibration_<model>.csv``. A
   final model is reused when ``models/<model>/config.json`` names the same trial (regeneration is cheap).
3. **Threshold** on the final model's own calibration-part predictions: Youden's J, or the smallest
   threshold reaching ``--target-sensitivity``. Not on the out-of-fold predictions
   (``predictions/oof_<model>.csv``, kept for the dashboard): those come from other fits, and a
   network's probability scale moves from fit to fit, so a threshold does not carry over (see
   :func:`_refit_one`).
4. **Test part, scored once** (:mod:`automl.scoring`; the patient is the unit): AUC, accuracy,
   balanced accuracy, sensitivity, specificity, precision, F1, Brier, ECE at that threshold, each
   interval a cluster bootstrap over subjects (``ci_method``; the stratified image bootstrap, same
   numbers as before, with one image per subject); the **patient-level headline**: subject rule
   chosen on ``oof_<model>.csv``, subject threshold on the calibration part, AUC, sensitivity and
   specificity with intervals and patients per class, ``nan`` + ``subject_note`` where not
   estimable; each refitted model compared with the best (the architecture of the best CV trial):
   paired cluster bootstrap on slices (``compare_p``, ``compare_method``), DeLong on patients
   (``subject_compare_p``); the verdict sentence and the warnings (fewer than 10 test patients in
   a class). Multiclass: macro one-vs-rest AUC; the other metrics at the arg-max class (sensitivity,
   precision, F1 macro-averaged over classes, specificity the macro mean of one-vs-rest
   specificities); no threshold and no paired test.
5. **Leakage audit** (see :func:`automl.refit.leakage_audit`).
6. ``leaderboard.csv``, ``leaderboard.md``, ``report.json``. A study with a nested evaluation
   (``nested.json``, :mod:`automl.nested`) leads ``leaderboard.md`` with the nested estimate, and
   ``report.json`` says which evaluation gave the headline (``headline_evaluation``).

Every number can be recomputed with scikit-learn from ``predictions/*.csv`` (the tests do).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from automl._cli import add_logging_arguments, add_study_arguments, fail, locate_study, start_logging
from automl._leaderboard_columns import (
    Refit,
    comparison_values,
    scan_values,
    subject_values,
    test_values,
    uncertainty_report,
)
from automl._leaderboard_md import render_markdown
from automl._progress import Progress
from automl.config import SearchConfig
from automl.refit import LEAKAGE_GAP, LazyContext, leakage_audit, refit_epochs, refit_one, update_card
from automl.scoring import (
    assess_scans,
    assess_subjects,
    calibration_threshold,
    compare_subjects_with_best,
    compare_with_best,
    interval_scores,
    score_predictions,
    study_verdict,
    study_warnings,
    subject_level,
)
from automl.study import StudyFolder, parse_storage_url, probability_columns
from automl.uncertainty import Comparison
from data._files import atomic_write_csv, atomic_write_json, atomic_write_text, json_clean, read_json_object

logger = logging.getLogger(__name__)

__all__ = [
    "LEADERBOARD_COLUMNS",
    "LEAKAGE_GAP",
    "trials_table",
    "leakage_audit",
    "write_leaderboard",
    "main",
]

LEADERBOARD_COLUMNS = [
    "rank", "trial", "model", "init", "train_precision", "lr", "batch_size", "weight_decay", "finetune",
    "cv_auc_mean", "cv_auc_std", "cv_auc_folds", "selected_of",
    # patient level, the headline (rule chosen on out-of-fold, threshold on the calibration part)
    "subject_rule", "subject_threshold", "subject_auc", "subject_auc_ci_low", "subject_auc_ci_high",
    "subject_sensitivity", "subject_sensitivity_ci_low", "subject_sensitivity_ci_high",
    "subject_specificity", "subject_specificity_ci_low", "subject_specificity_ci_high",
    "subject_ci_method", "subject_note", "subject_compare_p", "n_test_subjects_pos", "n_test_subjects_neg",
    "n_test_slice_subjects_pos", "n_test_slice_subjects_neg",
    # scans (CT volumes), aggregated with the patient rule and threshold; intervals resample patients
    "scan_auc", "scan_auc_ci_low", "scan_auc_ci_high", "scan_sensitivity", "scan_sensitivity_ci_low",
    "scan_sensitivity_ci_high", "scan_specificity", "scan_specificity_ci_low", "scan_specificity_ci_high",
    "scan_note", "n_test_scans",
    # slices (intervals resample subjects: ci_method)
    "test_auc", "test_auc_ci_low", "test_auc_ci_high", "test_accuracy", "test_accuracy_ci_low",
    "test_accuracy_ci_high", "test_balanced_accuracy", "test_sensitivity", "test_sensitivity_ci_low",
    "test_sensitivity_ci_high", "test_specificity", "test_specificity_ci_low", "test_specificity_ci_high",
    "test_precision", "test_f1", "test_brier", "test_brier_ci_low", "test_brier_ci_high", "test_ece",
    "test_ece_ci_low", "test_ece_ci_high", "ci_method", "test_note", "n_test_images",
    "compare_p", "compare_method", "delong_p", "subject_auc_mean", "subject_auc_max",
    "threshold", "fit_seconds", "state", "refit", "params",
    "aug_strength", "epochs", "refit_epochs", "error", "retry_of",
]

_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2}


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per finished trial, ranked (complete first by ``cv_auc_mean``, then pruned, then failed).

    Test columns are left empty here; :func:`write_leaderboard` fills them for refitted rows.
    """
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not t.state.is_finished():
            continue
        attrs = t.user_attrs
        folds = [float(a) for a in attrs.get("cv_auc_folds", []) or []]
        tc = attrs.get("train_config") or {}
        mean = t.value if t.state == TrialState.COMPLETE else attrs.get("cv_auc_mean")
        if mean is None and folds:
            mean = float(np.mean(folds))
        row = {
            "trial": t.number,
            "model": t.params.get("model", tc.get("model")),
            "init": attrs.get("init", "random" if t.state != TrialState.FAIL else None),
            "train_precision": attrs.get("train_precision"),  # deep: "fp32" or "bf16" (autocast); classical: None
            "lr": t.params.get("lr", math.nan),
            "batch_size": t.params.get("batch_size", math.nan),
            "weight_decay": t.params.get("weight_decay", math.nan),
            "finetune": t.params.get("finetune", tc.get("finetune") if "lr" in t.params else None),
            "cv_auc_mean": _num(mean),
            "cv_auc_std": float(np.std(folds)) if folds else math.nan,
            "cv_auc_folds": json.dumps([round(a, 6) for a in folds]),
            "fit_seconds": _num(attrs.get("fit_seconds")),
            "state": t.state.name,
            "refit": False,
            "params": json.dumps(t.params, sort_keys=True, default=str),
            "aug_strength": t.params.get("aug_strength", math.nan),
            "epochs": t.params.get("epochs", tc.get("epochs", math.nan)),
            "error": attrs.get("error"),
            "retry_of": attrs.get("retry_of", t.system_attrs.get("failed_trial")),
        }
        rows.append(row)
    table = pd.DataFrame(rows, columns=[c for c in LEADERBOARD_COLUMNS if c != "rank"])
    if table.empty:
        table.insert(0, "rank", pd.Series(dtype=int))
        return table
    order = table["state"].map(_STATE_ORDER).fillna(3)
    table = (table.assign(_o=order, _v=-table["cv_auc_mean"].fillna(-np.inf))
             .sort_values(["_o", "_v", "trial"], kind="stable").drop(columns=["_o", "_v"]).reset_index(drop=True))
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def write_leaderboard(
    study_dir: str | Path,
    *,
    storage: Any = None,
    ctx: Any = None,
    progress: Progress | None = None,
    refit: bool = True,
    audit: bool = True,
) -> Path:
    """Regenerate every leaderboard file of a study from its storage; return ``leaderboard.csv``.

    Args:
        study_dir: ``<leaderboards>/<study>/`` holding ``config.json`` (written by the search).
        storage: Optuna storage (object or URL); default: the one named in ``config.json``.
        ctx: The search's ``DataContext`` when already loaded (else loaded if a refit needs it).
        progress: Progress reporter for refit events.
        refit: Refit and score models whose refit is not on disk yet. ``False`` still scores
            refits already on disk.
        audit: Run the leakage audit when ``report.json`` holds none for the current winner.

    Raises:
        ValueError: Missing ``config.json`` or journal, or changed data when a refit is needed.
    """
    folder = StudyFolder(Path(study_dir))
    config_json = folder.read_config()
    config = SearchConfig.from_dict({**config_json, "leaderboards": str(folder.root.parent),
                                     "study": folder.study_name(config_json)}, validate=False)
    classes = list(config_json["classes"])
    lazy = LazyContext(config, config_json, ctx)
    with folder.locked():
        study = folder.load_optuna_study(storage, config=config_json)
        table = trials_table(study)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        _remove_stale_oof(folder, trials)
        best_rows = _best_per_architecture(table)
        best_trial = int(best_rows.iloc[0]["trial"]) if len(best_rows) else None
        best_model = trials[best_trial].params.get("model") if best_trial is not None else None
        refits = _score_refits(folder, best_rows, trials, lazy, config, config_json, progress, refit=refit)
        comparisons = _compare_with_best(refits, best_model, classes, seed=config.seed)
        _fill_refit_rows(table, best_rows, refits, comparisons, trials, folder, best_model, classes)
        verdict = _verdict_step(refits, comparisons, best_rows, best_model, classes)
        leak = _leakage_audit_step(study, folder, config, config_json, trials, best_trial, lazy, progress, audit=audit)
        report = _report(study, table, refits, comparisons, leak, config, config_json, best_trial, best_model)
        report.update(verdict)
        nested = _nested_step(folder, config_json, report)
        atomic_write_csv(table[LEADERBOARD_COLUMNS], folder.leaderboard_csv)
        atomic_write_text(render_markdown(table, report, config_json, nested=nested), folder.leaderboard_md)
        atomic_write_json(report, folder.report_path)
    logger.info("leaderboard: %d trials, %d refitted model(s), best %s -> %s", len(table), len(refits), best_model,
                folder.leaderboard_csv)
    return folder.leaderboard_csv


def _nested_step(folder: StudyFolder, config_json: dict[str, Any], report: dict[str, Any]) -> dict[str, Any] | None:
    """``nested.json`` when the study holds a nested evaluation of its data (:mod:`automl.nested`), else ``None``.

    Sets ``report["headline_evaluation"]`` (``"nested"`` | ``"single test part"``) and, for a nested
    study, ``report["nested"]`` (method, outer folds, verdict; the numbers stay in ``nested.json``).
    """
    nested = None
    if folder.nested_json.is_file():
        nested = read_json_object(folder.nested_json, missing=f"{folder.nested_json} is missing")
        if nested.get("manifest_hash") != config_json.get("manifest_hash"):
            logger.warning("%s was computed on other data (manifest hash %s != %s): not the headline",
                           folder.nested_json, nested.get("manifest_hash"), config_json.get("manifest_hash"))
            nested = None
    report["headline_evaluation"] = "nested" if nested else "single test part"
    if nested:
        report["nested"] = {k: nested.get(k) for k in ("method", "outer_folds", "headline", "verdict")}
    return nested


def _remove_stale_oof(folder: StudyFolder, trials: dict[int, optuna.trial.FrozenTrial]) -> None:
    """Remove out-of-fold files of trials that did not complete (a worker killed after writing)."""
    for number, path in folder.oof_trial_files().items():
        t = trials.get(number)
        if t is not None and t.state.is_finished() and t.state != TrialState.COMPLETE:
            path.unlink(missing_ok=True)


def _best_per_architecture(table: pd.DataFrame) -> pd.DataFrame:
    """The best complete trial of each architecture, best first."""
    complete = table[table["state"] == "COMPLETE"]
    return complete.sort_values("cv_auc_mean", ascending=False, kind="stable").drop_duplicates("model")


def _cached_refit(folder: StudyFolder, model: str, number: int, config_json: dict[str, Any]) -> bool:
    """Whether the final model of trial ``number`` and its predictions are already on disk."""
    meta_path = folder.model_dir(model) / "config.json"
    needed = (meta_path, folder.model_dir(model) / "card.json", folder.test_predictions_path(model),
              folder.calibration_predictions_path(model))
    if not all(p.is_file() for p in needed):
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False
    return meta.get("trial") == number and meta.get("manifest_hash") == config_json.get("manifest_hash")


def _score_refits(folder: StudyFolder, best_rows: pd.DataFrame, trials: dict[int, optuna.trial.FrozenTrial],
                  lazy: LazyContext, config: SearchConfig, config_json: dict[str, Any], progress: Progress | None,
                  *, refit: bool) -> dict[str, Refit]:
    """Refit (or reuse) the best configuration of each architecture and score it on the test part."""
    classes = list(config_json["classes"])
    out: dict[str, Refit] = {}
    todo = list(best_rows.itertuples(index=False))
    for i, row in enumerate(todo):
        model, number = row.model, int(row.trial)
        oof_trial = folder.oof_trial_path(number)
        if not oof_trial.is_file():
            logger.warning("out-of-fold predictions of trial %d are missing; %s not scored", number, model)
            continue
        test_path, calibration_path = folder.test_predictions_path(model), folder.calibration_predictions_path(model)
        if _cached_refit(folder, model, number, config_json):
            frame, calibration = pd.read_csv(test_path), pd.read_csv(calibration_path)
            # recomputed from the saved predictions, so another --target-sensitivity needs no new fit
            threshold, method = calibration_threshold(calibration, classes, config.target_sensitivity)
        elif refit:
            if progress:
                progress.refit(model, i, len(todo))
            ctx = lazy.get()  # a ValueError here (data changed or gone) stops regeneration
            try:
                frame, calibration, threshold, method = refit_one(trials[number], ctx, config, folder, config_json)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed refit must not lose the others
                logger.exception("refit of %s (trial %d) failed: %s", model, number, exc)
                continue
            atomic_write_csv(calibration, calibration_path)
            atomic_write_csv(frame, test_path)
        else:
            continue
        oof = pd.read_csv(oof_trial)
        atomic_write_csv(oof, folder.oof_predictions_path(model))
        out[model] = _score_one(model, number, frame, calibration, oof, threshold, method, config, classes)
    return out


def _score_one(model: str, number: int, frame: pd.DataFrame, calibration: pd.DataFrame, oof: pd.DataFrame,
               threshold: float | None, method: str, config: SearchConfig, classes: list[str]) -> Refit:
    """Score one final model on the test part: point metrics, subject-clustered intervals, patient headline."""
    P = frame[probability_columns(classes)].to_numpy(dtype=float)
    scores = score_predictions(frame["y"].to_numpy(dtype=int), P, threshold, seed=config.seed, with_ci=False)
    intervals = interval_scores(frame, classes, threshold, seed=config.seed)
    for name, est in intervals.items():
        scores[f"{name}_ci_low"], scores[f"{name}_ci_high"] = est.ci_low, est.ci_high
    scores["ci_method"] = intervals["auc"].ci_method
    scores["subject_level"] = subject_level(frame, classes, threshold)
    subjects = assess_subjects(frame, oof, calibration, classes, model=model, slice_threshold=threshold,
                               target_sensitivity=config.target_sensitivity, seed=config.seed)
    scans = assess_scans(frame, subjects, classes, seed=config.seed)
    return Refit(number, frame, threshold, method, scores, intervals, subjects, scans)


def _compare_with_best(refits: dict[str, Refit], best_model: str | None, classes: list[str], *,
                       seed: int) -> dict[str, dict[str, Comparison]]:
    """Each refitted model's test AUC against the best model's, on slices and on patients (binary only).

    ``"image"``: :func:`automl.scoring.compare_with_best` (paired cluster bootstrap; DeLong with one
    image per subject); ``"subject"``: DeLong on the patients, each model with its own subject rule.
    """
    frames = {m: r.frame for m, r in refits.items()}
    return {"image": compare_with_best(frames, best_model, classes, seed=seed),
            "subject": compare_subjects_with_best(frames, {m: r.subjects for m, r in refits.items()}, best_model,
                                                  classes)}


def _fill_refit_rows(table: pd.DataFrame, best_rows: pd.DataFrame, refits: dict[str, Refit],
                     comparisons: dict[str, dict[str, Comparison]], trials: dict[int, optuna.trial.FrozenTrial],
                     folder: StudyFolder, best_model: str | None, classes: list[str]) -> None:
    """Write each refitted model's test columns into its trial's row and into its model card."""
    complete = table[table["state"] == "COMPLETE"]
    for model, r in refits.items():
        idx = table.index[table["trial"] == r.trial][0]
        values = {"refit": True, "threshold": r.threshold if r.threshold is not None else math.nan,
                  "selected_of": int((complete["model"] == model).sum()), "refit_epochs": refit_epochs(trials[r.trial]),
                  **test_values(r, classes), **subject_values(r), **scan_values(r),
                  **comparison_values(model, comparisons, best_model, classes)}
        for key, value in values.items():
            if isinstance(value, str) and table[key].dtype != object:
                table[key] = table[key].astype(object)  # a text column that was all empty
            table.loc[idx, key] = value
        s = r.subjects
        update_card(folder.model_dir(model), threshold=r.threshold, threshold_method=r.threshold_method,
                    metrics={f"test_{k}": v for k, v in r.scores.items() if k != "subject_level"},
                    subject={"rule": s.rule.rule if s.rule else None, "threshold": s.threshold,
                             "threshold_source": s.threshold_source})
    table["refit"] = table["refit"].astype(bool)


def _verdict_step(refits: dict[str, Refit], comparisons: dict[str, dict[str, Comparison]], best_rows: pd.DataFrame,
                  best_model: str | None, classes: list[str]) -> dict[str, Any]:
    """The verdict sentence and the warnings (logged too) of ``report.json``."""
    order = [m for m in best_rows["model"] if m in refits]
    assessments = {m: r.subjects for m, r in refits.items()}
    verdict = study_verdict(best_model, order, assessments, comparisons["subject"], classes)
    warnings_ = study_warnings(assessments, {m: r.intervals for m, r in refits.items()}, best_model) if refits else []
    for text in warnings_:
        logger.warning("%s", text)
    if verdict:
        logger.info("verdict: %s", verdict)
    return {"verdict": verdict, "warnings": warnings_}


def _leakage_audit_step(study: optuna.Study, folder: StudyFolder, config: SearchConfig, config_json: dict[str, Any],
                        trials: dict[int, optuna.trial.FrozenTrial], best_trial: int | None, lazy: LazyContext,
                        progress: Progress | None, *, audit: bool) -> dict[str, Any] | None:
    """The leakage audit of the winner, reused while the winner and the data are unchanged.

    Kept in the study storage (the source of truth) and in ``report.json``.
    """
    if best_trial is None or config.leakage_audit == "none":
        return None
    old_report: dict[str, Any] = {}
    if folder.report_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            old_report = json.loads(folder.report_path.read_text(encoding="utf-8"))
    leak = study.user_attrs.get("leakage_audit") or old_report.get("leakage_audit")
    manifest_hash = config_json.get("manifest_hash")
    if (leak and leak.get("trial") == best_trial and leak.get("method") == config.leakage_audit
            and leak.get("manifest_hash", manifest_hash) == manifest_hash):
        return leak
    if not audit:
        return None
    if progress:
        progress.phase("audit", f"leakage audit ({config.leakage_audit})")
    ctx = lazy.get()
    try:
        leak = leakage_audit(ctx, config, trials[best_trial], config.leakage_audit)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - the audit is informative, never fatal
        logger.exception("leakage audit failed: %s", exc)
        return None
    leak["manifest_hash"] = manifest_hash
    study.set_user_attr("leakage_audit", json_clean(leak))
    return leak


def _report(study: optuna.Study, table: pd.DataFrame, refits: dict[str, Refit],
            comparisons: dict[str, dict[str, Comparison]],
            leak: dict[str, Any] | None, config: SearchConfig, config_json: dict[str, Any], best_trial: int | None,
            best_model: str | None) -> dict[str, Any]:
    """The content of ``report.json``."""
    classes = list(config_json["classes"])
    states = table["state"].value_counts().to_dict() if len(table) else {}
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)))
    best = refits.get(best_model) if best_model else None
    n_complete = int(states.get("COMPLETE", 0))
    return {
        "study": config_json.get("study_name"),
        "best_model": best_model,
        "best_trial": best_trial,
        "best_cv_auc": float(study.trials[best_trial].value) if best_trial is not None else None,
        "threshold": best.threshold if best else None,
        "threshold_method": (config.target_sensitivity and f"sensitivity>={config.target_sensitivity:g}")
                            or ("youden" if len(classes) == 2 else "argmax"),
        "selection": {"n_trials": n_complete, "label": f"selection score (CV, best of {n_complete} trials)",
                      "note": "the best of several cross-validated scores is optimistic; the test part is the estimate"},
        "leakage_audit": leak,
        **uncertainty_report(refits, comparisons, best_model),
        "subject_level": {m: r.scores["subject_level"] for m, r in refits.items() if r.scores.get("subject_level")},
        "test": {m: {k: v for k, v in r.scores.items() if k != "subject_level"} for m, r in refits.items()},
        "thresholds": {m: r.threshold for m, r in refits.items()},
        "trial_states": {**{k: int(v) for k, v in states.items()}, **({"RUNNING/WAITING": running} if running else {})},
        "n_test": int(len(next(iter(refits.values())).frame)) if refits else None,
        "classes": classes,
        "manifest_hash": config_json.get("manifest_hash"),
        "refit_epochs_rule": "median over folds of the epoch count whose weights CV kept",
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m automl.leaderboard --study NAME``: regenerate a study's leaderboard from its storage."""
    parser = argparse.ArgumentParser(
        prog="python -m automl.leaderboard",
        description="Regenerate <leaderboards>/<study>/ (tables, refits, test scores, leakage audit) from the "
                    "study's Optuna storage.")
    add_study_arguments(parser, positional=True)
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: the one in config.json)")
    parser.add_argument("--no-refit", dest="refit", action="store_false", help="do not train missing refits")
    parser.add_argument("--no-audit", dest="audit", action="store_false", help="do not run a missing leakage audit")
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)  # version 1's name of --leaderboards
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    if args.out is not None:
        args.leaderboards = args.out
    start_logging(args)
    folder = locate_study(parser, args)
    storage = args.storage
    try:
        if storage is not None and parse_storage_url(storage)[0] == "journal":
            storage = str(Path(parse_storage_url(storage)[1]).resolve())  # relative to the working folder
        path = write_leaderboard(folder.root, storage=storage, refit=args.refit, audit=args.audit)
    except (ValueError, OSError) as exc:
        return fail(exc)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
