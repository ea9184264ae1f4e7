"""featurize: transfer learning by features.

A pretrained CNN truncated at an intermediate layer turns images into embeddings in large
batches; the embeddings go into an HDF5 cache; scikit-learn heads are trained on them.

The package is layered (checked by ``lint-imports``, contracts in ``pyproject.toml``), each
sub-package importing only those below it:

* :mod:`featurize.extraction`, :mod:`featurize.finetuning`: the extractor, the one extraction
  loop, the scikit-learn estimator; fine-tuning.
* :mod:`featurize.networks`: backbones, layers, pooling, engines, the device.
* :mod:`featurize.images`: decoding, folders, preprocessing, decoded batches.
* :mod:`featurize.storage`: the HDF5 feature cache, its keys and journal (no torch).
* ``options``, ``progress``, ``exceptions``, ``_version``: what every layer shares (no torch).

The public names are imported lazily, so ``import featurize`` is cheap and light modules such
as ``featurize.exceptions`` can be imported without torch.

Old module paths (``featurize.cache``, ``featurize.decoding``, ``featurize.backbones``...) are
kept as aliases: each such module replaces itself in ``sys.modules`` with the module it moved
to, so that ``featurize.cache`` *is* ``featurize.storage.cache``. Monkeypatching, ``isinstance``
and pickles then see one module, and no list of re-exported names can drift from the real
one. ``featurize.extraction``, a module that became a package, re-exports its old names.

``featurize.load_model`` is :func:`classify.load_model`, re-exported here so that the model a
``featurize train`` wrote loads with the name of the command; it is the one name of this
namespace that comes from ``classify``, and the one import of ``classify`` in ``featurize``
(an ``ignore_imports`` entry of the layer contract).
"""

from __future__ import annotations

import importlib

from featurize._version import FEATURE_VERSION, __version__

_LAZY = {
    "CNNFeaturizer": "featurize.extraction.estimator",
    "extract_features": "featurize.extraction.extractor",
    "Extractor": "featurize.extraction.extractor",
    "ExtractionResult": "featurize.extraction.passes",
    "list_backbones": "featurize.networks.backbones",
    "load_backbone": "featurize.networks.backbones",
    "list_layers": "featurize.networks.layers",
    "default_layers": "featurize.networks.layers",
    "POOLINGS": "featurize.options",
    "load_image": "featurize.images.decoding",
    "load_image_folder": "featurize.images.folder",
    "list_images": "featurize.images.folder",
    "FeatureCache": "featurize.storage.cache",
    "content_key": "featurize.storage.keys",
    "merge_caches": "featurize.storage.cache_tools",
    "FeaturizeError": "featurize.exceptions",
    "ImageDecodeError": "featurize.exceptions",
    "BackboneError": "featurize.exceptions",
    "WeightsNotFoundError": "featurize.exceptions",
    "CacheError": "featurize.exceptions",
    "FeatureExtractionWarning": "featurize.exceptions",
}

__all__ = ["FEATURE_VERSION", "__version__", *_LAZY, "load_model"]


def __getattr__(name: str):
    if name == "load_model":
        # the models of `featurize train` (classify's FittedModel); see the module docstring
        from classify import load_model

        globals()[name] = load_model
        return load_model
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featurize' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
