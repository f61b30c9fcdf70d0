"""Tests of the synthetic head-CT phantom (data/phantom.py)."""
from __future__ import annotations

import csv
import hashlib
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import phantom
from data.phantom import default_dataset, generate_phantom, load_mask

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME_RE = re.compile(r"^(\d+) \((\d+)\)\.png$")
META_COLUMNS = ["file", "class", "patient", "slice_index", "lesion_type", "lesion_area", "territory", "side", "volume"]
THREE = ("normal", "ischemic", "hemorrhagic")


def _read_meta(root: Path) -> list[dict[str, str]]:
    with open(root / "_meta.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _images(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.glob("*/*.png")
        if not p.relative_to(root).parts[0].startswith("_")
    )


@pytest.fixture(scope="module")
def two_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom(tmp_path_factory.mktemp("two") / "ds", n=60, size=32, seed=1)


@pytest.fixture(scope="module")
def subject_level(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom(tmp_path_factory.mktemp("subj") / "ds", n=60, size=32, seed=2, label_level="subject")


# ---------------------------------------------------------------------------------------------
# Layout and counts
# ---------------------------------------------------------------------------------------------
def test_layout(two_class: Path) -> None:
    root = two_class
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["Normal", "Stroke", "_masks"]
    images = _images(root)
    assert len(images) == 60
    masks = sorted(p.relative_to(root / "_masks").as_posix() for p in (root / "_masks").glob("*/*.png"))
    assert masks == images  # the _masks tree mirrors the class folders exactly
    rows = _read_meta(root)
    with open(root / "_meta.csv", newline="", encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == META_COLUMNS
    assert sorted(r["file"] for r in rows) == images
    for row in rows:
        folder, name = row["file"].split("/")
        assert folder == row["class"]
        match = NAME_RE.match(name)
        assert match, name
        assert match.group(1) == row["patient"] and match.group(2) == row["slice_index"]
        with Image.open(root / row["file"]) as im:
            assert im.mode == "L" and im.size == (32, 32)
    # no temporary folders left next to the dataset
    assert [p.name for p in root.parent.iterdir()] == ["ds"]


def test_patients_are_consistent(two_class: Path) -> None:
    by_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in _read_meta(two_class):
        by_patient[row["patient"]].append(row)
    assert len(by_patient) >= 5
    for rows in by_patient.values():
        indices = sorted(int(r["slice_index"]) for r in rows)
        assert indices == list(range(1, len(indices) + 1))
        kinds = {r["lesion_type"] for r in rows} - {"none"}
        assert len(kinds) <= 1  # one patient, at most one stroke type
        sides = {r["side"] for r in rows} - {"none"}
        territories = {r["territory"] for r in rows} - {"none"}
        assert len(sides) <= 1 and len(territories) <= 1
        lesion_slices = [int(r["slice_index"]) for r in rows if r["lesion_type"] != "none"]
        if lesion_slices:  # the lesion spans a contiguous block of slices
            assert lesion_slices == list(range(min(lesion_slices), max(lesion_slices) + 1))


@pytest.mark.parametrize("classes", [("normal", "stroke"), THREE])
@pytest.mark.parametrize("label_level", ["slice", "subject"])
@pytest.mark.parametrize("n", [7, 90])
def test_exact_n_and_balance(tmp_path: Path, classes: tuple[str, ...], label_level: str, n: int) -> None:
    root = generate_phantom(tmp_path / "ds", n=n, size=32, seed=3, classes=classes, label_level=label_level)
    folders = phantom.CLASS_SETS[classes]
    counts = {f: len(list((root / f).glob("*.png"))) for f in folders}
    assert sum(counts.values()) == n
    assert len(_read_meta(root)) == n
    if n >= 90:
        for folder, count in counts.items():
            assert abs(count / n - 1 / len(folders)) < 0.12, counts


def test_three_class_layout(tmp_path: Path) -> None:
    root = generate_phantom(tmp_path / "ds", n=60, size=32, seed=4, classes="Normal,Ischemic,Hemorrhagic")
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["Hemorrhagic", "Ischemic", "Normal", "_masks"]
    for row in _read_meta(root):
        expected = {"Normal": "none", "Ischemic": "ischemic", "Hemorrhagic": "hemorrhagic"}[row["class"]]
        assert row["lesion_type"] == expected
        assert row["territory"] in ({"none"} if expected == "none" else {"MCA", "ACA", "PCA"})


# ---------------------------------------------------------------------------------------------
# Labels and masks
# ---------------------------------------------------------------------------------------------
def test_masks_exactly_on_lesion_slices_in_slice_mode(two_class: Path) -> None:
    rows = _read_meta(two_class)
    assert {r["class"] for r in rows} == {"Normal", "Stroke"}
    for row in rows:
        mask = load_mask(two_class, row["file"])
        assert mask is not None and mask.dtype == bool and mask.shape == (32, 32)
        with Image.open(two_class / "_masks" / row["file"]) as im:
            assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
        has_lesion = row["lesion_type"] != "none"
        assert (row["class"] == "Stroke") == has_lesion == bool(mask.any())
        assert int(row["lesion_area"]) == int(mask.sum())
        assert (row["side"] != "none") == has_lesion
    # stroke patients also contribute out-of-plane (Normal) slices
    stroke_patients = {r["patient"] for r in rows if r["class"] == "Stroke"}
    assert any(r["class"] == "Normal" and r["patient"] in stroke_patients for r in rows)


def test_subject_mode_labels_every_slice_of_a_stroke_patient(subject_level: Path) -> None:
    rows = _read_meta(subject_level)
    by_patient: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        by_patient[row["patient"]].add(row["class"])
    assert all(len(classes) == 1 for classes in by_patient.values())  # one label per patient
    stroke = [r for r in rows if r["class"] == "Stroke"]
    assert any(r["lesion_type"] == "none" for r in stroke)  # lesion out of plane, still labelled Stroke
    assert any(r["lesion_type"] != "none" for r in stroke)
    assert all(r["lesion_type"] == "none" for r in rows if r["class"] == "Normal")
    for row in stroke:  # masks still describe what is in plane
        assert bool(load_mask(subject_level, row["file"]).any()) == (row["lesion_type"] != "none")


def test_load_mask_paths(two_class: Path, tmp_path: Path) -> None:
    row = next(r for r in _read_meta(two_class) if r["lesion_type"] != "none")
    by_relative = load_mask(two_class, row["file"])
    by_absolute = load_mask(two_class, two_class / row["file"])
    np.testing.assert_array_equal(by_relative, by_absolute)
    assert load_mask(two_class, "Stroke/does-not-exist (1).png") is None
    assert load_mask(tmp_path, "Normal/1 (1).png") is None


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    kwargs = dict(n=30, size=32, seed=5, difficulty=0.3)
    first = _digest(generate_phantom(tmp_path / "a", **kwargs))
    second = _digest(generate_phantom(tmp_path / "b", **kwargs))
    assert first == second
    other = _digest(generate_phantom(tmp_path / "c", **{**kwargs, "seed": 6}))
    assert other != first
    shared = set(first) & set(other)
    assert any(first[k] != other[k] for k in shared if k.endswith(".png"))


def test_regenerating_replaces_a_phantom_but_not_other_folders(tmp_path: Path) -> None:
    root = generate_phantom(tmp_path / "ds", n=12, size=32, seed=0)
    before = _digest(root)
    generate_phantom(tmp_path / "ds", n=14, size=32, seed=9)
    after = _digest(root)
    assert before != after and len(_read_meta(root)) == 14
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp or trash folders left
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="precious"):
        generate_phantom(precious, n=10, size=32)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_default_dataset_is_generated_once(tmp_path: Path) -> None:
    first = default_dataset(n=20, size=32, seed=1)
    assert first.is_relative_to(phantom.cache_dir() / "phantom")
    stamp = (first / "_meta.csv").stat().st_mtime_ns
    time.sleep(0.01)
    second = default_dataset(n=20, size=32, seed=1)
    assert second == first and (second / "_meta.csv").stat().st_mtime_ns == stamp
    assert default_dataset(n=20, size=32, seed=2) != first
    assert default_dataset(n=20, size=32, seed=1, label_level="subject") != first
    cohort = default_dataset(n=20, size=32, seed=1, slices_per_patient=(2, 5), ischemic_share=0.2)
    assert cohort != first and cohort.name == f"{first.name}_spp2-5_isch0.2"


def test_cohort_knobs(tmp_path: Path) -> None:
    knobs = {"slices_per_patient": (2, 4), "lesion_span": (1.0, 1.0), "ischemic_share": 0.0, "lesion_size": (1.4, 1.5)}
    root = generate_phantom(tmp_path / "ds", n=60, size=64, seed=3, **knobs)
    rows = _read_meta(root)
    slices = defaultdict(list)
    for row in rows:
        slices[row["patient"]].append(row)
    lengths = sorted(len(s) for s in slices.values())
    assert lengths[-1] <= 4 and lengths[1] >= 2, "2-4 slices (the last patient may be cut short by n)"
    strokes = [s for s in slices.values() if any(r["class"] == "Stroke" for r in s)]
    assert strokes and all(all(r["lesion_type"] == "hemorrhagic" for r in s) for s in strokes), "span 1, no ischemic"
    params = (root / "_params.json").read_text(encoding="utf-8")
    assert '"ischemic_share": 0.0' in params and '"lesion_size": [' in params
    small = generate_phantom(tmp_path / "small", n=60, size=64, seed=3, **{**knobs, "lesion_size": (0.6, 0.7)})
    area = [np.mean([int(r["lesion_area"]) for r in _read_meta(d) if r["lesion_type"] != "none"]) for d in (root, small)]
    assert area[0] > 1.5 * area[1], f"lesion_size scales the lesions: {area}"


# ---------------------------------------------------------------------------------------------
# Physics
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("z", [0.3, 0.45, 0.6, 0.85])
def test_hounsfield_ranges(z: float) -> None:
    rng = np.random.default_rng(0)
    for _ in range(3):  # three different heads
        anat = phantom._make_anatomy(rng, 0.5)
        sl = phantom._render_slice(anat, z, 128, rng=np.random.default_rng(1), keep_labels=True)
        labels, clean = sl.labels, sl.hu_clean
        assert np.all(clean[labels == phantom.AIR] == -1000)
        skull = clean[labels == phantom.SKULL]
        assert skull.size > 0 and skull.min() >= 700 and skull.max() <= 1500
        expected = {phantom.GM: (35, 45), phantom.WM: (20, 30), phantom.CSF: (0, 15)}
        for tissue, (low, high) in expected.items():
            values = clean[labels == tissue]
            assert values.size > 0, tissue
            assert low <= np.median(values) <= high, (tissue, np.median(values))
        if 0.35 < z < 0.7:
            assert np.count_nonzero(labels == phantom.VENTRICLE) > 20
            assert 0 <= np.median(clean[labels == phantom.VENTRICLE]) <= 15
        assert not sl.mask.any()
        # scanner noise: sigma of a few HU, measured in the air far from the head
        corner = sl.hu[:12, :12]
        assert 0.6 * anat.noise < corner.std() < 1.4 * anat.noise
        assert 2.0 <= anat.noise <= 10.5


def test_ventricles_change_with_level() -> None:
    anat = phantom._make_anatomy(np.random.default_rng(3), 0.0)
    areas = [
        np.count_nonzero(phantom._render_slice(anat, z, 64, keep_labels=True).labels == phantom.VENTRICLE)
        for z in (0.3, 0.45, 0.6, 0.8)
    ]
    assert areas[1] > areas[0] and areas[1] > areas[3]
    assert areas[3] == 0  # centrum semiovale: above the ventricles


@pytest.mark.parametrize("kind", ["ischemic", "hemorrhagic"])
def test_lesion_hounsfield_values(kind: str) -> None:
    rng = np.random.default_rng(7)
    anat = phantom._make_anatomy(rng, 0.0)
    lesion = phantom._make_lesion(rng, kind, 0, 2, 0.0)
    sl = phantom._render_slice(anat, 0.45, 128, lesion=lesion, profile=1.0, keep_labels=True)
    assert sl.mask.sum() > 20
    inside = np.median(sl.hu_clean[sl.mask])
    if kind == "hemorrhagic":
        assert 50 <= inside <= 90
    else:
        normal = sl.hu_clean[~sl.mask & np.isin(sl.labels, [phantom.GM, phantom.WM])]
        assert 2 <= np.median(normal) - inside <= 20
        assert inside < anat.hu_wm
    # the lesion mask never covers skull or air
    assert not np.any(sl.mask & np.isin(sl.labels, [phantom.AIR, phantom.SKULL, phantom.SCALP]))


def _brain_interior(image: np.ndarray) -> np.ndarray:
    """Pixels inside the skull, away from its partial-volume edge (from the windowed image alone)."""
    from scipy import ndimage

    bone = image >= 0.99
    inside = ndimage.binary_fill_holes(bone) & ~bone
    return ndimage.binary_erosion(inside, iterations=2)


def _lesion_contrast(root: Path, kind: str) -> float:
    """Mean windowed intensity inside the lesion minus the surrounding parenchyma ring."""
    from scipy import ndimage

    diffs = []
    for row in _read_meta(root):
        if row["lesion_type"] != kind:
            continue
        mask = load_mask(root, row["file"])
        with Image.open(root / row["file"]) as im:
            image = np.asarray(im, dtype=np.float64) / 255.0
        interior = _brain_interior(image)
        ring = ndimage.binary_dilation(mask, iterations=3) & ~mask & interior
        core = mask & interior
        if ring.sum() >= 5 and core.sum() >= 3:
            diffs.append(image[core].mean() - image[ring].mean())
    assert len(diffs) >= 3, kind
    return float(np.mean(diffs))


def test_difficulty_controls_contrast(tmp_path: Path) -> None:
    easy = generate_phantom(tmp_path / "easy", n=90, size=64, seed=8, difficulty=0.0)
    hard = generate_phantom(tmp_path / "hard", n=90, size=64, seed=8, difficulty=1.0)
    easy_isch, hard_isch = _lesion_contrast(easy, "ischemic"), _lesion_contrast(hard, "ischemic")
    easy_hem, hard_hem = _lesion_contrast(easy, "hemorrhagic"), _lesion_contrast(hard, "hemorrhagic")
    assert easy_isch < -0.1 and easy_hem > 0.25  # clearly visible at difficulty 0
    assert easy_isch < hard_isch < 0 < hard_hem < easy_hem
    assert abs(hard_isch) < 0.6 * abs(easy_isch)

    # lesions shrink and scanner noise grows with difficulty
    areas = [
        np.mean([int(r["lesion_area"]) for r in _read_meta(ds) if r["lesion_type"] != "none"]) for ds in (easy, hard)
    ]
    assert areas[1] < areas[0]
    assert _noise_level(hard) > 1.5 * _noise_level(easy)


def _noise_level(root: Path) -> float:
    """Median high-frequency intensity spread inside the head of the Normal images."""
    from scipy import ndimage

    spreads = []
    for path in sorted(root.glob("Normal/*.png")):
        image = np.asarray(Image.open(path), dtype=np.float64) / 255.0
        residual = image - ndimage.median_filter(image, size=3)
        tissue = ndimage.binary_erosion((image > 0.1) & (image < 0.9), iterations=2)
        spreads.append(residual[tissue].std())
    return float(np.median(spreads))


def test_neighbouring_slices_look_alike(two_class: Path) -> None:
    rows = _read_meta(two_class)
    images = {
        (r["patient"], int(r["slice_index"])): np.asarray(Image.open(two_class / r["file"]), dtype=float) for r in rows
    }
    patients = sorted({p for p, _ in images})

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    same = [corr(images[p, i], images[p, i + 1]) for p, i in images if (p, i + 1) in images]
    other = [corr(images[p, 1], images[q, 1]) for p, q in zip(patients, patients[1:])]
    assert np.median(same) > np.median(other) + 0.05


# ---------------------------------------------------------------------------------------------
# Validation and CLI
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"n": 0}, "0"),
        ({"n": 2.5}, "2.5"),
        ({"n": True}, "True"),
        ({"size": 8}, "8"),
        ({"seed": -1}, "-1"),
        ({"classes": ("normal", "covid")}, "covid"),
        ({"classes": ("normal",)}, "normal"),
        ({"difficulty": 1.5}, "1.5"),
        ({"difficulty": "hard"}, "hard"),
        ({"label_level": "patient"}, "patient"),
        ({"slices_per_patient": (6, 2)}, "(6, 2)"),
        ({"slices_per_patient": (0, 3)}, "0"),
        ({"ischemic_share": 1.5}, "1.5"),
        ({"ischemic_share": True}, "True"),
        ({"lesion_span": (0.9, 0.2)}, "(0.9, 0.2)"),
        ({"lesion_size": (0, 1)}, "(0, 1)"),
        ({"lesion_size": "big"}, "big"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=re.escape(shown)):
        generate_phantom(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("kwargs", "shown"), [({"n": -3}, "-3"), ({"label_level": "x"}, "'x'"), ({"classes": "a,b"}, "a,b")]
)
def test_default_dataset_validates(kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=re.escape(shown)):
        default_dataset(**kwargs)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "data.phantom", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_writes_dataset(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = _cli(
        *("--out", str(out), "--n", "15", "--size", "32", "--seed", "4"),
        *("--classes", "normal,ischemic,hemorrhagic", "--difficulty", "0.2", "--label-level", "subject"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert len(_images(out)) == 15 and (out / "_meta.csv").is_file()
    same = generate_phantom(
        tmp_path / "api", n=15, size=32, seed=4, classes=THREE, difficulty=0.2, label_level="subject"
    )
    assert _digest(out) == _digest(same)  # the CLI and the API make the same dataset


def test_cli_subprocess_rejects_bad_value(tmp_path: Path) -> None:
    result = _cli("--out", str(tmp_path / "x"), "--difficulty", "2")
    assert result.returncode == 2
    assert "'2'" in result.stderr and "difficulty" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--difficulty", "-0.1"], "'-0.1'"),
        (["--classes", "normal,covid"], "covid"),
        (["--label-level", "patient"], "patient"),
        (["--n", "zero"], "zero"),
        (["--size", "4"], "'4'"),
        (["--seed", "-2"], "'-2'"),
        (["--slices-per-patient", "9,3"], "9,3"),
    ],
)
def test_cli_rejects_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], shown: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        phantom.main(["--out", str(tmp_path / "x"), *args])
    assert exc.value.code == 2
    assert shown in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_to_overwrite_other_data(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep")
    assert phantom.main(["--out", str(tmp_path), "--n", "5", "--size", "32"]) == 2
    assert (tmp_path / "notes.txt").read_text() == "keep"


@pytest.mark.slow
def test_speed_1000_slices(tmp_path: Path) -> None:
    start = time.process_time()
    generate_phantom(tmp_path / "big", n=1000, size=128, seed=0)
    assert time.process_time() - start < 60.0
