"""Pooling of layer outputs into fixed-width vectors, one vocabulary for every backbone."""

from __future__ import annotations

import torch

from featurize.options import POOLINGS

__all__ = ["GEM_P", "POOLINGS", "pool"]
#: Exponent of generalized-mean pooling (Radenovic et al. 2018).
GEM_P = 3.0
_GEM_EPS = 1e-6


#: Poolings of token sequences ``(N, L, D)`` only (transformer outputs).
TOKEN_POOLINGS = ("cls", "mean", "clsmean")


def pool(x: torch.Tensor, method: str, prefix_tokens: int = 1) -> torch.Tensor:
    """Pool a layer output into one vector per image.

    Parameters
    ----------
    x : torch.Tensor
        A feature map ``(N, C, H, W)``, a token sequence ``(N, L, D)`` (pooled over ``L``), or
        vectors ``(N, D)``, which every method except ``"none"`` returns unchanged (there is
        nothing to pool: the width stays ``D``).
    method : {"avg", "max", "catavgmax", "gem", "flatten", "none"}
        ``avg`` and ``max`` pool over space; ``catavgmax`` concatenates both (width ``2C``;
        ``avgmax`` is its old name, kept as an alias: in timm ``avgmax`` is their average); ``gem``
        is the generalized mean with p=3 over values clamped at 1e-6 (meant for post-ReLU maps);
        ``flatten`` keeps every position (width ``C*H*W``, tied to the input size); ``none``
        returns ``x`` as is. For token sequences: ``cls`` is the first (class) token, ``mean``
        the mean of the patch tokens (after the ``prefix_tokens`` class and register tokens),
        ``clsmean`` both concatenated (width ``2D``); they do not fit feature maps.
    prefix_tokens : int, default=1
        Class and register tokens at the start of a token sequence (timm's
        ``num_prefix_tokens``).

    Returns
    -------
    torch.Tensor
    """
    if method == "none":
        return x
    if x.ndim == 2:
        return x
    if method == "flatten":
        return x.flatten(1)
    if method in TOKEN_POOLINGS:
        if x.ndim != 3:
            raise ValueError(
                f"Pooling {method!r} takes the class token or the mean of the patch tokens of a "
                f"token sequence (N, L, D); this layer gives a feature map of shape "
                f"{tuple(x.shape)}. Use 'avg', 'max', 'catavgmax' or 'gem' for feature maps.")
        cls, patches = x[:, 0], x[:, prefix_tokens:].mean(1)
        return cls if method == "cls" else patches if method == "mean" else torch.cat(
            [cls, patches], dim=1)
    dims = (2, 3) if x.ndim == 4 else (1,) if x.ndim == 3 else tuple(range(2, x.ndim))
    if method == "avg":
        return x.mean(dims)
    if method == "max":
        return x.amax(dims)
    if method in ("catavgmax", "avgmax"):
        return torch.cat([x.mean(dims), x.amax(dims)], dim=1)
    if method == "gem":
        return x.float().clamp(min=_GEM_EPS).pow(GEM_P).mean(dims).pow(1.0 / GEM_P).to(x.dtype)
    raise ValueError(f"Unknown pooling {method!r}. Expected one of {POOLINGS}.")
