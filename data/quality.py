"""Data quality report: the checks a careful author runs before training a classifier.

Images per class, unreadable files with reasons, exact duplicates (same bytes) and
near-duplicates (perceptual hash within ``phash_threshold`` bits), duplicates whose labels
disagree, image sizes, intensity and sharpness distributions per class, and how images group
into subjects. Everything is measured on the scan's statistics; nothing is estimated.

Example:
    >>> from data import quality_report
    >>> report = quality_report("path/to/dataset")          # doctest: +SKIP
    >>> print(report.summary_text())                         # doctest: +SKIP
    >>> json.dump(report.to_dict(), open("quality.json", "w"))  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from data._files import json_clean
from data._groups import phash_clusters
from data._scan import HIST_BINS, VOLUME_COLUMNS, Manifest, intensity_histogram, scan_folder
from data._volume_io import is_nifti_name

__all__ = ["QualityReport", "quality_report"]

logger = logging.getLogger(__name__)

#: Percentiles of the pixel intensities reported per class.
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)

_TABLE_COLUMNS: dict[str, list[str]] = {
    "class_counts": ["label", "y", "images", "bad_files", "subjects", "fraction"],
    "bad_files": ["path", "reason"],
    "duplicates": ["group", "sha1", "count", "labels", "cross_class", "paths"],
    "near_duplicates": ["group", "count", "labels", "cross_class", "max_distance", "paths"],
    "conflicts": ["kind", "group", "count", "labels", "paths"],
    "sizes": ["height", "width", "count", "per_class"],
    "intensity": ["label", "images", "mean", "std", *[f"p{p}" for p in PERCENTILES], "hist"],
    "sharpness": ["label", "images", "mean", "std", "min", "p5", "median", "p95", "max"],
    "subjects": ["label", "subjects", "slices_min", "slices_median", "slices_mean", "slices_max"],
    "volumes": VOLUME_COLUMNS,
}


@dataclass(eq=False)
class QualityReport:
    """What :func:`quality_report` found; every table is a ``pandas.DataFrame``.

    Attributes:
        root: Dataset folder.
        classes: Class names in label order.
        window: CT window used for DICOM.
        manifest_hash: ``Manifest.hash`` of the scan.
        subject_source: Where subjects came from (``"groups.csv"``, ``"dicom"``, ...).
        phash_threshold: Hamming distance that made two images near-duplicates.
        class_counts: Per class: ``images`` (readable), ``bad_files``, ``subjects``, ``fraction``.
        bad_files: ``path``, ``reason`` of every unreadable file.
        duplicates: Exact duplicate groups (same SHA-1): ``count``, ``labels``, ``cross_class``, ``paths``.
        near_duplicates: pHash clusters of >= 2 images: ``count``, ``labels``, ``cross_class``,
            ``max_distance`` (largest pairwise Hamming distance inside), ``paths``.
        conflicts: Duplicate groups whose images carry different labels (``kind`` ``"exact"`` or
            ``"near"``).
        sizes: Image size distribution: ``height``, ``width``, ``count``, ``per_class`` counts.
        intensity: Per class: pixel ``mean``/``std``, percentiles ``p1``..``p99`` (resolution
            1/32, from the histogram) and ``hist`` (pixel counts in 32 bins on [0, 1]).
        sharpness: Per class: variance of the Laplacian over images (mean, std, min, p5, median, p95, max).
        subjects: Per class: number of subjects and slices per subject (min, median, mean, max).
        volumes: One row per NIfTI volume or DICOM series (``Manifest.volumes``): slices in the
            volume and kept, slice and pixel spacing (mm), tilt; empty for folders of single images.
        summary: Headline numbers (counts of everything above).
        warnings: Plain-language findings that deserve a look before training.
    """

    root: str
    classes: list[str]
    window: str
    manifest_hash: str
    subject_source: str
    phash_threshold: int
    class_counts: pd.DataFrame
    bad_files: pd.DataFrame
    duplicates: pd.DataFrame
    near_duplicates: pd.DataFrame
    conflicts: pd.DataFrame
    sizes: pd.DataFrame
    intensity: pd.DataFrame
    sharpness: pd.DataFrame
    subjects: pd.DataFrame
    volumes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=VOLUME_COLUMNS))
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tables as lists of records); inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, pd.DataFrame):
                value = value.to_dict(orient="records")
            out[f.name] = json_clean(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityReport:
        """Rebuild a report from :meth:`to_dict` output (e.g. a ``quality.json``).

        Raises:
            ValueError: A required key is missing.
        """
        missing = [f.name for f in fields(cls) if f.name not in data and f.name not in ("summary", "warnings", "volumes")]
        if missing:
            raise ValueError(f"Not a QualityReport dict: missing keys {missing}.")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name)
            if f.name in _TABLE_COLUMNS:
                value = pd.DataFrame.from_records(value or [], columns=_TABLE_COLUMNS[f.name])
            elif f.name == "summary":
                value = dict(value or {})
            elif f.name == "warnings":
                value = list(value or [])
            kwargs[f.name] = value
        return cls(**kwargs)

    # --------------------------------------------------------------------------------- text
    def summary_text(self, *, max_rows: int = 10) -> str:
        """Human-readable report (what ``python -m data DIR`` prints).

        Args:
            max_rows: Longest list shown for bad files, duplicate groups and sizes.
        """
        s = self.summary
        lines = [
            f"Dataset: {self.root}",
            f"  {s.get('n_images', 0)} readable images in {len(self.classes)} classes, "
            f"{s.get('n_bad_files', 0)} bad files; window {self.window}; manifest {self.manifest_hash}",
            "",
            "Images per class",
            _indent(self.class_counts.drop(columns=["y"]).to_string(index=False, float_format=lambda v: f"{v:.3f}")),
        ]
        lines += ["", f"Bad files: {len(self.bad_files)}"]
        for row in self.bad_files.head(max_rows).itertuples(index=False):
            lines.append(f"  {row.path}: {row.reason}")
        if len(self.bad_files) > max_rows:
            lines.append(f"  ... and {len(self.bad_files) - max_rows} more")

        lines += [
            "",
            f"Exact duplicates (same bytes): {s.get('exact_duplicate_groups', 0)} groups, "
            f"{s.get('exact_duplicate_images', 0)} images, {s.get('exact_conflicts', 0)} with conflicting labels",
        ]
        for row in self.duplicates.head(max_rows).itertuples(index=False):
            lines.append(f"  {row.count} x {', '.join(row.paths[:4])}{' ...' if len(row.paths) > 4 else ''}")
        lines += [
            "",
            f"Near-duplicates (pHash Hamming <= {self.phash_threshold}): {s.get('near_duplicate_groups', 0)} groups, "
            f"{s.get('near_duplicate_images', 0)} images, largest {s.get('largest_near_duplicate_group', 0)}, "
            f"{s.get('cross_class_near_duplicate_groups', 0)} across classes",
        ]
        lines += ["", f"Conflicting labels: {len(self.conflicts)} groups"]
        for row in self.conflicts.head(max_rows).itertuples(index=False):
            per_label = pd.Series(row.labels).value_counts().sort_index()
            counts = ", ".join(f"{lab} {n}" for lab, n in per_label.items())
            examples = ", ".join(
                next(p for p, lab_ in zip(row.paths, row.labels) if lab_ == lab) for lab in per_label.index
            )
            lines.append(f"  [{row.kind}] {row.count} images ({counts}), e.g. {examples}")
        if len(self.conflicts) > max_rows:
            lines.append(f"  ... and {len(self.conflicts) - max_rows} more")

        lines += [
            "",
            f"Subjects (source: {self.subject_source}): {s.get('n_subjects', 0)} subjects, slices per subject "
            f"median {_fmt(s.get('slices_per_subject_median'))} (min {_fmt(s.get('slices_per_subject_min'))}, "
            f"max {_fmt(s.get('slices_per_subject_max'))}); {s.get('subjects_in_several_classes', 0)} subjects "
            "appear in more than one class",
            _indent(self.subjects.to_string(index=False, float_format=lambda v: f"{v:.1f}")),
        ]
        lines += self._volume_lines(max_rows)
        lines += ["", f"Image sizes (H x W): {len(self.sizes)} distinct"]
        for row in self.sizes.head(max_rows).itertuples(index=False):
            per = ", ".join(f"{k} {v}" for k, v in row.per_class.items() if v)
            lines.append(f"  {row.height} x {row.width}: {row.count} ({per})")
        if len(self.sizes) > max_rows:
            lines.append(f"  ... and {len(self.sizes) - max_rows} more sizes")
        cols = ["label", "images", "mean", "std", "p5", "p50", "p95"]
        lines += [
            "",
            "Pixel intensity per class ([0, 1] after windowing)",
            _indent(self.intensity[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")),
            "",
            "Sharpness per class (variance of Laplacian; low = blurry)",
            _indent(self.sharpness.to_string(index=False, float_format=lambda v: f"{v:.4g}")),
        ]
        lines += ["", "Warnings" if self.warnings else "Warnings: none"]
        lines += [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)


    def _volume_lines(self, max_rows: int) -> list[str]:
        s = self.summary
        if not s.get("n_volumes") and not s.get("n_skipped_volumes"):
            return []
        lines = ["", f"Volumes: {s.get('n_volumes', 0)} read ({s.get('n_volumes_dicom', 0)} DICOM series, "
                 f"{s.get('n_volumes_nifti', 0)} NIfTI), {s.get('n_skipped_volumes', 0)} skipped; slices per volume "
                 f"median {_fmt(s.get('slices_per_volume_median'))} (min {_fmt(s.get('slices_per_volume_min'))}, "
                 f"max {_fmt(s.get('slices_per_volume_max'))}), {s.get('volume_slices_kept', 0)} kept"]
        for problem, n in (s.get("volume_problems") or {}).items():
            lines.append(f"  skipped for {problem}: {n}")
        if len(self.volumes):
            cols = ["volume", "label", "format", "slices_total", "slices_kept", "slice_spacing_mm", "pixel_spacing_mm",
                    "tilt_deg"]
            lines.append(_indent(self.volumes[cols].head(max_rows).to_string(index=False, float_format=lambda v: f"{v:.2f}")))
            if len(self.volumes) > max_rows:
                lines.append(f"  ... and {len(self.volumes) - max_rows} more volumes")
        return lines


# ------------------------------------------------------------------------------------ helpers
_VOLUME_PROBLEMS = {
    "missing slices": "missing slices", "inconsistent slice spacing": "spacing", "same position": "spacing",
    "pixel spacing changes": "spacing", "not an axial": "orientation", "oblique": "orientation",
    "orientation changes": "orientation", "4-D NIfTI": "4-D NIfTI", "size limit": "size limit",
    "image size changes": "image size",
}


def _volume_summary(volumes: pd.DataFrame, bad: pd.DataFrame) -> dict[str, Any]:
    """Counts of volumes read and skipped, slices per volume and the kinds of problems."""
    skipped: dict[str, str] = {}
    for path, reason in zip(bad["path"], bad["reason"]):
        if reason.startswith("series "):
            skipped.setdefault(reason.split(":", 1)[0], reason)
        elif is_nifti_name(path):
            skipped.setdefault(path, reason)
    problems: dict[str, int] = {}
    for reason in skipped.values():
        kind = next((v for k, v in _VOLUME_PROBLEMS.items() if k in reason), "unreadable")
        problems[kind] = problems.get(kind, 0) + 1
    total = volumes["slices_total"].astype(float) if len(volumes) else pd.Series(dtype=float)
    return {
        "n_volumes": len(volumes),
        "n_volumes_dicom": int((volumes["format"] == "dicom").sum()) if len(volumes) else 0,
        "n_volumes_nifti": int((volumes["format"] == "nifti").sum()) if len(volumes) else 0,
        "n_skipped_volumes": len(skipped),
        "volume_problems": dict(sorted(problems.items())),
        "slices_per_volume_min": int(total.min()) if len(total) else 0,
        "slices_per_volume_median": float(total.median()) if len(total) else None,
        "slices_per_volume_max": int(total.max()) if len(total) else 0,
        "volume_slices_kept": int(volumes["slices_kept"].sum()) if len(volumes) else 0,
    }


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _hist_percentiles(hist: np.ndarray, percentiles: tuple[int, ...]) -> list[float]:
    """Percentiles of pixel values from a histogram on [0, 1] (linear inside the bin)."""
    total = hist.sum()
    if total == 0:
        return [float("nan")] * len(percentiles)
    cdf = np.concatenate([[0.0], np.cumsum(hist) / total])
    edges = np.linspace(0.0, 1.0, len(hist) + 1)
    return [float(np.interp(p / 100.0, cdf, edges)) for p in percentiles]


def _group_rows(table: pd.DataFrame, ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(group id, row indices) for every id shared by >= 2 rows, largest first."""
    s = pd.Series(np.arange(len(table)), index=ids)
    out = [(gid, rows.to_numpy()) for gid, rows in s.groupby(level=0) if len(rows) >= 2]
    return sorted(out, key=lambda g: (-len(g[1]), int(g[1][0])))


def _histograms(manifest: Manifest) -> np.ndarray:
    if manifest.histograms is not None and len(manifest.histograms) == len(manifest.table):
        return np.asarray(manifest.histograms, dtype=np.int64)
    from data._io import load_image

    logger.info("Manifest has no histograms; decoding %d images for the intensity summary.", len(manifest.table))
    return np.stack(
        [intensity_histogram(load_image(p, window=manifest.window), HIST_BINS) for p in manifest.paths()]
    ).astype(np.int64)


# -------------------------------------------------------------------------------------- report
def quality_report(root_or_manifest: str | os.PathLike[str] | Manifest, **scan_kwargs: Any) -> QualityReport:
    """Audit a dataset folder (or an existing scan) before training.

    Args:
        root_or_manifest: Dataset folder, or a :class:`~data.Manifest` from :func:`data.scan_folder`.
        **scan_kwargs: Passed to :func:`data.scan_folder` when a folder is given
            (``group_by``, ``filename_regex``, ``phash_threshold``, ``window``, ``min_per_class``,
            ``workers``). With a manifest only ``phash_threshold`` is used (default: the scan's).

    Returns:
        The :class:`QualityReport`.

    Raises:
        ValueError: The folder is unusable (see :func:`data.scan_folder`) or bad arguments.
    """
    if isinstance(root_or_manifest, Manifest):
        manifest = root_or_manifest
        unknown = set(scan_kwargs) - {"phash_threshold"}
        if unknown:
            raise ValueError(f"With a Manifest, quality_report() only takes phash_threshold; got {sorted(unknown)}.")
        threshold = int(scan_kwargs.get("phash_threshold", manifest.phash_threshold))
    else:
        manifest = scan_folder(root_or_manifest, **scan_kwargs)
        threshold = manifest.phash_threshold
    return _build_report(manifest, threshold)


def _build_report(manifest: Manifest, threshold: int) -> QualityReport:
    """Measure every table of the report on the scan's statistics."""
    t = manifest.table
    classes = list(manifest.classes)
    bad = manifest.bad_files[["path", "reason"]].reset_index(drop=True)
    class_counts = _class_count_table(t, classes, bad)
    duplicates, exact_conflicts = _exact_duplicate_table(t)
    near, near_conflicts = _near_duplicate_table(t, threshold)
    conflicts = pd.DataFrame(exact_conflicts + near_conflicts, columns=_TABLE_COLUMNS["conflicts"])
    sizes = _size_table(t, classes)
    intensity, sharp = _intensity_tables(t, classes, _histograms(manifest))
    subjects = _subject_table(t, classes)
    summary = _summary(t, bad, classes, duplicates, near, conflicts, sizes)
    volumes = getattr(manifest, "volumes", None)
    volumes = volumes if isinstance(volumes, pd.DataFrame) else pd.DataFrame(columns=VOLUME_COLUMNS)
    summary.update(_volume_summary(volumes, bad))
    report = QualityReport(
        root=str(manifest.root), classes=classes, window=manifest.window, manifest_hash=manifest.hash,
        subject_source=manifest.subject_source, phash_threshold=int(threshold), class_counts=class_counts,
        bad_files=bad, duplicates=duplicates, near_duplicates=near, conflicts=conflicts, sizes=sizes,
        intensity=intensity, sharpness=sharp, subjects=subjects, volumes=volumes.reset_index(drop=True),
        summary=summary,
    )
    report.warnings = _warnings(report, t) + list(getattr(manifest, "notes", []) or [])
    if summary["n_skipped_volumes"]:
        kinds = ", ".join(f"{k} {n}" for k, n in summary["volume_problems"].items())
        report.warnings.append(f"{summary['n_skipped_volumes']} volume(s) skipped ({kinds}); see Bad files.")
    return report


def _class_count_table(t: pd.DataFrame, classes: list[str], bad: pd.DataFrame) -> pd.DataFrame:
    """Images, bad files, subjects and image fraction per class."""
    bad_class = bad["path"].map(lambda p: p.split("/", 1)[0])
    class_counts = pd.DataFrame(
        {
            "label": classes,
            "y": list(range(len(classes))),
            "images": [int((t["label"] == c).sum()) for c in classes],
            "bad_files": [int((bad_class == c).sum()) for c in classes],
            "subjects": [int(t.loc[t["label"] == c, "subject"].nunique()) for c in classes],
        }
    )
    class_counts["fraction"] = class_counts["images"] / max(len(t), 1)
    return class_counts


def _exact_duplicate_table(t: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Groups of identical files (same SHA-1) and the conflict rows of those that mix labels."""
    dup_rows = []
    conflict_rows = []
    for k, (_, rows) in enumerate(_group_rows(t, t["sha1"].to_numpy())):
        labels = t["label"].iloc[rows].tolist()
        paths = t["path"].iloc[rows].tolist()
        cross = len(set(labels)) > 1
        dup_rows.append({"group": k, "sha1": t["sha1"].iloc[rows[0]], "count": len(rows), "labels": labels,
                         "cross_class": cross, "paths": paths})
        if cross:
            conflict_rows.append({"kind": "exact", "group": k, "count": len(rows), "labels": labels, "paths": paths})
    return pd.DataFrame(dup_rows, columns=_TABLE_COLUMNS["duplicates"]), conflict_rows


def _near_duplicate_table(t: pd.DataFrame, threshold: int) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Perceptual-hash clusters within ``threshold`` bits and the conflict rows of those that mix labels."""
    from data._groups import hamming_distances, phash_to_uint64

    hashes = phash_to_uint64(list(t["phash"]))
    near_rows = []
    conflict_rows = []
    for k, (_, rows) in enumerate(_group_rows(t, phash_clusters(hashes, threshold))):
        labels = t["label"].iloc[rows].tolist()
        paths = t["path"].iloc[rows].tolist()
        cross = len(set(labels)) > 1
        max_distance = int(hamming_distances(hashes[rows], hashes[rows]).max())
        near_rows.append({"group": k, "count": len(rows), "labels": labels, "cross_class": cross,
                          "max_distance": max_distance, "paths": paths})
        if cross:
            conflict_rows.append({"kind": "near", "group": k, "count": len(rows), "labels": labels, "paths": paths})
    return pd.DataFrame(near_rows, columns=_TABLE_COLUMNS["near_duplicates"]), conflict_rows


def _size_table(t: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Image sizes with their count and per-class counts, most frequent first."""
    size_rows = []
    for (h, w), part in t.groupby(["height", "width"], sort=False):
        size_rows.append({"height": int(h), "width": int(w), "count": len(part),
                          "per_class": {c: int((part["label"] == c).sum()) for c in classes}})
    sizes = pd.DataFrame(size_rows, columns=_TABLE_COLUMNS["sizes"])
    if len(sizes):
        sizes = sizes.sort_values(["count", "height", "width"], ascending=[False, False, False]).reset_index(drop=True)
    return sizes


def _intensity_tables(
    t: pd.DataFrame, classes: list[str], hists: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class intensity (pixel-weighted, pooled from per-image mean/std and histograms) and sharpness."""
    pixels = (t["height"] * t["width"]).to_numpy(dtype=np.float64)
    intensity_rows, sharp_rows = [], []
    for c in classes:
        mask = (t["label"] == c).to_numpy()
        w = pixels[mask]
        means, stds = t["mean"].to_numpy()[mask], t["std"].to_numpy()[mask]
        total = w.sum()
        mean = float((w * means).sum() / total) if total else float("nan")
        var = float((w * (stds**2 + (means - mean) ** 2)).sum() / total) if total else float("nan")
        hist = hists[mask].sum(axis=0)
        row = {"label": c, "images": int(mask.sum()), "mean": mean, "std": math.sqrt(max(var, 0.0))}
        row.update({f"p{p}": v for p, v in zip(PERCENTILES, _hist_percentiles(hist, PERCENTILES))})
        row["hist"] = [int(v) for v in hist]
        intensity_rows.append(row)
        sh = t["sharpness"].to_numpy()[mask]
        sharp_rows.append({
            "label": c, "images": int(mask.sum()), "mean": float(sh.mean()), "std": float(sh.std()),
            "min": float(sh.min()), "p5": float(np.percentile(sh, 5)), "median": float(np.median(sh)),
            "p95": float(np.percentile(sh, 95)), "max": float(sh.max()),
        } if mask.any() else {"label": c, "images": 0})
    intensity = pd.DataFrame(intensity_rows, columns=_TABLE_COLUMNS["intensity"])
    sharp = pd.DataFrame(sharp_rows, columns=_TABLE_COLUMNS["sharpness"])
    return intensity, sharp


def _subject_table(t: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Subjects per class and the spread of slices per subject."""
    subject_rows = []
    for c in classes:
        sizes_c = t.loc[t["label"] == c].groupby("subject").size()
        subject_rows.append({
            "label": c, "subjects": int(len(sizes_c)),
            "slices_min": int(sizes_c.min()) if len(sizes_c) else 0,
            "slices_median": float(sizes_c.median()) if len(sizes_c) else float("nan"),
            "slices_mean": float(sizes_c.mean()) if len(sizes_c) else float("nan"),
            "slices_max": int(sizes_c.max()) if len(sizes_c) else 0,
        })
    return pd.DataFrame(subject_rows, columns=_TABLE_COLUMNS["subjects"])


def _summary(
    t: pd.DataFrame,
    bad: pd.DataFrame,
    classes: list[str],
    duplicates: pd.DataFrame,
    near: pd.DataFrame,
    conflicts: pd.DataFrame,
    sizes: pd.DataFrame,
) -> dict[str, Any]:
    """Headline counts of the report."""
    per_subject = t.groupby("subject").size()
    multi_class = int((t.groupby("subject")["label"].nunique() > 1).sum())
    return {
        "n_images": len(t),
        "n_bad_files": len(bad),
        "n_classes": len(classes),
        "exact_duplicate_groups": len(duplicates),
        "exact_duplicate_images": int(duplicates["count"].sum()) if len(duplicates) else 0,
        "exact_conflicts": int(duplicates["cross_class"].sum()) if len(duplicates) else 0,
        "near_duplicate_groups": len(near),
        "near_duplicate_images": int(near["count"].sum()) if len(near) else 0,
        "largest_near_duplicate_group": int(near["count"].max()) if len(near) else 0,
        "cross_class_near_duplicate_groups": int(near["cross_class"].sum()) if len(near) else 0,
        "n_conflicts": len(conflicts),
        "n_subjects": int(t["subject"].nunique()),
        "subjects_in_several_classes": multi_class,
        "slices_per_subject_min": int(per_subject.min()) if len(per_subject) else 0,
        "slices_per_subject_median": float(per_subject.median()) if len(per_subject) else None,
        "slices_per_subject_max": int(per_subject.max()) if len(per_subject) else 0,
        "n_sizes": len(sizes),
    }


def _warnings(report: QualityReport, t: pd.DataFrame) -> list[str]:
    """Findings that can inflate or invalidate a validation score."""
    out: list[str] = []
    s = report.summary
    if s["exact_conflicts"]:
        out.append(f"{s['exact_conflicts']} identical file(s) appear under different labels.")
    if s["cross_class_near_duplicate_groups"]:
        out.append(f"{s['cross_class_near_duplicate_groups']} near-duplicate group(s) mix labels.")
    if s["exact_duplicate_groups"] and report.subject_source not in ("phash",):
        split = sum(t.loc[t["path"].isin(p), "subject"].nunique() > 1 for p in report.duplicates["paths"])
        if split:
            out.append(f"{split} exact-duplicate group(s) span several subjects: they can leak across CV folds.")
    if report.subject_source == "none":
        out.append("Subjects are single files (group_by='none'): "
                   "slices of one patient can land on both sides of a split.")
    if report.subject_source == "phash" and s["n_subjects"] == s["n_images"] and s["n_images"] > 1:
        out.append("No patient ids found and no near-duplicates: every image is its own subject. "
                   "Add groups.csv (file,subject) if several images come from one patient.")
    if s["subjects_in_several_classes"] and report.subject_source in ("filename", "groups.csv", "dicom"):
        out.append(f"{s['subjects_in_several_classes']} subject id(s) occur in several classes (slice-level labels, "
                   "or numbering that restarts per folder); each is kept as one subject, which is conservative.")
    if s["largest_near_duplicate_group"] >= max(10, 0.25 * s["n_images"]):
        share = s["largest_near_duplicate_group"] / max(s["n_images"], 1)
        out.append(f"The largest near-duplicate group holds {share:.0%} of the images: at pHash threshold "
                   f"{report.phash_threshold} similar-looking scans chain together; if subjects come from pHash, "
                   "lower --phash-threshold or provide groups.csv.")
    counts = report.class_counts["images"]
    if len(counts) and counts.min() > 0 and counts.max() / counts.min() >= 3:
        out.append(f"Class imbalance: largest/smallest class = {counts.max() / counts.min():.1f}.")
    few = report.subjects.loc[report.subjects["subjects"] < 5, "label"].tolist()
    if few:
        out.append(f"Classes with fewer than 5 subjects: {few}; grouped CV folds will be unstable.")
    # image size tied to the label is a shortcut a model can learn
    if len(report.sizes) > 1:
        own = [{c for c, v in pc.items() if v} for pc in report.sizes["per_class"]]
        if all(len(o) == 1 for o in own) and len(set().union(*own)) > 1:
            out.append("Each image size occurs in only one class: size alone predicts the label "
                       "(resizing hides it only partly).")
    return out
