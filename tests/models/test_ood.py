"""Tests of models.ood: the statistics, the reference (fit, calibration, file), the predictor's flag, and
the behaviour that matters: a small CNN trained on the phantom flags real-looking off-distribution
inputs (the phantom in another window or at another size, photographs, noise) and lets held-out
phantom slices of new patients pass."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import models
from models.ood import (
    OOD_FILE,
    STATISTICS,
    OODReference,
    OODScore,
    compute_reference,
    fit_reference,
    image_statistics,
    load_reference,
    model_features,
)

SIZE = 64


# ------------------------------------------------------------------------------------ statistics
def test_image_statistics_columns() -> None:
    black = np.zeros((1, 32, 32), np.uint8)
    white = np.full((1, 32, 32), 255, np.uint8)
    disc = np.zeros((1, 32, 32), np.uint8)
    yy, xx = np.mgrid[0:32, 0:32]
    disc[0][(yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 8 ** 2] = 128
    stats = image_statistics(np.concatenate([black, white, disc]))
    assert stats.shape == (3, len(STATISTICS))
    mean, std, dark, bright, edges, radius = stats.T
    assert mean.tolist()[:2] == [0.0, 1.0] and std[0] == std[1] == 0.0
    assert dark.tolist() == [1.0, 0.0, pytest.approx(1 - np.pi * 64 / 1024, abs=0.02)]
    assert bright.tolist() == [0.0, 1.0, 0.0]
    assert edges[0] == edges[1] == 0.0 and edges[2] > 0
    assert radius[0] == 0.0 and 0.1 < radius[2] < 0.2  # rms radius of a disc of radius 8/32: 0.177


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((1, 4, 5), np.uint8),
                                 np.zeros((1, 4, 4), np.float32)])
def test_image_statistics_rejects_other_arrays(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        image_statistics(bad)


# ------------------------------------------------------------------------------------- reference
def _gaussian_parts(n_fit: int = 200, n_cal: int = 100, d: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))
    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.normal(size=(n, d)) @ mix, rng.normal(0.3, 0.05, size=(n, len(STATISTICS)))
    return draw(n_fit), draw(n_cal), draw(400)


def test_threshold_is_the_calibration_percentile() -> None:
    (F, S), (Fc, Sc), (Fn, Sn) = _gaussian_parts()
    ref = fit_reference(F, S, Fc, Sc, percentile=90)
    assert ref.threshold == pytest.approx(np.percentile(ref.distances(Fc, Sc), 90))
    assert ref.n_fit == 200 and ref.n_calibration == 100
    assert np.all(np.diff(ref.calibration_distances) >= 0)
    # new draws of the same distribution: about 10 % above a 90th-percentile threshold
    assert 0.03 < float(np.mean(ref.distances(Fn, Sn) > ref.threshold)) < 0.2
    # a shifted draw is far away
    assert np.all(ref.distances(Fn + 10 * F.std(axis=0), Sn) > ref.threshold)


def test_fit_reference_validates() -> None:
    (F, S), (Fc, Sc), _ = _gaussian_parts()
    with pytest.raises(ValueError, match="at least 8 training images"):
        fit_reference(F[:5], S[:5], Fc, Sc)
    with pytest.raises(ValueError, match="at least 1 calibration image"):
        fit_reference(F, S, Fc[:0], Sc[:0])
    with pytest.raises(ValueError, match="must match"):
        fit_reference(F, S[:10], Fc, Sc)
    with pytest.raises(ValueError, match="percentile"):
        fit_reference(F, S, Fc, Sc, percentile=0)
    F_bad = F.copy()
    F_bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_reference(F_bad, S, Fc, Sc)
    ref = fit_reference(F, S, Fc, Sc)
    with pytest.raises(ValueError, match="another model"):
        ref.distances(F[:, :5], S)


def test_reference_file_round_trip(tmp_path: Path) -> None:
    (F, S), (Fc, Sc), (Fn, Sn) = _gaussian_parts()
    ref = fit_reference(F, S, Fc, Sc, feature_kind="statistics")
    path = ref.save(tmp_path)
    assert path == tmp_path / OOD_FILE and not list(tmp_path.glob(".*tmp"))
    back = load_reference(tmp_path)
    assert isinstance(back, OODReference) and back.feature_kind == "statistics"
    assert back.threshold == ref.threshold and back.n_fit == ref.n_fit
    np.testing.assert_allclose(back.distances(Fn, Sn), ref.distances(Fn, Sn))
    assert ref.score(ref.threshold + 1) == OODScore(ref.threshold + 1, ref.threshold, True)
    assert not ref.score(ref.threshold).flagged  # flagged only strictly above
    assert load_reference(tmp_path / "elsewhere") is None
    (tmp_path / OOD_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=OOD_FILE):
        load_reference(tmp_path)


# ------------------------------------------------------------------------------------ predictors
def _phantom(tmp_path: Path, *, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images, labels and patient ids of a 64 px phantom."""
    from PIL import Image

    from data.phantom import generate_phantom

    folder = generate_phantom(tmp_path / f"phantom_{seed}", n=n, size=SIZE, seed=seed)
    X, y, groups = [], [], []
    for label, name in enumerate(("Normal", "Stroke")):
        for path in sorted((folder / name).glob("*.png")):
            X.append(np.asarray(Image.open(path).convert("L")))
            y.append(label)
            groups.append(path.name.split(" (")[0])
    return np.stack(X), np.asarray(y), np.asarray(groups)


def test_model_features_deep_and_classical() -> None:
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(5, 32, 32), dtype=np.uint8)
    cnn = models.create_model("tiny_cnn", num_classes=2, image_size=32)
    cnn.train()
    feats = model_features(cnn, X, batch_size=2)
    assert feats.shape == (5, 64) and np.isfinite(feats).all()
    assert cnn.training  # the mode is restored
    np.testing.assert_allclose(model_features(cnn, X[:1]), feats[:1], rtol=1e-4, atol=1e-5)
    logreg = models.create_model("logreg", num_classes=2, image_size=32)
    assert model_features(logreg, X).shape == (5, 0)  # classical: the statistics alone


def test_model_features_ignore_other_threads_using_the_same_model() -> None:
    """The Gradio app shares one model between two concurrent requests: the hook must only see its own call."""
    import threading

    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 3))
            self.head = nn.Linear(3, 1)
            self.interfere = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.body(x)
            if self.interfere:  # another request runs a full pass while this one's hook is attached
                self.interfere = False
                other = threading.Thread(target=lambda: self(torch.zeros(7, 1, 16, 16)))
                other.start()
                other.join()
            return self.head(features)

    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16), dtype=np.uint8)
    net = Net()
    feats = model_features(net, images)
    assert feats.shape == (4, 3)
    net.interfere = False
    np.testing.assert_allclose(model_features(net, images), feats, rtol=1e-6)


def test_predictor_without_reference_has_no_flag(tmp_path: Path) -> None:
    model = models.create_model("tiny_cnn", num_classes=2, image_size=32)
    folder = models.save_checkpoint(model, tmp_path / "m", card={"classes": ["normal", "stroke"]})
    predictor = models.load_predictor(folder, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    assert predictor.ood is None and predictor.ood_score(image) is None
    assert predictor.predict(image)["ood"] is None
    with pytest.raises(ValueError, match="no out-of-distribution reference"):
        predictor.ood_distances(np.zeros((1, 32, 32), np.uint8))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """simple_cnn trained 2 epochs on a 64 px phantom (subject-grouped training / calibration parts),
    saved with its reference, and held-out slices of new patients (another phantom seed)."""
    from automl.train import TrainConfig, fit_fold

    tmp = tmp_path_factory.mktemp("ood")
    X, y, groups = _phantom(tmp, n=240, seed=0)
    subjects = np.unique(groups)
    calibration_subjects = np.random.default_rng(0).choice(subjects, size=len(subjects) // 4, replace=False)
    cal = np.isin(groups, calibration_subjects)
    config = TrainConfig(model="simple_cnn", epochs=2, pretrained="no", seed=0, device="cpu")
    result = fit_fold(X[~cal], y[~cal], X[cal], y[cal], config=config, num_classes=2)
    folder = models.save_checkpoint(result.model, tmp / "simple_cnn", card={"classes": ["Normal", "Stroke"]})
    reference = compute_reference(result.model, X[~cal], X[cal])
    reference.save(folder)
    held_out, _, _ = _phantom(tmp, n=60, seed=1)
    return {"predictor": models.load_predictor(folder, device="cpu"), "reference": reference,
            "held_out": held_out, "folder": folder, "tmp": tmp}


def _rewindow(images: np.ndarray, level: float, width: float) -> np.ndarray:
    """The phantom's brain-window pixels (L40/W80) back to HU and into another window."""
    hu = images.astype(np.float64) / 255.0 * 80.0
    return np.clip(np.rint((hu - (level - width / 2)) / width * 255.0), 0, 255).astype(np.uint8)


def _off_distribution(held_out: np.ndarray) -> dict[str, np.ndarray]:
    from PIL import Image
    from skimage.data import astronaut, camera

    import data

    def as_input(grey: np.ndarray) -> np.ndarray:
        return data.to_uint8(data.resize_pad(grey.astype(np.float32) / 255.0, SIZE))[None]

    slices = held_out[:6]
    small = np.zeros_like(slices)  # the head at half size in the frame (another field of view)
    for i, image in enumerate(slices):
        small[i, 16:48, 16:48] = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR))
    zoomed = np.stack([np.asarray(Image.fromarray(im[16:48, 16:48]).resize((SIZE, SIZE), Image.BILINEAR))
                       for im in slices])
    return {
        "phantom, bone window": _rewindow(slices, *data.WINDOWS["bone"]),
        "phantom, subdural window": _rewindow(slices, *data.WINDOWS["subdural"]),
        "phantom, head at half size": small,
        "phantom, zoomed 2x": zoomed,
        "photo: skimage camera": as_input(camera()),
        "photo: skimage astronaut (grey)": as_input(np.asarray(Image.fromarray(astronaut()).convert("L"))),
        "uniform noise": np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8),
        "inverted phantom": 255 - slices,
    }


def test_real_looking_off_distribution_inputs_are_flagged(trained: dict) -> None:
    predictor, reference = trained["predictor"], trained["reference"]
    held = predictor.ood_distances(trained["held_out"])
    lines = [f"threshold (99th percentile of {reference.n_calibration} calibration distances): "
             f"{reference.threshold:.2f}",
             f"held-out phantom slices ({len(held)}, new patients): median {np.median(held):.2f}, "
             f"max {held.max():.2f}, flagged {int((held > reference.threshold).sum())}"]
    for name, images in _off_distribution(trained["held_out"]).items():
        d = predictor.ood_distances(images)
        lines.append(f"{name}: min {d.min():.1f}, median {np.median(d):.1f}")
        assert np.all(d > 2 * reference.threshold), (name, d, reference.threshold)
    print("\n".join(lines))
    # by construction about 1 % of in-distribution images lie above the 99th percentile
    assert float(np.mean(held > reference.threshold)) <= 0.05, (held, reference.threshold)


def test_predictor_reports_the_flag(trained: dict, tmp_path: Path) -> None:
    from PIL import Image
    from skimage.data import camera

    predictor = trained["predictor"]
    assert predictor.ood is not None and predictor.ood.feature_kind == "penultimate"
    photo = tmp_path / "camera.png"
    Image.fromarray(camera()).save(photo)
    score = predictor.ood_score(photo)
    assert isinstance(score, OODScore) and score.flagged
    distance, threshold, flagged = score  # a plain tuple as well
    assert predictor.predict(photo)["ood"] == {"distance": distance, "threshold": threshold, "flagged": flagged}
    slice_ = trained["held_out"][0]
    from_tensor = predictor.ood_score(predictor.preprocess(slice_))
    assert from_tensor == predictor.ood_score(slice_)
    many = predictor.predict_many([slice_, photo])
    assert [r["ood"]["flagged"] for r in many] == [from_tensor.flagged, True]
    float_input = predictor.preprocess(slice_).numpy()
    np.testing.assert_allclose(predictor.ood_distances(float_input), [from_tensor.distance])


def test_classical_model_reference(trained: dict) -> None:
    """A classical model's reference rests on the image statistics alone: new patients pass, the rest not."""
    from automl.train import TrainConfig, fit_fold

    X, y, groups = _phantom(trained["tmp"], n=240, seed=0)
    cal = np.isin(groups, np.unique(groups)[::4])
    result = fit_fold(X[~cal], y[~cal], X[cal], y[cal], num_classes=2,
                      config=TrainConfig(model="logreg", pretrained="no", seed=0))
    reference = compute_reference(result.model, X[~cal], X[cal])
    assert reference.feature_kind == "statistics" and reference.num_features == 0

    def distances(images: np.ndarray) -> np.ndarray:
        return reference.distances(model_features(result.model, images), image_statistics(images))

    held = distances(trained["held_out"])
    lines = [f"logreg threshold {reference.threshold:.2f}; held-out max {held.max():.2f}, "
             f"flagged {int((held > reference.threshold).sum())} of {len(held)}"]
    for name, images in _off_distribution(trained["held_out"]).items():
        d = distances(images)
        lines.append(f"{name}: min {d.min():.1f}")
        assert np.all(d > 2 * reference.threshold), (name, d, reference.threshold)
    print("\n".join(lines))
    assert float(np.mean(held > reference.threshold)) <= 0.05, (held, reference.threshold)
