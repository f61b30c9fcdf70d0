"""The search space: each architecture's first (default) trial and the define-by-run Optuna space.

Every range comes from the model registry (``ModelInfo.param_space``, the one source of truth):
``lr`` for ImageNet-initialised models, ``lr_scratch`` for random init, ``weight_decay``, and the
classical baselines' ``C`` / ``gamma``. Batch sizes follow from the data (:data:`BATCH_SIZES`
capped by the smallest training fold).
"""
from __future__ import annotations

import math
from typing import Any

import optuna

from automl.config import SearchConfig

__all__ = [
    "BATCH_SIZES",
    "CLASSICAL_C_POINTS",
    "MIN_STEPS_PER_EPOCH",
    "imagenet_possible",
    "model_range",
    "default_params",
    "default_trials",
    "suggest_config",
]

BATCH_SIZES = (8, 16, 32, 64)
#: The default trial's batch size leaves at least this many optimizer steps per epoch (see default_params).
MIN_STEPS_PER_EPOCH = 4
#: A new study runs each classical baseline at this many ``C`` values (centres of equal bins of its log
#: range, see :func:`default_trials`): a classical fit costs a fraction of one deep trial, and the
#: baseline sets the bar every network must beat.
CLASSICAL_C_POINTS = 3

def imagenet_possible(model: str, config: SearchConfig) -> bool:
    """Whether ``model`` can start from ImageNet weights in this run."""
    import models as model_zoo

    if not model_zoo.get_model_info(model).supports_pretrained or config.pretrained == "no":
        return False
    return config.pretrained == "yes" or model_zoo.weights_obtainable(model, weights_dir=config.weights_dir,
                                                                      offline=config.offline)


def model_range(model: str, key: str) -> tuple[float, float, float]:
    """``(low, high, default)`` of a searched parameter of ``model`` from the registry.

    ``default`` is the hint's ``default`` or the log-midpoint of the range.

    Raises:
        ValueError: The registry gives ``model`` no such range (the message names both).
    """
    import models as model_zoo

    hint = model_zoo.get_model_info(model).param_space.get(key)
    if not (isinstance(hint, dict) and "low" in hint and "high" in hint):
        raise ValueError(f"the model registry gives {model!r} no search range for {key!r}")
    low, high = float(hint["low"]), float(hint["high"])
    default = float(hint.get("default", math.sqrt(low * high)))
    return low, high, default


def _lr_key(model: str, imagenet: bool) -> str:
    import models as model_zoo

    return "lr" if imagenet or "lr_scratch" not in model_zoo.get_model_info(model).param_space else "lr_scratch"


def _head_params(model: str, trial: optuna.trial.BaseTrial | None) -> dict[str, Any]:
    """The scikit-learn head's parameters of a classical baseline or a frozen-feature candidate.

    With ``trial`` they are suggested (``<model>_C``, ``<model>_gamma``, ``<model>_n_neighbors``,
    log-uniform over the registry's ranges); without, the registry's defaults, keyed the same way.
    """
    import models as model_zoo

    out: dict[str, Any] = {}
    for key, hint in model_zoo.get_model_info(model).param_space.items():
        if key not in ("C", "gamma", "n_neighbors"):
            continue
        low, high, default = model_range(model, key)
        name = f"{model}_{key}"
        if key == "n_neighbors":
            out[name] = (trial.suggest_int(name, int(low), int(high), log=True) if trial is not None
                         else int(round(default)))
        else:
            out[name] = trial.suggest_float(name, low, high, log=True) if trial is not None else default
    return out


def default_params(model: str, config: SearchConfig, *, max_batch_size: int = 64) -> dict[str, Any]:
    """A sensible first configuration of ``model`` (enqueued once per architecture in a new study).

    Learning rate and regularisation are the registry's defaults for the init the model will
    actually get (:func:`model_range`), so the leaderboard compares every architecture at a
    reasonable setting before TPE explores. The batch size is the largest of 8/16/32 that still
    gives :data:`MIN_STEPS_PER_EPOCH` steps per epoch on the smallest training fold (``max_batch_size``):
    on a small training fold a short run needs steps more than large batches.
    """
    import models as model_zoo

    info = model_zoo.get_model_info(model)
    params: dict[str, Any] = {"model": model}
    if info.kind == "classical" or info.head is not None:
        return {**params, **_head_params(model, None)}
    imagenet = imagenet_possible(model, config)
    params["lr"] = model_range(model, _lr_key(model, imagenet))[2]
    fitting = [b for b in BATCH_SIZES if b <= 32 and b * MIN_STEPS_PER_EPOCH <= max_batch_size]
    params["batch_size"] = fitting[-1] if fitting else BATCH_SIZES[0]
    params["weight_decay"] = model_range(model, "weight_decay")[2]
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
       the pruner never stops them (see :class:`automl.objective.Objective`);
    2. then, for each classical baseline and frozen-feature head with a ``C``, ``CLASSICAL_C_POINTS - 1`` (or
       ``CLASSICAL_C_POINTS``, when the default is not one of them) more values of ``C``: with the
       default, the ``CLASSICAL_C_POINTS`` values are the centres of equal bins of the log ``C`` range.
       A linear model's regularisation decides whether it underfits or memorises pixels, its fits
       are cheap, and TPE then starts with a picture of the whole range instead of one point.

    Returns:
        ``(params, is_default_trial)`` pairs for ``study.enqueue_trial``; all of them when
        ``config.n_trials`` is ``None`` (the ``cpu`` preset's fixed plan).
    """
    import models as model_zoo

    defaults = [default_params(name, config, max_batch_size=max_batch_size) for name in config.models]
    trials = [(params, True) for params in defaults]
    for name, base in zip(config.models, defaults):
        if "C" not in model_zoo.get_model_info(name).param_space:  # classical baselines and lane heads
            continue
        low, high, _ = model_range(name, "C")
        for i in range(CLASSICAL_C_POINTS):
            c = math.exp(math.log(low) + (i + 0.5) / CLASSICAL_C_POINTS * (math.log(high) - math.log(low)))
            if not math.isclose(c, base[f"{name}_C"], rel_tol=1e-9):
                trials.append(({**base, f"{name}_C": float(c)}, False))
    return trials if config.n_trials is None else trials[: config.n_trials]


def suggest_config(trial: optuna.trial.BaseTrial, config: SearchConfig, *, max_batch_size: int = 64) -> Any:
    """The search space, define-by-run: one trial's :class:`automl.train.TrainConfig`.

    * ``model`` — categorical over ``config.models``.
    * Deep models: ``lr`` log-uniform over the registry's range for the model's init (``lr`` or
      ``lr_scratch``, within 1e-5..1e-3); ``batch_size`` in {8, 16, 32, 64} capped by
      ``max_batch_size`` (the smallest training fold, so a batch never exceeds the data);
      ``weight_decay`` log-uniform over the registry's range; ``aug_strength`` in [0, 1];
      ``finetune`` in {full, two_stage, gradual} only when the model can start from ImageNet
      weights (random init only trains ``full``); ``epochs`` in [ceil(E/2), E] only when ``search_epochs``.
    * Classical baselines: ``<model>_C`` and, for the RBF SVM, ``svm_rbf_gamma``, log-uniform over
      the registry's ranges.

    Parameters shared by all deep models keep one name (``lr``...) so TPE learns across
    architectures (Optuna allows a float parameter's range to differ between trials); parameters
    that only exist for some models carry the model in their name.

    Sampler choice (see :func:`automl.strategy.make_sampler`): ``TPESampler(multivariate=True,
    group=True, constant_liar=True)``. This space is conditional (classical models have no ``lr``);
    ``group=True`` lets multivariate TPE model each sub-space jointly, and ``constant_liar`` keeps
    parallel workers from proposing the same point.
    """
    import models as model_zoo
    from automl.train import TrainConfig

    model = trial.suggest_categorical("model", list(config.models))
    info = model_zoo.get_model_info(model)
    imagenet = imagenet_possible(model, config)
    # "auto" without weights would warn on every fold; ask for what will actually happen
    pretrained = config.pretrained if imagenet else "no"
    fixed = dict(model=model, seed=config.seed, device=config.device, pretrained=pretrained, epochs=config.epochs,
                 weights_dir=config.weights_dir, offline=config.offline)
    if info.kind == "classical" or info.head is not None:
        head = {key.removeprefix(f"{model}_"): value for key, value in _head_params(model, trial).items()}
        if info.kind == "classical":
            fixed = {**fixed, "pretrained": "no", "weights_dir": None}
        return TrainConfig(**fixed, **head)
    lr_low, lr_high, _ = model_range(model, _lr_key(model, imagenet))
    wd_low, wd_high, _ = model_range(model, "weight_decay")
    sizes = [b for b in BATCH_SIZES if b <= max(BATCH_SIZES[0], max_batch_size)]
    params: dict[str, Any] = dict(
        lr=trial.suggest_float("lr", lr_low, lr_high, log=True),
        batch_size=trial.suggest_categorical("batch_size", sizes),
        weight_decay=trial.suggest_float("weight_decay", wd_low, wd_high, log=True),
        aug_strength=trial.suggest_float("aug_strength", 0.0, 1.0),
    )
    params["finetune"] = trial.suggest_categorical("finetune", ["full", "two_stage", "gradual"]) if imagenet else "full"
    if config.search_epochs:
        params["epochs"] = trial.suggest_int("epochs", max(1, math.ceil(config.epochs / 2)), config.epochs)
    return TrainConfig(**{**fixed, **params})
