"""Plots of cross-validation and selection results (matplotlib, imported only when called).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so no global
figure state is touched and any backend (or none: Agg) works; in a notebook, display it with
``display(fig)`` or save it with ``fig.savefig(path)``. Pass ``ax=`` to draw into an existing axes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from classify.candidates import feature_set_name
from classify.metrics import SCORE_NAMES

__all__ = [
    "plot_c_curve",
    "plot_confusion_matrix",
    "plot_layer_scores",
    "plot_selection_heatmap",
]


def _axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _cells(result, score: str | None) -> tuple[pd.DataFrame, str]:
    """Long table (feature_set, head, mean, std, params) of the best cell values."""
    if hasattr(result, "summary_table"):
        score = score or result.scoring
        return result.summary_table(score), score
    table = getattr(result, "reports", {}).get("table") if not isinstance(result, pd.DataFrame) \
        else result
    if table is None:
        raise TypeError("Expected a SelectionResult, a FittedModel with reports, or a selection "
                        f"table DataFrame; got {type(result).__name__}.")
    score = score or "balanced_accuracy"
    if score not in SCORE_NAMES:
        raise ValueError(f"score must be one of {list(SCORE_NAMES)}. Got {score!r} instead.")
    values = table[f"{score}_mean"]
    best = (values if score != "log_loss" else -values).groupby(
        [table["feature_set"], table["head"]], sort=False).idxmax().dropna().astype(int)
    rows = table.loc[best.to_numpy()]
    cells = pd.DataFrame({"feature_set": rows["feature_set"].to_numpy(),
                          "head": rows["head"].to_numpy(), "params": rows["params"].to_numpy(),
                          "mean": rows[f"{score}_mean"].to_numpy(),
                          "std": rows[f"{score}_std"].to_numpy()})
    return cells, score


def plot_confusion_matrix(confusion, *, normalize: str | None = None, ax=None,
                          title: str | None = None, cmap: str = "Blues"):
    """Heat map of a confusion matrix.

    Parameters
    ----------
    confusion : pandas.DataFrame, CVResult or FittedModel
        Rows true classes, columns predicted classes (e.g. ``CVResult.confusion_matrix()``);
        a :class:`~classify.cv.CVResult` or a model's out-of-fold report are read directly.
    normalize : {"true", "pred", "all"}, default=None
        Normalize the counts (only for a CVResult, which knows its predictions).
    ax : matplotlib.axes.Axes, default=None
        Draw into this axes instead of a new figure.
    title : str, default=None
    cmap : str, default="Blues"

    Returns
    -------
    matplotlib.figure.Figure
    """
    if hasattr(confusion, "confusion_matrix"):
        frame = confusion.confusion_matrix(normalize=normalize)
    elif hasattr(confusion, "reports"):
        frame = confusion.reports["confusion"]
    else:
        frame = pd.DataFrame(confusion)
    values = frame.to_numpy(dtype=float)
    n = len(frame)
    fig, ax = _axes(ax, (1.2 + 0.6 * n, 1.0 + 0.6 * n))
    image = ax.imshow(values, cmap=cmap)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), [str(c) for c in frame.columns], rotation=45, ha="right")
    ax.set_yticks(range(n), [str(c) for c in frame.index])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fmt = "{:.2f}" if normalize or not np.allclose(values, np.round(values)) else "{:.0f}"
    threshold = (values.max() + values.min()) / 2 if values.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center",
                    color="white" if values[i, j] > threshold else "black", fontsize=8)
    ax.set_title(title or "Confusion matrix")
    return fig


def plot_selection_heatmap(result, *, score: str | None = None, ax=None, cmap: str = "viridis"):
    """Feature set x head table of cross-validated scores (best parameters in each cell).

    Parameters
    ----------
    result : SelectionResult, FittedModel or pandas.DataFrame
        A selection, a model trained by :func:`~classify.training.train_model` (its
        ``reports["table"]``), or such a table.
    score : str, default=None
        Score to show (default: the selection's scoring, or balanced accuracy for a table).
    ax : matplotlib.axes.Axes, default=None
    cmap : str, default="viridis"

    Returns
    -------
    matplotlib.figure.Figure
    """
    cells, score = _cells(result, score)
    rows = list(dict.fromkeys(cells["feature_set"]))
    cols = list(dict.fromkeys(cells["head"]))
    means = cells.pivot(index="feature_set", columns="head", values="mean").reindex(
        index=rows, columns=cols)
    stds = cells.pivot(index="feature_set", columns="head", values="std").reindex(
        index=rows, columns=cols)
    fig, ax = _axes(ax, (2.0 + 1.6 * len(cols), 1.2 + 0.45 * len(rows)))
    image = ax.imshow(means.to_numpy(dtype=float), cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, label=score)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("head")
    ax.set_ylabel("feature set (layer/pooling)")
    for i in range(len(rows)):
        for j in range(len(cols)):
            m, s = means.iat[i, j], stds.iat[i, j]
            if np.isfinite(m):
                ax.text(j, i, f"{m:.3f}\n\u00b1{s:.3f}", ha="center", va="center", fontsize=7,
                        color="white")
    ax.set_title(f"Cross-validated {score}")
    return fig


def plot_layer_scores(result, *, score: str | None = None, ax=None):
    """Cross-validated score per feature set (layer), one line per head, with +/- 1 std.

    Parameters
    ----------
    result : SelectionResult, FittedModel or pandas.DataFrame
        As in :func:`plot_selection_heatmap`.
    score : str, default=None
    ax : matplotlib.axes.Axes, default=None

    Returns
    -------
    matplotlib.figure.Figure
    """
    cells, score = _cells(result, score)
    rows = list(dict.fromkeys(cells["feature_set"]))
    fig, ax = _axes(ax, (max(5.0, 0.9 * len(rows) + 2), 3.8))
    x = np.arange(len(rows))
    for head, group in cells.groupby("head", sort=False):
        group = group.set_index("feature_set").reindex(rows)
        ax.errorbar(x, group["mean"], yerr=group["std"], marker="o", capsize=3, label=head)
    ax.set_xticks(x, rows, rotation=30, ha="right")
    ax.set_xlabel("feature set (layer/pooling)")
    ax.set_ylabel(f"cross-validated {score}")
    ax.legend(title="head")
    ax.grid(alpha=0.3)
    ax.set_title(f"{score} by layer")
    return fig


def plot_c_curve(result, *, feature_set=None, score: str | None = None, ax=None):
    """Cross-validated score against the regularization parameter C, one line per head.

    Parameters
    ----------
    result : SelectionResult
        The selection.
    feature_set : key, default=None
        Which feature set (default: the chosen one).
    score : str, default=None
        Default: the selection's scoring.
    ax : matplotlib.axes.Axes, default=None

    Returns
    -------
    matplotlib.figure.Figure
    """
    score = score or result.scoring
    name = feature_set_name(result.best_feature_set if feature_set is None else feature_set)
    table = result.table[(result.table["feature_set"] == name) & result.table["C"].notna()]
    if table.empty:
        raise ValueError(f"No candidate with a C parameter for feature set {name!r}.")
    fig, ax = _axes(ax, (5.5, 3.8))
    for head, group in table.groupby("head", sort=False):
        group = group.sort_values("C")
        ax.errorbar(group["C"], group[f"{score}_mean"], yerr=group[f"{score}_std"], marker="o",
                    capsize=3, label=head)
    ax.set_xscale("log")
    ax.set_xlabel("C (inverse regularization strength)")
    ax.set_ylabel(f"cross-validated {score}")
    ax.legend(title="head")
    ax.grid(alpha=0.3)
    ax.set_title(f"{score} against C ({name})")
    return fig
