"""The sections of the HTML report as plain data (dicts, lists, :class:`Figure` objects): what
the templates of ``classify/templates`` render. Nothing here writes HTML.

Every function takes what :func:`classify.html_report.build_report` gathered (the model, the
:class:`~classify.report_data.Split` of the training data and of a test folder, the class
names, a :class:`~classify.report_data.Figures` maker) and returns one section's data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from classify import diagnostics
from classify.features import describe_featurizer
from classify.metrics import DEFAULT_SCORING, compute_scores
from classify.report_data import MAP_THUMB_PX
from classify.reports import confusion_frame, optimism_note, per_class_report, plural

__all__ = ["LIMITS", "confused_pairs", "duplicates", "embedding_map", "failures", "headline",
           "label_issues", "mistakes", "scores", "summary"]

#: Caps on what the report shows (stated in the report itself).
LIMITS = {"mistakes": 60, "label_issues": 40, "duplicates": 40, "confused_pairs": 10,
          "pair_examples": 4, "map_thumbnails": 1000}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
           "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]
_PRETTY = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
           "f1_macro": "macro F1", "log_loss": "log loss"}


def _pct(p) -> str:
    return "n/a" if p is None or not np.isfinite(p) else f"{p:.2f}"


def _scored(split):
    """Rows of a split with a known class and a prediction."""
    return (split.y >= 0) & (split.pred >= 0)


def headline(model, train, test, classes) -> dict:
    """The answer: the model's score on the test folder when it has one (labelled), else its
    cross-validated score on the training data (out of fold), with the number of images.

    Returns
    -------
    dict
        ``kind`` ("test" or "out-of-fold"), ``score`` (its name), ``value``, ``n_images``,
        ``others`` ((name, value) of the other scores), ``notes`` (lines under it).
    """
    p = model.provenance
    scoring = p.get("scoring") or DEFAULT_SCORING
    cv, std = p.get("cv_scores") or {}, p.get("cv_std") or {}
    nested = p.get("nested_scores") or {}
    n_train = int(p.get("n_samples") or len(train.paths))
    cv_line = None
    if cv.get(scoring) is not None:
        cv_line = (f"Cross-validated (out of fold) on {n_train:,} training images: "
                   f"{_PRETTY.get(scoring, scoring)} {cv[scoring]:.4f} +/- "
                   f"{std.get(scoring) or 0:.4f}; "
                   f"{optimism_note(p.get('n_candidates'), bool(nested))}.")
    notes = []
    if nested.get(scoring) is not None:
        notes.append(f"Nested cross-validation (unbiased estimate of the whole selection): "
                     f"{nested[scoring]:.4f}.")
    if test is not None and _scored(test).any():
        ok = _scored(test)
        s = compute_scores(test.y[ok], test.pred[ok], None, np.arange(len(classes)))
        name = scoring if np.isfinite(s.get(scoring, np.nan)) else "balanced_accuracy"
        unread = len(test.paths) - int((test.pred >= 0).sum())
        if unread:
            notes.insert(0, f"{plural(unread, 'test file')} could not be read and "
                         f"{'is' if unread == 1 else 'are'} not scored (see Failed files).")
        if cv_line:
            notes.insert(0, cv_line)
        return {"kind": "test", "score": _PRETTY.get(name, name), "value": s[name],
                "n_images": int(ok.sum()), "others": _others(s, name), "notes": notes}
    if cv.get(scoring) is None:
        return {}
    return {"kind": "out-of-fold", "score": _PRETTY.get(scoring, scoring),
            "value": cv[scoring], "spread": std.get(scoring), "n_images": n_train,
            "others": _others(cv, scoring),
            "notes": [(f"Cross-validated on the training data ({_cv_text(p)}): "
                      f"{optimism_note(p.get('n_candidates'), bool(nested))}.")] + notes}


def _others(scores, chosen):
    return [(_PRETTY[k], scores[k]) for k in ("accuracy", "balanced_accuracy", "f1_macro")
            if k != chosen and scores.get(k) is not None and np.isfinite(scores[k])]


def _cv_text(p) -> str:
    cv = p.get("cv") or {}
    return f"{cv.get('n_repeats', '?')} x {cv.get('n_splits', '?')}-fold"


def summary(model, train, test, classes) -> dict:
    """The model and the data in key -> value pairs (also printed by ``featurize report``)."""
    p = model.provenance
    d = describe_featurizer(model.featurizer_config)
    counts = pd.Series(np.asarray(classes)[train.y]).value_counts().reindex(classes)
    out = {
        "classes": ", ".join(f"{c} ({n})" for c, n in counts.items()),
        "training images": len(train.paths), "failed files": len(train.failures),
        "backbone": d["backbone"], "layer": d["layer"], "pooling": d["pooling"],
        "head": f"{p.get('head')} {p.get('params')}",
    }
    cv, std = p.get("cv_scores") or {}, p.get("cv_std") or {}
    scoring = p.get("scoring")
    nested, nested_std = p.get("nested_scores") or {}, p.get("nested_std") or {}
    if cv.get(scoring) is not None:
        out[f"CV {scoring}"] = (f"{cv[scoring]:.4f} +/- {std.get(scoring) or 0:.4f} "
                                f"({optimism_note(p.get('n_candidates'), bool(nested))})")
    if nested.get(scoring) is not None:
        out[f"nested CV {scoring}"] = (f"{nested[scoring]:.4f} +/- "
                                       f"{nested_std.get(scoring) or 0:.4f} (unbiased "
                                       "estimate of the whole selection)")
    if test is not None:
        out["test images"] = len(test.paths)
        ok = _scored(test)
        if ok.any():
            s = compute_scores(test.y[ok], test.pred[ok], None, np.arange(len(classes)))
            out["test accuracy"] = f"{s['accuracy']:.4f}"
            out["test balanced accuracy"] = f"{s['balanced_accuracy']:.4f}"
    out["featurize version"] = p.get("featurize_version")
    out["trained"] = p.get("created")
    return out


def scores(split, classes, title: str) -> dict:
    """Per-class table (class rows apart from the averages) and the confusion matrix as a heat
    map: each cell shaded by its share of the row (the true class), blue on the diagonal, red
    off it, where the most frequent confusion is the darkest red."""
    ok = _scored(split)
    per_class = per_class_report(split.y[ok], split.pred[ok], classes)
    per_class["support"] = per_class["support"].round().astype(int)
    averages = per_class.index.isin(["macro avg", "weighted avg"])
    confusion = confusion_frame(split.y[ok], split.pred[ok], classes).to_numpy()
    totals = confusion.sum(axis=1, keepdims=True)
    share = confusion / np.where(totals > 0, totals, 1)
    off = share[~np.eye(len(classes), dtype=bool)]
    worst = off.max() if off.size and off.max() > 0 else 1.0
    cells = []
    for i, name in enumerate(classes):
        row = []
        for j, predicted in enumerate(classes):
            alpha = share[i, j] if i == j else 0.9 * share[i, j] / worst
            colour = "31,119,180" if i == j else "214,39,40"
            row.append({"n": int(confusion[i, j]), "shade": f"rgba({colour},{alpha:.2f})",
                        "dark": alpha > 0.55,
                        "title": f"{confusion[i, j]} of {totals[i, 0]} {name} predicted "
                                 f"{predicted} ({100 * share[i, j]:.0f}%)"})
        cells.append(row)
    cells_of = per_class.astype(object)  # rows keep each column's type (support: int)
    return {"title": title, "n_images": int(ok.sum()), "columns": list(per_class.columns),
            "rows": [(name, list(row)) for name, row in cells_of[~averages].iterrows()],
            "averages": [(name, list(row)) for name, row in cells_of[averages].iterrows()],
            "classes": classes, "heat": cells}


def confused_pairs(split, classes, figures, title: str, anchor: str) -> dict:
    """The most frequent (true class, predicted class) confusions with example images, the most
    confident mistakes of each first."""
    ok = _scored(split)
    totals = np.bincount(split.y[ok], minlength=len(classes))
    pairs = []
    for i, j, n in diagnostics.confused_pairs(split.y, split.pred, len(classes),
                                              LIMITS["confused_pairs"]):
        rows = np.flatnonzero(ok & (split.y == i) & (split.pred == j))
        rows = rows[diagnostics.mistakes(split.y[rows], split.pred[rows], split.p_pred[rows],
                                         LIMITS["pair_examples"])]
        pairs.append({"true": classes[i], "predicted": classes[j], "count": n,
                      "share": n / totals[i] if totals[i] else 0.0,
                      "examples": [figures(split.paths[r], [f"p={_pct(split.p_pred[r])}"])
                                   for r in rows]})
    n_wrong = int((ok & (split.pred != split.y)).sum())
    return {"title": title, "id": anchor, "pairs": pairs, "n_wrong": n_wrong}


def mistakes(split, classes, figures, title: str, anchor: str, given: str) -> dict:
    """The misclassified images, most confident first (capped)."""
    known = split.y >= 0
    rows = diagnostics.mistakes(np.where(known, split.y, split.pred), split.pred, split.p_pred,
                                LIMITS["mistakes"])
    shown = [figures(split.paths[i], [f"{given}: {classes[split.y[i]]}",
                                      (f"predicted: {classes[split.pred[i]]} "
                                      f"(p={_pct(split.p_pred[i])})")]) for i in rows]
    n_wrong = int((known & (split.pred >= 0) & (split.pred != split.y)).sum())
    return {"title": title, "id": anchor, "n_wrong": n_wrong, "figures": shown}


def label_issues(train, classes, figures) -> dict:
    """Likely label errors by confident learning (:func:`classify.diagnostics.label_issues`);
    ``{"available": False}`` without probabilities."""
    if not np.isfinite(train.p_true).any():
        return {"available": False, "n": 0, "figures": []}
    rows, _ = diagnostics.label_issues(train.y, train.pred, train.p_true, train.p_pred,
                                       len(classes))
    shown = [figures(train.paths[i], [(f"given: {classes[train.y[i]]} "
                                      f"(p={_pct(train.p_true[i])})"),
                                      (f"suggested: {classes[train.pred[i]]} "
                                      f"(p={_pct(train.p_pred[i])})")])
             for i in rows[:LIMITS["label_issues"]]]
    return {"available": True, "n": len(rows), "figures": shown}


def duplicates(train, test, classes, figures) -> tuple[dict, dict]:
    """Near-duplicate pairs within the training data and between training and test, and
    identical files; returns ``(section, summary counts)``."""
    counts = {}
    exact = {}
    for i, key in enumerate(train.keys):
        if key is not None:
            exact.setdefault(key, []).append(i)
    pairs, n_pairs = diagnostics.near_duplicates(train.X, limit=LIMITS["duplicates"])
    counts["exact duplicates in training data"] = sum(len(g) - 1 for g in exact.values())
    counts["near-duplicate pairs in training data"] = n_pairs

    def pair(a, b, sim):
        return {"figures": [figures(*a), figures(*b)], "cosine": sim}

    groups = [{"title": "Within the training data", "id": "train-duplicates",
               "n_pairs": n_pairs, "n_identical": counts["exact duplicates in training data"],
               "identical_word": "exact duplicate",
               "pairs": [pair((train.paths[i], [classes[train.y[i]]]),
                              (train.paths[j], [classes[train.y[j]]]), s)
                         for i, j, s in pairs]}]
    if test is not None:
        leaks, n_leaks = diagnostics.near_duplicates(train.X, test.X, limit=LIMITS["duplicates"])
        train_keys = {k for k in train.keys if k is not None}
        identical = sum(1 for k in test.keys if k is not None and k in train_keys)
        counts["train/test leaks (near-duplicate pairs)"] = n_leaks
        counts["train/test leaks (identical files)"] = identical
        groups.append({
            "title": "Between training and test data", "id": "leaks", "n_pairs": n_leaks,
            "n_identical": identical, "identical_word": "identical file",
            "pairs": [pair((train.paths[i], [f"train: {classes[train.y[i]]}"]),
                           (test.paths[j],
                            [f"test: {classes[test.y[j]] if test.y[j] >= 0 else '?'}"]), s)
                      for i, j, s in leaks]})
    return {"groups": groups, "threshold": diagnostics.DUPLICATE_COSINE}, counts


def embedding_map(train, test, classes, figures, method: str, size=(720, 520)) -> dict:
    """The 2-D map: one point per image (circle: training, square: test; mistakes outlined),
    in SVG coordinates, and the thumbnails of a sample of them (by point index)."""
    # images with no features (NaN rows) are placed at the mean of the training features
    finite = np.isfinite(train.X).all(axis=1)
    centre = train.X[finite].mean(axis=0) if finite.any() else np.zeros(train.X.shape[1])
    xy, xy_test = diagnostics.embedding_map(
        _filled(train.X, centre), None if test is None else _filled(test.X, centre), method)
    splits = [("train", train, xy)] + ([("test", test, xy_test)] if test is not None else [])
    allxy = np.vstack([coords for _, _, coords in splits])
    lo, hi = allxy.min(axis=0), allxy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1)
    (width, height), pad = size, 12
    points = []
    for name, split, coords in splits:
        for (x, y), c, p, path in zip(coords, split.y, split.pred, split.paths):
            c, p = int(c), int(p)
            wrong = c >= 0 and p >= 0 and p != c
            points.append({
                "k": len(points), "test": name == "test",
                "x": pad + (x - lo[0]) / span[0] * (width - 2 * pad),
                "y": height - pad - (y - lo[1]) / span[1] * (height - 2 * pad),
                "colour": PALETTE[c % len(PALETTE)] if c >= 0 else "#000", "wrong": wrong,
                "label": f"{name}: {classes[c] if c >= 0 else '?'}"
                         + (f", predicted {classes[p]}" if wrong else ""),
                "path": figures.names.show(path), "file": path})
    rng = np.random.default_rng(0)
    sample = rng.choice(len(points), min(len(points), LIMITS["map_thumbnails"]), replace=False)
    thumbs = {}
    for k in sorted(sample.tolist()):
        uri, _ = figures.thumbnail(points[k]["file"], MAP_THUMB_PX)
        if uri:
            thumbs[str(k)] = uri
    legend = [(name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(classes)]
    return {"method": "PCA" if method == "pca" else "t-SNE", "width": width, "height": height,
            "points": points, "thumbs": thumbs, "legend": legend}


def failures(train, test, names) -> list:
    """``(path as shown, reason)`` of every file left out, training then test."""
    failed = list(train.failures) + (list(test.failures) if test is not None else [])
    return [(names.show(path), names.scrub(reason)) for path, reason in failed]


def _filled(X, fill):
    """``X`` with its non-finite rows replaced by ``fill``."""
    X = np.array(X, dtype=np.float64)
    X[~np.isfinite(X).all(axis=1)] = fill
    return X
