"""Nested evaluation: the whole search repeated inside subject-grouped outer folds, every patient tested once.

The best of several cross-validated scores is optimistic (it was chosen for being high), and a small
cohort's single test part is a handful of patients. ``--outer-folds K`` estimates the *procedure*
(search, select, refit) with every subject instead::

    python -m automl.search --data DIR --study mine --preset cpu --outer-folds 5

What :func:`automl.search.run_search` does with ``SearchConfig.outer_folds = K``:

1. **Outer folds.** :func:`automl.split.outer_test_parts` splits the subjects once into ``K``
   label-stratified parts (``StratifiedGroupKFold`` on one row per subject, seeded by ``--seed``).
2. **Inner studies.** For each ``k``, :func:`inner_config` names a complete, ordinary study in
   ``<study>/outer/<k>/`` (its own journal, ``split.csv`` whose test part is exactly outer fold ``k``
   with the CV folds on the rest, leaderboard, refits, leakage audit) running the same search plan.
   Its winner is chosen inside the fold by its own CV (the architecture of its best trial,
   ``report.json`` ``best_model``); its test part, the outer fold, chooses nothing. Each inner study
   keeps its own ``study.journal`` (``--storage`` is the parent's); resuming the parent resumes each.
3. **Pooling** (:func:`pool_outer_folds`): each winner's test predictions, stacked, are ``nested.csv``
   (path, label, y, subject, outer_fold, model, prob_<class>); ``nested.json`` holds the estimate,
   computed with the study's own statistics on the pooled frame:

   * patients: each fold's slices become one patient score with the rule that fold chose on its
     out-of-fold predictions; the pooled patient scores give the patient-level AUC (and Brier score),
     an interval from the bootstrap over patients (:func:`automl.uncertainty.cluster_bootstrap`);
     sensitivity, specificity and accuracy count each patient's decision at its fold's own threshold
     (chosen on that fold's calibration part), with the same resamples.
   * slices: pooled AUC, Brier score and ECE with the cluster bootstrap over patients.
   * the verdict sentence (:func:`automl.verdict.verdict_sentence`), the per-fold winners with their
     inner CV scores (the selection scores) and per-fold test AUCs (and their mean), ``K`` and the method.

   Pooling the scores of ``K`` different models assumes comparable scales (the usual caveat of pooled
   cross-validation): where the scale moves between folds the pooled AUC differs from the folds' own;
   ``per_fold_mean`` and the per-fold figures show that spread.
4. **The parent study** then runs as an ordinary study (its own split, ``--test-size``): its winner
   is the model to use, and its ``leaderboard.md`` / ``report.json`` lead with the nested estimate
   (``headline_evaluation: "nested"``). ``--timeout`` and ``--n-trials`` apply to each study.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from automl.config import SearchConfig
from automl.metrics import aggregate_by_subject, binary_metrics_at_threshold
from automl.scoring import N_BOOT, UNIT
from automl.study import StudyFolder, probability_columns
from automl.uncertainty import cluster_bootstrap
from automl.verdict import Headline, small_cohort_warning, verdict_sentence
from data._files import (
    atomic_write_csv,
    atomic_write_json,
    json_clean,
    read_json_object,
)

__all__ = ["NESTED_COLUMNS", "headline_text", "inner_config", "inner_configs", "method_text", "pool_outer_folds"]

logger = logging.getLogger(__name__)

#: Columns of ``nested.csv`` before the ``prob_<class>`` columns.
NESTED_COLUMNS = ("path", "label", "y", "subject", "outer_fold", "model")


def method_text(outer_folds: int) -> str:
    """``"nested subject-grouped CV, K outer folds"``: the ``method`` of ``nested.json``."""
    return f"nested subject-grouped CV, {int(outer_folds)} outer folds"


def headline_text(outer_folds: int) -> str:
    """The line saying which evaluation produced a study's headline."""
    return f"Headline: nested evaluation over {int(outer_folds)} outer folds (every {UNIT} tested once)"


# ---------------------------------------------------------------------------------------------------- inner studies


def inner_config(config: SearchConfig, k: int) -> SearchConfig:
    """Inner study ``k``'s configuration: the parent's, in ``<study>/outer/<k>/``, outer fold ``k`` as its test part.

    Its storage is the inner folder's own ``study.journal`` (the study names ``0``, ``1``, ... would
    collide in a shared storage).
    """
    if config.outer_folds is None or config.outer_fold is not None:
        raise ValueError(f"inner_config needs a parent configuration with outer_folds, got outer_folds="
                         f"{config.outer_folds!r}, outer_fold={config.outer_fold!r}")
    folder = StudyFolder(config.study_dir).outer_study(int(k))
    values = {**config.to_dict(), "study": folder.name, "leaderboards": str(folder.root.parent), "outer_fold": int(k),
              "storage": None}
    return SearchConfig.from_dict(values)


def inner_configs(config: SearchConfig) -> list[SearchConfig]:
    """Every inner study's configuration, after checking that existing ones used the same ``--outer-folds``.

    Raises:
        ValueError: An inner study on disk was made with another number of outer folds.
    """
    inner = [inner_config(config, k) for k in range(int(config.outer_folds))]
    outer_dir = StudyFolder(config.study_dir).outer_dir
    found = sorted(p for p in outer_dir.iterdir() if (p / "config.json").is_file()) if outer_dir.is_dir() else []
    for path in found:
        previous = StudyFolder(path).read_config().get("outer_folds")
        if previous != config.outer_folds:
            raise ValueError(f"--study {config.study_name!r} holds a nested evaluation with --outer-folds {previous} "
                             f"({path}); use --outer-folds {previous} or a new --study name")
    return inner


# ---------------------------------------------------------------------------------------------------- pooling


def _winner_of(folder: StudyFolder, k: int, classes: list[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Outer fold ``k``'s winner: its test predictions (``outer_fold``, ``model`` added) and its record."""
    report = read_json_object(folder.report_path, missing=f"outer fold {k}: {folder.report_path} is missing; "
                                                          "re-run the same command to resume the nested evaluation")
    winner = report.get("best_model")
    path = folder.test_predictions_path(winner) if winner else folder.report_path
    if not winner or not path.is_file():
        raise ValueError(f"outer fold {k}: the winner {winner!r} of {folder.root} was not scored on its test part "
                         f"({path.name} missing); re-run the same command to resume the nested evaluation")
    frame = pd.read_csv(path)
    frame.insert(4, "outer_fold", k)
    frame.insert(5, "model", winner)
    frame = frame[[*NESTED_COLUMNS, *probability_columns(classes)]]
    rules = (report.get("subject_rules") or {}).get(winner) or {}
    rule, threshold, source = rules.get("rule"), rules.get("threshold"), rules.get("threshold_source") or ""
    if rule is None:  # no rule could be chosen on the out-of-fold predictions: the mean, the slice threshold
        rule, threshold, source = "mean", (report.get("thresholds") or {}).get(winner), "slice threshold"
    if len(classes) == 2 and threshold is None:
        threshold, source = 0.5, "0.5 (none recorded)"
    subject_auc = ((((report.get("headline") or {}).get(winner) or {}).get("subject") or {}).get("auc") or {})
    record = {
        "outer_fold": k, "study": f"{folder.root.parent.name}/{folder.name}", "winner": winner,
        "winner_trial": report.get("best_trial"), "inner_cv_auc": report.get("best_cv_auc"),
        "selection": (report.get("selection") or {}).get("label"), "subject_rule": rule,
        "subject_threshold": threshold, "threshold_source": source,
        "test_auc": ((report.get("test") or {}).get(winner) or {}).get("auc"),
        "subject_auc": subject_auc.get("estimate"),
        "n_subjects": (report.get("test_cohort") or {}).get("n_subjects"), "n_images": len(frame),
    }
    return frame, record


def _check_coverage(folders: list[StudyFolder], frames: list[pd.DataFrame]) -> None:
    """Every image in exactly one outer test part, and each part the test part of its inner study's split."""
    everything: set[str] | None = None
    seen: set[str] = set()
    for k, (folder, frame) in enumerate(zip(folders, frames)):
        split = pd.read_csv(folder.split_path)
        paths = set(split["path"].astype(str))
        everything = paths if everything is None else everything
        if paths != everything:
            raise ValueError(f"outer fold {k}: {folder.split_path} lists other images than outer fold 0's split")
        test = set(frame["path"].astype(str))
        if test != set(split.loc[split["part"] == "test", "path"].astype(str)):
            raise ValueError(f"outer fold {k}: the winner's test predictions are not its split's test part")
        if test & seen:
            raise ValueError(f"outer fold {k}: images tested in an earlier outer fold too")
        seen |= test
    if everything is not None and seen != everything:
        raise ValueError(f"the outer test parts miss {len(everything - seen)} image(s): not every subject was tested")


def _patients(frame: pd.DataFrame, records: list[dict[str, Any]], classes: list[str]) -> pd.DataFrame:
    """One row per patient: scores aggregated with its fold's rule, decision at its fold's threshold."""
    cols = probability_columns(classes)
    parts = []
    for record in records:
        fold = frame[frame["outer_fold"] == record["outer_fold"]]
        agg = aggregate_by_subject(fold[["subject", "y", *cols]], how=record["subject_rule"])
        if len(classes) == 2:
            agg["decision"] = (agg[cols[1]].to_numpy(dtype=float) >= float(record["subject_threshold"])).astype(int)
        parts.append(agg.assign(outer_fold=record["outer_fold"]))
    return pd.concat(parts, ignore_index=True)


def _estimate(frame: pd.DataFrame, patients: pd.DataFrame, records: list[dict[str, Any]], classes: list[str], *,
              seed: int, n_boot: int) -> Headline:
    """The nested estimate as a :class:`automl.verdict.Headline`: patients first, slices second."""
    cols = probability_columns(classes)
    options = {"n_boot": n_boot, "seed": seed, "classes": list(classes)}
    ys, Ps = patients["y"].to_numpy(dtype=int), patients[cols].to_numpy(dtype=float)
    counts: dict[str, int] = {}
    if len(classes) == 2:
        scores = cluster_bootstrap(ys, Ps, None, metrics=("auc", "brier"), **options)
        decision = patients["decision"].to_numpy(dtype=float)
        decided = cluster_bootstrap(ys, np.c_[1 - decision, decision], None,
                                    metrics=("sensitivity", "specificity", "accuracy"), threshold=0.5, **options)
        subject = {"auc": scores["auc"], **decided, "brier": scores["brier"]}
        m = binary_metrics_at_threshold(ys, decision, 0.5)
        counts = {k: int(m[k]) for k in ("tp", "fn", "tn", "fp")}
    else:
        subject = cluster_bootstrap(ys, Ps, None, metrics=("auc", "accuracy", "brier"), **options)
    slices = cluster_bootstrap(frame["y"].to_numpy(dtype=int), frame[cols].to_numpy(dtype=float),
                               frame["subject"].astype(str).to_numpy(), metrics=("auc", "brier", "ece"), **options)
    rules = {r["subject_rule"] for r in records}
    winners = Counter(r["winner"] for r in records)
    if len(winners) == 1:
        name = f"nested estimate (winner {next(iter(winners))} in every outer fold)"
    else:
        name = "nested estimate (winners: " + ", ".join(f"{m} ×{n}" for m, n in winners.most_common()) + ")"
    n_subjects = subject["auc"].n_subjects
    return Headline(model=name, rule=rules.pop() if len(rules) == 1 else "per outer fold", threshold=None,
                    classes=list(classes), subject=subject, counts=counts, slice=slices, n_subjects=n_subjects,
                    n_images=slices["auc"].n_images, warning=small_cohort_warning(n_subjects, unit=UNIT))


def _per_fold_mean(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """The mean over outer folds of each fold's own test AUCs (the other usual nested-CV summary)."""
    out: dict[str, float | None] = {}
    for key in ("subject_auc", "test_auc"):
        values = [float(r[key]) for r in records if r.get(key) is not None and np.isfinite(float(r[key]))]
        out[key] = float(np.mean(values)) if values else None
    return out


def pool_outer_folds(study_dir: str | Path, *, outer_folds: int, seed: int = 0, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Pool the outer folds' winners into ``nested.csv`` and the nested estimate into ``nested.json``.

    Args:
        study_dir: The parent study folder, holding ``outer/0`` ... ``outer/<K-1>``.
        outer_folds: ``K``.
        seed: Seed of the bootstrap.
        n_boot: Resamples of every interval.

    Returns:
        The content of ``nested.json``.

    Raises:
        ValueError: An inner study is missing or unscored, or the outer test parts do not cover every
            image exactly once; the message names the fold.
    """
    parent = StudyFolder(Path(study_dir))
    folders = [parent.outer_study(k) for k in range(int(outer_folds))]
    configs = [f.read_config() for f in folders]
    classes = [str(c) for c in configs[0]["classes"]]
    if any([str(c) for c in cfg["classes"]] != classes for cfg in configs):
        raise ValueError(f"the inner studies of {parent.root} disagree on the classes")
    pairs = [_winner_of(folder, k, classes) for k, folder in enumerate(folders)]
    frames, records = [p[0] for p in pairs], [p[1] for p in pairs]
    _check_coverage(folders, frames)
    frame = pd.concat(frames, ignore_index=True)
    estimate = _estimate(frame, _patients(frame, records, classes), records, classes, seed=seed, n_boot=n_boot)
    clause = f"{method_text(outer_folds)}, every {UNIT} tested once"
    payload = {
        "method": method_text(outer_folds), "outer_folds": int(outer_folds),
        "headline": headline_text(outer_folds),
        "verdict": verdict_sentence(estimate, {}, unit=UNIT, no_comparison=clause),
        "estimate": estimate.to_dict(), "folds": records, "per_fold_mean": _per_fold_mean(records),
        "winners": dict(Counter(r["winner"] for r in records)), "classes": classes,
        "n_subjects": estimate.n_subjects, "n_images": estimate.n_images,
        "selection": "each outer fold's winner: the architecture of its best inner-CV trial (its selection "
                     "score); the outer fold, its test part, chose nothing",
        "pooling": f"{UNIT}s: each fold's subject rule (chosen on its out-of-fold predictions) and threshold "
                   "(chosen on its calibration part); slices: the winners' probabilities pooled",
        "manifest_hash": configs[0].get("manifest_hash"), "seed": int(seed), "n_boot": int(n_boot),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    parent.root.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(frame, parent.nested_csv)
    atomic_write_json(json_clean(payload, default=str), parent.nested_json)
    logger.info("nested estimate (%s): %s", payload["method"], payload["verdict"])
    return payload
