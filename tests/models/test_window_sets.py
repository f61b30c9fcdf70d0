"""Models of a window set: 3 input channels (one per CT window) through build, predictor, attribution, export."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from models.attribution import explain
from tests.data._volume_files import head_volume, write_series


@pytest.mark.parametrize("name", ["simple_cnn", "tiny_cnn", "resnet18", "vit_tiny"])
def test_models_from_scratch_are_built_for_three_channels(name):
    size = 32
    net = models.create_model(name, num_classes=2, image_size=size, pretrained="no", in_chans=3)
    assert net.in_chans == 3 and net.normalization["in_chans"] == 3
    assert net(torch.rand(2, 3, size, size)).shape == (2, 1)
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\) or \(B, 3, S, S\)"):
        net(torch.rand(2, 2, size, size))
    grey = models.create_model(name, num_classes=2, image_size=size, pretrained="no")
    assert grey.in_chans == 1


def test_pretrained_backbones_take_grey_and_window_sets():
    net = models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained="yes", in_chans=3)
    net.eval()
    grey = torch.rand(1, 1, 32, 32)
    assert torch.allclose(net(grey), net(grey.expand(-1, 3, -1, -1)))


def test_classical_pixels_of_every_window_are_features():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 3, 16, 16), dtype=np.uint8)
    y = np.array([0, 1] * 6)
    model = models.create_model("logreg", num_classes=2, image_size=16, in_chans=3, feature_size=8).fit(X, y)
    assert model.pipeline.named_steps["scaler"].mean_.shape == (3 * 64,)
    assert model.predict_proba(X).shape == (12, 2)


def test_bad_in_chans_is_refused():
    with pytest.raises(ValueError, match="in_chans"):
        models.create_model("simple_cnn", num_classes=2, image_size=32, in_chans=2)


def test_window_set_predictor_round_trip(tmp_path):
    net = models.create_model("simple_cnn", num_classes=2, image_size=32, in_chans=3)
    folder = models.save_checkpoint(net, tmp_path / "m", card={"classes": ["Normal", "Stroke"], "window": "ich", "threshold": 0.5})
    predictor = models.load_predictor(folder)
    assert predictor.in_chans == 3
    dcm = write_series(tmp_path / "s", head_volume(2, size=40, lesion=True), patient="P", uid="1.2.7")[0]
    x = predictor.preprocess(dcm)
    assert x.shape == (1, 3, 32, 32) and not torch.allclose(x[0, 0], x[0, 2])
    pixels = predictor.preprocess_uint8(dcm)
    np.testing.assert_allclose(predictor.predict_proba(pixels[None]), predictor.predict_proba(x), atol=1e-5)
    result = predictor.predict(dcm)
    assert set(result["probabilities"]) == {"Normal", "Stroke"}
    for method in ("grad_cam", "integrated_gradients"):
        attribution = explain(predictor, dcm, method=method)
        assert attribution.heatmap.shape == (32, 32) and attribution.image.shape == (32, 32)
    from models.export import export_onnx
    import onnxruntime as ort

    path = export_onnx(predictor, tmp_path / "m.onnx")
    onnx_probs = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[1]
    np.testing.assert_allclose(onnx_probs, predictor.predict_proba(x), atol=1e-5)
