"""The search configuration: every ``python -m automl.search`` flag as one typed field, and the presets.

``SearchConfig`` is validated on construction (a :class:`ValueError` naming the flag and the bad
value, before any work starts); :meth:`SearchConfig.from_dict` rebuilds one from ``config.json``
without re-running that validation, so a study can be read back after its data folder moved.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl.study import DEFAULT_LEADERBOARDS, parse_storage_url, valid_study_name

__all__ = ["PRESETS", "PRUNERS", "SearchConfig", "cpu_preset_models"]

PRUNERS = ("median", "halving", "hyperband", "none")
GROUP_BY = ("auto", "csv", "dicom", "filename", "phash", "none")
PRETRAINED = ("auto", "yes", "no")
LEAKAGE_AUDIT = ("probe", "model", "none")
PHANTOM_COHORT = ("slices_per_patient", "lesion_span", "ischemic_share", "lesion_size")  # default_dataset keywords

# Presets fill every field left at ``None``; explicit values (CLI flags) override them.
# ``demo`` (the dashboard's first start): a fixed plan, not a wall-clock cut, so it means the same on every
# machine and leaves no trial WAITING: every architecture family's default trial (the frozen-feature lane of
# the pip-installed ImageNet EfficientNet-Lite0, the simple CNNs, ViT-Tiny, EfficientNet-B0, ResNet-18, the
# pixel baseline) plus the C sweeps of the linear heads (n_trials None = exactly the plan). Measured run
# time: README "Demo".
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        models=("simple_cnn", "tiny_cnn", "logreg"),
        n_trials=4, timeout=120.0, folds=2, test_size=0.25, image_size=32, epochs=1, search_epochs=False,
        pretrained="no", leakage_audit="probe", n_startup_trials=2,
        phantom_n=120, phantom_difficulty=0.3, phantom_label_level="subject", phantom_cohort={},
    ),
    "demo": dict(
        models=("logreg", "efficientnet_lite0+logreg", "efficientnet_lite0+svm_rbf", "tiny_cnn", "simple_cnn",
                "vit_tiny", "efficientnet_b0", "resnet18"),
        # The phantom is a teaching set in which the best model can find the lesion (README "Demo"):
        # slice labels, short stacks of 2-5 slices through the lesion level (113 patients in 400 slices, so
        # the test part holds >= 10 patients of each class), a lesion in most slices of a stroke stack,
        # haemorrhage-enriched (ischemic share 0.15: early infarcts are often invisible on plain CT; a
        # haemorrhage is what a 64 px model can learn from ~300 slices), medium-to-large lesions and
        # difficulty 0 (an established infarct ~12 HU below tissue, a 77-87 HU haematoma, 2.5 HU noise).
        # Neighbouring slices of a patient are still near-duplicates, so the leakage audit shows its gap.
        # 2 epochs keep the 16-trial plan inside 5 minutes on 2 cores; the winner is the frozen lane.
        n_trials=None, timeout=0.0, folds=3, test_size=0.2, image_size=64, epochs=2, search_epochs=False,
        pretrained="auto", leakage_audit="probe", n_startup_trials=3,
        phantom_n=400, phantom_difficulty=0.0, phantom_label_level="slice",
        phantom_cohort={"slices_per_patient": (2, 5), "lesion_span": (0.7, 1.0), "ischemic_share": 0.15,
                        "lesion_size": (1.0, 1.5)},
    ),
    # A real folder on a CPU (2,500 slices of 512-650 px, ~80 subjects, 2 cores: <= 20 min): a fixed plan,
    # no wall-clock cut and no TPE exploration (n_trials None = exactly the planned trials, see
    # automl.space.default_trials), so every requested family reaches the leaderboard and no trial waits.
    # Models (cpu_preset_models): the pixel baselines, the frozen-feature lane of every backbone whose
    # ImageNet weights can be had (efficientnet_lite0 always: its pip package), simple_cnn from scratch,
    # and short fine-tunes (two_stage: 1 head epoch on cached features + 1 full epoch) of the pretrained
    # CNNs. Budget arithmetic from one measured run (README "CPU preset", 2-core AMD EPYC, quiet): scan + cache
    # 3 s; lane features once (~8 s per backbone) then ~1 s per head trial; simple_cnn ~16 s per fold-epoch
    # x 2 epochs x 3 folds; a two-stage fine-tune ~24 s per fold (head on cached features + 1 full epoch);
    # refits ~2 min: 6 min in all, well inside 20 min with an online machine's extra backbones.
    "cpu": dict(
        models=None, n_trials=None, timeout=0.0, folds=3, test_size=0.2, image_size=128, epochs=2,
        search_epochs=False, pretrained="auto", leakage_audit="probe", n_startup_trials=0,
        phantom_n=1000, phantom_difficulty=0.5, phantom_label_level="subject", phantom_cohort={},
    ),
    "full": dict(
        models=("logreg", "svm_rbf", "tiny_cnn", "simple_cnn", "vit_tiny", "efficientnet_b0", "resnet18", "vit_small"),
        n_trials=60, timeout=0.0, folds=5, test_size=0.2, image_size=224, epochs=20, search_epochs=True,
        pretrained="auto", leakage_audit="model", n_startup_trials=8,
        phantom_n=2000, phantom_difficulty=0.6, phantom_label_level="subject", phantom_cohort={},
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
    phash_threshold: int = 6                # pHash Hamming distance (0..64) linking near-duplicates (grouping, quality)
    window: str = "brain"                   # CT window for DICOM/NIfTI: brain|stroke|subdural|bone|level,width, or a
                                            # window set as the 3 input channels: ich | brain,subdural,bone
    slice_labels: str | None = None         # volume,slice,label CSV for volumes (None: <data>/_slice_labels.csv if any)
    slice_step: int = 1                     # keep every k-th slice of each volume (DICOM series, NIfTI)
    min_brain_fraction: float = 0.0         # keep volume slices with >= this share of brain-density pixels
    phantom_n: int | None = None            # phantom slices when no --data (preset: 120 | 400 | 2000)
    phantom_difficulty: float | None = None  # phantom contrast-to-noise knob, 0..1 (preset: 0.3 | 0.0 | 0.6)
    phantom_label_level: str | None = None  # phantom labels per "subject" or "slice" (preset: subject | slice | subject)
    phantom_cohort: dict[str, Any] | None = None  # more data.phantom.default_dataset keywords (slices_per_patient,
                                            # lesion_span, ischemic_share, lesion_size); not a flag (preset: {} | demo's)
    # --- search space and budget ---
    models: tuple[str, ...] | None = None   # architectures to compare (registry names)
    n_trials: int | None = None             # finished (complete+pruned) trials the study should hold;
                                            # cpu preset: None = exactly the planned (default) trials
    timeout: float | None = None            # seconds for the search part of this run; 0 -> no limit
    epochs: int | None = None               # epochs per fold (the maximum when search_epochs)
    search_epochs: bool | None = None       # also search epochs in [ceil(epochs/2), epochs]
    pretrained: str | None = None           # ImageNet init: auto (use if available) | yes | no
    weights_dir: str | None = None          # folder with local ImageNet weights (<timm_name>.safetensors|.pth)
    offline: bool = False                   # never download ImageNet weights (also $HF_HUB_OFFLINE=1)
    pruner: str = "median"                  # median | halving | hyperband | none (see make_pruner)
    n_startup_trials: int | None = None     # trials before TPE and the pruner kick in (preset: 2 | 3 | 8)
    # --- evaluation ---
    folds: int | None = None                # CV folds (preset: 2 | 3 | 5)
    test_size: float | None = None          # fraction of subjects kept as the untouched test part
    image_size: int | None = None           # square input size in pixels (preset: 32 | 64 | 224)
    target_sensitivity: float | None = None  # threshold for this OOF sensitivity instead of Youden's J
    leakage_audit: str | None = None        # probe (logreg on pixels) | model (the winner, fewer epochs) | none
    refit: bool = True                      # refit best-per-architecture and score the test part
    outer_folds: int | None = None          # nested evaluation: the whole search again in K subject-grouped
                                            # outer folds (<study>/outer/<k>/), every subject tested once
    outer_fold: int | None = None           # set by the nested run on its inner study k (test part: outer
                                            # fold k of outer_folds); not a flag
    # --- execution ---
    storage: str | None = None              # Optuna storage URL; None -> <out>/<study>/study.journal
    workers: int = 1                        # local worker processes on the same study
    seed: int = 0                           # seeds the split, the sampler and every fit
    device: str = "auto"                    # auto | cpu | cuda | mps
    leaderboards: str = DEFAULT_LEADERBOARDS  # root of study folders: the study lives in <leaderboards>/<study>/
    heartbeat_interval: int = 30            # seconds between a running trial's heartbeats
    heartbeat_grace: int = 180              # a RUNNING trial silent this long (other host / RDB) is stale

    def __post_init__(self) -> None:
        self._apply_preset()
        self.validate()

    def _apply_preset(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, dict(value) if isinstance(value, dict) else value)
        if self.models is None:  # the cpu preset: what this machine can run
            self.models = cpu_preset_models(weights_dir=self.weights_dir, offline=bool(self.offline))
        if isinstance(self.models, str):
            self.models = tuple(m.strip() for m in self.models.split(",") if m.strip())
        self.models = tuple(self.models)

    # ------------------------------------------------------------------------------ validation
    def _validate_volume_options(self) -> None:
        """``--slice-labels``, ``--slice-step``, ``--min-brain-fraction`` (see :func:`data.scan_folder`)."""
        if not (self.slice_labels is None or Path(str(self.slice_labels)).expanduser().is_file()):
            raise ValueError(f"--slice-labels {self.slice_labels!r} is not a file (a volume,slice,label CSV)")
        try:
            from data import parse_windows

            parse_windows(self.window)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--window {self.window!r}: {exc}") from None
        if not (_is_int(self.slice_step) and 1 <= self.slice_step <= 100):
            raise ValueError(f"--slice-step must be an integer in [1, 100], got {self.slice_step!r}")
        if not (_is_num(self.min_brain_fraction) and 0.0 <= self.min_brain_fraction < 1.0):
            raise ValueError(f"--min-brain-fraction must be in [0, 1), got {self.min_brain_fraction!r}")

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
            need(valid_study_name(self.study), f"--study must be a plain name (letters, digits, - _ .), got {self.study!r}")
        self._validate_grouping()
        self._validate_phantom()
        self._validate_volume_options()
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
                    from models._pretrained import download_allowed, missing_weights_message

                    if not model_zoo.weights_obtainable(name, weights_dir=self.weights_dir, offline=self.offline):
                        message = missing_weights_message(name, info.timm_name, offline=not download_allowed(self.offline))
                        raise ValueError(f"--pretrained yes: {message}")
                if _is_int(self.image_size) and info.patch_size and self.image_size % info.patch_size:
                    raise ValueError(f"--image-size {self.image_size} is not a multiple of {name}'s patch size "
                                     f"{info.patch_size}; pick a multiple or drop {name} from --models")
                if _is_int(self.image_size) and self.image_size < info.min_image_size:
                    raise ValueError(f"--image-size {self.image_size} is below {name}'s minimum "
                                     f"{info.min_image_size}; raise it or drop {name} from --models")
        need(self.n_trials is None or _is_int(self.n_trials) and self.n_trials >= 1,
             f"--n-trials must be an integer >= 1, got {self.n_trials!r}")
        need(_is_num(self.timeout) and self.timeout >= 0, f"--timeout must be >= 0 seconds (0 = no limit), got {self.timeout!r}")
        need(_is_int(self.epochs) and 1 <= self.epochs <= 1000, f"--epochs must be an integer in [1, 1000], got {self.epochs!r}")
        need(isinstance(self.search_epochs, bool), f"search_epochs must be a bool, got {self.search_epochs!r}")
        need(isinstance(self.offline, bool), f"offline must be True or False, got {self.offline!r}")
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
        self._validate_nested()
        if self.storage is not None:
            kind, target = parse_storage_url(self.storage)  # raises ValueError naming the URL
            if kind == "journal":  # a journal path given on the command line is relative to the working folder
                self.storage = str(Path(target).resolve())
        need(_is_int(self.workers) and 1 <= self.workers <= 64, f"--workers must be an integer in [1, 64], got {self.workers!r}")
        need(_is_int(self.seed) and self.seed >= 0, f"--seed must be an integer >= 0, got {self.seed!r}")
        need(self.device in ("auto", "cpu", "cuda", "mps") or str(self.device).startswith("cuda:"),
             f"--device must be auto, cpu, cuda[:N] or mps, got {self.device!r}")
        need(_is_int(self.heartbeat_interval) and self.heartbeat_interval >= 1,
             f"--heartbeat-interval must be an integer >= 1, got {self.heartbeat_interval!r}")
        need(_is_int(self.heartbeat_grace) and self.heartbeat_grace > self.heartbeat_interval,
             f"--heartbeat-grace must be an integer > --heartbeat-interval, got {self.heartbeat_grace!r}")

    def _validate_grouping(self) -> None:
        """``--group-by`` and ``--phash-threshold``."""
        if not (isinstance(self.group_by, str) and (self.group_by in GROUP_BY or Path(self.group_by).is_file())):
            raise ValueError(f"--group-by must be one of {list(GROUP_BY)} or a groups CSV file, got {self.group_by!r}")
        if not (_is_int(self.phash_threshold) and 0 <= self.phash_threshold <= 64):
            raise ValueError(f"--phash-threshold must be an integer in [0, 64], got {self.phash_threshold!r}")

    def _validate_phantom(self) -> None:
        """The ``phantom_*`` fields (the cohort's values are checked by :func:`data.phantom.default_dataset`)."""
        if self.phantom_label_level not in ("slice", "subject"):
            raise ValueError(f"--phantom-label-level must be 'slice' or 'subject', got {self.phantom_label_level!r}")
        if not (_is_int(self.phantom_n) and self.phantom_n >= 20):
            raise ValueError(f"--phantom-n must be an integer >= 20, got {self.phantom_n!r}")
        if not (_is_num(self.phantom_difficulty) and 0.0 <= self.phantom_difficulty <= 1.0):
            raise ValueError(f"--phantom-difficulty must be in [0, 1], got {self.phantom_difficulty!r}")
        if not (isinstance(self.phantom_cohort, dict) and set(self.phantom_cohort) <= set(PHANTOM_COHORT)):
            raise ValueError(f"phantom_cohort must be a dict with keys among {list(PHANTOM_COHORT)}, "
                             f"got {self.phantom_cohort!r}")

    def _validate_nested(self) -> None:
        """``--outer-folds`` (and the nested run's own ``outer_fold``); ``--test-size`` stays the parent's own."""
        if self.outer_folds is not None and not (_is_int(self.outer_folds) and 2 <= self.outer_folds <= 10):
            raise ValueError(f"--outer-folds must be an integer in [2, 10], got {self.outer_folds!r}")
        if self.outer_folds is not None and self.refit is not True:
            raise ValueError("--outer-folds needs the refits (each outer fold's winner is scored on its test part): "
                             "drop --no-refit")
        if self.outer_fold is not None and not (self.outer_folds is not None and _is_int(self.outer_fold)
                                                and 0 <= self.outer_fold < self.outer_folds):
            raise ValueError(f"outer_fold must be an integer in [0, --outer-folds), got {self.outer_fold!r} "
                             f"with --outer-folds {self.outer_folds!r}")

    # ------------------------------------------------------------------------------ derived
    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        base = Path(self.data).expanduser().resolve().name if self.data else "phantom"
        return f"{base}_{self.preset}"

    @property
    def study_dir(self) -> Path:
        return Path(self.leaderboards).expanduser() / self.study_name

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["models"] = list(self.models)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, validate: bool = True) -> SearchConfig:
        """Rebuild a config from :meth:`to_dict` output or a study's ``config.json``.

        Unknown keys are ignored; ``out`` (version 1's name of ``leaderboards``) is accepted; a config
        without ``phantom_cohort`` (written before it existed) gets the default cohort ``{}``, not the preset's.
        ``validate=False`` restores a finished study's settings without re-running the CLI checks
        (its data folder or weights folder may be gone; only a refit needs them).
        """
        values = dict(values)
        if "out" in values and "leaderboards" not in values:
            values["leaderboards"] = values.pop("out")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        if isinstance(kwargs.get("models"), list):
            kwargs["models"] = tuple(kwargs["models"])
        kwargs.setdefault("phantom_cohort", {})  # a study from before the field ran the default cohort
        if validate:
            return cls(**kwargs)
        config = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            setattr(config, f.name, kwargs.get(f.name, default))
        config._apply_preset()
        return config


def cpu_preset_models(*, weights_dir: str | None = None, offline: bool = False) -> tuple[str, ...]:
    """The ``cpu`` preset's models on this machine, cheapest first.

    The pixel baselines; ``<backbone>+logreg|svm_rbf|knn`` for every backbone whose ImageNet weights
    can be had (:func:`models.weights_obtainable`: local files, a pip package, the hub caches, or a
    download when online); ``simple_cnn`` from scratch; fine-tunes of the pretrained CNNs among
    ``efficientnet_lite0`` and ``resnet18``.
    """
    import models as model_zoo

    def obtainable(name: str) -> bool:
        return model_zoo.weights_obtainable(name, weights_dir=weights_dir, offline=offline)

    lane_backbones = [b for b in ("efficientnet_lite0", "resnet18", "efficientnet_b0", "vit_tiny") if obtainable(b)]
    lane = [f"{b}+{head}" for b in lane_backbones for head in ("logreg", "svm_rbf", "knn")]
    finetune = [b for b in ("efficientnet_lite0", "resnet18") if b in lane_backbones]
    return ("logreg", "svm_rbf", *lane, "simple_cnn", *finetune)


#: Fields that define what a trial's number means: a resumed study must agree on them.
STUDY_DEFINING = ("folds", "test_size", "image_size", "seed", "group_by", "phash_threshold", "window", "epochs",
                  "search_epochs", "outer_fold")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
