"""Which backbone and layer? A transferability ranking of ``featurize train``'s candidates
before any training: what ``featurize rank`` prints.

:func:`rank_folder` extracts every candidate feature set of a folder in one pass
(:func:`classify.training.candidate_features`, the candidates and cache keys of ``featurize
train``), scores each one with the ridge leave-one-out screening of the fast search (closed
form, about the cost of one fit) and adds its width and its extraction cost per image (the
floating-point operations of the network truncated at that layer). The extraction dominates:
the ranking costs about one extraction pass, and a later ``train`` with the same cache
computes no feature again.

featurize (and torch) are imported when features are computed, not when this module is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from classify.candidates import feature_set_name
from classify.features import absolute_weights, featurizer_parts
from classify.metrics import DEFAULT_SCORING, SCORE_NAMES
from classify.screening import screen_feature_sets
from classify.training import DEFAULT_BACKBONES, candidate_features

__all__ = ["RIDGE_SCORINGS", "Ranking", "layer_flops", "rank_folder"]

#: Scores of the ridge screening (it has no probabilities).
RIDGE_SCORINGS = tuple(name for name in SCORE_NAMES if name != "log_loss")


@dataclass
class Ranking:
    """The screened candidates of a folder, best first.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per candidate feature set, best first: ``feature_set`` (as ``featurize train``
        names it), ``score`` (ridge leave-one-out ``scoring``), ``width`` (features),
        ``gflops`` (extraction cost per image: giga floating-point operations of the networks
        truncated at the candidate's layers), ``alpha`` (the ridge penalty the screening
        chose).
    scoring : str
    n_images : int
        Images with features (the rows screened).
    failures : list of (str, str)
        ``(path, reason)`` of the files skipped or unreadable, left out.
    seconds : dict of str to float
        ``extract``, ``screen`` and ``cost``: where the time went.
    """

    table: pd.DataFrame
    scoring: str
    n_images: int
    failures: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def to_text(self) -> str:
        """The table and a line on the time it took."""
        table = self.table.copy()
        table.insert(0, "rank", np.arange(1, len(table) + 1))
        table["score"] = table["score"].map(lambda v: f"{v:.4f}")
        table["gflops"] = table["gflops"].map(lambda v: f"{v:.3f}")
        table["alpha"] = table["alpha"].map(lambda v: f"{v:g}")
        s = self.seconds
        return "\n".join([
            (f"Ridge leave-one-out {self.scoring} of {len(table)} candidate feature sets on "
             f"{self.n_images} images (higher is better; gflops: extraction cost per image):"),
            table.to_string(index=False),
            (f"extraction {s.get('extract', 0):.1f} s, screening {s.get('screen', 0):.1f} s, "
             f"cost {s.get('cost', 0):.1f} s"),
        ])


def layer_flops(backbone: str, layers: Sequence[str], weights="DEFAULT") -> dict:
    """Floating-point operations for one image of the network truncated at each layer.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
    convolutions, 2 per multiply-add) in one forward pass of one image at the backbone's input
    size: the cost up to each layer's output (the input of the classifier for
    ``"penultimate"``).

    Parameters
    ----------
    backbone : str
    layers : sequence of str
        Layer names, as :func:`featurize.list_layers` gives them.
    weights : str, path or None, default="DEFAULT"

    Returns
    -------
    dict of str to int
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from featurize.networks.backbones import load_backbone
    from featurize.networks.layers import PENULTIMATE, penultimate_module, trace_layers

    loaded = load_backbone(backbone, weights)
    model = loaded.model.eval()
    size = loaded.preprocessing.crop_size
    modules = dict(model.named_modules())
    penultimate = penultimate_module(model, trace_layers(model, size))
    counter = FlopCounterMode(display=False)
    flops: dict = {}

    def record(name):
        def hook(*_):
            flops.setdefault(name, int(counter.get_total_flops()))
        return hook

    handles = [modules[penultimate].register_forward_pre_hook(record(name))
               if name == PENULTIMATE else modules[name].register_forward_hook(record(name))
               for name in layers]
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return flops


def _layers_of(part: dict) -> list:
    layer = part.get("layer")
    return [layer] if isinstance(layer, str) else list(layer)


def rank_folder(data_dir, *, backbones: Sequence[str] = DEFAULT_BACKBONES, weights="DEFAULT",
                layers: Sequence[str] | None = None, poolings: Sequence[str] = ("avg",),
                precision: str = "auto", scoring: str = DEFAULT_SCORING, cache=None,
                device="auto", batch_size: int = 32, num_workers: int | None = None,
                verbose: int = 0, progress: str | None = None) -> Ranking:
    """Rank ``featurize train``'s candidate feature sets of a folder before any training.

    Parameters
    ----------
    data_dir : path
        A folder-per-class tree (``data_dir/<class>/<images>``).
    backbones, weights, layers, poolings, precision
        The candidates, as :func:`classify.train_folder` takes them (the same defaults).
    scoring : {"balanced_accuracy", "accuracy", "f1_macro"}, default="balanced_accuracy"
    cache : str, path-like, FeatureCache or None, default=None
        HDF5 feature cache; ``featurize train`` with the same cache and candidates computes
        no feature again.
    device, batch_size, num_workers, verbose, progress
        Run-time options of the extraction.

    Returns
    -------
    Ranking
    """
    from featurize.images.folder import load_image_folder

    if scoring not in RIDGE_SCORINGS:
        raise ValueError(f"scoring={scoring!r}: the ridge screening scores "
                         "'balanced_accuracy', 'accuracy' or 'f1_macro' (it has no "
                         "probabilities).")
    data = load_image_folder(data_dir)
    start = time.perf_counter()
    candidates = candidate_features(data, backbones=backbones, weights=weights, layers=layers,
                                    poolings=poolings, precision=precision, cache=cache,
                                    device=device, batch_size=batch_size,
                                    num_workers=num_workers, verbose=verbose,
                                    progress=progress)
    extract_seconds = time.perf_counter() - start
    if len(np.unique(candidates.y)) < 2:
        raise ValueError(f"{data_dir!r}: the images that could be read belong to "
                         f"{len(np.unique(candidates.y))} class; ranking needs at least 2.")
    keys = list(candidates.sets)
    start = time.perf_counter()
    codes = np.unique(candidates.y, return_inverse=True)[1]
    screen = screen_feature_sets([candidates.sets[k] for k in keys], codes, scoring)
    screen_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cost = {b: layer_flops(b, layers_of, absolute_weights(weights))
            for b, layers_of in candidates.layers.items()}
    cost_seconds = time.perf_counter() - start

    def gflops(key) -> float:
        parts = featurizer_parts(candidates.configs[key])
        # one truncated network per backbone, up to its deepest layer
        return sum(max(cost[p["backbone"]][layer] for layer in _layers_of(p))
                   for p in parts) / 1e9

    table = pd.DataFrame({
        "feature_set": [feature_set_name(k) for k in keys],
        "score": screen["loo_score"].to_numpy(),
        "width": [candidates.sets[k].shape[1] for k in keys],
        "gflops": [gflops(k) for k in keys],
        "alpha": screen["alpha"].to_numpy(),
    })
    order = np.lexsort((table["gflops"].to_numpy(), -table["score"].to_numpy()))
    table = table.iloc[order].reset_index(drop=True)
    failures = list(data.skipped) + [(data.paths[row], reason)
                                     for row, reason in candidates.failures.items()]
    return Ranking(table=table, scoring=scoring, n_images=len(candidates.y), failures=failures,
                   seconds={"extract": extract_seconds, "screen": screen_seconds,
                            "cost": cost_seconds})
