"""Tests for data.quality and the ``python -m data`` CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data import QualityReport, quality_report, scan_folder
from tests.data.test_scan import BAD_FILES, make_mixed_dataset, smooth_field, u8

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_audit_dataset(root: Path) -> Path:
    """Known problems: 2 exact copies across classes, a near-duplicate triple, 2 bad files.

    normal: n0 (copied as stroke/s_copy.png), n1, n1_noisy_a, n1_noisy_b (near-dups), n2, n3 (64x48)
    stroke: s0, s1, s2, s_copy.png, broken.png (empty), notes.png (text)
    """
    rng = np.random.default_rng(7)
    (root / "normal").mkdir(parents=True)
    (root / "stroke").mkdir(parents=True)
    imgs = [smooth_field(rng, 32) for _ in range(7)]
    for i in range(3):
        Image.fromarray(u8(imgs[i])).save(root / "normal" / f"n{i}.png")
    for tag in ("a", "b"):
        Image.fromarray(u8(np.clip(imgs[1] + rng.normal(0, 0.01, imgs[1].shape), 0, 1))).save(
            root / "normal" / f"n1_noisy_{tag}.png"
        )
    Image.fromarray(u8(smooth_field(rng, 64))[:48]).save(root / "normal" / "n3.png")
    for i in range(3):
        Image.fromarray(u8(imgs[3 + i])).save(root / "stroke" / f"s{i}.png")
    shutil.copy(root / "normal" / "n0.png", root / "stroke" / "s_copy.png")
    (root / "stroke" / "broken.png").write_bytes(b"")
    (root / "stroke" / "notes.png").write_text("hello")
    return root


def test_report_counts(tmp_path: Path) -> None:
    r = quality_report(make_audit_dataset(tmp_path / "ds"), group_by="none")
    assert r.classes == ["normal", "stroke"]
    assert r.class_counts.set_index("label")["images"].to_dict() == {"normal": 6, "stroke": 4}
    assert r.class_counts.set_index("label")["bad_files"].to_dict() == {"normal": 0, "stroke": 2}
    assert set(r.bad_files["path"]) == {"stroke/broken.png", "stroke/notes.png"}
    # exact duplicates: one group of 2 spanning both classes -> one conflict
    assert len(r.duplicates) == 1
    assert r.duplicates.iloc[0]["count"] == 2 and r.duplicates.iloc[0]["cross_class"]
    assert set(r.duplicates.iloc[0]["paths"]) == {"normal/n0.png", "stroke/s_copy.png"}
    # near duplicates: n1 + 2 noisy copies; the exact pair is also a (distance 0) cluster
    groups = {frozenset(p) for p in r.near_duplicates["paths"]}
    assert frozenset({"normal/n1.png", "normal/n1_noisy_a.png", "normal/n1_noisy_b.png"}) in groups
    assert frozenset({"normal/n0.png", "stroke/s_copy.png"}) in groups
    assert len(groups) == 2
    assert r.summary["largest_near_duplicate_group"] == 3
    assert r.summary["cross_class_near_duplicate_groups"] == 1
    assert sorted(r.conflicts["kind"]) == ["exact", "near"]
    # sizes: 9 images 32x32, one 48x64
    sizes = {(h, w): c for h, w, c in zip(r.sizes["height"], r.sizes["width"], r.sizes["count"])}
    assert sizes == {(32, 32): 9, (48, 64): 1}
    assert r.sizes.iloc[0]["per_class"] == {"normal": 5, "stroke": 4}
    # intensity: histograms count every pixel; mean matches a direct computation
    normal = r.intensity.set_index("label").loc["normal"]
    assert sum(normal["hist"]) == 5 * 32 * 32 + 48 * 64 and len(normal["hist"]) == 32
    m = scan_folder(tmp_path / "ds", group_by="none")
    direct = np.concatenate([np.asarray(Image.open(p), np.float64).ravel() / 255 for p in m.paths()[:6]])
    assert normal["mean"] == pytest.approx(direct.mean(), abs=1e-6)
    assert normal["std"] == pytest.approx(direct.std(), abs=1e-6)
    assert normal["p5"] <= normal["p50"] <= normal["p95"]
    assert set(r.sharpness.columns) >= {"label", "median", "p5", "p95"}
    assert r.sharpness.set_index("label").loc["stroke", "images"] == 4
    # subjects: none -> one per file
    assert r.subject_source == "none" and r.summary["n_subjects"] == 10
    assert any("exact-duplicate" in w or "identical" in w for w in r.warnings)


def test_report_from_manifest_and_threshold(tmp_path: Path) -> None:
    m = scan_folder(make_audit_dataset(tmp_path / "ds"))
    assert m.subject_source == "phash"
    r = quality_report(m)
    assert r.manifest_hash == m.hash and r.phash_threshold == 6
    strict = quality_report(m, phash_threshold=0)
    assert strict.summary["near_duplicate_groups"] == 1  # only the byte-identical pair
    with pytest.raises(ValueError, match="only takes phash_threshold"):
        quality_report(m, window="bone")
    # subjects per class / slices per subject under phash grouping
    assert r.summary["n_subjects"] == 7 and r.summary["slices_per_subject_max"] == 3
    assert r.summary["subjects_in_several_classes"] == 1


def test_report_without_histograms_decodes(tmp_path: Path) -> None:
    m = scan_folder(make_audit_dataset(tmp_path / "ds"))
    with_hist = quality_report(m).intensity
    m.histograms = None
    pd.testing.assert_frame_equal(quality_report(m).intensity, with_hist)


def test_to_dict_round_trip(tmp_path: Path) -> None:
    r = quality_report(make_mixed_dataset(tmp_path / "ds"))
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    back = QualityReport.from_dict(d)
    assert back.summary_text() == r.summary_text()
    pd.testing.assert_frame_equal(back.class_counts, r.class_counts, check_dtype=False)
    assert back.to_dict() == d
    with pytest.raises(ValueError, match="missing keys"):
        QualityReport.from_dict({"root": "x"})


def test_summary_text_lists_problems(tmp_path: Path) -> None:
    text = quality_report(make_mixed_dataset(tmp_path / "ds")).summary_text()
    assert f"Bad files: {len(BAD_FILES)}" in text
    for path, reason in BAD_FILES.items():
        assert path in text and reason in text
    for section in ("Images per class", "Exact duplicates", "Near-duplicates", "Subjects (source:",
                    "Image sizes", "Pixel intensity", "Sharpness"):
        assert section in text


def test_size_shortcut_warning(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, size in (("normal", 32), ("stroke", 40)):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(u8(smooth_field(rng, size))).save(tmp_path / "ds" / cls / f"{i}.png")
    r = quality_report(tmp_path / "ds")
    assert any("size alone predicts the label" in w for w in r.warnings)


# ------------------------------------------------------------------------------------------ CLI
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "data", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_ok_with_bad_files(tmp_path: Path) -> None:
    root = make_mixed_dataset(tmp_path / "ds")
    out = tmp_path / "q.json"
    proc = run_cli(str(root), "--json", str(out), "--group-by", "phash")
    assert proc.returncode == 0, proc.stderr
    assert f"Bad files: {len(BAD_FILES)}" in proc.stdout and "Stroke/cut.jpg" in proc.stdout
    assert "Traceback" not in proc.stderr
    report = QualityReport.from_dict(json.loads(out.read_text()))
    assert report.summary["n_images"] == 10 and report.subject_source == "phash"


@pytest.mark.parametrize("layout", ["single_class", "missing", "empty_class"])
def test_cli_unusable_folder(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "ds"
    if layout != "missing":
        (root / "normal").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "normal" / "a.png")
    if layout == "empty_class":
        (root / "stroke").mkdir()
    proc = run_cli(str(root))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(root) in lines[0]
    assert proc.stdout == ""


def test_cli_bad_option(tmp_path: Path) -> None:
    root = make_mixed_dataset(tmp_path / "ds")
    proc = run_cli(str(root), "--window", "lung")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "lung" in proc.stderr
