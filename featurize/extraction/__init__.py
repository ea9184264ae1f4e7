"""Extraction: images in, one row of features per image out, through the cache.

=========================  ==========================================================
``extractor``              :class:`Extractor` (a truncated backbone run by an engine),
                           :func:`extract_features`
``passes``                 :func:`extract_many`: several extractors in one pass,
                           :class:`ExtractionResult`
``loop``                   the one extraction loop (plan, look up, decode once,
                           compute, check, write, sink)
``engine_table``           the engines this process built (the one process-global
                           table)
``estimator``              :class:`CNNFeaturizer`, the scikit-learn transformer
=========================  ==========================================================

``featurize.extraction`` was a module before it became this package, and its public names
are still importable from here (``from featurize.extraction import Extractor``). They are
re-exported lazily (PEP 562), so that importing a light module of the package (the
estimator) does not import torch. A package cannot be an alias of one of its modules, so
unlike the other old paths (see ``featurize/cache.py``) these are re-exported names: patch
them where they are defined (``featurize.extraction.extractor``), not here.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Extractor": "featurize.extraction.extractor",
    "extract_features": "featurize.extraction.extractor",
    "resolve_precision": "featurize.networks.runtimes",
    "ExtractionResult": "featurize.extraction.passes",
    "extract_many": "featurize.extraction.passes",
    "resolve_device": "featurize.networks.hardware",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featurize.extraction' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
