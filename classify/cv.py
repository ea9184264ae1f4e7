"""Honest cross-validation of one head on one feature matrix.

:func:`cross_validate_head` runs repeated stratified k-fold (adapted to tiny classes, see
:class:`~classify.splits.AdaptiveStratifiedKFold`) with fixed seeds, standardization inside each
fold, and returns a :class:`CVResult`: per-fold scores, out-of-fold predictions of every repeat,
the confusion matrix and a per-class report computed from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array

from classify import _evaluation
from classify.candidates import Candidate
from classify.heads import make_head
from classify.metrics import SCORE_NAMES
from classify.reports import confusion_frame, format_frame, format_scores, per_class_report
from classify.splits import AdaptiveStratifiedKFold

__all__ = ["CVResult", "cross_validate_head", "encode_labels"]


def encode_labels(y) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(classes, codes)``: sorted unique labels and the index of each label in them.

    Raises
    ------
    ValueError
        ``y`` is not one-dimensional, is empty, or is a continuous target.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be one-dimensional (one label per sample). Got shape {y.shape}.")
    if y.size == 0:
        raise ValueError("y is empty: there is nothing to cross-validate.")
    check_classification_targets(y)
    classes, codes = np.unique(y, return_inverse=True)
    return classes, codes.astype(np.int64)


@dataclass
class CVResult:
    """Cross-validation of one configuration.

    Attributes
    ----------
    classes : ndarray of shape (n_classes,)
        Class labels, in code order.
    y : ndarray of shape (n_samples,)
        True class codes.
    fold_scores : pandas.DataFrame
        One row per (repeat, fold): ``repeat``, ``fold``, ``n_test``, the scores of
        :data:`~classify.metrics.SCORE_NAMES` and ``fit_time`` (seconds).
    oof_predictions : ndarray of shape (n_repeats, n_samples)
        Out-of-fold predicted codes of every repeat (each repeat is a partition of the samples,
        except single-sample classes: ``-1``, never tested).
    oof_confidence : ndarray of shape (n_repeats, n_samples, 2) or None
        Out-of-fold probability of the true class (``[..., 0]``) and of the predicted class
        (``[..., 1]``); NaN for a head without probabilities (uncalibrated SVM) or an image
        never tested. What mistake galleries and label-error ranking read.
    n_splits, n_repeats, random_state : int
        The folds actually used.
    notes : tuple of str
        What was adapted (fewer folds, single-sample classes...).
    """

    classes: np.ndarray
    y: np.ndarray
    fold_scores: pd.DataFrame
    oof_predictions: np.ndarray
    n_splits: int
    n_repeats: int
    random_state: int
    notes: tuple = field(default_factory=tuple)
    oof_confidence: np.ndarray | None = None

    def mean_scores(self) -> dict[str, float]:
        """Mean of each score over all folds and repeats."""
        return {name: float(self.fold_scores[name].mean()) for name in SCORE_NAMES}

    def std_scores(self) -> dict[str, float]:
        """Standard deviation of each score over all folds and repeats."""
        return {name: float(self.fold_scores[name].std(ddof=0)) for name in SCORE_NAMES}

    def summary(self) -> pd.DataFrame:
        """Mean and standard deviation of each score (index: score name)."""
        return pd.DataFrame({"mean": self.mean_scores(), "std": self.std_scores()})

    def _pooled(self):
        tested = self.oof_predictions >= 0
        y_true = np.broadcast_to(self.y, self.oof_predictions.shape)[tested]
        weight = np.full(y_true.shape, 1.0 / self.n_repeats)
        return y_true, self.oof_predictions[tested], weight

    def confusion_matrix(self, normalize: str | None = None) -> pd.DataFrame:
        """Out-of-fold confusion matrix, averaged over the repeats (so it counts images).

        Parameters
        ----------
        normalize : {"true", "pred", "all"}, default=None
            As in :func:`sklearn.metrics.confusion_matrix`.
        """
        y_true, y_pred, weight = self._pooled()
        return confusion_frame(y_true, y_pred, self.classes, weight, normalize)

    def per_class_report(self) -> pd.DataFrame:
        """Per-class precision, recall, F1 and support of the out-of-fold predictions."""
        y_true, y_pred, weight = self._pooled()
        return per_class_report(y_true, y_pred, self.classes, weight)

    def to_text(self) -> str:
        """Scores, per-class report and confusion matrix as plain text."""
        head = (f"{self.n_repeats} x {self.n_splits}-fold stratified cross-validation "
                f"(random_state={self.random_state})")
        parts = [head, format_scores(self.mean_scores(), self.std_scores())]
        parts += [f"  note: {note}" for note in self.notes]
        parts += ["", "Per-class report (out-of-fold):", format_frame(self.per_class_report()),
                  "", "Confusion matrix (out-of-fold, mean over repeats):",
                  format_frame(self.confusion_matrix(), "{:.1f}")]
        return "\n".join(parts)


def make_splits(y, n_splits: int, n_repeats: int, random_state: int):
    """Materialize the adapted splits of ``y``: ``(splits, plan)``."""
    cv = AdaptiveStratifiedKFold(max_splits=n_splits, n_repeats=n_repeats,
                                 random_state=random_state)
    plan = cv.plan(y)
    return list(cv.split(y=y)), plan


def build_cv_result(evaluation, candidate, splits, split_ids, classes, y, plan, n_repeats,
                    random_state) -> CVResult:
    """Assemble the :class:`CVResult` of one evaluated candidate."""
    per_repeat = len(split_ids) // n_repeats
    rows = []
    for k, s in enumerate(split_ids):
        row = {"repeat": k // per_repeat, "fold": k % per_repeat, "n_test": len(splits[s][1])}
        row.update(zip(SCORE_NAMES, evaluation.scores[candidate, s]))
        row["fit_time"] = evaluation.fit_times[candidate, s]
        rows.append(row)
    oof, confidence = _evaluation.out_of_fold(evaluation, candidate, splits, split_ids, len(y),
                                              n_repeats)
    return CVResult(classes=classes, y=y, fold_scores=pd.DataFrame(rows), oof_predictions=oof,
                    n_splits=plan.n_splits, n_repeats=n_repeats, random_state=random_state,
                    notes=plan.notes, oof_confidence=confidence)


def cross_validate_head(head: str | BaseEstimator, X, y, *, n_splits: int = 5,
                        n_repeats: int = 3, random_state: int = 0, n_jobs: int | None = None,
                        verbose: int = 0) -> CVResult:
    """Cross-validate one head on one feature matrix.

    Parameters
    ----------
    head : str or estimator
        A head name for :func:`~classify.heads.make_head` (default parameters) or any unfitted
        scikit-learn classifier (e.g. ``make_head("logreg", C=0.01)``).
    X : array-like of shape (n_samples, n_features)
        Features (finite values).
    y : array-like of shape (n_samples,)
        Class labels.
    n_splits : int, default=5
        Folds per repeat, reduced to the smallest class size (at least 2).
    n_repeats : int, default=3
        Repeats of the k-fold with different shuffles.
    random_state : int, default=0
        Seed of the shuffles.
    n_jobs : int, default=None
        Parallel workers (``joblib.Parallel``; a ``joblib.parallel_backend`` context applies).
    verbose : int, default=0
        joblib verbosity.

    Returns
    -------
    CVResult
        A class with one sample is never tested (see :class:`~classify.splits.SmallClassWarning`).
    """
    estimator = make_head(head) if isinstance(head, str) else head
    X = check_array(X, dtype=(np.float64, np.float32))
    classes, codes = encode_labels(y)
    if len(codes) != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {len(codes)} labels.")
    splits, plan = make_splits(classes[codes], n_splits, n_repeats, random_state)  # named notes
    evaluation = _evaluation.evaluate([X], codes, [Candidate(0, estimator)], splits,
                                  n_jobs=n_jobs, verbose=verbose)
    if evaluation.errors:
        raise ValueError(f"The head failed to fit on a fold: {evaluation.errors[0]}")
    return build_cv_result(evaluation, 0, splits, list(range(len(splits))), classes, codes, plan,
                           n_repeats, random_state)
