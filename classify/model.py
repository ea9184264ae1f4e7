"""A trained image classifier: featurizer configuration + fitted head + provenance.

:func:`train_model` runs the selection (:func:`~classify.selection.select_model`) on training
features, refits the chosen head on all of them and returns a :class:`FittedModel`. The model
predicts on precomputed features (:meth:`FittedModel.predict_features`) or on images
(:meth:`FittedModel.predict`), building a :class:`featurize.CNNFeaturizer` from the stored
configuration on first use (featurize and torch are imported only then).

.. warning::
   Model files are pickles (joblib). Loading one runs code chosen by whoever wrote it: load only
   files you made or trust, never files from untrusted sources.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
from collections.abc import Mapping

import joblib
import numpy as np
import sklearn
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_array, check_is_fitted

from classify.reports import format_frame, format_scores
from classify.selection import SelectionResult, feature_set_name, select_model

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "FittedModel", "describe_featurizer", "featurizer_parts",
           "load_model", "train_model"]

#: Layout version of saved model files; bump it when a change makes old files unreadable.
#: 2: ``featurizer_config`` may be ``{"parts": [config, ...]}`` (features of several backbones,
#: concatenated). Files of version 1 (one configuration) are still read.
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_FORMAT = "featurize.classify.FittedModel"

#: CNNFeaturizer parameters that change the numbers: they may not be overridden at predict time.
_NUMERIC_PARAMS = ("backbone", "weights", "layer", "pooling", "precision")


def featurizer_parts(config: Mapping) -> list[dict]:
    """The CNNFeaturizer configurations whose features, concatenated in order, a head reads.

    A model's ``featurizer_config`` is either the parameters of one
    :class:`featurize.CNNFeaturizer` or ``{"parts": [params, ...]}``: the features of several
    backbones (each with its own layers), concatenated in the order of the list.

    Parameters
    ----------
    config : mapping

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


def _featurize_version() -> str:
    from featurize._version import __version__  # torch-free module

    return __version__


class FittedModel:
    """A head fitted on CNN features, with the featurizer configuration that produced them.

    Parameters
    ----------
    estimator : fitted classifier
        The head (usually a :func:`~classify.heads.make_head` pipeline), fitted on the features
        of the chosen layer and pooling.
    featurizer_config : dict, default=None
        Parameters of :class:`featurize.CNNFeaturizer` (backbone, weights, layer, pooling, ...)
        that turn an image into the head's input, or ``{"parts": [params, ...]}`` when the head
        reads the concatenated features of several featurizers (see :func:`featurizer_parts`).
        Stored as given.
    provenance : dict, default=None
        Where the model comes from (backbone, layer, pooling, head, parameters, CV scores, class
        names, versions...); see :func:`train_model`.
    reports : dict of str to pandas.DataFrame, default=None
        Cross-validation reports kept with the model: ``"table"`` (every candidate),
        ``"per_class"``, ``"confusion"``, ``"fold_scores"``, ``"nested"`` (when run),
        ``"oof_predictions"`` and ``"oof_confidence"`` (see :class:`~classify.cv.CVResult`);
        ``featurize train`` adds ``"train_paths"`` (the image of each training row) and
        ``"train_failures"`` ((path, reason) of the images left out).

    Notes
    -----
    Save with :meth:`save`, load with :func:`load_model`. Model files are pickles: load only
    files you trust.
    """

    def __init__(self, estimator: BaseEstimator, *, featurizer_config: dict | None = None,
                 provenance: dict | None = None, reports: dict | None = None):
        check_is_fitted(estimator)
        self.estimator = estimator
        self.featurizer_config = dict(featurizer_config or {})
        self.provenance = dict(provenance or {})
        self.reports = dict(reports or {})
        self._featurizer = None

    # -- description ------------------------------------------------------------------------

    @property
    def classes_(self) -> np.ndarray:
        """Class labels, in the column order of :meth:`predict_proba`."""
        return self.estimator.classes_

    @property
    def has_proba(self) -> bool:
        """Whether the head gives probabilities (logreg, or a calibrated SVM)."""
        return hasattr(self.estimator, "predict_proba")

    @property
    def cv_scores(self) -> dict:
        """Mean cross-validated scores of the chosen configuration (training data)."""
        return dict(self.provenance.get("cv_scores", {}))

    def __repr__(self) -> str:
        p, d = self.provenance, describe_featurizer(self.featurizer_config)
        return (f"FittedModel(backbone={d['backbone']!r}, layer={d['layer']!r}, "
                f"pooling={d['pooling']!r}, head={p.get('head')!r}, "
                f"params={p.get('params')!r}, classes={list(map(str, self.classes_))!r})")

    def to_text(self) -> str:
        """Configuration, provenance and cross-validation summary as text."""
        p = self.provenance
        cfg = describe_featurizer(self.featurizer_config)
        lines = [
            f"featurize model (format {FORMAT_VERSION}, featurize {p.get('featurize_version')})",
            f"  backbone: {cfg.get('backbone')}  weights: {cfg.get('weights')}",
            f"  layer: {cfg.get('layer')}  pooling: {cfg.get('pooling')}",
            f"  head: {p.get('head')}  params: {p.get('params')}",
            f"  classes: {', '.join(map(str, self.classes_))}",
            f"  trained on {p.get('n_samples')} images x {p.get('n_features')} features",
        ]
        if p.get("cv_scores"):
            cv = p.get("cv", {})
            lines.append(f"Cross-validation on the training data ({cv.get('n_repeats')} x "
                         f"{cv.get('n_splits')}-fold):")
            lines.append(format_scores(p["cv_scores"], p.get("cv_std")))
        if p.get("nested_scores"):
            lines.append("Nested cross-validation (unbiased estimate of the procedure):")
            lines.append(format_scores(p["nested_scores"], p.get("nested_std")))
        if "per_class" in self.reports:
            lines += ["Per-class report (out-of-fold):", format_frame(self.reports["per_class"])]
        return "\n".join(lines)

    # -- prediction on features -------------------------------------------------------------

    def _check_features(self, X) -> np.ndarray:
        X = check_array(X, dtype=(np.float64, np.float32), ensure_all_finite=False)
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        if bad.size:
            raise ValueError(
                f"Feature rows {bad[:10].tolist()}{'...' if bad.size > 10 else ''} contain NaN or"
                " infinity (images that failed to load get NaN rows); drop them before predicting."
            )
        return X

    def predict_features(self, X) -> np.ndarray:
        """Predict class labels from precomputed features.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features of the stored layer and pooling (as :meth:`transform` computes them).

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        return self.estimator.predict(self._check_features(X))

    def predict_proba_features(self, X) -> np.ndarray:
        """Class probabilities from precomputed features (columns: :attr:`classes_`).

        Raises
        ------
        AttributeError
            The head has no probabilities (an SVM trained without ``probability=True``).
        """
        if not self.has_proba:
            raise AttributeError(
                f"This model's head ({self.provenance.get('head', type(self.estimator).__name__)}"
                ") gives no probabilities; train it with probability=True (calibrated SVM) or use"
                " the logreg head."
            )
        return self.estimator.predict_proba(self._check_features(X))

    # -- prediction on images ---------------------------------------------------------------

    def featurizer(self, **overrides):
        """The fitted :class:`featurize.CNNFeaturizer` of this model (built once, then reused).

        A model that reads several featurizers' features gets a
        :class:`sklearn.pipeline.FeatureUnion` of them (their columns concatenated in order).

        Parameters
        ----------
        **overrides
            Run-time parameters (``batch_size``, ``device``, ``num_workers``, ``cache``,
            ``on_error``, ``verbose``). Parameters that change the numbers (backbone, weights,
            layer, pooling, precision) cannot be overridden.
        """
        fixed = sorted(set(overrides) & set(_NUMERIC_PARAMS))
        if fixed:
            raise ValueError(f"{fixed} define the features the head was trained on and cannot be "
                             "overridden; train another model instead.")
        if self._featurizer is None:
            from featurize.estimator import CNNFeaturizer  # imports torch

            parts = [CNNFeaturizer(**part).fit()
                     for part in featurizer_parts(self.featurizer_config)]
            if len(parts) == 1:
                self._featurizer = parts[0]
            else:
                from sklearn.pipeline import FeatureUnion

                self._featurizer = FeatureUnion([(f"part{i}", part)
                                                 for i, part in enumerate(parts)])
        if overrides:
            names = [name for name, _ in getattr(self._featurizer, "transformer_list", [])]
            self._featurizer.set_params(**(
                {f"{name}__{key}": value for name in names for key, value in overrides.items()}
                if names else overrides))
        return self._featurizer

    def transform(self, images, **overrides) -> np.ndarray:
        """Features of ``images`` as the head expects them (see :meth:`featurizer`)."""
        return self.featurizer(**overrides).transform(images)

    def predict(self, images, **overrides) -> np.ndarray:
        """Predict class labels of images (paths, PIL images, arrays, a folder...).

        Parameters
        ----------
        images : sequence or folder
            Anything :class:`featurize.CNNFeaturizer` accepts.
        **overrides
            Run-time featurizer parameters, see :meth:`featurizer`.

        Returns
        -------
        ndarray of shape (n_images,)
        """
        return self.predict_features(self.transform(images, **overrides))

    def predict_proba(self, images, **overrides) -> np.ndarray:
        """Class probabilities of images (columns: :attr:`classes_`)."""
        return self.predict_proba_features(self.transform(images, **overrides))

    def report(self, data_dir, test_dir=None, *, out=None, map_method: str = "pca",
               extra: dict | None = None, **overrides):
        """A self-contained HTML report of this model on its data, with the images in it.

        See :func:`classify.html_report.report_from_folders`. In a notebook the returned
        object displays inline.

        Parameters
        ----------
        data_dir : path
            The folder the model was trained on.
        test_dir : path, default=None
            A labelled test folder.
        out : path, default=None
            Also write the HTML file there.
        map_method : {"pca", "tsne"}, default="pca"
        extra : dict, default=None
            More sections (title -> HTML) shown after the summary.
        **overrides
            Run-time featurizer parameters (``cache``, ``device``...).

        Returns
        -------
        classify.html_report.Report
        """
        from classify.html_report import report_from_folders

        result = report_from_folders(self, data_dir, test_dir, map_method=map_method,
                                     extra=extra, **overrides)
        if out is not None:
            result.save(out)
        return result

    # -- persistence ------------------------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_featurizer"] = None  # the network does not travel; rebuilt on first use
        return state

    def save(self, path: str | os.PathLike, *, compress: int = 3) -> None:
        """Write the model to ``path`` with joblib.

        The file holds the fitted head, the featurizer configuration, provenance and reports,
        plus ``format_version`` so that an incompatible featurize refuses it clearly. It is a
        pickle: whoever loads it runs code chosen by whoever wrote it.
        """
        payload = {
            "format": _FORMAT,
            "format_version": FORMAT_VERSION,
            "featurize_version": _featurize_version(),
            "sklearn_version": sklearn.__version__,
            "state": {
                "estimator": self.estimator,
                "featurizer_config": self.featurizer_config,
                "provenance": self.provenance,
                "reports": self.reports,
            },
        }
        # Written beside the target and renamed: Ctrl-C or a kill never leaves a partial model.
        tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
        try:
            joblib.dump(payload, tmp, compress=compress)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def load_model(path: str | os.PathLike) -> FittedModel:
    """Load a model written by :meth:`FittedModel.save`.

    .. warning::
       This unpickles the file, which can run arbitrary code. Load only files you trust.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    FittedModel

    Raises
    ------
    featurize.exceptions.ModelVersionError
        The file was written with another ``format_version`` than this featurize reads.
    ValueError
        The file is not a featurize model.
    FileNotFoundError
        No such file.
    """
    from featurize.exceptions import ModelVersionError  # torch-free module

    with open(path, "rb") as fh:
        if fh.read(2) == b"PK":  # a torch (zip) checkpoint: a fine-tuned network?
            return _load_finetuned(path)
    try:
        payload = joblib.load(path)
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError, AttributeError,
            ImportError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a readable featurize model file "
                         f"({type(exc).__name__}: {exc}).") from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a featurize model file (it holds a "
                         f"{type(payload).__name__}); write models with FittedModel.save.")
    version = payload.get("format_version")
    if version not in _READABLE_VERSIONS:
        raise ModelVersionError(
            f"{os.fspath(path)!r} has model format version {version!r} (written by featurize "
            f"{payload.get('featurize_version')}); this featurize {_featurize_version()} reads "
            f"format versions {', '.join(map(str, _READABLE_VERSIONS))}. Retrain the model with "
            f"this version, or load it with featurize {payload.get('featurize_version')}."
        )
    if payload.get("sklearn_version") != sklearn.__version__:
        logger.warning("model %s was written with scikit-learn %s; this is %s",
                       os.fspath(path), payload.get("sklearn_version"), sklearn.__version__)
    return FittedModel(**payload["state"])


class LinearHead(ClassifierMixin, BaseEstimator):
    """A fixed linear classifier (``coef_``, ``intercept_``, softmax probabilities): the last
    layer of a fine-tuned network, applied to its penultimate features."""

    def __init__(self, coef=None, intercept=None, classes=None):
        self.coef = coef
        self.intercept = intercept
        self.classes = classes

    def fit(self, X=None, y=None):
        self.coef_ = np.asarray(self.coef, dtype=np.float64)
        self.intercept_ = np.asarray(self.intercept, dtype=np.float64)
        self.classes_ = np.asarray(self.classes)
        return self

    def decision_function(self, X):
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict_proba(self, X):
        z = self.decision_function(X)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.decision_function(X).argmax(axis=1)]


def _load_finetuned(path) -> FittedModel:
    """A checkpoint of :func:`featurize.finetune.finetune` as a model that predicts like a
    trained one: penultimate features of the fine-tuned network, then its classifier."""
    import torch

    from featurize.finetune import is_finetuned_checkpoint

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a readable featurize model file "
                         f"({type(exc).__name__}: {exc}).") from exc
    if not is_finetuned_checkpoint(payload):
        raise ValueError(f"{os.fspath(path)!r} is a torch checkpoint, not a featurize model: "
                         "train one with `featurize train` or `featurize finetune`.")
    head = LinearHead(payload["head_weight"].numpy(), payload["head_bias"].numpy(),
                      payload["classes"]).fit()
    config = {"backbone": payload["backbone"], "weights": os.path.abspath(os.fspath(path)),
              "layer": "penultimate", "pooling": "avg"}
    provenance = {"backbone": payload["backbone"], "weights": config["weights"],
                  "layer": "penultimate", "pooling": "avg", "head": "fine-tuned",
                  "params": {"best_epoch": payload["best_epoch"], "seed": payload["seed"]},
                  "classes": payload["classes"], "scoring": "balanced_accuracy",
                  "val_scores": {"balanced_accuracy": payload["val_balanced_accuracy"]},
                  "history": payload["history"], "featurize_version": _featurize_version()}
    return FittedModel(head, featurizer_config=config, provenance=provenance,
                       reports={"val_paths": payload["val_paths"]})


def _plain(scores: dict) -> dict:
    """Scores as plain floats, NaN (no probabilities) as None: comparable and JSON-ready."""
    return {name: (float(v) if np.isfinite(v) else None) for name, v in scores.items()}


def _layer_pooling(key) -> dict:
    if isinstance(key, tuple) and len(key) == 2:
        return {"layer": key[0], "pooling": key[1]}
    return {}


def fit_selected(selection: SelectionResult, feature_sets, y, *,
                 featurizer_config: dict | None = None) -> FittedModel:
    """Refit the configuration chosen by a selection on all its training data.

    Parameters
    ----------
    selection : SelectionResult
        What :func:`~classify.selection.select_model` returned for ``feature_sets`` and ``y``.
    feature_sets : mapping or array
        The same feature sets as given to the selection.
    y : array-like of shape (n_samples,)
        The same labels.
    featurizer_config : dict, default=None
        CNNFeaturizer parameters of the chosen feature set (or ``{"parts": [...]}``, see
        :func:`featurizer_parts`); ``layer`` and ``pooling`` are taken from the chosen feature
        set's key when it is a ``(layer, pooling)`` tuple and the configuration names neither.

    Returns
    -------
    FittedModel
    """
    key = selection.best_feature_set
    X = feature_sets[key] if isinstance(feature_sets, Mapping) else feature_sets
    X = check_array(X, dtype=(np.float64, np.float32))
    y = np.asarray(y)
    estimator = selection.best_estimator().fit(X, y)
    config = dict(featurizer_config or {})
    if "parts" not in config:
        config = {**_layer_pooling(key), **config}
    shown = describe_featurizer(config)
    cv = selection.best_cv
    classes, counts = np.unique(y, return_counts=True)
    provenance = {
        "format_version": FORMAT_VERSION,
        "featurize_version": _featurize_version(),
        "sklearn_version": sklearn.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backbone": shown["backbone"],
        "weights": shown["weights"],
        "layer": shown["layer"],
        "pooling": shown["pooling"],
        "feature_set": feature_set_name(key),
        "head": selection.best_head,
        "params": selection.best_params,
        "scoring": selection.scoring,
        "cv": {"n_splits": cv.n_splits, "n_repeats": cv.n_repeats,
               "random_state": cv.random_state, "notes": list(selection.notes)},
        "cv_scores": _plain(cv.mean_scores()),
        "cv_std": _plain(cv.std_scores()),
        "classes": [str(c) for c in classes],
        "class_counts": {str(c): int(n) for c, n in zip(classes, counts)},
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
    }
    reports = {"table": selection.table, "per_class": cv.per_class_report(),
               "confusion": cv.confusion_matrix(), "fold_scores": cv.fold_scores,
               # out-of-fold predicted codes and confidences, row i = training row i
               "oof_predictions": cv.oof_predictions, "oof_confidence": cv.oof_confidence}
    if selection.nested is not None:
        provenance["nested_scores"] = _plain(selection.nested.mean_scores())
        provenance["nested_std"] = _plain(selection.nested.std_scores())
        reports["nested"] = selection.nested.fold_scores
    return FittedModel(estimator, featurizer_config=config, provenance=provenance,
                       reports=reports)


def train_model(feature_sets, y, *, featurizer_config: dict | None = None,
                **selection_params) -> FittedModel:
    """Select feature set, head and parameters by cross-validation, then fit on all the data.

    Parameters
    ----------
    feature_sets : mapping of key to array-like, or array-like
        Training features per candidate (layer, pooling); see
        :func:`~classify.selection.select_model`. Use ``(layer, pooling)`` tuples as keys so
        that the model knows how to featurize new images.
    y : array-like of shape (n_samples,)
        Class labels (e.g. ``np.asarray(data.target_names)[data.target]``).
    featurizer_config : dict, default=None
        CNNFeaturizer parameters used to extract ``feature_sets`` (backbone, weights, ...).
    **selection_params
        Passed to :func:`~classify.selection.select_model` (``heads``, ``param_grids``,
        ``probability``, ``scoring``, ``n_splits``, ``n_repeats``, ``nested``, ``n_jobs``...).

    Returns
    -------
    FittedModel
        ``provenance`` holds the choice and its cross-validated scores; ``reports`` the tables.
    """
    selection = select_model(feature_sets, y, **selection_params)
    return fit_selected(selection, feature_sets, y, featurizer_config=featurizer_config)
