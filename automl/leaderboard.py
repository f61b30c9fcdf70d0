"""The leaderboard of a study, regenerated from the Optuna storage (the single source of truth).

Run it::

    python -m automl.leaderboard phantom_demo                 # leaderboards/phantom_demo/
    python -m automl.leaderboard path/to/study_dir --no-refit # tables only, no training

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
4. **Test part, scored once**: AUC with a stratified bootstrap 95% CI, accuracy, balanced accuracy,
   sensitivity, specificity, precision, F1, Brier, ECE at that threshold; paired DeLong test of each
   refitted model against the best one (the architecture of the best CV trial); subject-level AUC
   (slice probabilities averaged, or maxed, per subject) when subjects have several slices.
   Multiclass: macro one-vs-rest AUC; the other metrics at the arg-max class (sensitivity, precision,
   F1 macro-averaged over classes, specificity the macro mean of one-vs-rest specificities); no
   threshold and no DeLong test.
5. **Leakage audit** (see :func:`leakage_audit`).
6. ``leaderboard.csv``, ``leaderboard.md``, ``report.json``.

Every number can be recomputed with scikit-learn from ``predictions/*.csv`` (the tests do).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from automl import metrics
from automl._progress import Progress, setup_logging

logger = logging.getLogger(__name__)

__all__ = [
    "LEADERBOARD_COLUMNS",
    "LEAKAGE_GAP",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "cli_error_message",
    "prediction_frame",
    "trials_table",
    "leakage_audit",
    "write_leaderboard",
    "main",
]

#: Slice-level minus grouped CV AUC above which the leakage audit raises its flag.
LEAKAGE_GAP = 0.05

LEADERBOARD_COLUMNS = [
    "rank", "trial", "model", "init", "train_precision", "lr", "batch_size", "weight_decay", "finetune",
    "cv_auc_mean", "cv_auc_std", "cv_auc_folds",
    "test_auc", "test_auc_ci_low", "test_auc_ci_high", "test_accuracy", "test_balanced_accuracy",
    "test_sensitivity", "test_specificity", "test_precision", "test_f1", "test_brier", "test_ece",
    "delong_p", "subject_auc_mean", "subject_auc_max",
    "threshold", "fit_seconds", "state", "refit", "params",
    "aug_strength", "epochs", "refit_epochs", "error", "retry_of",
]
_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2}
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# ======================================================================================================
# atomic writes
# ======================================================================================================


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    Raises:
        OSError: The file cannot be written (disk full, read-only file system, permissions). The
            message names the file, ``cannot write <path>: <reason>``, the ``errno`` is kept, and
            the temporary file is removed; ``path`` itself is left as it was.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}", str(path)) from exc
        raise
    return path


def atomic_write_json(payload: Any, path: str | Path) -> Path:
    """Write JSON atomically (``NaN`` becomes ``null``, so the file stays valid JSON)."""
    return atomic_write_text(json.dumps(_json_clean(payload), indent=2, sort_keys=False) + "\n", path)


def atomic_write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame as CSV atomically (no index)."""
    return atomic_write_text(frame.to_csv(index=False, lineterminator="\n"), path)


def _json_clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_clean(v) for v in value.tolist()]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


@contextlib.contextmanager
def _locked(study_dir: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``<study_dir>/.leaderboard.lock`` (no-op where fcntl is missing)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    handle = open(study_dir / ".leaderboard.lock", "a+")  # noqa: SIM115
    try:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows
            pass
        yield
    finally:
        handle.close()


# ======================================================================================================
# trial table
# ======================================================================================================


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


# ======================================================================================================
# scoring
# ======================================================================================================


def _prob_columns(classes: Sequence[str]) -> list[str]:
    return [f"prob_{c}" for c in classes]


def choose_threshold(y: np.ndarray, p: np.ndarray, target_sensitivity: float | None) -> tuple[float, str]:
    """Threshold on held-out positive-class probabilities: Youden's J or a target sensitivity."""
    if target_sensitivity is None:
        return float(metrics.youden_threshold(y, p)), "youden"
    return float(metrics.threshold_for_sensitivity(y, p, target_sensitivity)), f"sensitivity>={target_sensitivity:g}"


def score_predictions(y: np.ndarray, P: np.ndarray, threshold: float | None, *, seed: int = 0) -> dict[str, float]:
    """Test metrics of one model (see the module docstring for the multiclass conventions)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        out: dict[str, float] = {"auc": metrics.roc_auc(y, P)}
        out["auc_ci_low"], out["auc_ci_high"] = metrics.bootstrap_auc_ci(y, P, n_boot=2000, seed=seed)
        out["brier"] = metrics.brier_score(y, P if P.shape[1] > 2 else P[:, 1])
        out["ece"] = metrics.expected_calibration_error(y, P if P.shape[1] > 2 else P[:, 1])
        if P.shape[1] == 2:
            m = metrics.binary_metrics_at_threshold(y, P[:, 1], float(threshold))
            out.update({k: float(m[k]) for k in ("accuracy", "balanced_accuracy", "sensitivity", "specificity",
                                                 "precision", "f1")})
            out.update({k: int(m[k]) for k in ("tp", "fp", "tn", "fn")})
        else:
            from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

            pred = P.argmax(axis=1)
            labels = list(range(P.shape[1]))
            precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=labels, average="macro",
                                                                       zero_division=np.nan)
            cm = confusion_matrix(y, pred, labels=labels)
            spec = []
            for c in labels:
                tn = cm.sum() - cm[c, :].sum() - cm[:, c].sum() + cm[c, c]
                fp = cm[:, c].sum() - cm[c, c]
                spec.append(tn / (tn + fp) if tn + fp else math.nan)
            out.update(accuracy=float((pred == y).mean()), balanced_accuracy=float(balanced_accuracy_score(y, pred)),
                       sensitivity=float(recall), specificity=float(np.nanmean(spec)), precision=float(precision),
                       f1=float(f1))
    return out


def subject_level(frame: pd.DataFrame, classes: Sequence[str], threshold: float | None) -> dict[str, Any] | None:
    """Subject-level metrics (mean and max aggregation) when some subject has several slices."""
    if frame.groupby("subject").size().max() <= 1:
        return None
    out: dict[str, Any] = {}
    for how in ("mean", "max"):
        agg = metrics.aggregate_by_subject(frame[["subject", "y", *_prob_columns(classes)]], how=how)
        P = agg[_prob_columns(classes)].to_numpy(dtype=float)
        ys = agg["y"].to_numpy(dtype=int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
            entry: dict[str, Any] = {"auc": metrics.roc_auc(ys, P), "n_subjects": int(len(agg))}
            if len(classes) == 2 and threshold is not None:
                m = metrics.binary_metrics_at_threshold(ys, P[:, 1], float(threshold))
                entry.update({k: m[k] for k in ("sensitivity", "specificity", "accuracy", "balanced_accuracy")})
        out[how] = entry
    return out


# ======================================================================================================
# data, refit, audit
# ======================================================================================================


class _LazyContext:
    """Builds the search's :class:`DataContext` only when a refit or the audit needs the images."""

    def __init__(self, config: Any, config_json: dict[str, Any], ctx: Any = None) -> None:
        self.config = config
        self.config_json = config_json
        self._ctx = ctx

    def get(self) -> Any:
        if self._ctx is None:
            from automl.search import prepare_data, resolve_data_dir

            data_dir = Path(self.config_json.get("data_dir") or "")
            if not data_dir.is_dir():
                if self.config_json.get("data"):
                    raise ValueError(f"the study's data folder {data_dir} is gone; cannot refit (use --no-refit)")
                data_dir = resolve_data_dir(self.config)  # the phantom is regenerated deterministically
            ctx = prepare_data(self.config, data_dir=data_dir)
            expected = self.config_json.get("manifest_hash")
            if expected and ctx.manifest.hash != expected:
                raise ValueError(
                    f"the data in {data_dir} changed since the study ran (manifest hash {ctx.manifest.hash} != "
                    f"{expected}); cannot refit. Use --no-refit, or restore the data"
                )
            self._ctx = ctx
        return self._ctx


def _train_config(trial: optuna.trial.FrozenTrial, **overrides: Any) -> Any:
    from automl.train import TrainConfig

    stored = dict(trial.user_attrs.get("train_config") or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return dataclasses.replace(TrainConfig(**{k: v for k, v in stored.items() if k in names}), **overrides)


def refit_epochs(trial: optuna.trial.FrozenTrial) -> int:
    """Epochs for the refit: the median over folds of the epoch count whose weights CV kept."""
    best = [int(e) for e in trial.user_attrs.get("best_epochs", []) or []]
    if best:
        return max(1, int(round(float(np.median(best)))))
    tc = trial.user_attrs.get("train_config") or {}
    return int(tc.get("epochs") or 1)


def predict_proba(model: Any, X: np.ndarray, *, num_classes: int, batch_size: int = 64) -> np.ndarray:
    """Class probabilities ``(N, C)`` of a fitted model (deep or classical) on uint8 images ``(N, S, S)``.

    Deep models get exactly what ``fit_fold`` fed them: float ``(B, 1, S, S)`` in [0, 1]; the logits
    become probabilities with :func:`models.logits_to_probabilities`.
    """
    import torch

    import models as model_zoo

    if not isinstance(model, torch.nn.Module):
        return np.asarray(model.predict_proba(X), dtype=float)
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(X), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(X[i:i + batch_size])).to(device).float().div_(255.0).unsqueeze(1)
            out.append(model_zoo.logits_to_probabilities(model(x), num_classes).float().cpu().numpy())
    return np.concatenate(out).astype(float) if out else np.zeros((0, num_classes))


def _refit_one(trial: optuna.trial.FrozenTrial, ctx: Any, config: Any, study_dir: Path,
               config_json: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, float | None, str]:
    """Fit the final model of one configuration, save its predictor, choose its threshold.

    The model trains on the first CV fold's training part and its decision threshold is chosen on
    that fold's validation part (the **calibration part**: subject-grouped, stratified, 1/K of the CV
    data), with the final model's own probabilities. A threshold must come from the model that uses
    it: a network's probability scale changes from fit to fit (in a 3-epoch demo the fold models'
    out-of-fold probabilities had a median of 0.41 and a refit on all CV data gave the test images a
    median of 0.58, so the out-of-fold Youden threshold called every test image "stroke").

    Returns:
        ``(test predictions, calibration-part predictions, threshold, threshold method)``.
    """
    import models as model_zoo
    from automl import train

    model_name = trial.params["model"]
    epochs = refit_epochs(trial)
    overrides: dict[str, Any] = {}
    if trial.user_attrs.get("init") == "imagenet":
        # the CV fits started from ImageNet weights: so must the refit (fail loudly, never fall back)
        overrides["pretrained"] = "yes"
        if getattr(config, "weights_dir", None):
            overrides["weights_dir"] = config.weights_dir
    tc = _train_config(trial, epochs=epochs, patience=None, **overrides)
    split = ctx.split
    test = split.test_index
    fit_index, calibration = split.folds[0]
    t0 = time.perf_counter()
    # as in CV, the epoch whose weights are kept is the best one on the held-out (calibration) part;
    # the test part is never seen before it is scored
    result = train.fit_fold(ctx.X[fit_index], ctx.y[fit_index], ctx.X[calibration], ctx.y[calibration], config=tc,
                            num_classes=ctx.num_classes, report=None)
    P_calibration = predict_proba(result.model, ctx.X[calibration], num_classes=ctx.num_classes)
    calibration_frame = prediction_frame(ctx, calibration, P_calibration)
    threshold, threshold_method = _calibration_threshold(calibration_frame, ctx.classes, config.target_sensitivity)
    P = predict_proba(result.model, ctx.X[test], num_classes=ctx.num_classes)
    frame = prediction_frame(ctx, test, P)
    folder = study_dir / "models" / model_name
    card = {
        "classes": list(ctx.classes),
        "window": config.window,
        "train_config": json.loads(json.dumps(dataclasses.asdict(tc), default=str)),
        "metrics": {"cv_auc_mean": trial.value, "cv_auc_std": float(np.std(trial.user_attrs.get("cv_auc_folds", [0]))),
                    "cv_auc_folds": trial.user_attrs.get("cv_auc_folds", [])},
        "threshold": threshold,
        "threshold_method": threshold_method,
        "manifest_hash": config_json.get("manifest_hash"),
        "versions": config_json.get("versions", {}),
        "study": config_json.get("study_name"),
        "trial": trial.number,
        "refit_epochs": epochs,
    }
    model_zoo.save_checkpoint(result.model, folder, card=card)
    atomic_write_json({
        "study": config_json.get("study_name"),
        "trial": trial.number,
        "params": trial.params,
        "refit_epochs": epochs,
        "refit_images": int(len(fit_index)),
        "calibration_images": int(len(calibration)),
        "refit_seconds": time.perf_counter() - t0,
        "train_config": card["train_config"],
        "search_config": {k: config_json.get(k) for k in ("preset", "folds", "test_size", "image_size", "seed",
                                                          "group_by", "window", "data_dir")},
        "manifest_hash": config_json.get("manifest_hash"),
        "versions": config_json.get("versions", {}),
    }, folder / "config.json")
    return frame, calibration_frame, threshold, threshold_method


def _calibration_threshold(calibration: pd.DataFrame, classes: Sequence[str],
                          target_sensitivity: float | None) -> tuple[float | None, str]:
    """The decision threshold of a final model from its calibration-part predictions (``None``, "argmax"
    for multiclass); see :func:`choose_threshold`."""
    if len(classes) != 2:
        return None, "argmax"
    p = calibration[_prob_columns(classes)].to_numpy(dtype=float)[:, 1]
    return choose_threshold(calibration["y"].to_numpy(dtype=int), p, target_sensitivity)


def prediction_frame(ctx: Any, index: np.ndarray, P: np.ndarray, *, fold: np.ndarray | None = None) -> pd.DataFrame:
    """Predictions of the manifest rows ``index``: path, label, y, subject, [fold], ``prob_<class>``.

    The layout of every file under ``predictions/`` (out-of-fold, calibration part, test part).
    """
    table = ctx.manifest.table
    columns = {
        "path": table["path"].to_numpy()[index],
        "label": table["label"].to_numpy()[index],
        "y": ctx.y[index],
        "subject": table["subject"].astype(str).to_numpy()[index],
    }
    if fold is not None:
        columns["fold"] = fold
    frame = pd.DataFrame(columns)
    for c, name in enumerate(ctx.classes):
        frame[f"prob_{name}"] = P[:, c]
    return frame


def _update_card(folder: Path, **fields: Any) -> None:
    """Write the chosen threshold and test metrics into ``card.json`` (atomically)."""
    path = folder / "card.json"
    if not path.is_file():
        return
    card = json.loads(path.read_text(encoding="utf-8"))
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    atomic_write_json(card, path)


def leakage_audit(ctx: Any, config: Any, trial: optuna.trial.FrozenTrial, method: str) -> dict[str, Any]:
    """Grouped versus slice-level CV AUC of the winning configuration.

    The same CV rows are split twice: the study's subject-grouped folds, and slice-level
    ``StratifiedKFold`` folds that ignore subjects (what a careless study would do). A model that
    recognises subjects scores higher on the slice-level folds; a gap above :data:`LEAKAGE_GAP` AUC is
    flagged. Both numbers come from the same cheap fit, so the gap is apples to apples:

    * ``method="probe"``: a logistic-regression linear probe on down-sampled pixels (the registry's
      ``logreg``, ``C=1``): seconds, independent of the winner.
    * ``method="model"``: the winning configuration itself, with half its epochs (at least 1).

    Returns:
        ``{"method", "model", "epochs", "grouped_auc", "slice_auc", "gap", "flagged", "threshold",
        "grouped_folds", "slice_folds", "trial", "seconds", "description"}``.
    """
    from automl import train
    from automl.split import slice_level_folds

    t0 = time.perf_counter()
    if method == "probe":
        from automl.train import TrainConfig

        tc = TrainConfig(model="logreg", C=1.0, seed=config.seed, pretrained="no", epochs=1)
        description = "logistic-regression linear probe on down-sampled pixels, C=1"
    else:
        epochs = max(1, math.ceil(int((trial.user_attrs.get("train_config") or {}).get("epochs") or config.epochs) / 2))
        tc = _train_config(trial, epochs=epochs, patience=None)
        description = f"the winning configuration (trial {trial.number}, {tc.model}) with {epochs} epoch(s)"
    result: dict[str, Any] = {"method": method, "model": tc.model, "epochs": int(tc.epochs), "trial": trial.number,
                              "threshold": LEAKAGE_GAP, "description": description}
    for name, folds in (("grouped", ctx.split.folds), ("slice", slice_level_folds(ctx.split))):
        aucs = []
        for tr, va in folds:
            fit = train.fit_fold(ctx.X[tr], ctx.y[tr], ctx.X[va], ctx.y[va], config=tc, num_classes=ctx.num_classes)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
                aucs.append(float(metrics.roc_auc(ctx.y[va], np.asarray(fit.val_probabilities, dtype=float))))
        result[f"{name}_folds"] = aucs
        result[f"{name}_auc"] = float(np.nanmean(aucs))
    result["gap"] = result["slice_auc"] - result["grouped_auc"]
    result["flagged"] = bool(result["gap"] > LEAKAGE_GAP)
    result["seconds"] = time.perf_counter() - t0
    logger.info("leakage audit (%s): grouped AUC %.3f, slice-level AUC %.3f, gap %+.3f%s", method,
                result["grouped_auc"], result["slice_auc"], result["gap"], "  <-- FLAGGED" if result["flagged"] else "")
    return result


# ======================================================================================================
# the whole thing
# ======================================================================================================


def _open_study(study_dir: Path, config_json: dict[str, Any], storage: Any = None) -> optuna.Study:
    name = config_json.get("study_name") or config_json.get("study") or study_dir.name
    if storage is None:
        url = config_json.get("storage_url") or "study.journal"
        if "://" in url:
            storage = url
        else:
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            path = Path(url) if Path(url).is_absolute() else study_dir / url
            if not path.is_file():
                raise ValueError(f"the study's journal {path} is missing")
            storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_lr(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):.1e}"


def _markdown(table: pd.DataFrame, report: dict[str, Any], config_json: dict[str, Any]) -> str:
    lines = [f"# Leaderboard: {config_json.get('study_name')}", ""]
    audit = report.get("leakage_audit")
    if audit:
        flag = "⚠️ **LEAKAGE SUSPECTED**" if audit.get("flagged") else "✅ no leakage signal"
        lines += [
            f"> **Leakage audit** ({audit.get('description')}): subject-grouped CV AUC "
            f"**{_fmt(audit.get('grouped_auc'))}** vs slice-level CV AUC **{_fmt(audit.get('slice_auc'))}** "
            f"(gap {_fmt(audit.get('gap'))}, flag above {LEAKAGE_GAP}): {flag}.",
        ]
        if audit.get("flagged"):
            lines.append("> A slice-level split would overstate this model: slices of one patient resemble each "
                         "other, so it would be scored on patients it has already seen. The grouped numbers "
                         "below are the honest ones.")
        lines.append("")
    n_img, n_sub = config_json.get("n_images"), config_json.get("n_subjects")
    lines += [
        f"Data: `{config_json.get('data_dir')}` — {n_img} images, {n_sub} subjects "
        f"(grouping: {config_json.get('subject_source')}), classes {config_json.get('classes')}. "
        f"Split: {config_json.get('folds')}-fold subject-grouped CV + untouched test part "
        f"({config_json.get('test_size')}). Image size {config_json.get('image_size')} px, seed {config_json.get('seed')}.",
        "",
        f"Trials: {report.get('trial_states')}. Best model: **{report.get('best_model')}** "
        f"(trial {report.get('best_trial')}). Threshold: {report.get('threshold_method')} on the final model's "
        "calibration part (held-out CV images).",
        "",
    ]
    refits = table[table["refit"]]
    if not refits.empty:
        lines += ["## Refitted best per architecture, scored once on the test part", "",
                  "| model | init | CV AUC | test AUC [95% CI] | sens | spec | F1 | Brier | ECE | DeLong p vs best | subject AUC (mean/max) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in refits.sort_values("test_auc", ascending=False).iterrows():
            lines.append(
                f"| {r['model']} | {_fmt(r['init']) if isinstance(r['init'], str) else '–'} | {_fmt(r['cv_auc_mean'])} ± {_fmt(r['cv_auc_std'])} | "
                f"{_fmt(r['test_auc'])} [{_fmt(r['test_auc_ci_low'])}, {_fmt(r['test_auc_ci_high'])}] | "
                f"{_fmt(r['test_sensitivity'])} | {_fmt(r['test_specificity'])} | {_fmt(r['test_f1'])} | "
                f"{_fmt(r['test_brier'])} | {_fmt(r['test_ece'])} | {_fmt(r['delong_p'])} | "
                f"{_fmt(r['subject_auc_mean'])} / {_fmt(r['subject_auc_max'])} |")
        lines.append("")
    lines += ["## All trials (ranked by mean CV AUC; pruned trials show the folds they finished)", "",
              "| rank | trial | model | init | lr | batch | CV AUC | ± | folds | state | fit s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['rank']} | {r['trial']} | {r['model']} | {_fmt(r['init']) if isinstance(r['init'], str) else '–'} | {_fmt_lr(r['lr'])} | "
            f"{_fmt(int(r['batch_size'])) if pd.notna(r['batch_size']) else '–'} | {_fmt(r['cv_auc_mean'])} | "
            f"{_fmt(r['cv_auc_std'])} | {r['cv_auc_folds']} | {r['state']} | {_fmt(r['fit_seconds'], 1)} |")
    lines += ["", "Not for clinical use: a research tool comparing classifiers; its numbers describe this data set only.", ""]
    return "\n".join(lines)


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
        study_dir: ``<out>/<study>/`` holding ``config.json`` (written by the search).
        storage: Optuna storage (object or URL); default: the one named in ``config.json``.
        ctx: The search's ``DataContext`` when already loaded (else loaded if a refit needs it).
        progress: Progress reporter for refit events.
        refit: Refit and score models whose refit is not on disk yet. ``False`` still scores
            refits already on disk.
        audit: Run the leakage audit when ``report.json`` holds none for the current winner.

    Raises:
        ValueError: Missing ``config.json`` or journal, or changed data when a refit is needed.
    """
    from automl.search import SearchConfig

    study_dir = Path(study_dir)
    config_path = study_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{config_path} is missing: is {study_dir} a study folder written by automl.search?")
    config_json = json.loads(config_path.read_text(encoding="utf-8"))
    values = {**config_json, "out": str(study_dir.parent), "study": config_json.get("study_name")}
    if values.get("data") and not Path(values["data"]).is_dir():
        values["data"] = None  # only needed for a refit, which then reports the missing folder
    if values.get("weights_dir") and not Path(values["weights_dir"]).is_dir():
        values["weights_dir"] = None  # only needed for a refit of an ImageNet-initialised trial (which then fails)
    config = SearchConfig.from_dict(values)
    classes = list(config_json["classes"])
    lazy = _LazyContext(config, config_json, ctx)
    with _locked(study_dir):
        study = _open_study(study_dir, config_json, storage)
        table = trials_table(study)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        pred_dir = study_dir / "predictions"
        pred_dir.mkdir(parents=True, exist_ok=True)
        # stale files of trials that did not complete (a worker killed after writing) are removed
        for f in pred_dir.glob("oof_trial_*.csv"):
            number = int(f.stem.rsplit("_", 1)[1])
            t = trials.get(number)
            if t is not None and t.state.is_finished() and t.state != TrialState.COMPLETE:
                f.unlink(missing_ok=True)

        complete = table[table["state"] == "COMPLETE"]
        best_rows = complete.sort_values("cv_auc_mean", ascending=False, kind="stable").drop_duplicates("model")
        best_trial_number = int(best_rows.iloc[0]["trial"]) if len(best_rows) else None
        old_report: dict[str, Any] = {}
        if (study_dir / "report.json").is_file():
            with contextlib.suppress(ValueError, OSError):
                old_report = json.loads((study_dir / "report.json").read_text(encoding="utf-8"))

        scored: dict[str, dict[str, Any]] = {}
        test_frames: dict[str, pd.DataFrame] = {}
        thresholds: dict[str, tuple[float | None, str]] = {}
        todo = list(best_rows.itertuples(index=False))
        for i, row in enumerate(todo):
            model, number = row.model, int(row.trial)
            trial = trials[number]
            folder = study_dir / "models" / model
            test_path, oof_path = pred_dir / f"test_{model}.csv", pred_dir / f"oof_{model}.csv"
            oof_trial = pred_dir / f"oof_trial_{number:04d}.csv"
            if not oof_trial.is_file():
                logger.warning("out-of-fold predictions of trial %d are missing; %s not scored", number, model)
                continue
            oof = pd.read_csv(oof_trial)
            calibration_path = pred_dir / f"calibration_{model}.csv"
            cached = False
            if ((folder / "config.json").is_file() and (folder / "card.json").is_file() and test_path.is_file()
                    and calibration_path.is_file()):
                with contextlib.suppress(ValueError, OSError):
                    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
                    cached = meta.get("trial") == number and meta.get("manifest_hash") == config_json.get("manifest_hash")
            if cached:
                frame, calibration = pd.read_csv(test_path), pd.read_csv(calibration_path)
                # recomputed from the saved predictions, so another --target-sensitivity needs no new fit
                thr, how = _calibration_threshold(calibration, classes, config.target_sensitivity)
            elif refit:
                if progress:
                    progress.refit(model, i, len(todo))
                ctx_now = lazy.get()  # a ValueError here (data changed or gone) stops regeneration
                try:
                    frame, calibration, thr, how = _refit_one(trial, ctx_now, config, study_dir, config_json)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - one failed refit must not lose the others
                    logger.exception("refit of %s (trial %d) failed: %s", model, number, exc)
                    continue
                atomic_write_csv(calibration, calibration_path)
                atomic_write_csv(frame, test_path)
            else:
                continue
            atomic_write_csv(oof, oof_path)
            thresholds[model] = (thr, how)
            P = frame[_prob_columns(classes)].to_numpy(dtype=float)
            y = frame["y"].to_numpy(dtype=int)
            scored[model] = score_predictions(y, P, thr, seed=config.seed)
            scored[model]["subject_level"] = subject_level(frame, classes, thr)
            test_frames[model] = frame

        best_model = None
        if best_trial_number is not None:
            best_model = trials[best_trial_number].params.get("model")
        delong: dict[str, Any] = {}
        if best_model in test_frames and len(classes) == 2:
            p_best = test_frames[best_model][f"prob_{classes[1]}"].to_numpy(dtype=float)
            y_best = test_frames[best_model]["y"].to_numpy(dtype=int)
            for model, frame in test_frames.items():
                if model == best_model:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
                    z, p = metrics.delong_test(y_best, frame[f"prob_{classes[1]}"].to_numpy(dtype=float), p_best)
                delong[model] = {"vs": best_model, "auc": scored[model]["auc"], "best_auc": scored[best_model]["auc"],
                                 "z": z, "p_value": p}

        # fill the refitted rows
        for model, s in scored.items():
            number = int(best_rows.loc[best_rows["model"] == model, "trial"].iloc[0])
            idx = table.index[table["trial"] == number][0]
            table.loc[idx, "refit"] = True
            for key in ("auc", "auc_ci_low", "auc_ci_high", "accuracy", "balanced_accuracy", "sensitivity",
                        "specificity", "precision", "f1", "brier", "ece"):
                table.loc[idx, f"test_{key}"] = s.get(key, math.nan)
            table.loc[idx, "threshold"] = thresholds[model][0] if thresholds[model][0] is not None else math.nan
            table.loc[idx, "delong_p"] = delong.get(model, {}).get("p_value", 1.0 if model == best_model and len(classes) == 2 else math.nan)
            sl = s.get("subject_level") or {}
            table.loc[idx, "subject_auc_mean"] = (sl.get("mean") or {}).get("auc", math.nan)
            table.loc[idx, "subject_auc_max"] = (sl.get("max") or {}).get("auc", math.nan)
            table.loc[idx, "refit_epochs"] = refit_epochs(trials[number])
            _update_card(study_dir / "models" / model, threshold=thresholds[model][0],
                         threshold_method=thresholds[model][1], metrics={f"test_{k}": v for k, v in s.items() if k != "subject_level"})
        table["refit"] = table["refit"].astype(bool)

        # leakage audit, reused while the winner and the data are unchanged
        # (kept in the study storage, the source of truth, and in report.json)
        leak = study.user_attrs.get("leakage_audit") or old_report.get("leakage_audit")
        if best_trial_number is not None and config.leakage_audit != "none":
            fresh = not (leak and leak.get("trial") == best_trial_number and leak.get("method") == config.leakage_audit
                         and leak.get("manifest_hash", config_json.get("manifest_hash")) == config_json.get("manifest_hash"))
            if fresh and audit:
                if progress:
                    progress.phase("audit", f"leakage audit ({config.leakage_audit})")
                ctx_now = lazy.get()
                try:
                    leak = leakage_audit(ctx_now, config, trials[best_trial_number], config.leakage_audit)
                    leak["manifest_hash"] = config_json.get("manifest_hash")
                    study.set_user_attr("leakage_audit", _json_clean(leak))
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001
                    logger.exception("leakage audit failed: %s", exc)
                    leak = None
            elif fresh:
                leak = None
        else:
            leak = None

        states = table["state"].value_counts().to_dict() if len(table) else {}
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)))
        report = {
            "study": config_json.get("study_name"),
            "best_model": best_model,
            "best_trial": best_trial_number,
            "best_cv_auc": float(trials[best_trial_number].value) if best_trial_number is not None else None,
            "threshold": thresholds.get(best_model, (None, ""))[0] if best_model else None,
            "threshold_method": (config.target_sensitivity and f"sensitivity>={config.target_sensitivity:g}")
                                or ("youden" if len(classes) == 2 else "argmax"),
            "leakage_audit": leak,
            "delong": delong,
            "subject_level": {m: s.get("subject_level") for m, s in scored.items() if s.get("subject_level")},
            "test": {m: {k: v for k, v in s.items() if k != "subject_level"} for m, s in scored.items()},
            "thresholds": {m: t for m, (t, _) in thresholds.items()},
            "trial_states": {**{k: int(v) for k, v in states.items()}, **({"RUNNING/WAITING": running} if running else {})},
            "n_test": int(len(next(iter(test_frames.values())))) if test_frames else None,
            "classes": classes,
            "manifest_hash": config_json.get("manifest_hash"),
            "refit_epochs_rule": "median over folds of the epoch count whose weights CV kept",
            "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_csv(table[LEADERBOARD_COLUMNS], study_dir / "leaderboard.csv")
        atomic_write_text(_markdown(table, report, config_json), study_dir / "leaderboard.md")
        atomic_write_json(report, study_dir / "report.json")
    logger.info("leaderboard: %d trials, %d refitted model(s), best %s -> %s", len(table), len(scored), best_model,
                study_dir / "leaderboard.csv")
    return study_dir / "leaderboard.csv"


# ======================================================================================================
# command line
# ======================================================================================================


def cli_error_message(exc: BaseException) -> str:
    """An error for the command line: an ``OSError`` as ``<reason>: <file>``, anything else its message."""
    if isinstance(exc, OSError) and exc.strerror:
        message = str(exc.strerror)
        if exc.filename is not None and str(exc.filename) not in message:
            message += f": {exc.filename}"
        return message
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m automl.leaderboard STUDY``: regenerate a study's leaderboard from its storage."""
    parser = argparse.ArgumentParser(
        prog="python -m automl.leaderboard",
        description="Regenerate leaderboards/<study>/ (tables, refits, test scores, leakage audit) from the "
                    "study's Optuna storage.")
    parser.add_argument("study", help="study name (under --out) or path to a study folder")
    parser.add_argument("--out", default="leaderboards", help="parent folder of study folders")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: the one in config.json)")
    parser.add_argument("--no-refit", dest="refit", action="store_false", help="do not train missing refits")
    parser.add_argument("--no-audit", dest="audit", action="store_false", help="do not run a missing leakage audit")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    study_dir = Path(args.study)
    if not (study_dir / "config.json").is_file():
        study_dir = Path(args.out) / args.study
    if not (study_dir / "config.json").is_file():
        parser.error(f"no study folder {args.study!r} (looked for config.json in {args.study} and {study_dir})")
    storage = args.storage
    if storage is not None and storage.endswith(".journal") and "://" not in storage:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(storage))
    try:
        path = write_leaderboard(study_dir, storage=storage, refit=args.refit, audit=args.audit)
    except (ValueError, OSError) as exc:
        print(f"error: {cli_error_message(exc)}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
