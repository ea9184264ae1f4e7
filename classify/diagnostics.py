"""What a report shows besides scores: mistakes, likely label errors, near-duplicates, a 2-D map.

Pure numpy and scikit-learn on what the selection already computed (out-of-fold predictions and
confidences) and on the cached features; nothing here trains the model again.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DUPLICATE_COSINE", "confused_pairs", "embedding_map", "label_issues", "mistakes",
           "near_duplicates"]

#: Cosine similarity (of standardized, L2-normalized features) above which two images are
#: reported as near-duplicates. Crops, re-encodings and resizes of one photo score above it;
#: two photos of similar objects on similar backgrounds rarely do.
DUPLICATE_COSINE = 0.95


def mistakes(y, pred, p_pred, limit: int | None = None) -> np.ndarray:
    """Rows whose prediction is wrong, most confident first.

    Parameters
    ----------
    y, pred : ndarray of shape (n,)
        True and predicted class codes (``pred < 0``: never predicted, skipped).
    p_pred : ndarray of shape (n,)
        Probability of the predicted class (NaN when the head gives none: kept, last).
    limit : int, default=None

    Returns
    -------
    ndarray of int
    """
    wrong = np.flatnonzero((pred >= 0) & (pred != y))
    order = np.argsort(-np.nan_to_num(p_pred[wrong], nan=-1.0), kind="stable")
    return wrong[order][:limit]


def label_issues(y, pred, p_true, p_pred, n_classes: int, limit: int | None = None):
    """Likely label errors by confident learning, from out-of-fold probabilities.

    Each class ``j`` gets a threshold ``t_j``: the mean out-of-fold probability of ``j`` over
    the images labelled ``j`` (its self-confidence). An image labelled ``i`` is flagged when its
    out-of-fold prediction is another class ``j`` with probability at least ``t_j`` (a confident
    prediction for ``j``, the off-diagonal of the "confident joint", Northcutt et al., JAIR
    2021), and ranked by its self-confidence ``p(i)``, lowest first (cleanlab's
    ``"self_confidence"`` ranking). Only the probability of the given and of the predicted class
    is needed.

    Parameters
    ----------
    y, pred : ndarray of shape (n,)
        Given and out-of-fold predicted class codes.
    p_true, p_pred : ndarray of shape (n,)
        Out-of-fold probability of the given and of the predicted class.
    n_classes : int
    limit : int, default=None

    Returns
    -------
    rows : ndarray of int
        Flagged rows, most likely error first.
    thresholds : ndarray of shape (n_classes,)
    """
    y, pred = np.asarray(y), np.asarray(pred)
    p_true, p_pred = np.asarray(p_true, float), np.asarray(p_pred, float)
    thresholds = np.full(n_classes, np.nan)
    for j in range(n_classes):
        values = p_true[(y == j) & np.isfinite(p_true)]
        if values.size:
            thresholds[j] = values.mean()
    ok = (pred >= 0) & (pred != y) & np.isfinite(p_pred) & np.isfinite(p_true)
    flagged = np.flatnonzero(ok)
    flagged = flagged[p_pred[flagged] >= thresholds[pred[flagged]]]
    order = np.argsort(p_true[flagged], kind="stable")
    return flagged[order][:limit], thresholds


def _unit_rows(X, mean, scale):
    Z = (np.asarray(X, np.float64) - mean) / scale
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return (Z / np.where(norms > 0, norms, 1)).astype(np.float32)


def near_duplicates(X, X_other=None, *, threshold: float = DUPLICATE_COSINE,
                    limit: int = 200, block: int = 2048):
    """Pairs of rows whose standardized features point the same way (cosine >= threshold).

    Rows with a non-finite value (images that could not be read: no features) are never part
    of a pair, and do not enter the standardization.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Training features; the mean and standard deviation of their finite rows standardize
        both matrices.
    X_other : ndarray of shape (m, d), default=None
        None: pairs within ``X`` (``i < j``). Else pairs (row of ``X``, row of ``X_other``).
    threshold : float, default=DUPLICATE_COSINE
    limit : int, default=200
        Most similar pairs kept; ``n_pairs`` counts them all.
    block : int, default=2048
        Rows compared at a time. Memory is a few ``block x m`` arrays, never ``n x m``, and
        does not grow with the number of pairs: the ``limit`` best are kept as they come and
        the others are only counted (thousands of identical images make millions of pairs).

    Returns
    -------
    pairs : list of (int, int, float)
        Most similar first.
    n_pairs : int
    """
    X = np.asarray(X, np.float64)
    ok = np.flatnonzero(np.isfinite(X).all(axis=1))
    if ok.size == 0:
        return [], 0
    mean, scale = X[ok].mean(axis=0), X[ok].std(axis=0)
    scale[scale == 0] = 1
    A = _unit_rows(X[ok], mean, scale)
    if X_other is None:
        B, ok_other = A, ok
    else:
        X_other = np.asarray(X_other, np.float64)
        ok_other = np.flatnonzero(np.isfinite(X_other).all(axis=1))
        B = _unit_rows(X_other[ok_other], mean, scale)
    best_i = np.empty(0, np.int64)
    best_j = np.empty(0, np.int64)
    best_s = np.empty(0, np.float32)
    n_pairs = 0
    for start in range(0, len(A), block):
        S = A[start:start + block] @ B.T
        keep = S >= threshold
        if X_other is None:  # each pair once: column after row
            keep &= np.arange(len(B))[None, :] > np.arange(start, start + len(S))[:, None]
        found = int(np.count_nonzero(keep))
        if not found:
            continue
        n_pairs += found
        S[~keep] = -np.inf
        flat = S.ravel()
        k = min(limit, found)
        top = np.argpartition(flat, len(flat) - k)[len(flat) - k:] if k < len(flat) \
            else np.arange(len(flat))
        rows, cols = np.divmod(top, S.shape[1])
        best_i = np.concatenate([best_i, rows + start])
        best_j = np.concatenate([best_j, cols])
        best_s = np.concatenate([best_s, flat[top]])
        order = np.lexsort((best_j, best_i, -best_s))[:limit]
        best_i, best_j, best_s = best_i[order], best_j[order], best_s[order]
    pairs = [(int(ok[i]), int(ok_other[j]), float(s)) for i, j, s in zip(best_i, best_j, best_s)]
    return pairs, n_pairs


def embedding_map(X, X_other=None, method: str = "pca", random_state: int = 0):
    """2-D coordinates of the rows of ``X`` (and ``X_other``), fitted on ``X``.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    X_other : ndarray of shape (m, d), default=None
        Projected with the map fitted on ``X`` (PCA) or embedded together (t-SNE).
    method : {"pca", "tsne"}, default="pca"
        PCA of the standardized features (fast, deterministic), or scikit-learn's t-SNE on
        their first 50 principal components.

    Returns
    -------
    xy : ndarray of shape (n, 2), xy_other : ndarray of shape (m, 2) or None
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    Zo = None if X_other is None else scaler.transform(X_other)
    if method == "pca":
        pca = PCA(n_components=2, random_state=random_state).fit(Z)
        return pca.transform(Z), None if Zo is None else pca.transform(Zo)
    if method != "tsne":
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    from sklearn.manifold import TSNE

    both = Z if Zo is None else np.vstack([Z, Zo])
    k = min(50, both.shape[1], both.shape[0])
    both = PCA(n_components=k, random_state=random_state).fit_transform(both)
    xy = TSNE(n_components=2, init="pca", random_state=random_state,
              perplexity=min(30, max(2, len(both) // 4))).fit_transform(both)
    return xy[:len(Z)], None if Zo is None else xy[len(Z):]


def confused_pairs(y, pred, n_classes: int, limit: int | None = None) -> list:
    """The most frequent confusions: ``(true class, predicted class, count)``, most frequent
    first (ties in class order).

    Parameters
    ----------
    y, pred : ndarray of shape (n,)
        True and predicted class codes (``y < 0``: unknown, ``pred < 0``: never predicted;
        such rows are left out).
    n_classes : int
    limit : int, default=None

    Returns
    -------
    list of (int, int, int)
    """
    y, pred = np.asarray(y), np.asarray(pred)
    ok = (y >= 0) & (pred >= 0)
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (y[ok], pred[ok]), 1)
    np.fill_diagonal(counts, 0)
    true, predicted = np.nonzero(counts)
    order = np.lexsort((predicted, true, -counts[true, predicted]))[:limit]
    return [(int(true[k]), int(predicted[k]), int(counts[true[k], predicted[k]]))
            for k in order]
