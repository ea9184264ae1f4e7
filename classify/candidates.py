"""The candidates of a selection: feature sets, heads and their parameters.

A :class:`Candidate` is one (feature set, head, parameters) configuration to cross-validate.
This module validates the feature sets, names them, and builds the candidates of a grid.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid
from sklearn.utils.validation import check_array

from classify.heads import HEADS, default_param_grid, make_head
from classify.validation import ConfigError

__all__ = ["Candidate", "build_candidates", "c_of", "check_heads", "feature_set_name", "head_items",
           "params_text", "prepare_feature_sets", "split_columns"]


@dataclass(frozen=True)
class Candidate:
    """One configuration to cross-validate.

    Attributes
    ----------
    feature_set : int
        Index of the feature set (in the list of arrays).
    estimator : estimator
        The unfitted classifier (usually a :func:`~classify.heads.make_head` pipeline).
    head : str
        Head name, for reports.
    params : dict
        The searched parameters that built ``estimator``, for reports.
    """

    feature_set: int
    estimator: object
    head: str = "custom"
    params: dict = field(default_factory=dict)


def c_of(params: dict):
    """The numeric ``C`` of a candidate's parameters, or None."""
    c = params.get("C")
    return c if isinstance(c, numbers.Real) and not isinstance(c, bool) else None


def params_text(params: dict) -> str:
    """``"C=0.01, gamma=scale"``: parameters as one short line."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def feature_set_name(key) -> str:
    """Display name of a feature-set key: ``"layer/pooling"`` for a ``(layer, pooling)`` tuple."""
    if isinstance(key, tuple):
        return "/".join(str(part) for part in key)
    return str(key)


def split_columns(X, widths) -> dict:
    """Cut a wide matrix (several layers extracted in one pass) into per-layer views.

    Parameters
    ----------
    X : ndarray of shape (n_samples, sum of widths)
        Concatenated features, blocks in the order of ``widths``.
    widths : mapping of key to int, or sequence of (key, int)
        Width of each block, e.g. ``{("blocks.4", "avg"): 80, ("blocks.6", "avg"): 192}``.

    Returns
    -------
    dict
        ``key -> X[:, start:stop]`` (views, no copy).
    """
    items = list(widths.items()) if isinstance(widths, Mapping) else list(widths)
    X = np.asarray(X)
    total = sum(int(w) for _, w in items)
    if X.ndim != 2 or X.shape[1] != total:
        raise ValueError(
            f"The widths add up to {total} columns but X has shape {X.shape}. Pass the widths "
            "of the blocks of X, in order."
        )
    out, start = {}, 0
    for key, width in items:
        out[key] = X[:, start:start + int(width)]
        start += int(width)
    return out


def prepare_feature_sets(feature_sets, n_samples: int):
    """Return (keys, arrays) after validation; a single matrix becomes ``{"features": X}``."""
    if not isinstance(feature_sets, Mapping):
        feature_sets = {"features": feature_sets}
    if not feature_sets:
        raise ValueError("feature_sets is empty: give at least one feature matrix.")
    keys, arrays = [], []
    for key, X in feature_sets.items():
        name = feature_set_name(key)
        try:
            X = check_array(X, dtype=(np.float64, np.float32), input_name=f"feature set {name!r}")
        except ValueError as exc:
            raise ValueError(
                f"Feature set {name!r} is not a finite 2-D numeric matrix: {exc} Rows of images "
                "that failed to load are NaN: drop them (and their labels) first."
            ) from exc
        if X.shape[0] != n_samples:
            raise ValueError(f"Feature set {name!r} has {X.shape[0]} rows but y has {n_samples}.")
        keys.append(key)
        arrays.append(X)
    return keys, arrays


def head_items(heads) -> list:
    """``[(name, estimator or None), ...]`` of a head name, a sequence of names or a mapping."""
    if isinstance(heads, str):
        return [(heads, None)]
    if isinstance(heads, Mapping):
        return list(heads.items())
    return [(name, None) for name in heads]


def check_heads(heads) -> list:
    """:func:`head_items` of ``heads``, or ConfigError for no head or an unknown name."""
    items = head_items(heads)
    if not items:
        raise ConfigError("The 'heads' parameter is empty: give at least one head name.")
    unknown = [name for name, est in items if est is None and name not in HEADS]
    if unknown:
        raise ConfigError(f"Unknown head {unknown[0]!r}. Valid heads are {sorted(HEADS)}, or "
                          "pass heads as a mapping of name to an unfitted estimator.")
    return items


def build_candidates(n_sets: int, heads, param_grids, probability: bool) -> list[Candidate]:
    """Every (feature set, head, parameters) of the grids: feature sets as given, heads as given,
    C ascending (the order the choice rules break ties in)."""
    heads = dict(check_heads(heads))
    param_grids = dict(param_grids or {})
    unknown = set(param_grids) - set(heads) - set(HEADS)
    if unknown:  # grids of registered heads left out of `heads` are simply unused
        raise ConfigError(f"param_grids has grids for {sorted(unknown)}, which are neither in "
                          f"heads ({sorted(heads)}) nor registered heads ({sorted(HEADS)}).")
    per_head = []
    for name, estimator in heads.items():
        grid = param_grids.get(name, default_param_grid(name) if estimator is None else {})
        params_list = list(ParameterGrid(grid)) if grid else [{}]
        params_list.sort(key=lambda p: c_of(p) if c_of(p) is not None else 0.0)
        built = []
        for params in params_list:
            if estimator is None:
                est = make_head(name, probability=probability, **params)
            else:
                est = clone(estimator).set_params(**params)
            built.append((params, est))
        per_head.append((name, built))
    return [Candidate(f, est, name, params)
            for f in range(n_sets) for name, built in per_head for params, est in built]
