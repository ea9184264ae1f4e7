"""The fast selection strategy: screen every feature set in closed form, tune only the best few.

The exhaustive search cross-validates every (feature set, head, C) on every fold; its cost grows
with classes x features x candidates x folds, and with 100 classes and thousands of images it
runs for hours. ``search="fast"`` (the default of :func:`classify.select_model`) keeps the cost
close to the cost of extracting the features:

1. **Screen** each feature set with a ridge classifier whose leave-one-out predictions come in
   closed form from one SVD (:class:`sklearn.linear_model.RidgeClassifierCV`, efficient LOO, on
   standardized features, over an alpha grid). Its score uses every image, so it ranks feature
   sets with far less noise than a 5-fold estimate, for about the cost of one fit.
2. **Tune** only the ``n_finalists`` best feature sets: the heads (logistic regression by
   default) over a coarse C grid by stratified k-fold (one repeat from 1,000 images on, where
   the fold noise is small), through the same fold evaluation as the exhaustive search. When the
   best C lies at the end of the grid, the grid is extended one step that way and only the new
   values are evaluated (until it stops moving or a limit).
3. SVM heads are compared without their probability calibration; the chosen head is
   calibrated once, when it is refitted on all the data; under ``scoring="log_loss"``, a score
   of the calibrated probabilities themselves, they are calibrated in every fold.

``benchmarks/selection.py`` measures both strategies (time and test score) side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)

__all__ = ["FAST_C_GRID", "FAST_HEADS", "SEARCHES", "fast_c_grid", "fast_repeats",
           "screen_feature_sets"]

SEARCHES = ("fast", "exhaustive")
#: Heads the fast search tunes by default.
FAST_HEADS = ("logreg",)
#: Coarse C grids (one value per decade) the fast search starts from, for standardized features.
FAST_C_GRID = {"logreg": [1e-4, 1e-3, 1e-2, 1e-1, 1.0], "linear_svm": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
               "rbf_svm": [0.1, 1.0, 10.0, 100.0]}
#: Ridge penalties screened (standardized features; the LOO picks one per feature set).
RIDGE_ALPHAS = np.logspace(-1, 5, 13)
#: From this many images on, one k-fold repeat: fold noise is small and every repeat costs a
#: full set of fits.
ONE_REPEAT_FROM = 1000
#: How many times an edge C may extend its grid.
MAX_EXTENSIONS = 3


def _ridge_scoring(scoring: str) -> str:
    # ridge has no probabilities: a log-loss selection screens on balanced accuracy
    return scoring if scoring in ("balanced_accuracy", "accuracy", "f1_macro") else \
        "balanced_accuracy"


def screen_feature_sets(arrays, y, scoring: str = "balanced_accuracy", progress=None
                        ) -> pd.DataFrame:
    """Leave-one-out score of a standardized ridge classifier on each feature set.

    Parameters
    ----------
    arrays : list of ndarray of shape (n_samples, n_features_i)
    y : ndarray of shape (n_samples,)
        Class codes.
    scoring : str, default="balanced_accuracy"
        ``log_loss`` screens on balanced accuracy (ridge has no probabilities).
    progress : featurize.progress.Progress or None
        Advanced by one per feature set.

    Returns
    -------
    pandas.DataFrame
        One row per feature set, in order: ``loo_score``, ``alpha``, ``seconds``.
    """
    import time

    from classify.metrics import compute_scores

    score_name = _ridge_scoring(scoring)
    classes, codes = np.unique(y, return_inverse=True)
    rows = []
    for X in arrays:
        start = time.perf_counter()
        with threadpool_limits(limits=None):
            loo = ridge_loo_decisions(X, codes, len(classes), RIDGE_ALPHAS)
        best = (-np.inf, RIDGE_ALPHAS[0])
        for alpha, values in zip(RIDGE_ALPHAS, loo):
            if not np.isfinite(values).all():
                continue  # near-interpolation (1 - h_ii ~ 0): no usable leave-one-out
            pred = classes[(values[:, 0] > 0).astype(int) if values.shape[1] == 1
                           else values.argmax(axis=1)]
            value = compute_scores(y, pred, None, classes)[score_name]
            if value > best[0]:
                best = (value, alpha)
        rows.append({"loo_score": float(best[0]), "alpha": float(best[1]),
                     "seconds": time.perf_counter() - start})
        if progress is not None:
            progress.advance(1)
    return pd.DataFrame(rows)


def ridge_loo_decisions(X, codes, n_classes: int, alphas) -> Iterator[np.ndarray]:
    """Leave-one-out decision values of a ridge classifier on standardized ``X``, per alpha.

    The closed form of :class:`sklearn.linear_model.RidgeClassifierCV` (targets +-1 one-vs-rest,
    one column for two classes; intercept): with the hat matrix ``H`` of the fit on all rows,
    the prediction for row ``i`` without row ``i`` is ``y_i - (y_i - yhat_i) / (1 - H_ii)``.
    One eigendecomposition (of ``X.T X`` or ``X X.T``, the smaller) serves every alpha.
    Written here rather than read from ``RidgeClassifierCV(store_cv_results=True)`` to keep
    memory to one float32 copy of ``X`` and p x p matrices (scikit-learn keeps float64 copies,
    a rotated copy and the decisions of every alpha at once), which the selection's memory
    target needs.

    Yields
    ------
    ndarray of shape (n_samples, n_targets), float64
        For each alpha in order.
    """
    # standardized in place on one float32 copy (StandardScaler's float64 temporaries would
    # double the memory); population std, constant columns left at 0, as StandardScaler does
    Z = np.array(X, dtype=np.float32)
    n, p = Z.shape
    Z -= Z.mean(axis=0, dtype=np.float64).astype(np.float32)
    scale = np.sqrt(np.einsum("ij,ij->j", Z, Z, dtype=np.float64) / n)
    scale[scale == 0] = 1.0
    Z /= scale.astype(np.float32)
    Y = -np.ones((n, n_classes if n_classes > 2 else 1))
    if n_classes > 2:
        Y[np.arange(n), codes] = 1.0
    else:
        Y[codes == 1, 0] = 1.0
    mean = Y.mean(axis=0)
    Yc = (Y - mean).astype(np.float32)
    if n > p:
        # X (X'X + a I)^-1 X' = X M X' with M = V diag(1 / (s + a)) V': a p x p matrix per
        # alpha, so no rotated n x p copy of X is ever held
        s, V = np.linalg.eigh(Z.T @ Z)  # float32 throughout: p x p temporaries stay small
        s = np.clip(s, 0.0, None)
        ZtY = Z.T @ Yc
        for alpha in alphas:
            M = (V / (s + np.float32(alpha))) @ V.T
            diag = np.concatenate([np.einsum("ij,ij->i", Z[i:i + 512] @ M, Z[i:i + 512])
                                   for i in range(0, n, 512)])
            fitted = mean + Z @ (M @ ZtY)
            h = 1.0 / n + diag
            yield _loo(Y, fitted, h)
        return
    # n <= p: X (X'X + a I)^-1 X' = U diag(s / (s + a)) U'  with  X X' = U diag(s) U'
    s, U = np.linalg.eigh((Z @ Z.T).astype(np.float64))
    del Z
    s = np.clip(s, 0.0, None)
    UtY = U.T @ Yc.astype(np.float64)
    U2 = np.square(U)
    for alpha in alphas:
        w = s / (s + alpha)
        diag = U2 @ w
        fitted = mean + U @ (w[:, None] * UtY)
        h = 1.0 / n + diag
        yield _loo(Y, fitted, h)


def _loo(Y, fitted, h) -> np.ndarray:
    """``y - (y - yhat) / (1 - h)``; NaN when some ``1 - h`` is too small to be trusted in
    float32 (a nearly interpolating fit, more features than images and a tiny alpha)."""
    slack = 1.0 - np.asarray(h, dtype=np.float64)
    if slack.min() < 1e-4:
        return np.full(Y.shape, np.nan)
    return Y - (Y - fitted) / slack[:, None]


def finalists(screen: pd.DataFrame, n_finalists: int) -> list[int]:
    """Indices of the ``n_finalists`` best screened feature sets (ties: the earlier one)."""
    order = np.argsort(-screen["loo_score"].to_numpy(), kind="stable")
    return sorted(int(i) for i in order[:n_finalists])


def fast_repeats(n_samples: int, n_repeats: int) -> int:
    """k-fold repeats of the fast search: all of them on small data, one from 1,000 images."""
    return 1 if n_samples >= ONE_REPEAT_FROM else n_repeats


def fast_c_grid(head: str) -> list[float] | None:
    """The coarse starting grid of a registered head (None for heads without C)."""
    return list(FAST_C_GRID[head]) if head in FAST_C_GRID else None


def extension(c_values: list[float], best_c: float) -> float | None:
    """The next C to try when ``best_c`` is at an end of ``c_values`` (one decade further)."""
    grid = sorted(c_values)
    if len(grid) < 2 or best_c not in (grid[0], grid[-1]):
        return None
    return best_c * 10.0 if best_c == grid[-1] else best_c / 10.0


def screen_note(keys, screen: pd.DataFrame, chosen: list[int], names) -> str:
    """One line for the selection's notes: the screening and the finalists."""
    cells = ", ".join(f"{names(keys[i])} {screen.loc[i, 'loo_score']:.4f}"
                      for i in np.argsort(-screen["loo_score"].to_numpy(), kind="stable"))
    kept = ", ".join(names(keys[i]) for i in chosen)
    return (f"fast search: ridge leave-one-out screening of {len(keys)} feature sets ({cells});"
            f" tuned: {kept}")


