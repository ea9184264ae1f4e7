"""Automatic choice of feature set (layer, pooling), head and regularization by cross-validation.

:func:`select_model` cross-validates every (feature set, head, parameters) candidate on the
*training* data it is given (it never sees test data) and picks the best mean score.
:func:`nested_cross_validate` repeats the whole selection inside each fold of an outer
cross-validation, which gives an unbiased estimate of what the selection procedure achieves on
new data (the inner winner's score is optimistic: it is a maximum over many noisy estimates).

Choice rules. First the candidate with the highest mean score over all folds and repeats; ties
(equal means, common with accuracy on small data) are broken by the mean of the candidate and
its neighbours on the C grid (the centre of a plateau is preferred to its edge), then by the
order of the candidates: feature sets as given, heads as given, C ascending. That is
``rule="best"`` (default). With ``rule="one_se"`` the C of that (feature set, head) is then
moved to the smallest C whose mean score is within one standard error of the best (the
one-standard-error rule); measured on clothing and ants/bees it chose too small a C (lower test
scores, probabilities near uniform), see benchmarks/README.md.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import ParameterGrid
from sklearn.utils.validation import check_array

from classify import _evaluation
from classify import search as _search
from classify.cv import CVResult, build_cv_result, encode_labels, make_splits
from classify.heads import HEADS, default_param_grid, make_head
from classify.metrics import GREATER_IS_BETTER, SCORE_NAMES
from classify.reports import format_frame, format_scores, optimism_note
from classify.search import SEARCHES
from classify.splits import AdaptiveStratifiedKFold, plan_folds

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HEADS",
    "check_selection_params",
    "NestedCVResult",
    "SelectionResult",
    "feature_set_name",
    "nested_cross_validate",
    "select_model",
    "split_columns",
]

DEFAULT_HEADS = ("logreg", "linear_svm", "rbf_svm")


def _c_of(params: dict):
    """The numeric ``C`` of a candidate's parameters, or None."""
    c = params.get("C")
    return c if isinstance(c, numbers.Real) and not isinstance(c, bool) else None


def feature_set_name(key) -> str:
    """Display name of a feature-set key: ``"layer/pooling"`` for a ``(layer, pooling)`` tuple."""
    if isinstance(key, tuple):
        return "/".join(str(part) for part in key)
    return str(key)


def split_columns(X, widths) -> dict:
    """Cut a wide matrix (several layers extracted in one pass) into per-layer views.

    Parameters
    ----------
    X : ndarray of shape (n_samples, sum of widths)
        Concatenated features, blocks in the order of ``widths``.
    widths : mapping of key to int, or sequence of (key, int)
        Width of each block, e.g. ``{("blocks.4", "avg"): 80, ("blocks.6", "avg"): 192}``.

    Returns
    -------
    dict
        ``key -> X[:, start:stop]`` (views, no copy).
    """
    items = list(widths.items()) if isinstance(widths, Mapping) else list(widths)
    X = np.asarray(X)
    total = sum(int(w) for _, w in items)
    if X.ndim != 2 or X.shape[1] != total:
        raise ValueError(
            f"The widths add up to {total} columns but X has shape {X.shape}. Pass the widths "
            "of the blocks of X, in order."
        )
    out, start = {}, 0
    for key, width in items:
        out[key] = X[:, start:start + int(width)]
        start += int(width)
    return out


def _prepare_feature_sets(feature_sets, n_samples: int):
    """Return (keys, arrays) after validation; a single matrix becomes ``{"features": X}``."""
    if not isinstance(feature_sets, Mapping):
        feature_sets = {"features": feature_sets}
    if not feature_sets:
        raise ValueError("feature_sets is empty: give at least one feature matrix.")
    keys, arrays = [], []
    for key, X in feature_sets.items():
        name = feature_set_name(key)
        try:
            X = check_array(X, dtype=(np.float64, np.float32), input_name=f"feature set {name!r}")
        except ValueError as exc:
            raise ValueError(
                f"Feature set {name!r} is not a finite 2-D numeric matrix: {exc} Rows of images "
                "that failed to load are NaN: drop them (and their labels) first."
            ) from exc
        if X.shape[0] != n_samples:
            raise ValueError(f"Feature set {name!r} has {X.shape[0]} rows but y has {n_samples}.")
        keys.append(key)
        arrays.append(X)
    return keys, arrays


def _build_candidates(n_sets: int, heads, param_grids, probability: bool):
    if isinstance(heads, str):
        heads = (heads,)
    heads = dict(heads) if isinstance(heads, Mapping) else {name: None for name in heads}
    if not heads:
        raise ValueError("heads is empty: give at least one head name.")
    param_grids = dict(param_grids or {})
    unknown = set(param_grids) - set(heads) - set(HEADS)
    if unknown:  # grids of registered heads left out of `heads` are simply unused
        raise ValueError(f"param_grids has grids for {sorted(unknown)}, which are neither in "
                         f"heads ({sorted(heads)}) nor registered heads ({sorted(HEADS)}).")
    per_head = []
    for name, estimator in heads.items():
        if estimator is None and name not in HEADS:
            raise ValueError(f"Unknown head {name!r}. Valid heads are {sorted(HEADS)}, or pass "
                             "heads as a mapping of name to an unfitted estimator.")
        grid = param_grids.get(name, default_param_grid(name) if estimator is None else {})
        params_list = list(ParameterGrid(grid)) if grid else [{}]
        params_list.sort(key=lambda p: _c_of(p) if _c_of(p) is not None else 0.0)
        built = []
        for params in params_list:
            if estimator is None:
                est = make_head(name, probability=probability, **params)
            else:
                est = clone(estimator).set_params(**params)
            built.append((params, est))
        per_head.append((name, built))
    return [_evaluation.Candidate(f, est, name, params)
            for f in range(n_sets) for name, built in per_head for params, est in built]


def _check_scoring(scoring: str) -> str:
    if scoring == "neg_log_loss":
        scoring = "log_loss"
    if scoring not in SCORE_NAMES:
        raise ValueError(f"The 'scoring' parameter must be one of {list(SCORE_NAMES)}. Got "
                         f"{scoring!r} instead.")
    return scoring


def _criterion(means: np.ndarray, scoring: str) -> np.ndarray:
    """Larger-is-better criterion per candidate; -inf where the score is unavailable."""
    values = means[:, SCORE_NAMES.index(scoring)]
    crit = values if GREATER_IS_BETTER[scoring] else -values
    return np.where(np.isfinite(crit), crit, -np.inf)


def _c_groups(candidates) -> dict:
    """Candidates that differ only by C, as lists of indices sorted by increasing C."""
    groups: dict = {}
    for i, cand in enumerate(candidates):
        if _c_of(cand.params) is not None:
            other = tuple(sorted((k, repr(v)) for k, v in cand.params.items() if k != "C"))
            groups.setdefault((cand.feature_set, cand.head, other), []).append(i)
    for members in groups.values():
        members.sort(key=lambda i: candidates[i].params["C"])
    return groups


def _choose(crit: np.ndarray, candidates, se: np.ndarray | None = None) -> int:
    """Index of the chosen candidate (see the module docstring for the rules).

    ``se`` (standard errors of ``crit``) selects the one-standard-error rule; None the best.
    """
    if not np.isfinite(crit).any():
        raise ValueError("Every candidate failed (or has no value for the chosen score).")
    groups = _c_groups(candidates)
    smoothed = crit.copy()
    for members in groups.values():
        for j, i in enumerate(members):
            window = crit[members[max(0, j - 1):j + 2]]
            smoothed[i] = window[np.isfinite(window)].mean() if np.isfinite(crit[i]) else -np.inf
    tied = np.flatnonzero(crit >= crit.max() - 1e-9)
    best = int(tied[np.argmax(smoothed[tied])])
    if se is None or not np.isfinite(se[best]):
        return best
    for members in groups.values():
        if best in members:
            threshold = crit[best] - se[best]
            return next(i for i in members if crit[i] >= threshold)
    return best


RULES = ("one_se", "best")


def _head_names(heads) -> list:
    if isinstance(heads, str):
        return [heads]
    return list(heads)


def _has_proba(name: str, estimator, probability: bool) -> bool:
    if estimator is not None:
        return hasattr(estimator, "predict_proba")
    return HEADS[name].native_proba or probability


def check_selection_params(*, heads=None, scoring: str = "balanced_accuracy",
                           rule: str = "best", search: str = "fast", n_finalists: int = 2,
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
        The first invalid parameter, or a class of a single image (named).
    """
    scoring = _check_scoring(scoring)
    _check_rule(rule)
    if search not in SEARCHES:
        raise ValueError(f"The 'search' parameter must be one of {list(SEARCHES)}. Got "
                         f"{search!r} instead.")
    if (isinstance(n_finalists, bool) or not isinstance(n_finalists, numbers.Integral)
            or n_finalists < 1):
        raise ValueError("The 'n_finalists' parameter must be an int in the range [1, inf). "
                         f"Got {n_finalists!r} instead.")
    if heads is None:
        heads = DEFAULT_HEADS if search == "exhaustive" else _search.FAST_HEADS
    items = (list(heads.items()) if isinstance(heads, Mapping)
             else [(name, None) for name in _head_names(heads)])
    if not items:
        raise ValueError("heads is empty: give at least one head name.")
    unknown = [name for name, est in items if est is None and name not in HEADS]
    if unknown:
        raise ValueError(f"Unknown head {unknown[0]!r}. Valid heads are {sorted(HEADS)}, or pass "
                         "heads as a mapping of name to an unfitted estimator.")
    if scoring == "log_loss":
        blind = [name for name, est in items if not _has_proba(name, est, probability)]
        if blind:
            raise ValueError(f"scoring='log_loss' needs probabilities, and the heads {blind} "
                             "give none without probability=True (calibrated SVMs; the default "
                             "of `featurize train`): calibrate them, leave them out, or choose "
                             "another scoring.")
    if y is not None:
        plan_folds(np.asarray(y), n_splits, small_classes="error")
    return scoring, heads




def _check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"The 'rule' parameter must be one of {list(RULES)}. Got {rule!r} "
                         "instead.")
    return rule


def _decide(means, stds, candidates, scoring: str, rule: str, n_splits: int):
    """Return (chosen index, criterion per candidate) under ``rule``."""
    crit = _criterion(means, scoring)
    se = None
    if rule == "one_se":
        # Standard error of a mean over k folds; repeats are not independent of each other, so
        # they do not shrink it (conservative).
        se = stds[:, SCORE_NAMES.index(scoring)] / np.sqrt(n_splits)
    return _choose(crit, candidates, se), crit


def _nan_summaries(evaluation, split_ids):
    """Means and stds over splits; a candidate that failed on any split gets NaN."""
    scores = evaluation.scores[:, split_ids]
    return scores.mean(axis=1), scores.std(axis=1)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


@dataclass
class SelectionResult:
    """Everything the selection measured, and its choice.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per candidate: ``feature_set``, ``layer``, ``pooling``, ``head``, ``params``,
        ``C``, ``<score>_mean`` and ``<score>_std`` for every score, ``fit_time`` (mean seconds
        per fold), ``rank`` (1 = chosen) and ``error`` (message of a failed candidate).
    keys : list
        The feature-set keys, as given.
    candidates : list of Candidate
        The configurations, in table order.
    best_index : int
        Row of the chosen candidate.
    best_cv : CVResult
        Cross-validation of the chosen candidate (fold scores, out-of-fold predictions,
        per-class report, confusion matrix). Its scores are optimistic for the selection
        procedure as a whole; see ``nested``.
    classes : ndarray
        Class labels.
    scoring : str
        The score that decided.
    rule : {"one_se", "best"}
        The choice rule (see :func:`select_model`).
    notes : tuple of str
        What was adapted or worth knowing (fewer folds, C at a grid edge, failed candidates).
    nested : NestedCVResult or None
        Nested cross-validation of the whole procedure, when asked for.
    search : {"fast", "exhaustive"}
        The strategy that chose (see :mod:`classify.search`).
    screening : pandas.DataFrame or None
        Fast search only: the ridge leave-one-out score of every feature set (``feature_set``,
        ``loo_score``, ``alpha``, ``seconds``, ``tuned``); only the tuned ones are in ``table``.
    """

    table: pd.DataFrame
    keys: list
    candidates: list
    best_index: int
    best_cv: CVResult
    classes: np.ndarray
    scoring: str
    rule: str = "best"
    notes: tuple = field(default_factory=tuple)
    nested: NestedCVResult | None = None
    search: str = "exhaustive"
    screening: pd.DataFrame | None = None

    @property
    def best(self) -> _evaluation.Candidate:
        """The chosen candidate."""
        return self.candidates[self.best_index]

    @property
    def best_feature_set(self):
        """Key of the chosen feature set (as given: a name or a ``(layer, pooling)`` tuple)."""
        return self.keys[self.best.feature_set]

    @property
    def best_head(self) -> str:
        """Name of the chosen head."""
        return self.best.head

    @property
    def best_params(self) -> dict:
        """Searched parameters of the chosen candidate (e.g. ``{"C": 0.01}``)."""
        return dict(self.best.params)

    @property
    def n_compared(self) -> int:
        """How many configurations competed: the candidates cross-validated, and (fast
        search) the feature sets screened out before."""
        screened_out = 0 if self.screening is None else int((~self.screening["tuned"]).sum())
        return len(self.candidates) + screened_out

    @property
    def best_score(self) -> float:
        """Mean cross-validated ``scoring`` of the chosen candidate."""
        return float(self.table.loc[self.best_index, f"{self.scoring}_mean"])

    def best_estimator(self) -> BaseEstimator:
        """A clone of the chosen head, unfitted."""
        return clone(self.best.estimator)

    def head_table(self, score: str | None = None) -> pd.DataFrame:
        """Best mean ``score`` of every (feature set, head), over its parameters.

        Parameters
        ----------
        score : str, default=None
            Which score to show (default: the selection's ``scoring``). The parameters of each
            cell are those that the selection rule would pick in that cell.

        Returns
        -------
        pandas.DataFrame
            Index: feature sets (in the given order); columns: heads; values: mean scores.
        """
        long = self.summary_table(score)
        table = long.pivot(index="feature_set", columns="head", values="mean")
        order = [feature_set_name(k) for k in self.keys]
        heads = list(dict.fromkeys(long["head"]))
        return table.reindex(index=order, columns=heads)

    def summary_table(self, score: str | None = None) -> pd.DataFrame:
        """One row per (feature set, head): the parameters the rule picks in that cell, and the
        mean and std of ``score`` there (``row``: the cell's row in :attr:`table`)."""
        score = _check_scoring(score or self.scoring)
        table = self.table
        rows = []
        means = table[[f"{s}_mean" for s in SCORE_NAMES]].to_numpy()
        stds = table[[f"{s}_std" for s in SCORE_NAMES]].to_numpy()
        for (fs, head), group in table.groupby(["feature_set", "head"], sort=False):
            index = group.index.to_numpy()
            if np.isfinite(_criterion(means[index], self.scoring)).any():
                best = index[_decide(means[index], stds[index],
                                     [self.candidates[i] for i in index], self.scoring,
                                     self.rule, self.best_cv.n_splits)[0]]
            else:
                best = index[0]
            rows.append({"row": int(best), "feature_set": fs, "layer": table.loc[best, "layer"],
                         "pooling": table.loc[best, "pooling"], "head": head,
                         "params": table.loc[best, "params"],
                         "mean": table.loc[best, f"{score}_mean"],
                         "std": table.loc[best, f"{score}_std"]})
        return pd.DataFrame(rows)

    def to_text(self, top: int = 10) -> str:
        """The (feature set x head) table, the top candidates and the choice, as text."""
        shown = self.summary_table()
        shown["mean +/- std"] = [f"{m:.4f} +/- {s:.4f}" if np.isfinite(m) else "failed"
                                 for m, s in zip(shown["mean"], shown["std"])]
        shown = shown.drop(columns=["row", "mean", "std", "layer", "pooling"])
        top_rows = self.table.sort_values("rank").head(top)
        cols = ["rank", "feature_set", "head", "params", f"{self.scoring}_mean",
                f"{self.scoring}_std", "fit_time"]
        cv = self.best_cv
        lines = [
            f"Cross-validated {self.scoring} ({cv.n_repeats} x {cv.n_splits}-fold, "
            f"{len(self.candidates)} candidates), best parameters per feature set and head:",
            format_frame(shown.set_index(["feature_set", "head"])),
            "",
            f"Top {len(top_rows)} candidates:",
            format_frame(top_rows[cols].set_index("rank")),
            "",
            f"Chosen: feature set {feature_set_name(self.best_feature_set)!r}, head "
            f"{self.best_head!r}, {_params_text(self.best_params) or 'default parameters'}",
            f"Its cross-validated scores ({optimism_note(self.n_compared, self.nested is not None)}"
            "):",
            format_scores(cv.mean_scores(), cv.std_scores()),
        ]
        lines += [f"  note: {note}" for note in self.notes]
        if self.nested is not None:
            lines += ["", self.nested.to_text()]
        return "\n".join(lines)


@dataclass
class NestedCVResult(CVResult):
    """Nested cross-validation: outer-fold scores of the whole selection procedure.

    ``fold_scores`` has, besides the scores, the configuration chosen on each outer training
    part (``feature_set``, ``head``, ``params``) and its inner score (``inner_score``).
    """

    def to_text(self) -> str:
        """Outer scores and the choice made in every outer fold."""
        cols = ["repeat", "fold", "feature_set", "head", "params", "inner_score",
                "balanced_accuracy", "accuracy"]
        lines = [
            f"Nested cross-validation ({self.n_repeats} x {self.n_splits}-fold outer): unbiased "
            "estimate of the whole selection procedure",
            format_scores(self.mean_scores(), self.std_scores()),
            format_frame(self.fold_scores[cols].set_index(["repeat", "fold"])),
        ]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _table(keys, candidates, evaluation, split_ids, crit_rank_index) -> pd.DataFrame:
    means, stds = _nan_summaries(evaluation, split_ids)
    rows = []
    for i, cand in enumerate(candidates):
        key = keys[cand.feature_set]
        row = {
            "feature_set": feature_set_name(key),
            "layer": key[0] if isinstance(key, tuple) else None,
            "pooling": key[1] if isinstance(key, tuple) and len(key) > 1 else None,
            "head": cand.head,
            "params": _params_text(cand.params),
            "C": float(_c_of(cand.params)) if _c_of(cand.params) is not None else np.nan,
        }
        for j, name in enumerate(SCORE_NAMES):
            row[f"{name}_mean"] = means[i, j]
            row[f"{name}_std"] = stds[i, j]
        row["fit_time"] = float(np.nanmean(evaluation.fit_times[i, split_ids])) \
            if np.isfinite(evaluation.fit_times[i, split_ids]).any() else np.nan
        row["error"] = evaluation.errors.get(i)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["rank"] = crit_rank_index
    return table


def _ranks(crit: np.ndarray, best: int) -> np.ndarray:
    """Rank 1 for the chosen candidate, then by decreasing criterion (stable)."""
    order = [best] + [i for i in np.argsort(-crit, kind="stable") if i != best]
    ranks = np.empty(len(crit), dtype=int)
    ranks[order] = np.arange(1, len(crit) + 1)
    return ranks


def _warn_edges(candidates, best: int) -> list[str]:
    """A note when the chosen C is at the end of its grid (the grid may be too narrow)."""
    cand = candidates[best]
    c = _c_of(cand.params)
    if c is None:
        return []
    grid = sorted(_c_of(k.params) for k in candidates
                  if k.feature_set == cand.feature_set and k.head == cand.head
                  and _c_of(k.params) is not None)
    if len(grid) > 2 and c in (grid[0], grid[-1]):
        end = "smallest" if c == grid[0] else "largest"
        note = (f"the chosen C={c:.3g} is the {end} value of the {cand.head} grid: consider "
                "extending the grid")
        logger.info(note)
        return [note]
    return []


def _run_evaluation(arrays, codes, candidates, splits, n_jobs, verbose, progress,
                    desc: str = "cross-validate"):
    """:func:`_evaluation.evaluate` with a progress bar over the fits."""
    from featurize.progress import make_progress

    bar = make_progress(progress, desc=desc, unit="fit", interval=10.0)
    bar.start(len(candidates) * len(splits))
    try:
        return _evaluation.evaluate(arrays, codes, candidates, splits, n_jobs=n_jobs,
                                    verbose=verbose, progress=bar)
    finally:
        bar.close()


def _extend_edges(arrays, codes, candidates, evaluation, splits, scoring, probability, given,
                  n_jobs, verbose, progress):
    """Fast search: while the best C is at an end of its default grid, try one decade further
    (heads in ``given`` have a grid chosen by the caller: searched as given)."""
    split_ids = list(range(len(splits)))
    for _ in range(_search.MAX_EXTENSIONS):
        means, _ = _nan_summaries(evaluation, split_ids)
        crit = _criterion(means, scoring)
        if not np.isfinite(crit).any():
            break
        best = _choose(crit, candidates)
        cand = candidates[best]
        c = _c_of(cand.params)
        if c is None or cand.head not in HEADS or cand.head in given:
            break
        grid = [_c_of(k.params) for k in candidates
                if k.feature_set == cand.feature_set and k.head == cand.head]
        new_c = _search.extension(grid, c)
        if new_c is None:
            break
        params = {**cand.params, "C": new_c}
        new = [_evaluation.Candidate(f, make_head(cand.head, probability=probability, **params),
                                     cand.head, params)
               for f in sorted({k.feature_set for k in candidates if k.head == cand.head})]
        logger.info("fast search: best C=%g at the end of the grid; trying C=%g", c, new_c)
        more = _run_evaluation(arrays, codes, new, splits, n_jobs, verbose, progress,
                               desc=f"extend C={new_c:g}")
        candidates = candidates + new
        evaluation = _evaluation.concatenate(evaluation, more)
    return candidates, evaluation


def select_model(feature_sets, y, *, heads: Sequence[str] | Mapping | None = None,
                 param_grids: Mapping | None = None, probability: bool = False,
                 scoring: str = "balanced_accuracy", n_splits: int = 5, n_repeats: int = 3,
                 random_state: int = 0, rule: str = "best", nested: bool = False,
                 outer_splits: int = 5, n_jobs: int | None = None,
                 verbose: int = 0, search: str = "fast", n_finalists: int = 2,
                 progress: str = "none", _inner: bool = False) -> SelectionResult:
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
        "rbf_svm")`` for the exhaustive one. Registered head names (see :func:`~classify.heads.list_heads`), or a mapping of name to
        an unfitted estimator (or ``None`` for a registered head).
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
    rule : {"best", "one_se"}, default="best"
        ``"best"``: the candidate with the highest mean score (ties broken as the module
        docstring says). ``"one_se"``: the one-standard-error rule (Breiman et al. 1984;
        Hastie et al., *Elements of Statistical Learning*, 7.10): take the best (feature set,
        head), then its smallest C whose mean score is within one standard error (fold standard
        deviation / sqrt(n_splits)) of the best: the most regularized of statistically tied
        values. On the benchmark data it under-fitted (benchmarks/README.md, "accuracy.py").
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
        ``"fast"`` (:mod:`classify.search`): every feature set is screened by a closed-form
        leave-one-out ridge score, and only the ``n_finalists`` best are cross-validated, over
        a coarse C grid that extends itself when the best C is at an end (heads without a
        grid in ``param_grids``), with one k-fold repeat from 1,000 images on; SVMs are
        calibrated only when refitted (except under ``scoring="log_loss"``, which needs their
        calibrated probabilities in every fold). ``"exhaustive"``: every (feature set, head,
        C) on every fold of every repeat.
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
    scoring, heads = check_selection_params(
        heads=heads, scoring=scoring, rule=rule, search=search, n_finalists=n_finalists,
        probability=probability, y=None if _inner else y, n_splits=n_splits)
    classes, codes = encode_labels(y)
    keys, arrays = _prepare_feature_sets(feature_sets, len(codes))
    # log loss needs the probabilities of every candidate as it will be deployed
    cv_probability = probability and scoring == "log_loss"
    screening, extra_notes = None, []
    if search == "fast":
        from featurize.progress import make_progress

        bar = make_progress(progress, desc="screen feature sets", unit="set", interval=10.0)
        bar.start(len(arrays))
        try:
            screening = _search.screen_feature_sets(arrays, codes, scoring, progress=bar)
        finally:
            bar.close()
        tuned = _search.finalists(screening, n_finalists)
        screening.insert(0, "feature_set", [feature_set_name(k) for k in keys])
        screening["tuned"] = [i in tuned for i in range(len(keys))]
        extra_notes.append(_search.screen_note(keys, screening, tuned, feature_set_name))
        n_repeats = _search.fast_repeats(len(codes), n_repeats)
        grids = dict(param_grids or {})
        for name in (heads if not isinstance(heads, (str, Mapping)) else
                     ([heads] if isinstance(heads, str) else list(heads))):
            if name not in grids and _search.fast_c_grid(name) is not None \
                    and not (isinstance(heads, Mapping) and heads[name] is not None):
                grids[name] = {"C": _search.fast_c_grid(name)}
        candidates = [c for c in _build_candidates(len(arrays), heads, grids, cv_probability)
                      if c.feature_set in tuned]
    else:
        candidates = _build_candidates(len(arrays), heads, param_grids, probability)
    # split on the class names (the same splits as on their codes), so that notes name them
    splits, plan = make_splits(classes[codes], n_splits, n_repeats, random_state)
    evaluation = _run_evaluation(arrays, codes, candidates, splits, n_jobs, verbose, progress)
    if search == "fast":  # the default grids extend; a given grid is searched as given
        candidates, evaluation = _extend_edges(arrays, codes, candidates, evaluation, splits,
                                               scoring, cv_probability, set(param_grids or ()),
                                               n_jobs, verbose, progress)
    if len(evaluation.errors) == len(candidates):
        raise ValueError(f"Every candidate failed to fit; the first error: "
                         f"{evaluation.errors[0]}")
    split_ids = list(range(len(splits)))
    means, stds = _nan_summaries(evaluation, split_ids)
    best, crit = _decide(means, stds, candidates, scoring, rule, plan.n_splits)
    if search == "fast" and probability:
        chosen = candidates[best]
        if chosen.head in HEADS and not hasattr(chosen.estimator, "predict_proba"):
            # calibrated once, for the refit on all the data
            candidates[best] = _evaluation.Candidate(
                chosen.feature_set, make_head(chosen.head, probability=True, **chosen.params),
                chosen.head, chosen.params)
    notes = list(plan.notes) + extra_notes + _warn_edges(candidates, best)
    if evaluation.errors:
        index, message = next(iter(evaluation.errors.items()))
        failed = candidates[index]
        notes.append(f"{len(evaluation.errors)} candidates failed on some fold and were skipped "
                     f"(first: {failed.head} {_params_text(failed.params)}: {message})")
        logger.warning(notes[-1])
    result = SelectionResult(
        table=_table(keys, candidates, evaluation, split_ids, _ranks(crit, best)),
        keys=keys, candidates=candidates, best_index=best,
        best_cv=build_cv_result(evaluation, best, splits, split_ids, classes, codes, plan,
                                n_repeats, random_state),
        classes=classes, scoring=scoring, rule=rule, notes=tuple(notes), search=search,
        screening=screening,
    )
    logger.info("selected %s / %s %s: %s = %.4f", feature_set_name(result.best_feature_set),
                result.best_head, _params_text(result.best_params), scoring, result.best_score)
    if nested:
        result.nested = nested_cross_validate(
            dict(zip(keys, arrays)), y, heads=heads, param_grids=param_grids,
            probability=probability, scoring=scoring, n_splits=n_splits, n_repeats=n_repeats,
            random_state=random_state, rule=rule, outer_splits=outer_splits, n_jobs=n_jobs,
            verbose=verbose, search=search, n_finalists=n_finalists)
    return result


def nested_cross_validate(feature_sets, y, *, heads: Sequence[str] | Mapping | None = None,
                          param_grids: Mapping | None = None, probability: bool = False,
                          scoring: str = "balanced_accuracy", n_splits: int = 5,
                          n_repeats: int = 3, random_state: int = 0, rule: str = "best",
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
    scoring, heads = check_selection_params(
        heads=heads, scoring=scoring, rule=rule, search=search, n_finalists=n_finalists,
        probability=probability, y=y, n_splits=n_splits)
    classes, codes = encode_labels(y)
    keys, arrays = _prepare_feature_sets(feature_sets, len(codes))
    outer_cv = AdaptiveStratifiedKFold(outer_splits, n_repeats=outer_repeats,
                                       random_state=random_state)
    outer_plan = outer_cv.plan(classes[codes])  # notes name classes, never codes
    outer = list(outer_cv.split(y=classes[codes]))
    if search == "fast":
        candidates, chosen = [], []
        for o, (train, _) in enumerate(outer):
            inner = select_model(
                {i: X[train] for i, X in enumerate(arrays)}, classes[codes[train]],
                heads=heads,
                param_grids=param_grids, probability=probability, scoring=scoring,
                n_splits=n_splits, n_repeats=n_repeats, random_state=random_state, rule=rule,
                n_jobs=n_jobs, verbose=verbose, search="fast", n_finalists=n_finalists,
                _inner=True)  # an outer fold may leave a class one image: trained, not tested
            candidates.append(inner.best)
            chosen.append((o, inner.best_score))
        return _outer_scores(keys, arrays, codes, classes, candidates, chosen, outer,
                             outer_plan, outer_repeats, random_state, n_jobs, verbose)
    candidates = _build_candidates(len(arrays), heads, param_grids, probability)
    inner_splits, owner, inner_k = [], [], []
    for o, (train, _) in enumerate(outer):
        splits, inner_plan = make_splits(classes[codes[train]], n_splits, n_repeats,
                                         random_state)
        inner_splits += [(train[tr], train[te]) for tr, te in splits]
        owner += [o] * len(splits)
        inner_k.append(inner_plan.n_splits)
    evaluation = _evaluation.evaluate(arrays, codes, candidates, inner_splits, n_jobs=n_jobs,
                                      verbose=verbose)
    owner = np.asarray(owner)
    chosen = []
    for o in range(len(outer)):
        means, stds = _nan_summaries(evaluation, np.flatnonzero(owner == o))
        best, _ = _decide(means, stds, candidates, scoring, rule, inner_k[o])
        chosen.append((best, float(means[best, SCORE_NAMES.index(scoring)])))
    return _outer_scores(keys, arrays, codes, classes, candidates, chosen, outer, outer_plan,
                         outer_repeats, random_state, n_jobs, verbose)


def _outer_scores(keys, arrays, codes, classes, candidates, chosen, outer, outer_plan,
                  outer_repeats, random_state, n_jobs, verbose) -> NestedCVResult:
    """Refit each outer fold's choice on its training part and score it on its test part."""
    n_classes = len(classes)
    refits = Parallel(n_jobs=n_jobs, verbose=verbose)(
        delayed(_evaluation._evaluate_fold)(arrays[candidates[b].feature_set], codes, train, test,
                                        [candidates[b].estimator], n_classes)
        for (b, _), (train, test) in zip(chosen, outer))
    rows = []
    oof = np.full((outer_repeats, len(codes)), -1, dtype=np.int64)
    for k, ((b, inner), (train, test), (scores, times, preds, _, errors, _)) in enumerate(
            zip(chosen, outer, refits)):
        if errors:
            raise ValueError(f"The chosen configuration failed to fit on outer fold {k}: "
                             f"{errors[0]}")
        cand = candidates[b]
        row = {"repeat": k // outer_plan.n_splits, "fold": k % outer_plan.n_splits,
               "n_test": len(test), "feature_set": feature_set_name(keys[cand.feature_set]),
               "head": cand.head, "params": _params_text(cand.params), "inner_score": inner}
        row.update(zip(SCORE_NAMES, scores[0]))
        row["fit_time"] = times[0]
        rows.append(row)
        oof[k // outer_plan.n_splits, test] = preds[0]
    return NestedCVResult(classes=classes, y=codes, fold_scores=pd.DataFrame(rows),
                          oof_predictions=oof, n_splits=outer_plan.n_splits,
                          n_repeats=outer_repeats, random_state=random_state,
                          notes=outer_plan.notes)
