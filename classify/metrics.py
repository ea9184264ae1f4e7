"""Scores computed on every cross-validation fold and on held-out data."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, log_loss

__all__ = ["SCORE_NAMES", "GREATER_IS_BETTER", "compute_scores"]

#: Scores reported everywhere, in this order. ``log_loss`` is NaN for heads without
#: probabilities.
SCORE_NAMES = ("accuracy", "balanced_accuracy", "f1_macro", "log_loss")

#: Whether a larger value of each score is better.
GREATER_IS_BETTER = {"accuracy": True, "balanced_accuracy": True, "f1_macro": True,
                     "log_loss": False}


def compute_scores(y_true, y_pred, proba=None, labels=None) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and (with probabilities) log loss.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_pred : array-like of shape (n_samples,)
        Predicted labels.
    proba : ndarray of shape (n_samples, n_classes), default=None
        Predicted probabilities, columns in the order of ``labels``. ``None`` gives a NaN
        log loss.
    labels : array-like of shape (n_classes,), default=None
        All class labels (needed for the log loss when ``y_true`` lacks a class).

    Returns
    -------
    dict of str to float
        Keys :data:`SCORE_NAMES`. Balanced accuracy and macro F1 average over the classes present
        in ``y_true`` (macro F1 also counts classes that were predicted but absent).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    correct = y_true == y_pred
    # Balanced accuracy = mean recall over the classes present in y_true; computed here rather
    # than by balanced_accuracy_score, which warns (from worker threads) when a fold lacks a class
    # that the model predicts.
    recalls = [correct[y_true == c].mean() for c in np.unique(y_true)]
    scores = {
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(np.mean(recalls)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "log_loss": float("nan"),
    }
    if proba is not None:
        scores["log_loss"] = float(log_loss(y_true, proba, labels=labels))
    return scores
