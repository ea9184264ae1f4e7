"""The options of an extraction, listed and validated once (no torch import).

The function (:func:`featurize.extract_features`), the estimator
(:class:`featurize.CNNFeaturizer`), the job spec and the command line (:mod:`pipelines`) and a
saved model (:class:`classify.FittedModel`) all describe an extraction with the same options;
they take their choices from here and check their values with :func:`check_extraction_options`,
which raises one exception type, :class:`~featurize.exceptions.ConfigError`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from featurize.exceptions import ConfigError

__all__ = [
    "CACHED_POOLINGS",
    "CACHE_DTYPES",
    "ENGINES",
    "ON_ERROR",
    "POOLINGS",
    "POOLING_ALIASES",
    "PRECISIONS",
    "check_choice",
    "check_extraction_options",
    "parse_weights",
    "pooling_key",
]

#: Pooling names. ``catavgmax`` is the concatenation of ``avg`` and ``max`` (timm's name; in
#: timm ``avgmax`` is their *average*); ``avgmax``, featurize's first name for the
#: concatenation, is an alias of it. ``none`` returns the maps themselves (extraction function
#: only).
POOLINGS = ("avg", "max", "catavgmax", "avgmax", "gem", "flatten", "cls", "mean", "clsmean",
            "none")
#: Old pooling names and the name they stand for.
POOLING_ALIASES = {"avgmax": "catavgmax"}
#: The name a pooling has in cache keys where it is not its own: ``catavgmax`` keeps the key
#: of ``avgmax``, under which it was cached first, so that those caches stay warm.
_POOLING_KEYS = {"catavgmax": "avgmax"}
#: Poolings whose rows a cache can store (every one but ``none``).
CACHED_POOLINGS = tuple(p for p in POOLINGS if p != "none")
#: Forward-pass precisions; ``auto`` is resolved per device and engine (bf16/fp16 on CUDA; bf16
#: on a CPU that computes it natively, with OpenVINO; fp32 elsewhere; see
#: :func:`featurize.networks.runtimes.resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Forward-pass engines (see :mod:`featurize.networks.runtimes`).
ENGINES = ("auto", "eager", "onnxruntime", "openvino", "torchscript", "compile")
#: Storage types of features in the cache.
CACHE_DTYPES = ("float32", "float16")
#: What an unreadable image does.
ON_ERROR = ("raise", "nan")
_NO_WEIGHTS = ("none", "None", "random")


def check_choice(name: str, value: Any, choices: Sequence[str], *, owner: str = "featurize",
                 hint: str = "") -> str:
    """Return ``value`` if it is one of ``choices``, else raise ConfigError naming the option."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"The {name!r} option of {owner} must be one of {list(choices)}; got "
                          f"{value!r}.{(' ' + hint) if hint else ''}")
    return value


def _check_int(name: str, value: Any, minimum: int, owner: str, allow_none: bool = False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ConfigError(f"The {name!r} option of {owner} must be {expected}; got {value!r}.")


def check_extraction_options(*, owner: str = "featurize", cached: bool = False,
                             **options: Any) -> dict[str, Any]:
    """Validate extraction options (any subset) without loading anything.

    Parameters
    ----------
    owner : str
        Who is asking, for the message (``"CNNFeaturizer"``, ``"featurize extract"``...).
    cached : bool, default=False
        The rows go to a cache: ``pooling="none"`` is refused.
    **options
        Any of ``backbone``, ``layer``, ``pooling``, ``precision``, ``engine``, ``on_error``,
        ``batch_size``, ``num_workers``, ``dtype``.

    Returns
    -------
    dict
        ``options``, unchanged.

    Raises
    ------
    ConfigError
        The first invalid option, with what was expected.
    """
    if "backbone" in options and not isinstance(options["backbone"], str):
        raise ConfigError(f"The 'backbone' option of {owner} must be a str from "
                          f"featurize.list_backbones(); got {options['backbone']!r}.")
    if "layer" in options:
        layer = options["layer"]
        if layer is not None and not isinstance(layer, (str, list, tuple)):
            raise ConfigError(f"The 'layer' option of {owner} must be None, a layer name or a "
                              f"list of layer names; got {layer!r}.")
        if isinstance(layer, (list, tuple)) and not layer:
            raise ConfigError(f"The 'layer' option of {owner} names no layer; leave it out (or "
                              "None) for the default embedding.")
    if "pooling" in options:
        check_choice("pooling", options["pooling"], CACHED_POOLINGS if cached else POOLINGS,
                     owner=owner, hint="('none' returns feature maps, which are not cached.)"
                     if cached and options["pooling"] == "none" else "")
    for name, choices in (("precision", PRECISIONS), ("engine", ENGINES),
                          ("on_error", ON_ERROR), ("dtype", CACHE_DTYPES)):
        if name in options:
            check_choice(name, options[name], choices, owner=owner)
    if "batch_size" in options:
        _check_int("batch_size", options["batch_size"], 1, owner)
    if "num_workers" in options:
        _check_int("num_workers", options["num_workers"], 0, owner, allow_none=True)
    return options


def parse_weights(text: str | None) -> str | None:
    """``"none"`` (or ``"None"``, ``"random"``) means a random initialisation: None."""
    return None if text is None or text in _NO_WEIGHTS else text


def pooling_key(pooling: str) -> str:
    """The name of ``pooling`` in a cache key: ``"avgmax"`` for ``"catavgmax"`` and its alias
    ``"avgmax"`` (one key for one computation, the key caches already hold), else itself."""
    name = POOLING_ALIASES.get(pooling, pooling)
    return _POOLING_KEYS.get(name, name)
