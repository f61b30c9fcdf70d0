"""Checkpoints and the predictor: a trained model as a folder, and that folder as ``predict(x)``.

A checkpoint folder holds

* ``model.safetensors``: the deep model's ``state_dict`` (normalisation buffers included) or, for a
  classical baseline, its :meth:`~models.classical.ClassicalModel.state_arrays`;
* ``card.json``: everything needed to rebuild and use the model, and to judge it (see :func:`save_checkpoint`);
* ``ood.safetensors`` (optional, written at refit time by :mod:`models.ood`): the training images'
  feature distribution and a calibrated distance threshold, for the out-of-distribution flag
  (:meth:`Predictor.ood_score`). Folders saved before it existed simply have none.

Nothing is pickled; loading never executes code from the folder.

Example:
    >>> import models
    >>> predictor = models.load_predictor("leaderboards/demo/models/resnet18")
    >>> predictor.predict("scan.dcm")
    {'label': 'stroke', 'probabilities': {'normal': 0.12, 'stroke': 0.88},
     'ood': {'distance': 3.1, 'threshold': 5.4, 'flagged': False}}

Preprocessing is exactly the training path: ``data.load_image`` (window from the card) ->
``data.resize_pad`` (the card's image size) -> ``data.to_uint8`` (the cache format) -> ``/ 255``, so a
live image and its cached training copy give bit-identical model inputs. Any image of at least 1x1
pixel is accepted (``resize_pad`` scales it to the model's size); what ``data.load_image`` rejects
(empty, truncated, not an image, too large, DICOM without pixels) raises :class:`InvalidInputError`.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data._files import (
    atomic_write_text,
    atomic_writer,
    json_clean,
    library_versions,
    read_json_object,
    usual_permissions,
)
from models._common import fuse_batchnorm_, logits_to_probabilities, pick_device, uint8_to_input

__all__ = [
    "CARD_FILE",
    "WEIGHTS_FILE",
    "InvalidInputError",
    "Predictor",
    "load_predictor",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FORMAT_VERSION = 1
_REQUIRED_CARD_KEYS = ("model", "kind", "init", "classes", "image_size")
_MODEL_OWNED_KEYS = ("model", "kind", "init", "num_classes", "image_size", "normalization")


class InvalidInputError(ValueError):
    """The input cannot be used as an image; the message is one human sentence for the UI."""


# --- saving -----------------------------------------------------------------------------------------------
def _model_card_fields(model: Any) -> dict[str, Any]:
    from models.classical import ClassicalModel

    if isinstance(model, ClassicalModel):
        return {
            "model": model.model_name,
            "kind": "classical",
            "init": model.init,
            "num_classes": model.num_classes,
            "image_size": model.image_size,
            "normalization": {"feature_size": model.feature_size, "scale": "x / 255"},
        }
    if isinstance(model, torch.nn.Module) and hasattr(model, "normalization") and hasattr(model, "model_name"):
        return {
            "model": model.model_name,
            "kind": "deep",
            "init": model.init,
            "num_classes": model.num_classes,
            "image_size": model.image_size,
            "normalization": model.normalization,
        }
    raise ValueError(
        f"save_checkpoint expects a model from models.create_model (StrokeNet or ClassicalModel), "
        f"got {type(model).__name__}."
    )


def _weights_bytes(model: Any, card: dict[str, Any]) -> bytes:
    """The model's state as safetensors bytes (torch tensors for deep models, numpy arrays otherwise)."""
    metadata = {"format": "pt" if card["kind"] == "deep" else "np", "model": card["model"]}
    if card["kind"] == "deep":
        from safetensors.torch import save

        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        return save(state, metadata=metadata)
    from safetensors.numpy import save as save_numpy

    return save_numpy({k: np.ascontiguousarray(v) for k, v in model.state_arrays().items()}, metadata=metadata)


def _check_classes(classes: Any, num_classes: int) -> None:
    """Raise unless ``classes`` is a list of ``num_classes`` distinct class names."""
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"card['classes'] must be a list of class names, got {classes!r}.")
    if len(classes) != num_classes:
        raise ValueError(
            f"card['classes'] has {len(classes)} names but the model has num_classes={num_classes}."
        )
    if len(set(classes)) != len(classes):
        raise ValueError(f"card['classes'] has duplicate names: {list(classes)}.")


def _full_card(card: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Validate the caller's ``card`` and complete it with the model's ``fields``, versions and defaults."""
    classes = card.get("classes")
    _check_classes(classes, fields["num_classes"])
    for key in _MODEL_OWNED_KEYS:
        if key in card and card[key] != fields[key]:
            logger.warning("card[%r]=%r replaced by the model's value %r", key, card[key], fields[key])
    threshold = float(card.get("threshold", 0.5) if card.get("threshold") is not None else 0.5)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"card['threshold'] must be in [0, 1], got {threshold}.")
    full_card = {
        "model": fields["model"],
        "kind": fields["kind"],
        "init": fields["init"],
        "classes": list(classes),
        "num_classes": fields["num_classes"],
        "image_size": fields["image_size"],
        "window": card.get("window", "brain"),
        "normalization": fields["normalization"],
        "train_config": card.get("train_config", {}),
        "metrics": card.get("metrics", {}),
        "threshold": threshold,
        "manifest_hash": card.get("manifest_hash"),
        "versions": {**library_versions(), **card.get("versions", {})},
        "created": card.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "format_version": CARD_FORMAT_VERSION,
    }
    for key, value in card.items():
        full_card.setdefault(key, value)
    if isinstance(full_card["window"], tuple):
        full_card["window"] = list(full_card["window"])
    return full_card


def _write_new_checkpoint(model: Any, folder: Path, full_card: dict[str, Any], card_text: str) -> None:
    """Assemble the checkpoint in a temporary sibling folder and rename it to ``folder``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        usual_permissions(tmp, folder=True)
        with atomic_writer(tmp / WEIGHTS_FILE, "wb") as handle:
            handle.write(_weights_bytes(model, full_card))
        atomic_write_text(card_text, tmp / CARD_FILE)
        os.replace(tmp, folder)  # the folder appears whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_checkpoint(model: Any, folder: Path, full_card: dict[str, Any], card_text: str) -> None:
    """Replace the checkpoint files of an existing ``folder``, weights first and the card last."""
    if not folder.is_dir():
        raise ValueError(f"Checkpoint folder {folder} exists and is not a folder.")
    weights = _weights_bytes(model, full_card)
    with atomic_writer(folder / WEIGHTS_FILE, "wb") as handle:
        handle.write(weights)
    atomic_write_text(card_text, folder / CARD_FILE)


def save_checkpoint(model: Any, folder: str | Path, *, card: dict[str, Any]) -> Path:
    """Save a model as ``folder/model.safetensors`` + ``folder/card.json``.

    Args:
        model: A deep model (:class:`~models._common.StrokeNet`) or a fitted
            :class:`~models.classical.ClassicalModel`.
        folder: Target folder (created; an existing checkpoint in it is replaced, other files are kept).
        card: Card fields. Required: ``classes`` (sorted, negative class first; ``len == num_classes``).
            Usual: ``window`` (name or ``[level, width]``, default ``"brain"``), ``threshold`` (decision
            threshold on ``P(classes[1])`` for binary tasks, default 0.5), ``train_config``, ``metrics``,
            ``manifest_hash``. Filled from the model (and overriding the card): ``model``, ``kind``,
            ``init``, ``num_classes``, ``image_size``, ``normalization``; added: ``versions``, ``created``,
            ``format_version``.

    Returns:
        The folder.

    Raises:
        ValueError: Bad model, or a card that is missing ``classes``, inconsistent, or not JSON serialisable.

    The write is atomic: a new folder is assembled next to the target and renamed into place; when
    the folder already exists, each file is written to a temporary name and ``os.replace``-d, weights
    first and ``card.json`` last, so a reader never sees a half-written file.
    """
    if not isinstance(card, dict):
        raise ValueError(f"card must be a dict, got {type(card).__name__}.")
    full_card = _full_card(card, _model_card_fields(model))
    try:
        card_text = json.dumps(json_clean(full_card), indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"card is not JSON serialisable: {err}") from None

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if not folder.exists():
        _write_new_checkpoint(model, folder, full_card, card_text)
    else:
        _replace_checkpoint(model, folder, full_card, card_text)
    logger.info("Saved %s checkpoint (%s) to %s", full_card["model"], full_card["init"], folder)
    return folder


# --- loading ----------------------------------------------------------------------------------------------
def _read_card(folder: Path) -> dict[str, Any]:
    path = folder / CARD_FILE
    card = read_json_object(path, missing=f"{path} is missing: {folder} is not a model folder saved by "
                                          "models.save_checkpoint.")
    missing = [k for k in _REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ValueError(f"{path} lacks the required key(s) {missing}.")
    classes = card["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{path}: 'classes' must be a list of at least 2 class names, got {classes!r}.")
    card.setdefault("num_classes", len(classes))
    if card["num_classes"] != len(classes):
        raise ValueError(f"{path}: num_classes={card['num_classes']} but {len(classes)} class names.")
    if card["kind"] not in ("deep", "classical"):
        raise ValueError(f"{path}: 'kind' must be 'deep' or 'classical', got {card['kind']!r}.")
    if not isinstance(card["image_size"], int) or card["image_size"] < 1:
        raise ValueError(f"{path}: 'image_size' must be a positive integer, got {card['image_size']!r}.")
    return card


def _read_weights(path: Path, kind: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path} is missing: the checkpoint has no weights.")
    try:
        if kind == "deep":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        from safetensors.numpy import load_file as load_numpy

        return load_numpy(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise ValueError(f"{path} cannot be read as safetensors ({type(err).__name__}: {err}); it is corrupt.") from None


def _rebuild_model(card: dict[str, Any], state: dict[str, Any], weights_path: Path) -> Any:
    from models._registry import build_for_checkpoint, get_model_info

    info = get_model_info(card["model"])
    # the card's kind is the file format: "deep" for any torch network (the frozen-feature lane included)
    if (info.kind == "classical") != (card["kind"] == "classical"):
        raise ValueError(f"{weights_path.parent / CARD_FILE}: model {card['model']!r} is {info.kind}, card says {card['kind']!r}.")
    if info.kind == "classical":
        from models.classical import ClassicalModel

        try:
            model = ClassicalModel.from_state_arrays(state)
        except ValueError as err:
            raise ValueError(f"{weights_path}: {err}") from None
        if (model.model_name, model.num_classes, model.image_size) != (card["model"], card["num_classes"], card["image_size"]):
            raise ValueError(f"{weights_path} does not match {CARD_FILE} (model, classes or image size differ).")
        return model
    model = build_for_checkpoint(
        card["model"], num_classes=card["num_classes"], image_size=card["image_size"], init=card["init"],
        in_chans=_card_channels(card),
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{weights_path} does not fit a {card['model']} ({card['init']}) model: {first_line}") from None
    return model.eval()


def _is_slice_reference(x: str | os.PathLike[str]) -> bool:
    """Whether ``x`` names slice ``k`` of an existing NIfTI file (``"scan.nii.gz#k"``, a manifest row)."""
    from data._volume_io import split_slice_ref

    volume_file, index = split_slice_ref(os.fspath(x))
    return index is not None and Path(volume_file).is_file()


def _card_channels(card: dict[str, Any]) -> int:
    """Input channels of a saved model: one per window of the card's window (set)."""
    import data

    window = card.get("window") or "brain"
    return len(data.parse_windows(tuple(window) if isinstance(window, list) and len(window) == 2
                                  and not isinstance(window[0], str) else window))


def load_predictor(folder: str | Path, *, device: str | torch.device = "auto") -> Predictor:
    """Load a checkpoint folder written by :func:`save_checkpoint`.

    Args:
        folder: The checkpoint folder.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` (see :func:`models.pick_device`).

    Raises:
        ValueError: The folder, ``card.json`` or ``model.safetensors`` is missing or corrupt, or
            ``ood.safetensors`` is present but corrupt (the message names the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Model folder {folder} does not exist.")
    card = _read_card(folder)
    weights_path = folder / WEIGHTS_FILE
    state = _read_weights(weights_path, card["kind"])
    model = _rebuild_model(card, state, weights_path)
    from models.ood import load_reference

    return Predictor(model, card, device=device, ood=load_reference(folder))


# --- predicting -------------------------------------------------------------------------------------------
def _registry_info(name: str) -> Any:
    from models._registry import get_model_info

    try:
        return get_model_info(name)
    except ValueError:
        return None


def _describe(x: Any) -> str:
    if isinstance(x, (str, os.PathLike)):
        return f"'{Path(x).name}'"
    if isinstance(x, (bytes, bytearray, memoryview)):
        return f"the uploaded data ({len(x)} bytes)"
    return f"the {type(x).__name__} input"


class Predictor:
    """A loaded model that turns any image source into class probabilities.

    Args:
        model: The rebuilt model (deep or classical).
        card: The checkpoint card.
        device: Torch device preference for deep models.
        ood: The out-of-distribution reference (:class:`models.ood.OODReference`) or ``None``.

    Attributes:
        model, card: As given. classes: Class names. image_size: Model input side ``S``.
        window: CT window for DICOM input (name or ``(level, width)``). threshold: Binary decision threshold
        on ``P(classes[1])``. kind: ``"deep"`` or ``"classical"``. init: The model's init. device: Torch device.
        channels_last: Whether the weights were converted to ``torch.channels_last`` (convolutional
        models, :attr:`models.ModelInfo.prefers_channels_last`; same outputs, faster convolutions).
        fused_batchnorm: How many BatchNorm layers were folded into their convolutions
        (:func:`models._common.fuse_batchnorm_`; the small CNNs' blocks and timm ResNets; same outputs up to float rounding).
        default_batch_size: Images per forward pass when a call does not say.
        ood: The out-of-distribution reference, ``None`` for model folders saved without one.

    The predictor owns ``model``: it is put in eval mode, frozen, and may be fused and converted in place.
    """

    def __init__(self, model: Any, card: dict[str, Any], *, device: str | torch.device = "auto",
                 ood: Any = None) -> None:
        self.card = card
        self.ood = ood
        self.classes: list[str] = list(card["classes"])
        self.num_classes = len(self.classes)
        self.image_size: int = int(card["image_size"])
        window = card.get("window") or "brain"
        self.window: str | tuple[float, float] = tuple(window) if isinstance(window, list) else window
        #: Input channels: 1, or one per window of a window set (``data.parse_windows``).
        self.in_chans: int = _card_channels(card)
        threshold = card.get("threshold")
        self.threshold: float = 0.5 if threshold is None else float(threshold)
        self.kind: str = card["kind"]
        self.init: str = card.get("init", "")
        self.device = pick_device(device)
        self.channels_last = False
        self.fused_batchnorm = 0
        if self.kind == "deep":
            model = model.to(self.device).eval().requires_grad_(False)  # inference only: no weight gradients
            self.fused_batchnorm = fuse_batchnorm_(model)
            info = _registry_info(card["model"])
            if info is not None and info.prefers_channels_last and self.device.type in ("cpu", "cuda"):
                model = model.to(memory_format=torch.channels_last)
                self.channels_last = True
        self.model = model
        #: Images per forward pass when ``batch_size`` is not given: 8 for convolutional models on the
        #: CPU (measured 1.1-1.4x faster than 32 at a time, whose activations overflow the caches), else 32.
        self.default_batch_size = 8 if self.channels_last and self.device.type == "cpu" else 32

    def __repr__(self) -> str:
        return (
            f"Predictor(model={self.card['model']!r}, init={self.init!r}, classes={self.classes}, "
            f"image_size={self.image_size}, window={self.window!r}, threshold={self.threshold})"
        )

    # --- input --------------------------------------------------------------------------------------------
    def preprocess_uint8(self, x: Any, *, window: str | tuple[float, float] | None = None) -> np.ndarray:
        """Decode, window and resize one input to the cache format: uint8 ``(S, S)`` (``(C, S, S)`` for a window set).

        Raises:
            InvalidInputError: If the input cannot be read as an image.
        """
        import data

        if isinstance(x, (bytearray, memoryview)):
            x = bytes(x)
        if isinstance(x, io.IOBase):
            try:
                x = x.read()
            except (OSError, ValueError) as err:
                raise InvalidInputError(f"Could not read the uploaded file: {err}.") from None
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if isinstance(x, (str, os.PathLike)) and not Path(x).is_file() and not _is_slice_reference(x):
            raise InvalidInputError(f"No such file: {Path(x).name}.")
        try:
            window = window if window is not None else self.window
            if self.in_chans == 1:
                return data.to_uint8(data.resize_pad(data.load_image(x, window=window), self.image_size))
            channels = data.load_channels(x, window=window)
            if len(channels) != self.in_chans:
                raise InvalidInputError(f"window {window!r} gives {len(channels)} channels; this model takes "
                                        f"{self.in_chans} ({self.window!r}).")
            return np.stack([data.to_uint8(data.resize_pad(c, self.image_size)) for c in channels])
        except data.BadImageError as err:
            reason = getattr(err, "reason", None) or str(err)
            raise InvalidInputError(f"Could not read {_describe(x)} as an image: {reason}.") from None
        except InvalidInputError:
            raise
        except (ValueError, TypeError, OSError, MemoryError, AttributeError, KeyError, IndexError) as err:
            raise InvalidInputError(
                f"Could not read {_describe(x)} as an image ({type(err).__name__}: {err})."
            ) from None

    def preprocess(self, x: Any, *, window: str | tuple[float, float] | None = None) -> torch.Tensor:
        """One input -> the exact model input: float32 ``(1, C, S, S)`` in ``[0, 1]`` (on the CPU; C = 1 but for a window set).

        Args:
            x: Path, bytes, ``PIL.Image``, numpy array or ``pydicom.Dataset``.
            window: CT window for DICOM (name or ``(level, width)``); default: the card's window.

        Raises:
            InvalidInputError: If the input cannot be read as an image.
        """
        pixels = self.preprocess_uint8(x, window=window)
        return uint8_to_input(torch.from_numpy(pixels)[None])

    def preprocess_volume(self, hu: np.ndarray, *, window: str | tuple[float, float] | None = None) -> np.ndarray:
        """A CT volume in Hounsfield units -> the model inputs of its slices, uint8 ``(K, S, S)``
        (``(K, C, S, S)`` for a model of a window set).

        Each slice takes the training path of a DICOM slice: ``data.apply_window`` (the card's window,
        or ``window``; each window of a window set) -> ``data.resize_pad`` (``S``) -> ``data.to_uint8``.

        Args:
            hu: float ``(K, H, W)`` HU, ``K >= 1`` (e.g. ``data.read_volume(...).hu``).
            window: CT window (name or ``(level, width)``); default: the card's window.

        Raises:
            ValueError: If ``hu`` is not a 3-D float array with at least one slice, or holds NaN/inf.
        """
        import data

        arr = np.asarray(hu)
        if arr.ndim != 3 or min(arr.shape) < 1:
            raise ValueError(f"hu must be a (K, H, W) volume with K >= 1 slices, got shape {arr.shape}.")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"hu must hold floating-point Hounsfield units, got dtype {arr.dtype}.")
        if not np.isfinite(arr).all():
            raise ValueError("hu holds NaN or infinite values.")
        windows = data.parse_windows(window if window is not None else self.window)
        if len(windows) != self.in_chans:
            raise ValueError(f"window {window!r} gives {len(windows)} channel(s); this model takes {self.in_chans}.")
        pixels = np.stack([[data.to_uint8(data.resize_pad(data.apply_window(s, w), self.image_size)) for w in windows]
                           for s in arr])
        return pixels[:, 0] if self.in_chans == 1 else pixels

    def predict_volume(self, hu: np.ndarray, *, window: str | tuple[float, float] | None = None,
                       batch_size: int | None = None) -> np.ndarray:
        """Slice probabilities ``(K, C)`` of a CT volume in Hounsfield units (:meth:`preprocess_volume`,
        then :meth:`predict_proba` in batches of ``batch_size``).

        Raises:
            ValueError: As :meth:`preprocess_volume`, or on a bad ``batch_size``.
        """
        batch_size = self._batch_size(batch_size)
        return self.predict_proba(self.preprocess_volume(hu, window=window), batch_size=batch_size)

    # --- inference ----------------------------------------------------------------------------------------
    def predict_proba(self, images: np.ndarray | torch.Tensor, *, batch_size: int | None = None) -> np.ndarray:
        """Probabilities ``(N, C)`` for already preprocessed images.

        Args:
            images: uint8 ``(N, S, S)`` (the cache format) or float ``(N, 1, S, S)`` in ``[0, 1]``.
            batch_size: Images per forward pass; ``None``: :attr:`default_batch_size`.

        Raises:
            ValueError: On a wrong shape or batch size.
        """
        batch_size = self._batch_size(batch_size)
        arr, as_uint8 = self._batch(images)
        if self.kind == "classical":
            if not as_uint8:
                arr = self._to_uint8(arr)
            return np.asarray(self.model.predict_proba(arr), dtype=np.float64)
        out = []
        with torch.inference_mode():
            for start in range(0, len(arr), batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(arr[start : start + batch_size]))
                x = uint8_to_input(chunk) if as_uint8 else chunk.to(torch.float32)
                logits = self.model(x.to(self.device))
                out.append(logits_to_probabilities(logits.float(), self.num_classes).cpu().numpy())
        if not out:
            return np.zeros((0, self.num_classes), dtype=np.float64)
        return np.concatenate(out).astype(np.float64)

    def _batch_size(self, batch_size: int | None) -> int:
        if batch_size is None:
            return self.default_batch_size
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        return batch_size

    def _batch(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, bool]:
        """``(array, is_uint8)`` of preprocessed images; raises ValueError on another shape."""
        S, C = self.image_size, self.in_chans
        arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        cache_shape = (S, S) if C == 1 else (C, S, S)
        if tuple(arr.shape[1:]) == cache_shape and arr.dtype == np.uint8:
            return arr, True
        if arr.ndim == 4 and tuple(arr.shape[1:]) == (C, S, S):
            return arr, False
        raise ValueError(f"images must be uint8 (N, {', '.join(map(str, cache_shape))}) or float (N, {C}, {S}, {S}), "
                         f"got {tuple(arr.shape)}.")

    def _to_uint8(self, arr: np.ndarray) -> np.ndarray:
        """Float model input ``(N, C, S, S)`` in [0, 1] -> the cache format."""
        pixels = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        return pixels[:, 0] if self.in_chans == 1 else pixels

    def ood_distances(self, images: np.ndarray | torch.Tensor, *, batch_size: int | None = None) -> np.ndarray:
        """Distances ``(N,)`` of preprocessed images from the training images (see :mod:`models.ood`).

        Args:
            images: uint8 ``(N, S, S)`` or float ``(N, 1, S, S)`` in ``[0, 1]`` (as for :meth:`predict_proba`).
            batch_size: Images per forward pass; ``None``: :attr:`default_batch_size`.

        Raises:
            ValueError: On a wrong shape, or when the model folder has no reference (``ood is None``).
        """
        from models.ood import image_statistics, model_features

        if self.ood is None:
            raise ValueError(f"{self.card['model']} has no out-of-distribution reference (a model folder saved "
                             "before the check existed); refit it to get one.")
        arr, as_uint8 = self._batch(images)
        if not as_uint8:
            arr = self._to_uint8(arr)
        if len(arr) == 0:
            return np.zeros(0)
        features = model_features(self.model, arr, batch_size=self._batch_size(batch_size))
        return self.ood.distances(features, image_statistics(arr))

    def ood_score(self, x: Any, *, window: str | tuple[float, float] | None = None) -> Any:
        """One input's distance from the training images, the threshold, and whether it is above it.

        Args:
            x: Anything :meth:`preprocess` accepts, or a ``torch.Tensor`` that already is the model
                input (``(1, 1, S, S)`` float in ``[0, 1]``, what :meth:`preprocess` returns).
            window: CT window for DICOM input; default: the card's window.

        Returns:
            ``models.ood.OODScore(distance, threshold, flagged)``, or ``None`` when the model folder
            has no reference (saved before the check existed).

        Raises:
            InvalidInputError: If the input cannot be read as an image.
        """
        if self.ood is None:
            return None
        images = x if isinstance(x, torch.Tensor) else self.preprocess_uint8(x, window=window)[None]
        return self.ood.score(self.ood_distances(images)[0])

    def _predict_pixels(self, pixels: np.ndarray, batch_size: int | None = None) -> tuple[
            np.ndarray, list[dict[str, Any] | None]]:
        """Probabilities and out-of-distribution entries of preprocessed images: for a deep model with a
        reference both come from one forward pass per batch (the hook that reads the features sees the
        pass that gives the logits), so the check costs no second pass."""
        if self.ood is None or self.kind != "deep" or len(pixels) == 0:
            return self.predict_proba(pixels, batch_size=batch_size), self._ood_entries(pixels)
        from models.ood import image_statistics, model_features

        features, logits = model_features(self.model, self._batch(pixels)[0], batch_size=self._batch_size(batch_size),
                                          with_logits=True)
        probs = logits_to_probabilities(logits, self.num_classes).numpy().astype(np.float64)
        distances = self.ood.distances(features, image_statistics(pixels))
        return probs, [self.ood.score(d)._asdict() for d in distances]

    def _ood_entries(self, pixels: np.ndarray) -> list[dict[str, Any] | None]:
        if self.ood is None:
            return [None] * len(pixels)
        return [self.ood.score(d)._asdict() for d in self.ood_distances(pixels)]

    def _result(self, probabilities: np.ndarray, ood: dict[str, Any] | None = None) -> dict[str, Any]:
        probs = {c: float(p) for c, p in zip(self.classes, probabilities)}
        if self.num_classes == 2:
            label = self.classes[1] if probabilities[1] >= self.threshold else self.classes[0]
        else:
            label = self.classes[int(np.argmax(probabilities))]
        return {"label": label, "probabilities": probs, "ood": ood}

    def predict(self, x: Any, *, window: str | tuple[float, float] | None = None) -> dict[str, Any]:
        """Classify one image.

        Args:
            x: Path, bytes, ``PIL.Image``, numpy array or ``pydicom.Dataset``.
            window: CT window for DICOM input; default: the card's window.

        Returns:
            ``{"label": str, "probabilities": {class: float}, "ood": {"distance", "threshold", "flagged"} | None}``;
            a binary label is ``classes[1]`` when ``P(classes[1]) >= threshold``; ``ood`` is ``None``
            when the model folder has no out-of-distribution reference (see :meth:`ood_score`).

        Raises:
            InvalidInputError: If the input cannot be read as an image.
        """
        pixels = self.preprocess_uint8(x, window=window)[None]
        probs, ood = self._predict_pixels(pixels)
        return self._result(probs[0], ood[0])

    def predict_many(
        self,
        xs: Iterable[Any],
        *,
        batch_size: int | None = None,
        window: str | tuple[float, float] | None = None,
    ) -> list[dict[str, Any]]:
        """Classify many images, decoded one by one and run through the model in batches.

        ``batch_size``: images per forward pass (``None``: :attr:`default_batch_size`). Each result is
        as for :meth:`predict`.

        Raises:
            InvalidInputError: If any input cannot be read (the message says which one, 0-based).
        """
        if isinstance(xs, (str, bytes, os.PathLike, np.ndarray)):
            raise ValueError("predict_many expects a list of inputs; use predict() for one image and predict_proba() for preprocessed arrays.")
        items = list(xs)
        pixels = []
        for i, x in enumerate(items):
            try:
                pixels.append(self.preprocess_uint8(x, window=window))
            except InvalidInputError as err:
                raise InvalidInputError(f"Input {i}: {err}") from None
        if not pixels:
            return []
        batch = np.stack(pixels)
        probabilities, oods = self._predict_pixels(batch, batch_size)
        return [self._result(p, o) for p, o in zip(probabilities, oods)]
