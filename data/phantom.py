"""Synthetic head-CT phantom: the embedded default dataset of StrokeCT AutoML.

Every slice is built in Hounsfield units (air, scalp, a skull with dense tables and a softer
diploe, grey-matter cortical ribbon and deep nuclei, white matter, CSF in sulci, fissures and
butterfly-shaped lateral ventricles), optionally carries an ischemic infarct (a subtle hypodense
wedge in the MCA, ACA or PCA territory with loss of grey-white differentiation) or an
intraparenchymal hemorrhage (a hyperdense blob with an edema rim and optional mass effect), is
blurred, gets correlated scanner noise and is windowed with the brain window (L40/W80) like a
real scan. Each synthetic patient contributes a block of neighbouring slices, so patient groups
and near-duplicates exist as in public slice datasets.

Usage::

    python -m data.phantom --out /tmp/phantom --n 400 --size 128 --seed 0
    python -m data.phantom --out /tmp/phantom3 --n 600 --classes normal,ischemic,hemorrhagic \\
        --difficulty 0.7 --label-level subject
    python -m data.phantom --out /tmp/phantom_dcm --n 400 --format dicom   # or --format nifti

Layout written (atomically: into a temporary sibling folder, then renamed)::

    --format png (default)
    <out>/<Class>/<patient> (<slice>).png           uint8 greyscale, Kaggle-style names
    <out>/_masks/<Class>/<patient> (<slice>).png    uint8 0/255 lesion mask (all zero without lesion)
    --format dicom: one CT series per patient, in the patient's class folder
    <out>/<Class>/P<pid:04d>/<k:03d>.dcm            k = 1..n inferior -> superior; uint16 HU + 1024
    <out>/_masks/<Class>/P<pid:04d>/<k:03d>.png     uint8 0/255 lesion mask of the slice
    --format nifti: one volume per patient, in the patient's class folder
    <out>/<Class>/P<pid:04d>.nii.gz                 int16 HU, (size, size, n), RAS+
    <out>/_masks/<Class>/P<pid:04d>.nii.gz          uint8 0/1 lesion mask, same header
    <out>/_slice_labels.csv  volume, slice, label (volume formats only; see below)
    all formats
    <out>/_meta.csv    file, class, patient, slice_index, lesion_type, lesion_area, territory, side, volume
    <out>/_params.json generator parameters, format, version, class counts, pixel and slice spacing (mm)

One ``_meta.csv`` row per slice: ``file`` is its manifest path (the PNG, the DICOM file, or
``<Class>/P<pid:04d>.nii.gz#<k>`` with ``k`` 0-based), ``class`` the slice's label, ``slice_index``
1-based, ``volume`` the series folder or NIfTI file (empty for png). A volume is a patient's and lies in
the patient's class folder (Normal, or the stroke class), so with ``label_level="slice"`` a stroke
volume holds Normal slices too: ``_slice_labels.csv`` (0-based ``slice``) gives each slice the label
the png format would have given it. With ``label_level="subject"`` it is written as well, the
volume's label on every row. Geometry, header conventions and stored values of the volumes are
described in :mod:`data._phantom_volumes`.

Conventions: images are shown in radiological orientation (anterior at the top, the patient's
left on the image right); ``side`` in ``_meta.csv`` is the patient's side. The png images and masks
do not depend on the format code: the same arguments give the same pixels as before it existed.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data._io import apply_window, cache_dir
from data._log import add_logging_arguments, start_logging
from data._phantom_volumes import (
    FIELD_OF_VIEW_MM,
    HEAD_HEIGHT_MM,
    VolumeGeometry,
    read_nifti_mask_slice,
    volume_geometry,
    write_dicom_series,
    write_nifti_volume,
)
from data._volume_io import SLICE_LABELS_FILE, slice_ref, split_slice_ref

__all__ = ["CLASS_SETS", "FORMATS", "GENERATOR_VERSION", "default_dataset", "generate_phantom", "load_mask", "main"]

logger = logging.getLogger(__name__)

#: Bumped whenever the generated pixels change, so cached default datasets are regenerated.
GENERATOR_VERSION = 1

#: Supported class sets (lower-case keys) -> class folder names, negative class first.
CLASS_SETS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("normal", "stroke"): ("Normal", "Stroke"),
    ("normal", "ischemic", "hemorrhagic"): ("Normal", "Ischemic", "Hemorrhagic"),
}

#: Output formats: class folders of PNG slices, one DICOM series or one NIfTI file per patient.
FORMATS = ("png", "dicom", "nifti")

_LABEL_LEVELS = ("slice", "subject")
_META_COLUMNS = (
    *("file", "class", "patient", "slice_index", "lesion_type", "lesion_area", "territory", "side"),
    "volume",  # the DICOM series folder or NIfTI file of the slice (empty for png)
)
_TERRITORIES = ("MCA", "ACA", "PCA")
_ISCHEMIC_SHARE = 0.6  # share of ischemic strokes in the two-class set (the rest are hemorrhages)
_LESION_SIZE = (0.6, 1.0)  # range of a lesion's size factor before the difficulty shrinks it
_Z_RANGE = (0.22, 0.95)  # supratentorial slice levels: 0 = skull base, 1 = vertex

# Tissue codes of the label map returned by the renderer.
AIR, SCALP, SKULL, CSF, GM, WM, DEEP_GM, CALCIFICATION, VENTRICLE = range(9)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Anatomy:
    """Per-patient anatomy; every slice of a patient shares it (a recognisable head)."""

    cx: float
    cy: float
    rot: float
    semi_x: float  # lateral semi-axis of the inner skull table at the widest level (image units)
    semi_y: float  # antero-posterior semi-axis
    shape_amp: np.ndarray  # Fourier perturbation of the skull outline, harmonics 2..5
    shape_phase: np.ndarray
    egg: float  # occiput wider than the forehead
    skull_t: float
    skull_var: float
    skull_phase: float
    bone_peak: float
    bone_diploe: float
    scalp_t: float
    hu_scalp: float
    hu_gm: float
    hu_wm: float
    hu_deep: float
    hu_csf: float
    hu_calc: float
    atrophy: float  # 0 young .. 1 atrophic: wider sulci and ventricles
    gm_t: float
    fold_k: np.ndarray  # (n, 3) wave vectors (u, v, z) of the gyral folding field
    fold_phase: np.ndarray
    thick_amp: np.ndarray  # cortical thickness modulation, harmonics 3..6
    thick_phase: np.ndarray
    vent_scale: float
    vent_asym: float
    vent_dv: float  # antero-posterior offset of the ventricular system
    horn_angle: float  # divergence of the frontal horns (radians)
    leuko: float  # periventricular white-matter hypodensity (small-vessel disease), HU
    choroid_calc: bool
    pineal_calc: bool
    cupping: float
    texture_k: np.ndarray
    texture_phase: np.ndarray
    blur: float  # Gaussian blur sigma in pixels at 128 px
    noise: float  # scanner noise sigma in HU


@dataclasses.dataclass(frozen=True)
class _Lesion:
    """One stroke lesion, spanning a contiguous block of a patient's slices."""

    kind: str  # "ischemic" | "hemorrhagic"
    side: int  # +1 = patient's left (image right), -1 = patient's right
    territory: str
    first: int  # first and last slice index (0-based, inclusive) of the lesion block
    last: int
    scale: float  # overall size factor (shrinks with difficulty)
    # ischemic: sub-range of the territory (fractions) and depth from the cortex
    frac_lo: float = 0.0
    frac_hi: float = 1.0
    depth: float = 0.0
    delta: float = 0.0  # HU below the (undifferentiated) parenchyma
    loss: float = 0.0  # 0..1 loss of grey-white differentiation
    wobble: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # hemorrhagic
    cu: float = 0.0
    cv: float = 0.0
    ru: float = 0.0
    rv: float = 0.0
    angle: float = 0.0
    hu: float = 0.0
    edema: float = 0.0
    outline_amp: tuple[float, ...] = ()
    outline_phase: tuple[float, ...] = ()
    # mass effect (both kinds)
    shift: float = 0.0


@dataclasses.dataclass(frozen=True)
class _Patient:
    index: int  # order of generation (seeds derive from it)
    pid: int  # id used in file names
    kind: str  # "normal" | "ischemic" | "hemorrhagic"
    z: np.ndarray  # slice levels
    anatomy: _Anatomy
    lesion: _Lesion | None
    noise_seed: np.random.SeedSequence
    z_step: float = 0.05  # spacing of the levels ``z`` (also for a single-slice patient)


@dataclasses.dataclass
class _Slice:
    hu: np.ndarray  # float32 (S, S) final HU (blur + noise)
    mask: np.ndarray  # bool (S, S)
    labels: np.ndarray | None = None  # uint8 tissue codes before the lesion (only if asked)
    hu_clean: np.ndarray | None = None  # HU before blur and noise (only if asked)


def _difficulty_noise(difficulty: float) -> float:
    return 2.5 + 5.0 * difficulty


def _make_anatomy(rng: np.random.Generator, difficulty: float) -> _Anatomy:
    semi_x = rng.uniform(0.52, 0.66)
    semi_y = min(semi_x * rng.uniform(1.1, 1.32), 0.78)
    n_fold = 10
    direction = rng.uniform(0.0, 2.0 * np.pi, n_fold)
    k_mag = rng.uniform(10.0, 18.0, n_fold)
    fold_k = np.stack([k_mag * np.cos(direction), k_mag * np.sin(direction), rng.uniform(-10.0, 10.0, n_fold)], 1)
    t_dir = rng.uniform(0.0, 2.0 * np.pi, 4)
    t_mag = rng.uniform(4.0, 8.0, 4)
    texture_k = np.stack([t_mag * np.cos(t_dir), t_mag * np.sin(t_dir), rng.uniform(-6.0, 6.0, 4)], 1)
    atrophy = float(rng.beta(1.6, 2.4))
    leuko = 0.0
    if rng.random() < 0.3:  # small-vessel disease: a realistic confounder of ischemia
        leuko = float(rng.uniform(2.0, 6.0) * (0.6 + 0.6 * difficulty))
    return _Anatomy(
        cx=float(np.clip(rng.normal(0.0, 0.03), -0.07, 0.07)),
        cy=float(np.clip(rng.normal(0.0, 0.03), -0.07, 0.07)),
        rot=float(rng.uniform(-0.2, 0.2)),
        semi_x=float(semi_x),
        semi_y=float(semi_y),
        shape_amp=rng.normal(0.0, 1.0, 4) * np.array([0.018, 0.012, 0.008, 0.006]),
        shape_phase=rng.uniform(0.0, 2.0 * np.pi, 4),
        egg=float(rng.uniform(0.01, 0.05)),
        skull_t=float(rng.uniform(0.05, 0.09)),
        skull_var=float(rng.uniform(0.1, 0.35)),
        skull_phase=float(rng.uniform(0.0, 2.0 * np.pi)),
        bone_peak=float(rng.uniform(1150.0, 1500.0)),
        bone_diploe=float(rng.uniform(700.0, 950.0)),
        scalp_t=float(rng.uniform(0.02, 0.04)),
        hu_scalp=float(rng.uniform(-30.0, 35.0)),
        hu_gm=float(rng.uniform(36.0, 44.0)),
        hu_wm=float(rng.uniform(22.0, 29.0)),
        hu_deep=float(rng.uniform(33.0, 39.0)),
        hu_csf=float(rng.uniform(3.0, 12.0)),
        hu_calc=float(rng.uniform(150.0, 400.0)),
        atrophy=atrophy,
        gm_t=float(rng.uniform(0.05, 0.075)),
        fold_k=fold_k,
        fold_phase=rng.uniform(0.0, 2.0 * np.pi, n_fold),
        thick_amp=rng.uniform(0.1, 0.3, 4),
        thick_phase=rng.uniform(0.0, 2.0 * np.pi, 4),
        vent_scale=float((0.8 + 0.7 * atrophy) * rng.uniform(0.9, 1.1)),
        vent_asym=float(rng.uniform(-0.12, 0.12)),
        vent_dv=float(rng.uniform(-0.05, 0.05)),
        horn_angle=float(rng.uniform(0.3, 0.6)),
        leuko=leuko,
        choroid_calc=bool(rng.random() < 0.5),
        pineal_calc=bool(rng.random() < 0.4),
        cupping=float(rng.uniform(-1.5, 3.0)),
        texture_k=texture_k,
        texture_phase=rng.uniform(0.0, 2.0 * np.pi, 4),
        blur=float(rng.uniform(0.5, 0.9)),
        noise=float(_difficulty_noise(difficulty) * rng.uniform(0.85, 1.15)),
    )


def _make_lesion(
    rng: np.random.Generator,
    kind: str,
    first: int,
    last: int,
    difficulty: float,
    size_range: tuple[float, float] = _LESION_SIZE,
) -> _Lesion:
    side = 1 if rng.random() < 0.5 else -1
    scale = float(rng.uniform(*size_range) * (1.0 - 0.35 * difficulty))
    if kind == "ischemic":
        territory = str(rng.choice(_TERRITORIES, p=[0.6, 0.2, 0.2]))
        width = float(np.clip(rng.uniform(0.5, 1.0) * scale, 0.25, 1.0))
        lo = float(rng.uniform(0.0, 1.0 - width))
        big = territory == "MCA" and width > 0.8 and rng.random() < 0.5  # malignant MCA infarct
        return _Lesion(
            kind=kind,
            side=side,
            territory=territory,
            first=first,
            last=last,
            scale=scale,
            frac_lo=lo,
            frac_hi=lo + width,
            depth=float(rng.uniform(0.35, 0.75 if territory == "MCA" else 0.5) * (0.5 + 0.5 * scale)),
            delta=float((3.0 + 9.0 * (1.0 - difficulty)) * rng.uniform(0.8, 1.2)),
            loss=float(np.clip((0.9 - 0.4 * difficulty) * rng.uniform(0.85, 1.1), 0.0, 1.0)),
            wobble=tuple(float(x) for x in rng.uniform(0.0, 2.0 * np.pi, 3)),
            shift=float(rng.uniform(0.03, 0.07)) if big else 0.0,
        )
    deep = rng.random() < 0.55  # hypertensive (basal ganglia / thalamus) vs lobar
    if deep:
        cu = side * rng.uniform(0.16, 0.32)
        cv = rng.uniform(-0.12, 0.16)
        territory = "PCA" if cv > 0.06 else "MCA"  # thalamoperforators vs lenticulostriates
    else:
        phi = rng.uniform(0.3, 2.8)
        rho = 1.0 - rng.uniform(0.2, 0.38)
        cu, cv = side * rho * math.sin(phi), -rho * math.cos(phi)
        lo_aca, lo_pca = _territory_limits(0.5)
        territory = "ACA" if phi < lo_aca else ("PCA" if phi > lo_pca else "MCA")
    radius = rng.uniform(0.1, 0.22) * scale
    aspect = rng.uniform(0.7, 1.3)
    return _Lesion(
        kind=kind,
        side=side,
        territory=territory,
        first=first,
        last=last,
        scale=scale,
        cu=float(cu),
        cv=float(cv),
        ru=float(radius * math.sqrt(aspect)),
        rv=float(radius / math.sqrt(aspect)),
        angle=float(rng.uniform(0.0, np.pi)),
        hu=float(82.0 - 27.0 * difficulty + rng.uniform(-5.0, 5.0)),
        edema=float(rng.uniform(3.0, 8.0)),
        outline_amp=tuple(float(x) for x in rng.uniform(0.03, 0.12, 3)),
        outline_phase=tuple(float(x) for x in rng.uniform(0.0, 2.0 * np.pi, 3)),
        shift=float(rng.uniform(0.4, 0.7) * radius) if radius > 0.13 else 0.0,
    )


def _territory_limits(z: float) -> tuple[float, float]:
    """Angular borders (radians from the anterior midline) ACA|MCA and MCA|PCA at level ``z``."""
    t = min(max((z - 0.45) / 0.4, 0.0), 1.0)
    return 0.55 + 0.55 * t, 2.35 + 0.45 * t


# --------------------------------------------------------------------------------------------
# Rendering (vectorised numpy, one slice at a time)
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(coords, coords, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@functools.lru_cache(maxsize=32)
def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    kernel.setflags(write=False)
    return kernel.astype(np.float32)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge replication (small kernels: a few shifted sums)."""
    kernel = _gaussian_kernel(round(sigma, 4))
    radius = len(kernel) // 2
    out = image
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        length = out.shape[axis]
        acc = np.zeros_like(out)
        for i, weight in enumerate(kernel):
            window = padded[i : i + length] if axis == 0 else padded[:, i : i + length]
            acc += weight * window
        out = acc
    return out


def _noise_gain(sigma: float) -> float:
    """Standard deviation of unit white noise after :func:`_gaussian_blur` with ``sigma``."""
    return float(np.sum(_gaussian_kernel(round(sigma, 4)).astype(np.float64) ** 2))


def _bump(z: float, center: float, half_width: float) -> float:
    return max(0.0, 1.0 - ((z - center) / half_width) ** 2)


def _level_scale(z: float) -> float:
    """Relative size of the axial cross-section at level ``z`` (narrower towards the vertex)."""
    return math.sqrt(max(1.0 - ((z - 0.4) / 0.75) ** 2, 0.1))


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float, angle: float) -> np.ndarray:
    """Implicit ellipse value ((a/ru)^2 + (b/rv)^2); < 1 inside."""
    du, dv = u - cu, v - cv
    c, s = math.cos(angle), math.sin(angle)
    a = (du * c + dv * s) / ru
    b = (dv * c - du * s) / rv
    return a * a + b * b


def _segment_distance(u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * dx + (v - p0[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(u - p0[0] - t * dx, v - p0[1] - t * dy)


def _ramp(x: np.ndarray, edge: float) -> np.ndarray:
    """Soft step: 0 below -edge/2, 1 above +edge/2, 0.5 at 0."""
    return np.clip(x / edge + 0.5, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class _Frame:
    """Head-frame coordinates of one slice, cropped to the brain's bounding box."""

    z: float  # slice level
    scale: float  # relative size of the cross-section at this level
    u: np.ndarray  # lateral (+ = patient's left)
    v: np.ndarray  # antero-posterior (+ = posterior)
    um: np.ndarray  # ``u`` displaced by the midline shift
    vv: np.ndarray  # ``v`` relative to the ventricular system
    depth: np.ndarray  # depth below the brain surface (fraction of the radius)
    theta: np.ndarray
    rn: np.ndarray  # radius normalised to the inner table
    brain: np.ndarray  # bool, inside the inner table


def _render_slice(
    anat: _Anatomy,
    z: float,
    size: int,
    *,
    lesion: _Lesion | None = None,
    profile: float = 0.0,
    rng: np.random.Generator | None = None,
    keep_labels: bool = False,
) -> _Slice:
    """Render one axial slice in Hounsfield units.

    Args:
        anat: Patient anatomy.
        z: Slice level in [0, 1] (0 = skull base, 1 = vertex).
        size: Output size in pixels.
        lesion: Lesion of this patient, applied when ``profile > 0``.
        profile: Relative lesion cross-section at this level (0 = out of plane, 1 = largest).
        rng: Noise generator; ``None`` renders without noise.
        keep_labels: Also return the tissue label map and the noiseless HU map.

    Returns:
        The slice (HU map, lesion mask and optionally labels / clean HU).
    """
    u, v, rn, theta, scale = _head_coordinates(anat, z, size)
    skull_t = anat.skull_t / scale * (1.0 + anat.skull_var * np.cos(2.0 * theta + anat.skull_phase))

    # Midline shift (mass effect) moves the midline structures away from the lesion side.
    shift = lesion.shift * profile if lesion is not None and profile > 0 else 0.0
    um = u + lesion.side * shift * np.exp(-((v / 0.55) ** 2)) if shift else u

    labels = _outer_labels(anat, rn, skull_t, scale, size)
    box, frame = _brain_frame(anat, z, scale, u, v, um, rn, theta)
    lab = labels[box]  # a view: writes go to ``labels``
    caudate = _paint_deep_nuclei(lab, frame)
    csf = _paint_cortex(lab, anat, frame)
    _paint_fissures(lab, csf, anat, frame)
    lab[csf] = CSF
    ventricle, periventricular = _paint_ventricles(lab, anat, frame, caudate, lesion, shift, profile)
    _paint_calcifications(lab, anat, frame)

    hu = _tissue_hu(anat, labels, rn, skull_t)
    hub = hu[box]  # a view
    texture = _add_realism(hub, lab, anat, frame, ventricle, periventricular)
    mask = np.zeros((size, size), dtype=bool)
    if lesion is not None and profile > 0:
        lesion_mask = _paint_lesion(hub, lab, anat, frame, lesion, profile, size, ventricle, texture)
        if lesion_mask is not None:
            mask[box] = lesion_mask

    clean = hu.copy() if keep_labels else None
    hu = _blur_and_noise(hu, anat, size, rng)
    return _Slice(hu=hu, mask=mask, labels=labels if keep_labels else None, hu_clean=clean)


def _head_coordinates(
    anat: _Anatomy, z: float, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Head-frame ``u``, ``v``, radius normalised to the inner table, angle and level scale of the grid."""
    x, y = _grid(size)
    cos_r, sin_r = math.cos(anat.rot), math.sin(anat.rot)
    xs, ys = x - anat.cx, y - anat.cy
    scale = _level_scale(z)
    u = (xs * cos_r + ys * sin_r) / (anat.semi_x * scale)  # head frame: u lateral (+ = patient's left)
    v = (ys * cos_r - xs * sin_r) / (anat.semi_y * scale)  # v antero-posterior (+ = posterior)
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)

    outline = 1.0 + anat.egg * np.sin(theta)
    for h in range(4):
        outline += anat.shape_amp[h] * np.cos((h + 2) * theta + anat.shape_phase[h])
    rn = rho / outline  # 1 at the inner table
    return u, v, rn, theta, scale


def _outer_labels(anat: _Anatomy, rn: np.ndarray, skull_t: np.ndarray, scale: float, size: int) -> np.ndarray:
    """Tissue label map with air, scalp, skull and (white matter) brain."""
    skull_out = 1.0 + skull_t
    head_out = skull_out + anat.scalp_t / scale
    labels = np.full((size, size), AIR, dtype=np.uint8)
    labels[rn < head_out] = SCALP
    labels[rn < skull_out] = SKULL
    labels[rn < 1.0] = WM
    return labels


def _brain_frame(
    anat: _Anatomy,
    z: float,
    scale: float,
    u: np.ndarray,
    v: np.ndarray,
    um: np.ndarray,
    rn: np.ndarray,
    theta: np.ndarray,
) -> tuple[tuple[slice, slice], _Frame]:
    """Brain bounding box and the coordinates inside it (everything within the skull uses only these)."""
    depth = 1.0 - rn  # depth below the brain surface (fraction of the radius)
    brain = rn < 1.0
    rows = np.flatnonzero(brain.any(axis=1))
    cols = np.flatnonzero(brain.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    v_box = v[box]
    frame = _Frame(
        z=z, scale=scale, u=u[box], v=v_box, um=um[box], vv=v_box - anat.vent_dv, depth=depth[box],
        theta=theta[box], rn=rn[box], brain=brain[box],
    )
    return box, frame


def _paint_deep_nuclei(lab: np.ndarray, f: _Frame) -> np.ndarray:
    """Deep grey nuclei (caudate heads, lentiform nuclei, thalami) placed with the ventricles; return the caudate."""
    z, um, vv, brain = f.z, f.um, f.vv, f.brain
    caudate = np.zeros_like(brain)
    deep_shapes = (
        (0.165, -0.13, 0.06, 0.09, 0.2, _bump(z, 0.44, 0.16)),  # caudate heads
        (0.30, -0.02, 0.06, 0.15, 0.25, _bump(z, 0.33, 0.12)),  # lentiform nuclei
        (0.10, 0.13, 0.08, 0.10, 0.0, _bump(z, 0.33, 0.10)),  # thalami
    )
    for i, (cu, cv, ru, rv, ang, strength) in enumerate(deep_shapes):
        if strength <= 0.05:
            continue
        for side in (-1, 1):
            inside = brain & (_ellipse(um, vv, side * cu, cv, ru, rv, side * ang) < strength)
            lab[inside] = DEEP_GM
            if i == 0:
                caudate |= inside
    return caudate


def _paint_cortex(lab: np.ndarray, anat: _Anatomy, f: _Frame) -> np.ndarray:
    """Cortex: a ribbon of varying thickness, gyri folded around sulci (zero set of a smooth field); return the CSF."""
    z, u, v, depth, theta, brain = f.z, f.u, f.v, f.depth, f.theta, f.brain
    thick = np.ones_like(theta)
    for h in range(4):
        thick += anat.thick_amp[h] * np.cos((h + 3) * theta + anat.thick_phase[h])
    gm_t = anat.gm_t / math.sqrt(f.scale) * thick
    fold = np.full(u.shape, np.inf, dtype=np.float32)  # gyral folding field, only in the cortical shell
    shell = np.flatnonzero(brain & (depth < 0.36))
    us, vs = u.ravel()[shell], v.ravel()[shell]
    acc = np.zeros(us.shape, dtype=np.float32)
    for (ku, kv, kz), ph in zip(anat.fold_k, anat.fold_phase):
        acc += np.cos(ku * us + kv * vs + np.float32(kz * z + ph))
    fold.ravel()[shell] = np.abs(acc) * np.float32(1.0 / math.sqrt(len(anat.fold_phase) / 2.0))
    sulcus_w = 0.1 + 0.15 * anat.atrophy
    sulcus_depth = 0.13 + 0.05 * (1.0 + np.cos(3.0 * theta + anat.shape_phase[0])) + 0.04 * (z > 0.7)
    lab[brain & ((depth < gm_t) | ((fold < sulcus_w + 0.35) & (depth < sulcus_depth + gm_t)))] = GM
    return brain & ((depth < 0.008 + 0.02 * anat.atrophy) | ((fold < sulcus_w) & (depth < sulcus_depth)))


def _paint_fissures(lab: np.ndarray, csf: np.ndarray, anat: _Anatomy, f: _Frame) -> None:
    """Interhemispheric and Sylvian fissures lined by cortex, and the insula; adds their CSF to ``csf``."""
    z, v, um, vv, brain = f.z, f.v, f.um, f.vv, f.brain
    # Interhemispheric fissure (interrupted by the corpus callosum at mid levels), lined by cortex.
    callosal = _bump(z, 0.52, 0.2) > 0 and z < 0.7
    fissure_zone = ((vv < -0.3) | (vv > 0.42)) if callosal else np.ones_like(brain)
    fissure_w = 0.006 + 0.018 * anat.atrophy
    lab[brain & fissure_zone & (np.abs(um) < fissure_w + 0.6 * anat.gm_t)] = GM
    csf |= brain & fissure_zone & (np.abs(um) < fissure_w)

    # Sylvian fissures (curved, with an anterior ramus), opercula and insular cortex at low levels.
    sylvian = _bump(z, 0.3, 0.16)
    if sylvian > 0.05:
        width = (0.014 + 0.025 * anat.atrophy) * sylvian
        for side in (-1, 1):
            knee = (side * 0.76, -0.05 + 0.5 * anat.vent_dv)
            dist = np.minimum(
                _segment_distance(um, v, (side * 1.05, -0.13), knee),
                _segment_distance(um, v, knee, (side * 0.52, 0.02)),
            )
            dist = np.minimum(dist, _segment_distance(um, v, knee, (side * 0.93, -0.3)) + 0.6 * width)
            insula = _segment_distance(um, v, (side * 0.5, -0.16), (side * 0.5, 0.16))
            lab[brain & ((dist < width + anat.gm_t) | (insula < 0.7 * anat.gm_t))] = GM
            csf |= brain & (dist < width)


def _paint_ventricles(
    lab: np.ndarray,
    anat: _Anatomy,
    f: _Frame,
    caudate: np.ndarray,
    lesion: _Lesion | None,
    shift: float,
    profile: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Lateral and third ventricles; return the ventricle mask and the periventricular distance field."""
    z, um, vv, brain = f.z, f.um, f.vv, f.brain
    # Lateral ventricles (butterfly: frontal horns indented by the caudate heads, bodies, atria)
    # and the third ventricle.
    horn = anat.horn_angle
    vent_shapes = (
        (0.085, -0.15, 0.065, 0.13, horn, _bump(z, 0.45, 0.17)),  # frontal horns
        (0.11, 0.04, 0.055, 0.2, -0.1, _bump(z, 0.56, 0.13)),  # bodies
        (0.18, 0.24, 0.07, 0.12, -0.55, _bump(z, 0.45, 0.13)),  # atria / occipital horns
    )
    ventricle = np.zeros_like(brain)
    periventricular = np.full(f.u.shape, np.inf, dtype=np.float32)
    for side in (-1, 1):
        side_scale = anat.vent_scale * (1.0 + side * anat.vent_asym)
        if lesion is not None and shift and side == lesion.side:
            side_scale *= 1.0 - 0.45 * profile  # compression of the ipsilateral ventricle
        for cu, cv, ru, rv, ang, strength in vent_shapes:
            if strength <= 0.05:
                continue
            value = _ellipse(um, vv, side * cu, cv, ru * side_scale, rv * side_scale, side * ang) / strength
            ventricle |= value < 1.0
            np.minimum(periventricular, value, out=periventricular)
    ventricle &= ~caudate
    third = _bump(z, 0.32, 0.1)
    if third > 0.05:
        ventricle |= _ellipse(um, vv, 0.0, 0.02, 0.018 * anat.vent_scale, 0.1, 0.0) < third
    ventricle &= brain
    lab[ventricle] = VENTRICLE
    return ventricle, periventricular


def _paint_calcifications(lab: np.ndarray, anat: _Anatomy, f: _Frame) -> None:
    """Choroid plexus and pineal calcifications, where the patient has them."""
    z, um, vv = f.z, f.um, f.vv
    if anat.choroid_calc and _bump(z, 0.45, 0.1) > 0.2:
        for side in (-1, 1):
            lab[_ellipse(um, vv, side * 0.18, 0.26, 0.02, 0.028, 0.0) < 1.0] = CALCIFICATION
    if anat.pineal_calc and _bump(z, 0.34, 0.06) > 0.2:
        lab[_ellipse(um, vv, 0.0, 0.24, 0.016, 0.016, 0.0) < 1.0] = CALCIFICATION


def _tissue_hu(anat: _Anatomy, labels: np.ndarray, rn: np.ndarray, skull_t: np.ndarray) -> np.ndarray:
    """HU map of the tissue labels, with dense inner and outer skull tables and a softer diploe."""
    lut = np.array(
        [-1000.0, anat.hu_scalp, 0.0, anat.hu_csf, anat.hu_gm, anat.hu_wm, anat.hu_deep, anat.hu_calc, anat.hu_csf],
        dtype=np.float32,
    )
    hu = lut[labels]
    skull = labels == SKULL
    pos = np.clip((rn[skull] - 1.0) / skull_t[skull], 0.0, 1.0)
    table = np.abs(2.0 * pos - 1.0) ** 0.6  # dense inner and outer tables, softer diploe in between
    hu[skull] = anat.bone_diploe + (anat.bone_peak - anat.bone_diploe) * table
    return hu


def _add_realism(
    hub: np.ndarray,
    lab: np.ndarray,
    anat: _Anatomy,
    f: _Frame,
    ventricle: np.ndarray,
    periventricular: np.ndarray,
) -> np.ndarray:
    """Add beam-hardening cupping, tissue texture and periventricular small-vessel disease; return the texture."""
    z, u, v, brain = f.z, f.u, f.v, f.brain
    texture = np.zeros_like(u)
    for (ku, kv, kz), ph in zip(anat.texture_k, anat.texture_phase):
        texture += np.cos(ku * u + kv * v + np.float32(kz * z + ph))
    hub += np.where(brain & ~ventricle, anat.cupping * f.rn * f.rn + 0.7 * texture, 0.0).astype(np.float32)
    if anat.leuko > 0 and np.isfinite(periventricular).any():
        cap = np.clip((2.6 - periventricular) / 1.4, 0.0, 1.0) * (lab == WM)
        hub -= (anat.leuko * cap).astype(np.float32)
    return texture


def _paint_lesion(
    hub: np.ndarray,
    lab: np.ndarray,
    anat: _Anatomy,
    f: _Frame,
    lesion: _Lesion,
    profile: float,
    size: int,
    ventricle: np.ndarray,
    texture: np.ndarray,
) -> np.ndarray | None:
    """Apply the lesion to ``hub``; return its mask on the box, or ``None`` when too small to see."""
    pixel = 2.0 / (size * anat.semi_x * f.scale)  # one pixel in head-frame units
    weight, lesion_mask = _lesion_weight(lesion, f.z, profile, f.um, f.v, f.depth, f.brain, lab, pixel)
    min_area = max(4, int(0.003 * np.count_nonzero(f.brain)))
    if np.count_nonzero(lesion_mask) < min_area:  # too small to see: not a lesion slice
        return None
    if lesion.kind == "ischemic":
        parenchyma = (lab == GM) | (lab == WM) | (lab == DEEP_GM)
        tissue = parenchyma | (lab == CSF)
        effaced = np.where(lab == CSF, np.float32(anat.hu_gm), hub)  # swollen cortex effaces sulci
        infarct = effaced - lesion.loss * (effaced - anat.hu_wm) - lesion.delta
        hub[...] = np.where(tissue, hub + weight * (infarct - hub), hub)
    else:
        rim = weight["rim"] * ~ventricle
        hub -= (lesion.edema * rim).astype(np.float32)
        hub += (weight["blood"] * (lesion.hu + 2.0 * texture - hub)).astype(np.float32)
    return lesion_mask


def _blur_and_noise(hu: np.ndarray, anat: _Anatomy, size: int, rng: np.random.Generator | None) -> np.ndarray:
    """Blur the HU map and add correlated scanner noise drawn from ``rng`` (none without one)."""
    blur = anat.blur * size / 128.0
    hu = _gaussian_blur(hu, blur)
    if rng is not None:
        noise_blur = 0.6 * size / 128.0
        noise = _gaussian_blur(rng.standard_normal((size, size), dtype=np.float32), noise_blur)
        hu += noise * np.float32(anat.noise / _noise_gain(noise_blur))
    return hu


def _lesion_weight(
    lesion: _Lesion,
    z: float,
    profile: float,
    u: np.ndarray,
    v: np.ndarray,
    depth: np.ndarray,
    brain: np.ndarray,
    labels: np.ndarray,
    pixel: float,
) -> tuple[np.ndarray | dict[str, np.ndarray], np.ndarray]:
    """Soft lesion weight map(s) and the binary lesion mask at one level.

    Lesions are kept at least a few pixels across (``pixel`` = one pixel in head-frame units), so
    a planned lesion slice stays a lesion slice at low resolutions.
    """
    side = lesion.side
    if lesion.kind == "ischemic":
        lo_aca, lo_pca = _territory_limits(z)
        lo, hi = {"ACA": (0.0, lo_aca), "MCA": (lo_aca, lo_pca), "PCA": (lo_pca, math.pi)}[lesion.territory]
        a, b = lo + (hi - lo) * lesion.frac_lo, lo + (hi - lo) * lesion.frac_hi
        center, half = 0.5 * (a + b), 0.5 * (b - a) * (0.6 + 0.4 * profile)
        phi = np.arctan2(side * u, -v)  # angle from the anterior midline, within the lesion hemisphere
        w1, w2, w3 = lesion.wobble
        half_map = half + 0.08 * np.sin(9.0 * depth + w1)
        wavy = 1.0 + 0.2 * np.sin(4.0 * phi + w2) + 0.1 * np.sin(11.0 * phi + w3)
        depth_map = max(lesion.depth * profile, 3.0 * pixel) * wavy
        weight = _ramp(half_map - np.abs(phi - center), 0.12) * _ramp(depth_map - depth, 0.05)
        weight *= (side * u > 0) & brain
        tissue = (labels == GM) | (labels == WM) | (labels == DEEP_GM) | (labels == CSF)
        weight = weight * tissue
        return weight.astype(np.float32), weight >= 0.5
    grow = max(1.0, 2.2 * pixel / (min(lesion.ru, lesion.rv) * profile))
    ru, rv = lesion.ru * profile * grow, lesion.rv * profile * grow
    du, dv = u - lesion.cu, v - lesion.cv
    c, s = math.cos(lesion.angle), math.sin(lesion.angle)
    a, b = (du * c + dv * s) / ru, (dv * c - du * s) / rv
    radius = np.hypot(a, b)
    angle = np.arctan2(b, a)
    outline = np.ones_like(radius)
    for h, (amp, ph) in enumerate(zip(lesion.outline_amp, lesion.outline_phase)):
        outline += amp * np.cos((h + 2) * angle + ph)
    r = radius / outline
    inside_brain = brain & (depth > 0.02)
    blood = _ramp(1.0 - r, 0.25) * inside_brain
    rim = _ramp(1.35 - r, 0.3) * (1.0 - blood) * inside_brain
    return {"blood": blood.astype(np.float32), "rim": rim.astype(np.float32)}, blood >= 0.5


# --------------------------------------------------------------------------------------------
# Planning (which patient has which lesion and how many slices), deterministic per seed
# --------------------------------------------------------------------------------------------
def _lesion_block(rng: np.random.Generator, k: int, span: tuple[float, float]) -> tuple[int, int]:
    length = int(np.clip(round(k * rng.uniform(*span)), 1 if k < 4 else 2, k))
    first = int(rng.integers(0, k - length + 1))
    return first, first + length - 1


def _plan(
    n: int,
    seed: int,
    classes: tuple[str, ...],
    difficulty: float,
    label_level: str,
    slices_per_patient: tuple[int, int],
    *,
    lesion_span: tuple[float, float] | None = None,
    ischemic_share: float = _ISCHEMIC_SHARE,
    lesion_size: tuple[float, float] = _LESION_SIZE,
) -> list[_Patient]:
    """Decide every patient (slices, lesion, anatomy) so that class counts stay balanced.

    Each patient ``i`` draws from its own ``SeedSequence(seed, spawn_key=(i,))``; the choice of
    the patient's class is greedy (the one that keeps the running class counts closest to equal
    shares), so results depend only on ``seed`` and the arguments.
    """
    n_classes = len(classes)
    # Share of a stroke patient's slices showing the lesion; with three classes and slice labels the
    # stroke classes need longer lesions to reach a third of the images each.
    if lesion_span is None:
        lesion_span = (0.5, 0.95) if n_classes == 3 and label_level == "slice" else (0.35, 0.8)
    counts = np.zeros(n_classes)
    patients = []
    total = 0
    index = 0
    while total < n:
        seq = np.random.SeedSequence(seed, spawn_key=(index,))
        plan_seq, anat_seq, lesion_seq, noise_seq = seq.spawn(4)
        plan_rng = np.random.default_rng(plan_seq)
        k = int(min(plan_rng.integers(slices_per_patient[0], slices_per_patient[1] + 1), n - total))
        first, last = _lesion_block(plan_rng, k, lesion_span)
        m = last - first + 1
        stroke_kind = "ischemic" if plan_rng.random() < ischemic_share else "hemorrhagic"
        candidates = [("normal", np.eye(n_classes)[0] * k)]  # (kind, images added per class)
        stroke_classes = [(stroke_kind, 1)] if n_classes == 2 else [("ischemic", 1), ("hemorrhagic", 2)]
        for kind, c in stroke_classes:
            contrib = np.zeros(n_classes)
            if label_level == "slice":
                contrib[0], contrib[c] = k - m, m
            else:
                contrib[c] = k
            candidates.append((kind, contrib))
        new_total = total + k
        costs = [float(np.sum((counts + contrib - new_total / n_classes) ** 2)) for _, contrib in candidates]
        best = int(np.argmin(costs))
        kind, contrib = candidates[best]
        counts += contrib
        total = new_total

        z_step = plan_rng.uniform(0.045, 0.06)
        span = z_step * (k - 1)
        z0 = plan_rng.uniform(_Z_RANGE[0], max(_Z_RANGE[0], _Z_RANGE[1] - span))
        z = z0 + z_step * np.arange(k)
        anatomy = _make_anatomy(np.random.default_rng(anat_seq), difficulty)
        lesion = None
        if kind != "normal":
            lesion = _make_lesion(np.random.default_rng(lesion_seq), kind, first, last, difficulty, lesion_size)
        patients.append(_Patient(index, 0, kind, z, anatomy, lesion, noise_seq, float(z_step)))
        index += 1
    # Patient ids in file names are shuffled so that they carry no information about the class.
    ids = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**31,))).permutation(len(patients)) + 1
    return [dataclasses.replace(p, pid=int(pid)) for p, pid in zip(patients, ids)]


def _profile(lesion: _Lesion | None, j: int) -> float:
    """Relative lesion cross-section at slice ``j`` (flat-topped so the ends stay visible)."""
    if lesion is None or not lesion.first <= j <= lesion.last:
        return 0.0
    half = (lesion.last - lesion.first) / 2.0
    t = (j - (lesion.first + half)) / (half + 1.0)
    return 0.55 + 0.45 * math.sqrt(max(0.0, 1.0 - t * t))


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value!r}.")
    return int(value)


def _check_classes(classes: Sequence[str] | str) -> tuple[str, ...]:
    items = classes.split(",") if isinstance(classes, str) else classes
    try:
        key = tuple(str(c).strip().lower() for c in items)
    except TypeError:
        raise ValueError(f"classes must be a sequence of class names, got {classes!r}.") from None
    for known in CLASS_SETS:
        if sorted(key) == sorted(known) and len(key) == len(known):
            return known
    options = " or ".join(repr(",".join(k)) for k in CLASS_SETS)
    raise ValueError(f"classes must be {options}, got {classes!r}.")


def _check_difficulty(difficulty: object) -> float:
    try:
        value = float(difficulty)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"difficulty must be a number in [0, 1], got {difficulty!r}.") from None
    if isinstance(difficulty, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"difficulty must be a number in [0, 1], got {difficulty!r}.")
    return value


def _check_label_level(label_level: str) -> str:
    if label_level not in _LABEL_LEVELS:
        raise ValueError(f"label_level must be one of {list(_LABEL_LEVELS)}, got {label_level!r}.")
    return label_level


def _check_format(fmt: object) -> str:
    value = fmt.lower() if isinstance(fmt, str) else fmt
    if value not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}.")
    return str(value)


def _check_slices(slices_per_patient: Sequence[int]) -> tuple[int, int]:
    try:
        low, high = slices_per_patient
    except (TypeError, ValueError):
        raise ValueError(f"slices_per_patient must be a pair (min, max), got {slices_per_patient!r}.") from None
    low = _check_int("slices_per_patient[0]", low, 1, 64)
    high = _check_int("slices_per_patient[1]", high, 1, 64)
    if low > high:
        raise ValueError(f"slices_per_patient must satisfy min <= max, got {slices_per_patient!r}.")
    return low, high


def _check_fraction_pair(name: str, pair: Sequence[float], high: float) -> tuple[float, float]:
    try:
        low_value, high_value = (float(x) for x in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max) of numbers, got {pair!r}.") from None
    if not 0.0 < low_value <= high_value <= high:
        raise ValueError(f"{name} must satisfy 0 < min <= max <= {high:g}, got {pair!r}.")
    return low_value, high_value


def _cohort_options(
    lesion_span: Sequence[float] | None, ischemic_share: float, lesion_size: Sequence[float]
) -> dict[str, Any]:
    """The cohort knobs of :func:`_plan`, validated; only those that differ from the defaults.

    An empty dict means today's cohort, so default datasets keep their bytes and cache names.
    """
    options: dict[str, Any] = {}
    if lesion_span is not None:
        options["lesion_span"] = _check_fraction_pair("lesion_span", lesion_span, 1.0)
    if isinstance(ischemic_share, bool) or not isinstance(ischemic_share, (int, float, np.number)):
        raise ValueError(f"ischemic_share must be a number in [0, 1], got {ischemic_share!r}.")
    share = float(ischemic_share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"ischemic_share must be a number in [0, 1], got {ischemic_share!r}.")
    if share != _ISCHEMIC_SHARE:
        options["ischemic_share"] = share
    size = _check_fraction_pair("lesion_size", lesion_size, 2.0)
    if size != _LESION_SIZE:
        options["lesion_size"] = size
    return options


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def generate_phantom(
    out_dir: str | os.PathLike[str],
    *,
    n: int = 200,
    size: int = 128,
    seed: int = 0,
    classes: Sequence[str] | str = ("normal", "stroke"),
    difficulty: float = 0.5,
    label_level: str = "slice",
    slices_per_patient: tuple[int, int] = (6, 12),
    format: str = "png",  # noqa: A002 - the CLI's --format
    lesion_span: tuple[float, float] | None = None,
    ischemic_share: float = _ISCHEMIC_SHARE,
    lesion_size: tuple[float, float] = _LESION_SIZE,
) -> Path:
    """Write a synthetic head-CT dataset in the layout of a real one (PNG slices, DICOM or NIfTI).

    The folder is generated into a temporary sibling and renamed into place, so a half-written
    dataset is never visible. An existing phantom (a folder with ``_meta.csv``) or an empty folder
    at ``out_dir`` is replaced; any other existing folder is left alone and raises.

    Args:
        out_dir: Destination folder.
        n: Exact number of images.
        size: Image size in pixels (square), 16..1024.
        seed: Random seed (non-negative); the same seed gives byte-identical files.
        classes: ``("normal", "stroke")`` or ``("normal", "ischemic", "hemorrhagic")`` (any order or
            case, or a comma-separated string).
        difficulty: 0..1; higher means lower lesion contrast, more noise, smaller lesions and more
            confounders (periventricular hypodensity).
        label_level: ``"slice"``: a slice is a stroke slice only where the lesion is in plane, so
            stroke patients also contribute Normal slices; ``"subject"``: every slice of a stroke
            patient carries the patient's label.
        slices_per_patient: (min, max) slices per synthetic patient.
        format: ``"png"`` (class folders of windowed slices), ``"dicom"`` (one CT series of HU per
            patient) or ``"nifti"`` (one ``.nii.gz`` of HU per patient); see the module docstring.
            A volume lies in its patient's class folder; the slice labels are in ``_meta.csv`` and
            ``_slice_labels.csv``.
        lesion_span: (min, max) share of a stroke patient's slices that show the lesion; ``None``:
            (0.35, 0.8), or (0.5, 0.95) for three classes with slice labels.
        ischemic_share: Share of ischemic strokes among the two-class set's stroke patients (the
            rest are haemorrhages), 0..1.
        lesion_size: (min, max) of a lesion's size factor (0 < min <= max <= 2) before the
            difficulty shrinks it: the ischemic wedge's width and depth, the haematoma's radius.

    Returns:
        The dataset folder.

    Raises:
        ValueError: On an invalid argument, or when ``out_dir`` is a non-empty folder that is not
            a phantom dataset.
    """
    n = _check_int("n", n, 1, 1_000_000)
    size = _check_int("size", size, 16, 1024)
    seed = _check_int("seed", seed, 0)
    key = _check_classes(classes)
    difficulty = _check_difficulty(difficulty)
    label_level = _check_label_level(label_level)
    spp = _check_slices(slices_per_patient)
    fmt = _check_format(format)
    cohort = _cohort_options(lesion_span, ischemic_share, lesion_size)
    out = Path(out_dir).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"out_dir {str(out)!r} exists and is not a folder.")
        if any(out.iterdir()) and not (out / "_meta.csv").is_file():
            raise ValueError(
                f"out_dir {str(out)!r} is not empty and is not a phantom dataset (no _meta.csv); "
                "refusing to overwrite it."
            )
    _generate(out, n, size, seed, key, difficulty, label_level, spp, fmt=fmt, replace=True, **cohort)
    return out


def default_dataset(
    *,
    n: int = 400,
    size: int = 128,
    seed: int = 0,
    difficulty: float = 0.5,
    label_level: str = "slice",
    classes: Sequence[str] | str = ("normal", "stroke"),
    format: str = "png",  # noqa: A002 - same name as generate_phantom's
    slices_per_patient: tuple[int, int] = (6, 12),
    lesion_span: tuple[float, float] | None = None,
    ischemic_share: float = _ISCHEMIC_SHARE,
    lesion_size: tuple[float, float] = _LESION_SIZE,
) -> Path:
    """The embedded default dataset: generated once into ``cache_dir()/phantom/<key>/`` and reused.

    Args:
        n: Number of images.
        size: Image size in pixels.
        seed: Random seed.
        difficulty: 0..1, see :func:`generate_phantom`.
        label_level: ``"slice"`` or ``"subject"``.
        classes: Class set, see :func:`generate_phantom`.
        format: ``"png"``, ``"dicom"`` or ``"nifti"``, see :func:`generate_phantom`.
        slices_per_patient, lesion_span, ischemic_share, lesion_size: The cohort, see
            :func:`generate_phantom`; values other than the defaults add a suffix to the cache name.

    Returns:
        The dataset folder (safe to read concurrently; never half-written).
    """
    n = _check_int("n", n, 1, 1_000_000)
    size = _check_int("size", size, 16, 1024)
    seed = _check_int("seed", seed, 0)
    key = _check_classes(classes)
    difficulty = _check_difficulty(difficulty)
    label_level = _check_label_level(label_level)
    fmt = _check_format(format)
    spp = _check_slices(slices_per_patient)
    cohort = _cohort_options(lesion_span, ischemic_share, lesion_size)
    name = _dataset_name(n, size, seed, key, difficulty, label_level, fmt, spp, cohort)
    out = cache_dir() / "phantom" / name
    if (out / "_meta.csv").is_file():
        return out
    logger.info("Generating the default phantom dataset into %s", out)
    _generate(out, n, size, seed, key, difficulty, label_level, spp, fmt=fmt, replace=False, **cohort)
    return out


def _dataset_name(
    n: int, size: int, seed: int, key: tuple[str, ...], difficulty: float, label_level: str, fmt: str,
    slices_per_patient: tuple[int, int] = (6, 12), cohort: dict[str, Any] | None = None,
) -> str:
    """Folder name of a default dataset: png and the default cohort keep the names they had before the
    volume formats and the cohort knobs existed."""
    name = f"v{GENERATOR_VERSION}_{'-'.join(key)}_n{n}_s{size}_seed{seed}_d{difficulty:g}_{label_level}"
    if tuple(slices_per_patient) != (6, 12):
        name += f"_spp{slices_per_patient[0]}-{slices_per_patient[1]}"
    for option, tag in (("lesion_span", "span"), ("ischemic_share", "isch"), ("lesion_size", "lsize")):
        if option in (cohort or {}):
            value = cohort[option]  # type: ignore[index]
            name += f"_{tag}" + ("-".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}")
    return name if fmt == "png" else f"{name}_{fmt}"


def load_mask(dataset_root: str | os.PathLike[str], relative_path: str | os.PathLike[str]) -> np.ndarray | None:
    """Lesion mask of one phantom slice, in display orientation, for any of the formats.

    Args:
        dataset_root: The phantom folder.
        relative_path: The slice's manifest path relative to it: a PNG (``"Stroke/12 (3).png"``,
            mask ``_masks/Stroke/12 (3).png``), a DICOM file (``"Stroke/P0012/003.dcm"``, mask
            ``_masks/Stroke/P0012/003.png``) or a NIfTI slice reference (``"Stroke/P0012.nii.gz#2"``,
            slice 2 of the volume ``_masks/Stroke/P0012.nii.gz``). An absolute path inside
            ``dataset_root`` is accepted too.

    Returns:
        bool (H, W) mask, or ``None`` when the dataset has no mask for this slice.
    """
    root = Path(dataset_root)
    file, k = split_slice_ref(os.fspath(relative_path))
    rel = _relative_to_root(root, Path(file))
    if rel is None:
        return None
    if k is None and rel.suffix.lower() == ".dcm":
        rel = rel.with_suffix(".png")
    path = root / "_masks" / rel
    if not path.is_file():
        return None
    if k is not None:
        return read_nifti_mask_slice(path, k)
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def _relative_to_root(root: Path, rel: Path) -> Path | None:
    if not rel.is_absolute():
        return rel
    try:
        return rel.relative_to(root)
    except ValueError:
        try:
            return rel.resolve().relative_to(root.resolve())
        except ValueError:
            return None


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _generate(
    out: Path,
    n: int,
    size: int,
    seed: int,
    key: tuple[str, ...],
    difficulty: float,
    label_level: str,
    slices_per_patient: tuple[int, int],
    *,
    fmt: str = "png",
    replace: bool,
    **cohort: Any,
) -> None:
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        counts = _write_dataset(tmp, n, size, seed, key, difficulty, label_level, slices_per_patient, fmt, **cohort)
        os.chmod(tmp, 0o755)
        _move_into_place(tmp, out, replace=replace)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "Phantom (%s): %d slices %s in %.1f s -> %s",
        fmt,
        n,
        dict(zip(CLASS_SETS[key], counts)),
        time.perf_counter() - start,
        out,
    )


def _move_into_place(tmp: Path, out: Path, *, replace: bool) -> None:
    try:
        os.rename(tmp, out)
        return
    except OSError:
        if not out.exists():
            raise
    if not replace:  # somebody else generated it meanwhile: keep theirs
        if (out / "_meta.csv").is_file():
            return
        raise FileExistsError(f"{out} exists but is not a complete phantom dataset; delete it and retry.")
    trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(out, trash)
    os.rename(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)


def _write_dataset(
    root: Path,
    n: int,
    size: int,
    seed: int,
    key: tuple[str, ...],
    difficulty: float,
    label_level: str,
    slices_per_patient: tuple[int, int],
    fmt: str = "png",
    **cohort: Any,
) -> list[int]:
    folders = CLASS_SETS[key]
    for folder in folders:
        (root / folder).mkdir()
        (root / "_masks" / folder).mkdir(parents=True)
    class_of_kind = {"normal": 0, "ischemic": 1, "hemorrhagic": 1 if len(key) == 2 else 2}
    counts = [0] * len(folders)
    rows: list[dict[str, object]] = []
    label_rows: list[dict[str, object]] = []
    spacing: dict[str, float] = {}
    entropy = ["data.phantom", _dataset_name(n, size, seed, key, difficulty, label_level, fmt, slices_per_patient, cohort),
               str(slices_per_patient)]
    patients = _plan(n, seed, key, difficulty, label_level, slices_per_patient, **cohort)
    for patient in patients:
        slices = _render_patient(patient, size)
        classes = [
            class_of_kind[patient.kind] if label_level == "subject" or sl.mask.any() else 0 for sl in slices
        ]
        geometry = volume_geometry(size, patient.z, patient.z_step)
        spacing[str(patient.pid)] = geometry.slice_spacing
        volume_folder = folders[class_of_kind[patient.kind]]
        slice_folders = [folders[c] for c in classes]
        files, volume = _write_patient(root, fmt, patient, slices, slice_folders, volume_folder, geometry, entropy)
        for j, (sl, c, file) in enumerate(zip(slices, classes, files)):
            rows.append(_meta_row(patient, j, sl, folders[c], file, volume))
            if volume:
                label_rows.append({"volume": volume, "slice": j, "label": folders[c]})
            counts[c] += 1
    for c, folder in enumerate(folders):
        if counts[c] == 0:
            logger.warning("Phantom class %s is empty (n=%d is too small for this class set).", folder, n)
    rows.sort(key=lambda r: (r["patient"], r["slice_index"]))
    _write_csv(root / "_meta.csv", _META_COLUMNS, rows)
    if fmt != "png":
        label_rows.sort(key=lambda r: (r["volume"], r["slice"]))
        _write_csv(root / SLICE_LABELS_FILE, ("volume", "slice", "label"), label_rows)
    params = {
        "generator": "data.phantom",
        "version": GENERATOR_VERSION,
        "format": fmt,
        "n": n,
        "size": size,
        "seed": seed,
        "classes": list(key),
        "difficulty": difficulty,
        "label_level": label_level,
        "slices_per_patient": list(slices_per_patient),
        **{option: list(v) if isinstance(v, tuple) else v for option, v in cohort.items()},
        "patients": len(patients),
        "class_counts": dict(zip(folders, counts)),
        "window": "brain",
        "field_of_view_mm": FIELD_OF_VIEW_MM,
        "head_height_mm": HEAD_HEIGHT_MM,
        "pixel_spacing_mm": round(FIELD_OF_VIEW_MM / size, 6),
        "slice_spacing_mm": dict(sorted(spacing.items(), key=lambda item: int(item[0]))),
    }
    (root / "_params.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return counts


def _render_patient(patient: _Patient, size: int) -> list[_Slice]:
    """Every slice of ``patient``, inferior -> superior (one noise stream per patient)."""
    noise_rng = np.random.default_rng(patient.noise_seed)
    return [
        _render_slice(
            patient.anatomy, float(z), size, lesion=patient.lesion, profile=_profile(patient.lesion, j), rng=noise_rng
        )
        for j, z in enumerate(patient.z)
    ]


def _write_patient(
    root: Path,
    fmt: str,
    patient: _Patient,
    slices: list[_Slice],
    slice_folders: list[str],
    volume_folder: str,
    geometry: VolumeGeometry,
    entropy: list[str],
) -> tuple[list[str], str]:
    """Write one patient in ``fmt``; returns the manifest path of every slice and the volume ("" for png)."""
    if fmt == "png":
        files = []
        for j, (sl, folder) in enumerate(zip(slices, slice_folders)):
            name = f"{patient.pid} ({j + 1}).png"
            image = np.rint(apply_window(sl.hu, "brain") * 255.0).astype(np.uint8)
            Image.fromarray(image, mode="L").save(root / folder / name)
            Image.fromarray(sl.mask.astype(np.uint8) * 255, mode="L").save(root / "_masks" / folder / name)
            files.append(f"{folder}/{name}")
        return files, ""
    series = f"{volume_folder}/P{patient.pid:04d}"
    hu, masks = [sl.hu for sl in slices], [sl.mask for sl in slices]
    if fmt == "dicom":
        names = write_dicom_series(
            root / series,
            root / "_masks" / series,
            hu,
            masks,
            geometry,
            patient_id=f"PHANTOM-{patient.pid:04d}",
            patient_name=f"Phantom^P{patient.pid:04d}",
            entropy=[*entropy, str(patient.pid)],
        )
        return [f"{series}/{name}" for name in names], series
    volume = f"{series}.nii.gz"
    write_nifti_volume(root / volume, root / "_masks" / volume, hu, masks, geometry)
    return [slice_ref(volume, k) for k in range(len(slices))], volume


def _meta_row(patient: _Patient, j: int, sl: _Slice, label: str, file: str, volume: str) -> dict[str, object]:
    lesion = patient.lesion if sl.mask.any() else None  # what is in plane
    return {
        "file": file,
        "class": label,
        "patient": patient.pid,
        "slice_index": j + 1,
        "lesion_type": lesion.kind if lesion else "none",
        "lesion_area": int(np.count_nonzero(sl.mask)),
        "territory": lesion.territory if lesion else "none",
        "side": ("left" if lesion.side > 0 else "right") if lesion else "none",
        "volume": volume,
    }


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _arg(check, name: str):  # noqa: ANN001, ANN202 - argparse type adapter
    def parse(text: str):  # noqa: ANN202
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid {name} {text!r}: {exc}") from None

    return parse


def _positive_int(low: int, high: int, name: str):  # noqa: ANN202
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("not an integer") from None
        return _check_int(name, value, low, high)

    return _arg(check, name)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data.phantom",
        description="Write a synthetic head-CT stroke dataset (PNG slices, DICOM series or NIfTI volumes).",
    )
    parser.add_argument("--out", required=True, type=Path, help="destination folder")
    parser.add_argument("--n", type=_positive_int(1, 1_000_000, "n"), default=200, help="number of images (exact)")
    parser.add_argument("--size", type=_positive_int(16, 1024, "size"), default=128, help="image size in pixels")
    parser.add_argument("--seed", type=_positive_int(0, 2**63 - 1, "seed"), default=0, help="random seed")
    parser.add_argument(
        "--classes",
        type=_arg(_check_classes, "classes"),
        default=("normal", "stroke"),
        help="normal,stroke (default) or normal,ischemic,hemorrhagic",
    )
    parser.add_argument(
        "--difficulty", type=_arg(_check_difficulty, "difficulty"), default=0.5, help="0 (easy) .. 1 (hard)"
    )
    parser.add_argument(
        "--label-level",
        type=_arg(_check_label_level, "label level"),
        default="slice",
        help="slice: label where the lesion is in plane; subject: every slice of a stroke patient",
    )
    parser.add_argument(
        "--slices-per-patient",
        type=_arg(lambda t: _check_slices(tuple(int(x) for x in t.split(","))), "slices per patient"),
        default=(6, 12),
        help="MIN,MAX slices per synthetic patient (default 6,12)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="png",
        help="png: class folders of windowed slices (default); dicom: one CT series per patient; "
        "nifti: one .nii.gz per patient",
    )
    add_logging_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _build_parser().parse_args(argv)
    start_logging(args)
    try:
        out = generate_phantom(
            args.out,
            n=args.n,
            size=args.size,
            seed=args.seed,
            classes=args.classes,
            difficulty=args.difficulty,
            label_level=args.label_level,
            slices_per_patient=args.slices_per_patient,
            format=args.format,
        )
    except ValueError as exc:
        logger.error("error: %s", exc)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
