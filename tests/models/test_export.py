"""ONNX export: same probabilities as PyTorch, dynamic batch, card metadata inside, no stray files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models.export import export_onnx, main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

S = 64


def _checkpoint(tmp_path: Path, name: str, num_classes: int = 2) -> Path:
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=num_classes, image_size=S)
    # a training step so BatchNorm running statistics are not the identity
    model.train()
    model(torch.rand(4, 1, S, S)).sum().backward()
    model.eval()
    classes = ["normal", "stroke"] if num_classes == 2 else ["hemorrhagic", "ischemic", "normal"]
    return models.save_checkpoint(model, tmp_path / name, card={"classes": classes, "threshold": 0.42,
                                                                  "window": "stroke"})


@pytest.mark.parametrize(
    ("name", "num_classes"),
    [
        ("simple_cnn", 2),
        ("resnet18", 2),
        ("simple_cnn", 3),
        pytest.param("vit_tiny", 3, marks=pytest.mark.slow),
        pytest.param("efficientnet_b0", 2, marks=pytest.mark.slow),
        pytest.param("efficientnet_lite0", 2, marks=pytest.mark.slow),  # TF 'same' padding
    ],
)
def test_onnx_matches_pytorch(tmp_path: Path, name: str, num_classes: int) -> None:
    folder = _checkpoint(tmp_path, name, num_classes)
    predictor = models.load_predictor(folder, device="cpu")
    out = export_onnx(predictor, tmp_path / "export" / f"{name}.onnx")
    assert out == tmp_path / "export" / f"{name}.onnx" and out.is_file()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    rng = np.random.default_rng(0)
    for batch in (1, 5):  # the batch axis is dynamic
        X = rng.integers(0, 256, (batch, S, S)).astype(np.uint8)
        x = torch.from_numpy(X).float().div(255.0)[:, None].numpy()
        logits, probs = session.run(None, {"input": x})
        assert logits.shape == (batch, 1 if num_classes == 2 else num_classes)
        np.testing.assert_allclose(probs, predictor.predict_proba(X), rtol=0, atol=1e-4)


def test_onnx_carries_the_card(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path, "simple_cnn")
    out = export_onnx(folder, tmp_path / "out" / "model.onnx", opset=17, card_path=tmp_path / "card" / "c.json")
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 17
    meta = {p.key: p.value for p in proto.metadata_props}
    card = json.loads((folder / "card.json").read_text())
    assert set(meta) == set(card)
    assert json.loads(meta["classes"]) == ["normal", "stroke"]
    assert json.loads(meta["threshold"]) == 0.42 and meta["window"] == "stroke"
    assert json.loads(meta["normalization"]) == card["normalization"]
    assert json.loads((tmp_path / "card" / "c.json").read_text()) == card
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # nothing else beside the export


def test_classical_models_are_not_exportable(tmp_path: Path) -> None:
    model = models.create_model("logreg", num_classes=2, image_size=32)
    model.fit(np.random.default_rng(0).integers(0, 256, (8, 32, 32)).astype(np.uint8), np.arange(8) % 2)
    folder = models.save_checkpoint(model, tmp_path / "logreg", card={"classes": ["a", "b"]})
    with pytest.raises(ValueError, match="classical"):
        export_onnx(folder, tmp_path / "x.onnx")


@pytest.mark.parametrize(("out", "opset", "match"), [("x.onnx", 9, "opset"), ("x.pt", 17, r"\.onnx")])
def test_export_validation(tmp_path: Path, out: str, opset: int, match: str) -> None:
    folder = _checkpoint(tmp_path, "simple_cnn")
    with pytest.raises(ValueError, match=match):
        export_onnx(folder, tmp_path / out, opset=opset)
    assert not (tmp_path / out).exists()


def test_cli_writes_only_where_told_and_round_trips_through_onnx_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's `python -m models.export FOLDER out.onnx`, run in an empty folder: one file appears,
    and ONNX Runtime fed the predictor's own preprocessing gives the predictor's probabilities."""
    folder = _checkpoint(tmp_path, "simple_cnn")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main([str(folder), "cli.onnx"]) == 0
    assert sorted(p.name for p in work.iterdir()) == ["cli.onnx"]
    assert main([str(folder), "cli2.onnx", "--card", "cli2.card.json"]) == 0
    assert sorted(p.name for p in work.iterdir()) == ["cli.onnx", "cli2.card.json", "cli2.onnx"]

    from PIL import Image

    predictor = models.load_predictor(folder, device="cpu")
    session = ort.InferenceSession(str(work / "cli.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    worst = 0.0
    for i, size in enumerate([(S, S), (90, 70), (40, 128)]):  # resize/pad happens in the shared preprocessing
        path = tmp_path / f"slice{i}.png"
        Image.fromarray(rng.integers(0, 256, size).astype(np.uint8)).save(path)
        expected = predictor.predict(path)["probabilities"]
        _, probs = session.run(None, {"input": predictor.preprocess(path).cpu().numpy().astype(np.float32)})
        worst = max(worst, float(np.abs(probs[0] - [expected[c] for c in predictor.classes]).max()))
    assert worst < 1e-4, worst

    assert main([str(tmp_path / "nowhere"), str(tmp_path / "bad.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_onnx_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = _checkpoint(tmp_path, "simple_cnn")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError, match=r"needs the onnx package.*pip install"):
        export_onnx(folder, tmp_path / "x.onnx")
    assert main([str(folder), str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ONNX export needs the onnx package") and "\n" not in err
    assert not (tmp_path / "x.onnx").exists()
