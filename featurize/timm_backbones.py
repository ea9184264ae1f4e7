"""timm backbones (``backbone="timm:<name>"``): CNNs and ViTs from the optional timm library.

``pip install -e ".[timm]"``. The network is built by ``timm.create_model``; its preprocessing
comes from its own pretrained configuration (``timm.data.resolve_data_config``); its layers are
its modules (for ViTs the transformer blocks ``blocks.0`` ... output token sequences, pooled
with ``cls``, ``mean`` or ``clsmean``), and ``penultimate`` is the input of its classifier: the
pre-logits embedding. Weights come from a local file (``.safetensors``, loaded without pickle,
or a ``.pth`` state dict loaded with ``weights_only=True``), from the Hugging Face hub cache or
timm's cache when present (``"DEFAULT"``; featurize never downloads unless asked:
``featurize download timm:<name>``), or a deterministic random initialisation (None). The timm
version is part of every cache key.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os

import torch

from featurize.exceptions import BackboneError, WeightsNotFoundError

PREFIX = "timm:"

__all__ = ["PREFIX", "is_timm", "load_timm", "timm_version"]


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


@contextlib.contextmanager
def _offline(allow_download: bool):
    """The Hugging Face hub offline (no request, no wait) unless a download was asked for."""
    if allow_download:
        yield
        return
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as constants

        saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    except (ImportError, AttributeError):
        constants, saved = None, None
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def state_sha256(state: dict) -> str:
    """SHA-256 of a state dict's names and tensor bytes (the identity of hub-cached weights)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _read_weights(path) -> tuple[dict, str]:
    from featurize.backbones import _load_checkpoint, checkpoint_sha256

    path = os.fspath(path)
    if path.endswith(".safetensors"):
        if not os.path.isfile(path):
            raise WeightsNotFoundError(f"Weights file {path!r} does not exist.")
        from safetensors.torch import load_file

        return load_file(path, device="cpu"), checkpoint_sha256(path)
    return _load_checkpoint(path)


def _preprocessing(model):
    from featurize.preprocessing import Preprocessing

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
        from featurize.backbones import _random_init

        _random_init(lambda: model.reset_classifier(1))
    return model.eval()


def load_timm(name: str, weights, allow_download: bool = False):
    """Build ``timm:<model>`` with ``weights`` (see the module docstring); a ``Backbone``."""
    from featurize.backbones import Backbone, _apply_state, _close_matches, _is_path, _random_init

    timm = _timm()
    arch = name[len(PREFIX):]
    if arch not in timm.list_models():
        raise BackboneError(f"timm has no model {arch!r} (timm {timm.__version__}); close names: "
                            f"{_close_matches(arch, timm.list_models())}.")
    library = f"timm {timm.__version__}"
    if weights is None:
        model = _random_init(lambda: timm.create_model(arch, pretrained=False))
        return Backbone(name, _with_classifier(model), _preprocessing(model), None, None,
                        library)
    if _is_path(weights) or str(weights).endswith(".safetensors"):
        state, sha = _read_weights(weights)
        model = timm.create_model(arch, pretrained=False)
        _apply_state(model, state, f"weights file {os.fspath(weights)!r}")
        return Backbone(name, _with_classifier(model), _preprocessing(model), os.fspath(weights),
                        sha, library)
    tag = None if str(weights).upper() == "DEFAULT" else str(weights)
    full = arch if tag is None else f"{arch}.{tag}"
    try:
        with _offline(allow_download):
            model = timm.create_model(full, pretrained=True)
    except Exception as exc:  # hub/timm raise several types for "not in the cache"
        raise WeightsNotFoundError(
            f"The pretrained weights of timm model {full!r} are not in the Hugging Face hub "
            f"cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) nor in timm's cache, "
            f"and featurize does not download implicitly ({type(exc).__name__}: {exc}). Run "
            f"`featurize download {name}` (on a machine with a network; copy the cache here), "
            "or pass weights='/path/to/model.safetensors'.") from exc
    sha = state_sha256(model.state_dict())
    return Backbone(name, _with_classifier(model), _preprocessing(model), str(weights), sha,
                    library)
