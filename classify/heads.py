"""Classification heads: ordinary scikit-learn pipelines (standardization + classifier).

Every head standardizes the features (``StandardScaler``, fitted on the training data only,
so inside every cross-validation fold) and fits one of:

========== ================================================ =====================================
name       classifier                                        probabilities
========== ================================================ =====================================
logreg     ``LogisticRegression`` (multinomial, L2, lbfgs)   native
linear_svm ``LinearSVC`` (squared hinge, L2)                 with ``probability=True`` (calibrated)
rbf_svm    ``SVC(kernel="rbf", gamma="scale")``              with ``probability=True`` (calibrated)
========== ================================================ =====================================

SVM probabilities come from ``CalibratedClassifierCV(svm, ensemble=False)`` (Platt scaling by
default) whose internal folds are :class:`~classify.splits.AdaptiveStratifiedKFold`, so they adapt
to small classes; a class needs at least 2 images for a calibrated head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from classify.splits import AdaptiveStratifiedKFold
from classify.validation import check_option

__all__ = ["HEADS", "HeadSpec", "default_param_grid", "list_heads", "make_head"]

#: Name of the standardization step and of the classifier step in every head pipeline.
SCALER_STEP = "scale"
CLASSIFIER_STEP = "clf"


@dataclass(frozen=True)
class HeadSpec:
    """Description of a registered head.

    Attributes
    ----------
    name : str
        Registry name, as given to :func:`make_head`.
    summary : str
        One line for listings.
    estimator : type
        The scikit-learn classifier class.
    defaults : dict
        Parameters that differ from the classifier's own defaults.
    grid : dict
        Default search grid (keyword arguments of :func:`make_head`) used by the selection.
    native_proba : bool
        Whether the classifier has ``predict_proba`` without calibration.
    """

    name: str
    summary: str
    estimator: type
    defaults: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    native_proba: bool = False


def _log_grid(low: int, high: int, per_decade: int = 2) -> list[float]:
    """Log-spaced grid from 10**low to 10**high with ``per_decade`` points per decade."""
    n = (high - low) * per_decade + 1
    return [float(c) for c in np.logspace(low, high, n)]


#: The registered heads. Grids are for standardized features: the useful C of a linear model
#: shrinks as the number of features grows, hence the low ends.
HEADS: dict[str, HeadSpec] = {
    "logreg": HeadSpec(
        name="logreg",
        summary="multinomial logistic regression (L2, lbfgs)",
        estimator=LogisticRegression,
        defaults={"C": 0.1, "max_iter": 1000},
        grid={"C": _log_grid(-4, 2)},
        native_proba=True,
    ),
    "linear_svm": HeadSpec(
        name="linear_svm",
        summary="linear SVM (LinearSVC, squared hinge, one-vs-rest)",
        estimator=LinearSVC,
        defaults={"C": 0.01, "max_iter": 10000, "random_state": 0},
        grid={"C": _log_grid(-5, 1)},
    ),
    "rbf_svm": HeadSpec(
        name="rbf_svm",
        summary="RBF-kernel SVM (SVC, gamma='scale')",
        estimator=SVC,
        defaults={"C": 10.0, "kernel": "rbf", "gamma": "scale"},
        grid={"C": _log_grid(-1, 3)},
    ),
}


def list_heads() -> list[str]:
    """Return the names accepted by :func:`make_head`."""
    return list(HEADS)


def _spec(name: str) -> HeadSpec:
    return HEADS[check_option("name", name, sorted(HEADS), owner="make_head")]


def default_param_grid(name: str) -> dict[str, list]:
    """Return a copy of the default search grid of head ``name``.

    Parameters
    ----------
    name : str
        A registered head name (see :func:`list_heads`).

    Returns
    -------
    dict of str to list
        Keyword arguments of :func:`make_head` and the values searched.
    """
    return {key: list(values) for key, values in _spec(name).grid.items()}


def make_head(name: str = "logreg", *, probability: bool = False, calibration: str = "sigmoid",
              calibration_splits: int = 3, **params: Any) -> Pipeline:
    """Build an unfitted head: ``Pipeline([("scale", StandardScaler()), ("clf", classifier)])``.

    Parameters
    ----------
    name : {"logreg", "linear_svm", "rbf_svm"}, default="logreg"
        Which classifier (see :func:`list_heads`).
    probability : bool, default=False
        Give the SVM heads ``predict_proba`` by wrapping them in
        ``CalibratedClassifierCV(ensemble=False)``. Logistic regression always has it.
        Calibration costs ``calibration_splits + 1`` fits and needs at least 2 images per class.
    calibration : {"sigmoid", "isotonic", "temperature"}, default="sigmoid"
        Calibration method for the SVM heads (used only with ``probability=True``).
    calibration_splits : int, default=3
        Maximum number of internal folds of the calibration (reduced for small classes).
    **params
        Parameters of the classifier, e.g. ``C=0.01``, ``gamma=0.001``, ``class_weight="balanced"``.
        They override the head's defaults (logreg: ``C=0.1, max_iter=1000``; linear_svm:
        ``C=0.01, max_iter=10000, random_state=0``; rbf_svm: ``C=10, gamma="scale"``).

    Returns
    -------
    sklearn.pipeline.Pipeline
        Steps ``"scale"`` (StandardScaler) and ``"clf"`` (the classifier, possibly calibrated).

    Raises
    ------
    ValueError
        Unknown head name (:class:`~featurize.exceptions.ConfigError`, the message lists the
        valid ones) or invalid classifier parameter.

    Examples
    --------
    >>> head = make_head("logreg", C=0.01)
    >>> head.named_steps["clf"].C
    0.01
    """
    spec = _spec(name)
    clf: BaseEstimator = spec.estimator()
    clf.set_params(**{**spec.defaults, **params})
    if probability and not spec.native_proba:
        clf = CalibratedClassifierCV(
            clf,
            method=calibration,
            cv=AdaptiveStratifiedKFold(max_splits=calibration_splits, small_classes="error"),
            ensemble=False,
        )
    return Pipeline([(SCALER_STEP, StandardScaler()), (CLASSIFIER_STEP, clf)])
