"""A trained image classifier: featurizer configuration + fitted head + provenance.

:class:`FittedModel` predicts on precomputed features (:meth:`FittedModel.predict_features`)
or on images (:meth:`FittedModel.predict`), computing their features through
:mod:`classify.features` (featurize and torch are imported only then); it evaluates, predicts
and reports on folders (:mod:`classify.folders`), and converts to and from a scikit-learn
``Pipeline``. Models are made by :mod:`classify.training` (:func:`classify.train_model`,
:func:`classify.train_folder`), written and read by :mod:`classify.persistence`
(:meth:`FittedModel.save`, :func:`load_model`); a ``featurize finetune`` checkpoint is read as a
model by :mod:`classify.finetuned`.

.. warning::
   Model files are pickles (joblib). Loading one runs code chosen by whoever wrote it: load only
   files you made or trust, never files from untrusted sources.
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.utils.validation import check_array, check_is_fitted

from classify import folders, persistence
from classify.features import (
    NUMERIC_PARAMS,
    Features,
    build_extractors,
    config_features,
    describe_featurizer,
    featurizer_parts,
    fitted_featurizer_config,
)
from classify.persistence import FORMAT_VERSION
from classify.reports import format_frame, format_scores, optimism_note

__all__ = ["FORMAT_VERSION", "FittedModel", "describe_featurizer", "featurizer_parts",
           "load_model"]

#: CNNFeaturizer parameters that change the numbers: they may not be overridden at predict time.
_NUMERIC_PARAMS = tuple(NUMERIC_PARAMS)


def __getattr__(name: str):
    # A fine-tuned model saved by an earlier featurize names its head classify.model.LinearHead.
    if name == "LinearHead":
        from classify.finetuned import LinearHead

        return LinearHead
    raise AttributeError(f"module 'classify.model' has no attribute {name!r}")


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
        :func:`classify.train_folder` (``featurize train``) adds ``"train_paths"`` (the image
        of each training row, relative to the training folder, ``/``-separated),
        ``"train_labels"`` (its class) and ``"train_failures"`` ((path, reason) of the files
        left out).

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
        self._extractors = {}

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
                         f"{cv.get('n_splits')}-fold; "
                         f"{optimism_note(p.get('n_candidates'), bool(p.get('nested_scores')))}"
                         "):")
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

    def features(self, images, *, cache=None, device="auto", batch_size: int = 32,
                 num_workers: int | None = None, on_error: str = "nan", verbose: int = 0,
                 progress: str | None = None) -> Features:
        """The head's input for ``images``: the one route from images to this model's
        features (used by :meth:`predict`, :meth:`evaluate`, :meth:`report` and the command
        line).

        Every part of the featurizer configuration is computed in one pass over the images
        (each image read and decoded once, see :func:`classify.features.extract_configs`).

        Parameters
        ----------
        images : sequence or folder
            Anything :class:`featurize.CNNFeaturizer` accepts.
        cache : str, path-like, FeatureCache or None, default=None
            HDF5 feature cache (e.g. the one training used: nothing is computed again).
        device : str, default="auto"
        batch_size : int, default=32
        num_workers : int or None, default=None
            Threads decoding images.
        on_error : {"nan", "raise"}, default="nan"
            ``"nan"``: an unreadable image gets a NaN row and its reason in ``failures``;
            ``"raise"``: it raises :class:`featurize.exceptions.ImageDecodeError`.
        verbose : int, default=0
            ``1``: a progress bar naming the backbones.
        progress : {"auto", "bar", "log", "none"}, default=None
            Overrides ``verbose`` (``"auto"``: a bar on a terminal, else log lines).

        Returns
        -------
        classify.features.Features
            ``X`` (NaN rows for failures), ``failures`` (row -> reason), ``sources``.
        """
        return config_features(self._extractors_for(device), images, batch_size=batch_size,
                               num_workers=num_workers, cache=cache, on_error=on_error,
                               verbose=verbose, progress=progress)

    def _extractors_for(self, device) -> list:
        extractors = getattr(self, "_extractors", None)
        if extractors is None:
            extractors = self._extractors = {}
        if device not in extractors:
            extractors.clear()  # one device at a time: the networks are large
            extractors[device] = build_extractors(self.featurizer_config, device)
        return extractors[device]

    def featurizer(self, **overrides):
        """This model's featurizer as a fitted scikit-learn transformer: a
        :class:`featurize.CNNFeaturizer`, or a :class:`sklearn.pipeline.FeatureUnion` of them
        for a model that reads several featurizers' features (columns concatenated in order).
        See also :meth:`to_pipeline`.

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
            from featurize.extraction.estimator import CNNFeaturizer  # imports torch

            parts = [CNNFeaturizer(**{k: part[k] for k in _NUMERIC_PARAMS if k in part}).fit()
                     for part in featurizer_parts(self.featurizer_config)]
            if len(parts) == 1:
                self._featurizer = parts[0]
            else:
                self._featurizer = FeatureUnion([(f"part{i}", part)
                                                 for i, part in enumerate(parts)])
        if overrides:
            names = [name for name, _ in getattr(self._featurizer, "transformer_list", [])]
            self._featurizer.set_params(**(
                {f"{name}__{key}": value for name in names for key, value in overrides.items()}
                if names else overrides))
        return self._featurizer

    def transform(self, images, *, on_error: str = "raise", device="auto", **runtime
                  ) -> np.ndarray:
        """Features of ``images`` as the head expects them (see :meth:`features`).

        ``on_error="raise"`` (default) raises on an unreadable image; ``"nan"`` gives it a NaN
        row and warns (:class:`featurize.exceptions.FeatureExtractionWarning`).
        """
        return config_features(self._extractors_for(device), images, on_error=on_error,
                               quiet=False, **runtime).X

    def predict(self, images, **runtime) -> np.ndarray:
        """Predict class labels of images (paths, PIL images, arrays, a folder...).

        Parameters
        ----------
        images : sequence or folder
            Anything :class:`featurize.CNNFeaturizer` accepts.
        **runtime
            Run-time options of :meth:`features` (``cache``, ``device``...).

        Returns
        -------
        ndarray of shape (n_images,)
        """
        return self.predict_features(self.transform(images, **runtime))

    def predict_proba(self, images, **runtime) -> np.ndarray:
        """Class probabilities of images (columns: :attr:`classes_`)."""
        return self.predict_proba_features(self.transform(images, **runtime))

    # -- folders ------------------------------------------------------------------------------

    def evaluate(self, folder, **runtime) -> folders.Evaluation:
        """Scores on a labelled folder-per-class tree (``folder/<class>/<images>``): see
        :func:`classify.folders.evaluate_folder`.

        Parameters
        ----------
        folder : path
        **runtime
            ``cache``, ``device``, ``batch_size``, ``num_workers``, ``verbose``, ``progress``.

        Returns
        -------
        classify.folders.Evaluation
            ``scores``, ``per_class``, ``confusion``, ``failed``, ``misclassified``...
        """
        return folders.evaluate_folder(self, folder, **runtime)

    def training_failures(self, data_dir=None) -> list:
        """``(path, reason)`` of the files of the training folder left out at training
        (skipped or unreadable), the paths inside ``data_dir`` (default: the training folder
        as recorded)."""
        root = os.fspath(data_dir if data_dir is not None
                         else self.provenance.get("data_dir", ""))
        return [(os.path.join(root, *str(path).split("/")), reason)
                for path, reason in self.reports.get("train_failures", [])]

    def predict_table(self, sources, **runtime):
        """One row per image of ``sources`` (files, folders, glob patterns): path, predicted
        class, probabilities, error. See :func:`classify.folders.predict_table`."""
        return folders.predict_table(self, sources, **runtime)

    def report(self, data_dir, test_dir=None, *, out=None, map_method: str = "pca",
               extra: dict | None = None, **runtime):
        """A self-contained HTML report of this model on its data, with the images in it.

        See :func:`classify.folders.report_folder`. In a notebook the returned object
        displays inline.

        Parameters
        ----------
        data_dir : path
            The folder the model was trained on, wherever it is now (the training images are
            found by their path inside it).
        test_dir : path, default=None
            A labelled test folder.
        out : path, default=None
            Also write the HTML file there.
        map_method : {"pca", "tsne"}, default="pca"
        extra : dict, default=None
            More sections shown after the headline: title -> a string (a paragraph), a
            DataFrame (a table) or a list of them.
        **runtime
            ``cache``, ``device``, ``batch_size``, ``num_workers``, ``verbose``, ``progress``.

        Returns
        -------
        classify.html_report.Report
        """
        result = folders.report_folder(self, data_dir, test_dir, map_method=map_method,
                                       extra=extra, **runtime)
        if out is not None:
            result.save(out)
        return result

    # -- scikit-learn pipelines ------------------------------------------------------------

    def to_pipeline(self):
        """This model as a fitted :class:`sklearn.pipeline.Pipeline`: ``("featurizer",``
        :meth:`featurizer` ``)`` then ``("head", estimator)``. It predicts from image paths
        like the model, and :meth:`from_pipeline` turns it back into one."""
        return Pipeline([("featurizer", self.featurizer()), ("head", self.estimator)])

    @classmethod
    def from_pipeline(cls, pipeline, *, provenance: dict | None = None) -> FittedModel:
        """A model (which ``featurize evaluate`` / ``predict`` read once saved) from a fitted
        scikit-learn pipeline whose first step is a :class:`featurize.CNNFeaturizer` (or a
        ``FeatureUnion`` of them) and whose other steps are the head.

        Parameters
        ----------
        pipeline : sklearn.pipeline.Pipeline
            Fitted, e.g. ``make_pipeline(CNNFeaturizer(...), StandardScaler(),
            LogisticRegression()).fit(paths, y)``.
        provenance : dict, default=None
            More provenance to record (merged over what is read from the pipeline).

        Returns
        -------
        FittedModel
            Its featurizer configuration is the featurizer's parameters that change the
            numbers (a checkpoint path made absolute, the precision as resolved at fit). It
            records no training images, so :meth:`report` refuses it.

        Raises
        ------
        TypeError
            Not a pipeline of a featurizer and a head.
        """
        steps = getattr(pipeline, "steps", None)
        if not isinstance(pipeline, Pipeline) or not steps or len(steps) < 2:
            raise TypeError("Expected a fitted sklearn Pipeline whose first step is a "
                            "CNNFeaturizer and whose other steps are the head; got "
                            f"{type(pipeline).__name__}.")
        first = steps[0][1]
        members = ([t for _, t in first.transformer_list] if isinstance(first, FeatureUnion)
                   else [first])
        if not all(type(m).__name__ == "CNNFeaturizer" for m in members):
            raise TypeError(f"The first step of the pipeline is a {type(first).__name__}; "
                            "expected a CNNFeaturizer (or a FeatureUnion of them).")
        for member in members:
            check_is_fitted(member, "n_features_out_")
        parts = [fitted_featurizer_config(member) for member in members]
        head = pipeline[1:] if len(steps) > 2 else steps[1][1]
        check_is_fitted(head)
        config = parts[0] if len(parts) == 1 else {"parts": parts}
        shown = describe_featurizer(config)
        classes = [str(c) for c in head.classes_]
        base = {**persistence.version_provenance(), **shown,
                "head": " -> ".join(type(s).__name__ for _, s in steps[1:]),
                "params": {}, "classes": classes,
                "n_features": int(sum(m.n_features_out_ for m in members)),
                "source": "sklearn Pipeline"}
        return cls(head, featurizer_config=config, provenance=base | dict(provenance or {}))

    # -- persistence ------------------------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_featurizer"] = None  # the networks do not travel; rebuilt on first use
        state.pop("_extractors", None)
        return state

    def save(self, path: str | os.PathLike, *, compress: int = 3) -> None:
        """Write the model to ``path`` with joblib (see :mod:`classify.persistence`).

        The file holds the fitted head, the featurizer configuration, provenance and reports,
        plus ``format_version`` so that an incompatible featurize refuses it clearly. It is a
        pickle: whoever loads it runs code chosen by whoever wrote it.
        """
        persistence.write_model_state(path, {
            "estimator": self.estimator, "featurizer_config": self.featurizer_config,
            "provenance": self.provenance, "reports": self.reports}, compress=compress)


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
    return FittedModel(**persistence.read_model_state(path))
