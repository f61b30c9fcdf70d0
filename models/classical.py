"""Classical baselines on down-sampled pixels, behind the same fit/predict interface as the deep models.

Both start from the cached uint8 images ``(N, S, S)``: area-resize to ``feature_size x feature_size``
(default 32, never up-sampled) and scale to ``[0, 1]``, flatten, then

* ``logreg``: ``StandardScaler -> LogisticRegression(C)`` (L2, multinomial for > 2 classes);
* ``svm_rbf``: ``StandardScaler -> PCA(<= 50) -> SVC(rbf, C, gamma)`` one-vs-rest, with probabilities
  from Platt scaling (``CalibratedClassifierCV(method="sigmoid", ensemble=False)``: sigmoids fitted on
  cross-validated decision values, then one SVC fitted on all data).

Saving never pickles: :meth:`ClassicalModel.state_arrays` returns the plain numpy arrays that define the
fitted pipeline, and :meth:`ClassicalModel.from_state_arrays` rebuilds a model whose
:meth:`~ClassicalModel.predict_proba` recomputes the same probabilities from those arrays in numpy.
"""
from __future__ import annotations

import logging
import numbers
from typing import Any

import numpy as np
from scipy.special import expit, softmax

from models._registry import register_model

__all__ = ["ClassicalModel", "area_resize"]

logger = logging.getLogger(__name__)

_ESTIMATORS = ("logreg", "svm_rbf")
_MAX_PCA_COMPONENTS = 50
_MAX_CALIBRATION_FOLDS = 3


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix averaging input cells over each output cell's area (exact box filter)."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        start, end = i * scale, (i + 1) * scale
        for j in range(int(np.floor(start)), min(n_in, int(np.ceil(end)))):
            m[i, j] = (min(end, j + 1) - max(start, j)) / scale
    return m


def area_resize(images: np.ndarray, size: int) -> np.ndarray:
    """Area-average ``(N, S, S)`` images to ``(N, size, size)`` float64 (like OpenCV ``INTER_AREA``).

    Args:
        images: Images, any numeric dtype.
        size: Output side length (<= ``S``).
    """
    n_in = images.shape[-1]
    if size == n_in:
        return images.astype(np.float64)
    m = _area_matrix(n_in, size)
    return np.einsum("ij,njk,lk->nil", m, images.astype(np.float64), m, optimize=True)


class ClassicalModel:
    """A scikit-learn baseline on down-sampled pixels.

    Args:
        name: ``"logreg"`` or ``"svm_rbf"``.
        num_classes: Number of classes.
        image_size: Side length ``S`` of the uint8 images it is fitted on.
        feature_size: Side length after area down-sampling (capped at ``image_size``).
        C: Inverse regularisation strength (both estimators).
        gamma: RBF kernel width for ``svm_rbf``: a positive float, ``"scale"`` (sklearn's
            ``1 / (n_features * X.var())``) or ``"auto"`` (``1 / n_features``), features after PCA.
        seed: Random state (PCA).

    Attributes:
        kind: ``"classical"``. init: ``"none"`` (nothing is pretrained or randomly initialised).
        model_name, num_classes, image_size: As given.
        pipeline: The fitted ``sklearn.pipeline.Pipeline`` (``None`` for a model restored from arrays).
    """

    kind = "classical"
    init = "none"

    def __init__(
        self,
        name: str,
        *,
        num_classes: int,
        image_size: int,
        feature_size: int = 32,
        C: float = 1.0,
        gamma: float | str = "scale",
        seed: int = 0,
    ) -> None:
        if name not in _ESTIMATORS:
            raise ValueError(f"name must be one of {_ESTIMATORS}, got {name!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
        if not isinstance(feature_size, int) or feature_size < 1:
            raise ValueError(f"feature_size must be a positive integer, got {feature_size!r}.")
        if not float(C) > 0:
            raise ValueError(f"C must be positive, got {C!r}.")
        if not (gamma in ("scale", "auto") or (isinstance(gamma, numbers.Real) and float(gamma) > 0)):
            raise ValueError(f"gamma must be a positive float, 'scale' or 'auto', got {gamma!r}.")
        self.model_name = name
        self.num_classes = num_classes
        self.image_size = image_size
        self.feature_size = min(feature_size, image_size)
        self.C = float(C)
        self.gamma = gamma if gamma in ("scale", "auto") else float(gamma)
        self.seed = seed
        self.pipeline: Any = None
        self._arrays: dict[str, np.ndarray] | None = None

    def __repr__(self) -> str:
        return (
            f"ClassicalModel({self.model_name!r}, num_classes={self.num_classes}, image_size={self.image_size}, "
            f"feature_size={self.feature_size}, C={self.C}, gamma={self.gamma!r})"
        )

    @property
    def is_fitted(self) -> bool:
        return self._arrays is not None

    # --- data ---------------------------------------------------------------------------------------------
    def _features(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        side = (self.image_size, self.image_size)
        if not (X.ndim == 3 and X.shape[1:] == side or X.ndim == 4 and X.shape[2:] == side):
            raise ValueError(
                f"{self.model_name} expects images of shape (N, {self.image_size}, {self.image_size}) or "
                f"(N, C, {self.image_size}, {self.image_size}) (one channel per CT window), got {X.shape}."
            )
        if X.dtype != np.uint8:
            raise ValueError(f"{self.model_name} expects uint8 images (the cache format), got dtype {X.dtype}.")
        # every window's channel area-resized, then all channels side by side
        small = area_resize(X.reshape(-1, *side), self.feature_size) / 255.0
        return small.reshape(len(X), -1)

    def _check_labels(self, y: np.ndarray, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},), got {y.shape}.")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y must hold integer class indices, got dtype {y.dtype}.")
        counts = np.bincount(y, minlength=self.num_classes) if y.min() >= 0 else None
        if counts is None or len(counts) != self.num_classes:
            raise ValueError(f"y must hold class indices 0..{self.num_classes - 1}, got values {np.unique(y)}.")
        if counts.min() < 2:
            raise ValueError(
                f"{self.model_name} needs at least 2 training images of every class; class counts are {counts.tolist()}."
            )
        return y.astype(np.int64)

    # --- fit ----------------------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray) -> ClassicalModel:
        """Fit on uint8 images ``(N, S, S)`` and integer labels ``(N,)`` (every class >= 2 images).

        Returns:
            ``self``.

        Raises:
            ValueError: On a bad shape, dtype or label set.
        """
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        features = self._features(X)
        y = self._check_labels(y, len(features))
        if self.model_name == "logreg":
            from sklearn.linear_model import LogisticRegression

            estimator = LogisticRegression(C=self.C, max_iter=5000)
            self.pipeline = Pipeline([("scaler", StandardScaler()), ("clf", estimator)]).fit(features, y)
        else:
            from sklearn.calibration import CalibratedClassifierCV
            from sklearn.decomposition import PCA
            from sklearn.model_selection import StratifiedKFold
            from sklearn.multiclass import OneVsRestClassifier
            from sklearn.svm import SVC

            n_components = min(_MAX_PCA_COMPONENTS, features.shape[0], features.shape[1])
            folds = int(min(_MAX_CALIBRATION_FOLDS, np.bincount(y).min()))
            svc = OneVsRestClassifier(SVC(kernel="rbf", C=self.C, gamma=self.gamma))
            calibrated = CalibratedClassifierCV(svc, method="sigmoid", cv=StratifiedKFold(folds), ensemble=False)
            self.pipeline = Pipeline(
                [
                    ("scaler", StandardScaler()),
                    ("pca", PCA(n_components=n_components, svd_solver="full", random_state=self.seed)),
                    ("clf", calibrated),
                ]
            ).fit(features, y)
        self._arrays = self._extract_arrays()
        return self

    def _extract_arrays(self) -> dict[str, np.ndarray]:
        steps = self.pipeline.named_steps
        a: dict[str, np.ndarray] = {
            "meta.estimator": np.array([_ESTIMATORS.index(self.model_name)], dtype=np.int64),
            "meta.num_classes": np.array([self.num_classes], dtype=np.int64),
            "meta.image_size": np.array([self.image_size], dtype=np.int64),
            "meta.feature_size": np.array([self.feature_size], dtype=np.int64),
            "meta.C": np.array([self.C], dtype=np.float64),
            "scaler.mean": steps["scaler"].mean_,
            "scaler.scale": steps["scaler"].scale_,
        }
        if self.model_name == "logreg":
            a["logreg.coef"] = steps["clf"].coef_
            a["logreg.intercept"] = steps["clf"].intercept_
        else:
            a["pca.mean"] = steps["pca"].mean_
            a["pca.components"] = steps["pca"].components_
            calibrated = steps["clf"].calibrated_classifiers_[0]
            svms = calibrated.estimator.estimators_
            a["calibration.a"] = np.array([c.a_ for c in calibrated.calibrators], dtype=np.float64)
            a["calibration.b"] = np.array([c.b_ for c in calibrated.calibrators], dtype=np.float64)
            for k, svm in enumerate(svms):
                a[f"svm{k}.support_vectors"] = svm.support_vectors_
                a[f"svm{k}.dual_coef"] = svm.dual_coef_
                a[f"svm{k}.intercept"] = svm.intercept_
                a[f"svm{k}.gamma"] = np.array([svm._gamma], dtype=np.float64)
        return {k: np.ascontiguousarray(v, dtype=v.dtype) for k, v in a.items()}

    # --- predict ------------------------------------------------------------------------------------------
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)`` for uint8 images ``(N, S, S)``.

        Uses the fitted scikit-learn pipeline when present, else the saved arrays (:meth:`from_state_arrays`).

        Raises:
            ValueError: If the model is not fitted or the images have the wrong shape/dtype.
        """
        if not self.is_fitted:
            raise ValueError(f"{self.model_name} is not fitted yet; call fit(X, y) first.")
        features = self._features(X)
        if self.pipeline is not None:
            return self.pipeline.predict_proba(features)
        return self._predict_proba_from_arrays(features)

    def _predict_proba_from_arrays(self, features: np.ndarray) -> np.ndarray:
        a = self._arrays
        assert a is not None
        z = (features - a["scaler.mean"]) / a["scaler.scale"]
        if self.model_name == "logreg":
            scores = z @ a["logreg.coef"].T + a["logreg.intercept"]
            if self.num_classes == 2:
                p = expit(scores[:, 0])
                return np.stack([1.0 - p, p], axis=1)
            return softmax(scores, axis=1)
        z = (z - a["pca.mean"]) @ a["pca.components"].T
        decisions = []
        for k in range(len(a["calibration.a"])):
            sv = a[f"svm{k}.support_vectors"]
            sq_dist = (z * z).sum(1)[:, None] + (sv * sv).sum(1)[None, :] - 2.0 * z @ sv.T
            kernel = np.exp(-a[f"svm{k}.gamma"][0] * np.maximum(sq_dist, 0.0))
            decisions.append(kernel @ a[f"svm{k}.dual_coef"][0] + a[f"svm{k}.intercept"][0])
        # Platt scaling per class (one-vs-rest), as sklearn's _SigmoidCalibration: p = expit(-(a f + b)).
        calibrated = np.stack(
            [expit(-(a["calibration.a"][k] * f + a["calibration.b"][k])) for k, f in enumerate(decisions)], axis=1
        )
        if self.num_classes == 2:
            return np.concatenate([1.0 - calibrated, calibrated], axis=1)
        total = calibrated.sum(axis=1, keepdims=True)
        uniform = np.full_like(calibrated, 1.0 / self.num_classes)
        return np.divide(calibrated, total, out=uniform, where=total != 0)

    # --- state --------------------------------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The numpy arrays that define the fitted model (input of :meth:`from_state_arrays`).

        Raises:
            ValueError: If the model is not fitted.
        """
        if self._arrays is None:
            raise ValueError(f"{self.model_name} is not fitted yet; nothing to save.")
        return {k: v.copy() for k, v in self._arrays.items()}

    @classmethod
    def from_state_arrays(cls, arrays: dict[str, np.ndarray]) -> ClassicalModel:
        """Rebuild a fitted model from :meth:`state_arrays` (no pickle, no scikit-learn object).

        Raises:
            ValueError: If arrays are missing or inconsistent.
        """
        try:
            name = _ESTIMATORS[int(arrays["meta.estimator"][0])]
            model = cls(
                name,
                num_classes=int(arrays["meta.num_classes"][0]),
                image_size=int(arrays["meta.image_size"][0]),
                feature_size=int(arrays["meta.feature_size"][0]),
                C=float(arrays["meta.C"][0]),
            )
            required = ["scaler.mean", "scaler.scale"]
            if name == "logreg":
                required += ["logreg.coef", "logreg.intercept"]
            else:
                required += ["pca.mean", "pca.components", "calibration.a", "calibration.b"]
                n_svm = len(arrays["calibration.a"])
                if n_svm != (1 if model.num_classes == 2 else model.num_classes):
                    raise ValueError(f"{n_svm} calibrators for {model.num_classes} classes")
                for k in range(n_svm):
                    required += [f"svm{k}.{x}" for x in ("support_vectors", "dual_coef", "intercept", "gamma")]
            missing = [k for k in required if k not in arrays]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            n_features = model.feature_size**2  # per channel; a window set has several
            if arrays["scaler.mean"].ndim != 1 or arrays["scaler.mean"].shape[0] % n_features:
                raise ValueError(f"scaler.mean has shape {arrays['scaler.mean'].shape}, expected ({n_features},)")
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise ValueError(f"Invalid classical model state: {err}") from None
        model._arrays = {k: np.asarray(v) for k, v in arrays.items()}
        if name == "svm_rbf":
            model.gamma = float(arrays["svm0.gamma"][0])
        return model


def _classical_builder(name: str, num_classes: int, image_size: int, kwargs: dict[str, Any]) -> ClassicalModel:
    kwargs.pop("in_chans", None)  # pixels of every channel are features: nothing to build differently
    allowed = {"C", "feature_size", "seed"} | ({"gamma"} if name == "svm_rbf" else set())
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"Unknown option(s) for {name!r}: {unknown}. Supported: {', '.join(sorted(allowed))}.")
    return ClassicalModel(name, num_classes=num_classes, image_size=image_size, **kwargs)


@register_model(
    kind="classical",
    family="classical",
    default_image_size=64,
    min_image_size=8,
    param_space={"C": {"low": 1e-4, "high": 10.0, "log": True}},
    description="Logistic regression on 32x32 area-downsampled, standardised pixels",
)
def logreg(*, num_classes: int, image_size: int, pretrained: str, weights_dir: Any = None, **kwargs: Any) -> ClassicalModel:
    """L2 logistic regression on down-sampled pixels (``pretrained`` "auto" means none)."""
    return _classical_builder("logreg", num_classes, image_size, kwargs)


@register_model(
    kind="classical",
    family="classical",
    default_image_size=64,
    min_image_size=8,
    param_space={"C": {"low": 0.1, "high": 100.0, "log": True}, "gamma": {"low": 1e-4, "high": 1e-1, "log": True}},
    description="RBF SVM (Platt-calibrated, one-vs-rest) on PCA of 32x32 area-downsampled pixels",
)
def svm_rbf(*, num_classes: int, image_size: int, pretrained: str, weights_dir: Any = None, **kwargs: Any) -> ClassicalModel:
    """RBF-kernel SVM with Platt-scaled probabilities (``pretrained`` "auto" means none)."""
    return _classical_builder("svm_rbf", num_classes, image_size, kwargs)
