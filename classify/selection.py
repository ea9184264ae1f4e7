"""Automatic choice of feature set (layer, pooling), head and regularization by cross-validation.

:func:`select_model` cross-validates (feature set, head, parameters) candidates on the
*training* data it is given (it never sees test data) and picks the best mean score: it
validates, hands the problem to a search strategy (:mod:`classify.search`), and gathers what it
measured into a :class:`~classify.results.SelectionResult`. :func:`nested_cross_validate`
repeats the whole selection inside each fold of an outer cross-validation, which gives an
unbiased estimate of what the selection procedure achieves on new data (the inner winner's
score is optimistic: it is a maximum over many noisy estimates).

The pieces: candidates (:mod:`classify.candidates`), the ridge screening
(:mod:`classify.screening`), the strategies (:mod:`classify.search`), the choice rules
(:mod:`classify.rules`, which the module docstring there states) and the result objects
(:mod:`classify.results`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from classify import _evaluation
from classify.candidates import (
    check_heads,
    feature_set_name,
    params_text,
    prepare_feature_sets,
    split_columns,
)
from classify.cv import build_cv_result, encode_labels
from classify.heads import HEADS
from classify.metrics import DEFAULT_SCORING, SCORE_NAMES
from classify.results import NestedCVResult, SelectionResult, build_table
from classify.rules import DEFAULT_RULE, RULES, check_rule, check_scoring, ranks, split_scores
from classify.search import DEFAULT_HEADS, Problem, default_heads, make_search
from classify.splits import AdaptiveStratifiedKFold, plan_folds
from classify.validation import ConfigError, check_int

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HEADS",
    "RULES",
    "NestedCVResult",
    "SelectionResult",
    "check_selection_params",
    "feature_set_name",
    "nested_cross_validate",
    "select_model",
    "split_columns",
]


def _has_proba(name: str, estimator, probability: bool) -> bool:
    if estimator is not None:
        return hasattr(estimator, "predict_proba")
    return HEADS[name].native_proba or probability


def check_selection_params(*, heads=None, scoring: str = DEFAULT_SCORING,
                           rule: str = DEFAULT_RULE, search: str = "fast", n_finalists: int = 2,
                           probability: bool = False, y=None, n_splits: int = 5):
    """Validate the parameters of :func:`select_model` before any work; returns
    ``(scoring, heads)`` with the defaults resolved.

    ``featurize train`` calls it before extracting features, :func:`select_model` at its start:
    a choice that cannot work is refused up front, never after the cross-validation.

    Parameters
    ----------
    heads, scoring, rule, search, n_finalists, probability, n_splits
        As in :func:`select_model`.
    y : array-like of shape (n_samples,), default=None
        Class labels: every class needs at least 2 images (one to train on, one to test), or
        cross-validation never tests it and the model hardly ever predicts it.

    Raises
    ------
    ValueError
        The first invalid parameter (:class:`~featurize.exceptions.ConfigError`), or a class
        of a single image (named).
    """
    scoring = check_scoring(scoring)
    check_rule(rule)
    check_int("n_finalists", n_finalists, 1, owner="select_model")
    if heads is None:
        heads = default_heads(search)
    else:
        default_heads(search)  # validates search
    items = check_heads(heads)
    if scoring == "log_loss":
        blind = [name for name, est in items if not _has_proba(name, est, probability)]
        if blind:
            raise ConfigError(f"scoring='log_loss' needs probabilities, and the heads {blind} "
                             "give none without probability=True (calibrated SVMs; the default "
                             "of `featurize train`): calibrate them, leave them out, or choose "
                             "another scoring.")
    if y is not None:
        plan_folds(np.asarray(y), n_splits, small_classes="error")
    return scoring, heads


def _problem(feature_sets, y, *, heads, scoring, rule, search, n_finalists, probability,
             n_splits, **options) -> Problem:
    """The checked parameters and the encoded data of a selection (or a nested one)."""
    scoring, heads = check_selection_params(
        heads=heads, scoring=scoring, rule=rule, search=search, n_finalists=n_finalists,
        probability=probability, y=y, n_splits=n_splits)
    classes, codes = encode_labels(y)
    keys, arrays = prepare_feature_sets(feature_sets, len(codes))
    return Problem(keys=keys, arrays=arrays, classes=classes, codes=codes, heads=heads,
                   scoring=scoring, rule=rule, probability=probability, n_splits=n_splits,
                   **options)


def select_model(feature_sets, y, *, heads: Sequence[str] | Mapping | None = None,
                 param_grids: Mapping | None = None, probability: bool = False,
                 scoring: str = DEFAULT_SCORING, n_splits: int = 5, n_repeats: int = 3,
                 random_state: int = 0, rule: str = DEFAULT_RULE, nested: bool = False,
                 outer_splits: int = 5, n_jobs: int | None = None,
                 verbose: int = 0, search: str = "fast", n_finalists: int = 2,
                 progress: str = "none") -> SelectionResult:
    """Choose feature set, head and parameters by stratified cross-validation.

    Give this function training data only: everything it returns is measured on it.

    Parameters
    ----------
    feature_sets : mapping of key to array-like of shape (n_samples, n_features_i), or array
        Candidate feature matrices, one per (layer, pooling), all with the same rows. Keys are
        names or ``(layer, pooling)`` tuples (then recorded as such). A wide matrix from a
        multi-layer extraction can be cut with :func:`split_columns`. A single matrix is
        treated as ``{"features": X}``.
    y : array-like of shape (n_samples,)
        Class labels (strings or integers).
    heads : sequence of str or mapping of str to estimator, default=None
        None: ``("logreg",)`` for the fast search, ``DEFAULT_HEADS = ("logreg", "linear_svm",
        "rbf_svm")`` for the exhaustive one. Registered head names (see
        :func:`~classify.heads.list_heads`), or a mapping of name to an unfitted estimator (or
        ``None`` for a registered head).
    param_grids : mapping of str to dict, default=None
        Grid per head name, e.g. ``{"logreg": {"C": np.logspace(-4, 2, 13)}}``. Registered heads
        default to :func:`~classify.heads.default_param_grid` (keys are :func:`make_head`
        keyword arguments); custom estimators default to no search (keys are their
        ``set_params`` names). The fast search starts every head without a given grid on a
        coarse C grid that extends a decade at a time while the best C is at one of its ends;
        a given grid is searched as given (a note says when the chosen C is at its end).
    probability : bool, default=False
        Calibrate the SVM heads so that every candidate has ``predict_proba`` (and a log loss).
        The cross-validation then measures the calibrated models, as they will be deployed.
    scoring : {"balanced_accuracy", "accuracy", "f1_macro", "log_loss"}, default="balanced_accuracy"
        The score that decides. ``"log_loss"`` needs every head to give probabilities
        (logreg, or the SVMs with ``probability=True``, then calibrated inside every fold);
        a head without them is refused up front.
    n_splits : int, default=5
        Folds per repeat (reduced for small classes, see
        :class:`~classify.splits.AdaptiveStratifiedKFold`).
    n_repeats : int, default=3
        Repeats of the k-fold with different shuffles (more repeats, less noisy choice).
    random_state : int, default=0
        Seed of the splits.
    rule : {"best", "one_se", "one_se_log_loss"}, default="best"
        ``"best"``: the candidate with the highest mean score (ties broken as
        :mod:`classify.rules` says). The two others keep the best candidate's feature set and
        head and move its C among the values statistically tied with the best:
        ``"one_se_log_loss"`` to the C of the lowest mean log loss among those whose fold by
        fold difference from the best is within one standard error (better probabilities at
        about the same accuracy; heads without probabilities keep the best C);
        ``"one_se"`` to the smallest C whose mean is within one standard error (fold standard
        deviation / sqrt(n_splits)) of the best, the one-standard-error rule (Breiman et al.
        1984; Hastie et al., *Elements of Statistical Learning*, 7.10), which under-fitted on
        the benchmark data. Measurements: benchmarks/README.md ("selection.py rules").
    nested : bool, default=False
        Also run :func:`nested_cross_validate` (``outer_splits`` folds) and store it in
        ``result.nested``: an unbiased estimate of the whole procedure, at ``outer_splits``
        times the cost.
    outer_splits : int, default=5
        Outer folds of the nested cross-validation.
    n_jobs : int, default=None
        Workers of ``joblib.Parallel`` (one task per feature set and split). Inside
        ``with joblib.parallel_backend("dask"):`` the tasks go to a Dask cluster.
    verbose : int, default=0
        joblib verbosity.
    search : {"fast", "exhaustive"}, default="fast"
        ``"fast"`` (:class:`~classify.search.FastSearch`): every feature set is screened by a
        closed-form leave-one-out ridge score (:mod:`classify.screening`), and only the
        ``n_finalists`` best are cross-validated, over a coarse C grid that extends itself when
        the best C is at an end (heads without a grid in ``param_grids``), with one k-fold
        repeat from 1,000 images on and 2 folds from 5,000 on; SVMs are
        calibrated only when refitted (except under ``scoring="log_loss"``, which needs their
        calibrated probabilities in every fold). ``"exhaustive"``: every (feature set, head,
        C) on every fold of every repeat (:class:`~classify.search.ExhaustiveSearch`).
    n_finalists : int, default=2
        Fast search: feature sets tuned after the screening (at least 1).
    progress : {"none", "auto", "bar", "log"}, default="none"
        A tqdm bar with an ETA on stderr (``"bar"``), log lines every 10 s (``"log"``), or
        whichever suits stderr (``"auto"``): fits done out of fits planned.

    Returns
    -------
    SelectionResult

    Raises
    ------
    ValueError
        Invalid parameters, non-finite features, fewer than 2 classes, a class with a single
        image (named: cross-validation could never test it), all before any fit; or every
        candidate failed.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> result = select_model({"pixels": X[:300]}, y[:300], heads=["logreg"],
    ...                       param_grids={"logreg": {"C": [0.01, 1.0]}}, n_repeats=1,
    ...                       search="exhaustive")
    >>> result.best_head
    'logreg'
    """
    problem = _problem(feature_sets, y, heads=heads, scoring=scoring, rule=rule,
                       search=search, n_finalists=n_finalists, probability=probability,
                       n_splits=n_splits, param_grids=param_grids, n_repeats=n_repeats,
                       random_state=random_state, n_jobs=n_jobs, verbose=verbose,
                       progress=progress)
    scoring = problem.scoring
    outcome = make_search(search, n_finalists=n_finalists).fit(problem)
    split_ids = list(range(len(outcome.splits)))
    result = SelectionResult(
        table=build_table(problem.keys, outcome.candidates, outcome.evaluation, split_ids,
                          ranks(outcome.crit, outcome.best)),
        keys=problem.keys, candidates=outcome.candidates, best_index=outcome.best,
        best_cv=build_cv_result(outcome.evaluation, outcome.best, outcome.splits, split_ids,
                                problem.classes, problem.codes, outcome.plan,
                                outcome.n_repeats, random_state),
        classes=problem.classes, scoring=scoring, rule=rule, notes=tuple(outcome.notes),
        split_scores=split_scores(outcome.evaluation, split_ids), search=search,
        screening=outcome.screening,
    )
    logger.info("selected %s / %s %s: %s = %.4f", feature_set_name(result.best_feature_set),
                result.best_head, params_text(result.best_params), scoring, result.best_score)
    if nested:
        result.nested = nested_cross_validate(
            dict(zip(problem.keys, problem.arrays)), y, heads=heads, param_grids=param_grids,
            probability=probability, scoring=scoring, n_splits=n_splits, n_repeats=n_repeats,
            random_state=random_state, rule=rule, outer_splits=outer_splits, n_jobs=n_jobs,
            verbose=verbose, search=search, n_finalists=n_finalists)
    return result


def nested_cross_validate(feature_sets, y, *, heads: Sequence[str] | Mapping | None = None,
                          param_grids: Mapping | None = None, probability: bool = False,
                          scoring: str = DEFAULT_SCORING, n_splits: int = 5,
                          n_repeats: int = 3, random_state: int = 0, rule: str = DEFAULT_RULE,
                          outer_splits: int = 5, outer_repeats: int = 1,
                          n_jobs: int | None = None, verbose: int = 0, search: str = "fast",
                          n_finalists: int = 2) -> NestedCVResult:
    """Unbiased estimate of :func:`select_model`'s whole procedure by nested cross-validation.

    In every outer fold, the selection (feature set, head, parameters, by inner repeated
    stratified k-fold) runs on the outer training part only; the chosen configuration is refitted
    on that part and scored on the outer test part, which the selection never saw.

    Parameters
    ----------
    feature_sets, y, heads, param_grids, probability, scoring, rule
        As in :func:`select_model`.
    n_splits, n_repeats, random_state
        As in :func:`select_model` (``n_splits`` and ``n_repeats`` are the inner ones).
    outer_splits : int, default=5
        Outer folds (reduced for small classes like the inner ones).
    outer_repeats : int, default=1
        Repeats of the outer k-fold.
    n_jobs, verbose, search, n_finalists
        As in :func:`select_model`. With the exhaustive search, all inner tasks of all outer
        folds form one parallel batch; the fast search runs in each outer fold in turn.

    Returns
    -------
    NestedCVResult
        ``fold_scores`` holds the outer scores and the choice made in each outer fold.
    """
    problem = _problem(feature_sets, y, heads=heads, scoring=scoring, rule=rule,
                       search=search, n_finalists=n_finalists, probability=probability,
                       n_splits=n_splits, param_grids=param_grids, n_repeats=n_repeats,
                       random_state=random_state, n_jobs=n_jobs, verbose=verbose)
    classes, codes = problem.classes, problem.codes
    outer_cv = AdaptiveStratifiedKFold(outer_splits, n_repeats=outer_repeats,
                                       random_state=random_state)
    outer_plan = outer_cv.plan(classes[codes])  # notes name classes, never codes
    outer = list(outer_cv.split(y=classes[codes]))
    chosen = make_search(search, n_finalists=n_finalists).outer_fold_choices(problem, outer)
    return _outer_scores(problem, chosen, outer, outer_plan, outer_repeats, random_state)


def _outer_scores(problem: Problem, chosen, outer, outer_plan, outer_repeats,
                  random_state) -> NestedCVResult:
    """Refit each outer fold's choice on its training part and score it on its test part."""
    keys, arrays, codes, classes = problem.keys, problem.arrays, problem.codes, problem.classes
    refits = Parallel(n_jobs=problem.n_jobs, verbose=problem.verbose)(
        delayed(_evaluation._evaluate_fold)(arrays[cand.feature_set], codes, train, test,
                                            [cand.estimator], len(classes))
        for (cand, _), (train, test) in zip(chosen, outer))
    rows = []
    oof = np.full((outer_repeats, len(codes)), -1, dtype=np.int64)
    for k, ((cand, inner), (train, test), (scores, times, preds, _, errors, _)) in enumerate(
            zip(chosen, outer, refits)):
        if errors:
            raise ValueError(f"The chosen configuration failed to fit on outer fold {k}: "
                             f"{errors[0]}")
        row = {"repeat": k // outer_plan.n_splits, "fold": k % outer_plan.n_splits,
               "n_test": len(test), "feature_set": feature_set_name(keys[cand.feature_set]),
               "head": cand.head, "params": params_text(cand.params), "inner_score": inner}
        row.update(zip(SCORE_NAMES, scores[0]))
        row["fit_time"] = times[0]
        rows.append(row)
        oof[k // outer_plan.n_splits, test] = preds[0]
    return NestedCVResult(classes=classes, y=codes, fold_scores=pd.DataFrame(rows),
                          oof_predictions=oof, n_splits=outer_plan.n_splits,
                          n_repeats=outer_repeats, random_state=random_state,
                          notes=outer_plan.notes)
