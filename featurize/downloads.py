"""Weights fetched on request: ``featurize download BACKBONE`` and :func:`download_weights`.

featurize never downloads implicitly. These functions are the explicit opt-in: they put the
weights where loading looks for them (torchvision's files in the torch hub cache, ``TORCH_HOME``;
timm's in the Hugging Face hub cache, ``HF_HOME``), with a progress bar, and fail within about
30 seconds with a clear error when the network cannot be reached.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from featurize.exceptions import FeaturizeError

__all__ = ["DownloadError", "download_url", "download_weights", "TIMEOUT_S"]

#: Seconds a connection or a read may wait before the download is given up.
TIMEOUT_S = 30


class DownloadError(FeaturizeError, OSError):
    """Weights could not be downloaded (no network, unreachable host, HTTP error)."""


def _hint(backbone: str) -> str:
    return (f"On a machine with a network, run `featurize download {backbone}` and copy its "
            "cache (TORCH_HOME for torchvision, HF_HOME for timm) here, or pass the weights "
            "file as weights='/path/to/file'.")


def download_url(url: str, dest, *, backbone: str = "BACKBONE", progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (written beside it, then renamed), timing out quickly.

    Raises
    ------
    DownloadError
        Naming the URL, the file and the command to run elsewhere.
    """
    import torch.hub

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=progress)
    except (OSError, ValueError) as exc:
        raise DownloadError(f"Could not download {dest.name} from {url} to {dest} "
                            f"({type(exc).__name__}: {exc}). {_hint(backbone)}") from exc
    finally:
        socket.setdefaulttimeout(old)
    return dest


def download_weights(backbone: str, weights: str = "DEFAULT", *, progress: bool = True) -> str:
    """Fetch the pretrained weights of ``backbone`` into the standard cache; returns where.

    Parameters
    ----------
    backbone : str
        A torchvision name (``"resnet50"``) or ``"timm:<model>"``. The embedded EfficientNet-Lite
        weights ship with featurize: nothing to download.
    weights : str, default="DEFAULT"
        A torchvision weights name, or a timm pretrained tag.

    Returns
    -------
    str
        The file (torchvision) or the hub repository (timm) now in the cache.
    """
    from featurize.backbones import _EFFICIENTNET_LITE, _torchvision_names
    from featurize.timm_backbones import is_timm

    if backbone in _EFFICIENTNET_LITE:
        return f"{backbone}: its weights ship with featurize (pip package); nothing to download"
    if is_timm(backbone):
        return _download_timm(backbone, weights)
    if backbone not in _torchvision_names():
        from featurize.exceptions import BackboneError

        raise BackboneError(f"Unknown backbone {backbone!r}; see `featurize backbones`.")
    import torch.hub
    import torchvision.models as tvm

    enum_cls = tvm.get_model_weights(backbone)
    enum = enum_cls.DEFAULT if weights == "DEFAULT" else enum_cls[weights]
    dest = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
    if dest.is_file():
        return str(dest)
    return str(download_url(enum.url, dest, backbone=backbone, progress=progress))


def _reachable(url: str) -> None:
    """Open (and close) a TCP connection to ``url``'s host, within :data:`TIMEOUT_S`."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=TIMEOUT_S):
        pass


def _download_timm(backbone: str, weights: str) -> str:
    from featurize.timm_backbones import PREFIX, _timm

    timm = _timm()
    arch = backbone[len(PREFIX):]
    full = arch if weights == "DEFAULT" else f"{arch}.{weights}"
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(TIMEOUT_S))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(TIMEOUT_S))
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        _reachable(endpoint)  # the hub client retries with back-off: ask once, quickly, first
        model = timm.create_model(full, pretrained=True)
    except Exception as exc:  # requests, hub and timm errors
        raise DownloadError(f"Could not download the weights of timm model {full!r} from "
                            f"{endpoint} ({type(exc).__name__}: {exc}). {_hint(backbone)}") from exc
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return str(cfg.get("hf_hub_id") or cfg.get("url") or full)
