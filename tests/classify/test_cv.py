"""classify.splits, classify.metrics and classify.cv: honest, reproducible cross-validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
)
from sklearn.model_selection import cross_validate

from classify import (
    AdaptiveStratifiedKFold,
    SmallClassWarning,
    compute_scores,
    cross_validate_head,
    make_head,
)
from classify.cv import make_splits


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


# -- splits -----------------------------------------------------------------------------------


def test_folds_reduced_to_smallest_class():
    y = _labels([20, 15, 3])
    cv = AdaptiveStratifiedKFold(max_splits=5, n_repeats=2, random_state=0)
    splits = list(cv.split(y=y))
    assert cv.get_n_splits(y=y) == len(splits) == 6
    assert cv.get_n_splits() == 10  # upper bound without y
    for repeat in range(2):
        tests = [test for _, test in splits[3 * repeat:3 * repeat + 3]]
        # every repeat is a partition of the samples ...
        np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(len(y)))
        for train, test in splits[3 * repeat:3 * repeat + 3]:
            assert not set(train) & set(test)
            # ... and every fold tests and trains on every class
            assert set(y[test]) == set(y[train]) == {0, 1, 2}


def test_splits_are_seeded():
    y = _labels([12, 12])
    a = list(AdaptiveStratifiedKFold(4, n_repeats=2, random_state=3).split(y=y))
    b = list(AdaptiveStratifiedKFold(4, n_repeats=2, random_state=3).split(y=y))
    c = list(AdaptiveStratifiedKFold(4, n_repeats=2, random_state=4).split(y=y))
    assert all(np.array_equal(s[1], t[1]) for s, t in zip(a, b))
    assert not all(np.array_equal(s[1], t[1]) for s, t in zip(a, c))
    # the two repeats shuffle differently
    assert not np.array_equal(a[0][1], a[4][1])


def test_single_sample_class_is_trained_on_never_tested():
    y = _labels([10, 8, 1])
    cv = AdaptiveStratifiedKFold(max_splits=5)
    with pytest.warns(SmallClassWarning, match="single sample"):
        splits = list(cv.split(y=y))
    singleton = np.flatnonzero(y == 2)[0]
    assert len(splits) == 5
    for train, test in splits:
        assert singleton in train and singleton not in test
    tested = np.sort(np.concatenate([test for _, test in splits]))
    np.testing.assert_array_equal(tested, np.flatnonzero(y != 2))
    with pytest.raises(ValueError, match="single sample"):
        list(AdaptiveStratifiedKFold(small_classes="error").split(y=y))


@pytest.mark.parametrize("y, message", [
    (np.zeros(10, dtype=int), "at least 2 classes"),
    (np.arange(4), "every class has a single sample"),
])
def test_impossible_splits_are_refused(y, message):
    with pytest.raises(ValueError, match=message):
        list(AdaptiveStratifiedKFold().split(y=y))


def test_invalid_splitter_parameters():
    with pytest.raises(ValueError, match="max_splits"):
        AdaptiveStratifiedKFold(max_splits=1).get_n_splits(y=_labels([5, 5]))
    with pytest.raises(ValueError, match="n_repeats"):
        list(AdaptiveStratifiedKFold(n_repeats=0).split(y=_labels([5, 5])))
    with pytest.raises(ValueError, match="needs y"):
        list(AdaptiveStratifiedKFold().split(np.zeros((4, 1))))


# -- metrics ----------------------------------------------------------------------------------


def test_compute_scores_match_sklearn():
    rng = np.random.default_rng(0)
    labels = np.arange(4)
    y_true = rng.integers(0, 3, 60)  # class 3 never true ...
    y_pred = rng.integers(0, 4, 60)  # ... but predicted
    proba = rng.dirichlet(np.ones(4), 60)
    scores = compute_scores(y_true, y_pred, proba, labels)
    assert scores["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    with pytest.warns(UserWarning):
        expected_bacc = balanced_accuracy_score(y_true, y_pred)
    assert scores["balanced_accuracy"] == pytest.approx(expected_bacc)
    assert scores["f1_macro"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert scores["log_loss"] == pytest.approx(log_loss(y_true, proba, labels=labels))
    assert np.isnan(compute_scores(y_true, y_pred)["log_loss"])


# -- cross_validate_head ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide():
    """More features than samples, so the linear heads take the projected fast path."""
    X, y = make_classification(n_samples=80, n_features=150, n_informative=10, n_classes=3,
                               n_clusters_per_class=1, class_sep=3.0, random_state=0)
    return X.astype(np.float32), y


def test_cross_validate_head_result(wide):
    X, y = wide
    names = np.array(["ant", "bee", "wasp"])[y]
    result = cross_validate_head("logreg", X, names, n_splits=4, n_repeats=2)
    assert list(result.classes) == ["ant", "bee", "wasp"]
    assert len(result.fold_scores) == 8
    assert set(result.fold_scores["repeat"]) == {0, 1}
    assert result.oof_predictions.shape == (2, len(y))
    assert (result.oof_predictions >= 0).all()  # each repeat predicts every sample once
    summary = result.summary()
    assert summary.loc["accuracy", "mean"] > 0.6  # far above the 1/3 of chance
    assert np.isfinite(summary.loc["log_loss", "mean"])
    cm = result.confusion_matrix()
    assert cm.to_numpy().sum() == pytest.approx(len(y))
    np.testing.assert_allclose(cm.sum(axis=1).to_numpy(), np.bincount(y))
    # the matrix is the mean over repeats of sklearn's confusion matrices of the OOF predictions
    expected = np.mean([confusion_matrix(y, p) for p in result.oof_predictions], axis=0)
    np.testing.assert_allclose(cm.to_numpy(), expected)
    report = result.per_class_report()
    np.testing.assert_allclose(report.loc[["ant", "bee", "wasp"], "support"], np.bincount(y))
    text = result.to_text()
    assert "wasp" in text and "balanced_accuracy" in text and "2 x 4-fold" in text


@pytest.mark.parametrize("head", [
    make_head("logreg", C=0.05),
    make_head("logreg", C=50.0),
    make_head("linear_svm", C=0.001),
    make_head("rbf_svm", C=3.0),
    make_head("rbf_svm", C=1.0, gamma="auto"),
    make_head("linear_svm", C=0.01, probability=True),
    make_head("rbf_svm", probability=True),
])
def test_fast_path_matches_plain_cross_validation(wide, head):
    """The engine's shared standardization, projection and precomputed kernels give what fitting
    each pipeline on each fold gives (sklearn's cross_validate on the same splits)."""
    X, y = wide
    result = cross_validate_head(head, X, y, n_splits=4, n_repeats=1)
    splits, _ = make_splits(y, 4, 1, 0)
    reference = cross_validate(clone(head), X, y, cv=splits, return_estimator=True)
    for (train, test), estimator, ours in zip(splits, reference["estimator"],
                                                result.oof_predictions[0][None].repeat(4, 0)):
        agreement = np.mean(estimator.predict(X[test]) == ours[test])
        # exact for the kernel SVMs; the linear solvers stop at a tolerance, so a sample on the
        # decision boundary may flip
        assert agreement >= 0.95
    np.testing.assert_allclose(result.fold_scores["accuracy"], reference["test_score"],
                               atol=0.05)


def test_tiny_and_single_sample_classes_do_not_crash(wide):
    X, y = wide
    keep = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:3], np.flatnonzero(y == 2)[:1]]
    with pytest.warns(SmallClassWarning):
        result = cross_validate_head("logreg", X[keep], y[keep], n_splits=5, n_repeats=1)
    assert result.n_splits == 3  # the smallest class with >= 2 samples has 3
    assert any("single sample" in note for note in result.notes)
    assert (result.oof_predictions[0][y[keep] == 2] == -1).all()  # never tested
    assert (result.oof_predictions[0][y[keep] != 2] >= 0).all()


def test_cross_validate_head_validates_input(wide):
    X, y = wide
    with pytest.raises(ValueError, match="rows"):
        cross_validate_head("logreg", X[:-1], y)
    bad = X.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cross_validate_head("logreg", bad, y)
    with pytest.raises(ValueError, match="Unknown label type"):
        cross_validate_head("logreg", X, np.linspace(0, 1, len(y)))


def test_a_c_path_fitted_with_warm_starts_matches_cold_fits(wide):
    """Logistic regressions that differ only by C start from the previous C's coefficients
    (in the features' float32) and still predict what each pipeline fitted alone predicts."""
    from classify import _evaluation
    from classify.candidates import Candidate

    X, y = wide
    heads = [make_head("logreg", C=c) for c in (0.01, 0.1, 1.0)]
    splits, _ = make_splits(y, 4, 1, 0)
    evaluation = _evaluation.evaluate([X], y, [Candidate(0, h) for h in heads], splits)
    for i, head in enumerate(heads):
        reference = cross_validate(clone(head), X, y, cv=splits, return_estimator=True)
        for s, ((_, test), estimator) in enumerate(zip(splits, reference["estimator"])):
            agreement = np.mean(estimator.predict(X[test]) == evaluation.predictions[s][i])
            assert agreement >= 0.95
    previous = clone(heads[0].named_steps["clf"]).fit(X, y)
    warm = _evaluation._warm_started(heads[1].named_steps["clf"], previous)
    assert warm.warm_start and np.array_equal(warm.coef_, previous.coef_)
    cold = _evaluation._warm_started(heads[0].named_steps["clf"],
                                     clone(heads[1].named_steps["clf"]).fit(X, y))
    assert not cold.warm_start  # the path goes towards larger C only
