"""Measured faithfulness of attributions: do the heat maps point at the lesion, and do they depend on the model?

The synthetic phantom (:mod:`data.phantom`) ships lesion masks, so localisation can be *measured*:

* **Pointing game** (Zhang et al., 2016): is the maximum of the attribution inside the lesion mask?
  Ties are resolved fairly: the score is the share of maximal pixels inside the mask (1.0 or 0.0
  when the maximum is unique), so a constant map scores the mask's area fraction, not 1.
* **Mass in mask**: share of the *positive* attribution mass that falls inside the mask (signed
  maps: only evidence *for* the explained class counts; absolute maps: everything counts).
* **Random baseline**: a uniformly random map points at a uniformly random pixel, so its expected
  pointing score and its expected mass in mask both equal the mask's area fraction.
  ``random_mass`` is that expectation; ``random_pointing`` is measured with ``n_random`` seeded
  uniform random maps per image (a Monte-Carlo check of the same number).
* **Sanity check** (Adebayo et al., 2018, model randomisation): the same images are explained by
  the same architecture with re-initialised weights (``create_model(name, pretrained="no")`` under
  a fixed seed). The similarity is the Spearman rank correlation of the *absolute* maps (averaged
  over images); a method whose maps barely change (similarity > :data:`SANITY_THRESHOLD` = 0.9)
  shows the image, not the model, and is flagged (``sanity_flag = True``). When one of the two maps is
  constant the correlation is undefined; it counts as 0.0 (the maps differ) or as 1.0 when both are
  constant.

The study-level part (a study's refitted models on its test-part lesion images, written to
``attribution.csv``, and the command line) is :mod:`automl.attribution_eval`: ``models/`` never
imports ``automl/``.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from models.attribution import METHODS, applicable_methods, explain

__all__ = [
    "COLUMNS",
    "SANITY_THRESHOLD",
    "LesionImage",
    "evaluate",
    "lesion_images",
    "mass_in_mask",
    "pointing_game",
    "random_pointing",
    "randomized_model",
    "rank_similarity",
]

logger = logging.getLogger(__name__)

#: Columns of ``attribution.csv``, in order.
COLUMNS = ["method", "model", "pointing_game", "mass_in_mask", "random_pointing", "random_mass", "n",
           "sanity_similarity", "sanity_flag", "seconds_per_image"]
#: Above this Spearman similarity between trained-model and random-model maps a method is flagged.
SANITY_THRESHOLD = 0.9


# ---------------------------------------------------------------------------------------- metrics
def _check_pair(heatmap: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    heat = np.asarray(heatmap, dtype=np.float64)
    m = np.asarray(mask)
    if heat.ndim != 2 or m.ndim != 2:
        raise ValueError(f"heatmap and mask must be 2-D, got shapes {heat.shape} and {m.shape}.")
    if heat.shape != m.shape:
        raise ValueError(f"heatmap shape {heat.shape} and mask shape {m.shape} differ.")
    if not np.isfinite(heat).all():
        raise ValueError("heatmap holds NaN or infinite values.")
    m = m.astype(bool)
    if not m.any():
        raise ValueError("mask is empty: localisation is undefined for an image without a lesion.")
    return heat, m


def pointing_game(heatmap: Any, mask: Any, *, tolerance: int = 0) -> float:
    """Pointing game: is the attribution maximum inside the lesion mask?

    Args:
        heatmap: Attribution map (H, W); larger = more evidence.
        mask: Lesion mask (H, W), bool or 0/1 (0/255) values.
        tolerance: Count a hit within this Euclidean distance (pixels) of the mask (Zhang et al.
            use 15 px at 224 px).

    Returns:
        1.0 or 0.0 for a unique maximum; with ties, the share of maximal pixels inside the mask
        (the expected hit under random tie-breaking).

    Raises:
        ValueError: Shapes differ or are not 2-D, the mask is empty, the map is not finite, or
            ``tolerance`` is negative.
    """
    heat, m = _check_pair(heatmap, mask)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative int, got {tolerance!r}.")
    if tolerance:
        from scipy.ndimage import distance_transform_edt

        m = distance_transform_edt(~m) <= tolerance
    top = heat == heat.max()
    return float(np.count_nonzero(top & m) / np.count_nonzero(top))


def mass_in_mask(heatmap: Any, mask: Any) -> float:
    """Share of the positive attribution mass inside the lesion mask.

    Args:
        heatmap: Attribution map (H, W). Negative values (evidence against the class) are ignored.
        mask: Lesion mask (H, W).

    Returns:
        ``sum(max(h, 0) in mask) / sum(max(h, 0))`` in [0, 1]; NaN when the map has no positive
        value at all.

    Raises:
        ValueError: As :func:`pointing_game`.
    """
    heat, m = _check_pair(heatmap, mask)
    positive = np.clip(heat, 0.0, None)
    total = positive.sum()
    if total <= 0:
        return float("nan")
    return float(positive[m].sum() / total)


def random_pointing(mask: Any, *, n_maps: int = 100, seed: int | np.random.Generator = 0) -> float:
    """Pointing-game score of ``n_maps`` uniform random maps (expected value: the mask's area fraction).

    Args:
        mask: Lesion mask (H, W).
        n_maps: Number of random maps.
        seed: Seed or a numpy Generator.

    Returns:
        The mean pointing-game score of the random maps.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2 or not m.any():
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {m.shape} with {int(m.sum())} pixels set.")
    if isinstance(n_maps, bool) or not isinstance(n_maps, (int, np.integer)) or n_maps < 1:
        raise ValueError(f"n_maps must be a positive int, got {n_maps!r}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    flat = m.ravel()
    maps = rng.random((int(n_maps), flat.size))
    return float(flat[maps.argmax(axis=1)].mean())


def rank_similarity(a: Any, b: Any) -> float:
    """Spearman rank correlation of two absolute attribution maps (sanity-check similarity).

    Args:
        a: First map (any shape).
        b: Second map (same shape).

    Returns:
        Spearman's rho of ``|a|`` and ``|b|``; 1.0 when both are constant, 0.0 when only one is.
    """
    from scipy.stats import spearmanr

    x = np.abs(np.asarray(a, dtype=np.float64)).ravel()
    y = np.abs(np.asarray(b, dtype=np.float64)).ravel()
    if x.shape != y.shape:
        raise ValueError(f"maps of different sizes: {np.shape(a)} and {np.shape(b)}.")
    const_x, const_y = np.ptp(x) == 0, np.ptp(y) == 0
    if const_x or const_y:
        return 1.0 if const_x and const_y else 0.0
    return float(spearmanr(x, y).statistic)


def randomized_model(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """The same architecture as ``model`` with freshly initialised weights (``pretrained="no"``).

    A frozen-feature lane candidate keeps its fitted head (buffers, no weights to re-initialise) on a
    random backbone, so the check asks the same question: does the map depend on the learned features?

    Args:
        model: A deep model from :func:`models.create_model` (knows ``model_name``,
            ``num_classes`` and ``image_size``).
        seed: Torch seed for the initialisation.

    Returns:
        The re-initialised model in eval mode, on ``model``'s device.
    """
    import torch

    from models import create_model
    from models.frozen import FeatureHead

    name = getattr(model, "model_name", None)
    if not isinstance(name, str):
        raise ValueError("randomized_model needs a model built by models.create_model (no model_name attribute).")
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = create_model(name, num_classes=int(model.num_classes), image_size=int(model.image_size),
                             pretrained="no")
    head = getattr(getattr(model, "backbone", None), "head", None)
    if isinstance(head, FeatureHead):  # a frozen-feature lane: random backbone under the fitted head
        fresh.backbone.head.load_state_dict(head.state_dict())
    return fresh.to(device).eval()


# ---------------------------------------------------------------------------------------- evaluation
@dataclass
class LesionImage:
    """One image with a lesion, for localisation scoring.

    Attributes:
        source: What the predictor preprocesses (a path), or the model input array (S, S).
        mask: bool lesion mask, (S, S) of the model input or the source's own (H, W)
            (resized with :func:`data.resize_pad` like the image).
        target: Class to explain (name or index), normally the true class.
        name: Identifier for logs (relative path).
    """

    source: Any
    mask: np.ndarray
    target: int | str
    name: str = ""


def _mask_to_size(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape == (size, size):
        return mask.astype(bool)
    from data import resize_pad

    return resize_pad(mask.astype(np.float32), size) >= 0.5


def lesion_images(data_dir: str | Path, table: pd.DataFrame, *, max_images: int | None = None,
                  seed: int = 0) -> list[LesionImage]:
    """Images of ``table`` whose phantom lesion mask is not empty.

    Args:
        data_dir: Dataset root holding ``_masks/`` (see :func:`data.phantom.load_mask`).
        table: Rows with ``path`` (relative to ``data_dir``) and ``label`` (class name).
        max_images: Keep at most this many (a seeded random subset, in table order).
        seed: Seed of the subset.

    Returns:
        The lesion images (mask at the image's own size).

    Raises:
        ValueError: No lesion mask could be found for any row.
    """
    from data.phantom import load_mask

    data_dir = Path(data_dir)
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; found {list(table.columns)}.")
    out: list[LesionImage] = []
    for path, label in zip(table["path"].astype(str), table["label"].astype(str)):
        mask = load_mask(data_dir, path)
        if mask is None or not mask.any():
            continue
        out.append(LesionImage(source=data_dir / path, mask=mask, target=label, name=path))
    if not out:
        raise ValueError(
            f"No lesion masks found for the {len(table)} images under {data_dir / '_masks'}: localisation "
            f"scores need a dataset with masks (the synthetic phantom writes them)."
        )
    if max_images is not None and len(out) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(out), size=max_images, replace=False))
        out = [out[i] for i in keep]
    return out


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def evaluate(
    predictors: Mapping[str, Any],
    images: Sequence[LesionImage],
    *,
    methods: Sequence[str] | None = None,
    sanity_images: int = 8,
    n_random: int = 100,
    seed: int = 0,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Localisation and sanity scores per (method, model).

    Args:
        predictors: Model name -> :class:`models.Predictor` (deep models; classical ones are skipped).
        images: Lesion images (see :func:`lesion_images`).
        methods: Methods to score; default: every method that applies to each model. Methods that
            do not apply to a model (attention rollout on a CNN) are skipped for that model.
        sanity_images: Number of images (the first ones) explained again with the re-initialised
            model; 0 skips the sanity check (NaN similarity).
        n_random: Random maps per image for ``random_pointing``.
        seed: Seed of the random baseline and of the re-initialisation.
        method_options: Extra options per method, passed to :func:`models.attribution.explain`.

    Returns:
        A frame with :data:`COLUMNS`, one row per (method, model).
    """
    if methods is not None:
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise ValueError(f"Unknown attribution method(s) {bad}; expected some of {list(METHODS)}.")
    if not images:
        raise ValueError("No lesion images to evaluate.")
    if isinstance(sanity_images, bool) or not isinstance(sanity_images, int) or sanity_images < 0:
        raise ValueError(f"sanity_images must be a non-negative int, got {sanity_images!r}.")
    method_options = dict(method_options or {})
    rows: list[dict[str, Any]] = []
    for name, predictor in predictors.items():
        if not isinstance(getattr(predictor, "model", None), nn.Module):
            logger.info("Skipping %s: classical models have no attributions.", name)
            continue
        available = applicable_methods(name)
        chosen = [m for m in (methods or available) if m in available]
        size = int(predictor.image_size)
        rng = np.random.default_rng(seed)
        masks = [_mask_to_size(img.mask, size) for img in images]
        keep = [i for i, m in enumerate(masks) if m.any()]
        if not keep:
            raise ValueError(f"Every lesion mask vanishes at {size} px for model {name!r}.")
        rand_point = [random_pointing(masks[i], n_maps=n_random, seed=rng) for i in keep]
        rand_mass = [float(masks[i].mean()) for i in keep]
        fresh = randomized_model(predictor.model, seed=seed) if sanity_images and chosen else None
        for method in chosen:
            opts = dict(method_options.get(method, {}))
            points, masses, seconds, sims = [], [], [], []
            for k, i in enumerate(keep):
                img = images[i]
                att = explain(predictor, img.source, method=method, target=img.target, **opts)
                points.append(pointing_game(att.heatmap, masks[i]))
                masses.append(mass_in_mask(att.heatmap, masks[i]))
                seconds.append(att.seconds)
                if fresh is not None and k < sanity_images:
                    rnd = explain(fresh, att.image, method=method, target=att.target, **opts)
                    sims.append(rank_similarity(att.heatmap, rnd.heatmap))
            similarity = _nanmean(sims) if sims else float("nan")
            rows.append({
                "method": method,
                "model": name,
                "pointing_game": _nanmean(points),
                "mass_in_mask": _nanmean(masses),
                "random_pointing": _nanmean(rand_point),
                "random_mass": _nanmean(rand_mass),
                "n": len(keep),
                "sanity_similarity": similarity,
                "sanity_flag": bool(np.isfinite(similarity) and similarity > SANITY_THRESHOLD),
                "seconds_per_image": _nanmean(seconds),
            })
            logger.info("%s / %s: pointing %.2f (random %.2f), mass %.2f (random %.2f), sanity %.2f",
                        name, method, rows[-1]["pointing_game"], rows[-1]["random_pointing"],
                        rows[-1]["mass_in_mask"], rows[-1]["random_mass"], similarity)
    return pd.DataFrame(rows, columns=COLUMNS)
