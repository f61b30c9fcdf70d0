"""Optuna search over architectures and hyper-parameters, with leakage-aware CV and fold-aware pruning.

Run it::

    python -m automl.search --preset smoke                      # ~1 min on 2 CPU cores, synthetic phantom
    python -m automl.search --preset demo                       # <= 5 min on 2 CPU cores, the dashboard's demo
    python -m automl.search --data DIR --study mine --preset full --storage postgresql://user@host/db
    python -m automl.search --study mine --n-trials 40          # resume: same --study, more trials
    python -m automl.search --preset demo --workers 2           # two local processes, one study

or from Python::

    from automl.search import SearchConfig, run_search
    study_dir = run_search(SearchConfig(preset="smoke", out="leaderboards"))

What happens (one study = one folder ``<out>/<study>/``):

1. **Data.** ``--data DIR`` is scanned with :func:`data.scan_folder` (bad files reported, never fatal);
   without ``--data`` the synthetic phantom of :func:`data.phantom.default_dataset` is used, generated
   once per setting. ``smoke`` and ``full`` label it per subject (every slice of a stroke patient is
   labelled stroke, as in public slice datasets); ``demo`` labels per slice at an easier difficulty so
   that a 3-epoch model learns the lesion itself within the time budget. Either way neighbouring
   slices of a patient are near-duplicates, so the leakage audit has something real to show. Images are decoded once into the array cache (:func:`data.load_arrays`).
2. **Split** (:func:`automl.split.make_split`): an untouched, subject-grouped, stratified test part,
   then ``StratifiedGroupKFold`` on the rest. Written to ``split.csv``.
3. **Search.** One Optuna study (TPE, seeded) maximising the mean CV AUC; the space is
   :func:`suggest_config`. A new study first runs every architecture once at the registry's
   default hyper-parameters, then each classical baseline at a few more ``C`` values
   (:func:`default_trials`, enqueued), so the leaderboard always compares
   all of them (in the order of ``--models``: the presets list the cheapest first, so a timeout cuts
   the costly ones, never the baselines); TPE explores from there. Each trial trains one fold after another with :func:`automl.train.fit_fold`
   and reports on one monotone step axis (see :class:`Objective`), so the pruner can stop a poor
   network after its first fold (classical baselines and each architecture's default trial always run every fold).
4. **Leaderboard** (:func:`automl.leaderboard.write_leaderboard`): best trial per architecture
   refitted (first CV fold's training part; threshold on its held-out calibration part, see
   :mod:`automl.leaderboard`), scored once on the test part, leakage audit, every file written
   atomically. It can be regenerated from the storage alone with ``python -m automl.leaderboard``.

``--n-trials`` is the number of finished (complete or pruned) trials the study should hold: a
re-run with the same ``--study`` resumes and only runs what is missing (raise ``--n-trials`` to add
trials). Failed trials do not count, so a trial lost to a crash is made up for.

Storage: by default a journal file ``<out>/<study>/study.journal`` (Optuna's
``JournalFileBackend``: safe for several processes on one machine, or on a shared file system);
``--storage postgresql://...`` (or ``mysql://``, ``sqlite:///``) for several machines: run the same
command on each. A worker killed mid-trial loses only that trial: on the next start its RUNNING trial
is failed and its parameters re-enqueued (same host: the recorded pid is dead; other hosts: its
heartbeat is older than ``--heartbeat-grace``; RDB storages also use Optuna's own heartbeat with
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import platform
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from automl._progress import Progress, ProgressCallback, setup_logging
from automl.split import Split, make_split

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "PRUNERS",
    "SearchConfig",
    "DataContext",
    "Objective",
    "suggest_config",
    "prepare_data",
    "make_storage",
    "make_pruner",
    "make_sampler",
    "sampler_seed",
    "default_params",
    "default_trials",
    "recover_stale_trials",
    "run_search",
    "main",
]

PRUNERS = ("median", "halving", "hyperband", "none")
GROUP_BY = ("auto", "csv", "dicom", "filename", "phash", "none")
PRETRAINED = ("auto", "yes", "no")
LEAKAGE_AUDIT = ("probe", "model", "none")
BATCH_SIZES = (8, 16, 32, 64)
#: The default trial's batch size leaves at least this many optimizer steps per epoch (see default_params).
MIN_STEPS_PER_EPOCH = 4
#: A new study runs each classical baseline at this many ``C`` values (centres of equal bins of its log
#: range, see :func:`default_trials`): a classical fit costs a fraction of one deep trial (188 vs 752
#: image-passes on the search-efficiency surrogate), and the baseline sets the bar every network must beat.
CLASSICAL_C_POINTS = 3
#: User attribute of the enqueued per-architecture default trials, which the pruner never stops.
DEFAULT_TRIAL_ATTR = "default_trial"
#: Trial states that count towards ``n_trials`` (failed trials are made up for).
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
#: How many times a trial lost to a dead worker or Ctrl-C is retried.
MAX_RETRIES = 2

# Presets fill every field left at ``None``; explicit values (CLI flags) override them.
# Budget of ``demo`` (<= 5 min on 2 CPU cores), from measured CPU seconds per fold-epoch at 64 px with
# 213 training + 107 validation images (1 thread): resnet18 8.9, efficientnet_b0 7.2, vit_tiny 3.3,
# simple_cnn 2.9, tiny_cnn 1.0, i.e. about 120 s of wall time on 2 cores for the six first trials
# (3 folds x 2 epochs); the search stops at ``timeout`` = 150 s after the start (data included), the
# six refits (first fold's training part) took 24 s more in the session-3 demo run, the linear-probe leakage audit seconds.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        models=("simple_cnn", "tiny_cnn", "logreg"),
        n_trials=4, timeout=120.0, folds=2, test_size=0.25, image_size=32, epochs=1, search_epochs=False,
        pretrained="no", leakage_audit="probe", n_startup_trials=2,
        phantom_n=120, phantom_difficulty=0.3, phantom_label_level="subject",
    ),
    "demo": dict(
        # cheapest first: the first trial of each model runs in this order, so a timeout cuts the costly ones
        models=("logreg", "tiny_cnn", "simple_cnn", "vit_tiny", "efficientnet_b0", "resnet18"),
        # slice-level labels at difficulty 0.3: the lesion is learnable in 3 epochs, so the models differ on
        # the test part; neighbouring slices of a patient are near-duplicates, so the audit still shows the leak
        n_trials=14, timeout=200.0, folds=3, test_size=0.2, image_size=64, epochs=3, search_epochs=False,
        pretrained="auto", leakage_audit="probe", n_startup_trials=3,
        phantom_n=400, phantom_difficulty=0.3, phantom_label_level="slice",
    ),
    "full": dict(
        models=("logreg", "svm_rbf", "tiny_cnn", "simple_cnn", "vit_tiny", "efficientnet_b0", "resnet18", "vit_small"),
        n_trials=60, timeout=0.0, folds=5, test_size=0.2, image_size=224, epochs=20, search_epochs=True,
        pretrained="auto", leakage_audit="model", n_startup_trials=8,
        phantom_n=2000, phantom_difficulty=0.6, phantom_label_level="subject",
    ),
}


@dataclass
class SearchConfig:
    """Everything one search run needs; every ``python -m automl.search`` flag is a field.

    Fields left at ``None`` are filled from :data:`PRESETS` ``[preset]``; explicit values win. The
    config is validated on construction (:class:`ValueError` naming the flag) before any work starts.
    """

    # --- data ---
    data: str | None = None                 # dataset folder (class subfolders); None -> synthetic phantom
    study: str | None = None                # study name; None -> "<data folder name | phantom>_<preset>"
    preset: str = "demo"                    # smoke | demo | full: defaults for the fields left at None
    group_by: str = "auto"                  # subject grouping: auto|csv|dicom|filename|phash|none|<groups.csv>
    window: str = "brain"                   # CT window for DICOM: brain|stroke|subdural|bone
    phantom_n: int | None = None            # phantom slices when no --data (preset: 120 | 400 | 2000)
    phantom_difficulty: float | None = None  # phantom contrast-to-noise knob, 0..1 (preset: 0.3 | 0.3 | 0.6)
    phantom_label_level: str | None = None  # phantom labels per "subject" or "slice" (preset: subject | slice | subject)
    # --- search space and budget ---
    models: tuple[str, ...] | None = None   # architectures to compare (registry names)
    n_trials: int | None = None             # finished (complete+pruned) trials the study should hold
    timeout: float | None = None            # seconds for the search part of this run; 0 -> no limit
    epochs: int | None = None               # epochs per fold (the maximum when search_epochs)
    search_epochs: bool | None = None       # also search epochs in [ceil(epochs/2), epochs]
    pretrained: str | None = None           # ImageNet init: auto (use if available) | yes | no
    weights_dir: str | None = None          # folder with local ImageNet weights (<timm_name>.safetensors|.pth)
    pruner: str = "median"                  # median | halving | hyperband | none (see make_pruner)
    n_startup_trials: int | None = None     # trials before TPE and the pruner kick in (preset: 2 | 3 | 8)
    # --- evaluation ---
    folds: int | None = None                # CV folds (preset: 2 | 3 | 5)
    test_size: float | None = None          # fraction of subjects kept as the untouched test part
    image_size: int | None = None           # square input size in pixels (preset: 32 | 64 | 224)
    target_sensitivity: float | None = None  # threshold for this OOF sensitivity instead of Youden's J
    leakage_audit: str | None = None        # probe (logreg on pixels) | model (the winner, fewer epochs) | none
    refit: bool = True                      # refit best-per-architecture and score the test part
    # --- execution ---
    storage: str | None = None              # Optuna storage URL; None -> <out>/<study>/study.journal
    workers: int = 1                        # local worker processes on the same study
    seed: int = 0                           # seeds the split, the sampler and every fit
    device: str = "auto"                    # auto | cpu | cuda | mps
    out: str = "leaderboards"               # parent folder of the study folder
    heartbeat_interval: int = 30            # seconds between a running trial's heartbeats
    heartbeat_grace: int = 180              # a RUNNING trial silent this long (other host / RDB) is stale

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if isinstance(self.models, str):
            self.models = tuple(m.strip() for m in self.models.split(",") if m.strip())
        self.models = tuple(self.models)
        self.validate()

    # ------------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field; raise :class:`ValueError` naming the flag and the bad value."""

        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ValueError(message)

        if self.data is not None:
            need(Path(self.data).expanduser().is_dir(), f"--data {self.data!r} is not a folder")
        if self.weights_dir is not None:
            need(isinstance(self.weights_dir, (str, os.PathLike)) and Path(self.weights_dir).expanduser().is_dir(),
                 f"--weights-dir {self.weights_dir!r} is not a folder (it should hold <timm_name>.safetensors "
                 "files, e.g. resnet18.safetensors)")
            self.weights_dir = str(Path(self.weights_dir).expanduser().resolve())
        if self.study is not None:
            need(bool(self.study) and all(c.isalnum() or c in "-_." for c in self.study) and not self.study.startswith("."),
                 f"--study must be a plain name (letters, digits, - _ .), got {self.study!r}")
        need(isinstance(self.group_by, str) and (self.group_by in GROUP_BY or Path(self.group_by).is_file()),
             f"--group-by must be one of {list(GROUP_BY)} or a groups CSV file, got {self.group_by!r}")
        need(self.phantom_label_level in ("slice", "subject"),
             f"--phantom-label-level must be 'slice' or 'subject', got {self.phantom_label_level!r}")
        need(_is_int(self.phantom_n) and self.phantom_n >= 20, f"--phantom-n must be an integer >= 20, got {self.phantom_n!r}")
        need(_is_num(self.phantom_difficulty) and 0.0 <= self.phantom_difficulty <= 1.0,
             f"--phantom-difficulty must be in [0, 1], got {self.phantom_difficulty!r}")
        need(len(self.models) > 0, "--models must name at least one model")
        need(len(set(self.models)) == len(self.models), f"--models lists a model twice: {list(self.models)}")
        try:
            import models as model_zoo

            available = model_zoo.list_models()
        except ImportError:  # pragma: no cover - the registry is part of the product
            available = None
        if available is not None:
            unknown = [m for m in self.models if m not in available]
            need(not unknown, f"--models: unknown model(s) {unknown}; available: {', '.join(available)}")
            for name in self.models:
                info = model_zoo.get_model_info(name)
                if self.pretrained == "yes" and info.supports_pretrained and info.timm_name:
                    from models._pretrained import find_pretrained_file, missing_weights_message

                    if find_pretrained_file(info.timm_name, self.weights_dir) is None:
                        raise ValueError(f"--pretrained yes: {missing_weights_message(name, info.timm_name)}")
                if _is_int(self.image_size) and info.patch_size and self.image_size % info.patch_size:
                    raise ValueError(f"--image-size {self.image_size} is not a multiple of {name}'s patch size "
                                     f"{info.patch_size}; pick a multiple or drop {name} from --models")
                if _is_int(self.image_size) and self.image_size < info.min_image_size:
                    raise ValueError(f"--image-size {self.image_size} is below {name}'s minimum "
                                     f"{info.min_image_size}; raise it or drop {name} from --models")
        need(_is_int(self.n_trials) and self.n_trials >= 1, f"--n-trials must be an integer >= 1, got {self.n_trials!r}")
        need(_is_num(self.timeout) and self.timeout >= 0, f"--timeout must be >= 0 seconds (0 = no limit), got {self.timeout!r}")
        need(_is_int(self.epochs) and 1 <= self.epochs <= 1000, f"--epochs must be an integer in [1, 1000], got {self.epochs!r}")
        need(isinstance(self.search_epochs, bool), f"search_epochs must be a bool, got {self.search_epochs!r}")
        need(self.pretrained in PRETRAINED, f"--pretrained must be one of {list(PRETRAINED)}, got {self.pretrained!r}")
        need(self.pruner in PRUNERS, f"--pruner must be one of {list(PRUNERS)}, got {self.pruner!r}")
        need(_is_int(self.n_startup_trials) and self.n_startup_trials >= 0,
             f"--n-startup-trials must be an integer >= 0, got {self.n_startup_trials!r}")
        need(_is_int(self.folds) and 2 <= self.folds <= 20, f"--folds must be an integer in [2, 20], got {self.folds!r}")
        need(_is_num(self.test_size) and 0.05 <= self.test_size <= 0.5,
             f"--test-size must be in [0.05, 0.5], got {self.test_size!r}")
        need(_is_int(self.image_size) and 16 <= self.image_size <= 1024,
             f"--image-size must be an integer in [16, 1024], got {self.image_size!r}")
        need(self.target_sensitivity is None or (_is_num(self.target_sensitivity) and 0.0 < self.target_sensitivity <= 1.0),
             f"--target-sensitivity must be in (0, 1], got {self.target_sensitivity!r}")
        need(self.leakage_audit in LEAKAGE_AUDIT,
             f"--leakage-audit must be one of {list(LEAKAGE_AUDIT)}, got {self.leakage_audit!r}")
        if self.storage is not None:
            need(isinstance(self.storage, str) and ("://" in self.storage or self.storage.endswith(".journal")),
                 f"--storage must be an RDB URL (postgresql://..., mysql://..., sqlite:///...) or a .journal file, got {self.storage!r}")
        need(_is_int(self.workers) and 1 <= self.workers <= 64, f"--workers must be an integer in [1, 64], got {self.workers!r}")
        need(_is_int(self.seed) and self.seed >= 0, f"--seed must be an integer >= 0, got {self.seed!r}")
        need(self.device in ("auto", "cpu", "cuda", "mps") or str(self.device).startswith("cuda:"),
             f"--device must be auto, cpu, cuda[:N] or mps, got {self.device!r}")
        need(_is_int(self.heartbeat_interval) and self.heartbeat_interval >= 1,
             f"--heartbeat-interval must be an integer >= 1, got {self.heartbeat_interval!r}")
        need(_is_int(self.heartbeat_grace) and self.heartbeat_grace > self.heartbeat_interval,
             f"--heartbeat-grace must be an integer > --heartbeat-interval, got {self.heartbeat_grace!r}")

    # ------------------------------------------------------------------------------ derived
    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        base = Path(self.data).expanduser().resolve().name if self.data else "phantom"
        return f"{base}_{self.preset}"

    @property
    def study_dir(self) -> Path:
        return Path(self.out).expanduser() / self.study_name

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["models"] = list(self.models)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchConfig:
        """Rebuild a config from :meth:`to_dict` output (unknown keys, e.g. from config.json, ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        if isinstance(kwargs.get("models"), list):
            kwargs["models"] = tuple(kwargs["models"])
        return cls(**kwargs)


#: Fields that define what a trial's number means: a resumed study must agree on them.
_STUDY_DEFINING = ("folds", "test_size", "image_size", "seed", "group_by", "window", "epochs", "search_epochs")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


# ======================================================================================================
# data
# ======================================================================================================


@dataclass
class DataContext:
    """Everything a trial needs, computed once per process: manifest, split and the image arrays."""

    data_dir: Path
    manifest: Any                 # data.Manifest
    split: Split
    X: np.ndarray                 # uint8 (N, S, S), manifest row order
    y: np.ndarray                 # int (N,)
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def resolve_data_dir(config: SearchConfig) -> Path:
    """Return the dataset folder: ``--data``, or the cached synthetic phantom (generated on first use)."""
    if config.data is not None:
        return Path(config.data).expanduser().resolve()
    from data.phantom import default_dataset

    logger.info("no --data: using the synthetic phantom (n=%d, difficulty %.2f, labels per %s)",
                config.phantom_n, config.phantom_difficulty, config.phantom_label_level)
    return Path(default_dataset(
        n=config.phantom_n, size=max(64, config.image_size),
        seed=config.seed, difficulty=config.phantom_difficulty, label_level=config.phantom_label_level,
    )).resolve()


def prepare_data(config: SearchConfig, *, data_dir: Path | None = None, manifest: Any = None) -> DataContext:
    """Scan (or reuse) the manifest, make the split and load the cached arrays."""
    import data

    data_dir = data_dir or resolve_data_dir(config)
    if manifest is None:
        manifest = data.scan_folder(data_dir, group_by=config.group_by, window=config.window, min_per_class=config.folds)
    split = make_split(manifest, test_size=config.test_size, n_folds=config.folds, seed=config.seed)
    X = data.load_arrays(manifest, size=config.image_size, window=config.window)
    y = manifest.table["y"].to_numpy(dtype=np.int64)
    return DataContext(data_dir=Path(data_dir), manifest=manifest, split=split, X=X, y=y, classes=list(manifest.classes))


# ======================================================================================================
# search space
# ======================================================================================================

_PRETRAINED_AVAILABLE: dict[tuple[str, str | None], bool] = {}


def _imagenet_possible(model: str, config: SearchConfig) -> bool:
    """Whether ``model`` can start from ImageNet weights in this run (cached per process)."""
    import models as model_zoo

    info = model_zoo.get_model_info(model)
    if not info.supports_pretrained or config.pretrained == "no":
        return False
    if config.pretrained == "yes":
        return True
    key = (model, config.weights_dir)
    if key not in _PRETRAINED_AVAILABLE:
        from models._pretrained import find_pretrained_file

        _PRETRAINED_AVAILABLE[key] = (bool(info.timm_name)
                                      and find_pretrained_file(info.timm_name, config.weights_dir) is not None)
    return _PRETRAINED_AVAILABLE[key]


def _hint_range(info: Any, key: str, default: tuple[float, float]) -> tuple[float, float]:
    hint = (getattr(info, "param_space", None) or {}).get(key)
    if isinstance(hint, dict) and "low" in hint and "high" in hint:
        return float(hint["low"]), float(hint["high"])
    return default


def default_params(model: str, config: SearchConfig, *, max_batch_size: int = 64) -> dict[str, Any]:
    """A sensible first configuration of ``model`` (enqueued once per architecture in a new study).

    Learning rates and regularisation come from the middle (log scale) of the registry's hints for the
    init the model will actually get (``lr`` for ImageNet init, ``lr_scratch`` for random init), so the
    leaderboard compares every architecture at a reasonable setting before TPE explores. The batch size
    is the largest of 8/16/32 that still gives :data:`MIN_STEPS_PER_EPOCH` steps per epoch on the
    smallest training fold (``max_batch_size``).
    """
    import models as model_zoo

    info = model_zoo.get_model_info(model)

    def mid(key: str, default: tuple[float, float], clip: tuple[float, float] | None = None) -> float:
        low, high = _hint_range(info, key, default)
        value = math.sqrt(low * high)
        return float(min(max(value, clip[0]), clip[1])) if clip else value

    params: dict[str, Any] = {"model": model}
    if info.kind == "classical":
        params[f"{model}_C"] = mid("C", (1e-3, 1e2))
        if "gamma" in info.param_space or model == "svm_rbf":
            params[f"{model}_gamma"] = mid("gamma", (1e-4, 1e-1))
        return params
    imagenet = _imagenet_possible(model, config)
    params["lr"] = mid("lr" if imagenet or "lr_scratch" not in info.param_space else "lr_scratch",
                       (1e-4, 1e-3), clip=(1e-5, 1e-3))
    # At most 32, and at least MIN_STEPS_PER_EPOCH optimizer steps per epoch: on a small training fold a
    # short run needs steps more than large batches (search_efficiency benchmark grids, 80 training
    # images at 64 px, 4 epochs, lr 1e-3: batch 16 beat batch 32 by 0.01-0.07 CV AUC on every seed).
    fitting = [b for b in BATCH_SIZES if b <= 32 and b * MIN_STEPS_PER_EPOCH <= max_batch_size]
    params["batch_size"] = fitting[-1] if fitting else BATCH_SIZES[0]
    params["weight_decay"] = float(min(max(mid("weight_decay", (1e-6, 1e-2)), 1e-6), 1e-2))
    params["aug_strength"] = 0.5
    if imagenet:
        params["finetune"] = "two_stage"
    if config.search_epochs:
        params["epochs"] = config.epochs
    return params


def default_trials(config: SearchConfig, *, max_batch_size: int = 64) -> list[tuple[dict[str, Any], bool]]:
    """The trials a new study runs first (enqueued), in this order, at most ``config.n_trials``.

    1. :func:`default_params` of every model in ``config.models`` (the order of ``--models``: the
       presets list the cheapest first), so the leaderboard compares every architecture. These are
       the architectures' **default trials**, enqueued with the user attribute ``default_trial``:
       the pruner never stops them (see :class:`Objective`);
    2. then, for each classical baseline, ``CLASSICAL_C_POINTS - 1`` more values of ``C``: with the
       default, the ``CLASSICAL_C_POINTS`` values are the centres of equal bins of the log ``C`` range
       (for logreg's [1e-4, 10] and 3 points: 6.8e-4, 0.032, 1.5). A linear model's regularisation
       decides whether it underfits or memorises pixels, its fits are cheap, and TPE then starts with a
       picture of the whole range instead of one point (on the search-efficiency benchmark, one seed's
       best configuration of the whole grid was logreg at C = 1e-3, which TPE alone did not sample in
       12 trials).

    Args:
        config: The search configuration.
        max_batch_size: The smallest training fold (caps the deep models' batch size).

    Returns:
        ``(params, is_default_trial)`` pairs for ``study.enqueue_trial``.
    """
    import models as model_zoo

    defaults = [default_params(name, config, max_batch_size=max_batch_size) for name in config.models]
    trials = [(params, True) for params in defaults]
    for name, base in zip(config.models, defaults):
        info = model_zoo.get_model_info(name)
        if info.kind != "classical":
            continue
        low, high = _hint_range(info, "C", (1e-3, 1e2))
        for i in range(CLASSICAL_C_POINTS):
            c = math.exp(math.log(low) + (i + 0.5) / CLASSICAL_C_POINTS * (math.log(high) - math.log(low)))
            if not math.isclose(c, base[f"{name}_C"], rel_tol=1e-9):
                trials.append(({**base, f"{name}_C": float(c)}, False))
    return trials[: config.n_trials]


def suggest_config(trial: optuna.trial.BaseTrial, config: SearchConfig, *, max_batch_size: int = 64) -> Any:
    """The search space, define-by-run: one trial's :class:`automl.train.TrainConfig`.

    * ``model`` — categorical over ``config.models``.
    * Deep models: ``lr`` log-uniform in [1e-5, 1e-3]; ``batch_size`` in {8, 16, 32, 64} capped by
      ``max_batch_size`` (the smallest training fold, so a batch never exceeds the data);
      ``weight_decay`` log-uniform in [1e-6, 1e-2]; ``aug_strength`` in [0, 1]; ``finetune`` in
      {full, two_stage, gradual} only when the model can start from ImageNet weights (random init only
      trains ``full``); ``epochs`` in [ceil(E/2), E] only when ``search_epochs``.
    * Classical baselines: ``<model>_C`` (inverse regularisation) and, for the RBF SVM,
      ``svm_rbf_gamma``, log-uniform over the ranges the model registry gives
      (``ModelInfo.param_space``; logreg C in [1e-4, 10], svm_rbf C in [0.1, 100], gamma in [1e-4, 0.1]).

    Parameters shared by all deep models keep one name (``lr``...) so TPE learns across
    architectures; parameters that only exist for some models carry the model in their name.

    Sampler choice (see :func:`make_sampler`): ``TPESampler(multivariate=True, group=True,
    constant_liar=True)``. This space is conditional (classical models have no ``lr``); ``group=True``
    lets multivariate TPE model each sub-space (deep / each classical model) jointly instead of
    falling back to independent sampling, and ``constant_liar`` keeps parallel workers from
    proposing the same point.

    Args:
        trial: The Optuna trial (or a ``FixedTrial`` in tests).
        config: The search configuration.
        max_batch_size: Upper bound for ``batch_size``.

    Returns:
        The trial's ``TrainConfig``.
    """
    import models as model_zoo
    from automl.train import TrainConfig

    model = trial.suggest_categorical("model", list(config.models))
    info = model_zoo.get_model_info(model)
    # "auto" without local weights would warn on every fold; ask for what will actually happen
    pretrained = config.pretrained if _imagenet_possible(model, config) else "no"
    fixed = dict(model=model, seed=config.seed, device=config.device, pretrained=pretrained, epochs=config.epochs,
                 weights_dir=config.weights_dir)
    if info.kind == "classical":
        c_low, c_high = _hint_range(info, "C", (1e-3, 1e2))
        c = trial.suggest_float(f"{model}_C", c_low, c_high, log=True)
        extra = {}
        if "gamma" in info.param_space or model == "svm_rbf":
            g_low, g_high = _hint_range(info, "gamma", (1e-4, 1e-1))
            extra["gamma"] = trial.suggest_float(f"{model}_gamma", g_low, g_high, log=True)
        return TrainConfig(**{**fixed, "pretrained": "no", "weights_dir": None}, C=c, **extra)
    sizes = [b for b in BATCH_SIZES if b <= max(BATCH_SIZES[0], max_batch_size)]
    params: dict[str, Any] = dict(
        lr=trial.suggest_float("lr", 1e-5, 1e-3, log=True),
        batch_size=trial.suggest_categorical("batch_size", sizes),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        aug_strength=trial.suggest_float("aug_strength", 0.0, 1.0),
    )
    if _imagenet_possible(model, config):
        params["finetune"] = trial.suggest_categorical("finetune", ["full", "two_stage", "gradual"])
    else:
        params["finetune"] = "full"
    if config.search_epochs:
        params["epochs"] = trial.suggest_int("epochs", max(1, math.ceil(config.epochs / 2)), config.epochs)
    return TrainConfig(**{**fixed, **params})


# ======================================================================================================
# objective
# ======================================================================================================


def _process_start_time(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux ``/proc``), to detect pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` (started at ``start``, when known) is still running on this host."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError, OverflowError):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # zombie: killed, not yet reaped
            return False
    except (OSError, IndexError):
        pass
    if start is not None:
        current = _process_start_time(int(pid))
        if current is not None and current != start:
            return False  # the pid was reused by another process
    return True


def worker_identity() -> dict[str, Any]:
    """Host, pid and process start time recorded on every running trial (stale-trial detection)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start_time(pid)}


class _Heartbeat:
    """Write the ``heartbeat`` user attribute of a running trial every ``interval`` seconds.

    Optuna's own heartbeat exists only for RDB storages; this one also covers the journal storage, so
    a worker on another machine can tell a live trial from one whose worker died.
    """

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self._trial = trial
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial.number}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._trial.set_user_attr("heartbeat", time.time())
            except Exception:  # noqa: BLE001 - the trial may just have finished
                return

    def __enter__(self) -> _Heartbeat:
        self._trial.set_user_attr("heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _write_oof(path: Path, ctx: DataContext, rows: np.ndarray, fold: np.ndarray, P: np.ndarray) -> None:
    from automl.leaderboard import atomic_write_csv, prediction_frame

    frame = prediction_frame(ctx, rows, P, fold=fold)
    atomic_write_csv(frame, path)


class Objective:
    """One trial = one :class:`TrainConfig` trained on every CV fold; returns the mean CV AUC.

    **Fold-aware pruning.** Fold ``k`` (0-based) at epoch ``e`` (0-based) of at most ``E`` epochs
    per fold reports on the step ``k * E + e``, a single monotone axis across folds and epochs.
    The value is the running mean AUC over folds::

        value(k, e) = (sum_{j < k} auc_j + val_auc(k, e)) / (k + 1)

    where ``auc_j`` is the (best-epoch) validation AUC of the completed fold ``j`` and
    ``val_auc(k, e)`` the current fold's AUC at epoch ``e``. When a fold ends early (early stopping)
    the fold's final running mean is also reported at its last step ``k * E + E - 1``, so every
    trial that completes fold ``k`` has a value at that step and the pruner compares like with like.
    ``trial.should_prune()`` is asked after every report (inside ``fit_fold``'s callback, which
    stops the fold). Classical baselines report once per fold (their one "epoch") but are never
    pruned: they cost under a second per fold, and the leaderboard exists to show them next to the
    networks (their values still feed the pruner's statistics at the end of each fold). Nor is a
    trial enqueued with the user attribute ``default_trial`` (each architecture's first trial,
    :func:`default_trials`): without it an architecture may never reach the refit and the test part.

    User attributes of every trial: ``train_config`` (dict), ``init`` ("imagenet"|"random"),
    ``train_precision`` (deep models: "bf16" when the folds trained under bf16 autocast, see ``TrainConfig.amp``),
    ``cv_auc_folds`` (list, also partial for pruned trials), ``cv_auc_mean``, ``cv_auc_std``,
    ``best_epochs`` (1-based epoch counts of the kept weights), ``fit_seconds``, ``worker`` (host,
    pid, start), ``heartbeat``; failed trials: ``error``; retries: ``retry_of``.
    Complete trials also write ``predictions/oof_trial_<NNNN>.csv`` (atomically).
    """

    def __init__(self, config: SearchConfig, ctx: DataContext, study_dir: Path,
                 progress: Progress | None = None, *, heartbeat: bool = True) -> None:
        self.config = config
        self.ctx = ctx
        self.study_dir = Path(study_dir)
        self.progress = progress
        self.heartbeat = heartbeat
        self.max_batch_size = min(len(tr) for tr, _ in ctx.split.folds)

    def __call__(self, trial: optuna.Trial) -> float:
        from automl import metrics
        from automl import train

        config, ctx = self.config, self.ctx
        trial.set_user_attr("worker", worker_identity())
        train_config = suggest_config(trial, config, max_batch_size=self.max_batch_size)
        trial.set_user_attr("train_config", _jsonable(train_config.to_dict()))
        # a retried trial may carry its predecessor's attributes: start clean
        for key, empty in (("cv_auc_folds", []), ("best_epochs", []), ("cv_auc_mean", None), ("fit_seconds", 0.0)):
            trial.set_user_attr(key, empty)
        n_epochs_axis = config.epochs  # the stride of the step axis: the maximum epochs per fold
        import models as model_zoo

        # classical baselines take < 1 s per fold and are the reference the leaderboard exists to show:
        # they report (for the plots and the pruner's statistics) but are never pruned; nor is an
        # architecture's default trial (its entry in the comparison, see default_trials)
        prunable = (model_zoo.get_model_info(train_config.model).kind != "classical"
                    and not trial.user_attrs.get(DEFAULT_TRIAL_ATTR))
        folds = ctx.split.folds
        if self.progress:
            self.progress.trial_start(trial.number, train_config.model)

        fold_aucs: list[float] = []
        best_epochs: list[int] = []
        oof = np.full((len(ctx.y), ctx.num_classes), np.nan)
        fold_of = np.full(len(ctx.y), -1)
        fit_seconds = 0.0
        init = "random"
        reported: set[int] = set()

        def report(k: int, e: int, value: float) -> bool:
            step = k * n_epochs_axis + min(e, n_epochs_axis - 1)
            if step in reported or not math.isfinite(value):
                return False
            reported.add(step)
            trial.report(float(value), step)
            return prunable and trial.should_prune()

        guard = _Heartbeat(trial, self.config.heartbeat_interval) if self.heartbeat else _NullContext()
        try:
            with guard:
                for k, (tr, va) in enumerate(folds):
                    def on_epoch(epoch: int, values: dict[str, Any], _k: int = k) -> bool:
                        val_auc = float(values.get("val_auc", math.nan))
                        running = (sum(fold_aucs) + val_auc) / (_k + 1)
                        if self.progress:
                            self.progress.epoch(trial.number, _k, epoch, val_auc, running, n_epochs_axis)
                        return report(_k, epoch, running)

                    result = train.fit_fold(ctx.X[tr], ctx.y[tr], ctx.X[va], ctx.y[va], config=train_config,
                                            num_classes=ctx.num_classes, report=on_epoch)
                    fit_seconds += float(result.fit_seconds)
                    init = getattr(result, "init", init) or init
                    trial.set_user_attr("init", init)
                    if prunable:  # deep models: fp32 or bf16 autocast (classical ones: sklearn's own)
                        trial.set_user_attr("train_precision", result.precision)
                    if result.pruned:
                        trial.set_user_attr("fit_seconds", fit_seconds)
                        raise optuna.TrialPruned(f"pruned in fold {k + 1}/{len(folds)}")
                    P = np.asarray(result.val_probabilities, dtype=float)
                    auc = metrics.roc_auc(ctx.y[va], P)
                    fold_aucs.append(float(auc))
                    best_epochs.append(int(result.best_epoch) + 1)
                    oof[va] = P
                    fold_of[va] = k
                    trial.set_user_attr("cv_auc_folds", [float(a) for a in fold_aucs])
                    trial.set_user_attr("best_epochs", best_epochs)
                    trial.set_user_attr("fit_seconds", fit_seconds)
                    if self.progress:
                        self.progress.fold_end(trial.number, k, auc)
                    if report(k, n_epochs_axis - 1, float(np.mean(fold_aucs))):
                        raise optuna.TrialPruned(f"pruned after fold {k + 1}/{len(folds)}")
        except optuna.TrialPruned:
            if fold_aucs:
                trial.set_user_attr("cv_auc_mean", float(np.mean(fold_aucs)))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted (KeyboardInterrupt)")
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            raise

        mean = float(np.mean(fold_aucs))
        if not math.isfinite(mean):
            trial.set_user_attr("error", "CV AUC is undefined (a validation fold lacks a class)")
            raise ValueError("CV AUC is undefined (a validation fold lacks a class)")
        rows = ctx.split.cv_index
        _write_oof(self.study_dir / "predictions" / f"oof_trial_{trial.number:04d}.csv", ctx, rows, fold_of[rows], oof[rows])
        trial.set_user_attr("cv_auc_mean", mean)
        trial.set_user_attr("cv_auc_std", float(np.std(fold_aucs)))
        return mean


class _NullContext:
    def __enter__(self) -> _NullContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# ======================================================================================================
# storage, sampler, pruner
# ======================================================================================================


def storage_url(config: SearchConfig) -> str:
    """The storage as written to ``config.json``: an RDB URL, or the journal path (relative to the study)."""
    if config.storage is None:
        return "study.journal"
    return config.storage


def make_storage(config: SearchConfig) -> optuna.storages.BaseStorage:
    """Build the Optuna storage of a study.

    * default: ``JournalStorage(JournalFileBackend(<out>/<study>/study.journal))`` (file lock, safe for
      several local processes and on NFS; Optuna's heartbeat is not available for journals, see
      :func:`recover_stale_trials`);
    * ``*.journal`` path: a journal file elsewhere (e.g. on a shared file system);
    * an RDB URL: ``RDBStorage`` with heartbeat (``heartbeat_interval``, ``grace_period``) and
      ``RetryHeartbeatStaleTrialCallback(max_retry=2)``; ``pool_pre_ping`` for server databases.
    """
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if config.storage is None or config.storage.endswith(".journal") and "://" not in config.storage:
        path = config.study_dir / "study.journal" if config.storage is None else Path(config.storage).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    url = config.storage
    engine_kwargs = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=config.heartbeat_interval,
            grace_period=config.heartbeat_grace,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
        )


def sampler_seed(config: SearchConfig, worker: int = 0) -> int:
    """Seed of this process's sampler.

    Processes sharing a study must not share a seed, or their random start-up trials would be the
    same configurations. The single local process uses ``--seed`` itself (reproducible); spawned
    worker ``i`` uses ``seed + 1000 * i``; a process joining an explicit ``--storage`` (several
    machines) also mixes in its host and pid, since its trial order depends on timing anyway.
    """
    import zlib

    seed = config.seed + 1000 * worker
    if config.storage is not None:
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    return seed % (2**32)


def make_sampler(config: SearchConfig, worker: int = 0) -> optuna.samplers.BaseSampler:
    """Seeded multivariate, group-decomposed TPE (see :func:`suggest_config` for why)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=sampler_seed(config, worker), n_startup_trials=config.n_startup_trials,
            multivariate=True, group=True, constant_liar=True,
        )


def make_pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    """The pruner on the fold-aware step axis (``E`` = epochs per fold, ``K`` = folds).

    * ``median`` (default): ``MedianPruner(n_startup_trials, n_warmup_steps=E - 1)``. Nothing is
      pruned during the first fold's early epochs (a network's first epochs say little); from the
      end of fold 1 on, a trial whose running CV AUC is below the median of earlier trials at the same
      step stops. It works from the first few trials, which matters for the 10–20 trial budgets this
      tool is run with; the paper-grade ``full`` preset can try the others.
    * ``halving``: ``SuccessiveHalvingPruner(min_resource=E, reduction_factor=3)``: rungs at the end of
      fold 1, 3, 9 ... (in steps).
    * ``hyperband``: ``HyperbandPruner(min_resource=E, max_resource=K * E, reduction_factor=3)``.
    * ``none``: ``NopPruner``.
    """
    E, K = config.epochs, config.folds
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials, n_warmup_steps=E - 1)
    if config.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=E, reduction_factor=3)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=E, max_resource=K * E, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(config: SearchConfig, storage: optuna.storages.BaseStorage | None = None, *,
               worker: int = 0) -> optuna.Study:
    """Create or load (``load_if_exists``) the study with the configured sampler and pruner."""
    storage = storage if storage is not None else make_storage(config)
    return optuna.create_study(
        study_name=config.study_name, storage=storage, direction="maximize",
        sampler=make_sampler(config, worker), pruner=make_pruner(config), load_if_exists=True,
    )


def _storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage  # noqa: SLF001 - the storage object passed to create_study (maybe cached)


def recover_stale_trials(study: optuna.Study, *, grace: float = 180.0) -> list[int]:
    """Fail RUNNING trials whose worker is gone and re-enqueue their parameters; return their numbers.

    A RUNNING trial is stale when its recorded worker runs on this host and that process is dead
    (or its pid now belongs to another process), or when it runs elsewhere and its ``heartbeat``
    attribute is older than ``grace`` seconds. Also re-enqueued: trials failed by Ctrl-C. A trial is
    retried at most :data:`MAX_RETRIES` times (``retry_of`` chains) and never twice: only the process
    whose FAIL update wins (Optuna refuses to update a finished trial) enqueues the retry, and trials
    that already have a retry are skipped.
    """
    storage = _storage_of(study)
    host = socket.gethostname()
    now = time.time()
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials if t.user_attrs.get("retry_of") is not None}
    to_retry: list[optuna.trial.FrozenTrial] = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            if (t.state == TrialState.FAIL and str(t.user_attrs.get("error", "")).startswith("interrupted")
                    and t.number not in retried):
                to_retry.append(t)
            continue
        worker = t.user_attrs.get("worker") or {}
        beat = t.user_attrs.get("heartbeat")
        if beat is None and t.datetime_start is not None:
            beat = t.datetime_start.timestamp()
        if worker.get("host") == host:
            stale = not _pid_alive(worker.get("pid", -1), worker.get("start"))
        else:
            stale = beat is not None and now - float(beat) > grace
        if not stale:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "error", f"worker died ({worker or 'unknown worker'})")  # noqa: SLF001
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, KeyError) as exc:
            logger.debug("trial %d was finished by someone else: %s", t.number, exc)
            continue
        logger.warning("trial %d: its worker %s is gone; marked FAIL", t.number, worker or "(unknown)")
        to_retry.append(t)
    numbers = []
    for t in to_retry:
        depth = int(t.user_attrs.get("retry_depth", 0))
        if depth >= MAX_RETRIES or t.number in retried:
            continue
        # a worker killed inside suggest_config recorded only some params: the enqueued configuration
        # (Optuna keeps it in the ``fixed_params`` system attribute) fills in the rest
        params = {**(t.system_attrs.get("fixed_params") or {}), **t.params}
        attrs = {"retry_of": t.number, "retry_depth": depth + 1}
        if t.user_attrs.get(DEFAULT_TRIAL_ATTR):
            attrs[DEFAULT_TRIAL_ATTR] = True
        study.enqueue_trial(params, user_attrs=attrs)
        logger.info("trial %d will be retried with the same parameters", t.number)
        numbers.append(t.number)
    return numbers


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED_STATES))


class _StopWhen:
    """Optuna callback: stop when the study holds ``n_trials`` counted trials, the deadline passed,
    or this process saw ``max_failures`` failures in a row (e.g. every model runs out of memory)."""

    def __init__(self, n_trials: int, deadline: float | None, max_failures: int,
                 progress: Progress | None = None) -> None:
        self.n_trials = n_trials
        self.deadline = deadline
        self.max_failures = max_failures
        self.failures = 0
        self.progress = progress

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        if self.progress:
            best = None
            try:
                best = study.best_value
            except ValueError:
                pass
            value = trial.value if trial.state == TrialState.COMPLETE else trial.user_attrs.get("cv_auc_mean")
            message = trial.user_attrs.get("error", "") if trial.state == TrialState.FAIL else ""
            self.progress.trial_end(trial.number, trial.state.name, value, best, message)
        if count_finished(study) >= self.n_trials:
            study.stop()
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            logger.info("time budget reached; stopping the search")
            study.stop()
        elif self.failures >= self.max_failures:
            logger.error("%d failed trials in a row; stopping the search (see the 'error' column)", self.failures)
            study.stop()


def _optimize(config: SearchConfig, ctx: DataContext, study: optuna.Study, *, deadline: float | None,
              progress: Progress | None, heartbeat: bool) -> None:
    remaining = config.n_trials - count_finished(study)
    if remaining <= 0:
        return
    objective = Objective(config, ctx, config.study_dir, progress, heartbeat=heartbeat)
    stopper = _StopWhen(config.n_trials, deadline, max_failures=max(3, config.n_trials // 2), progress=progress)
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    # n_trials caps this process; _StopWhen stops all processes' loops once the study is full.
    study.optimize(objective, n_trials=remaining + stopper.max_failures, timeout=timeout,
                   catch=(Exception,), callbacks=[stopper], gc_after_trial=True)


def _worker_main(config_dict: dict[str, Any], data_dir: str, manifest: Any, index: int, deadline_wall: float | None,
                 threads: int, verbosity: int) -> None:
    """Entry point of a spawned worker process: same study, its own share of the CPU."""
    setup_logging(verbosity)
    _sigterm_as_interrupt()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover
        pass
    config = SearchConfig.from_dict(config_dict)
    ctx = prepare_data(config, data_dir=Path(data_dir), manifest=manifest)
    study = open_study(config, worker=index + 1)
    deadline = None if deadline_wall is None else time.monotonic() + max(0.0, deadline_wall - time.time())
    logger.info("worker %d (pid %d) joined study %s", index, os.getpid(), config.study_name)
    try:
        _optimize(config, ctx, study, deadline=deadline, progress=None, heartbeat=True)
    except KeyboardInterrupt:
        logger.info("worker %d interrupted", index)


def _run_workers(config: SearchConfig, ctx: DataContext, study: optuna.Study, deadline: float | None,
                 progress: Progress, verbosity: int) -> None:
    import multiprocessing as mp

    spawn = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // config.workers)
    deadline_wall = None if deadline is None else time.time() + (deadline - time.monotonic())
    procs = [
        spawn.Process(target=_worker_main, name=f"automl-worker-{i}",
                      args=(config.to_dict(), str(ctx.data_dir), ctx.manifest, i, deadline_wall, threads, verbosity))
        for i in range(config.workers)
    ]
    for p in procs:
        p.start()
    seen: set[int] = set()
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            for t in study.get_trials(deepcopy=False):
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    value = t.value if t.state == TrialState.COMPLETE else t.user_attrs.get("cv_auc_mean")
                    progress.trial_end(t.number, t.state.name, value, None, t.user_attrs.get("error", ""))
    except KeyboardInterrupt:
        for p in procs:  # Ctrl-C reaches the whole process group; SIGTERM only us: pass it on
            if p.is_alive():
                p.terminate()
        raise
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():  # pragma: no cover - a worker that ignores SIGINT
                p.terminate()
                p.join(timeout=10)
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        logger.warning("worker exit codes: %s (their trials are failed and retried on the next run)", bad)


# ======================================================================================================
# run
# ======================================================================================================


def versions() -> dict[str, str]:
    """Library versions recorded in ``config.json`` and model cards."""
    out = {"python": platform.python_version()}
    for name in ("torch", "timm", "optuna", "sklearn", "numpy", "pandas"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            pass
    return out


def _check_resume(config: SearchConfig, study: optuna.Study, manifest_hash: str) -> None:
    previous = study.user_attrs.get("search_config")
    if previous is None:
        study.set_user_attr("search_config", _jsonable(config.to_dict()))
        study.set_user_attr("manifest_hash", manifest_hash)
        return
    old_hash = study.user_attrs.get("manifest_hash")
    if old_hash and old_hash != manifest_hash:
        raise ValueError(
            f"--study {config.study_name!r} was run on different data (manifest hash {old_hash} != {manifest_hash}); "
            "use a new --study name"
        )
    changed = {k: (previous.get(k), getattr(config, k)) for k in _STUDY_DEFINING
               if k in previous and _jsonable(previous.get(k)) != _jsonable(getattr(config, k))}
    if changed:
        detail = ", ".join(f"--{k.replace('_', '-')} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"--study {config.study_name!r} exists with other settings ({detail}); "
                         "its trials would not be comparable: use a new --study name or the same settings")


def write_study_files(config: SearchConfig, ctx: DataContext) -> None:
    """Write config.json, manifest.csv, bad_files.csv, quality.json and split.csv (atomically)."""
    import data
    from automl.leaderboard import atomic_write_csv, atomic_write_json

    study_dir = config.study_dir
    (study_dir / "predictions").mkdir(parents=True, exist_ok=True)
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
        "versions": versions(),
    }
    atomic_write_json(_jsonable(payload), study_dir / "config.json")
    atomic_write_csv(manifest.table, study_dir / "manifest.csv")
    atomic_write_csv(manifest.bad_files if manifest.bad_files is not None else pd.DataFrame(columns=["path", "reason"]),
                     study_dir / "bad_files.csv")
    atomic_write_csv(ctx.split.to_frame(), study_dir / "split.csv")
    try:
        quality = data.quality_report(manifest).to_dict()
    except Exception as exc:  # noqa: BLE001 - the quality report is informative, never fatal
        logger.warning("quality report failed: %s", exc)
        quality = {"error": str(exc)}
    atomic_write_json(_jsonable(quality), study_dir / "quality.json")


def run_search(config: SearchConfig, *, on_progress: ProgressCallback | None = None,
               progress_bars: bool | None = None, verbosity: int = 0) -> Path:
    """Run (or resume) a study and write ``<out>/<study>/``; return that folder.

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
    from automl.leaderboard import write_leaderboard

    t_start = time.monotonic()
    progress = Progress(n_trials=config.n_trials, n_folds=config.folds, n_epochs=config.epochs,
                        on_progress=on_progress, bars=progress_bars)
    interrupted = False
    try:
        progress.phase("data", "scanning and caching images")
        ctx = prepare_data(config)
        config.study_dir.mkdir(parents=True, exist_ok=True)
        study = open_study(config)
        _check_resume(config, study, ctx.manifest.hash)
        write_study_files(config, ctx)
        if not study.get_trials(deepcopy=False):
            max_batch = min(len(tr) for tr, _ in ctx.split.folds)
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
                    _optimize(config, ctx, study, deadline=deadline, progress=progress, heartbeat=True)
                else:
                    _run_workers(config, ctx, study, deadline, progress, verbosity)
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


# ======================================================================================================
# command line
# ======================================================================================================


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
                    "an untouched test part and a leakage audit. Writes <out>/<study>/.",
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
    p.add_argument("--window", default="brain", help="CT window for DICOM")
    p.add_argument("--pretrained", default=None, help="ImageNet init: auto|yes|no")
    p.add_argument("--weights-dir", default=None,
                   help="folder with local ImageNet weights (<timm_name>.safetensors|.pth), searched before "
                        "$STROKECT_WEIGHTS and the Hugging Face cache")
    p.add_argument("--pruner", default="median", help="median|halving|hyperband|none")
    p.add_argument("--n-startup-trials", type=_positive_int("--n-startup-trials"), default=None,
                   help="random trials before TPE, and before the pruner prunes")
    p.add_argument("--target-sensitivity", type=_float("--target-sensitivity"), default=None,
                   help="choose the threshold for this OOF sensitivity instead of Youden's J")
    p.add_argument("--leakage-audit", default=None, help="probe|model|none")
    p.add_argument("--no-refit", dest="refit", action="store_false", help="skip refits and test scoring")
    p.add_argument("--storage", default=None, help="Optuna storage URL (postgresql://..., sqlite:///...) or .journal file")
    p.add_argument("--workers", type=_positive_int("--workers"), default=1, help="local worker processes")
    p.add_argument("--seed", type=_positive_int("--seed"), default=0)
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    p.add_argument("--out", default="leaderboards", help="parent folder of the study folder")
    p.add_argument("--phantom-n", type=_positive_int("--phantom-n"), default=None, help="phantom size without --data")
    p.add_argument("--phantom-difficulty", type=_float("--phantom-difficulty"), default=None)
    p.add_argument("--phantom-label-level", default=None, help="subject|slice (default: preset's)")
    p.add_argument("--heartbeat-interval", type=_positive_int("--heartbeat-interval"), default=30)
    p.add_argument("--heartbeat-grace", type=_positive_int("--heartbeat-grace"), default=180)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """Turn parsed arguments into a validated :class:`SearchConfig` (raises ValueError)."""
    values = {k: v for k, v in vars(args).items() if k not in ("verbose", "quiet")}
    return SearchConfig(**values)


def _sigterm_as_interrupt() -> None:
    """Treat SIGTERM (docker stop, a job scheduler) like Ctrl-C: stop cleanly, keep what finished."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # pragma: no cover - not the main thread
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))  # exit 2 with "error: ..."
    verbosity = -1 if args.quiet else max(0, args.verbose - 1) if args.verbose else 0
    setup_logging(verbosity)
    _sigterm_as_interrupt()
    try:
        study_dir = run_search(config, progress_bars=False if args.quiet else None, verbosity=verbosity)
    except KeyboardInterrupt as exc:
        logger.warning("%s", exc or "interrupted")
        return 130
    except (ValueError, OSError) as exc:
        from automl.leaderboard import cli_error_message

        print(f"error: {cli_error_message(exc)}", file=sys.stderr)
        return 2
    print(study_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
