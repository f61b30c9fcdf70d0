"""Find ImageNet weights for timm backbones without ever touching the network.

Search order for a timm architecture ``<timm_name>`` with default pretrained tag ``<tag>``
(e.g. ``resnet18`` / ``resnet18.a1_in1k``):

1. ``weights_dir`` (``--weights-dir``), then ``$STROKECT_WEIGHTS``: a file named ``<timm_name>`` or
   ``<timm_name>.<tag>`` with suffix ``.safetensors``, ``.pth``, ``.pt`` or ``.bin``, or a sub-folder of
   that name holding ``model.safetensors`` / ``pytorch_model.bin`` (the layout of a Hugging Face download).
2. The Hugging Face hub cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``),
   looked up as files on disk, i.e. offline by construction.
3. The torch hub cache (``torch.hub.get_dir()/checkpoints``) for timm's legacy release URLs.

A file found this way is handed to ``timm.create_model(..., pretrained=True,
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
from pathlib import Path
from typing import Any

__all__ = [
    "PretrainedWeightsUnavailable",
    "default_pretrained_tag",
    "find_pretrained_file",
    "hf_hub_cache_dir",
]

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_HF_FILENAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were requested (``pretrained="yes"``) but none can be found offline."""


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


def find_pretrained_file(timm_name: str, weights_dir: str | Path | None = None) -> Path | None:
    """Locate ImageNet weights for ``timm_name`` on disk (never downloads).

    Args:
        timm_name: timm architecture name, e.g. ``"resnet18"``.
        weights_dir: Optional folder searched before ``$STROKECT_WEIGHTS``.

    Returns:
        The weight file, or ``None`` if none exists.
    """
    full_name = default_pretrained_tag(timm_name)
    names = [timm_name] if full_name == timm_name else [timm_name, full_name]
    folders = []
    for folder in (weights_dir, os.environ.get("STROKECT_WEIGHTS")):
        if folder:
            folder = Path(folder).expanduser()
            if not folder.is_dir():
                logger.warning("Weights folder %s does not exist; ignoring it.", folder)
                continue
            folders.append(folder)
    for folder in folders:
        for path in _local_candidates(folder, names):
            if path.is_file():
                return path
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


def missing_weights_message(model_name: str, timm_name: str) -> str:
    """The one sentence telling a user how to provide ImageNet weights."""
    return (
        f"No ImageNet weights for {model_name} (timm '{default_pretrained_tag(timm_name)}') on this machine: "
        f"put {timm_name}.safetensors in $STROKECT_WEIGHTS or --weights-dir (or fill the Hugging Face cache "
        f"with timm.create_model('{timm_name}', pretrained=True) online), or run with --pretrained auto/no."
    )


def create_timm_pretrained(
    model_name: str,
    timm_name: str,
    *,
    weights_dir: str | Path | None,
    required: bool,
    **timm_kwargs: Any,
) -> Any:
    """``timm.create_model`` with local ImageNet weights, or ``None`` when none exist and not ``required``.

    Args:
        model_name: Registry name (for messages).
        timm_name: timm architecture name.
        weights_dir: Optional folder with weight files.
        required: Raise instead of returning ``None`` when no weights are found.
        **timm_kwargs: Passed to ``timm.create_model`` (``num_classes``, ``in_chans``, ``img_size`` ...).

    Raises:
        PretrainedWeightsUnavailable: No weights (and ``required``), or the weight file cannot be loaded.
    """
    import timm

    path = find_pretrained_file(timm_name, weights_dir)
    if path is None:
        if required:
            raise PretrainedWeightsUnavailable(missing_weights_message(model_name, timm_name))
        return None
    logger.info("Loading ImageNet weights for %s from %s", model_name, path)
    # custom_load=False: the AugReg ViT configs point at .npz files with a custom loader; ours are state dicts.
    overlay = {"file": str(path), "custom_load": False}
    try:
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **timm_kwargs)
    except Exception as err:  # noqa: BLE001 - any failure to read the file means the same thing to the user
        raise PretrainedWeightsUnavailable(
            f"Could not load ImageNet weights for {model_name} from {path} ({type(err).__name__}: {err}); "
            f"replace or remove that file, or run with --pretrained no."
        ) from err
