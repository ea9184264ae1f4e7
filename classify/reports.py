"""Reports as data (pandas DataFrames) and as plain text.

The text functions return strings; nothing here prints.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from classify.metrics import SCORE_NAMES

__all__ = [
    "confusion_frame",
    "format_frame",
    "format_scores",
    "optimism_note",
    "per_class_report",
    "plural",
]


def per_class_report(y_true, y_pred, classes, sample_weight=None) -> pd.DataFrame:
    """Precision, recall, F1 and support of every class, plus macro and weighted averages.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        Class codes (indices into ``classes``).
    classes : array-like of shape (n_classes,)
        Class names, in code order.
    sample_weight : array-like of shape (n_samples,), default=None
        Weights (e.g. ``1 / n_repeats`` for predictions pooled over repeated cross-validation,
        so that ``support`` counts images).

    Returns
    -------
    pandas.DataFrame
        Index: the class names, then ``"macro avg"`` and ``"weighted avg"``; columns
        ``precision``, ``recall``, ``f1``, ``support``.
    """
    classes = [str(c) for c in classes]
    labels = np.arange(len(classes))
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, sample_weight=sample_weight, zero_division=0
    )
    frame = pd.DataFrame({"precision": p, "recall": r, "f1": f, "support": s}, index=classes)
    total = s.sum()
    frame.loc["macro avg"] = [p.mean(), r.mean(), f.mean(), total]
    weights = s / total if total else np.zeros_like(s, dtype=float)
    frame.loc["weighted avg"] = [(p * weights).sum(), (r * weights).sum(), (f * weights).sum(),
                                 total]
    frame.index.name = "class"
    return frame


def confusion_frame(y_true, y_pred, classes, sample_weight=None,
                    normalize: str | None = None) -> pd.DataFrame:
    """Confusion matrix as a DataFrame (rows: true class, columns: predicted class).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        Class codes (indices into ``classes``).
    classes : array-like of shape (n_classes,)
        Class names, in code order.
    sample_weight : array-like of shape (n_samples,), default=None
        Weights, as in :func:`per_class_report`.
    normalize : {"true", "pred", "all"}, default=None
        As in :func:`sklearn.metrics.confusion_matrix`.

    Returns
    -------
    pandas.DataFrame of shape (n_classes, n_classes)
    """
    classes = [str(c) for c in classes]
    matrix = confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)),
                              sample_weight=sample_weight, normalize=normalize)
    frame = pd.DataFrame(matrix, index=pd.Index(classes, name="true"),
                         columns=pd.Index(classes, name="predicted"))
    return frame


def format_scores(means: dict, stds: dict | None = None) -> str:
    """One line per score: ``name  mean +/- std`` (NaN scores are skipped)."""
    lines = []
    for name in SCORE_NAMES:
        value = means.get(name)
        if value is None or not np.isfinite(value):
            continue
        std = None if stds is None else stds.get(name)
        spread = "" if std is None or not np.isfinite(std) else f" +/- {std:.4f}"
        lines.append(f"  {name:<18} {value:.4f}{spread}")
    return "\n".join(lines)


def format_frame(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """Render a DataFrame as aligned plain text (no truncation)."""
    formatters = {col: float_format.format for col in frame.columns
                  if pd.api.types.is_float_dtype(frame[col])}
    return frame.to_string(formatters=formatters, na_rep="-")


def optimism_note(n_candidates: int | None = None, nested: bool = False) -> str:
    """What to say next to the cross-validated score of a selection's choice, wherever it is
    shown: the best of several candidates, chosen and scored on the same folds, is optimistic.

    Parameters
    ----------
    n_candidates : int, default=None
        How many configurations the selection compared (None: not recorded).
    nested : bool, default=False
        Whether a nested cross-validation was run (then it is pointed to, not asked for).
    """
    best = (f"the best of {n_candidates} candidates" if n_candidates and n_candidates > 1
            else "the best candidate")
    where = ("the nested cross-validation estimates the whole procedure without this bias"
             if nested else "nested cross-validation (`featurize train --nested`, "
             "nested=True) estimates the whole procedure without this bias")
    return f"optimistic: {best}, chosen and scored on the same folds; {where}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 mistake"``, ``"2 mistakes"``, ``"3,068 images"``: a count and its noun.

    Parameters
    ----------
    n : int
    word : str
        The singular.
    many : str, default=None
        The plural, when it is not ``word + "s"``.
    """
    return f"{n:,} {word if n == 1 else (many or word + 's')}"
