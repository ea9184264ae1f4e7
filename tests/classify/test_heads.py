"""classify.heads: the registered heads are ordinary scikit-learn pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from classify import HEADS, default_param_grid, list_heads, make_head


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=90, n_features=20, n_informative=6, n_classes=3,
                               random_state=0)
    return X, y


def test_list_heads():
    assert list_heads() == ["logreg", "linear_svm", "rbf_svm"]


@pytest.mark.parametrize("name, cls", [("logreg", LogisticRegression), ("linear_svm", LinearSVC),
                                       ("rbf_svm", SVC)])
def test_make_head_is_scaler_then_classifier(name, cls):
    head = make_head(name)
    assert isinstance(head, Pipeline)
    assert [step for step, _ in head.steps] == ["scale", "clf"]
    assert isinstance(head.named_steps["scale"], StandardScaler)
    assert type(head.named_steps["clf"]) is cls


def test_params_override_defaults():
    head = make_head("rbf_svm", C=0.5, gamma=0.01, class_weight="balanced")
    clf = head.named_steps["clf"]
    assert (clf.C, clf.gamma, clf.class_weight, clf.kernel) == (0.5, 0.01, "balanced", "rbf")
    assert make_head("logreg").named_steps["clf"].max_iter == HEADS["logreg"].defaults["max_iter"]


def test_unknown_head_lists_valid_names():
    with pytest.raises(ValueError, match="must be one of") as info:
        make_head("random_forest")
    for name in list_heads():
        assert name in str(info.value)
    assert "random_forest" in str(info.value)


def test_invalid_classifier_parameter_is_refused():
    with pytest.raises(ValueError, match="gamma"):
        make_head("logreg", gamma=0.1)


def test_probabilities(data):
    X, y = data
    assert hasattr(make_head("logreg").fit(X, y), "predict_proba")
    assert not hasattr(make_head("linear_svm").fit(X, y), "predict_proba")
    assert not hasattr(make_head("rbf_svm").fit(X, y), "predict_proba")
    for name in ("linear_svm", "rbf_svm"):
        head = make_head(name, probability=True)
        assert isinstance(head.named_steps["clf"], CalibratedClassifierCV)
        proba = head.fit(X, y).predict_proba(X)
        assert proba.shape == (len(X), 3)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        # calibrated probabilities carry information: the true class gets more mass on average
        assert proba[np.arange(len(y)), y].mean() > 1 / 3


def test_calibration_adapts_to_small_classes(data):
    X, y = data
    y = y.copy()
    y[np.flatnonzero(y == 2)[2:]] = 1  # class 2 keeps 2 samples: below the 3 calibration folds
    head = make_head("linear_svm", probability=True).fit(X, y)
    assert head.predict_proba(X).shape == (len(X), 3)
    y[np.flatnonzero(y == 2)[1:]] = 1  # class 2 keeps a single sample: cannot be calibrated
    with pytest.raises(ValueError, match="single sample"):
        make_head("rbf_svm", probability=True).fit(X, y)


def test_linear_svm_is_deterministic(data):
    X, y = data
    a = make_head("linear_svm").fit(X, y).named_steps["clf"].coef_
    b = make_head("linear_svm").fit(X, y).named_steps["clf"].coef_
    np.testing.assert_array_equal(a, b)


def test_default_param_grid_is_a_copy():
    grid = default_param_grid("logreg")
    assert grid["C"] == sorted(grid["C"]) and len(grid["C"]) >= 10
    assert min(grid["C"]) <= 1e-3 and max(grid["C"]) >= 10
    grid["C"].append(1e9)
    assert 1e9 not in default_param_grid("logreg")["C"]
    with pytest.raises(ValueError, match="must be one of"):
        default_param_grid("knn")
