"""Tests of automl.split: grouped, stratified, deterministic, no subject on two sides."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from automl.split import Split, check_split, make_split, slice_level_folds


def _manifest(n_subjects: int = 30, slices: tuple[int, int] = (3, 9), n_classes: int = 2, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        y = s % n_classes
        for k in range(int(rng.integers(slices[0], slices[1] + 1))):
            rows.append({"path": f"c{y}/{s} ({k}).png", "label": f"c{y}", "y": y, "subject": f"p{s:03d}"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_folds", [2, 3, 5])
@pytest.mark.parametrize("test_size", [0.2, 0.25, 0.34])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_no_subject_crosses_folds_or_test(n_folds: int, test_size: float, n_classes: int) -> None:
    table = _manifest(n_subjects=40, n_classes=n_classes)
    split = make_split(table, test_size=test_size, n_folds=n_folds, seed=1)
    subjects = table["subject"].to_numpy()
    assert not set(subjects[split.test_index]) & set(subjects[split.cv_index])
    seen: dict[str, int] = {}
    for k, (tr, va) in enumerate(split.folds):
        assert not set(subjects[tr]) & set(subjects[va])
        for s in set(subjects[va]):
            assert seen.setdefault(s, k) == k
    # every row is either test or in exactly one validation fold
    covered = np.concatenate([split.test_index] + [va for _, va in split.folds])
    assert np.array_equal(np.sort(covered), np.arange(len(table)))
    # train + val of each fold = all CV rows
    for tr, va in split.folds:
        assert np.array_equal(np.sort(np.concatenate([tr, va])), split.cv_index)
    # every class in the test part and every validation fold (stratified)
    for idx in [split.test_index] + [va for _, va in split.folds]:
        assert set(table["y"].to_numpy()[idx]) == set(range(n_classes))


def test_test_fraction_is_close_to_requested() -> None:
    table = _manifest(n_subjects=100, slices=(5, 5))
    split = make_split(table, test_size=0.2, n_folds=5, seed=0)
    assert abs(len(split.test_index) / len(table) - 0.2) < 0.03


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    table = _manifest()
    a = make_split(table, test_size=0.2, n_folds=3, seed=7)
    b = make_split(table, test_size=0.2, n_folds=3, seed=7)
    c = make_split(table, test_size=0.2, n_folds=3, seed=8)
    assert a.to_frame().equals(b.to_frame())
    assert not a.to_frame()["fold"].equals(c.to_frame()["fold"])


def test_to_frame_schema_and_parts() -> None:
    table = _manifest()
    split = make_split(table, test_size=0.25, n_folds=3, seed=0)
    frame = split.to_frame()
    assert list(frame.columns) == ["path", "label", "y", "subject", "part", "fold"]
    assert set(frame["part"]) == {"cv", "test"}
    assert (frame.loc[frame["part"] == "test", "fold"] == -1).all()
    assert sorted(frame.loc[frame["part"] == "cv", "fold"].unique()) == [0, 1, 2]


def test_ungrouped_split_does_share_subjects() -> None:
    """The slice-level split (leakage audit only) puts slices of one subject on both sides."""
    table = _manifest(n_subjects=20, slices=(8, 8))
    split = make_split(table, test_size=0.2, n_folds=3, seed=0, grouped=False)
    subjects = table["subject"].to_numpy()
    assert set(subjects[split.test_index]) & set(subjects[split.cv_index])
    with pytest.raises(AssertionError, match="subject"):
        check_split(split)


def test_slice_level_folds_cover_same_cv_rows() -> None:
    table = _manifest(n_subjects=20, slices=(8, 8))
    split = make_split(table, test_size=0.2, n_folds=3, seed=0)
    folds = slice_level_folds(split)
    assert len(folds) == 3
    assert np.array_equal(np.sort(np.concatenate([va for _, va in folds])), split.cv_index)
    subjects = table["subject"].to_numpy()
    shared = sum(bool(set(subjects[tr]) & set(subjects[va])) for tr, va in folds)
    assert shared == 3  # every slice-level fold leaks subjects, that is the point


def test_check_split_catches_a_leak() -> None:
    table = _manifest()
    split = make_split(table, test_size=0.2, n_folds=3, seed=0)
    tr, va = split.folds[0]
    leaked = Split(test_index=np.concatenate([split.test_index, va[:1]]), cv_index=split.cv_index,
                   folds=split.folds, table=split.table)
    with pytest.raises(AssertionError, match="both CV and test"):
        check_split(leaked)


def test_accepts_manifest_like_objects() -> None:
    class FakeManifest:
        table = _manifest()

    split = make_split(FakeManifest(), test_size=0.2, n_folds=2, seed=0)
    assert split.n_folds == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test_size": 0.0}, "test_size"),
        ({"test_size": 0.7}, "test_size"),
        ({"n_folds": 1}, "n_folds"),
        ({"n_folds": 2.5}, "n_folds"),
        ({"n_folds": 30}, "fewer than the 30 CV folds"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_split(_manifest(n_subjects=20), **kwargs)


def test_missing_columns_and_bad_type() -> None:
    with pytest.raises(ValueError, match="subject"):
        make_split(_manifest().drop(columns=["subject"]))
    with pytest.raises(ValueError, match="Manifest or a DataFrame"):
        make_split([1, 2, 3])
