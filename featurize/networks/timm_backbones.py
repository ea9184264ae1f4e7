"""timm backbones (``backbone="timm:<name>"``): CNNs and ViTs from the optional timm library.

``pip install -e ".[timm]"``. The network is built by ``timm.create_model``; its preprocessing
comes from its own pretrained configuration (``timm.data.resolve_data_config``); its layers are
its modules (for ViTs the transformer blocks ``blocks.0`` ... output token sequences, pooled
with ``cls``, ``mean`` or ``clsmean``), and ``penultimate`` is the input of its classifier: the
pre-logits embedding. Weights come from a local file (``.safetensors``, loaded without pickle,
or a ``.pth`` state dict loaded with ``weights_only=True``), from the Hugging Face hub cache,
or the torch hub cache for the few weights timm fetches from a plain URL, when present
(``"DEFAULT"`` or a pretrained tag; featurize never downloads unless asked:
``featurize download timm:<name>``), or a deterministic random initialisation (None). The timm
version is part of every cache key.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from urllib.parse import urlsplit

import torch

from featurize.exceptions import BackboneError, WeightsNotFoundError
from featurize.images.preprocessing import Preprocessing
from featurize.networks.checkpoints import (
    Backbone,
    apply_state,
    checkpoint_sha256,
    close_matches,
    is_weights_path,
    load_checkpoint,
    random_init,
)

PREFIX = "timm:"

__all__ = ["PREFIX", "hub_filenames", "is_timm", "load_timm", "pretrained_cfg", "timm_version",
           "url_weights_file"]


def is_timm(name) -> bool:
    """Whether ``name`` names a timm backbone (``"timm:<model name>"``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise BackboneError(
            "timm backbones need the timm library, which is not installed. Install it with: "
            "pip install -e \".[timm]\" (or pip install timm).") from exc
    return timm


def timm_version() -> str:
    return _timm().__version__


def pretrained_cfg(name: str, weights) -> tuple[str, object]:
    """``(model name with tag, timm's pretrained configuration)`` of ``timm:<model>`` with the
    pretrained tag ``weights`` (``"DEFAULT"``: timm's default tag).

    Raises
    ------
    BackboneError
        timm has no such model, or no such pretrained weights for it (the valid tags listed).
    """
    timm = _timm()
    arch = _arch(name)
    tag = None if str(weights).upper() == "DEFAULT" else str(weights)
    full = arch if tag is None else f"{arch}.{tag}"
    try:
        cfg = timm.models.get_pretrained_cfg(full)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        tags = sorted(n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*"))
        raise BackboneError(
            f"Unknown weights {weights!r} for timm:{arch}. Expected 'DEFAULT' or one of its "
            f"pretrained tags {tags} (timm {timm.__version__}), a weights file, or None.")
    return full, cfg


def _arch(name: str) -> str:
    """The timm model name of ``timm:<model>``; BackboneError with close names if unknown."""
    timm = _timm()
    arch = name[len(PREFIX):] if is_timm(name) else name
    if arch not in timm.list_models():
        raise BackboneError(f"timm has no model {arch!r} (timm {timm.__version__}); close names: "
                            f"{close_matches(arch, timm.list_models())}.")
    return arch


def hub_filenames(cfg) -> list[str]:
    """The files of a Hugging Face hub repository that hold the weights, in the order timm's
    ``load_state_dict_from_hf`` tries them (a safetensors alternative first)."""
    name = cfg.hf_hub_filename or "pytorch_model.bin"
    if name.endswith(".safetensors"):
        return [name]
    safe = {"pytorch_model.bin": "model.safetensors",
            "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}.get(name)
    if safe is None and name.endswith(".bin"):
        safe = name[:-4] + ".safetensors"
    return [n for n in (safe, name) if n]


def url_weights_file(url: str):
    """Where torch (and timm) keep the file of weights downloaded from a plain ``url``."""

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlsplit(url).path)


def _cached_weights(cfg) -> str | None:
    """The local file of a pretrained configuration's weights, found without any request:
    the Hugging Face hub cache, then the torch hub cache of a plain URL. None if neither."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in hub_filenames(cfg):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return found
    if cfg.url:
        path = url_weights_file(cfg.url)
        if path.is_file():
            return str(path)
    return None


def state_sha256(state: dict) -> str:
    """SHA-256 of a state dict's names and tensor bytes (the identity of hub-cached weights)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")  # 0-d tensors too (num_batches_tracked)
    return digest.hexdigest()


def _read_weights(path) -> tuple[dict, str]:
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        if not os.path.isfile(path):
            raise WeightsNotFoundError(f"Weights file {path!r} does not exist.")
        from safetensors.torch import load_file

        return load_file(path, device="cpu"), checkpoint_sha256(path)
    return load_checkpoint(path)


def _preprocessing(model):
    cfg = _timm().data.resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in ("bilinear", "bicubic", "nearest", "lanczos"):
        interpolation = "bicubic"
    return Preprocessing(int(math.floor(size / crop_pct)), size,
                         tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]),
                         interpolation)


def _with_classifier(model):
    """A model built without classifier (``num_classes=0``, e.g. DINOv2) gets a 1-output
    linear one (never used, seeded), so that ``penultimate`` is its input: the pre-logits
    embedding, as for every other backbone."""
    if getattr(model, "num_classes", None) == 0 and hasattr(model, "reset_classifier"):
        random_init(lambda: model.reset_classifier(1))
    return model.eval()


def load_timm(name: str, weights):
    """Build ``timm:<model>`` with ``weights`` (see the module docstring); a ``Backbone``.

    Pretrained weights are read from a file found in the caches beforehand (no request, no
    process-wide offline switch: safe in threads); timm is handed that file, so it never
    downloads.
    """
    timm = _timm()
    arch = _arch(name)
    library = f"timm {timm.__version__}"
    if weights is None:
        model = random_init(lambda: timm.create_model(arch, pretrained=False))
        return Backbone(name, _with_classifier(model), _preprocessing(model), None, None,
                        library)
    if is_weights_path(weights) or str(weights).endswith(".safetensors"):
        state, sha = _read_weights(weights)
        model = timm.create_model(arch, pretrained=False)
        apply_state(model, state, f"weights file {os.fspath(weights)!r}")
        return Backbone(name, _with_classifier(model), _preprocessing(model), os.fspath(weights),
                        sha, library)
    full, cfg = pretrained_cfg(name, weights)
    path = _cached_weights(cfg)
    if path is None:
        from huggingface_hub import constants

        where = (f"the Hugging Face hub cache ({constants.HF_HUB_CACHE})" if cfg.hf_hub_id
                 else f"the torch hub cache ({url_weights_file(cfg.url)})")
        raise WeightsNotFoundError(
            f"The pretrained weights of timm model {full!r} are not in {where}, and featurize "
            f"does not download implicitly. Run `featurize download {name}"
            f"{'' if str(weights).upper() == 'DEFAULT' else f' --weights {weights}'}` (on a "
            "machine with a network; copy the cache here), or pass "
            "weights='/path/to/model.safetensors'.")
    try:
        # "file" is timm's own highest-priority source: it loads and adapts it as usual
        model = timm.create_model(full, pretrained=True,
                                  pretrained_cfg_overlay={"file": path, "source": ""})
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise BackboneError(f"The cached weights {path!r} of timm model {full!r} do not load "
                            f"({type(exc).__name__}: {exc}); delete the file and run "
                            f"`featurize download {name}` again.") from exc
    sha = state_sha256(model.state_dict())
    return Backbone(name, _with_classifier(model), _preprocessing(model), str(weights), sha,
                    library)
