"""featurize: transfer learning by features.

A pretrained CNN truncated at an intermediate layer turns images into embeddings in large
batches; the embeddings go into an HDF5 cache; scikit-learn heads are trained on them.

The public names are imported lazily, so ``import featurize`` is cheap and light modules such
as ``featurize.exceptions`` can be imported without torch.

``featurize.load_model`` is :func:`classify.load_model`, re-exported here so that the model a
``featurize train`` wrote loads with the name of the command; it is the one name of this
namespace that comes from ``classify`` (no module of ``featurize`` imports ``classify``).
"""

from __future__ import annotations

import importlib

from featurize._version import FEATURE_VERSION, __version__

_LAZY = {
    "CNNFeaturizer": "featurize.estimator",
    "extract_features": "featurize.extraction",
    "Extractor": "featurize.extraction",
    "ExtractionResult": "featurize.extraction",
    "list_backbones": "featurize.backbones",
    "load_backbone": "featurize.backbones",
    "list_layers": "featurize.layers",
    "default_layers": "featurize.layers",
    "POOLINGS": "featurize.pooling",
    "load_image": "featurize.decoding",
    "load_image_folder": "featurize.folder",
    "list_images": "featurize.folder",
    "FeatureCache": "featurize.cache",
    "content_key": "featurize.cache",
    "merge_caches": "featurize.cache_tools",
    "FeaturizeError": "featurize.exceptions",
    "ImageDecodeError": "featurize.exceptions",
    "BackboneError": "featurize.exceptions",
    "WeightsNotFoundError": "featurize.exceptions",
    "CacheError": "featurize.exceptions",
    "FeatureExtractionWarning": "featurize.exceptions",
    # the models of `featurize train` (classify.model.FittedModel); see the module docstring
    "load_model": "classify.model",
}

__all__ = ["FEATURE_VERSION", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featurize' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
