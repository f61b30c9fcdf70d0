"""automl.refit: the out-of-distribution reference saved next to a refitted checkpoint."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import models
from automl import refit
from models.ood import OOD_FILE, load_reference


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 120, size=(n, 32, 32), dtype=np.uint8)


def test_reference_is_saved_into_the_model_folder(tmp_path: Path) -> None:
    model = models.create_model("tiny_cnn", num_classes=2, image_size=32)
    folder = models.save_checkpoint(model, tmp_path / "tiny_cnn", card={"classes": ["a", "b"]})
    refit._save_ood_reference(model, _images(40, 0), _images(12, 1), folder, seed=0)
    reference = load_reference(folder)
    assert reference is not None and reference.n_fit == 40 and reference.n_calibration == 12
    assert models.load_predictor(folder, device="cpu").ood is not None


def test_a_failed_reference_leaves_no_stale_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = models.create_model("tiny_cnn", num_classes=2, image_size=32)
    folder = models.save_checkpoint(model, tmp_path / "tiny_cnn", card={"classes": ["a", "b"]})
    refit._save_ood_reference(model, _images(40, 0), _images(12, 1), folder, seed=0)
    assert (folder / OOD_FILE).is_file()
    with caplog.at_level(logging.WARNING, logger="automl.refit"):
        refit._save_ood_reference(model, _images(3, 0), _images(12, 1), folder, seed=0)  # too few images
    assert not (folder / OOD_FILE).exists(), "a reference from an earlier refit must not survive"
    assert "No out-of-distribution reference for tiny_cnn" in caplog.text
    assert models.load_predictor(folder, device="cpu").ood is None
