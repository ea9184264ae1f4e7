"""classify.reports and classify.plots: reports as data, as text, and as figures."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import classification_report, confusion_matrix

from classify import (
    confusion_frame,
    cross_validate_head,
    per_class_report,
    select_model,
    train_model,
)
from classify.reports import format_frame, plural

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:200], y[:200]


@pytest.fixture(scope="module")
def selection(digits):
    X, y = digits
    sets = {("pixels", "avg"): X, ("half", "avg"): X[:, :32]}
    return select_model(sets, y, heads=["logreg", "linear_svm"],
                        param_grids={"logreg": {"C": [0.01, 0.1, 1.0]},
                                     "linear_svm": {"C": [0.001, 0.01]}},
                        n_splits=3, n_repeats=1)


def test_per_class_report_matches_sklearn():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    names = ["cat", "dog", "eel"]
    ours = per_class_report(y_true, y_pred, names)
    ref = classification_report(y_true, y_pred, target_names=names, output_dict=True,
                                zero_division=0)
    for name in names + ["macro avg", "weighted avg"]:
        for ours_col, ref_col in [("precision", "precision"), ("recall", "recall"),
                                  ("f1", "f1-score"), ("support", "support")]:
            assert ours.loc[name, ours_col] == pytest.approx(ref[name][ref_col])


def test_confusion_frame_matches_sklearn():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 4, 80), rng.integers(0, 4, 80)
    frame = confusion_frame(y_true, y_pred, ["a", "b", "c", "d"])
    np.testing.assert_array_equal(frame.to_numpy(), confusion_matrix(y_true, y_pred))
    assert list(frame.index) == ["a", "b", "c", "d"] and frame.index.name == "true"
    normalized = confusion_frame(y_true, y_pred, ["a", "b", "c", "d"], normalize="true")
    np.testing.assert_allclose(normalized.sum(axis=1), 1.0)


def test_text_reports(selection, digits):
    text = selection.to_text(top=3)
    assert "pixels/avg" in text and "half/avg" in text and "Top 3 candidates" in text
    cv_text = cross_validate_head("logreg", *digits, n_splits=3, n_repeats=1).to_text()
    assert "Confusion matrix" in cv_text and "macro avg" in cv_text
    assert "-" in format_frame(selection.table[["log_loss_mean"]])  # NaN shown as "-"


def _labels(fig) -> list[str]:
    return [text for ax in fig.axes for text in (ax.get_xlabel(), ax.get_ylabel())]


def test_plots_return_labelled_figures(selection, digits):
    from matplotlib.figure import Figure

    import classify

    figures = [
        classify.plot_confusion_matrix(selection.best_cv),
        classify.plot_confusion_matrix(selection.best_cv, normalize="true"),
        classify.plot_selection_heatmap(selection),
        classify.plot_layer_scores(selection),
        classify.plot_c_curve(selection),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        assert fig.axes and all(label for label in _labels(fig)[:2])
        fig.canvas.draw()  # renders without error (Agg)
    heat = figures[2].axes[0]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["pixels/avg", "half/avg"]
    assert [t.get_text() for t in heat.get_xticklabels()] == ["logreg", "linear_svm"]
    assert figures[4].axes[0].get_xscale() == "log"


def test_plots_from_a_model_and_into_given_axes(digits):
    from matplotlib.figure import Figure

    import classify

    X, y = digits
    model = train_model({("pixels", "avg"): X}, y, heads=["logreg"],
                        param_grids={"logreg": {"C": [0.1, 1.0]}}, n_splits=3, n_repeats=1)
    fig = Figure()
    axes = fig.subplots(1, 2)
    assert classify.plot_selection_heatmap(model, ax=axes[0]) is fig
    assert classify.plot_confusion_matrix(model, ax=axes[1]) is fig
    assert axes[1].get_xlabel() == "predicted class"
    with pytest.raises(TypeError, match="SelectionResult"):
        classify.plot_layer_scores(object())


def test_plural_forms():
    assert plural(1, "mistake") == "1 mistake"
    assert plural(0, "mistake") == "0 mistakes"
    assert plural(2, "pair") == "2 pairs"
    assert plural(3068, "image") == "3,068 images"
    assert plural(2, "match", "matches") == "2 matches"
