"""Live predictions with Gradio: upload a CT slice, get class probabilities, the decision at the
study's threshold, an attribution overlay and the image the model actually saw; or upload a whole
scan (a zipped DICOM series or a NIfTI file) and get the scan's verdict, a per-slice probability
strip and the attributions of its most suspicious slices.

Run it::

    python app.py                                     # http://127.0.0.1:7860 (GRADIO_SERVER_PORT)
    GRADIO_SERVER_NAME=0.0.0.0 python app.py          # listen on every interface (a Space does this)
    python -m ui.gradio_app --study leaderboards/demo --port 7861

Call it from Python (the one-argument call works: window and model have defaults)::

    from gradio_client import Client, handle_file
    Client("http://127.0.0.1:7860/").predict(handle_file("scan.dcm"), api_name="/predict")
    # -> {"label": "Stroke", "confidences": [{"label": "Stroke", "confidence": 0.93}, ...]}
    Client("http://127.0.0.1:7860/").predict(handle_file("series.zip"), api_name="/predict_scan")
    # -> {"label": "Stroke", "probability": 0.71, "threshold": 0.4, "rule": "max", "n_slices": 24, ...}

One module builds the Blocks (:func:`build_app`); ``app.py`` serves it alone through :func:`launch`
and the Streamlit dashboard embeds the very same Blocks object. Without any study,
:func:`launch` first builds the demo study from the synthetic phantom
(``automl.search.run_search(SearchConfig(preset="demo", study="demo"))``), as the dashboard does.

Endpoints:

* ``/predict`` (public): ``(image, window="<study window>", model="<best model>")`` ->
  ``{"label", "confidences"}`` (a ``gr.Label`` value). ``label`` is the **decision at the study's
  threshold** (binary: ``classes[1]`` when ``P(classes[1]) >= threshold``; multiclass: the most
  probable class), ``confidences`` every class, most probable first. No attribution, so it is fast.
* ``/analyze`` (public, what the UI runs): ``(image, window, model, method)`` -> label, decision
  Markdown, attribution picture, picture of the preprocessed input. Its label adds one entry after
  the classes, ``"decision threshold on P(<positive class>)"`` with the threshold as its value, so
  that the bars show the threshold next to the probability it is compared with.
* ``/predict_scan`` (public): ``(scan_file, window="<study window>", model="<best model>")`` -> the
  scan's JSON answer ``{"label", "probability", "threshold", "rule", "rule_from_study", "n_slices",
  "slice_step", "slice_indices", "slice_probabilities", "suspicious_slices", "ood_flagged_slices",
  "probabilities"}`` (a ``gr.JSON`` value). ``scan_file`` is a ``.zip`` of one DICOM series or a NIfTI
  file (``.nii``/``.nii.gz``), read by ``data.read_volume`` with the upload limit as ``max_bytes``;
  every slice goes through the model (``Predictor.preprocess_volume``: HU -> window -> resize -> uint8)
  and the slices are aggregated with the rule and threshold the study chose for **patients**
  (``leaderboard.csv`` ``subject_rule`` / ``subject_threshold``, through
  ``automl.metrics.aggregate_by_subject``, the scan being the one subject; :mod:`ui.scan`). Binary:
  ``label`` is ``classes[1]`` when ``probability`` = aggregated ``P(classes[1]) >= threshold``;
  multiclass: the most probable aggregated class, ``probability`` its probability, ``threshold``
  ``None``. ``slice_probabilities`` hold ``P(classes[1])`` (multiclass: ``1 - P(classes[0])``) of the
  slices ``slice_indices`` (0 the most inferior), ``suspicious_slices`` the top 3 of them,
  ``ood_flagged_slices`` how many slices the out-of-distribution check flags (``None`` without a
  reference). A study without a patient rule for the model (written before it, or multiclass without
  one) uses ``"mean"`` and the slice threshold (``rule_from_study`` false; the tab says so). A scan of
  more than :data:`ui.scan.MAX_SCAN_SLICES` (400) slices is answered on every k-th slice
  (``slice_step`` = k = ``ceil(K / 400)``), so one request costs at most 400 forward passes.
* ``/analyze_scan`` (public, what the "Whole scan" tab runs): ``(scan_file, window, model)`` -> verdict
  Markdown, the per-slice probability strip (``ui.charts.slice_strip``: threshold line, top 3
  marked), a gallery of the attributions of the 3 most suspicious slices for the decided class (the
  model's first attribution method; the model inputs for a classical baseline), each captioned with
  its slice index and probability, and the JSON answer of ``/predict_scan``.

What the page shows (a binary study): a headline with the decision, the probability and the
threshold together ("Stroke — P(Stroke) 0.24 ≥ threshold 0.22"), so the decision can never seem to
contradict the bars (at a tuned threshold of 0.22, 24 % *is* Stroke); an out-of-distribution warning
above it when the scan is far from the training images (:mod:`models.ood`, distance above the 99th
percentile of held-out training images; models saved without a reference say so instead); the
bars; the attribution for the **decided** class (the class in the headline, not the argmax) and the
model input, both drawn at >= 320 px by nearest-neighbour upsampling (each model pixel a block,
nothing invented), with a colour bar, a caption and, for a flat map, the sentence "... found no
evidence for <class> in this image (a flat map)" instead of an empty picture.

What a stranger may upload (``gr.File``: the one input that takes DICOM as well as raster images;
the file type is judged from the content, so extensionless DICOM works):

=====================================  =========  ==================================================
input                                  outcome    why
=====================================  =========  ==================================================
PNG / JPEG / TIFF / BMP, grey or RGB   accepted   colour -> ITU-R 601 luma (``data.load_image``)
16-bit PNG / TIFF                      accepted   scaled by 65535 (CT exports are often 16-bit)
RGBA / LA                              accepted   alpha composited on black (the padding colour)
CMYK JPEG                              accepted   converted to RGB, then luma
animated GIF                           accepted   first frame only; the decision panel says so
DICOM (CT)                             accepted   HU -> the selected window preset
smaller than 16 px on a side (1x1)     rejected   a 1-pixel image resized to S x S is a constant;
                                                  any prediction on it would be meaningless
empty file                             rejected   "empty file"
truncated / corrupt JPEG or PNG        rejected   the decoder's reason
text (or anything) named ``.png``      rejected   "not an image"
more than 50 MP (20000 x 20000 bomb)   rejected   from the header, before any pixel is decoded
DICOM without pixel data               rejected   the decoder's reason
unsupported DICOM transfer syntax      rejected   the decoder's reason (names the syntax)
larger than ``STROKECT_MAX_FILE_MB``   rejected   upload route answers HTTP 413 (``max_file_size``;
(default 20 MB)                                   ``gradio_client`` refuses before uploading), and
                                                  the handler checks the size again
=====================================  =========  ==================================================

What the "Whole scan" tab and ``/predict_scan`` refuse (each with one sentence naming the file and
the reason, from ``data.read_volume``): a zip member that is not a DICOM slice, a zip bomb (a member
expanding more than 200-fold), a zip that unpacks beyond the upload limit, several series in one zip,
missing slices, inconsistent spacing, slices at one position, non-axial or oblique (tilt > 30 degrees)
volumes, 4-D NIfTI, anything else that is not a NIfTI file, a file over the upload limit and slices
smaller than 16 px on a side.

Rejections raise ``gr.Error(message)``: a red toast in the UI and ``AppError(message)`` through
``gradio_client``; the message never contains a server path. Unexpected exceptions are logged with
their traceback and answered with a generic sentence; the server keeps serving.

Privacy and resources:

* An uploaded file (slice or scan: one ``_Uploads`` serves both file inputs) is deleted
  ``UPLOAD_GRACE_SECONDS`` (30 s) after the last request using it finishes, whatever the outcome (reference-counted, because Gradio stores identical uploads at one
  path and a second client's request may still wait in the queue); re-running with other settings
  later needs the file again (examples stay). Files the
  browser needs to display (overlay, preprocessed image) and uploads that were never used by a
  request are removed by Gradio's ``delete_cache`` after 15 minutes, and all on shutdown.
* The handlers take the raw upload payload (``preprocess=False``) and validate every value
  themselves; Gradio still checks that the path lies in its upload folder, and the handler
  additionally refuses anything that is neither an upload nor an example.
* ``share`` is never used, ``allowed_paths`` is empty, the server binds 127.0.0.1 unless
  ``GRADIO_SERVER_NAME`` says otherwise. Gradio's own start-up prints (among them the hint
  "To create a public link, set `share=True`") are silenced with ``launch(quiet=True)``; the
  address is logged instead.
* Predictors are loaded once per process and model (a dict guarded by a lock) and shared by all
  sessions. The queue runs at most :data:`CONCURRENCY_LIMIT` (2) predictions at a time and holds
  at most :data:`QUEUE_MAX_SIZE` waiting ones. ``torch.set_num_threads`` is lowered to
  ``cpu_count // CONCURRENCY_LIMIT`` (at least 1) so that two concurrent requests do not
  oversubscribe the cores: on a 2-vCPU Space each request gets one intra-op thread.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from automl.study import leaderboards_root
from data._log import add_logging_arguments, setup_logging, start_logging
from ui.scan import MAX_SCAN_SLICES, TOP_SLICES

__all__ = [
    "CONCURRENCY_LIMIT",
    "DISCLAIMER",
    "MAX_FILE_MB_ENV",
    "MIN_SIDE",
    "QUEUE_MAX_SIZE",
    "InputRejected",
    "build_app",
    "decide",
    "launch",
    "main",
    "max_file_bytes",
    "resolve_server",
    "scan_headline",
]

logger = logging.getLogger(__name__)

#: Default folder of studies (:func:`automl.study.leaderboards_root`, read at import).
DEFAULT_LEADERBOARDS = leaderboards_root()
DISCLAIMER = "Research/teaching only, not for clinical use."
#: Environment variable holding the upload limit in MB (default :data:`DEFAULT_MAX_FILE_MB`).
MAX_FILE_MB_ENV = "STROKECT_MAX_FILE_MB"
DEFAULT_MAX_FILE_MB = 20.0
#: Smallest accepted image side in pixels (a 1x1 "scan" is rejected, see the module docstring).
MIN_SIDE = 16
#: Predictions running at the same time (Gradio queue ``default_concurrency_limit``).
CONCURRENCY_LIMIT = 2
#: Requests waiting in the queue before new ones are refused ("queue is full").
QUEUE_MAX_SIZE = 32
#: Gradio ``delete_cache`` (every 5 minutes, files older than 15 minutes).
DELETE_CACHE = (300, 900)
#: Examples per class taken from the study's test part.
EXAMPLES_PER_CLASS = 2
DEFAULT_PORT = 7860
NO_ATTRIBUTION = "none"

#: What the "Whole scan" tab accepts (the content decides: a zip is a DICOM series, anything else NIfTI).
_SCAN_TYPES = [".zip", ".nii", ".nii.gz", ".gz"]
_FILE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm", ".dicom"]
_METHOD_LABELS = {
    "grad_cam": "Grad-CAM (fastest)",
    "integrated_gradients": "Integrated gradients",
    "saliency": "Saliency (input gradient)",
    "gradient_shap": "Gradient SHAP",
    "occlusion": "Occlusion (slow)",
    "attention_rollout": "Attention rollout (ViT)",
    NO_ATTRIBUTION: "None (prediction only)",
}
_GENERIC_FAILURE = "The file could not be analysed (unexpected error, logged on the server). Try another file."


class InputRejected(ValueError):
    """An input that is refused with a user-facing message (no server paths in it)."""


# ------------------------------------------------------------------------------------ settings
def max_file_bytes() -> int:
    """The upload limit in bytes, from ``$STROKECT_MAX_FILE_MB`` (default 20 MB).

    Raises:
        ValueError: If the variable is set to something other than a positive number.
    """
    raw = os.environ.get(MAX_FILE_MB_ENV, "").strip()
    if not raw:
        return int(DEFAULT_MAX_FILE_MB * 1024 * 1024)
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{MAX_FILE_MB_ENV} must be a number of megabytes, got {raw!r}.") from None
    if not math.isfinite(mb) or mb <= 0:
        raise ValueError(f"{MAX_FILE_MB_ENV} must be a positive number of megabytes, got {raw!r}.")
    return max(1, int(mb * 1024 * 1024))


def resolve_server(server_name: str | None = None, server_port: int | None = None) -> tuple[str, int]:
    """Host and port to serve on: arguments, else ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT``,
    else ``127.0.0.1:7860``.

    Raises:
        ValueError: If the port is not an integer in 1..65535.
    """
    name = server_name or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    raw = server_port if server_port is not None else os.environ.get("GRADIO_SERVER_PORT") or DEFAULT_PORT
    try:
        port = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"GRADIO_SERVER_PORT / server_port must be an integer, got {raw!r}.") from None
    if not 0 < port < 65536:
        raise ValueError(f"GRADIO_SERVER_PORT / server_port must be in 1..65535, got {port}.")
    return name, port


def _limit_torch_threads(concurrency: int) -> None:
    """Lower torch's intra-op threads so ``concurrency`` requests share the cores (never raise it)."""
    import torch

    share = max(1, (os.cpu_count() or 1) // max(1, concurrency))
    if torch.get_num_threads() > share:
        logger.info("torch.set_num_threads(%d): %d concurrent requests on %s CPUs", share, concurrency,
                    os.cpu_count())
        torch.set_num_threads(share)


# ---------------------------------------------------------------------------------- predictors
class _PredictorCache:
    """Predictors loaded once per process and model folder, shared by every session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Any] = {}

    def get(self, folder: Path) -> Any:
        key = str(Path(folder).resolve())
        with self._lock:  # loading is rare; holding the lock makes concurrent first calls load once
            predictor = self._items.get(key)
            if predictor is None:
                from models import load_predictor

                logger.info("Loading predictor %s", folder)
                predictor = load_predictor(folder)
                self._items[key] = predictor
            return predictor

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_PREDICTORS = _PredictorCache()


# ------------------------------------------------------------------------------------- study
@dataclass
class _StudyView:
    """What the app needs from a study, read once at build time."""

    study: Any  # automl.results.StudyResults
    models: list[str]
    default_model: str
    default_window: str
    examples: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def window_choices(self) -> list[str]:
        """Windows the dropdowns offer: the presets, or the window sets when the study's models take 3 channels."""
        from data import WINDOW_SETS, WINDOWS, parse_windows

        if len(parse_windows(self.default_window)) == 1:
            return list(WINDOWS)
        return [self.default_window, *[w for w in WINDOW_SETS if w != self.default_window]]

    @property
    def classes(self) -> list[str]:
        return list(self.study.classes)

    def methods(self, model: str) -> list[str]:
        """Attribution methods offered for ``model`` (``"none"`` last; only ``"none"`` for classical)."""
        from models.attribution import applicable_methods

        try:
            size = self.study.card(model).get("image_size")
            methods = list(applicable_methods(self._registry_name(model), image_size=size))  # best first
        except ValueError:  # not in the registry (e.g. a renamed folder): offer what any CNN supports
            methods = []
        return [*methods, NO_ATTRIBUTION]

    def _registry_name(self, model: str) -> str:
        try:
            return str(self.study.card(model).get("model") or model)
        except Exception:  # noqa: BLE001 - a bad card only costs the method list
            return model

    def test_metrics(self, model: str) -> dict[str, float]:
        """Test-part metrics of the refitted ``model`` from the leaderboard (missing ones omitted)."""
        row = self.study.refit_row(model)
        out: dict[str, float] = {}
        if row is None:
            return out
        for key in ("test_sensitivity", "test_specificity", "test_auc", "test_balanced_accuracy"):
            if key in row.index:
                try:
                    value = float(row[key])
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    out[key] = value
        return out


def _pick_study(study_dir: str | Path | None, leaderboards_root: str | Path) -> Path | None:
    """The study to serve: ``study_dir`` itself, else the most recently updated one under the root."""
    if study_dir is not None:
        return Path(study_dir)
    from automl.results import list_studies, study_fingerprint

    studies = list_studies(leaderboards_root)
    if not studies:
        return None
    return max(studies, key=study_fingerprint)


def _study_examples(study: Any, *, per_class: int = EXAMPLES_PER_CLASS) -> list[tuple[Path, str]]:
    """A few test-part images of each class (they exist on disk), plus the pydicom CT sample."""
    out: list[tuple[Path, str]] = []
    data_dir = study.data_dir
    if data_dir is not None:
        try:
            split = study.split
        except ValueError as exc:  # StudyError
            logger.warning("No examples from the study: %s", exc)
            split = None
        if split is not None and data_dir.is_dir():
            test = split[split["part"].astype(str) == "test"]
            label_col = "label" if "label" in test.columns else None
            for y, group in test.sort_values("path").groupby("y", sort=True):
                label = str(group[label_col].iloc[0]) if label_col else study.classes[int(y)]
                for rel in group["path"].astype(str).head(per_class):
                    path = data_dir / rel
                    if path.is_file():
                        out.append((path, f"{label}: {Path(rel).name}"))
        elif data_dir is not None and not data_dir.is_dir():
            logger.warning("The study's data folder %s is gone; no phantom examples.", data_dir)
    try:
        from pydicom.data import get_testdata_file

        dicom = get_testdata_file("CT_small.dcm")
        if dicom:
            out.append((Path(dicom), "DICOM CT sample (pydicom CT_small.dcm): try the window presets"))
    except Exception as exc:  # noqa: BLE001 - an optional example
        logger.debug("pydicom CT sample unavailable: %s", exc)
    return out


def _study_view(study_dir: Path) -> _StudyView:
    from automl.results import load_study

    study = load_study(study_dir)
    models = study.refitted_models()
    if not models:
        raise ValueError(
            f"Study {study_dir} has no refitted model (models/<model>/card.json); "
            "run the search to completion first (python -m automl.search ...)."
        )
    best = study.best_model
    default_model = best if best in models else models[0]
    from data import WINDOWS, parse_windows

    window = str(study.config.get("window") or "brain")
    if window not in WINDOWS and len(parse_windows(window)) == 1:
        window = "brain"
    return _StudyView(study=study, models=models, default_model=default_model, default_window=window,
                      examples=_study_examples(study))


# ----------------------------------------------------------------------------------- inference
@dataclass
class _Analysis:
    probabilities: dict[str, float]
    label: str  # the decision at the study threshold (binary) or the most probable class
    seen: np.ndarray  # uint8 (S, S): the model input
    seen_picture: np.ndarray  # RGB uint8: the model input enlarged, with title and caption
    overlay: np.ndarray | None  # RGB uint8 attribution picture (enlarged, colour bar, caption)
    decision_md: str
    threshold: float | None = None  # binary studies: the decision threshold on P(classes[1])
    ood: Any = None  # models.ood.OODScore, or None when the model has no reference


def _sanitize(message: str, path: Path, display_name: str) -> str:
    """Replace server paths in a library message by the user's file name."""
    for p in {str(path), str(path.resolve()), path.as_posix()}:
        message = message.replace(p, display_name)
    return message


def _short_reason(reason: str, path: Path, display_name: str) -> str:
    """A decoder's reason for a visitor: no paths; for DICOM codecs, the syntax but not the plugin list."""
    reason = _sanitize(reason, path, display_name)
    if reason.startswith("unreadable DICOM compression") and ": " in reason:
        reason = reason.split(": ", 1)[0] + "; this server has no decoder for that transfer syntax"
    return reason if len(reason) <= 240 else reason[:237] + "..."


def _peek(path: Path) -> dict[str, Any]:
    """Cheap header facts of a raster file (format, size, mode, animation); {} for DICOM/unknown."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return {"format": im.format, "size": im.size, "mode": im.mode,
                        "animated": bool(getattr(im, "is_animated", False))}
    except Exception:  # noqa: BLE001 - decoding errors are load_image's to report
        return {}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def decide(classes: Sequence[str], probabilities: Mapping[str, float], threshold: float | None) -> str:
    """The decision: binary -> ``classes[1]`` when ``P(classes[1]) >= threshold``; otherwise the argmax."""
    if len(classes) == 2 and threshold is not None:
        return classes[1] if float(probabilities[classes[1]]) >= threshold else classes[0]
    return max(classes, key=lambda c: float(probabilities[c]))


def _label_payload(probabilities: Mapping[str, float], decision: str) -> dict[str, Any]:
    """``gr.Label`` value whose headline is the decision at the threshold (not necessarily the argmax)."""
    ranked = sorted(probabilities.items(), key=lambda kv: kv[1], reverse=True)
    return {"label": decision, "confidences": [{"label": c, "confidence": float(p)} for c, p in ranked]}


def threshold_entry(positive: str) -> str:
    """The name of the bar that shows the decision threshold on ``P(positive)`` in the UI's label."""
    return f"decision threshold on P({positive})"


def _ui_label_payload(classes: Sequence[str], probabilities: Mapping[str, float], decision: str,
                      threshold: float | None) -> dict[str, Any]:
    """The bars of the page: every class, then (binary) the threshold as one more bar to compare with."""
    payload = _label_payload(probabilities, decision)
    if len(classes) == 2 and threshold is not None:
        payload["confidences"].append({"label": threshold_entry(classes[1]), "confidence": float(threshold)})
    return payload


def _pair(p: float, threshold: float) -> tuple[str, str]:
    """``p`` and ``threshold`` with the fewest decimals (2..6) at which the printed relation stays true."""
    for digits in range(2, 7):
        a, b = round(p, digits), round(threshold, digits)
        if (a >= b) == (p >= threshold) and (a != b or p >= threshold):
            return f"{p:.{digits}f}", f"{threshold:.{digits}f}"
    return f"{p:.6f}", f"{threshold:.6f}"


def decision_headline(classes: Sequence[str], probabilities: Mapping[str, float], threshold: float | None) -> str:
    """One line that holds the decision with the numbers it rests on.

    Binary: ``"Stroke — P(Stroke) 0.24 ≥ threshold 0.22"``; otherwise ``"Ischemic — the most
    probable class (P 0.50)"``.
    """
    decision = decide(classes, probabilities, threshold)
    if len(classes) == 2 and threshold is not None:
        positive = classes[1]
        p = float(probabilities[positive])
        p_text, t_text = _pair(p, float(threshold))
        relation = "≥" if p >= threshold else "<"
        return f"{decision} — P({positive}) {p_text} {relation} threshold {t_text}"
    return f"{decision} — the most probable class (P {float(probabilities[decision]):.2f})"


def ood_markdown(score: Any) -> str:
    """The out-of-distribution line of the decision panel (a warning when flagged)."""
    if score is None:
        return "No out-of-distribution reference for this model (saved before the check existed): no flag."
    if score.flagged:
        return (f"⚠️ **This scan is unlike the images the model was trained on** (distance {score.distance:.1f} > "
                f"{score.threshold:.1f}, the 99th percentile of held-out training images): treat the answer "
                "with caution.")
    return (f"Like the training images: distance {score.distance:.1f} ≤ {score.threshold:.1f} (the 99th "
            "percentile of held-out training images).")


def _decision_markdown(view: _StudyView, model: str, probabilities: Mapping[str, float], *, window: str,
                       image_size: int, notes: Sequence[str], ood: Any = None, ood_known: bool = False) -> str:
    """The decision panel: OOD warning (when flagged), headline, threshold and test metrics, notes.

    ``ood``: a ``models.ood.OODScore`` or ``None``; ``ood_known=False`` leaves the OOD line out (tests,
    callers that did not compute it).
    """
    classes = view.classes
    metrics = view.test_metrics(model)
    lines: list[str] = []
    if ood_known and ood is not None and ood.flagged:
        lines.append(f"> {ood_markdown(ood)}")
    if len(classes) == 2:
        threshold = float(view.study.threshold(model))
        lines.append(f"## {decision_headline(classes, probabilities, threshold)}")
        lines.append(f"The threshold {threshold:.3f} on P({classes[1]}) was chosen on held-out images of this "
                     "model (the calibration part), so it can differ from 0.5; the bars show the probabilities "
                     "and, last, the threshold.")
        lines.append(f"At this threshold the model had **sensitivity {_fmt(metrics.get('test_sensitivity'))}** "
                     f"and **specificity {_fmt(metrics.get('test_specificity'))}** on the study's held-out "
                     f"test part (test AUC {_fmt(metrics.get('test_auc'))}).")
    else:
        lines.append(f"## {decision_headline(classes, probabilities, None)}")
        lines.append(f"Test balanced accuracy {_fmt(metrics.get('test_balanced_accuracy'))}, "
                     f"test AUC {_fmt(metrics.get('test_auc'))} (held-out test part).")
    lines.append(f"Model `{model}`, input {image_size}×{image_size}, DICOM window `{window}`.")
    if ood_known and not (ood is not None and ood.flagged):
        lines.append(f"- {ood_markdown(ood)}")
    lines.extend(f"- {note}" for note in notes)
    lines.append(f"_{DISCLAIMER}_")
    return "\n\n".join(lines)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def _check_settings(view: _StudyView, window: str, model: str) -> None:
    """Refuse a window preset or a model the study does not offer."""
    if window not in view.window_choices:
        raise InputRejected(f"Unknown window preset {window!r}; choose one of {view.window_choices}.")
    if model not in view.models:
        raise InputRejected(f"Unknown model {model!r}; this study offers {view.models}.")


def _check_size(path: Path, display_name: str) -> int:
    """Refuse a vanished, empty or over-limit upload; return the limit (:func:`max_file_bytes`)."""
    try:
        size = path.stat().st_size
    except OSError:
        raise InputRejected(
            "The uploaded file is no longer on the server (uploads are deleted after each prediction); "
            "upload it again."
        ) from None
    limit = max_file_bytes()
    if size > limit:
        raise InputRejected(f"{display_name} is {size / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB.")
    if size == 0:
        raise InputRejected(f"{display_name} is empty (0 bytes).")
    return limit


def _analyze_file(view: _StudyView, path: Path, *, display_name: str, window: str, model: str,
                  method: str, explain: bool) -> _Analysis:
    """Decode, check, predict and (optionally) explain one file. Raises :class:`InputRejected`."""
    from data import BadImageError, load_channels

    _check_settings(view, window, model)
    methods = view.methods(model)
    notes: list[str] = []
    if explain and methods == [NO_ATTRIBUTION]:  # classical baseline: nothing to attribute, say so
        if method != NO_ATTRIBUTION:
            notes.append(f"No attribution map: `{model}` is a classical baseline (no gradients or layers).")
        explain = False
    elif explain and method not in methods:
        raise InputRejected(f"Attribution method {method!r} does not apply to {model}; choose one of {methods}.")
    _check_size(path, display_name)

    try:
        channels = load_channels(path, window=window)  # (1, H, W), or one channel per window of a window set
    except BadImageError as exc:
        logger.info("Unreadable upload %s: %s", display_name, exc.reason)
        raise InputRejected(
            f"{display_name} cannot be read as an image or DICOM: {_short_reason(exc.reason, path, display_name)}."
        ) from None
    height, width = channels.shape[1:]
    image = channels[0] if len(channels) == 1 else path  # a window set: the predictor windows the file itself
    if min(height, width) < MIN_SIDE:
        raise InputRejected(f"{display_name} is {width}×{height} px; a CT slice needs at least "
                            f"{MIN_SIDE} px on each side.")
    header = _peek(path)  # after load_image: its pixel-count guard has run
    if header:
        notes.append(f"Input: {header['format']} {width}×{height}, mode {header['mode']} "
                     "(raster images are taken as already windowed).")
        if header.get("animated"):
            notes.append("Animated image: only the first frame was used.")
    else:
        notes.append(f"Input: DICOM {width}×{height}, window `{window}` applied to Hounsfield units.")

    predictor = _PREDICTORS.get(view.study.model_dir(model))
    try:
        x = predictor.preprocess(image)  # the training path: resize_pad -> uint8 -> /255
    except ValueError as exc:  # models.InvalidInputError
        raise InputRejected(_sanitize(str(exc), path, display_name)) from None
    probs = predictor.predict_proba(x)[0]
    probabilities = {str(c): float(p) for c, p in zip(predictor.classes, probs)}
    if set(probabilities) != set(view.classes):
        raise RuntimeError(f"Model {model} predicts {sorted(probabilities)}, the study has {view.classes}.")
    threshold = float(view.study.threshold(model)) if len(view.classes) == 2 else None
    decision = decide(view.classes, probabilities, threshold)
    seen = _to_uint8(x.detach().cpu().numpy()[0, 0])
    ood, ood_known = _ood_check(predictor, x, model, notes)

    from models.attribution import render_input

    seen_picture = render_input(seen, title=f"What the model saw ({model})",
                                note="The input after windowing and resizing, exactly as the model got it.")
    overlay = None
    if explain and method != NO_ATTRIBUTION:
        # explain the class the headline shows (at a tuned threshold it need not be the argmax)
        overlay, note = _attribution_picture(predictor, x, method, target=view.classes.index(decision))
        notes.append(note)
    md = _decision_markdown(view, model, probabilities, window=window, image_size=predictor.image_size,
                            notes=notes, ood=ood, ood_known=ood_known)
    return _Analysis(probabilities=probabilities, label=decision, seen=seen, seen_picture=seen_picture,
                     overlay=overlay, decision_md=md, threshold=threshold, ood=ood)


def _ood_check(predictor: Any, x: Any, model: str, notes: list[str]) -> tuple[Any, bool]:
    """``(OODScore | None, known)``: the input's distance from the training images; ``known=False``
    (and a note) when the model's reference does not fit it, so the answer still comes, without a flag."""
    if getattr(predictor, "ood", None) is None:
        return None, True
    try:
        return predictor.ood_score(x), True
    except ValueError as exc:
        logger.warning("Out-of-distribution check of %s failed: %s", model, exc)
        notes.append("The out-of-distribution check failed for this model (logged on the server): no flag.")
        return None, False


def _attribution_picture(predictor: Any, x: Any, method: str, *, target: int) -> tuple[np.ndarray, str]:
    """The attribution picture for class index ``target`` (enlarged, colour bar, or the flat-map
    message) and the note for the decision panel."""
    from models.attribution import explain, flat_map_message, is_flat, render_overlay

    att = explain(predictor, x, method=method, target=target)
    label = _METHOD_LABELS.get(method, method).split(" (")[0]
    picture = render_overlay(att.image, att.heatmap, signed=att.signed, target_name=att.target_name,
                             method_label=label)
    if is_flat(att.heatmap):
        return picture, f"Attribution: {flat_map_message(label, f'`{att.target_name}`')} ({att.seconds:.2f} s)"
    colours = "red = for, blue = against" if att.signed else "warm colours = most important"
    bf16 = ", bf16 autocast" if att.params.get("precision") == "bf16" else ""
    return picture, (f"Attribution: {label} for class `{att.target_name}`, the decision "
                     f"({colours}; {att.seconds:.2f} s{bf16}).")


# ---------------------------------------------------------------------------------- whole scan
def _rule_text(rule: str) -> str:
    """``"max"`` -> ``"max"``, ``"top3_mean"`` -> ``"mean of the top 3"``."""
    if rule.startswith("top") and rule.endswith("_mean"):
        return f"mean of the top {rule[3:-5]}"
    return rule


def scan_headline(answer: Any) -> str:
    """One line with the scan's decision and the numbers it rests on (a :class:`ui.scan.ScanAnswer`).

    Binary: ``"Stroke — scan P(Stroke) 0.71 (max over 24 slices) ≥ threshold 0.40 chosen on held-out
    patients"``; otherwise ``"Ischemic — scan, the most probable class (P 0.50, mean over 24 slices)"``.
    """
    over = f"{_rule_text(answer.rule.rule)} over {len(answer.slice_indices)} slices"
    if answer.threshold is None:
        return f"{answer.label} — scan, the most probable class (P {answer.probability:.2f}, {over})"
    p_text, t_text = _pair(answer.probability, answer.threshold)
    relation = "≥" if answer.probability >= answer.threshold else "<"
    source = "chosen on held-out patients" if answer.rule.from_study else "(the slice threshold)"
    return (f"{answer.label} — scan P({answer.classes[1]}) {p_text} ({over}) {relation} threshold {t_text} "
            f"{source}")


def _scan_markdown(view: _StudyView, model: str, answer: Any, volume: Any, *, window: str,
                   notes: Sequence[str]) -> str:
    """The scan panel: headline, how slices became the scan answer, the suspicious slices, OOD, notes."""
    lines = [f"## {scan_headline(answer)}"]
    if answer.rule.from_study:
        how = (f"Each slice went through the model on its own; the scan probability aggregates them with the "
               f"rule `{answer.rule.rule}`, the rule this study chose for patients on out-of-fold predictions")
        lines.append(how + (f", and the threshold {answer.threshold:.3f} was chosen on held-out data, never the test "
                            "part." if answer.threshold is not None else "."))
    else:
        lines.append(f"Each slice went through the model on its own; {answer.rule.note}.")
    height, width = volume.hu.shape[1:]
    kind = "DICOM series" if volume.format == "dicom" else "NIfTI volume"
    lines.append(f"Scan: {kind} of {answer.n_slices} slices of {width}×{height}, window `{window}`; model `{model}`.")
    if answer.step > 1:
        lines.append(f"- The scan has more than {MAX_SCAN_SLICES} slices: one slice in every {answer.step} was "
                     f"analysed ({len(answer.slice_indices)} slices, slice 0 first).")
    top = ", ".join(f"{i} ({answer.slice_scores[answer.position(i)]:.2f})" for i in answer.suspicious)
    lines.append(f"- Most suspicious slices by {answer.score_name} (slice 0 the most inferior): {top}.")
    if answer.ood_flagged is None:
        lines.append("- No out-of-distribution reference for this model (saved before the check existed): no flag.")
    elif answer.ood_flagged:
        lines.append(f"- ⚠️ **{answer.ood_flagged} of {len(answer.slice_indices)} slices are unlike the images the "
                     "model was trained on** (beyond the 99th percentile of held-out training images): treat the "
                     "answer with caution.")
    else:
        lines.append("- Every slice is like the training images (within the 99th percentile of held-out training "
                     "images).")
    lines.extend(f"- {note}" for note in notes)
    lines.append(f"_{DISCLAIMER}_")
    return "\n\n".join(lines)


def _scan_pictures(view: _StudyView, predictor: Any, answer: Any, model: str,
                   notes: list[str]) -> list[tuple[np.ndarray, str]]:
    """``(picture, caption)`` of the most suspicious slices: the attribution for the decided class with the
    model's first method (the model input for a classical baseline)."""
    import torch

    import models
    from models.attribution import render_input

    method = view.methods(model)[0]
    if method == NO_ATTRIBUTION:
        notes.append(f"No attribution maps: `{model}` is a classical baseline; the pictures are the model inputs.")
    out = []
    for index in answer.suspicious:
        seen = answer.inputs[answer.position(index)]  # (S, S), or (C, S, S) for a window set
        caption = f"slice {index} · {answer.score_name} {answer.slice_scores[answer.position(index)]:.2f}"
        if method == NO_ATTRIBUTION:
            picture = render_input(seen if seen.ndim == 2 else seen[0], title=f"Slice {index}: what the model saw")
        else:
            x = models.uint8_to_input(torch.from_numpy(seen)[None])
            picture, note = _attribution_picture(predictor, x, method, target=view.classes.index(answer.label))
        out.append((picture, caption))
    if method != NO_ATTRIBUTION and answer.suspicious:
        notes.append(f"Pictures of the most suspicious slices: {note.removeprefix('Attribution: ').rstrip('.')}.")
    return out


def _read_scan(path: Path, display_name: str) -> Any:
    """The uploaded volume (``data.read_volume`` within the upload limit); refusals name the reason."""
    from data import BadImageError, read_volume

    limit = _check_size(path, display_name)
    try:
        volume = read_volume(path, name=display_name, max_bytes=limit)
    except BadImageError as exc:
        logger.info("Unreadable scan %s: %s", display_name, exc.reason)
        reason = _short_reason(exc.reason, path, display_name).rstrip(".")
        raise InputRejected(f"{display_name} cannot be read as one CT scan: {reason}.") from None
    height, width = volume.hu.shape[1:]
    if min(height, width) < MIN_SIDE:
        raise InputRejected(f"{display_name} has slices of {width}×{height} px; a CT slice needs at least "
                            f"{MIN_SIDE} px on each side.")
    return volume


def _analyze_scan(view: _StudyView, path: Path, *, display_name: str, window: str, model: str,
                  pictures: bool) -> tuple[Any, str, list[tuple[np.ndarray, str]]]:
    """Read, check, predict and aggregate one scan: ``(ScanAnswer, Markdown, pictures)``.

    Raises:
        InputRejected: Unknown settings, or anything ``data.read_volume`` refuses.
    """
    from ui.scan import answer_scan, scan_rule

    _check_settings(view, window, model)
    volume = _read_scan(path, display_name)
    predictor = _PREDICTORS.get(view.study.model_dir(model))
    answer = answer_scan(predictor, volume.hu, classes=view.classes, rule=scan_rule(view.study, model), window=window)
    notes: list[str] = []
    shown = _scan_pictures(view, predictor, answer, model, notes) if pictures else []
    return answer, _scan_markdown(view, model, answer, volume, window=window, notes=notes), shown


# ------------------------------------------------------------------------------ gradio plumbing
def _contains(paths: set[str], raw: str) -> bool:
    """``raw in paths``, tolerant of symlinked temp folders (``/tmp`` -> ``/private/tmp`` on macOS)."""
    if raw in paths:
        return True
    real = os.path.realpath(raw)
    return any(os.path.realpath(p) == real for p in list(paths))


#: Seconds an upload is kept after the last request that used it (see :class:`_Uploads`): long enough
#: for a queued request of a second client that sent the same bytes (Gradio stores both at one path).
UPLOAD_GRACE_SECONDS = 30.0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return -1.0


class _Uploads:
    """Resolve the raw ``gr.File`` payload to a path and delete uploads once no request uses them.

    Gradio stores an upload under a hash of its content, so two clients sending the same file share
    one path on the server. Deletion is therefore reference-counted per path and deferred by
    ``grace_seconds``: a file is removed once the last request using it has finished, no new request
    resolved it during the grace period (which covers a second client whose upload already landed but
    whose request still waits in the queue) and it was not uploaded again since (Gradio rewrites the
    file on every upload, so a changed mtime means a newer upload that its own request will delete).
    """

    def __init__(self, blocks: Any, component: Any, *, grace_seconds: float | None = None) -> None:
        self.blocks = blocks
        self.component = component
        self.components = [component]  # every file input whose uploads this object resolves (see watch)
        self.grace_seconds = float(UPLOAD_GRACE_SECONDS if grace_seconds is None else grace_seconds)
        self._lock = threading.Lock()
        self._in_use: dict[str, int] = {}
        self._last_resolved: dict[str, float] = {}
        self._mtime_seen: dict[str, float] = {}

    def resolve(self, payload: Any) -> tuple[Path, str] | None:
        if payload is None:
            return None
        if isinstance(payload, Mapping):
            raw, name = payload.get("path"), payload.get("orig_name")
        else:  # a plain path string (tests, explicit calls)
            raw, name = payload, None
        if not isinstance(raw, str) or not raw:
            raise InputRejected("No file received.")
        path = Path(raw)
        if not (self._is_upload(raw) or self._is_example(raw)):
            raise InputRejected("This file was not uploaded to this app; upload it again.")
        with self._lock:
            key = os.path.realpath(raw)
            self._in_use[key] = self._in_use.get(key, 0) + 1
            self._last_resolved[key] = time.monotonic()
            self._mtime_seen[key] = _mtime(path)
        display = Path(str(name)).name if name else path.name
        return path, display

    def watch(self, component: Any) -> None:
        """Resolve and delete the uploads of one more file input too (one reference count for all inputs:
        the same bytes sent to two inputs are one file on the server)."""
        self.components.append(component)

    def _is_upload(self, raw: str) -> bool:
        return _contains(getattr(self.blocks, "upload_file_set", set()), raw)

    def _is_example(self, raw: str) -> bool:
        return any(_contains(getattr(c, "keep_in_cache", set()), raw) for c in self.components)

    def discard(self, path: Path) -> None:
        """Release a request's hold on an upload; delete it (never an example) when nobody holds it."""
        key = os.path.realpath(str(path))
        with self._lock:
            count = self._in_use.get(key, 0) - 1
            if count > 0:
                self._in_use[key] = count
                return
            self._in_use.pop(key, None)
        if self.grace_seconds <= 0:
            self._delete_if_idle(path, key, since=None)
            return
        since = time.monotonic()
        timer = threading.Timer(self.grace_seconds, self._delete_if_idle, args=(path, key), kwargs={"since": since})
        timer.daemon = True
        timer.start()

    def _delete_if_idle(self, path: Path, key: str, *, since: float | None) -> None:
        with self._lock:
            if self._in_use.get(key, 0) > 0:
                return
            if since is not None and self._last_resolved.get(key, 0.0) > since:
                return  # resolved again meanwhile: that request's discard schedules the deletion
            if _mtime(path) != self._mtime_seen.get(key):
                return  # uploaded again since its last request: the newer upload's request owns it
            self._last_resolved.pop(key, None)
            self._mtime_seen.pop(key, None)
        raw = str(path)
        if self._is_example(raw) or not self._is_upload(raw):
            return
        try:
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()  # Gradio keeps each upload in its own <hash>/ folder
            except OSError:
                pass
        except OSError as exc:
            logger.warning("Could not delete upload %s: %s", path.name, exc)

        real = os.path.realpath(raw)
        registries = [getattr(self.blocks, "upload_file_set", None), *(getattr(c, "temp_files", None)
                                                                       for c in self.components)]
        for registry in registries:
            if registry is not None:
                for entry in [p for p in list(registry) if p == raw or os.path.realpath(p) == real]:
                    registry.discard(entry)


def _run(view: _StudyView, uploads: _Uploads, payload: Any, window: str, model: str, method: str, *,
         explain: bool) -> _Analysis | None:
    return _guarded(uploads, payload, lambda path, display: _analyze_file(
        view, path, display_name=display, window=window, model=model, method=method, explain=explain))


def _guarded(uploads: _Uploads, payload: Any, work: Callable[[Path, str], Any]) -> Any:
    """``work(path, display_name)`` on the resolved upload (``None`` without one): refusals become
    ``gr.Error`` with their sentence, anything unexpected is logged and answered generically, and the
    upload is released whatever happens."""
    import gradio as gr

    resolved = None
    try:
        resolved = uploads.resolve(payload)
        if resolved is None:
            return None
        return work(*resolved)
    except InputRejected as exc:
        logger.info("Rejected input: %s", exc)
        raise gr.Error(str(exc), print_exception=False) from None
    except gr.Error:
        raise
    except Exception:
        logger.exception("Prediction failed")
        raise gr.Error(_GENERIC_FAILURE, print_exception=False) from None
    finally:
        if resolved is not None:
            uploads.discard(resolved[0])


def _input_column(view: _StudyView, default_methods: list[str]) -> tuple[list[Any], Any]:
    """File input, the examples right under it (visible in a short embedded frame), the settings and
    the Predict button."""
    import gradio as gr

    file_in = gr.File(label="CT slice: PNG, JPEG, TIFF or DICOM", file_types=_FILE_TYPES,
                      file_count="single", type="filepath", height=120)
    if view.examples:
        before = set(file_in.temp_files)
        gr.Examples(examples=[[str(p)] for p, _ in view.examples], inputs=[file_in],
                    example_labels=[label for _, label in view.examples],
                    label="Examples (phantom test images of each class, a DICOM CT slice)",
                    cache_examples=False, examples_per_page=len(view.examples))
        # Gradio copies examples into its cache without protecting them from delete_cache;
        # keep them (and never treat them as uploads to delete).
        file_in.keep_in_cache.update(set(file_in.temp_files) - before)
    window_in = gr.Dropdown(choices=view.window_choices, value=view.default_window,
                            label="DICOM window preset (raster images are already windowed)")
    model_in = gr.Dropdown(choices=view.models, value=view.default_model,
                           label="Model (refitted on the study; default: leaderboard best)")
    method_in = gr.Dropdown(choices=[(_METHOD_LABELS.get(m, m), m) for m in default_methods],
                            value=default_methods[0], label="Attribution method")
    run_btn = gr.Button("Predict", variant="primary")
    return [file_in, window_in, model_in, method_in], run_btn


def _output_column(view: _StudyView) -> list[Any]:
    """Decision Markdown (headline, OOD warning) above the probability bars (with the threshold bar)."""
    import gradio as gr

    decision_out = gr.Markdown(f"_{DISCLAIMER}_")
    bars = "Class probabilities"
    if len(view.classes) == 2:
        bars += f" and, last, the {threshold_entry(view.classes[1])}"
    label_out = gr.Label(label=bars, num_top_classes=len(view.classes) + 1, show_heading=False)
    return [label_out, decision_out]


def _picture_row() -> list[Any]:
    """The attribution picture and the model input, side by side across the page (>= 320 px each).

    The pictures carry their own title and caption (they survive fullscreen, download and a projector),
    so the components' floating labels, which would cover the title, are hidden.
    """
    import gradio as gr

    gr.Markdown("Attribution for the decided class · what the model saw. Both are the model's input "
                "enlarged by nearest-neighbour upsampling (each model pixel a block); the colour bar gives "
                "the map's scale.")
    with gr.Row(equal_height=True):
        overlay_out = gr.Image(label="Attribution for the decided class", show_label=False, format="png",
                               interactive=False, buttons=["fullscreen", "download"])
        seen_out = gr.Image(label="What the model saw", show_label=False, format="png", image_mode="RGB",
                            interactive=False, buttons=["fullscreen", "download"])
    return [overlay_out, seen_out]


def _wire_events(view: _StudyView, uploads: _Uploads, inputs: list[Any], outputs: list[Any], *,
                 run_btn: Any, api_btn: Any) -> None:
    """Register the ``/analyze`` and ``/predict`` endpoints and the model -> methods update."""
    import gradio as gr

    file_in, window_in, model_in, method_in = inputs
    label_out, decision_out, overlay_out, seen_out = outputs

    # Both handlers run with postprocess=False so that the gr.Label headline is the decision at the
    # study threshold rather than the argmax; images are post-processed here by their components.
    def image_payload(component: Any, array: np.ndarray | None) -> Any:
        return None if array is None else component.postprocess(array).model_dump()

    def analyze(image: Any, window: str, model: str, method: str) -> tuple[Any, str, Any, Any]:
        result = _run(view, uploads, image, window, model, method, explain=True)
        if result is None:
            return {}, f"_{DISCLAIMER}_", None, None
        return (_ui_label_payload(view.classes, result.probabilities, result.label, result.threshold),
                result.decision_md, image_payload(overlay_out, result.overlay),
                image_payload(seen_out, result.seen_picture))

    def predict(image: Any, window: str = view.default_window, model: str = view.default_model) -> Any:
        result = _run(view, uploads, image, window, model, NO_ATTRIBUTION, explain=False)
        if result is None:
            raise gr.Error("No file received.", print_exception=False)
        return _label_payload(result.probabilities, result.label)

    def methods_for(model: str) -> Any:
        if model not in view.models:
            return gr.update()
        methods = view.methods(model)
        return gr.update(choices=[(_METHOD_LABELS.get(m, m), m) for m in methods], value=methods[0])

    gr.on([run_btn.click, file_in.change], analyze, inputs=[file_in, window_in, model_in, method_in],
          outputs=[label_out, decision_out, overlay_out, seen_out], api_name="analyze",
          preprocess=False, postprocess=False)
    api_btn.click(predict, inputs=[file_in, window_in, model_in], outputs=[label_out], api_name="predict",
                  preprocess=False, postprocess=False)
    model_in.change(methods_for, inputs=[model_in], outputs=[method_in], api_visibility="private",
                    preprocess=False)


def _scan_tab(view: _StudyView) -> dict[str, Any]:
    """The "Whole scan" tab: file input, settings and button; verdict, slice strip, pictures, JSON answer."""
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=1):
            scan_in = gr.File(label="CT scan: a .zip of one DICOM series, or a NIfTI file (.nii, .nii.gz)",
                              file_types=_SCAN_TYPES, file_count="single", type="filepath", height=120)
            window_in = gr.Dropdown(choices=view.window_choices, value=view.default_window,
                                    label="Window preset applied to the scan's Hounsfield units")
            model_in = gr.Dropdown(choices=view.models, value=view.default_model,
                                   label="Scan model (refitted on the study; default: leaderboard best)")
            run_btn = gr.Button("Predict the scan", variant="primary")
        with gr.Column(scale=1):
            verdict_out = gr.Markdown(f"_{DISCLAIMER}_")
    strip_out = gr.Plot(label="Probability per slice", show_label=False)
    gallery_out = gr.Gallery(label="Attribution of the most suspicious slices (for the decided class)",
                             columns=TOP_SLICES, height="auto", object_fit="contain", format="png",
                             interactive=False)
    with gr.Accordion("The answer as JSON (what the /predict_scan API returns)", open=False):
        json_out = gr.JSON(label="Scan answer", show_label=False)
    api_btn = gr.Button(visible=False)  # carries the /predict_scan API endpoint
    return {"file": scan_in, "window": window_in, "model": model_in, "run": run_btn, "api": api_btn,
            "verdict": verdict_out, "strip": strip_out, "gallery": gallery_out, "json": json_out}


def _wire_scan_events(view: _StudyView, uploads: _Uploads, tab: Mapping[str, Any]) -> None:
    """Register the ``/analyze_scan`` (the tab) and ``/predict_scan`` (JSON only) endpoints."""
    import gradio as gr

    from ui import charts

    def page(path: Path, display: str, window: str, model: str) -> tuple[str, Any, Any, Any]:
        answer, md, pictures = _analyze_scan(view, path, display_name=display, window=window, model=model,
                                             pictures=True)
        strip = charts.slice_strip(answer.slice_scores, positive=answer.score_of, threshold=answer.threshold,
                                   suspicious=answer.suspicious, slice_indices=answer.slice_indices,
                                   title=f"{answer.score_name} per slice (most suspicious marked)")
        return md, strip, pictures, answer.to_dict()

    def analyze_scan(scan: Any, window: str, model: str) -> tuple[str, Any, Any, Any]:
        result = _guarded(uploads, scan, lambda path, display: page(path, display, window, model))
        return (f"_{DISCLAIMER}_", None, [], None) if result is None else result

    def predict_scan(scan: Any, window: str = view.default_window, model: str = view.default_model) -> Any:
        result = _guarded(uploads, scan, lambda path, display: _analyze_scan(
            view, path, display_name=display, window=window, model=model, pictures=False))
        if result is None:
            raise gr.Error("No file received.", print_exception=False)
        return result[0].to_dict()

    inputs = [tab["file"], tab["window"], tab["model"]]
    gr.on([tab["run"].click, tab["file"].change], analyze_scan, inputs=inputs,
          outputs=[tab["verdict"], tab["strip"], tab["gallery"], tab["json"]], api_name="analyze_scan",
          preprocess=False)
    tab["api"].click(predict_scan, inputs=inputs, outputs=[tab["json"]], api_name="predict_scan", preprocess=False)


def build_app(study_dir: str | Path | None = None, *, leaderboards_root: str | Path = DEFAULT_LEADERBOARDS) -> Any:
    """Build the Gradio Blocks of the live demo (without launching it).

    Args:
        study_dir: The study folder to serve; ``None`` picks the most recently updated study under
            ``leaderboards_root``.
        leaderboards_root: Folder of studies searched when ``study_dir`` is ``None``.

    Returns:
        A ``gr.Blocks`` with its queue configured. Launch it with :func:`launch` (or, when
        embedding, ``blocks.launch(max_file_size=max_file_bytes(), prevent_thread_lock=True, ...)``).

    Raises:
        ValueError: No study found, or the study is unreadable (``automl.results.StudyError``) or has
            no refitted model.
    """
    import gradio as gr

    chosen = _pick_study(study_dir, leaderboards_root)
    if chosen is None:
        raise ValueError(
            f"No study under {Path(leaderboards_root)}; run `python -m automl.search --preset demo` "
            "(or `python app.py`, which builds the demo study) first."
        )
    view = _study_view(chosen)
    _limit_torch_threads(CONCURRENCY_LIMIT)
    default_methods = view.methods(view.default_model)

    with gr.Blocks(title=f"StrokeCT AutoML: {view.study.name}", delete_cache=DELETE_CACHE,
                   analytics_enabled=False) as demo:
        gr.Markdown(
            f"# StrokeCT AutoML: live prediction\n"
            f"Study **{view.study.name}** · classes {', '.join(view.classes)} · models: "
            f"{', '.join(view.models)}.\n\n**{DISCLAIMER}** Uploaded files are deleted after the prediction."
        )
        with gr.Tab("One slice"):
            with gr.Row():
                with gr.Column(scale=1):
                    inputs, run_btn = _input_column(view, default_methods)
                with gr.Column(scale=1):
                    outputs = _output_column(view)
            outputs += _picture_row()
            api_btn = gr.Button(visible=False)  # carries the one-input /predict API endpoint
        with gr.Tab("Whole scan"):
            scan_tab = _scan_tab(view)

        uploads = _Uploads(demo, inputs[0])
        uploads.watch(scan_tab["file"])
        _wire_events(view, uploads, inputs, outputs, run_btn=run_btn, api_btn=api_btn)
        _wire_scan_events(view, uploads, scan_tab)

    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_MAX_SIZE)
    demo.strokect_study = view.study  # for callers (dashboard) and tests
    return demo


# ------------------------------------------------------------------------------------- launch
def _ensure_study(study_dir: str | Path | None, leaderboards_root: Path) -> Path:
    """The study to serve; builds the demo study from the phantom when none exists."""
    chosen = _pick_study(study_dir, leaderboards_root)
    if chosen is not None:
        return chosen
    from automl.search import SearchConfig, run_search

    logger.info("No study under %s: building the demo study from the synthetic phantom "
                "(first start only; a few minutes on 2 CPUs)...", leaderboards_root)
    config = SearchConfig(preset="demo", study="demo", leaderboards=str(leaderboards_root))
    path = Path(run_search(config))
    logger.info("Demo study ready: %s", path)
    return path


def launch(*, study_dir: str | Path | None = None, server_name: str | None = None,
           server_port: int | None = None, block: bool = True,
           leaderboards_root: str | Path = DEFAULT_LEADERBOARDS) -> Any:
    """Serve the Gradio app (``python app.py``).

    Args:
        study_dir: The study to serve; ``None``: the latest under ``leaderboards_root``, building the
            demo study first when there is none.
        server_name: Host; default ``$GRADIO_SERVER_NAME`` or ``127.0.0.1``.
        server_port: Port; default ``$GRADIO_SERVER_PORT`` or 7860.
        block: Block until interrupted (``False``: return once the server is up, e.g. in tests).
        leaderboards_root: Folder of studies.

    Returns:
        The launched ``gr.Blocks`` (``.local_url``; call ``.close()`` to stop it).
    """
    if block and not logging.getLogger().handlers:  # entry point (python app.py): show progress
        setup_logging(0)
    name, port = resolve_server(server_name, server_port)
    limit = max_file_bytes()
    study = _ensure_study(study_dir, Path(leaderboards_root))
    demo = build_app(study, leaderboards_root=leaderboards_root)
    view_study = demo.strokect_study
    best = view_study.best_model
    if best is not None:  # warm-up: the first visitor should not wait for the checkpoint load
        try:
            _PREDICTORS.get(view_study.model_dir(best))
        except Exception as exc:  # noqa: BLE001 - the request will report it properly
            logger.warning("Could not preload %s: %s", best, exc)
    # quiet: Gradio's prints include "To create a public link, set `share=True`", which this app never
    # does; the address is logged below instead
    demo.launch(server_name=name, server_port=port, share=False, max_file_size=limit, allowed_paths=[],
                prevent_thread_lock=True, show_error=False, quiet=True)
    logger.info("Serving study %s on %s (no share link; upload limit %.0f MB)", view_study.name,
                demo.local_url, limit / 2**20)
    if block:
        demo.block_thread()
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ui.gradio_app [--study DIR] [--host H] [--port P]``."""
    parser = argparse.ArgumentParser(prog="python -m ui.gradio_app", description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=None, help="study folder (default: latest, or build demo)")
    parser.add_argument("--leaderboards", type=Path, default=DEFAULT_LEADERBOARDS, help="folder of studies")
    parser.add_argument("--host", default=None, help="default $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default $GRADIO_SERVER_PORT or 7860")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    start_logging(args)
    launch(study_dir=args.study, server_name=args.host, server_port=args.port,
           leaderboards_root=args.leaderboards)


if __name__ == "__main__":
    main()
