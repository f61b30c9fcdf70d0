"""Tests of automl.augment: shapes, range, identity at strength 0, determinism, each transform's effect."""
from __future__ import annotations

import pytest
import torch

from automl.augment import AugmentParams, augment_batch

NO_CHANGE = AugmentParams(
    rotation_degrees=0.0, shift_fraction=0.0, scale_delta=0.0, contrast_delta=0.0,
    brightness_delta=0.0, noise_std=0.0, flip_probability=0.0,
)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("strength", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("hflip", [True, False])
def test_shape_dtype_and_range(batch, strength, hflip):
    out = augment_batch(batch, strength=strength, hflip=hflip, generator=torch.Generator().manual_seed(1))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.equal(out, batch)


@pytest.mark.parametrize("hflip", [True, False])
def test_strength_zero_is_identity(batch, hflip):
    assert augment_batch(batch, strength=0.0, hflip=hflip) is batch


def test_same_seed_same_output_and_different_seed_differs(batch):
    a = augment_batch(batch, strength=0.7, generator=torch.Generator().manual_seed(5))
    b = augment_batch(batch, strength=0.7, generator=torch.Generator().manual_seed(5))
    c = augment_batch(batch, strength=0.7, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_input_is_not_modified(batch):
    before = batch.clone()
    augment_batch(batch, strength=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch, before)


def test_zero_magnitudes_are_exact_identity(batch):
    out = augment_batch(batch, strength=1.0, params=NO_CHANGE, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, batch, atol=1e-6)


def test_forced_flip_mirrors_and_hflip_false_never_flips(batch):
    always = AugmentParams(**{**NO_CHANGE.__dict__, "flip_probability": 1.0})
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(augment_batch(batch, strength=1.0, params=always, generator=g), batch.flip(-1), atol=1e-6)
    assert torch.allclose(
        augment_batch(batch, strength=1.0, hflip=False, params=always, generator=g), batch, atol=1e-6
    )


def test_rotation_moves_an_off_centre_blob_but_keeps_mass():
    x = torch.zeros(16, 1, 32, 32)
    x[:, :, 4:10, 14:18] = 1.0  # blob near the top edge
    only_rotation = AugmentParams(**{**NO_CHANGE.__dict__, "rotation_degrees": 30.0})
    out = augment_batch(x, strength=1.0, params=only_rotation, generator=torch.Generator().manual_seed(0))
    moved = (out - x).abs().flatten(1).sum(1)
    assert (moved > 1.0).float().mean() > 0.8  # almost every image changed
    # float(): pytest.approx iterates a 0-d tensor (TypeError) since pytest 9.2
    assert float(out.flatten(1).sum(1).mean()) == pytest.approx(float(x.flatten(1).sum(1).mean()), rel=0.1)


def test_noise_level_scales_with_strength():
    x = torch.full((64, 1, 32, 32), 0.5)
    only_noise = AugmentParams(**{**NO_CHANGE.__dict__, "noise_std": 0.1})
    weak = augment_batch(x, strength=0.2, params=only_noise, generator=torch.Generator().manual_seed(0))
    strong = augment_batch(x, strength=1.0, params=only_noise, generator=torch.Generator().manual_seed(0))
    assert 0 < (weak - x).std() < (strong - x).std()


def test_empty_batch_passes_through():
    x = torch.zeros(0, 1, 16, 16)
    assert augment_batch(x, strength=1.0).shape == (0, 1, 16, 16)


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (torch.rand(2, 1, 8, 8), {"strength": 1.5}, "strength"),
        (torch.rand(2, 1, 8, 8), {"strength": -0.1}, "strength"),
        (torch.rand(2, 8, 8), {"strength": 0.5}, "shape"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), {"strength": 0.5}, "floating"),
    ],
)
def test_rejects_bad_input(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        augment_batch(x, **kwargs)
