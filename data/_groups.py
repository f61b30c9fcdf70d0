"""Subjects (groups) for leakage-aware cross-validation.

Slices of one patient look alike; a split that puts some of them in training and others in
validation scores the model on a patient it has already seen. Every image therefore gets a
*subject* id, taken from the first source that applies (``group_by="auto"``):

1. ``groups.csv`` in the dataset root (columns ``file,subject``; ``file`` relative to the root,
   or a bare file name when names are unique);
2. DICOM *PatientID* (else *StudyInstanceUID*), when every image is DICOM with an id or a NIfTI
   slice (a NIfTI volume's subject is the BIDS ``sub-<label>`` of its file name, else the file);
3. a subject id in the **file name**: a user regex, or the first built-in scheme
   (:data:`FILENAME_SCHEMES`) that matches at least 90 % of the files *and* yields fewer
   subjects than files (and at least two). Unmatched files become their own subject.
   Kaggle-style numbering (``58 (10).jpg``) restarts in each class folder; we deliberately do
   **not** prefix the class, so ``Normal/58 (1).jpg`` and ``Stroke/58 (3).jpg`` share subject
   ``58``: a coarser grouping can only reduce leakage, never add it;
4. near-duplicate clusters of the 64-bit perceptual hash: images whose hashes differ in at most
   ``phash_threshold`` bits are linked, and the connected components (what union-find computes)
   become subjects.

An explicit ``group_by`` forces one source and raises ``ValueError`` when it cannot be used;
``"none"`` makes each file its own subject (a slice-level split, for comparison only).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "FILENAME_SCHEMES",
    "GROUP_SOURCES",
    "assign_subjects",
    "hamming_distances",
    "phash_clusters",
    "phash_to_uint64",
]

logger = logging.getLogger(__name__)

#: Accepted ``group_by`` values (besides a path to a CSV file).
GROUP_SOURCES = ("auto", "csv", "dicom", "filename", "phash", "none")

#: Built-in file-name schemes, tried in this order; each is ``re.fullmatch``-ed against the file
#: name without extension and its ``subject`` group is the subject id.
FILENAME_SCHEMES: dict[str, str] = {
    "kaggle": r"\s*(?P<subject>\d+)\s*\(\s*\d+\s*\)\s*",  # 58 (10)
    "bids": r"(?P<subject>sub-[A-Za-z0-9]+)(?:_.*)?",  # sub-07_ses-1_ct_slice12
    "patient": r"(?i:(?P<subject>(?:patient|pat|case|subject|subj|id)[-_ ]?\d+))(?:[-_ .].*)",  # patient012_slice03
    "slice": r"(?i:(?P<subject>.+?)[-_ .]+(?:slice|slc|img|image|frame)[-_ ]?\d+)",  # scan_A_slice_3
    "numbered": r"(?P<subject>\d+)[-_]\d+",  # 012_03
}

#: A built-in scheme is used when it matches at least this fraction of the files.
MIN_SCHEME_COVERAGE = 0.9

_CSV_FILE_COLUMNS = ("file", "path", "filename")
_CSV_SUBJECT_COLUMNS = ("subject", "patient", "patient_id", "group")


# --------------------------------------------------------------------------------- pHash utils
def phash_to_uint64(hashes: Sequence[str]) -> np.ndarray:
    """16-hex-digit perceptual hashes -> uint64 array.

    Raises:
        ValueError: A hash is not 16 hex digits.
    """
    out = np.empty(len(hashes), dtype=np.uint64)
    for i, h in enumerate(hashes):
        if not isinstance(h, str) or len(h) != 16:
            raise ValueError(f"A perceptual hash is 16 hex digits, got {h!r}.")
        try:
            out[i] = int(h, 16)
        except ValueError:
            raise ValueError(f"A perceptual hash is 16 hex digits, got {h!r}.") from None
    return out


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.uint8)
    return _POP8[x[..., None].view(np.uint8)].sum(axis=-1, dtype=np.uint8)  # pragma: no cover


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between two uint64 hash vectors -> (len(a), len(b)) uint8."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    return _popcount(a[:, None] ^ b[None, :])


def phash_clusters(hashes: Sequence[str] | np.ndarray, threshold: int) -> np.ndarray:
    """Cluster images whose perceptual hashes differ in at most ``threshold`` bits.

    Pairs are compared in row blocks with a vectorised popcount (O(N^2) bit operations, about a
    second for 20,000 images); the linked pairs' connected components are the clusters.

    Args:
        hashes: 16-hex strings or uint64 values.
        threshold: Largest Hamming distance (0..64) that links two images.

    Returns:
        int64 cluster id per image, numbered 0, 1, ... in order of first appearance.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _check_threshold(threshold)
    h = np.asarray(hashes, dtype=np.uint64) if isinstance(hashes, np.ndarray) else phash_to_uint64(list(hashes))
    n = len(h)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    block = max(1, 4_000_000 // n)
    for start in range(0, n, block):
        stop = min(n, start + block)
        dist = hamming_distances(h[start:stop], h[start:])
        i, j = np.nonzero(dist <= threshold)
        keep = j > i  # j is relative to `start`; i + start < j + start means upper triangle
        rows.append(i[keep] + start)
        cols.append(j[keep] + start)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # renumber by first appearance so ids do not depend on scipy's traversal order
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty(len(order), dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[labels]


def _check_threshold(threshold: int) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or not 0 <= threshold <= 64:
        raise ValueError(f"phash_threshold must be an int in [0, 64], got {threshold!r}.")


# ----------------------------------------------------------------------------------- sources
def _from_csv(table: pd.DataFrame, csv_path: Path) -> list[str]:
    try:
        groups = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ValueError(f"Cannot read groups file {str(csv_path)!r}: {exc}") from None
    columns = {c.strip().lower(): c for c in groups.columns}
    file_col = next((columns[c] for c in _CSV_FILE_COLUMNS if c in columns), None)
    subject_col = next((columns[c] for c in _CSV_SUBJECT_COLUMNS if c in columns), None)
    if file_col is None or subject_col is None:
        raise ValueError(
            f"Groups file {str(csv_path)!r} needs the columns 'file' and 'subject'; found {list(groups.columns)}."
        )
    files = groups[file_col].str.strip().str.replace("\\", "/", regex=False).str.removeprefix("./")
    subjects = groups[subject_col].str.strip()
    mapping: dict[str, str] = {}
    for f, s in zip(files, subjects):
        if not f:
            continue
        if f in mapping and mapping[f] != s:
            raise ValueError(f"Groups file {str(csv_path)!r} gives {f!r} two subjects: {mapping[f]!r} and {s!r}.")
        mapping[f] = s
    names = table["path"].map(lambda p: p.rsplit("/", 1)[-1])
    unique_names = set(names[~names.duplicated(keep=False)])
    result: list[str] = []
    missing: list[str] = []
    for path, name in zip(table["path"], names):
        subject = mapping.get(path)
        if subject is None and name in unique_names:
            subject = mapping.get(name)
        if not subject:
            missing.append(path)
            result.append("")
        else:
            result.append(subject)
    if missing:
        raise ValueError(
            f"Groups file {str(csv_path)!r} has no subject for {len(missing)} of {len(table)} images "
            f"(e.g. {missing[:3]}); list every image as 'file,subject' with the path relative to the dataset folder."
        )
    return result


def _nifti_subject(volume: str) -> str:
    """Subject of a NIfTI volume: a BIDS ``sub-<label>`` in its file name, else the file without its suffix."""
    name = volume.rsplit("/", 1)[-1]
    match = re.match(FILENAME_SCHEMES["bids"], name)
    if match:
        return match["subject"]
    return re.sub(r"(?i)\.nii(\.gz)?$", "", volume)


def _dicom_ids(table: pd.DataFrame) -> tuple[list[str] | None, str]:
    """Per-row PatientID (else StudyInstanceUID; for NIfTI the file's subject); ``None`` and a reason when not usable."""
    formats = table["format"] if "format" in table else pd.Series([None] * len(table), index=table.index)
    if not formats.isin(["dicom", "nifti"]).all():
        n_other = int((~formats.isin(["dicom", "nifti"])).sum())
        return None, f"{n_other} of {len(table)} images are neither DICOM nor NIfTI"
    patient = table["patient_id"] if "patient_id" in table else pd.Series([None] * len(table), index=table.index)
    study = table["study_uid"] if "study_uid" in table else pd.Series([None] * len(table), index=table.index)
    volume = table["volume"] if "volume" in table else pd.Series([""] * len(table), index=table.index)
    ids = [_nifti_subject(v) if f == "nifti" else p if isinstance(p, str) and p else s if isinstance(s, str) and s
           else None for f, p, s, v in zip(formats, patient, study, volume)]
    n_missing = sum(i is None for i in ids)
    if n_missing:
        return None, f"{n_missing} of {len(table)} DICOM files have neither PatientID nor StudyInstanceUID"
    if len(table) > 1 and len(set(ids)) < 2 and study.notna().all() and study.nunique() >= 2:
        logger.info("All DICOM files share one PatientID; using StudyInstanceUID as the subject instead.")
        ids = list(study)
    if len(table) > 1 and len(set(ids)) < 2:
        return None, "all DICOM files share one PatientID/StudyInstanceUID (anonymised?)"
    return ids, ""


def _stems(table: pd.DataFrame) -> list[str]:
    return [Path(p).stem for p in table["path"]]


def _apply_regex(names: Sequence[str], pattern: re.Pattern[str], *, full: bool) -> list[str | None]:
    out: list[str | None] = []
    for name in names:
        m = pattern.fullmatch(name) if full else pattern.search(name)
        if m is None:
            out.append(None)
            continue
        if "subject" in pattern.groupindex:
            value = m.group("subject")
        elif pattern.groups:
            value = m.group(1)
        else:
            value = m.group(0)
        out.append(value.strip() if value and value.strip() else None)
    return out


def _fill_unmatched(table: pd.DataFrame, ids: list[str | None]) -> list[str]:
    return [i if i is not None else path for i, path in zip(ids, table["path"])]


def _from_filename(table: pd.DataFrame, filename_regex: str | None, *, explicit: bool) -> tuple[list[str] | None, str]:
    n = len(table)
    if filename_regex is not None:
        try:
            pattern = re.compile(filename_regex)
        except re.error as exc:
            raise ValueError(f"filename_regex {filename_regex!r} is not a valid regular expression: {exc}") from None
        names = [p.rsplit("/", 1)[-1] for p in table["path"]]
        ids = _apply_regex(names, pattern, full=False)
        matched = sum(i is not None for i in ids)
        if matched == 0:
            if explicit:
                raise ValueError(
                    f"filename_regex {filename_regex!r} matches none of the {n} file names (e.g. {names[:3]})."
                )
            return None, f"filename_regex {filename_regex!r} matches no file name"
        if matched < n:
            logger.warning(
                "filename_regex %r matches %d of %d file names; the other files become their own subjects.",
                filename_regex, matched, n,
            )
        return _fill_unmatched(table, ids), f"regex {filename_regex!r}"
    stems = _stems(table)
    tried = []
    for name, regex in FILENAME_SCHEMES.items():
        ids = _apply_regex(stems, re.compile(regex), full=True)
        matched = sum(i is not None for i in ids)
        n_subjects = len({i for i in ids if i is not None}) + (n - matched)
        tried.append(f"{name}: {matched}/{n} match, {n_subjects} subjects")
        if n and matched / n >= MIN_SCHEME_COVERAGE and 2 <= n_subjects < n:
            if matched < n:
                logger.warning("File-name scheme %r matches %d of %d files; the others are their own subjects.",
                               name, matched, n)
            logger.info("Subjects from the %r file-name scheme: %d subjects for %d images.", name, n_subjects, n)
            return _fill_unmatched(table, ids), name
    reason = "no file-name scheme matches >= 90% of the files with fewer subjects than files (" + "; ".join(tried) + ")"
    if explicit:
        raise ValueError(f"group_by='filename': {reason}. Pass filename_regex with a 'subject' group.")
    return None, reason


def _from_phash(table: pd.DataFrame, threshold: int) -> list[str]:
    labels = phash_clusters(list(table["phash"]), threshold)
    if len(labels):
        largest = int(np.bincount(labels).max())
        if largest >= max(10, 0.25 * len(labels)):
            logger.warning(
                "pHash grouping at threshold %d puts %d of %d images in one subject; similar scans chain together. "
                "Consider a lower phash_threshold or a groups.csv.", threshold, largest, len(labels),
            )
    width = max(4, len(str(int(labels.max()) if len(labels) else 0)))
    return [f"phash-{int(c):0{width}d}" for c in labels]


def assign_subjects(
    table: pd.DataFrame,
    root: str | Path,
    *,
    group_by: str | Path = "auto",
    filename_regex: str | None = None,
    phash_threshold: int = 6,
) -> tuple[list[str], str]:
    """Subject id for every row of a scan table.

    Args:
        table: Rows with at least ``path`` (posix, relative to ``root``), ``format`` and ``phash``;
            optional ``patient_id`` / ``study_uid`` for DICOM.
        root: Dataset folder (where ``groups.csv`` is looked for).
        group_by: ``"auto"``, ``"csv"``, ``"dicom"``, ``"filename"``, ``"phash"``, ``"none"`` or
            the path of a CSV file with columns ``file,subject``.
        filename_regex: Regex searched in each file name; its ``subject`` group (else first group,
            else whole match) is the subject. With ``"auto"`` it replaces the built-in schemes.
        phash_threshold: Hamming distance (0..64) linking near-duplicates.

    Returns:
        ``(subjects, source)`` with ``source`` one of ``"groups.csv"``, ``"dicom"``,
        ``"filename"``, ``"phash"``, ``"none"``.

    Raises:
        ValueError: Unknown ``group_by``, or the forced source cannot be used (the message says why).
    """
    _check_threshold(phash_threshold)
    root = Path(root)
    csv_path: Path | None = None
    mode = group_by
    if isinstance(group_by, Path) or (isinstance(group_by, str) and group_by not in GROUP_SOURCES):
        candidate = Path(group_by)
        if not candidate.is_file():
            raise ValueError(
                f"group_by must be one of {list(GROUP_SOURCES)} or the path of a groups CSV file; "
                f"got {str(group_by)!r}."
            )
        csv_path, mode = candidate, "csv"
    elif group_by == "csv":
        csv_path = root / "groups.csv"
        if not csv_path.is_file():
            raise ValueError(f"group_by='csv' but there is no groups.csv in {str(root)!r}.")

    if mode == "none":
        return list(table["path"]), "none"
    if mode == "csv":
        assert csv_path is not None
        return _from_csv(table, csv_path), "groups.csv"
    if mode == "dicom":
        ids, reason = _dicom_ids(table)
        if ids is None:
            raise ValueError(f"group_by='dicom' cannot be used for {str(root)!r}: {reason}.")
        return ids, "dicom"
    if mode == "filename":
        ids, _ = _from_filename(table, filename_regex, explicit=True)
        assert ids is not None
        return ids, "filename"
    if mode == "phash":
        return _from_phash(table, phash_threshold), "phash"

    # auto
    if (root / "groups.csv").is_file():
        return _from_csv(table, root / "groups.csv"), "groups.csv"
    ids, reason = _dicom_ids(table)
    if ids is not None:
        return ids, "dicom"
    logger.debug("No DICOM subjects: %s", reason)
    ids, reason = _from_filename(table, filename_regex, explicit=False)
    if ids is not None:
        return ids, "filename"
    logger.info("No subject in the file names (%s); grouping near-duplicates by perceptual hash.", reason)
    return _from_phash(table, phash_threshold), "phash"
