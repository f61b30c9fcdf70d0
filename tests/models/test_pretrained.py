"""ImageNet weights from local files, the hub cache and a (patched) hub download; clear errors without them.

No test reaches the network: the download is proved by patching the function timm fetches files with
(``timm.models._hub.hf_hub_download``) to serve a file the test saved.
"""
from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import models
from models import _pretrained
from models._pretrained import find_pretrained_file, hub_reachable

_REAL_CREATE_CONNECTION = socket.create_connection
_REAL_CONNECT = socket.socket.connect


@pytest.fixture(autouse=True)
def _offline_and_empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No weights anywhere but where a test puts them, and any network attempt fails loudly."""
    monkeypatch.delenv("STROKECT_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def _write_weights(folder: Path, timm_name: str, filename: str | None = None) -> dict[str, torch.Tensor]:
    """Save a randomly initialised 1000-class timm model as if it were the ImageNet checkpoint."""
    torch.manual_seed(7)
    state = {k: v.contiguous() for k, v in timm.create_model(timm_name, pretrained=False).state_dict().items()}
    path = folder / (filename or f"{timm_name}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


def _assert_backbone_matches(model: torch.nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...]) -> None:
    loaded = model.backbone.state_dict()
    compared = 0
    for key, value in loaded.items():
        if key.startswith(skip):
            continue
        assert torch.equal(value, state[key]), key
        compared += 1
    assert compared > 10


@pytest.mark.parametrize(
    ("name", "timm_name", "image_size", "skip"),
    [
        ("resnet18", "resnet18", 32, ("fc.",)),
        # a 32 px ViT: the 14x14 position embedding is resampled to 2x2, so it differs by design
        ("vit_tiny", "vit_tiny_patch16_224", 32, ("head.", "pos_embed")),
    ],
)
def test_pretrained_yes_loads_local_weights(
    tmp_path: Path, name: str, timm_name: str, image_size: int, skip: tuple[str, ...]
) -> None:
    weights_dir = tmp_path / "weights"
    state = _write_weights(weights_dir, timm_name)
    model = models.create_model(name, num_classes=3, image_size=image_size, pretrained="yes", weights_dir=weights_dir)
    assert model.init == "imagenet:local" and models.is_pretrained_init(model.init)
    assert model.normalization["in_chans"] == 3
    cfg_mean = [round(v, 6) for v in timm.models.get_pretrained_cfg(timm_name).mean]
    assert model.normalization["mean"] == pytest.approx(cfg_mean)
    _assert_backbone_matches(model, state, skip)
    # the 1000-class head was replaced by a fresh 3-class one
    assert model.head().weight.shape[0] == 3
    assert model(torch.rand(2, 1, image_size, image_size)).shape == (2, 3)


def test_grey_input_is_replicated_and_imagenet_normalised(tmp_path: Path) -> None:
    _write_weights(tmp_path, "resnet18")
    model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes", weights_dir=tmp_path)
    model.eval()
    x = torch.rand(2, 1, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.backbone((x.repeat(1, 3, 1, 1) - mean) / std))


@pytest.mark.parametrize("filename", ["resnet18.pth", "resnet18.a1_in1k.safetensors", "resnet18/model.safetensors"])
def test_weight_file_variants_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filename: str) -> None:
    state = _write_weights(tmp_path / "env-weights", "resnet18", filename)
    monkeypatch.setenv("STROKECT_WEIGHTS", str(tmp_path / "env-weights"))
    assert find_pretrained_file("resnet18") == tmp_path / "env-weights" / filename
    model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes")
    assert model.init == "imagenet:local"
    _assert_backbone_matches(model, state, ("fc.",))


def test_weights_dir_wins_over_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_weights(tmp_path / "a", "resnet18")
    _write_weights(tmp_path / "b", "resnet18")
    monkeypatch.setenv("STROKECT_WEIGHTS", str(tmp_path / "b"))
    assert find_pretrained_file("resnet18", tmp_path / "a") == tmp_path / "a" / "resnet18.safetensors"


def test_hugging_face_cache_is_used_offline(tmp_path: Path) -> None:
    repo = tmp_path / "hf-home" / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    state = _write_weights(repo / "snapshots" / "abc123", "resnet18", "model.safetensors")
    model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes")
    assert model.init == "imagenet:hub"
    _assert_backbone_matches(model, state, ("fc.",))


@pytest.mark.parametrize(
    ("name", "timm_tag"),
    [("resnet18", "resnet18.a1_in1k"), ("vit_small", "vit_small_patch16_224.augreg_in21k_ft_in1k")],
)
def test_pretrained_yes_without_weights_raises_one_clear_sentence(name: str, timm_tag: str) -> None:
    with pytest.raises(models.PretrainedWeightsUnavailable) as excinfo:
        models.create_model(name, num_classes=2, image_size=32, pretrained="yes")
    message = str(excinfo.value)
    assert isinstance(excinfo.value, RuntimeError)
    assert message.startswith(f"No ImageNet weights for {name} (timm '{timm_tag}')")
    timm_name = models.get_model_info(name).timm_name
    assert f"{timm_name}.safetensors" in message and "$STROKECT_WEIGHTS" in message and "--weights-dir" in message
    assert "--pretrained auto/no" in message
    assert "\n" not in message and message.endswith(".") and ". " not in message  # one sentence


def test_pretrained_auto_without_weights_falls_back_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models"):
        model = models.create_model("efficientnet_b0", num_classes=2, image_size=32, pretrained="auto")
    assert model.init == "random"
    assert model.normalization == {"mean": [0.5], "std": [0.25], "in_chans": 1}
    assert any("Falling back to random init" in r.getMessage() for r in caplog.records)


def test_pretrained_auto_with_weights_uses_them(tmp_path: Path) -> None:
    _write_weights(tmp_path, "resnet18")
    model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="auto", weights_dir=tmp_path)
    assert model.init == "imagenet:local"


def test_corrupt_weight_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "resnet18.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(models.PretrainedWeightsUnavailable, match="resnet18.safetensors"):
        models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes", weights_dir=tmp_path)


def test_missing_weights_dir_is_ignored_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models"):
        assert find_pretrained_file("resnet18", tmp_path / "nope") is None
    assert any("does not exist" in r.getMessage() for r in caplog.records)


def test_is_pretrained_init() -> None:
    for init in ("imagenet:hub", "imagenet:local", "imagenet:package", "imagenet"):
        assert models.is_pretrained_init(init)
    for init in ("random", "none", "", None, "imagenet:elsewhere", 1):
        assert not models.is_pretrained_init(init)


# --- download through timm (patched) ---------------------------------------------------------------------
@pytest.fixture()
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Online mode whose hub download serves a saved resnet18 checkpoint; returns the list of calls."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(_pretrained, "hub_reachable", lambda timeout=3.0: True)
    served = tmp_path / "served" / "model.safetensors"
    _write_weights(served.parent, "resnet18", served.name)
    calls: list[dict] = []

    def fake_download(*args: object, **kwargs: object) -> str:
        calls.append({"args": args, **kwargs})
        return str(served)

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", fake_download)
    return calls


def test_download_through_timm_when_nothing_is_on_disk(fake_hub: list[dict], tmp_path: Path) -> None:
    state = _write_weights(tmp_path / "expected", "resnet18")
    model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes")
    assert model.init == "imagenet:hub"
    assert model.normalization["in_chans"] == 3
    _assert_backbone_matches(model, state, ("fc.",))
    assert fake_hub and fake_hub[0]["repo_id"] == "timm/resnet18.a1_in1k"


def test_files_on_disk_win_over_a_download(fake_hub: list[dict], tmp_path: Path) -> None:
    _write_weights(tmp_path / "w", "resnet18")
    model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes", weights_dir=tmp_path / "w")
    assert model.init == "imagenet:local" and not fake_hub


@pytest.fixture()
def download_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt, or even a reachability probe, fails the test."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", forbidden)
    monkeypatch.setattr(_pretrained, "hub_reachable", forbidden)


@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_never_downloads(download_forbidden: None, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    offline = how == "argument"
    with pytest.raises(models.PretrainedWeightsUnavailable, match="downloads are off") as excinfo:
        models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes", offline=offline)
    assert "--offline" in str(excinfo.value) and ". " not in str(excinfo.value)
    model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="auto", offline=offline)
    assert model.init == "random"


def test_unreachable_hub_falls_through_without_downloading(
    download_forbidden: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(_pretrained, "hub_reachable", lambda timeout=3.0: False)
    with caplog.at_level(logging.WARNING, logger="models"):
        model = models.create_model("resnet18", num_classes=2, image_size=32, pretrained="auto")
    assert model.init == "random"
    assert any("cannot be reached" in r.getMessage() for r in caplog.records)
    with pytest.raises(models.PretrainedWeightsUnavailable, match="none could be downloaded"):
        models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes")


def test_failed_download_falls_through(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(_pretrained, "hub_reachable", lambda timeout=3.0: True)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("connection reset by peer")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", broken)
    with caplog.at_level(logging.WARNING, logger="models"):
        assert models.create_model("resnet18", num_classes=2, image_size=32, pretrained="auto").init == "random"
    assert any("connection reset by peer" in r.getMessage() for r in caplog.records)
    with pytest.raises(models.PretrainedWeightsUnavailable, match="none could be downloaded"):
        models.create_model("resnet18", num_classes=2, image_size=32, pretrained="yes")


class _HeadHandler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_hub_reachable_is_a_bounded_http_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "create_connection", _REAL_CREATE_CONNECTION)
    monkeypatch.setattr(socket.socket, "connect", _REAL_CONNECT)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    server = http.server.HTTPServer(("127.0.0.1", 0), _HeadHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub_reachable(timeout=2.0)  # a 404 is an answer
    finally:
        server.shutdown()
        server.server_close()
    assert not hub_reachable(timeout=2.0)  # the port is closed now: refused at once
    # a port that accepts the connection but never answers: gives up after the timeout, no hang
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.perf_counter()
        assert not hub_reachable(timeout=0.3)
        assert time.perf_counter() - start < 2.0
    monkeypatch.setenv("HF_ENDPOINT", "file:///etc/passwd")
    assert not hub_reachable(timeout=0.3)
