"""What every backbone family shares: the :class:`Backbone` record, checkpoint files (read with
``torch.load(weights_only=True)`` and hashed), the deterministic random initialisation, and
close-name suggestions for errors.

:mod:`featurize.networks.backbones` (embedded and torchvision networks, the registry) and
:mod:`featurize.networks.timm_backbones` both build on this module; neither imports the other's
internals, so there is no import cycle between them.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from featurize.exceptions import BackboneError, WeightsNotFoundError
from featurize.images.preprocessing import Preprocessing

__all__ = ["RANDOM_INIT_SEED", "Backbone", "apply_state", "checkpoint_sha256", "close_matches",
           "is_weights_path", "load_checkpoint", "random_init"]

#: seed of the deterministic random initialisation used with ``weights=None``
RANDOM_INIT_SEED = 0


@dataclass
class Backbone:
    """A loaded backbone: the network in eval mode, its preprocessing, and its weights identity.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"efficientnet_lite0"`` or ``"resnet18"``.
    model : torch.nn.Module
        The full classification network, in eval mode, on the CPU.
    preprocessing : Preprocessing
        Resize / crop / normalization defined by the weights.
    weights : str or None
        What was asked for: an enum name, a checkpoint path, or None.
    weights_sha256 : str or None
        SHA-256 of the checkpoint file the weights came from (None for random init).
    library : str or None
        The library that builds the network, with its version, when it is not torchvision
        (``"timm 1.0.22"``): part of the cache key.
    """

    name: str
    model: nn.Module
    preprocessing: Preprocessing
    weights: str | None
    weights_sha256: str | None
    library: str | None = None


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a checkpoint file (part of the weights identity in cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def close_matches(name: str, names: list[str], n: int = 5) -> list[str]:
    """Up to ``n`` of ``names`` that look like ``name`` (the first ``n`` when none does)."""
    return difflib.get_close_matches(str(name), names, n=n, cutoff=0.3) or names[:n]


def is_weights_path(weights) -> bool:
    """Whether ``weights`` names a checkpoint file rather than a weights name."""
    return isinstance(weights, os.PathLike) or (
        isinstance(weights, str) and (os.sep in weights or weights.endswith((".pth", ".pt")))
    )


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, str]:
    """``(state dict, SHA-256 of the file)`` of a checkpoint, read without running pickled code.

    Raises
    ------
    WeightsNotFoundError
        No such file.
    BackboneError
        The file is not a plain state dict of tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Checkpoint file {str(path)!r} does not exist. Pass the path of a saved state dict"
            " (torch.save(model.state_dict(), path)), a weights name such as 'DEFAULT', or None."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad or unsafe pickle
        raise BackboneError(
            f"Cannot load checkpoint {str(path)!r} with torch.load(weights_only=True): {exc}. "
            "featurize only loads plain state dicts (tensors), never arbitrary pickles."
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(
            f"Checkpoint {str(path)!r} holds a {type(state).__name__}, expected a state dict."
        )
    return state, checkpoint_sha256(path)


def apply_state(model: nn.Module, state: dict, source: str) -> None:
    """``model.load_state_dict(state)``, or a :class:`BackboneError` naming ``source``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BackboneError(
            f"The weights in {source} do not fit this architecture: {exc}"
        ) from exc


def random_init(build):
    """``build()`` under the fixed seed :data:`RANDOM_INIT_SEED` (the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build()
