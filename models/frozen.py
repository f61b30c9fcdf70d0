"""The frozen-feature lane: a pretrained backbone, frozen, with a scikit-learn head carried over to torch.

Candidates are registered as ``<backbone>+<head>`` (``efficientnet_lite0+logreg``, ``resnet18+svm_rbf``,
``vit_tiny+knn``, ...). Such a model is an ordinary :class:`~models._common.StrokeNet`: grey
``(B, 1, S, S)`` in ``[0, 1]`` -> logits, so the predictor, attributions (through the backbone) and
ONNX export treat it like any other network. Its backbone is the registered timm model with its
classifier removed (``reset_classifier(0)``: the global-pooled pre-logits vector, exactly what
:meth:`models.FrozenBackbone.extract` returns); its head is a :class:`FeatureHead`: standardisation
followed by

* ``logreg``: a linear layer (scikit-learn ``LogisticRegression``'s ``coef_`` / ``intercept_``);
* ``svm_rbf``: the RBF-kernel SVM's decision function over its support vectors, then a Platt
  sigmoid ``a * f + b`` (binary tasks);
* ``knn``: the inverse-distance-weighted vote of the ``k`` nearest training vectors (Euclidean,
  standardised; scikit-learn's ``weights="distance"``), as a logit — weighted, so the output has a
  gradient and attributions through the backbone mean something.

Fitting happens in ``automl`` (the features come from its disk cache); :func:`head_from_sklearn`
copies a fitted estimator's numbers into a :class:`FeatureHead`. Distances are written as
``|a|^2 - 2 a.b + |b|^2`` (matrix products, which every ONNX runtime has) rather than ``torch.cdist``.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from models._common import StrokeNet, num_outputs
from models._registry import get_model_info, register_model

__all__ = ["HEADS", "LANE_BACKBONES", "FeatureHead", "FeatureHeadNet", "assemble_lane", "head_from_sklearn", "lane_name"]

logger = logging.getLogger(__name__)

#: Heads of the lane and the search ranges automl.space reads (``C``, ``gamma``, ``n_neighbors``).
HEADS: dict[str, dict[str, Any]] = {
    "logreg": {"C": {"low": 1e-4, "high": 10.0, "log": True, "default": 0.05}},
    "svm_rbf": {"C": {"low": 0.1, "high": 100.0, "log": True, "default": 1.0},
                "gamma": {"low": 1e-5, "high": 1e-2, "log": True, "default": 1e-3}},
    "knn": {"n_neighbors": {"low": 3, "high": 50, "log": True, "default": 15}},
}
_BUFFERS = {
    "logreg": ("weight", "bias"),
    "svm_rbf": ("support", "dual_coef", "svm"),          # svm: [gamma, intercept, platt_a, platt_b]
    "knn": ("train_vectors", "train_onehot", "k"),
}
_EPS = 1e-6


def lane_name(backbone: str, head: str) -> str:
    """The registry name of a frozen-feature candidate, ``<backbone>+<head>``."""
    return f"{backbone}+{head}"


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` squared Euclidean distances as matrix products (ONNX-friendly ``cdist``)."""
    return ((a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1).unsqueeze(0)).clamp_min(0.0)


class FeatureHead(nn.Module):
    """Standardisation + a fitted scikit-learn classifier, as buffers (no trainable parameters).

    The buffers start empty and take the shapes of the state dict they load, so a checkpoint of any
    fit (any number of support vectors or training vectors) loads into a freshly built head.

    Args:
        kind: ``"logreg"``, ``"svm_rbf"`` or ``"knn"``.
        num_classes: Classes of the task (2 -> one logit).
    """

    def __init__(self, kind: str, num_classes: int) -> None:
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"head must be one of {sorted(HEADS)}, got {kind!r}.")
        self.kind = kind
        self.num_classes = num_classes
        for name in ("center", "scale", *_BUFFERS[kind]):
            self.register_buffer(name, torch.zeros(0))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in list(self._buffers):
            if prefix + name in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def fitted(self) -> bool:
        return self.center.numel() > 0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1)`` (binary) or ``(B, C)`` from pooled features ``(B, D)``."""
        if not self.fitted:
            raise RuntimeError("this FeatureHead was never fitted; build it with head_from_sklearn().")
        z = (features.float() - self.center) / self.scale
        if self.kind == "logreg":
            return z @ self.weight.T + self.bias
        if self.kind == "svm_rbf":
            gamma, intercept, platt_a, platt_b = self.svm.unbind()
            decision = torch.exp(-gamma * _squared_distances(z, self.support)) @ self.dual_coef + intercept
            return (platt_a * decision + platt_b).unsqueeze(1)
        squared = _squared_distances(z, self.train_vectors)
        nearest_sq, nearest = torch.topk(squared, int(self.k), dim=1, largest=False)
        weights = 1.0 / (torch.sqrt(nearest_sq + 1e-12) + _EPS)  # inverse distance, as weights="distance"
        votes = (self.train_onehot[nearest] * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True)
        votes = votes.clamp(_EPS, 1.0 - _EPS)
        if self.num_classes == 2:
            return torch.log(votes[:, 1:] / votes[:, :1])
        return torch.log(votes)


def head_from_sklearn(kind: str, *, num_classes: int, center: np.ndarray, scale: np.ndarray,
                      estimator: Any, platt: tuple[float, float] = (1.0, 0.0),
                      train: np.ndarray | None = None, labels: np.ndarray | None = None) -> FeatureHead:
    """A :class:`FeatureHead` holding a fitted estimator's numbers.

    Args:
        kind: ``"logreg"``, ``"svm_rbf"`` or ``"knn"``.
        num_classes: Classes of the task.
        center, scale: The standardisation (``StandardScaler.mean_`` / ``.scale_``), length ``D``.
        estimator: ``LogisticRegression`` | ``SVC(kernel="rbf")`` (binary) | ``KNeighborsClassifier``, fitted
            on standardised features.
        platt: ``(a, b)`` of the SVM's probability ``sigmoid(a * decision + b)``.
        train, labels: The standardised training vectors and their labels (``knn``).

    Raises:
        ValueError: An unsupported combination (a multiclass SVM), or shapes that do not fit.
    """
    head = FeatureHead(kind, num_classes)
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    state = {"center": t(center), "scale": t(np.where(np.asarray(scale) > 0, scale, 1.0))}
    if kind == "logreg":
        weight, bias = np.asarray(estimator.coef_), np.asarray(estimator.intercept_)
        if weight.shape[0] != num_outputs(num_classes):
            raise ValueError(f"logreg head: coef_ has {weight.shape[0]} rows for {num_classes} classes.")
        state |= {"weight": t(weight), "bias": t(bias)}
    elif kind == "svm_rbf":
        if num_classes != 2:
            raise ValueError(f"the svm_rbf head supports binary tasks only, got {num_classes} classes; use logreg or knn.")
        gamma = float(estimator._gamma)  # noqa: SLF001 - the resolved value of gamma="scale"/float
        state |= {"support": t(estimator.support_vectors_), "dual_coef": t(estimator.dual_coef_[0]),
                  "svm": t([gamma, float(estimator.intercept_[0]), platt[0], platt[1]])}
    else:
        if train is None or labels is None:
            raise ValueError("the knn head needs its standardised training vectors and labels.")
        onehot = np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=int)]
        k = min(int(estimator.n_neighbors), len(train))
        state |= {"train_vectors": t(train), "train_onehot": t(onehot), "k": torch.tensor(float(k))}
    head.load_state_dict(state)
    return head


class FeatureHeadNet(nn.Module):
    """The lane's network behind the :class:`StrokeNet` wrapper: pooled backbone features -> :class:`FeatureHead`."""

    def __init__(self, net: nn.Module, head: FeatureHead) -> None:
        super().__init__()
        self.net = net
        self.head = head
        self.num_features = int(getattr(net, "num_features", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


def assemble_lane(name: str, base: StrokeNet, head: FeatureHead, *, copy_backbone: bool = True) -> StrokeNet:
    """The lane candidate ``name`` from a built backbone model (its weights, init and normalisation) and a head.

    Args:
        name: ``<backbone>+<head>``.
        base: The backbone as built by its registry entry (e.g. a :class:`models.FrozenBackbone`'s ``model``).
        head: A :class:`FeatureHead` (fitted, or empty before a checkpoint loads).
        copy_backbone: Deep-copy the backbone network (``False`` takes it over, e.g. a fresh build).
    """
    import copy

    info = get_model_info(name)
    if info.head is None or info.head != head.kind:
        raise ValueError(f"{name!r} is not a frozen-feature candidate with a {head.kind!r} head.")
    net = copy.deepcopy(base.backbone) if copy_backbone else base.backbone
    net.reset_classifier(0)
    wrapped = FeatureHeadNet(net, head).requires_grad_(False)  # frozen backbone; the head holds buffers only
    return StrokeNet(wrapped, model_name=name, num_classes=head.num_classes, image_size=base.image_size,
                     init=base.init, mean=base.input_mean.flatten().tolist(), std=base.input_std.flatten().tolist(),
                     stage_fn=lambda m: [m.net, m.head], head_fn=lambda m: m.head)


def _build_lane(backbone: str, head: str, *, num_classes: int, image_size: int, pretrained: str,
                weights_dir: Any = None, offline: bool = False, in_chans: int = 1,
                _layout: str | None = None) -> StrokeNet:
    from models._registry import _model_entrypoints  # the base builder, with the same options

    base_kwargs: dict[str, Any] = {"offline": offline, "in_chans": in_chans}
    if _layout is not None:
        base_kwargs["_layout"] = _layout
    base = _model_entrypoints[backbone](num_classes=num_classes, image_size=image_size, pretrained=pretrained,
                                        weights_dir=weights_dir, **base_kwargs)
    return assemble_lane(lane_name(backbone, head), base, FeatureHead(head, num_classes), copy_backbone=False)


def _register_lane(backbone: str, head: str) -> None:
    base = get_model_info(backbone)

    def builder(**kwargs: Any) -> StrokeNet:
        return _build_lane(backbone, head, **kwargs)

    builder.__name__ = lane_name(backbone, head)
    builder.__doc__ = f"Frozen {backbone} features + a scikit-learn {head} head."
    register_model(
        kind="frozen", family=base.family, supports_pretrained=True, timm_name=base.timm_name,
        default_image_size=base.default_image_size, min_image_size=base.min_image_size, patch_size=base.patch_size,
        num_prefix_tokens=base.num_prefix_tokens, param_space=HEADS[head], backbone=backbone, head=head,
        gradcam_fn=lambda model, _base=base: _base.gradcam_layer(model.backbone.net),
        description=f"frozen {backbone} ImageNet features + {head} (scikit-learn, searched by Optuna)",
    )(builder)


#: Backbones of the lane: the registered models with ImageNet weights.
LANE_BACKBONES = ("efficientnet_lite0", "resnet18", "efficientnet_b0", "vit_tiny", "vit_small")
for _backbone in LANE_BACKBONES:
    for _head in HEADS:
        _register_lane(_backbone, _head)
