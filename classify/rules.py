"""Choice rules: which cross-validated candidate a selection picks.

Every rule starts from the candidate with the highest mean score over all folds and repeats;
ties (equal means, common with accuracy on small data) are broken by the mean of the candidate
and its neighbours on the C grid (the centre of a plateau is preferred to its edge), then by
the order of the candidates: feature sets as given, heads as given, C ascending. That is
``rule="best"`` (default). The two other rules keep that candidate's feature set and head and
may move its C to another C that is statistically tied with it:

* ``rule="one_se_log_loss"``: to the C of the lowest mean log loss among the C values whose
  score is tied with the best's split by split: the mean of their paired differences on the
  same splits is within one standard error of that difference. Accuracy counts images and is
  often flat over a decade or two of C, where the fold draw decides which C of the plateau
  scores highest; the log loss of the same fits decides instead. Candidates without
  probabilities (SVMs compared uncalibrated) keep the best C. On held-out resplits it gives
  clearly better probabilities (log loss) at about the same balanced accuracy, but on small
  image sets it chose a stronger regularization than accuracy wants (``benchmarks/selection.py
  rules``, benchmarks/README.md), so it is not the default.
* ``rule="one_se"``: to the smallest C whose mean score is within one standard error of the
  best mean (the one-standard-error rule, Breiman et al. 1984); measured on clothing and
  ants/bees it chose too small a C (lower test scores, probabilities near uniform).

Standard errors divide by the square root of the folds of one repeat: repeats reuse the same
images, so they do not shrink it (conservative).
"""

from __future__ import annotations

import logging

import numpy as np

from classify.candidates import c_of
from classify.metrics import GREATER_IS_BETTER, SCORE_NAMES
from classify.validation import check_option

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RULE", "RULES", "check_rule", "check_scoring", "choose", "criterion", "decide",
           "edge_notes", "ranks", "split_scores", "summaries"]

RULES = ("best", "one_se", "one_se_log_loss")
#: The rule of :func:`classify.select_model`, ``featurize train`` and :class:`AutoClassifier`.
DEFAULT_RULE = "best"


def check_scoring(scoring: str, owner: str = "select_model") -> str:
    """The scoring name (``neg_log_loss`` is taken for ``log_loss``), or ConfigError."""
    if scoring == "neg_log_loss":
        scoring = "log_loss"
    return check_option("scoring", scoring, SCORE_NAMES, owner=owner)


def check_rule(rule: str, owner: str = "select_model") -> str:
    """``rule`` if it is one of :data:`RULES`, or ConfigError."""
    return check_option("rule", rule, RULES, owner=owner)


def split_scores(evaluation, split_ids) -> np.ndarray:
    """Every score of every candidate on some splits.

    Parameters
    ----------
    evaluation : classify._evaluation.Evaluation
    split_ids : sequence of int
        The splits (the folds of every repeat) to take.

    Returns
    -------
    ndarray of shape (n_candidates, len(split_ids), len(SCORE_NAMES))
    """
    return evaluation.scores[:, split_ids]


def summaries(evaluation, split_ids):
    """Means and stds over splits; a candidate that failed on any split gets NaN."""
    scores = split_scores(evaluation, split_ids)
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


def choose(crit: np.ndarray, candidates) -> int:
    """Index of the candidate of the highest criterion (ties: see the module docstring)."""
    if not np.isfinite(crit).any():
        raise ValueError("Every candidate failed (or has no value for the chosen score).")
    smoothed = crit.copy()
    for members in _c_groups(candidates).values():
        for j, i in enumerate(members):
            window = crit[members[max(0, j - 1):j + 2]]
            smoothed[i] = window[np.isfinite(window)].mean() if np.isfinite(crit[i]) else -np.inf
    tied = np.flatnonzero(crit >= crit.max() - 1e-9)
    return int(tied[np.argmax(smoothed[tied])])


def decide(scores: np.ndarray, candidates, scoring: str, rule: str, n_splits: int):
    """The candidate that ``rule`` chooses (see the module docstring).

    Parameters
    ----------
    scores : ndarray of shape (n_candidates, n_folds * n_repeats, len(SCORE_NAMES))
        Every score of every candidate on every split (:func:`split_scores`); NaN where a
        candidate failed (it is never chosen) or has no probabilities.
    candidates : list of Candidate
    scoring : str
        The score that decides (a name of :data:`~classify.metrics.SCORE_NAMES`). With
        ``"log_loss"``, ``"one_se_log_loss"`` chooses as ``"best"`` does.
    rule : {"best", "one_se", "one_se_log_loss"}
    n_splits : int
        The folds of one repeat (standard errors divide by its square root).

    Returns
    -------
    chosen : int
        Index of the chosen candidate.
    crit : ndarray of shape (n_candidates,)
        The larger-is-better mean criterion of every candidate (:func:`criterion`).
    """
    means = scores.mean(axis=1)
    crit = criterion(means, scoring)
    best = choose(crit, candidates)
    if rule == "best":
        return best, crit
    members = next((m for m in _c_groups(candidates).values() if best in m), [best])
    column = SCORE_NAMES.index(scoring)
    if rule == "one_se":
        se = scores[best, :, column].std() / np.sqrt(n_splits)
        return next(i for i in members if crit[i] >= crit[best] - se), crit
    loss = means[:, SCORE_NAMES.index("log_loss")]
    if not np.isfinite(loss[best]):
        return best, crit
    sign = 1.0 if GREATER_IS_BETTER[scoring] else -1.0
    lead = sign * (scores[best, :, column] - scores[members][:, :, column])  # > 0: best ahead
    tied = lead.mean(axis=1) <= lead.std(axis=1) / np.sqrt(n_splits) + 1e-12
    within = [i for i, t in zip(members, tied) if t and np.isfinite(loss[i])]
    return min(within, key=lambda i: loss[i]), crit  # equal losses: the smallest C


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
