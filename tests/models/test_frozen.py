"""Tests for models.frozen: scikit-learn heads carried into torch, lane models built, saved, loaded, exported."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC

import models
from models.frozen import HEADS, LANE_BACKBONES, FeatureHead, head_from_sklearn, lane_name


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 40)
    Z = rng.normal(size=(80, 6)) + y[:, None] * 1.2
    Z_test = rng.normal(size=(20, 6)) + np.array([0, 1] * 10)[:, None] * 1.2
    return Z, y, Z_test


def _probs(head: FeatureHead, Z: np.ndarray, num_classes: int = 2) -> np.ndarray:
    with torch.inference_mode():
        return models.logits_to_probabilities(head(torch.as_tensor(Z, dtype=torch.float32)), num_classes).numpy()


def _identity(d: int) -> dict[str, np.ndarray]:
    return {"center": np.zeros(d), "scale": np.ones(d)}


def test_logreg_head_equals_sklearn(blobs) -> None:
    Z, y, Z_test = blobs
    est = LogisticRegression(C=0.5).fit(Z, y)
    head = head_from_sklearn("logreg", num_classes=2, estimator=est, **_identity(6))
    np.testing.assert_allclose(_probs(head, Z_test), est.predict_proba(Z_test), atol=1e-5)


def test_multiclass_logreg_head_equals_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = np.arange(90) % 3
    Z = rng.normal(size=(90, 5)) + y[:, None]
    est = LogisticRegression(C=1.0, max_iter=1000).fit(Z, y)
    head = head_from_sklearn("logreg", num_classes=3, estimator=est, **_identity(5))
    np.testing.assert_allclose(_probs(head, Z[:10], 3), est.predict_proba(Z[:10]), atol=1e-5)


def test_svm_head_reproduces_the_decision_function(blobs) -> None:
    Z, y, Z_test = blobs
    est = SVC(C=2.0, gamma=0.1).fit(Z, y)
    head = head_from_sklearn("svm_rbf", num_classes=2, estimator=est, platt=(1.0, 0.0), **_identity(6))
    with torch.inference_mode():
        decision = head(torch.as_tensor(Z_test, dtype=torch.float32))[:, 0].numpy()
    np.testing.assert_allclose(decision, est.decision_function(Z_test), atol=1e-4)
    with pytest.raises(ValueError, match="binary"):
        head_from_sklearn("svm_rbf", num_classes=3, estimator=est, **_identity(6))


def test_knn_head_equals_distance_weighted_sklearn(blobs) -> None:
    Z, y, Z_test = blobs
    est = KNeighborsClassifier(n_neighbors=7, weights="distance").fit(Z, y)
    head = head_from_sklearn("knn", num_classes=2, estimator=est, train=Z, labels=y, **_identity(6))
    np.testing.assert_allclose(_probs(head, Z_test), np.clip(est.predict_proba(Z_test), 1e-6, 1 - 1e-6), atol=1e-4)


def test_standardisation_is_applied(blobs) -> None:
    Z, y, Z_test = blobs
    center, scale = Z.mean(0), Z.std(0)
    est = LogisticRegression().fit((Z - center) / scale, y)
    head = head_from_sklearn("logreg", num_classes=2, estimator=est, center=center, scale=scale)
    np.testing.assert_allclose(_probs(head, Z_test), est.predict_proba((Z_test - center) / scale), atol=1e-5)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_a_head_loads_into_a_fresh_one_of_any_size(blobs, kind: str) -> None:
    Z, y, Z_test = blobs
    est = {"logreg": LogisticRegression(), "svm_rbf": SVC(gamma=0.1), "knn": KNeighborsClassifier(5)}[kind].fit(Z, y)
    fitted = head_from_sklearn(kind, num_classes=2, estimator=est, train=Z, labels=y, **_identity(6))
    fresh = FeatureHead(kind, 2)
    assert not fresh.fitted
    with pytest.raises(RuntimeError, match="never fitted"):
        fresh(torch.zeros(1, 6))
    fresh.load_state_dict(fitted.state_dict())
    np.testing.assert_array_equal(_probs(fresh, Z_test), _probs(fitted, Z_test))


def test_bad_head_kind_and_missing_knn_data(blobs) -> None:
    with pytest.raises(ValueError, match="head must be one of"):
        FeatureHead("forest", 2)
    Z, y, _ = blobs
    with pytest.raises(ValueError, match="training vectors"):
        head_from_sklearn("knn", num_classes=2, estimator=KNeighborsClassifier(3).fit(Z, y), **_identity(6))


def test_every_pretrained_backbone_has_the_three_heads() -> None:
    names = set(models.list_models())
    for backbone in LANE_BACKBONES:
        for head in HEADS:
            info = models.get_model_info(lane_name(backbone, head))
            assert (info.backbone, info.head, info.kind) == (backbone, head, "frozen")
            assert info.timm_name == models.get_model_info(backbone).timm_name
    assert {"efficientnet_lite0+logreg", "resnet18+svm_rbf", "vit_tiny+knn"} <= names
    assert set(models.list_models(kind="frozen")) == {lane_name(b, h) for b in LANE_BACKBONES for h in HEADS}
    assert not set(models.list_models(kind="deep")) & set(models.list_models(kind="frozen"))


def _fitted_lane(kind: str, size: int = 64) -> tuple[torch.nn.Module, np.ndarray]:
    """efficientnet_lite0 (ImageNet weights from its pip package) + a head fitted on its own features."""
    rng = np.random.default_rng(0)
    X = (rng.random((24, size, size)) * 255).astype(np.uint8)
    y = np.array([0, 1] * 12)
    X[y == 1, 10:30, 10:30] = 255
    backbone = models.load_backbone("efficientnet_lite0", image_size=size, pretrained="yes", device="cpu")
    F = backbone.extract(X)
    center, scale = F.mean(0), F.std(0) + 1e-6
    Z = (F - center) / scale
    est = {"logreg": LogisticRegression(C=0.1), "svm_rbf": SVC(gamma=1e-3), "knn": KNeighborsClassifier(5)}[kind]
    head = head_from_sklearn(kind, num_classes=2, estimator=est.fit(Z, y), center=center, scale=scale,
                             train=Z, labels=y)
    model = models.assemble_lane(lane_name("efficientnet_lite0", kind), backbone.model, head)
    assert model.init == "imagenet:package" and model.normalization["in_chans"] == 3
    return model, X


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_lane_model_saves_loads_and_explains(tmp_path: Path, kind: str) -> None:
    model, X = _fitted_lane(kind)
    with torch.inference_mode():
        direct = models.logits_to_probabilities(model(torch.from_numpy(X).float().div(255).unsqueeze(1)), 2).numpy()
    folder = models.save_checkpoint(model, tmp_path / kind, card={"classes": ["Normal", "Stroke"]})
    predictor = models.load_predictor(folder, device="cpu")
    assert predictor.card["init"] == "imagenet:package"
    np.testing.assert_allclose(predictor.predict_proba(X), direct, atol=1e-3)  # channels_last, batches of 8
    attribution = models.explain(predictor, X[1], method="grad_cam")
    assert attribution.heatmap.shape == (64, 64) and np.isfinite(attribution.heatmap).all()
    if kind != "knn":  # a kNN vote is flat where all k neighbours agree: its map may be blank there
        assert np.abs(attribution.heatmap).max() > 0


def test_lane_model_exports_to_onnx(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    from models.export import export_onnx

    model, X = _fitted_lane("knn")
    folder = models.save_checkpoint(model, tmp_path / "knn", card={"classes": ["Normal", "Stroke"]})
    path = export_onnx(folder, tmp_path / "knn.onnx")
    session = onnxruntime.InferenceSession(str(path))
    batch = X[:6].astype(np.float32)[:, None] / 255.0
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {session.get_inputs()[0].name: batch})))
    expected = models.load_predictor(folder, device="cpu").predict_proba(X[:6])
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-4)
