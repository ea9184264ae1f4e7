"""Train on a folder-per-class tree: candidate feature sets of one or more backbones, the
selection, and a model that records where it comes from. What ``featurize train`` and
``featurize sweep`` do, from Python.

By default the candidates are the layers of the three embedded EfficientNet-Lite networks
(:data:`DEFAULT_BACKBONES`, each at the resolution its weights were trained at) and the
concatenation of every backbone's last stage and penultimate layer, which wins on most data
(``benchmarks/README.md``, "accuracy.py"). Every backbone featurizes the images in one pass:
each image is read and decoded once.

The model records its training images relative to the training folder, with their classes, so
:meth:`classify.model.FittedModel.report` finds them in that folder wherever it has moved.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.utils.validation import check_array

from classify.features import (
    DEFAULT_BACKBONE,
    absolute_weights,
    build_extractors,
    describe_featurizer,
    extract_configs,
)
from classify.metrics import DEFAULT_SCORING
from classify.model import FittedModel
from classify.persistence import version_provenance
from classify.rules import DEFAULT_RULE
from classify.selection import (
    SelectionResult,
    check_selection_params,
    feature_set_name,
    select_model,
)
from featurize.images.folder import load_image_folder

__all__ = ["DEFAULT_BACKBONES", "Candidates", "candidate_features", "fit_selected",
           "select_on_folder", "train_folder", "train_model"]

#: ``featurize train``'s candidate backbones: the three embedded EfficientNet-Lite networks,
#: each at the resolution its weights were trained at (224, 240, 260 px).
DEFAULT_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@dataclass
class Candidates:
    """The candidate feature sets of a folder's images.

    Attributes
    ----------
    sets : dict of (str, str) to ndarray
        ``(layer, pooling) -> features`` of the images every backbone could read. With several
        backbones a layer is written ``"backbone:layer"``; the concatenation is
        ``"layer1+layer2"`` for one backbone and ``"concat:b1+b2+..."`` for several.
    y : ndarray of str
        The class of each row.
    rows : ndarray of int
        The row of each feature row in the folder's image list.
    failures : dict of int to str
        Images that could not be read: ``row -> reason``.
    layers : dict of str to list of str
        Each backbone's candidate layers.
    configs : dict of (str, str) to dict
        The featurizer configuration of each feature set (see
        :func:`classify.features.featurizer_parts`); ``precision`` the one that ran (``"auto"``
        resolved, and ``"fp32"`` where a bf16 engine failed and fell back).
    """

    sets: dict
    y: np.ndarray
    rows: np.ndarray
    failures: dict
    layers: dict
    configs: dict


def _as_folder(data):
    return load_image_folder(data) if isinstance(data, (str, os.PathLike)) else data


def _check_weights(backbones: list, weights) -> None:
    if len(backbones) > 1 and weights != "DEFAULT":
        raise ValueError(f"weights={weights!r} names the weights of one network, and backbones "
                         f"names {len(backbones)}: give a single backbone with it.")


def candidate_features(data, *, backbones: Sequence[str] = (DEFAULT_BACKBONE,),
                       weights="DEFAULT", layers: Sequence[str] | None = None,
                       poolings: Sequence[str] = ("avg",), precision: str = "auto",
                       **runtime) -> Candidates:
    """Extract every candidate feature set of a folder's images, in one pass.

    The candidates are, for each backbone, its layers (``layers``, or
    :func:`featurize.networks.layers.default_layers`) at each pooling, and, when that makes more
    than one layer, the concatenation of every backbone's last two candidate layers (the last stage
    and the penultimate layer, by default) at the first pooling. A layer whose output is a
    vector gives one candidate, whatever the pooling.

    Parameters
    ----------
    data : path or Bunch
        A folder-per-class tree, or what :func:`featurize.load_image_folder` returned for it.
    backbones : sequence of str, default=("efficientnet_lite0",)
    weights : str, path or None, default="DEFAULT"
        Weights of a single backbone (a checkpoint path is made absolute).
    layers : sequence of str, default=None
        Candidate layers of every backbone; None: :func:`featurize.networks.layers.default_layers`.
    poolings : sequence of str, default=("avg",)
    precision : str, default="auto"
    **runtime
        ``cache``, ``device``, ``batch_size``, ``num_workers``, ``verbose``, ``progress``.

    Returns
    -------
    Candidates
    """
    from featurize.networks.layers import default_layers, list_layers  # imports torch

    data = _as_folder(data)
    backbones = list(dict.fromkeys(backbones))
    poolings = list(dict.fromkeys(poolings))
    _check_weights(backbones, weights)
    weights = absolute_weights(weights)
    layers_of = {b: list(layers or default_layers(list_layers(b))) for b in backbones}
    runs = [(b, pooling) for b in backbones for pooling in poolings]
    device = runtime.pop("device", "auto")
    extractors = build_extractors([{"backbone": b, "weights": weights, "layer": layers_of[b],
                                    "pooling": pooling, "precision": precision}
                                   for b, pooling in runs], device)
    results = extract_configs(extractors, data.paths, **runtime)
    # the precision that ran (auto resolved; fp32 where a bf16 engine failed and fell back),
    # so that a model predicts with the features it was trained on
    ran = {backbone: extractor.precision for (backbone, _), extractor in zip(runs, extractors)}
    blocks, failures = {}, {}
    for (backbone, pooling), result in zip(runs, results):
        failures.update(result.failures)
        start = 0
        for layer in layers_of[backbone]:
            block = result.features[:, start:start + result.widths[layer]]
            start += result.widths[layer]
            same = blocks.get((backbone, layer, poolings[0]))
            if pooling != poolings[0] and same is not None and np.array_equal(
                    block, same, equal_nan=True):
                continue  # a vector layer (e.g. penultimate): every pooling is the identity
            blocks[(backbone, layer, pooling)] = block
    keep = np.setdiff1d(np.arange(len(data.paths)), list(failures)).astype(int)

    def name(backbone, layer):
        return f"{backbone}:{layer}" if len(backbones) > 1 else layer

    def config(members, pooling):
        parts = [{"backbone": b, "weights": weights, "pooling": pooling, "precision": ran[b],
                  "layer": [layer for bb, layer in members if bb == b]}
                 for b in dict.fromkeys(b for b, _ in members)]
        for part in parts:
            if len(part["layer"]) == 1:
                part["layer"] = part["layer"][0]
        return parts[0] if len(parts) == 1 else {"parts": parts}

    sets, configs = {}, {}
    for (backbone, layer, pooling), X in blocks.items():
        key = (name(backbone, layer), pooling)
        sets[key], configs[key] = X[keep], config([(backbone, layer)], pooling)
    members = [(b, layer) for b in backbones for layer in layers_of[b][-2:]]
    if len(members) > 1:
        joined = ("+".join(layer for _, layer in members) if len(backbones) == 1
                  else "concat:" + "+".join(backbones))
        key = (joined, poolings[0])
        sets[key] = np.hstack([blocks[(b, layer, poolings[0])] for b, layer in members])[keep]
        configs[key] = config(members, poolings[0])
    y = np.asarray(data.target_names, dtype=object)[data.target].astype(str)
    return Candidates(sets=sets, y=y[keep], rows=keep, failures=dict(sorted(failures.items())),
                      layers=layers_of, configs=configs)


#: select_model options that train_folder and select_on_folder take, with their defaults
#: (those of the command line: probabilities for every head, the fast search).
_SELECTION_DEFAULTS = {"heads": None, "scoring": DEFAULT_SCORING, "rule": DEFAULT_RULE,
                       "search": "fast", "n_finalists": 2, "n_splits": 5, "n_repeats": 3,
                       "random_state": 0, "n_jobs": None, "probability": True}


def select_on_folder(data_dir, *, backbones: Sequence[str] = DEFAULT_BACKBONES,
                     weights="DEFAULT", layers: Sequence[str] | None = None,
                     poolings: Sequence[str] = ("avg",), precision: str = "auto",
                     nested: bool = False, cache=None, device="auto", batch_size: int = 32,
                     num_workers: int | None = None, verbose: int = 0,
                     progress: str | None = None, **selection) -> tuple:
    """Featurize a folder's images at every candidate and run the selection on them.

    Parameters are those of :func:`train_folder`.

    Returns
    -------
    data : Bunch
        The folder as :func:`featurize.load_image_folder` read it.
    candidates : Candidates
    result : SelectionResult
    """
    unknown = sorted(set(selection) - set(_SELECTION_DEFAULTS))
    if unknown:
        raise TypeError(f"Unknown selection options {unknown}; expected some of "
                        f"{sorted(_SELECTION_DEFAULTS)}.")
    options = _SELECTION_DEFAULTS | selection
    data = load_image_folder(data_dir)
    _check_weights(list(dict.fromkeys(backbones)), weights)
    # what the selection would refuse after the extraction is refused before it
    check_selection_params(heads=options["heads"], scoring=options["scoring"],
                           rule=options["rule"], search=options["search"],
                           n_finalists=options["n_finalists"],
                           probability=options["probability"],
                           y=np.asarray(data.target_names, dtype=object)[data.target].astype(str),
                           n_splits=options["n_splits"])
    candidates = candidate_features(data, backbones=backbones, weights=weights, layers=layers,
                                    poolings=poolings, precision=precision, cache=cache,
                                    device=device, batch_size=batch_size,
                                    num_workers=num_workers, verbose=verbose, progress=progress)
    result = select_model(candidates.sets, candidates.y, nested=nested,
                          progress=progress or ("bar" if verbose else "none"), **options)
    return data, candidates, result


def train_folder(data_dir, *, backbones: Sequence[str] = DEFAULT_BACKBONES,
                 weights="DEFAULT", layers: Sequence[str] | None = None,
                 poolings: Sequence[str] = ("avg",), precision: str = "auto",
                 nested: bool = False, cache=None, device="auto", batch_size: int = 32,
                 num_workers: int | None = None, verbose: int = 0,
                 progress: str | None = None, return_selection: bool = False,
                 **selection) -> FittedModel:
    """Train a model on a folder-per-class tree (``data_dir/<class>/<images>``): what
    ``featurize train`` does.

    Every candidate feature set is extracted (:func:`candidate_features`), the feature set,
    head and C are chosen by cross-validation on the training images only
    (:func:`classify.select_model`), and the choice is refitted on all of them. Images in
    sub-folders of a class folder belong to that class. Unreadable files are left out and
    recorded.

    Parameters
    ----------
    data_dir : path
    backbones : sequence of str, default=DEFAULT_BACKBONES
        Candidate backbones (see :func:`featurize.list_backbones`).
    weights : str, path or None, default="DEFAULT"
        Weights of a single backbone: a name, a checkpoint (stored as an absolute path, so the
        model works from any folder), or None.
    layers : sequence of str, default=None
        Candidate layers; None: :func:`featurize.networks.layers.default_layers` of each backbone.
    poolings : sequence of str, default=("avg",)
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Saved resolved (``"fp32"`` on a CPU without native bf16): the model computes the same
        features anywhere.
    nested : bool, default=False
        Also estimate the whole selection by nested cross-validation (5x the cost).
    cache : str, path-like, FeatureCache or None, default=None
        HDF5 feature cache: a second run, an evaluation or a report computes nothing again.
    device, batch_size, num_workers
        Run-time options of the extraction.
    verbose : int, default=0
        ``1``: progress bars (extraction, naming the backbones; screening; cross-validation).
    progress : {"auto", "bar", "log", "none"}, default=None
        Overrides ``verbose`` (what the command line uses).
    return_selection : bool, default=False
        Also return the :class:`classify.SelectionResult` (every candidate's scores).
    **selection
        :func:`classify.select_model` options: ``heads``, ``scoring``, ``rule``, ``search``,
        ``n_finalists``, ``n_splits``, ``n_repeats``, ``random_state``, ``n_jobs``,
        ``probability`` (default True: SVM heads are calibrated).

    Returns
    -------
    FittedModel
        Its ``provenance`` holds the choice, the cross-validated scores and the training
        folder; its ``reports`` the tables, the training images (``train_paths``, relative to
        ``data_dir``), their classes (``train_labels``) and the files left out
        (``train_failures``). With ``return_selection=True``, ``(model, selection)``.
    """
    data, candidates, result = select_on_folder(
        data_dir, backbones=backbones, weights=weights, layers=layers, poolings=poolings,
        precision=precision, nested=nested, cache=cache, device=device, batch_size=batch_size,
        num_workers=num_workers, verbose=verbose, progress=progress, **selection)
    model = _fit(result, candidates, data, data_dir)
    return (model, result) if return_selection else model


def _fit(result: SelectionResult, candidates: Candidates, data, data_dir) -> FittedModel:
    # the configuration records the precision that ran: a model trained with fp32 features
    # predicts with fp32 features anywhere
    config = candidates.configs[result.best_feature_set]
    model = fit_selected(result, candidates.sets, candidates.y, featurizer_config=config)
    root = os.fspath(data_dir)

    def relative(path):
        return Path(os.path.relpath(path, root)).as_posix()

    model.provenance.update({"data_dir": os.path.abspath(root),
                             "candidate_layers": candidates.layers,
                             "n_failed_images": len(candidates.failures),
                             "n_skipped_files": len(data.skipped)})
    model.reports["train_paths"] = [relative(data.paths[row]) for row in candidates.rows]
    model.reports["train_labels"] = [str(c) for c in candidates.y]
    model.reports["train_failures"] = [(relative(path), reason) for path, reason in data.skipped]
    model.reports["train_failures"] += [(relative(data.paths[row]), reason)
                                        for row, reason in candidates.failures.items()]
    return model


def _plain(scores: dict) -> dict:
    """Scores as plain floats, NaN (no probabilities) as None: comparable and JSON-ready."""
    return {name: (float(v) if np.isfinite(v) else None) for name, v in scores.items()}


def _layer_pooling(key) -> dict:
    if isinstance(key, tuple) and len(key) == 2:
        return {"layer": key[0], "pooling": key[1]}
    return {}


def fit_selected(selection: SelectionResult, feature_sets, y, *,
                 featurizer_config: dict | None = None) -> FittedModel:
    """Refit the configuration chosen by a selection on all its training data.

    Parameters
    ----------
    selection : SelectionResult
        What :func:`~classify.selection.select_model` returned for ``feature_sets`` and ``y``.
    feature_sets : mapping or array
        The same feature sets as given to the selection.
    y : array-like of shape (n_samples,)
        The same labels.
    featurizer_config : dict, default=None
        CNNFeaturizer parameters of the chosen feature set (or ``{"parts": [...]}``, see
        :func:`featurizer_parts`); ``layer`` and ``pooling`` are taken from the chosen feature
        set's key when it is a ``(layer, pooling)`` tuple and the configuration names neither.

    Returns
    -------
    FittedModel
    """
    key = selection.best_feature_set
    X = feature_sets[key] if isinstance(feature_sets, Mapping) else feature_sets
    X = check_array(X, dtype=(np.float64, np.float32))
    y = np.asarray(y)
    estimator = selection.best_estimator().fit(X, y)
    config = dict(featurizer_config or {})
    if "parts" not in config:
        config = {**_layer_pooling(key), **config}
    shown = describe_featurizer(config)
    cv = selection.best_cv
    classes, counts = np.unique(y, return_counts=True)
    provenance = {
        **version_provenance(),
        "backbone": shown["backbone"],
        "weights": shown["weights"],
        "layer": shown["layer"],
        "pooling": shown["pooling"],
        "feature_set": feature_set_name(key),
        "head": selection.best_head,
        "params": selection.best_params,
        "scoring": selection.scoring,
        "rule": selection.rule,
        "cv": {"n_splits": cv.n_splits, "n_repeats": cv.n_repeats,
               "random_state": cv.random_state, "notes": list(selection.notes)},
        "n_candidates": selection.n_compared,
        "cv_scores": _plain(cv.mean_scores()),
        "cv_std": _plain(cv.std_scores()),
        "classes": [str(c) for c in classes],
        "class_counts": {str(c): int(n) for c, n in zip(classes, counts)},
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
    }
    reports = {"table": selection.table, "per_class": cv.per_class_report(),
               "confusion": cv.confusion_matrix(), "fold_scores": cv.fold_scores,
               # out-of-fold predicted codes and confidences, row i = training row i
               "oof_predictions": cv.oof_predictions, "oof_confidence": cv.oof_confidence}
    if selection.nested is not None:
        provenance["nested_scores"] = _plain(selection.nested.mean_scores())
        provenance["nested_std"] = _plain(selection.nested.std_scores())
        reports["nested"] = selection.nested.fold_scores
    return FittedModel(estimator, featurizer_config=config, provenance=provenance,
                       reports=reports)


def train_model(feature_sets, y, *, featurizer_config: dict | None = None,
                **selection_params) -> FittedModel:
    """Select feature set, head and parameters by cross-validation, then fit on all the data.

    Parameters
    ----------
    feature_sets : mapping of key to array-like, or array-like
        Training features per candidate (layer, pooling); see
        :func:`~classify.selection.select_model`. Use ``(layer, pooling)`` tuples as keys so
        that the model knows how to featurize new images.
    y : array-like of shape (n_samples,)
        Class labels (e.g. ``np.asarray(data.target_names)[data.target]``).
    featurizer_config : dict, default=None
        CNNFeaturizer parameters used to extract ``feature_sets`` (backbone, weights, ...).
    **selection_params
        Passed to :func:`~classify.selection.select_model` (``heads``, ``param_grids``,
        ``probability``, ``scoring``, ``n_splits``, ``n_repeats``, ``nested``, ``n_jobs``...).

    Returns
    -------
    FittedModel
        ``provenance`` holds the choice and its cross-validated scores; ``reports`` the tables.
    """
    selection = select_model(feature_sets, y, **selection_params)
    return fit_selected(selection, feature_sets, y, featurizer_config=featurizer_config)
