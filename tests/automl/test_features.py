"""Tests for automl.features (the frozen-feature lane) and the lane inside a real search."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import pandas as pd
import pytest

import models
from automl import features, space  # noqa: F401
from automl.features import FeatureCache, fit_head, image_digests
from automl.search import SearchConfig, run_search
from automl.train import TrainConfig, fit_fold


class _CountingBackbone:
    """A stand-in FrozenBackbone: features = mean and std of each image, calls counted."""

    model_name, init, image_size, num_features = "fake", "imagenet:local", 8, 2

    def __init__(self) -> None:
        import torch

        self.calls: list[int] = []
        self.model = torch.nn.Linear(2, 2)
        torch.nn.init.ones_(self.model.weight)  # the same "weights" every time: one cache file
        torch.nn.init.zeros_(self.model.bias)

    def extract(self, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        self.calls.append(len(images))
        flat = images.reshape(len(images), -1).astype(np.float32)
        return np.stack([flat.mean(1), flat.std(1)], axis=1)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 8, 8)) * 255).astype(np.uint8)


def test_digests_key_by_content() -> None:
    X = _images(4)
    d = image_digests(np.concatenate([X, X[:1]]))
    assert len(set(d.tolist())) == 4 and d[0] == d[4]


def test_feature_cache_computes_each_image_once_and_persists(tmp_path: Path) -> None:
    backbone = _CountingBackbone()
    cache = FeatureCache(backbone, folder=tmp_path)
    X = _images(10)
    first = cache.features(X)
    again = cache.features(X[[3, 1, 3]])  # a fold: a subset, in another order, with a repeat
    np.testing.assert_array_equal(again, first[[3, 1, 3]])
    assert backbone.calls == [10]
    more = cache.features(np.concatenate([X[:2], _images(3, seed=1)]))
    assert backbone.calls == [10, 3] and more.shape == (5, 2)
    reopened = FeatureCache(_CountingBackbone(), folder=tmp_path)  # a new process reads the file
    assert len(reopened) == 13
    np.testing.assert_array_equal(reopened.features(X), first)
    assert reopened.backbone.calls == []
    other = _CountingBackbone()
    torch.nn.init.zeros_(other.model.weight)  # other weights: their own file, nothing reused
    assert len(FeatureCache(other, folder=tmp_path)) == 0


def test_the_cache_file_ignores_the_random_classifier_of_a_feature_extractor(tmp_path: Path) -> None:
    """Two builds of the same pretrained backbone (each with a fresh random classifier) share one file."""
    first = models.load_backbone("efficientnet_lite0", image_size=32, pretrained="yes", device="cpu")
    second = models.load_backbone("efficientnet_lite0", image_size=32, pretrained="yes", device="cpu")
    assert not torch.equal(first.model.backbone.get_classifier().weight, second.model.backbone.get_classifier().weight)
    assert FeatureCache(first, folder=tmp_path).path == FeatureCache(second, folder=tmp_path).path


def test_an_unreadable_cache_file_is_ignored(tmp_path: Path) -> None:
    backbone = _CountingBackbone()
    path = FeatureCache(backbone, folder=tmp_path).path
    path.write_bytes(b"not an npz")
    cache = FeatureCache(backbone, folder=tmp_path)
    assert len(cache) == 0 and cache.features(_images(2)).shape == (2, 2)


@pytest.mark.parametrize("kind", ["logreg", "svm_rbf", "knn"])
def test_fit_head_separates_separable_features(kind: str) -> None:
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 30)
    F = rng.normal(size=(60, 4)) + y[:, None] * 3.0
    head = fit_head(kind, F, y, num_classes=2, config=TrainConfig(model=f"resnet18+{kind}", C=1.0, gamma=0.1,
                                                                    n_neighbors=5))
    import torch

    with torch.inference_mode():
        p = models.logits_to_probabilities(head(torch.as_tensor(F, dtype=torch.float32)), 2).numpy()[:, 1]
    assert ((p > 0.5) == y).mean() > 0.9


def test_fit_fold_runs_the_lane_with_package_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STROKECT_CACHE", str(tmp_path))
    features._CACHES.clear()
    rng = np.random.default_rng(0)
    X = (rng.random((40, 32, 32)) * 255).astype(np.uint8)
    y = np.array([0, 1] * 20)
    X[y == 1, 8:20, 8:20] = 255
    config = TrainConfig(model="efficientnet_lite0+logreg", pretrained="yes", C=0.1, device="cpu")
    reports: list[dict] = []
    result = fit_fold(X[:28], y[:28], X[28:], y[28:], config=config, num_classes=2,
                      report=lambda e, m: reports.append(m) or False)
    assert result.init == "imagenet:package" and result.finetune_used == "frozen"
    assert len(reports) == 1 and reports[0]["stage"] == "frozen"
    assert result.best_metrics["val_auc"] > 0.9
    assert list((tmp_path / "features").glob("efficientnet_lite0_imagenet-package_32_*.npz"))


def test_search_space_of_the_lane() -> None:
    config = SearchConfig(preset="smoke", models=("efficientnet_lite0+svm_rbf", "efficientnet_lite0+knn"),
                          pretrained="auto")
    params = [space.default_params(m, config) for m in config.models]
    assert params[0] == {"model": "efficientnet_lite0+svm_rbf", "efficientnet_lite0+svm_rbf_C": 1.0,
                         "efficientnet_lite0+svm_rbf_gamma": 1e-3}
    assert params[1] == {"model": "efficientnet_lite0+knn", "efficientnet_lite0+knn_n_neighbors": 15}
    import optuna

    trial = optuna.trial.FixedTrial(params[1])
    tc = space.suggest_config(trial, config)
    assert tc.n_neighbors == 15 and tc.pretrained == "auto"


def test_a_search_ranks_the_lane_next_to_scratch_models(tmp_path: Path) -> None:
    config = SearchConfig(preset="smoke", study="lane", leaderboards=str(tmp_path),
                          models=("logreg", "efficientnet_lite0+logreg", "tiny_cnn"), n_trials=3, pretrained="auto",
                          leakage_audit="none")
    study_dir = run_search(config)
    board = pd.read_csv(study_dir / "leaderboard.csv")
    refits = board[board["refit"]].set_index("model")
    assert set(refits.index) == {"logreg", "efficientnet_lite0+logreg", "tiny_cnn"}
    assert refits.loc["efficientnet_lite0+logreg", "init"] == "imagenet:package"
    assert refits.loc["tiny_cnn", "init"] == "random"
    predictor = models.load_predictor(study_dir / "models" / "efficientnet_lite0+logreg")
    assert predictor.card["init"] == "imagenet:package"
    # the refit scored the test part from the feature cache (head only): the served network agrees
    from automl.results import load_study

    study = load_study(study_dir)
    test = study.test_predictions("efficientnet_lite0+logreg").head(6)
    served = [predictor.predict(study.data_dir / path)["probabilities"]["Stroke"] for path in test["path"]]
    np.testing.assert_allclose(served, test["prob_Stroke"], atol=0.02)
    assert (study_dir / "models" / "efficientnet_lite0+logreg" / "ood.safetensors").is_file()


def test_offline_yes_without_weights_stops_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from models import _pretrained

    monkeypatch.setattr(_pretrained, "find_pretrained_weights", lambda *a, **k: None)
    monkeypatch.setattr(_pretrained, "hub_reachable", lambda *a, **k: pytest.fail("offline must not probe the hub"))
    _pretrained._OBTAINABLE.clear()
    with pytest.raises(ValueError, match="--pretrained yes: No ImageNet weights for resnet18"):
        SearchConfig(preset="smoke", models=("resnet18",), pretrained="yes", offline=True, leaderboards=str(tmp_path))
    _pretrained._OBTAINABLE.clear()
