"""Search strategies: how a selection explores its candidates, one object per strategy.

Every strategy follows one protocol, that of scikit-learn's ``BaseSearchCV.fit`` ->
``self._run_search(evaluate_candidates)``: :meth:`BaseSearch.fit` makes the splits, hands
:meth:`~BaseSearch._run_search` a function that cross-validates a list of candidates (and keeps
every result), then chooses with the rule (:mod:`classify.rules`). A strategy decides only which
candidates to evaluate, on how many folds, and what is refitted.

* :class:`ExhaustiveSearch` (``search="exhaustive"``): every (feature set, head, C) of the grids
  on every fold of every repeat; its cost grows with classes x features x candidates x folds,
  and with 100 classes and thousands of images it runs for hours.
* :class:`FastSearch` (``search="fast"``, the default of :func:`classify.select_model`) keeps
  the cost below the cost of extracting the features:

  1. **Screen** each feature set by the leave-one-out score of a ridge classifier, in closed
     form (:mod:`classify.screening`).
  2. **Tune** only the ``n_finalists`` best feature sets: the heads (logistic regression by
     default) over a coarse C grid by stratified k-fold (one repeat from 1,000 images on, where
     the fold noise is small; from 5,000 images on 2 folds, see :func:`fast_splits`),
     through the same fold evaluation as the exhaustive search (logistic regressions along
     each fold's C path with warm starts, in the features' float32). When the chosen C lies at
     the end of the grid, the grid is extended one step that way and only the new values are
     evaluated (until it stops moving or a limit).
  3. SVM heads are compared without their probability calibration; the chosen head is
     calibrated once, when it is refitted on all the data; under ``scoring="log_loss"``, a
     score of the calibrated probabilities themselves, they are calibrated in every fold.

``benchmarks/selection.py`` measures both strategies (time and test score) side by side, and
the fast one at 5,000 and 20,000 images against the extraction time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from classify import _evaluation
from classify.candidates import (
    Candidate,
    build_candidates,
    c_of,
    feature_set_name,
    head_items,
    params_text,
)
from classify.cv import encode_labels, make_splits
from classify.heads import HEADS, make_head
from classify.metrics import DEFAULT_SCORING, SCORE_NAMES
from classify.rules import criterion, decide, edge_notes, split_scores, summaries
from classify.screening import finalists, screen_feature_sets, screen_note
from classify.splits import FoldPlan
from classify.validation import check_option
from featurize.progress import make_progress

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_HEADS", "FAST_C_GRID", "FAST_HEADS", "SEARCHES", "BaseSearch",
           "ExhaustiveSearch", "FastSearch", "Problem", "SearchOutcome", "default_heads",
           "fast_c_grid", "fast_repeats", "fast_splits", "make_search"]

#: Coarse C grids (one value per decade) the fast search starts from, for standardized features.
FAST_C_GRID = {"logreg": [1e-4, 1e-3, 1e-2, 1e-1, 1.0],
               "linear_svm": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
               "rbf_svm": [0.1, 1.0, 10.0, 100.0]}
#: From this many images on, one k-fold repeat: fold noise is small and every repeat costs a
#: full set of fits.
ONE_REPEAT_FROM = 1000
#: From this many images on, 2 folds (:func:`fast_splits`).
FEWER_FOLDS_FROM = 5000
#: Folds of the fast search from :data:`FEWER_FOLDS_FROM` images on.
LARGE_N_FOLDS = 2
#: How many times an edge C may extend its grid.
MAX_EXTENSIONS = 3


@dataclass
class Problem:
    """What a search works on: validated feature sets, labels and the selection's options."""

    keys: list
    arrays: list
    classes: np.ndarray
    codes: np.ndarray
    heads: object
    param_grids: dict | None
    probability: bool
    scoring: str
    rule: str
    n_splits: int
    n_repeats: int
    random_state: int
    n_jobs: int | None = None
    verbose: int = 0
    progress: str = "none"

    def subset(self, rows) -> Problem:
        """The same problem on some rows (an outer training part), without progress display."""
        classes, codes = encode_labels(self.classes[self.codes[rows]])
        return replace(self, arrays=[X[rows] for X in self.arrays], classes=classes,
                       codes=codes, progress="none")


@dataclass
class SearchOutcome:
    """Every candidate evaluated, their evaluation on the splits, and the choice."""

    candidates: list
    evaluation: _evaluation.Evaluation
    splits: list
    plan: FoldPlan
    n_repeats: int
    best: int
    crit: np.ndarray
    notes: list = field(default_factory=list)
    screening: pd.DataFrame | None = None
    scoring: str = DEFAULT_SCORING

    @property
    def best_score(self) -> float:
        """Mean ``scoring`` of the chosen candidate over the splits."""
        means, _ = summaries(self.evaluation, list(range(len(self.splits))))
        return float(means[self.best, SCORE_NAMES.index(self.scoring)])


class _Evaluator:
    """The ``evaluate_candidates`` a strategy calls: cross-validates candidates on the splits
    (with a progress bar) and keeps all of them and their results, in order."""

    def __init__(self, problem: Problem, splits, plan: FoldPlan):
        self.problem, self.splits, self.plan = problem, splits, plan
        self.candidates: list = []
        self.evaluation = None

    def __call__(self, candidates, desc: str = "cross-validate") -> None:
        p = self.problem
        bar = make_progress(p.progress, desc=desc, unit="fit", interval=10.0)
        bar.start(len(candidates) * len(self.splits))
        try:
            more = _evaluation.evaluate(p.arrays, p.codes, candidates, self.splits,
                                        n_jobs=p.n_jobs, verbose=p.verbose, progress=bar)
        finally:
            bar.close()
        self.candidates = self.candidates + list(candidates)
        self.evaluation = more if self.evaluation is None else _evaluation.concatenate(
            self.evaluation, more)


class BaseSearch:
    """A search strategy: which candidates to cross-validate, on how many folds.

    Subclasses set :attr:`default_heads` and implement :meth:`_run_search`; they may override
    :meth:`folds`, :meth:`_deployed` and :meth:`outer_fold_choices`.
    """

    #: The heads searched when the caller names none.
    default_heads: tuple = ()

    def folds(self, n_samples: int, n_splits: int, n_repeats: int) -> tuple[int, int]:
        """``(folds, repeats)`` to cross-validate ``n_samples`` images on."""
        return n_splits, n_repeats

    def _run_search(self, problem: Problem, evaluate) -> tuple[list, pd.DataFrame | None]:
        """Call ``evaluate(candidates)`` as often as needed; return (notes, screening)."""
        raise NotImplementedError

    def _deployed(self, candidate: Candidate, problem: Problem) -> Candidate:
        """The chosen candidate as it will be refitted (the same one, by default)."""
        return candidate

    def fit(self, problem: Problem) -> SearchOutcome:
        """Cross-validate the strategy's candidates and choose one with ``problem.rule``."""
        n_splits, n_repeats = self.folds(len(problem.codes), problem.n_splits,
                                         problem.n_repeats)
        # split on the class names (the same splits as on their codes), so that notes name them
        splits, plan = make_splits(problem.classes[problem.codes], n_splits, n_repeats,
                                   problem.random_state)
        evaluate = _Evaluator(problem, splits, plan)
        notes, screening = self._run_search(problem, evaluate)
        candidates, evaluation = evaluate.candidates, evaluate.evaluation
        if len(evaluation.errors) == len(candidates):
            raise ValueError(f"Every candidate failed to fit; the first error: "
                             f"{evaluation.errors[0]}")
        best, crit = decide(split_scores(evaluation, list(range(len(splits)))), candidates,
                            problem.scoring, problem.rule, plan.n_splits)
        candidates[best] = self._deployed(candidates[best], problem)
        notes = list(plan.notes) + notes + edge_notes(candidates, best)
        if evaluation.errors:
            index, message = next(iter(evaluation.errors.items()))
            failed = candidates[index]
            notes.append(f"{len(evaluation.errors)} candidates failed on some fold and were "
                         f"skipped (first: {failed.head} {params_text(failed.params)}: "
                         f"{message})")
            logger.warning(notes[-1])
        return SearchOutcome(candidates, evaluation, splits, plan, n_repeats, best, crit, notes,
                             screening, problem.scoring)

    def outer_fold_choices(self, problem: Problem, outer) -> list[tuple[Candidate, float]]:
        """The choice (and its inner score) of the whole search on each outer training part,
        for a nested cross-validation: the search runs in each outer fold in turn."""
        chosen = []
        for train, _ in outer:
            # an outer fold may leave a class one image: trained, not tested
            inner = self.fit(problem.subset(train))
            chosen.append((inner.candidates[inner.best], inner.best_score))
        return chosen


class ExhaustiveSearch(BaseSearch):
    """Every (feature set, head, parameters) of the grids on every fold of every repeat."""

    default_heads = ("logreg", "linear_svm", "rbf_svm")

    def _run_search(self, problem, evaluate):
        evaluate(build_candidates(len(problem.arrays), problem.heads, problem.param_grids,
                                  problem.probability))
        return [], None

    def outer_fold_choices(self, problem, outer):
        """All inner tasks of all outer folds in one parallel batch (the candidates do not
        depend on the outer fold)."""
        p = problem
        candidates = build_candidates(len(p.arrays), p.heads, p.param_grids, p.probability)
        inner_splits, owner, inner_k = [], [], []
        for o, (train, _) in enumerate(outer):
            splits, inner_plan = make_splits(p.classes[p.codes[train]], p.n_splits,
                                             p.n_repeats, p.random_state)
            inner_splits += [(train[tr], train[te]) for tr, te in splits]
            owner += [o] * len(splits)
            inner_k.append(inner_plan.n_splits)
        evaluation = _evaluation.evaluate(p.arrays, p.codes, candidates, inner_splits,
                                          n_jobs=p.n_jobs, verbose=p.verbose)
        owner = np.asarray(owner)
        chosen = []
        for o in range(len(outer)):
            scores = split_scores(evaluation, np.flatnonzero(owner == o))
            best, _ = decide(scores, candidates, p.scoring, p.rule, inner_k[o])
            chosen.append((candidates[best],
                           float(scores[best, :, SCORE_NAMES.index(p.scoring)].mean())))
        return chosen


class FastSearch(BaseSearch):
    """Screen every feature set in closed form, tune only the best ``n_finalists``.

    Parameters
    ----------
    n_finalists : int, default=2
        Feature sets tuned after the screening.
    """

    default_heads = ("logreg",)

    def __init__(self, n_finalists: int = 2):
        self.n_finalists = n_finalists

    def folds(self, n_samples, n_splits, n_repeats):
        return fast_splits(n_samples, n_splits), fast_repeats(n_samples, n_repeats)

    def _run_search(self, problem, evaluate):
        p = problem
        bar = make_progress(p.progress, desc="screen feature sets", unit="set", interval=10.0)
        bar.start(len(p.arrays))
        try:
            screening = screen_feature_sets(p.arrays, p.codes, p.scoring, progress=bar)
        finally:
            bar.close()
        tuned = finalists(screening, self.n_finalists)
        screening.insert(0, "feature_set", [feature_set_name(k) for k in p.keys])
        screening["tuned"] = [i in tuned for i in range(len(p.keys))]
        notes = [screen_note(p.keys, screening, tuned)]
        k = fast_splits(len(p.codes), p.n_splits)
        if k < p.n_splits:
            notes.append(f"{len(p.codes)} images: {k}-fold cross-validation instead of "
                         f"{p.n_splits}-fold (every image is tested once; the models train on "
                         f"{k - 1}/{k} of the images, so the scores are a little pessimistic "
                         "for the model refitted on all of them)")
        # the default grids of registered heads are coarse and extend; a given grid is searched
        # as given
        grids = dict(p.param_grids or {})
        for name, estimator in head_items(p.heads):
            if estimator is None and name not in grids and fast_c_grid(name) is not None:
                grids[name] = {"C": fast_c_grid(name)}
        evaluate([c for c in build_candidates(len(p.arrays), p.heads, grids,
                                              self._cv_probability(p))
                  if c.feature_set in tuned])
        self._extend_edges(p, evaluate, given=set(p.param_grids or ()))
        return notes, screening

    @staticmethod
    def _cv_probability(problem) -> bool:
        # log loss needs the probabilities of every candidate as it will be deployed
        return problem.probability and problem.scoring == "log_loss"

    def _extend_edges(self, problem, evaluate, given) -> None:
        """While the C that the rule chooses is at an end of its default grid, try one decade
        further (heads in ``given`` have a grid chosen by the caller: searched as given)."""
        for _ in range(MAX_EXTENSIONS):
            candidates = evaluate.candidates
            scores = split_scores(evaluate.evaluation, list(range(len(evaluate.splits))))
            if not np.isfinite(criterion(scores.mean(axis=1), problem.scoring)).any():
                return
            cand = candidates[decide(scores, candidates, problem.scoring, problem.rule,
                                     evaluate.plan.n_splits)[0]]
            c = c_of(cand.params)
            if c is None or cand.head not in HEADS or cand.head in given:
                return
            new_c = extension([c_of(k.params) for k in candidates
                               if k.feature_set == cand.feature_set and k.head == cand.head], c)
            if new_c is None:
                return
            params = {**cand.params, "C": new_c}
            logger.info("fast search: chosen C=%g at the end of the grid; trying C=%g", c,
                        new_c)
            evaluate([Candidate(f, make_head(cand.head, probability=self._cv_probability(
                problem), **params), cand.head, params)
                for f in sorted({k.feature_set for k in candidates if k.head == cand.head})],
                desc=f"extend C={new_c:g}")

    def _deployed(self, candidate, problem):
        """SVMs were compared uncalibrated: the chosen one is calibrated for its refit."""
        if (problem.probability and candidate.head in HEADS
                and not hasattr(candidate.estimator, "predict_proba")):
            return Candidate(candidate.feature_set,
                             make_head(candidate.head, probability=True, **candidate.params),
                             candidate.head, candidate.params)
        return candidate


#: The strategies by name.
STRATEGIES = {"fast": FastSearch, "exhaustive": ExhaustiveSearch}
SEARCHES = tuple(STRATEGIES)
#: Heads searched by default (each strategy's :attr:`~BaseSearch.default_heads`).
DEFAULT_HEADS = ExhaustiveSearch.default_heads
FAST_HEADS = FastSearch.default_heads


def check_search(search: str, owner: str = "select_model") -> str:
    """``search`` if it names a strategy, or ConfigError."""
    return check_option("search", search, SEARCHES, owner=owner)


def make_search(search: str, *, n_finalists: int = 2) -> BaseSearch:
    """The strategy object of a ``search`` name."""
    check_search(search)
    return FastSearch(n_finalists) if search == "fast" else STRATEGIES[search]()


def default_heads(search: str) -> tuple:
    """The heads a strategy searches when none are named."""
    return STRATEGIES[check_search(search)].default_heads


def fast_repeats(n_samples: int, n_repeats: int) -> int:
    """k-fold repeats of the fast search: all of them on small data, one from 1,000 images."""
    return 1 if n_samples >= ONE_REPEAT_FROM else n_repeats


def fast_splits(n_samples: int, n_splits: int) -> int:
    """k-fold folds of the fast search: as asked below 5,000 images, 2 from there on.

    Every image is tested once whatever the number of folds, so the choice sees as many test
    images (2,500 or more per fold: a standard error of accuracy under 1 point); 2 folds train
    on half the images instead of 4/5 (a shift of the best C far smaller than the decade steps
    of the grid) for a quarter to a ninth of the cost of 5 (fits on fewer rows also converge
    sooner). Measured by ``benchmarks/selection.py scale``: the same choices, and the
    finalists' cross-validation within the extraction time (3 folds were not).
    """
    return min(n_splits, LARGE_N_FOLDS) if n_samples >= FEWER_FOLDS_FROM else n_splits


def fast_c_grid(head: str) -> list[float] | None:
    """The coarse starting grid of a registered head (None for heads without C)."""
    return list(FAST_C_GRID[head]) if head in FAST_C_GRID else None


def extension(c_values: list[float], chosen_c: float) -> float | None:
    """The next C to try when ``chosen_c`` is at an end of ``c_values`` (one decade further)."""
    grid = sorted(c_values)
    if len(grid) < 2 or chosen_c not in (grid[0], grid[-1]):
        return None
    step = chosen_c * 10.0 if chosen_c == grid[-1] else chosen_c / 10.0
    return float(f"{step:.12g}")  # 1e-07, not the 1.0000000000000002e-07 of 1e-4 / 10 / 10 / 10
