"""AutoClassifier: the selection as one scikit-learn classifier.

``AutoClassifier().fit(X, y)`` runs :func:`~classify.selection.select_model` on ``X`` (optionally
cut into column blocks, one per layer and pooling of a multi-layer extraction), refits the chosen
head on the chosen block, and predicts with it. Being an ordinary estimator, it composes:
``cross_val_score(AutoClassifier(), X, y)`` is a nested cross-validation, and
``make_pipeline(CNNFeaturizer(layer=[...]), AutoClassifier(feature_sets=...))`` goes from images
to labels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.candidates import feature_set_name, head_items
from classify.heads import make_head
from classify.metrics import DEFAULT_SCORING
from classify.rules import DEFAULT_RULE
from classify.search import default_heads
from classify.selection import select_model
from classify.validation import ConfigError

__all__ = ["AutoClassifier"]


def _heads_have(attr: str):
    """``available_if`` test: every candidate head has ``attr``, so the answer is the same
    before and after ``fit`` whichever head wins."""

    def check(self) -> bool:
        try:
            items = head_items(default_heads(self.search) if self.heads is None else self.heads)
            return all(hasattr(make_head(name, probability=self.probability) if est is None
                               else est, attr) for name, est in items)
        except ValueError:  # an invalid head or search: fit will say so
            return False

    return check


def _columns(spec, n_features: int, name: str) -> np.ndarray:
    """Column indices of one block: a slice, a (start, stop) pair, indices or a boolean mask."""
    if isinstance(spec, slice):
        return np.arange(n_features)[spec]
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(v, (int, np.integer))
                                                          for v in spec):
        return np.arange(spec[0], spec[1])
    index = np.asarray(spec)
    if index.dtype == bool:
        if index.shape != (n_features,):
            raise ConfigError(f"The boolean mask of feature set {name!r} has shape "
                              f"{index.shape}; expected ({n_features},).")
        return np.flatnonzero(index)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise ConfigError(f"Feature set {name!r} must be a slice, a (start, stop) pair, column "
                          f"indices or a boolean mask. Got {spec!r} instead.")
    return index


class AutoClassifier(ClassifierMixin, BaseEstimator):
    """Classifier that chooses its feature block, head and C by cross-validation in ``fit``.

    Parameters
    ----------
    feature_sets : mapping of key to column spec, default=None
        Blocks of columns of ``X`` to choose from, e.g. ``{("blocks.10", "avg"): slice(0, 112),
        ("penultimate", "avg"): slice(112, 1392)}``; a spec is a slice, a ``(start, stop)``
        pair, column indices or a boolean mask. None: all columns, one block.
    heads : sequence of str or mapping, default=None
        Heads to try (see :func:`~classify.selection.select_model`; None: logistic regression
        for the fast search, logreg, linear_svm and rbf_svm for the exhaustive one).
    param_grids : mapping, default=None
        Grid per head (default: each head's default grid).
    probability : bool, default=False
        Calibrate the SVM heads so that every candidate has ``predict_proba``.
    scoring : str, default="balanced_accuracy"
        Score that decides.
    n_splits : int, default=5
        Folds of the inner cross-validation (reduced for small classes).
    n_repeats : int, default=3
        Repeats of the inner cross-validation.
    random_state : int, default=0
        Seed of the splits.
    rule : {"best", "one_se", "one_se_log_loss"}, default="best"
        Choice rule (see :func:`~classify.selection.select_model`).
    n_jobs : int, default=None
        ``joblib.Parallel`` workers for the cross-validation.
    search : {"fast", "exhaustive"}, default="fast"
        Selection strategy (see :func:`~classify.selection.select_model`).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    selection_ : SelectionResult
        Every candidate's cross-validated scores and the choice.
    best_feature_set_ : key
        Chosen block (``None`` when ``feature_sets`` is None).
    best_columns_ : ndarray of int
        Its columns in ``X``.
    best_head_ : str
    best_params_ : dict
    best_score_ : float
        Mean cross-validated ``scoring`` of the choice (optimistic: nest it for an estimate).
    best_estimator_ : estimator
        The chosen head, refitted on all of ``X[:, best_columns_]``.
    """

    def __init__(self, *, feature_sets=None, heads=None, param_grids=None,
                 probability=False, scoring=DEFAULT_SCORING, n_splits=5, n_repeats=3,
                 random_state=0, rule=DEFAULT_RULE, n_jobs=None, search="fast"):
        self.feature_sets = feature_sets
        self.heads = heads
        self.param_grids = param_grids
        self.probability = probability
        self.scoring = scoring
        self.n_splits = n_splits
        self.n_repeats = n_repeats
        self.random_state = random_state
        self.rule = rule
        self.n_jobs = n_jobs
        self.search = search

    def _blocks(self, n_features: int) -> dict:
        if self.feature_sets is None:
            return {None: np.arange(n_features)}
        if not isinstance(self.feature_sets, Mapping) or not self.feature_sets:
            raise ConfigError("The 'feature_sets' parameter of AutoClassifier must be None or a "
                              f"non-empty mapping. Got {self.feature_sets!r} instead.")
        blocks = {}
        for key, spec in self.feature_sets.items():
            cols = _columns(spec, n_features, feature_set_name(key))
            if cols.size == 0 or cols.min() < 0 or cols.max() >= n_features:
                raise ConfigError(f"Feature set {feature_set_name(key)!r} selects columns "
                                  f"outside the {n_features} columns of X (or none).")
            blocks[key] = cols
        return blocks

    def fit(self, X, y):
        """Choose the block, head and parameters by cross-validation, then refit on all data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self : AutoClassifier
        """
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32))
        check_classification_targets(y)
        blocks = self._blocks(X.shape[1])
        sets = {("features" if key is None else key): X[:, cols] for key, cols in blocks.items()}
        self.selection_ = select_model(
            sets, y, heads=self.heads, param_grids=self.param_grids,
            probability=self.probability, scoring=self.scoring, n_splits=self.n_splits,
            n_repeats=self.n_repeats, random_state=self.random_state, rule=self.rule,
            n_jobs=self.n_jobs, search=self.search)
        chosen = self.selection_.best_feature_set
        self.best_feature_set_ = None if self.feature_sets is None else chosen
        self.best_columns_ = blocks[self.best_feature_set_]
        self.best_head_ = self.selection_.best_head
        self.best_params_ = self.selection_.best_params
        self.best_score_ = self.selection_.best_score
        self.best_estimator_ = self.selection_.best_estimator().fit(X[:, self.best_columns_], y)
        self.classes_ = self.best_estimator_.classes_
        return self

    def _block(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return X[:, self.best_columns_]

    def predict(self, X):
        """Predicted class of each row of ``X``."""
        X = self._block(X)
        return self.best_estimator_.predict(X)

    @available_if(_heads_have("predict_proba"))
    def predict_proba(self, X):
        """Class probabilities (available when every candidate head has them: logreg, or
        ``probability=True``)."""
        X = self._block(X)
        return self.best_estimator_.predict_proba(X)

    @available_if(_heads_have("decision_function"))
    def decision_function(self, X):
        """Decision function of the chosen head (not for calibrated SVMs)."""
        X = self._block(X)
        return self.best_estimator_.decision_function(X)
