"""A trained model as one ONNX file: normalized images in, class probabilities out.

:func:`export_onnx` writes what ``featurize export-model`` writes: every backbone of the
model's featurizer truncated at its layers (:class:`featurize.networks.layers.TruncatedNet`,
the module the ONNX Runtime and OpenVINO engines run), the pooling, the concatenation, the
scaler and the head, as torch operations exported by the engines' own export
(:func:`featurize.networks.engines.export_onnx`). The head becomes torch operations built
from the fitted scikit-learn estimator's coefficients, and is checked against the
estimator's ``predict_proba`` before the file is written. The file runs with
``onnxruntime`` alone (no torch, featurize or scikit-learn); its metadata (ONNX
``metadata_props``) holds what the caller needs:

``classes``
    JSON list: the class of each probability column.
``inputs``
    JSON list, one entry per graph input: ``name``, ``backbones`` and the preprocessing
    (``resize_size``: the shorter side is resized to it; ``crop_size``: then the centre square
    of that side is kept; ``mean``, ``std``: of pixel values scaled to [0, 1];
    ``interpolation``: the resampling filter of featurize's anti-aliased resize, which the
    README's snippet reproduces in numpy). The input is ``float32 (N, 3, crop, crop)``
    normalized images. Backbones that share a preprocessing share an input; a concatenation of
    backbones trained at different resolutions (the three EfficientNet-Lite networks: 224,
    240 and 260 px) has one input per resolution, each image prepared once for each, exactly
    as featurize does (no resize inside the graph, which would not be featurize's
    anti-aliased resize of the original image).
``featurize_version``, ``featurizer_config``, ``head``, ``output``
    Provenance, and the name of the output (``probabilities``, ``float32 (N, n_classes)``).

Supported heads: a pipeline of ``StandardScaler`` steps and a ``LogisticRegression``, a
``CalibratedClassifierCV`` (``method="sigmoid"`` or ``"temperature"``) of a linear classifier
(``LinearSVC``, ``LogisticRegression``, ...), or the last layer of a fine-tuned network. An
RBF SVM, an isotonic calibration or an uncalibrated SVM (no probabilities) is refused with
an error naming it.

torch is imported when a model is exported, not when this module is.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from classify.features import build_extractors, featurizer_parts
from featurize.storage.atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["OUTPUT_NAME", "SUPPORTED_HEADS", "ExportedFile", "export_onnx"]

#: Name of the graph's output.
OUTPUT_NAME = "probabilities"
#: What :func:`export_onnx` can express, for error messages.
SUPPORTED_HEADS = ("StandardScaler steps, then LogisticRegression; CalibratedClassifierCV "
                   "(method 'sigmoid' or 'temperature') of a linear classifier (LinearSVC, "
                   "LogisticRegression, RidgeClassifier); a fine-tuned network's last layer")
#: Largest difference allowed between the exported head and the estimator's predict_proba.
_HEAD_TOLERANCE = 1e-4


@dataclass
class ExportedFile:
    """What :func:`export_onnx` wrote.

    Attributes
    ----------
    path : str
    nbytes : int
        Size of the file.
    inputs : list of dict
        The ``inputs`` metadata (name, backbones, preprocessing).
    classes : list of str
    head_max_diff : float
        Largest difference between the exported head and the estimator's ``predict_proba``
        on the check features.
    """

    path: str
    nbytes: int
    inputs: list
    classes: list
    head_max_diff: float


# -- the head as torch operations -------------------------------------------------------------

def _unsupported(what: str) -> ValueError:
    return ValueError(f"Cannot export this model to ONNX: its head is {what}. Supported heads: "
                      f"{SUPPORTED_HEADS}. Train a model with a logreg or a calibrated "
                      "linear_svm head (`featurize train --heads logreg,linear_svm`).")


def _linear(estimator) -> tuple[np.ndarray, np.ndarray]:
    """``(coef (k, n_features), intercept (k,))`` of a linear decision function."""
    from sklearn.linear_model._base import LinearClassifierMixin

    from classify.finetuned import LinearHead

    if not isinstance(estimator, (LinearClassifierMixin, LinearHead)):
        raise _unsupported(_name(estimator))
    coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
    intercept = np.broadcast_to(np.asarray(estimator.intercept_, dtype=np.float64),
                                (coef.shape[0],))
    return coef, np.array(intercept)


def _name(estimator) -> str:
    name = type(estimator).__name__
    kernel = getattr(estimator, "kernel", None)
    return f"{name}(kernel={kernel!r})" if isinstance(kernel, str) else name


def _head_module(estimator, n_features: int):
    """The estimator's ``predict_proba`` as a torch module on float32 features."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from classify.finetuned import LinearHead

    shift, scale = np.zeros(n_features), np.ones(n_features)
    steps = list(estimator.named_steps.values()) if isinstance(estimator, Pipeline) \
        else [estimator]
    for step in steps[:-1]:
        if not isinstance(step, StandardScaler):
            raise _unsupported(f"a pipeline with a {_name(step)} step")
        mean = step.mean_ if step.mean_ is not None else np.zeros(n_features)
        std = step.scale_ if step.scale_ is not None else np.ones(n_features)
        # x -> ((x - shift) / scale - mean) / std
        shift, scale = shift + scale * mean, scale * std
    clf = steps[-1]
    classes = np.asarray(clf.classes_)
    branches = []
    if isinstance(clf, (LogisticRegression, LinearHead)):
        coef, intercept = _linear(clf)
        kind = "softmax" if isinstance(clf, LinearHead) or coef.shape[0] > 1 else "binary"
        branches.append((coef, intercept, kind, None, np.arange(len(classes))))
    elif isinstance(clf, CalibratedClassifierCV):
        for calibrated in clf.calibrated_classifiers_:
            coef, intercept = _linear(calibrated.estimator)
            columns = np.searchsorted(classes, calibrated.estimator.classes_)
            if calibrated.method == "sigmoid":
                params = np.array([[c.a_, c.b_] for c in calibrated.calibrators], np.float64)
                branches.append((coef, intercept, "platt", params, columns))
            elif calibrated.method == "temperature":
                beta = float(calibrated.calibrators[0].beta_)
                branches.append((coef, intercept, "temperature", beta, columns))
            else:
                raise _unsupported(f"a CalibratedClassifierCV with method="
                                   f"{calibrated.method!r} of {_name(calibrated.estimator)}")
    else:
        raise _unsupported(_name(clf) + ("" if hasattr(clf, "predict_proba")
                                         else " (it gives no probabilities)"))
    return _modules()[0](shift, scale, branches, len(classes))


@functools.cache
def _modules() -> tuple:
    """The torch modules of an export, ``(Head, WholeModel)``: defined on first use, so that
    this module imports without torch."""
    import torch
    from torch import nn

    class Head(nn.Module):
        """Features -> the mean of each branch's probabilities (one branch, except for a
        CalibratedClassifierCV with ensemble=True)."""

        def __init__(self, shift, scale, branches, n_classes: int):
            super().__init__()
            self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32))
            self.register_buffer("inv_scale", torch.tensor(1.0 / scale, dtype=torch.float32))
            self.n_classes = n_classes
            self.kinds, self.betas = [], []
            for i, (coef, intercept, kind, params, columns) in enumerate(branches):
                self.register_buffer(f"weight{i}", torch.tensor(coef.T, dtype=torch.float32))
                self.register_buffer(f"bias{i}", torch.tensor(intercept, dtype=torch.float32))
                if kind == "platt":  # (a, b) per column, and the class of each column
                    self.register_buffer(f"platt{i}", torch.tensor(params, dtype=torch.float32))
                    spread = np.zeros((len(columns), n_classes))
                    spread[np.arange(len(columns)), columns] = 1.0
                    self.register_buffer(f"spread{i}", torch.tensor(spread, dtype=torch.float32))
                self.kinds.append(kind)
                self.betas.append(params if kind == "temperature" else None)

        def branch(self, i: int, x):
            z = x @ getattr(self, f"weight{i}") + getattr(self, f"bias{i}")
            kind = self.kinds[i]
            if kind == "softmax":
                return torch.softmax(z, dim=1)
            if kind == "binary":
                p = torch.sigmoid(z)
                return torch.cat([1.0 - p, p], dim=1)
            if kind == "temperature":
                logits = torch.cat([-z, z], dim=1) if z.shape[1] == 1 else z
                return torch.softmax(self.betas[i] * logits, dim=1)
            platt = getattr(self, f"platt{i}")
            p = torch.sigmoid(-(platt[:, 0] * z + platt[:, 1]))  # sklearn's _SigmoidCalibration
            if self.n_classes == 2:
                return torch.cat([1.0 - p, p], dim=1)
            full = p @ getattr(self, f"spread{i}")
            total = full.sum(dim=1, keepdim=True)
            # all zero: uniform, as scikit-learn does
            return torch.where(total > 0, full / torch.clamp(total, min=1e-30),
                               torch.full_like(full, 1.0 / self.n_classes))

        def forward(self, x):
            x = (x - self.shift) * self.inv_scale
            proba = self.branch(0, x)
            for i in range(1, len(self.kinds)):
                proba = proba + self.branch(i, x)
            return proba / len(self.kinds) if len(self.kinds) > 1 else proba

    class WholeModel(nn.Module):
        """Normalized images (one tensor per input) -> class probabilities."""

        def __init__(self, nets, input_of, head):
            super().__init__()
            self.nets = nn.ModuleList(nets)
            self.input_of = list(input_of)
            self.head = head

        def forward(self, *images):
            features = [out.flatten(1) for i, net in enumerate(self.nets)
                        for out in net(images[self.input_of[i]])]
            return self.head(torch.cat(features, dim=1))

    return Head, WholeModel


def _check_head(head, estimator, n_features: int, seed: int = 0) -> float:
    """Largest difference between ``head`` and ``estimator.predict_proba`` on features drawn
    around the training features (the scaler's mean and scale, when there is one)."""
    import torch
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(64, n_features))
    first = estimator.steps[0][1] if isinstance(estimator, Pipeline) else None
    if getattr(first, "scale_", None) is not None:
        X = X * first.scale_ + (first.mean_ if first.mean_ is not None else 0.0)
    X = X.astype(np.float32)
    expected = estimator.predict_proba(X)
    with torch.no_grad():
        got = head(torch.from_numpy(X)).numpy()
    return float(np.abs(got.astype(np.float64) - expected).max())


# -- the whole model ----------------------------------------------------------------------------

class _Normalized:
    """Stands for the preprocessing in a TruncatedNet whose input is already normalized."""

    @staticmethod
    def normalize(batch):
        return batch


def _inputs_of(extractors) -> tuple[list[dict], list[int]]:
    """One graph input per distinct preprocessing; the input of each extractor."""
    inputs, input_of = [], []
    for extractor in extractors:
        prep = extractor.preprocessing.to_dict()
        for index, entry in enumerate(inputs):
            if {k: entry[k] for k in prep} == prep:
                entry["backbones"].append(extractor.backbone.name)
                input_of.append(index)
                break
        else:
            input_of.append(len(inputs))
            inputs.append({"name": "", "backbones": [extractor.backbone.name], **prep})
    for index, entry in enumerate(inputs):
        entry["name"] = "images" if len(inputs) == 1 else f"images_{index}"
    return inputs, input_of


def export_onnx(model, path: str | os.PathLike) -> ExportedFile:
    """Write a trained model as one ONNX graph: normalized images in, probabilities out.

    Parameters
    ----------
    model : classify.FittedModel
        A model of ``featurize train`` (any featurizer configuration, a concatenation of
        backbones included), of :meth:`classify.FittedModel.from_pipeline`, or a fine-tuned
        checkpoint read by :func:`classify.load_model`.
    path : str or os.PathLike
        The ``.onnx`` file to write (replaced atomically).

    Returns
    -------
    ExportedFile

    Raises
    ------
    ValueError
        The head cannot be expressed (the message names it and what is supported), or the
        exported head disagrees with the estimator.
    featurize.exceptions.BackboneError
        A backbone cannot be exported.

    Notes
    -----
    The graph computes in float32. A model trained with bf16 or fp16 features (on a GPU)
    exports too; its probabilities then differ from the model's by that rounding.
    """
    import copy

    import onnx
    import torch

    from featurize._version import __version__
    from featurize.networks.engines import export_onnx as export_graph
    from featurize.networks.layers import TruncatedNet, penultimate_module

    config = model.featurizer_config
    estimator = model.estimator
    n_features = int(getattr(estimator, "n_features_in_", 0)
                     or np.asarray(getattr(estimator, "coef_", np.zeros((1, 0)))).shape[1])
    head = _head_module(estimator, n_features)  # refused before any network is loaded
    difference = _check_head(head, estimator, n_features)
    if not difference <= _HEAD_TOLERANCE:
        raise ValueError(f"The exported head disagrees with the estimator's predict_proba by "
                         f"{difference:.2g} (> {_HEAD_TOLERANCE:g}) on check features; this "
                         f"head ({_name(estimator)}) cannot be exported faithfully.")
    reduced = sorted({str(p.get("precision")) for p in featurizer_parts(config)}
                     & {"bf16", "fp16"})
    if reduced:
        logger.warning("The model's features were computed in %s; the ONNX graph computes "
                       "float32, so its probabilities differ by that rounding.",
                       ", ".join(reduced))
    extractors = build_extractors(config, "cpu")
    inputs, input_of = _inputs_of(extractors)
    nets = []
    for extractor in extractors:
        net = copy.deepcopy(extractor.model).float().eval()
        nets.append(TruncatedNet(net, extractor.layers,
                                 penultimate_module(net, extractor.layer_infos), _Normalized(),
                                 extractor.pooling))
    whole = _modules()[1](nets, input_of, head).eval()
    width = sum(sum(e.widths.values()) for e in extractors)
    if width != n_features:
        raise ValueError(f"The model's featurizer gives {width} features and its head reads "
                         f"{n_features}: the model is inconsistent and cannot be exported.")
    examples = tuple(torch.zeros(1, 3, entry["crop_size"], entry["crop_size"])
                     for entry in inputs)
    try:
        graph = onnx.load_from_string(export_graph(
            whole, examples, input_names=[entry["name"] for entry in inputs],
            output_names=[OUTPUT_NAME]))
    except Exception as exc:  # the exporter raises many types for unsupported networks
        from featurize.exceptions import BackboneError

        names = ", ".join(e.backbone.name for e in extractors)
        raise BackboneError(f"Cannot export the networks of this model ({names}) to ONNX: "
                            f"{type(exc).__name__}: {exc}") from exc
    classes = [str(c) for c in model.classes_]
    onnx.helper.set_model_props(graph, {
        "classes": json.dumps(classes),
        "inputs": json.dumps(inputs),
        "output": OUTPUT_NAME,
        "featurize_version": __version__,
        "featurizer_config": json.dumps(config, default=str),
        "head": str(model.provenance.get("head") or _name(estimator)),
    })
    graph.doc_string = (f"featurize {__version__} model: float32 normalized images "
                        f"({', '.join(e['name'] for e in inputs)}) -> {OUTPUT_NAME} of "
                        f"{len(classes)} classes; see the metadata")
    target = os.fspath(path)
    with atomic_path(target) as tmp:
        onnx.save(graph, tmp)
    return ExportedFile(path=target, nbytes=os.path.getsize(target), inputs=inputs,
                        classes=classes, head_max_diff=difference)
