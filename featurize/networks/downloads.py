"""Weights fetched on request: ``featurize download BACKBONE`` and :func:`download_weights`.

featurize never downloads implicitly. These functions are the explicit opt-in: they put the
weights where loading looks for them (torchvision's files, and the few timm weights at a plain
URL, in the torch hub cache, ``TORCH_HOME``; timm's hub weights in the Hugging Face hub cache,
``HF_HOME``), with a progress bar, and fail within about :data:`TIMEOUT_S` seconds with a
clear error when the network cannot be reached: every request is given that timeout itself
(the Hugging Face hub reads its ``HF_HUB_*`` variables once, when it is imported, so setting
them later would change nothing). torchvision files are checked against the SHA-256 prefix in
their names.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import torch.hub

from featurize.exceptions import BackboneError, FeaturizeError
from featurize.networks.backbones import (
    _EFFICIENTNET_LITE,
    _torchvision_names,
    torchvision_weights,
    torchvision_weights_file,
)
from featurize.networks.timm_backbones import (
    _cached_weights,
    hub_filenames,
    is_timm,
    pretrained_cfg,
    url_weights_file,
)

__all__ = ["TIMEOUT_S", "DownloadError", "download_url", "download_weights"]

#: Seconds a connection or a read may wait before the download is given up.
TIMEOUT_S = 30
#: ``socket.setdefaulttimeout`` is process-wide: one download changes it at a time.
_TIMEOUT_LOCK = threading.Lock()


class DownloadError(FeaturizeError, OSError):
    """Weights could not be downloaded (no network, unreachable host, HTTP error, bad hash)."""


def _hint(backbone: str) -> str:
    return (f"On a machine with a network, run `featurize download {backbone}` and copy its "
            "cache (TORCH_HOME for torchvision, HF_HOME for timm) here, or pass the weights "
            "file as weights='/path/to/file'.")


def download_url(url: str, dest, *, backbone: str = "BACKBONE", progress: bool = True,
                 check_hash: bool = True) -> Path:
    """Download ``url`` to ``dest`` (written beside it, then renamed), timing out quickly.

    Parameters
    ----------
    url : str
    dest : path
        The file to write; with ``check_hash``, a name ``<stem>-<hex>.<ext>`` (torch hub's
        convention) makes the download refused unless its SHA-256 starts with ``<hex>``.
    backbone : str, default="BACKBONE"
        For the message.
    progress : bool, default=True
    check_hash : bool, default=True

    Raises
    ------
    DownloadError
        Naming the URL, the file and the command to run elsewhere; nothing is left at ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(dest.name) if check_hash else None
    prefix = match.group(1) if match and match.group(1) else None
    with _TIMEOUT_LOCK:
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(TIMEOUT_S)  # urllib's connections and reads inside torch.hub
        try:
            torch.hub.download_url_to_file(url, str(dest), hash_prefix=prefix, progress=progress)
        except RuntimeError as exc:  # torch.hub: 'invalid hash value (expected ..., got ...)'
            raise DownloadError(
                f"The file downloaded from {url} is not {dest.name}: its SHA-256 does not start "
                f"with {prefix!r}, the prefix in its name ({exc}). It was not kept; try again "
                f"(a damaged transfer or a proxy's page). {_hint(backbone)}") from exc
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
        The weights file now in the cache (or a line saying none is needed).

    Raises
    ------
    BackboneError
        An unknown backbone or weights name (the valid ones listed), before any request.
    DownloadError
        The download failed (no network, timeout, HTTP error, hash mismatch).
    """
    if backbone in _EFFICIENTNET_LITE:
        return f"{backbone}: its weights ship with featurize (pip package); nothing to download"
    if is_timm(backbone):
        return _download_timm(backbone, weights, progress)
    if backbone not in _torchvision_names():
        raise BackboneError(f"Unknown backbone {backbone!r}; see `featurize backbones`.")
    enum = torchvision_weights(backbone, weights)
    dest = torchvision_weights_file(enum)
    if dest.is_file():
        return str(dest)
    return str(download_url(enum.url, dest, backbone=backbone, progress=progress))


def _probe(url: str) -> None:
    """One HTTP request to ``url`` within :data:`TIMEOUT_S`: the hub client retries with
    back-off (and a 60 s timeout) when it gets no answer, so it is asked only after the
    server has answered once. Any HTTP answer, even an error status, will do."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                               timeout=TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
        raise OSError(f"{url} did not answer within {TIMEOUT_S} s ({exc})") from exc


def _download_timm(backbone: str, weights: str, progress: bool) -> str:
    full, cfg = pretrained_cfg(backbone, weights)
    found = _cached_weights(cfg)
    if found is not None:
        return found
    if not cfg.hf_hub_id:  # weights at a plain URL (timm checks no hash: neither do we)
        return str(download_url(cfg.url, url_weights_file(cfg.url), backbone=backbone,
                                progress=progress, check_hash=False))
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    repo, _, revision = cfg.hf_hub_id.partition("@")
    names = hub_filenames(cfg)
    try:
        _probe(endpoint)
        for filename in names[:-1]:
            try:
                return hf_hub_download(repo, filename, revision=revision or None,
                                       endpoint=endpoint, etag_timeout=TIMEOUT_S)
            except EntryNotFoundError:
                continue  # no safetensors alternative: the next name, as timm does
        return hf_hub_download(repo, names[-1], revision=revision or None, endpoint=endpoint,
                               etag_timeout=TIMEOUT_S)
    except Exception as exc:  # the hub client's error types vary with its version
        reason = " ".join(str(exc).split())  # its messages span lines
        raise DownloadError(f"Could not download the weights of timm model {full!r} from "
                            f"{endpoint} ({type(exc).__name__}: {reason}). {_hint(backbone)}"
                            ) from exc
