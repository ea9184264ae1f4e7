"""What a selection returns: :class:`SelectionResult` and :class:`NestedCVResult`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone

from classify.candidates import Candidate, c_of, feature_set_name, params_text
from classify.cv import CVResult
from classify.metrics import SCORE_NAMES
from classify.reports import format_frame, format_scores, optimism_note
from classify.rules import DEFAULT_RULE, check_scoring, criterion, decide, summaries

__all__ = ["NestedCVResult", "SelectionResult", "build_table"]


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
    split_scores : ndarray of shape (n_candidates, n_folds * n_repeats, len(SCORE_NAMES))
        Every score (:data:`~classify.metrics.SCORE_NAMES`: ``accuracy``,
        ``balanced_accuracy``, ``f1_macro``, ``log_loss``) of every candidate on every split
        (the folds of every repeat), in table order; NaN where a candidate failed or has no
        probabilities. The rules compare candidates split by split on them.
    rule : {"best", "one_se", "one_se_log_loss"}
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
    split_scores: np.ndarray
    rule: str = DEFAULT_RULE
    notes: tuple = field(default_factory=tuple)
    nested: NestedCVResult | None = None
    search: str = "exhaustive"
    screening: pd.DataFrame | None = None

    @property
    def best(self) -> Candidate:
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
        score = check_scoring(score or self.scoring)
        table = self.table
        rows = []
        means = table[[f"{s}_mean" for s in SCORE_NAMES]].to_numpy()
        for (fs, head), group in table.groupby(["feature_set", "head"], sort=False):
            index = group.index.to_numpy()
            if np.isfinite(criterion(means[index], self.scoring)).any():
                best = index[decide(self.split_scores[index],
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
            (f"Cross-validated {self.scoring} ({cv.n_repeats} x {cv.n_splits}-fold, "
             f"{len(self.candidates)} candidates), best parameters per feature set and head:"),
            format_frame(shown.set_index(["feature_set", "head"])),
            "",
            f"Top {len(top_rows)} candidates:",
            format_frame(top_rows[cols].set_index("rank")),
            "",
            (f"Chosen: feature set {feature_set_name(self.best_feature_set)!r}, head "
             f"{self.best_head!r}, {params_text(self.best_params) or 'default parameters'}"),
            (f"Its cross-validated scores "
             f"({optimism_note(self.n_compared, self.nested is not None)}):"),
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
            (f"Nested cross-validation ({self.n_repeats} x {self.n_splits}-fold outer): "
             "unbiased estimate of the whole selection procedure"),
            format_scores(self.mean_scores(), self.std_scores()),
            format_frame(self.fold_scores[cols].set_index(["repeat", "fold"])),
        ]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def build_table(keys, candidates, evaluation, split_ids, crit_rank_index) -> pd.DataFrame:
    means, stds = summaries(evaluation, split_ids)
    rows = []
    for i, cand in enumerate(candidates):
        key = keys[cand.feature_set]
        row = {
            "feature_set": feature_set_name(key),
            "layer": key[0] if isinstance(key, tuple) else None,
            "pooling": key[1] if isinstance(key, tuple) and len(key) > 1 else None,
            "head": cand.head,
            "params": params_text(cand.params),
            "C": float(c_of(cand.params)) if c_of(cand.params) is not None else np.nan,
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
