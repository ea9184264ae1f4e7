"""Evaluation of candidate heads across folds, shared by :mod:`classify.cv` and
:mod:`classify.search`.

One task = one feature set x one (train, test) split, evaluating every candidate head on it.
Tasks run through ``joblib.Parallel``, so any joblib backend (loky, threading, dask) spreads them.

Within a task the work common to the candidates is done once, and only where it gives the same
numbers as fitting each candidate's own pipeline on the fold (tests check this equivalence):

* standardization: ``StandardScaler`` fitted on the training part of the fold (never on the test
  part), shared by every head whose pipeline is ``[StandardScaler(), classifier]``;
* L2-penalized linear heads (logistic regression, linear SVM, calibrated or not) with more
  features than training samples are fitted on the coordinates of the data in the row space of
  the training matrix (QR). The penalized solution lies in that space (representer
  theorem), so the fitted decision function is the same while the fit is several times faster;
  they are fitted in the precision of the features (float32 from a cache: half the memory
  traffic of float64, as the refitted pipeline on float32 features computes anyway);
* logistic regressions that differ only by ``C`` (a C grid, in increasing order) are fitted
  along the path: each starts from the coefficients of the previous one (``warm_start``), the
  optimum being the same, reached in fewer iterations (the path of ``LogisticRegressionCV``);
* RBF SVMs are fitted on a precomputed kernel, computed from squared distances shared by every
  ``C`` (``gamma="scale"`` is resolved on the training part exactly as ``SVC`` does).

Any other estimator is cloned and fitted on the raw fold, as ``cross_validate`` would.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from threadpoolctl import threadpool_limits

from classify.candidates import Candidate
from classify.metrics import SCORE_NAMES, compute_scores

logger = logging.getLogger(__name__)

__all__ = ["Candidate", "Evaluation", "concatenate", "evaluate", "out_of_fold"]

# Errors a candidate's fit may raise on an unlucky fold; the candidate is then marked failed
# (like GridSearchCV's error_score=nan) instead of stopping the whole search.
_FIT_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError)


@dataclass
class Evaluation:
    """Raw results of evaluating candidates on splits.

    Attributes
    ----------
    scores : ndarray of shape (n_candidates, n_splits, len(SCORE_NAMES))
    fit_times : ndarray of shape (n_candidates, n_splits)
        Seconds to fit and predict.
    predictions : list of ndarray of shape (n_candidates, n_test)
        One per split: the predicted class codes on that split's test part (-1 if failed).
    confidences : list of ndarray of shape (n_candidates, n_test, 2), float32
        One per split: the predicted probability of the true class and of the predicted class
        (NaN for a head without probabilities, or a failed fit). Two numbers per image, not the
        whole probability matrix, so memory does not grow with the number of classes.
    errors : dict of int to str
        First error message of each failed candidate.
    n_not_converged : int
        Fits that emitted a ConvergenceWarning.
    """

    scores: np.ndarray
    fit_times: np.ndarray
    predictions: list
    confidences: list
    errors: dict = field(default_factory=dict)
    n_not_converged: int = 0


def _is_projectable(clf) -> bool:
    """Whether ``clf`` is an L2-penalized linear model whose fit depends on X only via X @ w."""
    if type(clf) is CalibratedClassifierCV:
        return _is_projectable(clf.estimator)
    if type(clf) is LogisticRegression:
        params = clf.get_params()
        return (params["penalty"] in ("deprecated", "l2") and params["l1_ratio"] in (None, 0)
                and np.isfinite(params["C"]))
    if type(clf) is LinearSVC:
        return clf.penalty == "l2"
    return False


def _plan(estimator) -> tuple[str, object]:
    """Return (path, classifier) where path is "linear", "rbf", "scaled" or "generic"."""
    if not (isinstance(estimator, Pipeline) and len(estimator.steps) == 2):
        return "generic", estimator
    scaler, clf = estimator.steps[0][1], estimator.steps[1][1]
    if type(scaler) is not StandardScaler or scaler.get_params() != StandardScaler().get_params():
        return "generic", estimator
    if clf is None or clf == "passthrough":
        return "generic", estimator
    if _is_projectable(clf):
        return "linear", clf
    if type(clf) is SVC and clf.kernel == "rbf":
        return "rbf", clf
    return "scaled", clf


class _Fold:
    """Lazily computed, shared views of one fold of one feature set."""

    def __init__(self, X, train, test):
        self.X, self.train, self.test = X, train, test
        self._scaled = self._projected = self._sqdist = None

    @property
    def scaled(self):
        if self._scaled is None:
            scaler = StandardScaler().fit(self.X[self.train])
            self._scaled = (scaler.transform(self.X[self.train]),
                            scaler.transform(self.X[self.test]))
        return self._scaled

    @property
    def projected(self):
        """Training data in an orthonormal basis of its row space, and test data in that basis.

        With ``X_train.T = Q R`` (QR), ``Q`` has orthonormal columns spanning the row space, so
        ``X_train @ Q = R.T`` and every ``w = Q @ beta`` has ``|w| = |beta|``: an L2-penalized
        linear model fitted on ``R.T`` is the one fitted on ``X_train`` (QR is about 3x cheaper
        than an SVD here and needs no rank cut-off).
        """
        if self._projected is None:
            dtype = np.result_type(self.X.dtype, np.float32)  # float32 stays float32
            xtr, xte = (np.asarray(a, dtype=dtype) for a in self.scaled)
            if xtr.shape[1] <= xtr.shape[0]:
                self._projected = (xtr, xte, False)
            else:
                q, r = np.linalg.qr(xtr.T)
                self._projected = (np.ascontiguousarray(r.T), xte @ q, True)
        return self._projected

    @property
    def sqdist(self):
        if self._sqdist is None:
            xtr, xte = (np.asarray(a, dtype=np.float64) for a in self.scaled)
            self._sqdist = (euclidean_distances(xtr, squared=True),
                            euclidean_distances(xte, xtr, squared=True))
        return self._sqdist


def _gamma(clf: SVC, xtr) -> float:
    """``SVC``'s own resolution of its ``gamma`` on training data ``xtr``."""
    if clf.gamma == "scale":
        var = np.asarray(xtr, dtype=np.float64).var()
        return 1.0 / (xtr.shape[1] * var) if var != 0 else 1.0
    if clf.gamma == "auto":
        return 1.0 / xtr.shape[1]
    return float(clf.gamma)


def _use_dual(clf):
    """On projected data (more features than samples originally), keep ``dual="auto"``'s choice."""
    inner = clf.estimator if type(clf) is CalibratedClassifierCV else clf
    if type(inner) is LinearSVC and inner.dual == "auto":
        if inner is clf:
            clf.set_params(dual=True)
        else:
            clf.set_params(estimator__dual=True)
    return clf


def _path_key(clf):
    """Parameters but ``C`` of a logistic regression (None for any other classifier): two fits
    with the same key lie on one regularization path."""
    if type(clf) is not LogisticRegression:
        return None
    return tuple(sorted((k, repr(v)) for k, v in clf.get_params().items()
                        if k not in ("C", "warm_start")))


def _warm_started(clf, previous):
    """A clone of ``clf`` starting from ``previous``'s coefficients when both lie on one
    regularization path and ``clf``'s C is not smaller (the path goes towards less penalty)."""
    model = clone(clf)
    key = _path_key(clf)
    if (key is not None and previous is not None and _path_key(previous) == key
            and previous.C <= clf.C):
        model.set_params(warm_start=True)
        model.coef_ = previous.coef_.copy()
        model.intercept_ = previous.intercept_.copy()
    return model


def _fit_predict(estimator, fold: _Fold, y, previous=None):
    """Fit one candidate on the fold; return (fitted model, test predictions input).

    ``previous``: the last logistic regression fitted on this fold's linear path, to start
    from (see :func:`_warm_started`).
    """
    path, clf = _plan(estimator)
    ytr = y[fold.train]
    if path == "generic":
        model = clone(estimator).fit(fold.X[fold.train], ytr)
        return model, fold.X[fold.test]
    if path == "linear":
        ztr, zte, projected = fold.projected
        model = _warm_started(clf, previous)
        if projected:
            _use_dual(model)
        return model.fit(ztr, ytr), zte
    if path == "rbf":
        xtr = fold.scaled[0]
        gamma = _gamma(clf, xtr)
        dtr, dte = fold.sqdist
        model = clone(clf).set_params(kernel="precomputed")
        return model.fit(np.exp(-gamma * dtr), ytr), np.exp(-gamma * dte)
    xtr, xte = fold.scaled
    return clone(clf).fit(xtr, ytr), xte


@contextlib.contextmanager
def _recorded_warnings():
    """Record warnings, except off the main thread where ``catch_warnings`` is not thread-safe
    (threading backends): there they go their usual way and are not counted."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _evaluate_fold(X, y, train, test, estimators, n_classes):
    """Fit every estimator on ``train``, score it on ``test``. Runs in a joblib worker.

    BLAS and OpenMP run single-threaded here: the parallelism is across tasks, and on matrices
    of a few hundred rows threads cost more than they give (6x slower fits measured on 2 busy
    cores).
    """
    with threadpool_limits(limits=1):
        return _evaluate_fold_unlimited(X, y, train, test, estimators, n_classes)


def _evaluate_fold_unlimited(X, y, train, test, estimators, n_classes):
    fold = _Fold(X, train, test)
    labels = np.arange(n_classes)
    n = len(estimators)
    scores = np.full((n, len(SCORE_NAMES)), np.nan)
    times = np.full(n, np.nan)
    preds = np.full((n, len(test)), -1, dtype=np.int64)
    confidence = np.full((n, len(test), 2), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    n_warn = 0
    previous = None  # last logistic regression of the linear path, for warm starts
    for i, estimator in enumerate(estimators):
        start = time.perf_counter()
        with _recorded_warnings() as caught:
            try:
                model, x_test = _fit_predict(estimator, fold, y, previous)
                if _path_key(model) is not None and _plan(estimator)[0] == "linear":
                    previous = model
                pred = np.asarray(model.predict(x_test))
                proba = None
                if hasattr(model, "predict_proba"):
                    proba = np.zeros((len(test), n_classes))
                    columns = np.asarray(model.classes_, dtype=np.int64)
                    proba[:, columns] = model.predict_proba(x_test)
            except _FIT_ERRORS as exc:
                errors[i] = f"{type(exc).__name__}: {exc}"
                continue
        n_warn += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        times[i] = time.perf_counter() - start
        preds[i] = pred
        if proba is not None:
            rows = np.arange(len(test))
            confidence[i, :, 0] = proba[rows, y[test]]
            confidence[i, :, 1] = proba[rows, pred]
        result = compute_scores(y[test], pred, proba, labels)
        scores[i] = [result[name] for name in SCORE_NAMES]
    return scores, times, preds, confidence, errors, n_warn


def _task(f, s, X, y, train, test, estimators, n_classes):
    return f, s, _evaluate_fold(X, y, train, test, estimators, n_classes)


def evaluate(arrays, y, candidates, splits, *, n_jobs=None, verbose=0,
             progress=None) -> Evaluation:
    """Evaluate candidates on splits, one task per (feature set, split).

    Parameters
    ----------
    arrays : list of ndarray of shape (n_samples, n_features_i)
        The feature sets.
    y : ndarray of shape (n_samples,)
        Class codes ``0 .. n_classes - 1``.
    candidates : list
        Objects with ``feature_set`` (index into ``arrays``) and ``estimator`` (unfitted).
    splits : list of (train, test) index arrays
    n_jobs : int, default=None
        ``joblib.Parallel`` workers (``None``: 1, or the active ``parallel_backend``'s setting).
    verbose : int, default=0
        Passed to ``joblib.Parallel``.
    progress : featurize.progress.Progress or None
        Advanced by the number of fits of each task as it ends (tasks end in any order).

    Returns
    -------
    Evaluation
    """
    n_classes = int(y.max()) + 1
    groups: dict[int, list[int]] = {}
    for index, cand in enumerate(candidates):
        groups.setdefault(cand.feature_set, []).append(index)
    jobs = [(f, s) for f in groups for s in range(len(splits))]
    logger.info("cross-validating %d candidates on %d splits (%d tasks)",
                len(candidates), len(splits), len(jobs))
    results = Parallel(n_jobs=n_jobs, verbose=verbose, return_as="generator_unordered")(
        delayed(_task)(f, s, arrays[f], y, splits[s][0], splits[s][1],
                       [candidates[i].estimator for i in groups[f]], n_classes)
        for f, s in jobs
    )
    outputs = {}
    for f, s, output in results:
        outputs[(f, s)] = output
        if progress is not None:
            progress.advance(len(groups[f]))
    n_cand, n_split = len(candidates), len(splits)
    result = Evaluation(
        scores=np.full((n_cand, n_split, len(SCORE_NAMES)), np.nan),
        fit_times=np.full((n_cand, n_split), np.nan),
        predictions=[np.full((n_cand, len(test)), -1, dtype=np.int64) for _, test in splits],
        confidences=[np.full((n_cand, len(test), 2), np.nan, dtype=np.float32)
                     for _, test in splits],
    )
    for (f, s) in jobs:
        scores, times, preds, confidence, errors, n_warn = outputs[(f, s)]
        index = np.asarray(groups[f])
        result.scores[index, s] = scores
        result.fit_times[index, s] = times
        result.predictions[s][index] = preds
        result.confidences[s][index] = confidence
        for i, message in errors.items():
            result.errors.setdefault(int(index[i]), message)
        result.n_not_converged += n_warn
    if result.n_not_converged:
        logger.info("%d fits stopped at max_iter before converging (typical for very large C)",
                    result.n_not_converged)
    return result


def concatenate(first: Evaluation, second: Evaluation) -> Evaluation:
    """The evaluation of ``first``'s candidates followed by ``second``'s, on the same splits."""
    offset = first.scores.shape[0]
    return Evaluation(
        scores=np.concatenate([first.scores, second.scores]),
        fit_times=np.concatenate([first.fit_times, second.fit_times]),
        predictions=[np.concatenate([a, b]) for a, b in zip(first.predictions,
                                                             second.predictions)],
        confidences=[np.concatenate([a, b]) for a, b in zip(first.confidences,
                                                             second.confidences)],
        errors={**first.errors, **{i + offset: m for i, m in second.errors.items()}},
        n_not_converged=first.n_not_converged + second.n_not_converged,
    )


def out_of_fold(evaluation: Evaluation, candidate: int, splits, split_ids, n_samples: int,
                n_repeats: int) -> np.ndarray:
    """Out-of-fold predictions of one candidate, one row per repeat (-1: never tested), and
    their confidences (probability of the true and of the predicted class; NaN: none)."""
    oof = np.full((n_repeats, n_samples), -1, dtype=np.int64)
    confidence = np.full((n_repeats, n_samples, 2), np.nan, dtype=np.float32)
    per_repeat = max(1, len(split_ids) // n_repeats)
    for k, s in enumerate(split_ids):
        oof[k // per_repeat, splits[s][1]] = evaluation.predictions[s][candidate]
        confidence[k // per_repeat, splits[s][1]] = evaluation.confidences[s][candidate]
    return oof, confidence
