"""Out-of-distribution check: how far is an input from the images a model was trained on?

A classifier answers for every input, also for a chest CT, a photograph or a head scan in another
window; the probability alone does not say that the input is unlike anything the model has seen.
This module measures that distance and calibrates a threshold for it.

The distance (a Mahalanobis distance in a small feature space, Lee et al. 2018, "A simple unified
framework for detecting out-of-distribution samples and adversarial attacks"):

1. **What the model sees**, :func:`model_features`: a deep model's penultimate features (the input of
   its classifier, :meth:`models.StrokeNet.head`, e.g. timm's pooled ``forward_features``).
   Classical models (logistic regression, SVM on down-sampled pixels) contribute none: in their
   pixel space every new patient is far away (a head a little larger than any in training moves
   the skull into pixels that were always air), so on the phantom their pixels flagged whole
   held-out patients, where the CNNs' pooled features and the statistics alone flagged about the 1 %
   the threshold allows (``tests/models/test_ood.py``).
2. **What any reader sees**, :func:`image_statistics`: mean and spread of the intensities, the share
   of black and of saturated pixels, the edge energy and the radius of the non-black part (how
   large the head is in the frame), all on the model input (uint8 ``S x S``).
3. The model features are standardised (each by its spread on the training part, at least
   :data:`SPREAD_FLOOR` of the median spread) and reduced to their ``k`` leading principal
   components (``k <= 8`` and ``<= N / 10``, PCA of the training part), each divided by its spread;
   the statistics are standardised. Together: one vector of ``k + 6`` numbers (6 for classical models).
4. The distance is the Mahalanobis distance of that vector from the training part's mean, with the
   Ledoit-Wolf shrunk covariance of the training part (stable with few images).

Calibration: the reference is fitted on the refit's **training part** and the threshold is the
``99``-th percentile of the distances of the refit's held-out **calibration part** (images of the
same study the reference never saw), so about 1 % of in-distribution images are flagged by
construction. :func:`compute_reference` does both; ``automl.refit.refit_one`` saves the result as
``ood.safetensors`` in the model folder, next to ``card.json``; :func:`models.load_predictor` loads
it (``Predictor.ood``, ``Predictor.ood_score``). Model folders saved before this check have no file:
their predictor has ``ood = None`` and no flag.

Example::

    from models.ood import compute_reference
    ref = compute_reference(model, X[fit_index], X[calibration])   # uint8 (N, S, S) arrays
    ref.save(model_folder)                                          # model_folder / "ood.safetensors"
    predictor = models.load_predictor(model_folder)
    predictor.ood_score("scan.png")   # OODScore(distance=3.1, threshold=5.4, flagged=False)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_PERCENTILE",
    "OOD_FILE",
    "STATISTICS",
    "OODReference",
    "OODScore",
    "compute_reference",
    "fit_reference",
    "image_statistics",
    "load_reference",
    "model_features",
]

logger = logging.getLogger(__name__)

#: File name of the reference inside a model folder (next to ``card.json``).
OOD_FILE = "ood.safetensors"
#: Percentile of the calibration part's distances used as the threshold.
DEFAULT_PERCENTILE = 99.0
#: Most principal components kept of the model features.
MAX_COMPONENTS = 8
#: Training images used to fit the reference (a seeded random subset above this).
MAX_FIT_IMAGES = 4000
#: Names of the :func:`image_statistics` columns, in order.
STATISTICS: tuple[str, ...] = ("mean", "std", "dark_fraction", "bright_fraction", "edge_energy",
                               "foreground_radius")
FORMAT_VERSION = 1
#: Smallest spread of a model feature, as a share of the median spread: a unit that never varied in
#: training (a dead ReLU unit) must not dominate the distance.
SPREAD_FLOOR = 0.1
_DARK, _BRIGHT = 0.05, 0.95
_STAT_FLOOR = 0.01  # smallest spread of a statistic (they live in [0, 1]): a constant one never divides by 0
_ARRAYS = ("feature_center", "feature_scale", "axes", "score_scale", "stat_center", "stat_scale", "mean",
           "precision", "calibration_distances")


class OODScore(NamedTuple):
    """One input's distance from the training images, the threshold and whether it is above it."""

    distance: float
    threshold: float
    flagged: bool


# ---------------------------------------------------------------------------------------- features
def _check_images(images: Any) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim not in (3, 4) or arr.dtype != np.uint8 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"images must be uint8 (N, S, S) or (N, C, S, S) (the cache format), "
                         f"got {arr.dtype} {tuple(arr.shape)}.")
    return arr


def image_statistics(images: np.ndarray) -> np.ndarray:
    """Six intensity and size statistics of each image, ``float64 (N, 6)`` (columns :data:`STATISTICS`).

    Args:
        images: uint8 ``(N, S, S)``: model inputs (the cache format).

    Columns: mean and standard deviation of the intensities in [0, 1]; the share of dark (< 0.05)
    and of saturated (> 0.95) pixels; the mean absolute difference of neighbouring pixels (edge
    energy); the root-mean-square distance of the non-dark pixels from the image centre in units of
    ``S`` (how large the head is in the frame; 0 when all pixels are dark).
    """
    images = _check_images(images)
    if images.ndim == 4:  # a window set: the statistics of the first window (the brain window of "ich")
        images = images[:, 0]
    chunk = 256  # float copies of 256 images at a time: bounded memory for large studies at 224 px
    parts = [_statistics(images[start:start + chunk]) for start in range(0, len(images), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, len(STATISTICS)))


def _statistics(images: np.ndarray) -> np.ndarray:
    arr = images.astype(np.float64) / 255.0
    n, size = arr.shape[0], arr.shape[1]
    flat = arr.reshape(n, -1)
    dx = np.abs(np.diff(arr, axis=2)).mean(axis=(1, 2)) if size > 1 else np.zeros(n)
    dy = np.abs(np.diff(arr, axis=1)).mean(axis=(1, 2)) if size > 1 else np.zeros(n)
    centre = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size]
    r2 = (((yy - centre) ** 2 + (xx - centre) ** 2) / float(size) ** 2).reshape(-1)
    foreground = flat > _DARK
    counts = foreground.sum(axis=1)
    radius = np.sqrt(np.divide((foreground * r2).sum(axis=1), counts, out=np.zeros(n), where=counts > 0))
    return np.stack([flat.mean(axis=1), flat.std(axis=1), (flat < _DARK).mean(axis=1),
                     (flat > _BRIGHT).mean(axis=1), (dx + dy) / 2.0, radius], axis=1)


def _classifier_of(model: Any) -> Any:
    """The classifier module of a deep model: ``StrokeNet.head()``, or a ``head`` submodule."""
    import torch

    head = getattr(model, "head", None)
    if isinstance(head, torch.nn.Module):
        return head
    return head() if callable(head) else None


def model_features(model: Any, images: np.ndarray, *, batch_size: int = 32, with_logits: bool = False) -> Any:
    """The features the model classifies, ``float64 (N, D)``.

    Deep models (:class:`models.StrokeNet`): the input of the classifier (:meth:`~models.StrokeNet.head`,
    captured by a forward pre-hook: timm's pooled ``forward_features``, the small CNNs' pooled
    feature map, a frozen-feature lane's backbone vector). Classical models: none, ``(N, 0)``; their
    reference uses the image statistics alone (see the module docstring for why not their pixels).

    Args:
        model: A deep model (``nn.Module`` taking float ``(B, 1, S, S)`` in [0, 1]) or a
            :class:`models.ClassicalModel`.
        images: uint8 ``(N, S, S)``.
        batch_size: Images per forward pass (deep models).
        with_logits: Also return the model's logits of the same passes, ``(features, logits tensor)``: a
            prediction and its out-of-distribution distance from one forward pass (deep models only).

    Raises:
        ValueError: Bad images, or a deep model without a classifier module to hook.
    """
    arr = _check_images(images)
    from models.classical import ClassicalModel

    if isinstance(model, ClassicalModel):
        if with_logits:
            raise ValueError("with_logits needs a deep model; a classical model has no logits to read.")
        return np.zeros((len(arr), 0))
    import torch

    from models._common import uint8_to_input

    classifier = _classifier_of(model)
    if not isinstance(classifier, torch.nn.Module):
        raise ValueError(f"{type(model).__name__} has no classifier module (head()) whose input could be read.")
    captured: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    owner = threading.get_ident()

    def grab(_module: Any, inputs: tuple[Any, ...]) -> None:
        # the model may be shared (the Gradio app runs two requests at a time): only this call's passes
        if threading.get_ident() == owner:
            captured.append(inputs[0].detach().flatten(1).float().cpu())

    try:
        device = next(model.parameters()).device
    except StopIteration:  # pragma: no cover - every registered deep model has parameters
        device = torch.device("cpu")
    was_training = model.training
    handle = classifier.register_forward_pre_hook(grab)
    try:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(arr), batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(arr[start:start + batch_size]))
                out = model(uint8_to_input(chunk.to(device)))
                if with_logits:
                    logits.append(out.detach().float().cpu())
    finally:
        handle.remove()
        model.train(was_training)
    features = torch.cat(captured).numpy().astype(np.float64) if captured else np.zeros((0, 0))
    if with_logits:
        return features, (torch.cat(logits) if logits else torch.zeros(0))
    return features


# --------------------------------------------------------------------------------------- reference
@dataclass(frozen=True)
class OODReference:
    """The training images' feature distribution and the calibrated distance threshold.

    Attributes:
        feature_center, feature_scale: Per-feature mean and spread of the model features ``(D,)``.
        axes: ``(k, D)`` orthonormal principal axes of the standardised model features.
        score_scale: ``(k,)`` spread of the training part along each axis (the scores are divided by it).
        stat_center, stat_scale: Mean and spread of the :func:`image_statistics` ``(6,)``.
        mean, precision: Mean ``(M,)`` and inverse Ledoit-Wolf covariance ``(M, M)`` of the reduced
            vectors of the training part.
        threshold: The ``percentile``-th percentile of the calibration part's distances.
        percentile: See ``threshold``.
        calibration_distances: The calibration part's distances (sorted), for display.
        n_fit: Training images the reference was fitted on.
        feature_kind: ``"penultimate"`` (deep) or ``"statistics"`` (classical: statistics only, ``D = 0``).
    """

    feature_center: np.ndarray
    feature_scale: np.ndarray
    axes: np.ndarray
    score_scale: np.ndarray
    stat_center: np.ndarray
    stat_scale: np.ndarray
    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    percentile: float
    calibration_distances: np.ndarray
    n_fit: int
    feature_kind: str = "penultimate"

    @property
    def num_features(self) -> int:
        """``D``: the length of the model feature vectors the reference expects."""
        return int(self.feature_center.shape[0])

    @property
    def n_calibration(self) -> int:
        return int(self.calibration_distances.shape[0])

    def vectors(self, features: np.ndarray, statistics: np.ndarray) -> np.ndarray:
        """The reduced vectors ``(N, M)`` of model features and statistics (before the mean is subtracted)."""
        features = np.asarray(features, dtype=np.float64)
        statistics = np.asarray(statistics, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"features must be (N, {self.num_features}) for this reference, got {features.shape}; "
                             "were they computed with another model?")
        if statistics.shape != (features.shape[0], len(STATISTICS)):
            raise ValueError(f"statistics must be ({features.shape[0]}, {len(STATISTICS)}), got {statistics.shape}.")
        z = (features - self.feature_center) / self.feature_scale
        scores = (z @ self.axes.T) / self.score_scale
        return np.concatenate([scores, (statistics - self.stat_center) / self.stat_scale], axis=1)

    def distances(self, features: np.ndarray, statistics: np.ndarray) -> np.ndarray:
        """Mahalanobis distances ``(N,)`` from the training part."""
        d = self.vectors(features, statistics) - self.mean
        return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, self.precision, d), 0.0))

    def score(self, distance: float) -> OODScore:
        """The :class:`OODScore` of one distance (flagged when strictly above the threshold)."""
        distance = float(distance)
        return OODScore(distance=distance, threshold=float(self.threshold), flagged=bool(distance > self.threshold))

    # --- files ------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``folder/ood.safetensors`` atomically (arrays + a JSON metadata entry); returns the path."""
        from safetensors.numpy import save

        from data._files import atomic_writer

        arrays = {name: np.ascontiguousarray(getattr(self, name), dtype=np.float64) for name in _ARRAYS}
        meta = {"format_version": FORMAT_VERSION, "threshold": float(self.threshold),
                "percentile": float(self.percentile), "n_fit": int(self.n_fit), "feature_kind": self.feature_kind,
                "statistics": list(STATISTICS),
                "method": "Mahalanobis distance (Ledoit-Wolf covariance of the training part) of PCA-reduced model "
                          "features and image statistics; threshold = percentile of the calibration part"}
        path = Path(folder) / OOD_FILE
        with atomic_writer(path, "wb") as handle:
            handle.write(save(arrays, metadata={"ood": json.dumps(meta)}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> OODReference:
        """Read a file written by :meth:`save`.

        Raises:
            ValueError: The file is not a readable reference (the message names it).
        """
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as handle:
                meta = json.loads((handle.metadata() or {})["ood"])
                arrays = {name: handle.get_tensor(name) for name in _ARRAYS}
        except Exception as err:  # noqa: BLE001 - safetensors/json raise several types for a damaged file
            raise ValueError(f"{path} is not a readable out-of-distribution reference "
                             f"({type(err).__name__}: {err}).") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}.")
        return cls(**arrays, threshold=float(meta["threshold"]), percentile=float(meta["percentile"]),
                   n_fit=int(meta["n_fit"]), feature_kind=str(meta.get("feature_kind", "penultimate")))


def load_reference(folder: str | Path) -> OODReference | None:
    """The reference saved in a model folder, or ``None`` when the folder has none (older models).

    Raises:
        ValueError: The file exists but cannot be read.
    """
    path = Path(folder) / OOD_FILE
    return OODReference.load(path) if path.is_file() else None


def fit_reference(fit_features: np.ndarray, fit_statistics: np.ndarray, calibration_features: np.ndarray,
                  calibration_statistics: np.ndarray, *, percentile: float = DEFAULT_PERCENTILE,
                  max_components: int = MAX_COMPONENTS, feature_kind: str = "penultimate") -> OODReference:
    """Fit the reference on the training part and calibrate its threshold on the calibration part.

    Args:
        fit_features, fit_statistics: Model features ``(N, D)`` and :func:`image_statistics` ``(N, 6)``
            of the training part.
        calibration_features, calibration_statistics: The same of the held-out calibration part.
        percentile: The threshold is this percentile of the calibration distances, in (0, 100].
        max_components: Most principal components kept (also at most ``D`` and ``N // 10``).
        feature_kind: Recorded in the file (``"penultimate"`` or ``"statistics"``).

    Raises:
        ValueError: Fewer than 8 training or 1 calibration images, mismatched shapes, non-finite
            values, or a bad percentile.
    """
    from sklearn.covariance import LedoitWolf

    F = np.asarray(fit_features, dtype=np.float64)
    S = np.asarray(fit_statistics, dtype=np.float64)
    if F.ndim != 2 or S.shape != (len(F), len(STATISTICS)):
        raise ValueError(f"fit_features (N, D) and fit_statistics (N, {len(STATISTICS)}) must match, "
                         f"got {F.shape} and {S.shape}.")
    if len(F) < 8:
        raise ValueError(f"an out-of-distribution reference needs at least 8 training images, got {len(F)}.")
    if len(calibration_features) < 1:
        raise ValueError("an out-of-distribution reference needs at least 1 calibration image, got 0.")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}.")
    if not (np.isfinite(F).all() and np.isfinite(S).all()):
        raise ValueError("fit_features / fit_statistics contain non-finite values.")
    center = F.mean(axis=0)
    spread = F.std(axis=0)
    scale = np.maximum(spread, SPREAD_FLOOR * (float(np.median(spread)) if spread.size else 0.0) + 1e-8)
    Z = (F - center) / scale
    k = min(max_components, F.shape[1], max(1, len(F) // 10))
    axes = np.linalg.svd(Z, full_matrices=False)[2][:k] if k else np.zeros((0, F.shape[1]))
    score_scale = np.maximum((Z @ axes.T).std(axis=0), 1e-8)
    reference = OODReference(
        feature_center=center, feature_scale=scale, axes=axes, score_scale=score_scale, stat_center=S.mean(axis=0),
        stat_scale=np.maximum(S.std(axis=0), _STAT_FLOOR), mean=np.zeros(0), precision=np.zeros((0, 0)),
        threshold=float("inf"), percentile=float(percentile), calibration_distances=np.zeros(0), n_fit=len(F),
        feature_kind=feature_kind)
    V = reference.vectors(F, S)
    lw = LedoitWolf(store_precision=True).fit(V)
    reference = dataclasses.replace(reference, mean=lw.location_, precision=lw.precision_)
    calibration = np.sort(reference.distances(calibration_features, calibration_statistics))
    threshold = float(np.percentile(calibration, percentile))
    logger.info("OOD reference: %d training images, %d features -> %d dims; calibration distances median %.2f, "
                "threshold (p%g of %d) %.2f", len(F), F.shape[1], V.shape[1], float(np.median(calibration)),
                percentile, len(calibration), threshold)
    return dataclasses.replace(reference, threshold=threshold, calibration_distances=calibration)


def compute_reference(model: Any, X_fit: np.ndarray, X_calibration: np.ndarray, *,
                      percentile: float = DEFAULT_PERCENTILE, max_fit_images: int = MAX_FIT_IMAGES,
                      seed: int = 0, features: Any = None) -> OODReference:
    """Features of both parts through ``model``, then :func:`fit_reference`.

    Args:
        model: The fitted model (deep or classical), as ``automl.train.fit_fold`` returns it.
        X_fit: uint8 ``(N, S, S)``: the images the model was trained on (the refit's training part).
        X_calibration: uint8 ``(M, S, S)``: held-out images of the same study (the calibration part).
        percentile: See :func:`fit_reference`.
        max_fit_images: Fit on a seeded random subset of at most this many training images.
        seed: Seed of that subset.
        features: Optional ``features(X) -> (N, D)`` giving the same penultimate features without running
            the model (the frozen-feature lane's cache); default: :func:`model_features`.
    """
    from models.classical import ClassicalModel

    X_fit = _check_images(X_fit)
    X_calibration = _check_images(X_calibration)
    if len(X_fit) > max_fit_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(X_fit), size=max_fit_images, replace=False))
        X_fit = X_fit[keep]
    kind = "statistics" if isinstance(model, ClassicalModel) else "penultimate"
    extract = features if features is not None else (lambda X: model_features(model, X))
    return fit_reference(extract(X_fit), image_statistics(X_fit), extract(X_calibration),
                         image_statistics(X_calibration), percentile=percentile, feature_kind=kind)
