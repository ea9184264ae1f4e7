"""CNNFeaturizer: a scikit-learn transformer from images to CNN embeddings."""

from __future__ import annotations

import os
import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from featurize.options import check_extraction_options


class CNNFeaturizer(TransformerMixin, BaseEstimator):
    """Turn images into embeddings from a pretrained CNN truncated at an intermediate layer.

    A stateless transformer: ``fit`` learns nothing from the data, it loads the backbone; a fitted
    featurizer turns any images into one row of features each. It drops into ``Pipeline``,
    ``cross_val_score`` and ``GridSearchCV`` (also with ``n_jobs>1``), and with ``cache=`` the
    features of every image are computed once across folds, grid points and runs.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        A name from :func:`featurize.list_backbones`. The default ships its ImageNet weights in
        a pip package, so it works offline.
    weights : str, path-like or None, default="DEFAULT"
        ``"DEFAULT"``, a torchvision weights enum name (``"IMAGENET1K_V1"``), a local state-dict
        checkpoint path, or None for a deterministic random initialisation.
    layer : str, list of str or None, default=None
        Layer name(s) from :func:`featurize.list_layers`. None is ``"penultimate"``, the
        embedding the network's own classifier uses. A list reads several layers in one forward
        pass; their pooled outputs are concatenated in the order given.
    pooling : {"avg", "max", "catavgmax", "gem", "flatten"}, default="avg"
        How a layer's feature map becomes a vector.
    batch_size : int, default=32
        Images per forward pass (halved automatically on a GPU out-of-memory error).
    device : str, default="auto"
        ``"auto"`` picks CUDA, then MPS, then CPU.
    num_workers : int or None, default=None
        Threads decoding images (None: one per core, at most 8; 0: the calling thread). No
        process is ever started, so the featurizer runs inside scikit-learn's ``n_jobs``
        workers and under every multiprocessing start method.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        ``"auto"`` is mixed precision on CUDA, fp32 on CPU.
    cache : str, path-like, FeatureCache or None, default=None
        HDF5 feature cache (see :class:`featurize.FeatureCache`); None stores nothing. A
        relative path is relative to the working folder at ``fit``: the fitted featurizer
        keeps the absolute path (``cache_``), so a pickled one uses the same file wherever it
        is loaded.
    on_error : {"raise", "nan"}, default="raise"
        ``"raise"``: an unreadable image raises an error naming the file and the reason.
        ``"nan"``: its row is NaN, and one :class:`~featurize.exceptions.FeatureExtractionWarning`
        gives the count and the first files; its ``failures`` attribute lists every failed row
        (``transform`` itself changes no state, as scikit-learn requires).
    verbose : int, default=0
        ``1`` shows a progress bar with images/s.

    Attributes
    ----------
    n_features_out_ : int
        Width of the output rows.
    layers_ : list of str
        The layers read, in output order.
    feature_widths_ : dict of str to int
        Width of each layer's part of a row.
    preprocessing_ : dict
        Resize, crop, mean, std and interpolation used (they come from the weights).
    cache_ : str, FeatureCache or None
        The cache used: ``cache`` with a path made absolute at ``fit``.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline                  # doctest: +SKIP
    >>> from sklearn.linear_model import LogisticRegression        # doctest: +SKIP
    >>> clf = make_pipeline(CNNFeaturizer(cache="feats.h5"),       # doctest: +SKIP
    ...                     LogisticRegression(max_iter=2000))
    >>> clf.fit(train_paths, y_train).score(val_paths, y_val)      # doctest: +SKIP
    """

    def __init__(self, *, backbone="efficientnet_lite0", weights="DEFAULT", layer=None,
                 pooling="avg", batch_size=32, device="auto", num_workers=None,
                 precision="auto", cache=None, on_error="raise", verbose=0):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.precision = precision
        self.cache = cache
        self.on_error = on_error
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True  # file paths
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def _validate_params(self) -> None:
        check_extraction_options(
            owner="CNNFeaturizer", cached=True, backbone=self.backbone, layer=self.layer,
            pooling=self.pooling, precision=self.precision, on_error=self.on_error,
            batch_size=self.batch_size, num_workers=self.num_workers)

    def _build(self):
        # Imported here, not at the top: the extractor imports torch, and a CNNFeaturizer is
        # made, cloned, validated and unpickled (inside a saved model) without it.
        from featurize.extraction.extractor import Extractor

        layer = list(self.layer) if isinstance(self.layer, tuple) else self.layer
        self._built_for_device = self.device
        return Extractor(self.backbone, self.weights, layer, self.pooling, self.device,
                         self.precision)

    def fit(self, X=None, y=None):
        """Load the backbone; nothing is learnt from ``X``.

        Parameters
        ----------
        X : ignored
            Images are not read at fit time (the transformer is stateless).
        y : ignored

        Returns
        -------
        self : CNNFeaturizer
        """
        self._validate_params()
        extractor = self._build()
        self._extractor = extractor
        self.layers_ = list(extractor.layers)
        self.feature_widths_ = dict(extractor.widths)
        self.n_features_out_ = extractor.n_features
        self.preprocessing_ = extractor.preprocessing.to_dict()
        self.device_ = str(extractor.device)
        self.cache_ = _absolute_cache(self.cache)
        self._cache_param = self.cache  # set_params(cache=...) after fit is honoured
        return self

    def _cache(self):
        given = getattr(self, "_cache_param", self.cache)
        if self.cache is given or self.cache == given:
            return getattr(self, "cache_", self.cache)
        return _absolute_cache(self.cache)

    def _get_extractor(self):
        extractor = getattr(self, "_extractor", None)
        if extractor is None or getattr(self, "_built_for_device", self.device) != self.device:
            # after unpickling, or set_params(device=...) after fit: load again, lazily
            extractor = self._extractor = self._build()
        return extractor

    def transform(self, X):
        """Return one row of features per image.

        Parameters
        ----------
        X : sequence of paths, PIL images or arrays, a folder, an ndarray, or a pandas Series
            See :func:`featurize.extract_features`.

        Returns
        -------
        ndarray of shape (n_images, n_features_out_), float32
        """
        check_is_fitted(self, "n_features_out_")
        return self._get_extractor().extract(
            X, batch_size=self.batch_size, num_workers=self.num_workers, cache=self._cache(),
            on_error=self.on_error, verbose=self.verbose,
        ).features

    def get_feature_names_out(self, input_features=None):
        """Output column names: ``"<layer>_<pooling>_<i>"`` for each layer read.

        Parameters
        ----------
        input_features : ignored

        Returns
        -------
        ndarray of str
        """
        check_is_fitted(self, "n_features_out_")
        names = []
        for layer in self.layers_:
            names += [f"{layer}_{self.pooling}_{i}" for i in range(self.feature_widths_[layer])]
        return np.asarray(names, dtype=object)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_extractor", None)  # the network and its device memory do not travel
        state.pop("_built_for_device", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        cache = state.get("cache_")
        if isinstance(cache, str) and not os.path.isdir(os.path.dirname(cache)):
            warnings.warn(f"This CNNFeaturizer was fitted with the feature cache {cache!r}, "
                          "whose folder does not exist here: transform will fail to open it. "
                          "Set another with set_params(cache=...) and fit again.", UserWarning,
                          stacklevel=2)


def _absolute_cache(cache):
    """A cache path made absolute (a FeatureCache or None unchanged)."""
    if isinstance(cache, (str, os.PathLike)):
        return os.path.abspath(os.path.expanduser(os.fspath(cache)))
    return cache
