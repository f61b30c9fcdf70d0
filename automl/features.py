"""The frozen-feature lane of the search: backbone features computed once, scikit-learn heads fitted in seconds.

A candidate ``<backbone>+<head>`` (:mod:`models.frozen`) never trains its backbone, so its features
depend only on the image, the backbone and its weights. :class:`FeatureCache` keeps them on disk
under ``cache_dir()/features/<backbone>_<init>_<size>_<weights digest>.npz``, keyed by a digest of each image's
``uint8`` bytes (which already carry the manifest's window and size): every trial, fold, refit and
later study on the same images reuses them, so after the first extraction a trial costs the head
fit alone. :func:`fit_frozen` is what :func:`automl.train.fit_fold` runs for such a candidate:
standardise the training features, fit the head (``LogisticRegression``, ``SVC`` + Platt scaling on
its decision values, ``KNeighborsClassifier``), carry it into a :class:`models.FeatureHead` and return a
:class:`~automl.train_config.FitResult` whose model maps images to logits like every other network.
"""
from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models
from automl._fit_parts import val_auc
from automl.train_config import FitResult, ReportCallback, TrainConfig
from data._files import atomic_writer
from data._io import cache_dir

__all__ = ["FeatureCache", "feature_cache", "fit_frozen", "fit_head"]

logger = logging.getLogger(__name__)

_DIGEST_BYTES = 16
_CACHES: dict[tuple[Any, ...], FeatureCache] = {}
_LOCK = threading.Lock()


def image_digests(images: np.ndarray) -> np.ndarray:
    """One 16-byte BLAKE2b digest per image of ``uint8 (N, S, S)``, as an ``(N,)`` array of ``S16``."""
    return np.array([hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=_DIGEST_BYTES).digest()
                     for img in images], dtype=f"S{_DIGEST_BYTES}")


def _weights_digest(model: Any) -> str:
    """8 hex digits of a digest of the backbone's weights (its classifier, random in a feature extractor,
    left out): features of other weights never mix, and every process finds the same file."""
    net = getattr(model, "backbone", model)
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    skip = {id(t) for t in head.parameters()} if isinstance(head, torch.nn.Module) else set()
    digest = hashlib.blake2b(digest_size=4)
    for name, tensor in sorted(net.state_dict(keep_vars=True).items()):
        if id(tensor) in skip:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Pooled features of one frozen backbone, on disk and in memory, keyed by image content.

    Args:
        backbone: A :class:`models.FrozenBackbone`.
        folder: Where the ``.npz`` lives (default ``cache_dir()/features``).
    """

    def __init__(self, backbone: Any, folder: Path | None = None) -> None:
        self.backbone = backbone
        name = (f"{backbone.model_name}_{backbone.init.replace(':', '-')}_{backbone.image_size}_"
                f"{_weights_digest(backbone.model)}.npz")
        self.path = Path(folder or cache_dir() / "features") / name
        self._index: dict[bytes, int] = {}
        self._rows = np.zeros((0, backbone.num_features), dtype=np.float32)
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                keys, rows = stored["keys"], stored["features"]
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable feature cache %s (%s)", self.path, exc)
            return
        if rows.ndim != 2 or rows.shape[1] != self.backbone.num_features or len(keys) != len(rows):
            logger.warning("ignoring feature cache %s: shape %s does not fit %s", self.path, rows.shape, self.backbone)
            return
        self._rows = rows.astype(np.float32, copy=False)
        self._index = {bytes(k): i for i, k in enumerate(keys)}

    def _save(self) -> None:
        keys = np.array(sorted(self._index, key=self._index.get), dtype=f"S{_DIGEST_BYTES}")
        try:
            with atomic_writer(self.path, "wb") as handle:
                np.savez(handle, keys=keys, features=self._rows)
        except OSError as exc:  # a read-only cache only costs speed
            logger.warning("could not write the feature cache: %s", exc)

    def __len__(self) -> int:
        return len(self._index)

    def features(self, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        """``float32 (N, D)`` features of ``uint8 (N, S, S)`` images; only unseen images run the backbone."""
        digests = image_digests(images)
        missing = [i for i, d in enumerate(digests) if bytes(d) not in self._index]
        unique_missing = list({bytes(digests[i]): i for i in missing}.values())
        if unique_missing:
            t0 = time.perf_counter()
            new = self.backbone.extract(np.ascontiguousarray(images[unique_missing]), batch_size=batch_size)
            start = len(self._rows)
            self._rows = np.concatenate([self._rows, new])
            for j, i in enumerate(unique_missing):
                self._index[bytes(digests[i])] = start + j
            self._save()
            logger.info("%s features of %d new image(s) in %.1f s (cache: %d)", self.backbone.model_name,
                        len(unique_missing), time.perf_counter() - t0, len(self))
        return self._rows[[self._index[bytes(d)] for d in digests]]


def feature_cache(backbone: str, *, image_size: int, pretrained: str, weights_dir: str | None, offline: bool,
                  device: str = "auto") -> FeatureCache:
    """The process-wide :class:`FeatureCache` of a backbone (built, and its weights resolved, once)."""
    key = (backbone, image_size, pretrained, weights_dir, offline, str(models.pick_device(device)))  # "auto" == "cpu" here
    with _LOCK:
        if key not in _CACHES:
            frozen = models.load_backbone(backbone, image_size=image_size, pretrained=pretrained,
                                          weights_dir=weights_dir, offline=offline, device=device)
            _CACHES[key] = FeatureCache(frozen)
        return _CACHES[key]


def fit_head(kind: str, F_train: np.ndarray, y_train: np.ndarray, *, num_classes: int, config: TrainConfig) -> Any:
    """Fit a lane head on standardised features; return a :class:`models.FeatureHead`.

    ``svm_rbf`` probabilities: Platt scaling, a one-feature logistic regression on the SVM's
    decision values (scikit-learn's ``SVC(probability=True)`` runs an internal 5-fold CV instead,
    five times the cost and not seeded the same way).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    scaler = StandardScaler().fit(F_train)
    Z = scaler.transform(F_train)
    common = dict(num_classes=num_classes, center=scaler.mean_, scale=scaler.scale_)
    if kind == "logreg":
        estimator = LogisticRegression(C=config.C, max_iter=2000, random_state=config.seed).fit(Z, y_train)
        return models.head_from_sklearn(kind, estimator=estimator, **common)
    if kind == "svm_rbf":
        estimator = SVC(C=config.C, kernel="rbf", gamma=config.gamma, random_state=config.seed).fit(Z, y_train)
        decision = estimator.decision_function(Z).reshape(-1, 1)
        platt = LogisticRegression(C=1.0).fit(decision, y_train)
        return models.head_from_sklearn(kind, estimator=estimator, platt=(float(platt.coef_[0, 0]),
                                                                          float(platt.intercept_[0])), **common)
    estimator = KNeighborsClassifier(n_neighbors=min(config.n_neighbors, len(Z)), weights="distance").fit(Z, y_train)
    return models.head_from_sklearn(kind, estimator=estimator, train=Z, labels=y_train, **common)


def fit_frozen(data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], config: TrainConfig, num_classes: int,
               report: ReportCallback | None, t_start: float) -> FitResult:
    """One fold of a ``<backbone>+<head>`` candidate: cached features, a fitted head, one report."""
    Xtr, ytr, Xva, yva = data
    info = models.get_model_info(config.model)
    cache = feature_cache(info.backbone, image_size=int(Xtr.shape[-1]), pretrained=config.pretrained,
                          weights_dir=config.weights_dir, offline=config.offline, device=config.device)
    t0 = time.perf_counter()
    F_train, F_val = cache.features(Xtr), cache.features(Xva)
    head = fit_head(info.head, F_train, ytr, num_classes=num_classes, config=config)
    model = models.assemble_lane(config.model, cache.backbone.model, head).cpu().eval()
    with torch.inference_mode():
        probs = models.logits_to_probabilities(head(torch.from_numpy(F_val)), num_classes).double().numpy()
    clipped = np.clip(probs[np.arange(len(yva)), yva], 1e-7, 1.0)
    seconds = time.perf_counter() - t0
    metrics = {"epoch": 0, "stage": "frozen", "train_loss": math.nan, "val_loss": float(-np.log(clipped).mean()),
               "val_auc": val_auc(yva, probs), "lr": math.nan, "seconds": seconds,
               "images_per_second": len(Xtr) / seconds if seconds > 0 else math.inf}
    pruned = bool(report(0, dict(metrics))) if report is not None else False
    return FitResult(model=model, init=model.init, history=[metrics], best_epoch=0, best_metrics=dict(metrics),
                     val_probabilities=probs, fit_seconds=time.perf_counter() - t_start,
                     images_per_second=metrics["images_per_second"], pruned=pruned, finetune_used="frozen",
                     device=str(cache.backbone.device))
