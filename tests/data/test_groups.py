"""Tests for data._groups: subject sources, file-name schemes, groups.csv, pHash clusters."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data import scan_folder
from data._groups import FILENAME_SCHEMES, assign_subjects, hamming_distances, phash_clusters, phash_to_uint64
from tests.data.test_scan import smooth_field, u8


def write_images(root: Path, names: dict[str, list[str]], *, seed: int = 0) -> Path:
    """One distinct smooth image per file: ``names`` maps class -> file names."""
    rng = np.random.default_rng(seed)
    for cls, files in names.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for name in files:
            Image.fromarray(u8(smooth_field(rng, 32))).save(root / cls / name)
    return root


def table_of(paths: list[str], **cols: list) -> pd.DataFrame:
    n = len(paths)
    return pd.DataFrame({"path": paths, "format": cols.get("format", ["png"] * n),
                         "phash": cols.get("phash", [f"{i:016x}" for i in range(n)]),
                         **{k: v for k, v in cols.items() if k not in ("format", "phash")}})


# ---------------------------------------------------------------------------- file-name schemes
@pytest.mark.parametrize(
    "files,expected",
    [
        (["58 (1).jpg", "58 (10).jpg", "7 (2).jpg", "7(3).jpg"], ["58", "58", "7", "7"]),
        (["patient012_slice03.png", "patient012_slice04.png", "Patient013_slice01.png", "Patient013-2.png"],
         ["patient012", "patient012", "Patient013", "Patient013"]),
        (["sub-07_ses-1_ct_12.png", "sub-07_13.png", "sub-A1_1.png", "sub-A1_2.png"], ["sub-07", "sub-07", "sub-A1", "sub-A1"]),
        (["scanA_slice1.png", "scanA_slice2.png", "scanB slice 7.png", "scanB_slice8.png"], ["scanA", "scanA", "scanB", "scanB"]),
        (["012_03.png", "012_04.png", "013_01.png", "013_02.png"], ["012", "012", "013", "013"]),
    ],
)
def test_filename_schemes(files: list[str], expected: list[str]) -> None:
    paths = [f"A/{f}" for f in files]
    subjects, source = assign_subjects(table_of(paths), ".", group_by="auto")
    assert source == "filename"
    assert subjects == expected


def test_kaggle_numbering_is_not_prefixed_by_class(tmp_path: Path) -> None:
    root = write_images(tmp_path / "ds", {"Normal": ["1 (1).png", "1 (2).png", "2 (1).png"],
                                          "Stroke": ["1 (1).png", "3 (1).png", "3 (2).png"]})
    m = scan_folder(root)
    assert m.subject_source == "filename"
    subj = dict(zip(m.table["path"], m.table["subject"]))
    assert subj["Normal/1 (1).png"] == subj["Stroke/1 (1).png"] == "1"  # coarser = conservative
    assert subj["Stroke/3 (2).png"] == "3"


def test_ninety_percent_rule() -> None:
    nine = [f"A/{i // 3} ({i}).png" for i in range(9)]
    subjects, source = assign_subjects(table_of(nine + ["A/odd.png"]), ".", group_by="auto")
    assert source == "filename" and subjects[-1] == "A/odd.png" and subjects[0] == "0"
    eight = [f"A/{i // 2} ({i}).png" for i in range(8)]
    _, source = assign_subjects(table_of(eight + ["A/odd.png", "A/other.png"]), ".", group_by="auto")
    assert source == "phash"  # 80 % < 90 %


def test_scheme_must_group_something() -> None:
    # every file its own subject: the scheme explains nothing, fall back to pHash
    paths = [f"A/patient{i:03d}_slice01.png" for i in range(6)]
    _, source = assign_subjects(table_of(paths), ".", group_by="auto")
    assert source == "phash"
    # all files one subject: no grouped split possible
    _, source = assign_subjects(table_of([f"A/5 ({i}).png" for i in range(6)]), ".", group_by="auto")
    assert source == "phash"


def test_user_regex() -> None:
    paths = ["A/scan-P01-x.png", "A/scan-P01-y.png", "A/scan-P02-x.png", "A/unrelated.png"]
    subjects, source = assign_subjects(table_of(paths), ".", group_by="filename", filename_regex=r"-(?P<subject>P\d+)-")
    assert source == "filename" and subjects == ["P01", "P01", "P02", "A/unrelated.png"]
    subjects, _ = assign_subjects(table_of(paths), ".", group_by="auto", filename_regex=r"-(P\d+)-")
    assert subjects[:3] == ["P01", "P01", "P02"]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        assign_subjects(table_of(paths), ".", group_by="filename", filename_regex="(")
    with pytest.raises(ValueError, match="matches none"):
        assign_subjects(table_of(paths), ".", group_by="filename", filename_regex=r"Q\d+")


def test_forced_filename_without_scheme_fails() -> None:
    with pytest.raises(ValueError, match="filename_regex"):
        assign_subjects(table_of(["A/x.png", "A/y.png"]), ".", group_by="filename")


def test_scheme_names_documented() -> None:
    assert list(FILENAME_SCHEMES)[:3] == ["kaggle", "bids", "patient"]


# --------------------------------------------------------------------------------- groups.csv
def test_groups_csv_takes_precedence(tmp_path: Path) -> None:
    root = write_images(tmp_path / "ds", {"normal": ["1 (1).png", "1 (2).png"], "stroke": ["2 (1).png", "2 (2).png"]})
    pd.DataFrame({"file": ["normal/1 (1).png", "normal/1 (2).png", "stroke/2 (1).png", "2 (2).png"],
                  "subject": ["alice", "bob", "carol", "carol"]}).to_csv(root / "groups.csv", index=False)
    m = scan_folder(root)
    assert m.subject_source == "groups.csv"
    assert m.table["subject"].tolist() == ["alice", "bob", "carol", "carol"]  # bare name matched too
    assert scan_folder(root, group_by="filename").table["subject"].tolist() == ["1", "1", "2", "2"]


def test_groups_csv_explicit_path_and_errors(tmp_path: Path) -> None:
    root = write_images(tmp_path / "ds", {"normal": ["a.png", "b.png"], "stroke": ["c.png", "d.png"]})
    other = tmp_path / "subjects.csv"
    pd.DataFrame({"Path": ["normal/a.png", "normal/b.png", "stroke/c.png", "stroke/d.png", "gone.png"],
                  "Patient": ["p1", "p1", "p2", "p3", "p9"]}).to_csv(other, index=False)
    m = scan_folder(root, group_by=str(other))
    assert m.subject_source == "groups.csv" and m.table["subject"].tolist() == ["p1", "p1", "p2", "p3"]

    with pytest.raises(ValueError, match="no groups.csv"):
        scan_folder(root, group_by="csv")
    pd.DataFrame({"file": ["normal/a.png"], "subject": ["p1"]}).to_csv(root / "groups.csv", index=False)
    with pytest.raises(ValueError, match="no subject for 3 of 4 images"):
        scan_folder(root)
    pd.DataFrame({"name": ["normal/a.png"], "who": ["p1"]}).to_csv(root / "groups.csv", index=False)
    with pytest.raises(ValueError, match="'file' and 'subject'"):
        scan_folder(root)
    pd.DataFrame({"file": ["normal/a.png", "normal/a.png"], "subject": ["p1", "p2"]}).to_csv(root / "groups.csv", index=False)
    with pytest.raises(ValueError, match="two subjects"):
        scan_folder(root)


# --------------------------------------------------------------------------------- DICOM / none
def test_dicom_ids_table_level() -> None:
    t = table_of(["A/1", "A/2", "B/3"], format=["dicom"] * 3, patient_id=["P1", None, "P2"],
                 study_uid=["1.2.1", "1.2.2", "1.2.3"])
    subjects, source = assign_subjects(t, ".", group_by="auto")
    assert source == "dicom" and subjects == ["P1", "1.2.2", "P2"]
    anon = table_of(["A/1", "A/2", "B/3"], format=["dicom"] * 3, patient_id=["ANON"] * 3,
                    study_uid=["1.2.1", "1.2.1", "1.2.3"])
    assert assign_subjects(anon, ".", group_by="dicom") == (["1.2.1", "1.2.1", "1.2.3"], "dicom")
    mixed = table_of(["A/1", "A/2.png"], format=["dicom", "png"], patient_id=["P1", None], study_uid=["1", None])
    assert assign_subjects(mixed, ".", group_by="auto")[1] == "phash"
    with pytest.raises(ValueError, match="neither DICOM nor NIfTI"):
        assign_subjects(mixed, ".", group_by="dicom")


def test_none_and_unknown_group_by() -> None:
    t = table_of(["A/1 (1).png", "A/1 (2).png"])
    assert assign_subjects(t, ".", group_by="none") == (["A/1 (1).png", "A/1 (2).png"], "none")
    with pytest.raises(ValueError, match="group_by must be one of"):
        assign_subjects(t, ".", group_by="patient")


# ---------------------------------------------------------------------------------------- pHash
def test_planted_near_duplicates_share_a_subject(tmp_path: Path) -> None:
    rng = np.random.default_rng(42)
    root = tmp_path / "ds"
    bases = [smooth_field(rng, 48) for _ in range(6)]
    plan = {"normal": [(0, 3), (1, 1), (2, 1)], "stroke": [(3, 2), (4, 1), (5, 1)]}  # (base, copies)
    for cls, items in plan.items():
        (root / cls).mkdir(parents=True)
        for base, copies in items:
            for c in range(copies):
                noisy = np.clip(bases[base] + rng.normal(0, 0.01, bases[base].shape), 0, 1)
                Image.fromarray(u8(noisy)).save(root / cls / f"img_{base}_{c}.png")
    m = scan_folder(root, group_by="auto")
    assert m.subject_source == "phash"
    subj = m.table.assign(base=m.table["path"].str.extract(r"img_(\d)_")[0].astype(int))
    per_base = subj.groupby("base")["subject"].nunique()
    assert (per_base == 1).all()  # copies of one image share a subject
    assert subj.groupby("subject")["base"].nunique().max() == 1  # different images do not
    assert m.table["subject"].nunique() == 6


def test_phash_clusters_are_transitive_and_validated() -> None:
    a = 0
    b = 0b111  # 3 bits from a
    c = 0b111111  # 3 bits from b, 6 from a
    d = (1 << 64) - 1  # far from all
    labels = phash_clusters(np.array([a, b, c, d], dtype=np.uint64), 3)
    assert labels.tolist() == [0, 0, 0, 1]
    assert phash_clusters(np.array([a, b, c, d], dtype=np.uint64), 2).tolist() == [0, 1, 2, 3]
    assert phash_clusters([], 6).tolist() == []
    hexes = [f"{x:016x}" for x in (d, a, b)]
    assert phash_clusters(hexes, 3).tolist() == [0, 1, 1]
    for bad in (-1, 65, 2.5, True):
        with pytest.raises(ValueError, match="phash_threshold"):
            phash_clusters(hexes, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="16 hex"):
        phash_to_uint64(["abc"])


def test_hamming_distances_blockwise_matches_bruteforce() -> None:
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, size=50, dtype=np.int64).astype(np.uint64)
    d = hamming_distances(h, h)
    brute = np.array([[bin(int(x) ^ int(y)).count("1") for y in h] for x in h])
    np.testing.assert_array_equal(d, brute)
