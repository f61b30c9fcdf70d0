"""Export a trained deep model to ONNX, with its preprocessing metadata.

Usage:
    python -m models.export leaderboards/<study>/models/resnet18 resnet18.onnx [--opset 17] [--card FILE]

The ONNX graph takes ``input``: float32 ``(batch, 1, S, S)`` in ``[0, 1]`` — the same tensor the
PyTorch model takes (channel replication and normalisation are inside the graph) — and returns
``logits`` (``(batch, 1)`` binary, ``(batch, C)`` multiclass) and ``probabilities`` ``(batch, C)``.
The batch axis is dynamic. Every ``card.json`` field is stored in the model's ``metadata_props``
(values JSON-encoded; ``--card FILE`` also writes it as a JSON file), so a consumer can
reproduce the preprocessing (``data.load_image`` with the card's window -> ``data.resize_pad`` to
``image_size`` -> ``data.to_uint8`` -> ``/ 255``) and apply the card's ``threshold``.

Classical baselines are not exportable (they are small numpy pipelines; use the checkpoint).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from typing import Any
from pathlib import Path

import torch
from torch import nn

from data._files import atomic_write_json, atomic_writer
from data._log import add_logging_arguments, start_logging
from models._common import logits_to_probabilities
from models.predictor import Predictor, load_predictor

__all__ = ["export_onnx", "main"]

logger = logging.getLogger(__name__)


class _ExportWrapper(nn.Module):
    """model(x) -> (logits, probabilities)."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, logits_to_probabilities(logits, self.num_classes)


def _traced_proto(onnx: Any, wrapper: nn.Module, predictor: Predictor, opset: int) -> Any:
    """The checked ONNX model of ``wrapper`` (dynamic batch), with the predictor's card in its metadata."""
    import tempfile

    S = predictor.image_size
    with tempfile.TemporaryDirectory(prefix="strokect-onnx-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        traced = Path(tmp) / "model.onnx"
        # The TorchScript-based exporter: no onnxscript dependency, dynamic batch via dynamic_axes.
        torch.onnx.export(
            wrapper, (torch.rand(2, predictor.in_chans, S, S),), str(traced), dynamo=False, input_names=["input"],
            output_names=["logits", "probabilities"], opset_version=opset,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
        )
        proto = onnx.load(str(traced))
    proto.doc_string = (
        f"StrokeCT AutoML {predictor.card['model']} ({predictor.init}); input float32 (batch, {predictor.in_chans}, {S}, {S}) "
        f"in [0, 1]; classes {predictor.classes}."
    )
    del proto.metadata_props[:]
    for key, value in predictor.card.items():
        entry = proto.metadata_props.add()
        entry.key = str(key)
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    return proto


def export_onnx(predictor_or_folder: Predictor | str | Path, out_path: str | Path, *, opset: int = 17,
                card_path: str | Path | None = None) -> Path:
    """Export a deep model checkpoint to ONNX.

    Args:
        predictor_or_folder: A :class:`~models.predictor.Predictor` or a checkpoint folder.
        out_path: Target ``.onnx`` file, the only file written unless ``card_path`` is given.
        opset: ONNX opset version (>= 14).
        card_path: Optional file to write the model card to as JSON (it is in the ONNX metadata anyway).

    Returns:
        ``out_path``.

    Raises:
        ValueError: For a classical model, an invalid opset or checkpoint.
        ModuleNotFoundError: When the ``onnx`` package is not installed.
    """
    try:
        import onnx
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "ONNX export needs the onnx package, a dependency of strokect-automl: "
            "pip install -r requirements.txt (or pip install 'onnx>=1.16')."
        ) from err

    if isinstance(predictor_or_folder, Predictor):
        predictor = predictor_or_folder
    else:
        predictor = load_predictor(predictor_or_folder, device="cpu")
    if predictor.kind != "deep":
        raise ValueError(
            f"{predictor.card['model']!r} is a classical baseline; only deep models can be exported to ONNX."
        )
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset must be an integer >= 14, got {opset!r}.")
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise ValueError(f"out_path must end with .onnx, got {out_path}.")
    out_path.parent.mkdir(parents=True, exist_ok=True)

    model = predictor.model
    device = next(model.parameters()).device
    try:
        proto = _traced_proto(onnx, _ExportWrapper(model, predictor.num_classes).to("cpu").eval(), predictor, opset)
    finally:
        model.to(device)
    with atomic_writer(out_path, "wb") as handle:
        handle.write(proto.SerializeToString())
    if card_path is not None:
        atomic_write_json(predictor.card, card_path)
    logger.info("Exported %s to %s", predictor.card["model"], out_path)
    return out_path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="checkpoint folder (model.safetensors + card.json)")
    parser.add_argument("out", help="output .onnx file (the card is inside its metadata)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    parser.add_argument("--card", default=None, help="also write the model card to this JSON file")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    start_logging(args, default=-1)  # the output is the written path; -v for progress lines
    try:
        path = export_onnx(args.folder, args.out, opset=args.opset, card_path=args.card)
    except (ValueError, ModuleNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
