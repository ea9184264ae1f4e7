"""A trained model on folders of images: evaluation, a prediction table, and the data of the
HTML report. What ``featurize evaluate``, ``predict`` and ``report`` do, from Python.

Every function takes the model's run-time options (``cache``, ``device``, ``batch_size``,
``num_workers``, ``verbose``, ``progress``) and computes features through
:meth:`classify.model.FittedModel.features`, the one route from images to a model's features.
An image that cannot be read is reported with its reason, never scored or predicted.
Training folders are found again through the model's records: its training images are
stored relative to the folder it was trained on, with their class names (see
:func:`classify.training.train_folder`), so a model reports on its data wherever the folder
has moved.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from classify import html_report
from classify.metrics import compute_scores
from classify.reports import confusion_frame, format_frame, format_scores, per_class_report
from featurize.images.decoding import IMAGE_EXTENSIONS
from featurize.images.folder import list_images, load_image_folder
from featurize.storage.keys import file_content_key

__all__ = ["Evaluation", "evaluate_folder", "expand_sources", "predict_table", "report_folder",
           "training_images"]

#: Run-time options every function here passes on to ``model.features`` (they never change
#: the numbers).
RUNTIME_OPTIONS = ("cache", "device", "batch_size", "num_workers", "verbose", "progress")


@dataclass
class Evaluation:
    """Scores of a model on a labelled folder, and what they are made of.

    Attributes
    ----------
    folder : str
        The folder evaluated.
    classes : list of str
        The model's classes (the order of ``proba``'s columns, of the confusion matrix).
    paths : list of str
        Every image listed in the folder, in order.
    labels : ndarray of str
        The class (folder) of every listed image.
    failures : dict of int to str
        Listed images that could not be read: ``row -> reason``.
    skipped : list of (str, str)
        Files of the folder that are not images or not inside a class folder.
    ok : ndarray of int
        The rows scored.
    predicted : ndarray of str
        The predicted class of every scored row.
    proba : ndarray of shape (n_scored, n_classes) or None
        Class probabilities of the scored rows, when the model gives them.
    scores : dict of str to float
        Accuracy, balanced accuracy, macro F1, log loss (NaN without probabilities).
    per_class : pandas.DataFrame
        Precision, recall, F1 and support of every class, and their averages.
    confusion : pandas.DataFrame
        Rows: true class; columns: predicted class.
    """

    folder: str
    classes: list
    paths: list
    labels: np.ndarray
    failures: dict
    skipped: list
    ok: np.ndarray
    predicted: np.ndarray
    proba: np.ndarray | None
    scores: dict
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    model_description: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        """Images listed in the folder."""
        return len(self.paths)

    @property
    def n_scored(self) -> int:
        """Images scored (readable)."""
        return int(self.ok.size)

    @property
    def y_true(self) -> np.ndarray:
        """The true class of every scored row."""
        return self.labels[self.ok]

    @property
    def failed(self) -> list:
        """``(path, reason)`` of every file left out: skipped by the listing, then unreadable."""
        return list(self.skipped) + [(self.paths[row], reason)
                                     for row, reason in sorted(self.failures.items())]

    @property
    def misclassified(self) -> pd.DataFrame:
        """The scored images predicted wrong: ``path``, ``true``, ``predicted`` and, with
        probabilities, ``probability`` (of the predicted class; most confident first)."""
        wrong = np.flatnonzero(self.predicted != self.y_true)
        frame = pd.DataFrame({"path": [self.paths[self.ok[i]] for i in wrong],
                              "true": self.y_true[wrong], "predicted": self.predicted[wrong]})
        if self.proba is not None:
            frame["probability"] = self.proba[wrong].max(axis=1)
            frame = frame.sort_values("probability", ascending=False, kind="stable")
        return frame.reset_index(drop=True)

    def to_dict(self) -> dict:
        """A JSON-ready summary: the scores (NaN as None), counts, failures, per-class
        scores, the confusion matrix and the misclassified files."""
        out = {name: (None if np.isnan(value) else float(value))
               for name, value in self.scores.items()}
        misclassified = self.misclassified
        out.update({
            "n_images": self.n_images,
            "n_scored": self.n_scored,
            "failures": [{"path": path, "reason": why} for path, why in self.failed],
            "classes": list(self.classes),
            "per_class": {name: {k: float(v) for k, v in row.items()}
                          for name, row in self.per_class.iterrows()},
            "confusion_matrix": self.confusion.to_numpy().astype(int).tolist(),
            "misclassified": misclassified.to_dict(orient="records"),
            "model": dict(self.model_description),
        })
        return out

    def to_text(self) -> str:
        """Scores, per-class report, confusion matrix and the misclassified files as text."""
        lines = [f"Test set {self.folder}: {self.n_scored} of {self.n_images} images scored",
                 format_scores(self.scores), "", "Per-class report:",
                 format_frame(self.per_class), "",
                 "Confusion matrix (rows: true class, columns: predicted):",
                 format_frame(self.confusion, "{:.0f}")]
        wrong = self.misclassified
        if len(wrong):
            lines += ["", f"Misclassified ({len(wrong)}):"]
            for row in wrong.head(20).itertuples(index=False):
                p = f" (p={row.probability:.2f})" if "probability" in wrong else ""
                lines.append(f"  {row.path}: {row.true}, predicted {row.predicted}{p}")
            if len(wrong) > 20:
                lines.append(f"  ... and {len(wrong) - 20} more (to_dict() lists them all)")
        return "\n".join(lines)


def evaluate_folder(model, folder, **runtime) -> Evaluation:
    """Score ``model`` on a labelled folder-per-class tree (``folder/<class>/<images>``).

    Parameters
    ----------
    model : FittedModel
    folder : path
        Its class folders must be classes of the model; a class folder with no image is not a
        class of the test set.
    **runtime
        ``cache``, ``device``, ``batch_size``, ``num_workers``, ``verbose``, ``progress``.

    Returns
    -------
    Evaluation

    Raises
    ------
    FileNotFoundError
        No such folder.
    ValueError
        The folder has a class the model does not know, or no readable image.
    """
    data = load_image_folder(folder)
    classes = [str(c) for c in model.classes_]
    names = np.asarray(data.target_names, dtype=object)[data.target].astype(str)
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ValueError(f"{os.fspath(folder)} has classes the model does not know: {unknown}; "
                         f"the model's classes are {classes}.")
    features = model.features(data.paths, **runtime)
    ok = features.ok
    if ok.size == 0:
        raise ValueError(f"No readable image in {os.fspath(folder)}.")
    X = features.X[ok]
    predicted = np.asarray(model.predict_features(X)).astype(str)
    proba = model.predict_proba_features(X) if model.has_proba else None
    index = {name: i for i, name in enumerate(classes)}
    true_codes = np.array([index[c] for c in names[ok]])
    pred_codes = np.array([index[c] for c in predicted])
    scores = compute_scores(true_codes, pred_codes, proba, np.arange(len(classes)))
    described = {k: model.provenance.get(k) for k in ("backbone", "layer", "pooling", "head",
                                                      "params")}
    return Evaluation(folder=os.fspath(folder), classes=classes, paths=list(data.paths),
                      labels=names, failures=dict(features.failures),
                      skipped=list(data.skipped), ok=ok, predicted=predicted, proba=proba,
                      scores=scores, per_class=per_class_report(true_codes, pred_codes, classes),
                      confusion=confusion_frame(true_codes, pred_codes, classes),
                      model_description=described)


def expand_sources(sources) -> list[str]:
    """Image files of ``sources`` (files, folders searched recursively, glob patterns), in
    order. A named file that does not exist but has an image extension is kept: its row will
    say ``file not found``.

    Raises
    ------
    FileNotFoundError
        A folder or pattern that does not exist or matches nothing.
    ValueError
        No image at all.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    paths = []
    for source in map(os.fspath, sources):
        try:
            paths += list_images(source)
        except FileNotFoundError:
            named_image = (not any(char in source for char in "*?[")
                           and os.path.splitext(source)[1].lower() in IMAGE_EXTENSIONS)
            if not named_image:
                raise FileNotFoundError(f"no such file or folder: {source!r}") from None
            paths.append(source)
    if not paths:
        raise ValueError(f"No image files found in {list(map(os.fspath, sources))}.")
    return paths


def predict_table(model, sources, **runtime) -> pd.DataFrame:
    """One row per image: ``path``, ``predicted``, ``proba_<class>`` (when the model gives
    probabilities) and ``error`` (empty, or why the image could not be read).

    Parameters
    ----------
    model : FittedModel
    sources : path or sequence of paths
        Image files, folders (searched recursively) or glob patterns (:func:`expand_sources`).
    **runtime
        ``cache``, ``device``, ``batch_size``, ``num_workers``, ``verbose``, ``progress``.

    Returns
    -------
    pandas.DataFrame
    """
    paths = expand_sources(sources)
    features = model.features(paths, **runtime)
    ok = features.ok
    table = pd.DataFrame({"path": paths,
                          "predicted": pd.Series([None] * len(paths), dtype=object)})
    if ok.size:
        table.loc[ok, "predicted"] = np.asarray(model.predict_features(features.X[ok])).astype(str)
        if model.has_proba:
            proba = model.predict_proba_features(features.X[ok])
            for j, name in enumerate(map(str, model.classes_)):
                table[f"proba_{name}"] = np.nan
                table.loc[ok, f"proba_{name}"] = proba[:, j]
    table["error"] = [features.failures.get(i, "") for i in range(len(paths))]
    return table


def training_images(model, data_dir) -> tuple[list, list, list]:
    """``(paths, labels, failures)`` of the images ``model`` was trained on, found in
    ``data_dir`` (the training folder, wherever it is now): the paths re-rooted on it, the
    class of each as recorded at training, and ``(path, reason)`` of the files left out then.

    Raises
    ------
    ValueError
        The model does not record its training images, or none of them is in ``data_dir``.
    """
    reports = model.reports
    if model.provenance.get("head") == "fine-tuned":
        raise ValueError(f"{model.provenance.get('weights')} is a fine-tuned network "
                         "(`featurize finetune`), not a model of features + heads: it has no "
                         "out-of-fold predictions of its training images, which the report "
                         "shows. Report a model trained by `featurize train` (`featurize "
                         "compare --report` shows both side by side).")
    if "train_labels" not in reports or "oof_predictions" not in reports:
        raise ValueError("This model does not record its training images, their classes and "
                         "out-of-fold predictions (a model made from a scikit-learn pipeline, "
                         "or trained by an older featurize): train it with `featurize train` "
                         "or classify.train_folder.")
    root = os.fspath(data_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such folder: {root!r}")
    relative = list(reports["train_paths"])
    paths = [os.path.join(root, *rel.split("/")) for rel in relative]
    if relative and not any(os.path.exists(p) for p in paths):
        raise ValueError(
            f"None of the {len(paths)} images the model was trained on is in {root}: they are "
            f"looked up by their path inside the training folder (e.g. {relative[0]!r}). Give "
            f"the folder the model was trained on (it was {model.provenance.get('data_dir')}).")
    return paths, [str(c) for c in reports["train_labels"]], model.training_failures(root)


def report_folder(model, data_dir, test_dir=None, *, map_method: str = "pca",
                  extra: dict | None = None, **runtime) -> html_report.Report:
    """The HTML report of ``model`` on its training folder (and a labelled test folder).

    The training rows, their classes, out-of-fold predictions and confidences come from the
    model; the features from :meth:`~classify.model.FittedModel.features`, so with the
    training cache nothing is computed again and no model is refitted.

    Parameters
    ----------
    model : FittedModel
        Trained by :func:`classify.training.train_folder` (``featurize train``).
    data_dir : path
        The folder the model was trained on, wherever it is now.
    test_dir : path, default=None
        A folder-per-class test tree: predictions, mistakes, leaks.
    map_method : {"pca", "tsne"}, default="pca"
    extra : dict, default=None
        More sections shown after the headline: title -> a string (a paragraph), a DataFrame
        (a table) or a list of them (:func:`classify.html_report.extra_blocks`).
    **runtime
        ``cache``, ``device``, ``batch_size``, ``num_workers``, ``verbose``, ``progress``.

    Returns
    -------
    classify.html_report.Report
        ``summary["failed files"]`` counts the training files left out at training; files
        that fail now are in ``failed_now`` (``(path, reason)``).
    """
    start = time.perf_counter()
    paths, labels, train_failures = training_images(model, data_dir)
    classes = [str(c) for c in model.classes_]
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"The model records training classes {unknown[:5]} that are not among "
                         f"its classes {classes}: the model file is inconsistent.")
    y = np.array([index[c] for c in labels], dtype=int)
    train_features = model.features(paths, **runtime)
    conf = model.reports["oof_confidence"]
    gone = [(paths[i], f"not readable any more: {reason}")
            for i, reason in train_features.failures.items()]
    train = html_report.Split(
        paths=paths, X=np.asarray(train_features.X, dtype=np.float64), y=y,
        pred=model.reports["oof_predictions"][0], p_true=conf[0, :, 0], p_pred=conf[0, :, 1],
        keys=_keys(paths), failures=train_failures + gone, folder=data_dir)
    test, failed_now = None, list(gone)
    if test_dir is not None:
        test, test_failed = _test_split(model, test_dir, index, runtime)
        failed_now += test_failed
    report = html_report.build_report(model, train, test, seconds=time.perf_counter() - start,
                                      map_method=map_method, extra=extra)
    report.failed_now = failed_now
    return report


def _test_split(model, test_dir, index, runtime):
    data = load_image_folder(test_dir)
    features = model.features(data.paths, **runtime)
    names = np.asarray(data.target_names, dtype=object)[data.target].astype(str)
    yt = np.array([index.get(c, -1) for c in names], dtype=int)
    n = len(data.paths)
    pred, p_pred, p_true = np.full(n, -1), np.full(n, np.nan), np.full(n, np.nan)
    ok = features.ok
    if ok.size:
        raw = np.asarray(model.predict_features(features.X[ok])).astype(str)
        pred[ok] = [index[c] for c in raw]
        if model.has_proba:
            proba = model.predict_proba_features(features.X[ok])
            p_pred[ok] = proba[np.arange(ok.size), pred[ok]]
            known = yt[ok] >= 0
            p_true[ok[known]] = proba[np.flatnonzero(known), yt[ok][known]]
    failed = list(data.skipped) + [(data.paths[i], r) for i, r in features.failures.items()]
    split = html_report.Split(paths=list(data.paths), X=np.asarray(features.X, np.float64),
                              y=yt, pred=pred, p_pred=p_pred, p_true=p_true,
                              keys=_keys(data.paths), failures=failed, folder=test_dir)
    return split, failed


def _keys(paths):
    keys = []
    for path in paths:
        try:
            keys.append(file_content_key(path))
        except OSError:
            keys.append(None)
    return keys
