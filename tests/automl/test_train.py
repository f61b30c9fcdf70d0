"""Tests of automl.train: configuration, learning, determinism, pruning, early stopping, fine-tuning."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import models
from automl import _deep_fit as deep_fit
from automl import _fit_parts as fit_parts
from automl import train as train_mod
from automl.train import FitResult, TrainConfig, extract_head_inputs, fit_fold


def blob_dataset(n: int, size: int = 32, *, num_classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy dark images; class k > 0 carries a bright disc of radius 2 + 2k at a random position."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    X = rng.normal(60.0, 20.0, (n, size, size))
    yy, xx = np.mgrid[:size, :size]
    for i in np.flatnonzero(y):
        cy, cx = rng.integers(size // 4, size - size // 4, 2)
        X[i][(yy - cy) ** 2 + (xx - cx) ** 2 < (2 + 2 * y[i]) ** 2] += 120.0
    return np.clip(X, 0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def fold() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = blob_dataset(96)
    return X[:64], y[:64], X[64:], y[64:]


def small_config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "model": "tiny_cnn", "epochs": 1, "batch_size": 16, "lr": 1e-3, "device": "cpu", "aug_strength": 0.5,
    }
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def small_fold(fold) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X_tr, y_tr, X_va, y_va = fold
    return X_tr[:24], y_tr[:24], X_va[:12], y_va[:12]


@pytest.fixture
def local_resnet_weights(tmp_path) -> str:
    """A random-init timm resnet18 saved where the model zoo looks for ImageNet weights."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(tmp_path / "resnet18.safetensors"))
    return str(tmp_path)


@pytest.fixture
def created(monkeypatch) -> list[Any]:
    """Record every model fit_fold builds (to inspect it from a report callback)."""
    made: list[Any] = []
    original = models.create_model

    def spy(*args: Any, **kwargs: Any) -> Any:
        model = original(*args, **kwargs)
        made.append(model)
        return model

    monkeypatch.setattr(models, "create_model", spy)
    return made


# --- TrainConfig -----------------------------------------------------------------------------------------


def test_config_defaults_round_trip():
    config = TrainConfig()
    assert config.hflip is True and config.finetune == "full"
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig(weights_dir=Path("/w")).weights_dir == "/w"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0.0), ("lr", -1e-4), ("lr", float("nan")), ("batch_size", 0), ("batch_size", 2.5),
        ("epochs", 0), ("weight_decay", -1.0), ("optimizer", "sgd"), ("scheduler", "step"),
        ("finetune", "partial"), ("aug_strength", 1.5), ("hflip", "yes"), ("patience", 0),
        ("pos_weight", "auto"), ("pos_weight", -2.0), ("pretrained", True), ("seed", -1), ("C", 0.0),
        ("gamma", "huge"), ("channels_last", "auto"), ("num_threads", 0), ("head_fraction", 1.0),
        ("unfreeze_lr_factor", 0.0), ("layer_decay", 2.0), ("model", ""), ("eval_batch_size", 0),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


# --- input validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda a: (a[0].astype(np.float32), *a[1:]), "uint8"),
        (lambda a: (a[0], a[1][:-1], *a[2:]), "labels"),
        (lambda a: (a[0], a[1] + 5, *a[2:]), "0..1"),
        (lambda a: (*a[:2], a[2][:, :16, :16], a[3]), "uint8|sizes"),
        (lambda a: (*a[:2], a[2][:0], a[3][:0]), "empty"),
    ],
)
def test_fit_fold_rejects_bad_arrays(fold, mutate, match):
    with pytest.raises(ValueError, match=match):
        fit_fold(*mutate(fold), config=small_config(), num_classes=2)


def test_fit_fold_rejects_bad_num_classes_and_config(fold):
    with pytest.raises(ValueError, match="num_classes"):
        fit_fold(*fold, config=small_config(), num_classes=1)
    with pytest.raises(ValueError, match="TrainConfig"):
        fit_fold(*fold, config={"model": "tiny_cnn"}, num_classes=2)
    with pytest.raises(ValueError, match="Unknown model"):
        fit_fold(*fold, config=small_config(model="no_such_net"), num_classes=2)


def test_pos_weight_options():
    y = np.array([0, 0, 0, 1])
    assert fit_parts._pos_weight(TrainConfig(pos_weight="balanced"), y, 2).item() == pytest.approx(3.0)
    assert fit_parts._pos_weight(TrainConfig(pos_weight=2.5), y, 2).item() == pytest.approx(2.5)
    assert fit_parts._pos_weight(TrainConfig(), y, 2) is None
    weights = fit_parts._pos_weight(TrainConfig(pos_weight="balanced"), np.array([0, 0, 1, 2]), 3)
    assert weights.tolist() == pytest.approx([4 / 6, 4 / 3, 4 / 3])
    with pytest.raises(ValueError, match="binary"):
        fit_parts._pos_weight(TrainConfig(pos_weight=2.0), np.array([0, 1, 2]), 3)


# --- learning and the result object ----------------------------------------------------------------------


def test_simple_cnn_learns_easy_task(fold):
    X_tr, y_tr, X_va, y_va = fold
    history: list[tuple[int, dict[str, Any]]] = []
    result = fit_fold(
        X_tr, y_tr, X_va, y_va,
        config=small_config(model="simple_cnn", epochs=2, pos_weight="balanced"),
        num_classes=2,
        report=lambda epoch, metrics: history.append((epoch, metrics)),
    )
    assert isinstance(result, FitResult)
    assert result.best_metrics["val_auc"] > 0.8
    assert [e for e, _ in history] == [0, 1]
    assert set(history[0][1]) >= {"val_auc", "val_loss", "train_loss", "lr", "seconds", "epoch"}
    assert result.best_metrics == result.history[result.best_epoch]
    assert result.val_probabilities.shape == (len(X_va), 2)
    assert np.allclose(result.val_probabilities.sum(axis=1), 1.0)
    assert result.init == "random" and result.finetune_used == "full" and not result.pruned
    assert result.fit_seconds > 0 and result.images_per_second > 0
    assert not result.model.training
    # The returned probabilities are the returned model's (best weights restored).
    with torch.inference_mode():
        logits = result.model(torch.from_numpy(X_va).float().div(255).unsqueeze(1))
    probs = models.logits_to_probabilities(logits, 2).numpy()
    assert np.allclose(probs, result.val_probabilities, atol=1e-5)


def test_multiclass_fit_returns_c_columns():
    X, y = blob_dataset(48, num_classes=3)
    result = fit_fold(X[:36], y[:36], X[36:], y[36:], config=small_config(pos_weight="balanced"), num_classes=3)
    assert result.val_probabilities.shape == (12, 3)
    assert np.allclose(result.val_probabilities.sum(axis=1), 1.0)
    assert 0.0 <= result.best_metrics["val_auc"] <= 1.0


def test_same_seed_identical_metrics_different_seed_differs(fold):
    runs = [fit_fold(*fold, config=small_config(epochs=2, seed=s), num_classes=2) for s in (3, 3, 4)]
    keys = ("val_auc", "val_loss", "train_loss")
    first, again, other = ([[h[k] for k in keys] for h in r.history] for r in runs)
    assert first == again
    assert np.array_equal(runs[0].val_probabilities, runs[1].val_probabilities)
    assert first != other


def test_single_class_validation_fold_does_not_crash(fold):
    X_tr, y_tr, X_va, y_va = fold
    neg = y_va == 0
    result = fit_fold(X_tr, y_tr, X_va[neg], y_va[neg], config=small_config(epochs=2), num_classes=2)
    assert math.isnan(result.best_metrics["val_auc"])
    assert math.isfinite(result.best_metrics["val_loss"])


# --- pruning and early stopping --------------------------------------------------------------------------


def test_report_true_prunes_immediately(fold):
    calls: list[int] = []

    def report(epoch: int, metrics: dict[str, Any]) -> bool:
        calls.append(epoch)
        return True

    result = fit_fold(*fold, config=small_config(epochs=5), num_classes=2, report=report)
    assert result.pruned
    assert calls == [0] and len(result.history) == 1


def test_early_stopping_restores_best_epoch(fold, monkeypatch):
    aucs = iter([0.9, 0.6, 0.7, 0.8, 0.85, 0.88])
    monkeypatch.setattr(fit_parts, "roc_auc", lambda y, P: next(aucs))
    X_tr, y_tr, X_va, y_va = fold
    result = fit_fold(X_tr, y_tr, X_va, y_va, config=small_config(epochs=6, patience=2), num_classes=2)
    assert len(result.history) == 3  # epoch 0 best, then two epochs without improvement
    assert result.best_epoch == 0 and result.best_metrics["val_auc"] == 0.9
    with torch.inference_mode():
        logits = result.model(torch.from_numpy(X_va).float().div(255).unsqueeze(1))
    assert np.allclose(models.logits_to_probabilities(logits, 2).numpy(), result.val_probabilities, atol=1e-5)


@pytest.mark.parametrize("scheduler", ["cosine", "plateau", "none"])
@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_schedulers_and_optimizers(fold, scheduler, optimizer):
    result = fit_fold(
        *fold, config=small_config(epochs=2, scheduler=scheduler, optimizer=optimizer, lr=2e-3), num_classes=2
    )
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == pytest.approx(2e-3)
    if scheduler == "cosine":
        assert lrs[1] < lrs[0]
    elif scheduler == "none":
        assert lrs[1] == lrs[0]


# --- fine-tuning strategies ------------------------------------------------------------------------------


def test_random_init_falls_back_to_full(fold):
    result = fit_fold(*fold, config=small_config(finetune="two_stage"), num_classes=2)
    assert result.finetune_used == "full" and result.init == "random"


@pytest.mark.parametrize("cache", [True, False])
def test_two_stage_reuses_frozen_backbone_features(small_fold, local_resnet_weights, monkeypatch, cache):
    X_tr, y_tr, X_va, y_va = small_fold
    counter = {"images": 0}
    made: list[Any] = []
    original = models.create_model

    def counted(*args: Any, **kwargs: Any) -> Any:
        model = original(*args, **kwargs)
        model.backbone.register_forward_pre_hook(
            lambda _m, a: counter.__setitem__("images", counter["images"] + len(a[0]))
        )
        made.append(model)
        return model

    monkeypatch.setattr(models, "create_model", counted)
    snapshots: list[dict[str, torch.Tensor]] = []

    def report(epoch: int, metrics: dict[str, Any]) -> bool:
        snapshots.append({k: v.clone() for k, v in made[0].backbone.state_dict().items() if k.startswith("layer1.")})
        return False

    config = small_config(
        model="resnet18", pretrained="yes", weights_dir=local_resnet_weights, finetune="two_stage",
        epochs=3, head_fraction=0.67, cache_features=cache, patience=None,
    )
    result = fit_fold(X_tr, y_tr, X_va, y_va, config=config, num_classes=2, report=report)
    assert result.init == "imagenet:local" and result.finetune_used == "two_stage"
    assert [h["stage"] for h in result.history] == ["head", "head", "unfrozen"]
    # Backbone passes of the fine-tuned model: cached -> the head stage reads the frozen-feature lane's cache
    # (automl.features, computed by its own frozen copy) and checks it on a 4-image probe batch; uncached ->
    # the frozen backbone runs in every head epoch.
    n = len(X_tr) + len(X_va)
    head_epochs, full_epochs = 2, 1
    assert counter["images"] == (4 if cache else head_epochs * n) + full_epochs * n
    if cache:
        from automl import features

        lane = [c for key, c in features._CACHES.items() if key[0] == "resnet18"]
        assert lane and len(lane[0]) >= n
    # The backbone is frozen (weights and BatchNorm statistics) during the head epochs, then trains.
    for key, value in snapshots[0].items():
        assert torch.equal(value, snapshots[1][key]), key
    assert any(not torch.equal(v, snapshots[2][k]) for k, v in snapshots[1].items())
    assert result.history[2]["lr"] == pytest.approx(1e-3 * 0.1)


def test_gradual_unfreezes_from_the_head_backwards(small_fold, local_resnet_weights, created):
    X_tr, y_tr, X_va, y_va = small_fold
    initial: dict[str, torch.Tensor] = {}
    final: dict[str, torch.Tensor] = {}

    def report(epoch: int, metrics: dict[str, Any]) -> bool:
        state = {k: v.clone() for k, v in created[0].backbone.state_dict().items()}
        if not initial:
            initial.update(state)
        final.clear()
        final.update(state)
        return False

    config = small_config(
        model="resnet18", pretrained="yes", weights_dir=local_resnet_weights, finetune="gradual",
        epochs=3, patience=None, scheduler="none",
    )
    result = fit_fold(X_tr, y_tr, X_va, y_va, config=config, num_classes=2, report=report)
    assert result.finetune_used == "gradual"
    assert [h["stage"] for h in result.history] == ["gradual_0", "gradual_1", "gradual_2"]

    def changed(prefix: str) -> bool:
        return any(not torch.equal(v, final[k]) for k, v in initial.items() if k.startswith(prefix))

    # After epoch 0 (head only) two more epochs unfroze layer4, then layer3; earlier stages never train.
    assert changed("layer4.") and changed("layer3.")
    assert not changed("layer2.") and not changed("layer1.") and not changed("conv1.") and not changed("bn1.")


def test_extract_head_inputs_reproduce_model_output(fold):
    torch.manual_seed(0)
    model = models.create_model("tiny_cnn", num_classes=2, image_size=32)
    X = fold[0][:10]
    feats = extract_head_inputs(model, X, batch_size=4)
    assert feats is not None and feats.shape[0] == 10
    model.eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(X).float().div(255).unsqueeze(1))
        assert torch.allclose(model.head()(feats), expected, atol=1e-5)


# --- classical baselines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["logreg", "svm_rbf"])
def test_classical_path_fits_once_and_reports_once(fold, name):
    calls: list[int] = []
    result = fit_fold(
        *fold, config=TrainConfig(model=name, C=0.5), num_classes=2,
        report=lambda epoch, metrics: calls.append(epoch) or False,
    )
    assert calls == [0] and len(result.history) == 1 and not result.pruned
    assert result.val_probabilities.shape == (len(fold[2]), 2)
    assert result.best_metrics["val_auc"] > 0.6
    assert result.finetune_used == "none" and result.init == "none"


def test_classical_path_can_be_pruned(fold):
    result = fit_fold(*fold, config=TrainConfig(model="logreg"), num_classes=2, report=lambda e, m: True)
    assert result.pruned and len(result.history) == 1


# --- a real learning test on the synthetic phantom -------------------------------------------------------


def test_simple_cnn_learns_on_easy_phantom_fold(tmp_path):
    import data
    from data.phantom import generate_phantom

    root = generate_phantom(tmp_path / "phantom", n=120, size=32, difficulty=0.0, seed=0)
    manifest = data.scan_folder(root)
    X = data.load_arrays(manifest, size=32)
    y = manifest.table["y"].to_numpy()
    subject = manifest.table["subject"].to_numpy()
    # Validation subjects are disjoint from training subjects, as in the search's grouped folds.
    subjects = np.array(sorted(set(subject)))
    np.random.default_rng(0).shuffle(subjects)
    val = np.isin(subject, subjects[: len(subjects) // 3])
    assert len(np.unique(y[val])) == 2
    result = fit_fold(
        X[~val], y[~val], X[val], y[val],
        config=TrainConfig(model="simple_cnn", epochs=5, lr=1e-3, batch_size=16, device="cpu", seed=0),
        num_classes=2,
    )
    # Measured: best validation AUC 0.77-0.79 over seeds 0-2 (chance is 0.5).
    assert result.best_metrics["val_auc"] > 0.65
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_convolutional_models_train_in_channels_last_by_default(small_fold, monkeypatch) -> None:
    """channels_last=None follows ModelInfo.prefers_channels_last; the layout changes rounding, not results."""
    formats = []
    original = deep_fit._DeepFit.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        formats.append(self.channels_last)

    monkeypatch.setattr(deep_fit._DeepFit, "__init__", spy)
    auto = fit_fold(*small_fold, config=small_config(model="tiny_cnn", epochs=1), num_classes=2)
    plain = fit_fold(*small_fold, config=small_config(model="tiny_cnn", epochs=1, channels_last=False), num_classes=2)
    assert formats == [True, False]
    np.testing.assert_allclose(auto.val_probabilities, plain.val_probabilities, atol=1e-3)
    # the returned model is back in the contiguous layout safetensors needs
    assert all(p.is_contiguous() for p in auto.model.parameters())


@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_the_optimizer_is_fused_on_cpu_and_follows_the_plain_update_rule(small_fold, monkeypatch, optimizer) -> None:
    made = []
    original = deep_fit._DeepFit.optimizer

    def spy(self, groups):
        opt = original(self, groups)
        made.append(opt)
        return opt

    monkeypatch.setattr(deep_fit._DeepFit, "optimizer", spy)
    config = small_config(model="tiny_cnn", epochs=2, optimizer=optimizer, amp=False)
    fused = fit_fold(*small_fold, config=config, num_classes=2)
    assert made and all(opt.defaults["fused"] for opt in made)
    # the same fit with PyTorch's default (foreach) kernel: same update rule, rounding-level differences
    monkeypatch.setattr(deep_fit._DeepFit, "optimizer",
                        lambda self, groups: (torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)(
                            groups, lr=groups[0]["lr"], weight_decay=self.config.weight_decay))
    plain = fit_fold(*small_fold, config=config, num_classes=2)
    np.testing.assert_allclose(fused.val_probabilities, plain.val_probabilities, atol=1e-3)


def test_bf16_autocast_by_default_only_where_it_was_measured_faster(small_fold, monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert train_mod.default_amp(cpu, "resnet18") and train_mod.default_amp(cpu, "simple_cnn")
    assert not train_mod.default_amp(cpu, "vit_tiny") and not train_mod.default_amp(cpu, "efficientnet_b0")
    assert not train_mod.default_amp(torch.device("mps"), "resnet18")
    auto = fit_fold(*small_fold, config=small_config(model="tiny_cnn"), num_classes=2)
    assert auto.precision == "bf16"
    # validation runs in fp32: the probabilities are exactly what the returned model predicts
    with torch.inference_mode():
        logits = auto.model(torch.from_numpy(small_fold[2]).float().div(255).unsqueeze(1))
    np.testing.assert_allclose(models.logits_to_probabilities(logits, 2).numpy(), auto.val_probabilities, atol=1e-6)
    assert fit_fold(*small_fold, config=small_config(model="tiny_cnn", amp=False), num_classes=2).precision == "fp32"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert not train_mod.default_amp(cpu, "resnet18")
    assert fit_fold(*small_fold, config=small_config(model="tiny_cnn"), num_classes=2).precision == "fp32"
