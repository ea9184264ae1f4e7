"""From images to the features a head reads: the one route, for training, evaluation,
prediction and the report.

A model's featurizer configuration is the parameters of one :class:`featurize.CNNFeaturizer`
(``backbone``, ``weights``, ``layer``, ``pooling``, ``precision``) or ``{"parts": [params,
...]}``: the features of several backbones, concatenated in order. :func:`extract_configs`
featurizes images for any number of configurations in one pass
(:func:`featurize.extraction.extract_many`: each image is read and decoded once, then resized
for each backbone), and :func:`config_features` gives the head's input for one configuration.
Unreadable images are returned as failures (row -> reason), never silently replaced.

featurize (and torch) are imported when features are computed, not when this module is.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DEFAULT_BACKBONE", "NUMERIC_PARAMS", "Features", "absolute_weights",
           "build_extractors", "config_features", "describe_featurizer", "extract_configs",
           "featurizer_parts", "fitted_featurizer_config"]

DEFAULT_BACKBONE = "efficientnet_lite0"
#: Featurizer parameters that change the numbers (they define the head's input), with the
#: defaults of :class:`featurize.CNNFeaturizer`.
NUMERIC_PARAMS = {"backbone": DEFAULT_BACKBONE, "weights": "DEFAULT", "layer": None,
                  "pooling": "avg", "precision": "auto"}


def featurizer_parts(config: Mapping) -> list[dict]:
    """The CNNFeaturizer configurations whose features, concatenated in order, a head reads.

    Parameters
    ----------
    config : mapping
        One configuration, or ``{"parts": [config, ...]}``.

    Returns
    -------
    list of dict
    """
    if "parts" in config:
        return [dict(part) for part in config["parts"]]
    return [dict(config)]


def describe_featurizer(config: Mapping) -> dict:
    """``backbone``, ``weights``, ``layer`` and ``pooling`` of a configuration, for display:
    ``" + "``-joined over the parts of a concatenation."""
    parts = featurizer_parts(config)
    if len(parts) == 1:
        return {key: parts[0].get(key) for key in ("backbone", "weights", "layer", "pooling")}

    def text(value):
        return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    return {key: " + ".join(text(part.get(key)) for part in parts)
            for key in ("backbone", "weights", "layer", "pooling")}


def absolute_weights(weights):
    """``weights`` with a checkpoint path made absolute (a model that names ``ft.pt`` works
    from any folder); names (``"DEFAULT"``, ``"IMAGENET1K_V1"``) and None are unchanged.

    A value is a path when it is a path object, names an existing file, or looks like one (a
    folder separator, or a ``.pt`` / ``.pth`` / ``.safetensors`` suffix).
    """
    if weights is None:
        return None
    if isinstance(weights, os.PathLike) or (isinstance(weights, str) and (
            os.sep in weights or "/" in weights or os.path.isfile(weights)
            or weights.endswith((".pt", ".pth", ".safetensors")))):
        return os.path.abspath(os.path.expanduser(os.fspath(weights)))
    return weights


def _numeric(part: Mapping) -> dict:
    options = {key: part.get(key, default) for key, default in NUMERIC_PARAMS.items()}
    if isinstance(options["layer"], tuple):
        options["layer"] = list(options["layer"])
    return options


def build_extractors(config: Mapping | Sequence[Mapping], device="auto") -> list:
    """One :class:`featurize.extraction.Extractor` per part of ``config`` (a configuration,
    or a list of them), on ``device``."""
    from featurize.extraction import Extractor  # imports torch

    parts = (featurizer_parts(config) if isinstance(config, Mapping)
             else [dict(part) for part in config])
    return [Extractor(**_numeric(part), device=device) for part in parts]


@dataclass
class Features:
    """The head's input for some images.

    Attributes
    ----------
    X : ndarray of shape (n_images, n_features), float32
        The parts' features concatenated in order; NaN rows for the images that failed.
    failures : dict of int to str
        ``row -> reason`` (a row fails when any part fails).
    sources : list of str
        A printable name of every row (the path, for files).
    """

    X: np.ndarray
    failures: dict = field(default_factory=dict)
    sources: list = field(default_factory=list)

    @property
    def ok(self) -> np.ndarray:
        """Indices of the rows that have features."""
        return np.setdiff1d(np.arange(len(self.X)), list(self.failures)).astype(int)


def extract_configs(extractors, images, *, batch_size: int = 32,
                    num_workers: int | None = None, cache=None, on_error: str = "nan",
                    verbose: int = 0, progress: str | None = None, quiet: bool = True) -> list:
    """Featurize ``images`` with every extractor in one pass.

    Parameters
    ----------
    extractors : list of featurize.extraction.Extractor
        See :func:`build_extractors`.
    images : sequence or folder
        Anything :func:`featurize.images.inputs.as_sources` takes.
    batch_size, num_workers, cache, verbose, progress
        As in :func:`featurize.extraction.extract_many` (``progress="auto"``: a bar on a
        terminal, else a log line every 10 s; the bar names the backbones).
    on_error : {"nan", "raise"}, default="nan"
        ``"nan"``: failed rows are NaN and listed in each result's ``failures``.
    quiet : bool, default=True
        Do not warn about failed rows (the caller reports the returned failures).

    Returns
    -------
    list of featurize.extraction.ExtractionResult
        One per extractor, in order.
    """
    from featurize.exceptions import FeatureExtractionWarning
    from featurize.extraction import extract_many

    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", FeatureExtractionWarning)
        return extract_many(extractors, images, batch_size=batch_size, num_workers=num_workers,
                            cache=cache, on_error=on_error, verbose=verbose, progress=progress)


def config_features(extractors, images, **options) -> Features:
    """The concatenated features of ``images`` for the parts of one configuration.

    Parameters
    ----------
    extractors : list of featurize.extraction.Extractor
        The configuration's parts (:func:`build_extractors`), in order.
    images : sequence or folder
    **options
        See :func:`extract_configs`.

    Returns
    -------
    Features
    """
    results = extract_configs(extractors, images, **options)
    failures = {}
    for result in results:
        for row, reason in result.failures.items():
            failures.setdefault(row, reason)
    X = np.hstack([result.features for result in results]) if results else np.empty((0, 0))
    if failures:
        X[sorted(failures)] = np.nan  # a row that failed in one part has no features at all
    return Features(X, dict(sorted(failures.items())), list(results[0].sources))


def fitted_featurizer_config(featurizer) -> dict:
    """The configuration of a fitted :class:`featurize.CNNFeaturizer`, as a model stores it:
    its parameters that change the numbers, a checkpoint path made absolute, the precision
    resolved."""
    part = {key: featurizer.get_params()[key] for key in NUMERIC_PARAMS}
    part["weights"] = absolute_weights(part["weights"])
    if isinstance(part["layer"], tuple):
        part["layer"] = list(part["layer"])
    if part["precision"] == "auto":
        from featurize.extraction import resolve_device, resolve_precision

        part["precision"] = resolve_precision("auto", resolve_device(featurizer.device_))
    return part
