"""Choice rules: which cross-validated candidate a selection picks.

First the candidate with the highest mean score over all folds and repeats; ties (equal means,
common with accuracy on small data) are broken by the mean of the candidate and its neighbours
on the C grid (the centre of a plateau is preferred to its edge), then by the order of the
candidates: feature sets as given, heads as given, C ascending. That is ``rule="best"``
(default). With ``rule="one_se"`` the C of that (feature set, head) is then moved to the
smallest C whose mean score is within one standard error of the best (the one-standard-error
rule); measured on clothing and ants/bees it chose too small a C (lower test scores,
probabilities near uniform), see benchmarks/README.md.
"""

from __future__ import annotations

import logging

import numpy as np

from classify.candidates import c_of
from classify.metrics import GREATER_IS_BETTER, SCORE_NAMES
from classify.validation import check_option

logger = logging.getLogger(__name__)

__all__ = ["RULES", "check_rule", "check_scoring", "choose", "criterion", "decide",
           "edge_notes", "ranks", "summaries"]

RULES = ("one_se", "best")


def check_scoring(scoring: str, owner: str = "select_model") -> str:
    """The scoring name (``neg_log_loss`` is taken for ``log_loss``), or ConfigError."""
    if scoring == "neg_log_loss":
        scoring = "log_loss"
    return check_option("scoring", scoring, SCORE_NAMES, owner=owner)


def check_rule(rule: str, owner: str = "select_model") -> str:
    """``rule`` if it is one of :data:`RULES`, or ConfigError."""
    return check_option("rule", rule, RULES, owner=owner)


def summaries(evaluation, split_ids):
    """Means and stds over splits; a candidate that failed on any split gets NaN."""
    scores = evaluation.scores[:, split_ids]
    return scores.mean(axis=1), scores.std(axis=1)


def criterion(means: np.ndarray, scoring: str) -> np.ndarray:
    """Larger-is-better criterion per candidate; -inf where the score is unavailable."""
    values = means[:, SCORE_NAMES.index(scoring)]
    crit = values if GREATER_IS_BETTER[scoring] else -values
    return np.where(np.isfinite(crit), crit, -np.inf)


def _c_groups(candidates) -> dict:
    """Candidates that differ only by C, as lists of indices sorted by increasing C."""
    groups: dict = {}
    for i, cand in enumerate(candidates):
        if c_of(cand.params) is not None:
            other = tuple(sorted((k, repr(v)) for k, v in cand.params.items() if k != "C"))
            groups.setdefault((cand.feature_set, cand.head, other), []).append(i)
    for members in groups.values():
        members.sort(key=lambda i: candidates[i].params["C"])
    return groups


def choose(crit: np.ndarray, candidates, se: np.ndarray | None = None) -> int:
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


def decide(means, stds, candidates, scoring: str, rule: str, n_splits: int):
    """Return (chosen index, criterion per candidate) under ``rule``."""
    crit = criterion(means, scoring)
    se = None
    if rule == "one_se":
        # Standard error of a mean over k folds; repeats are not independent of each other, so
        # they do not shrink it (conservative).
        se = stds[:, SCORE_NAMES.index(scoring)] / np.sqrt(n_splits)
    return choose(crit, candidates, se), crit


def ranks(crit: np.ndarray, best: int) -> np.ndarray:
    """Rank 1 for the chosen candidate, then by decreasing criterion (stable)."""
    order = [best] + [i for i in np.argsort(-crit, kind="stable") if i != best]
    out = np.empty(len(crit), dtype=int)
    out[order] = np.arange(1, len(crit) + 1)
    return out


def edge_notes(candidates, best: int) -> list[str]:
    """A note when the chosen C is at the end of its grid (the grid may be too narrow)."""
    cand = candidates[best]
    c = c_of(cand.params)
    if c is None:
        return []
    grid = sorted(c_of(k.params) for k in candidates
                  if k.feature_set == cand.feature_set and k.head == cand.head
                  and c_of(k.params) is not None)
    if len(grid) > 2 and c in (grid[0], grid[-1]):
        end = "smallest" if c == grid[0] else "largest"
        note = (f"the chosen C={c:.3g} is the {end} value of the {cand.head} grid: consider "
                "extending the grid")
        logger.info(note)
        return [note]
    return []
