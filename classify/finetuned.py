"""A fine-tuned network (a checkpoint of :func:`featurize.finetuning.finetune.finetune`) read
as a model: its penultimate features, then its own last layer as a fixed linear head."""

from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from featurize._version import __version__  # torch-free module

__all__ = ["LinearHead", "read_finetuned"]


class LinearHead(ClassifierMixin, BaseEstimator):
    """A fixed linear classifier (``coef_``, ``intercept_``, softmax probabilities): the last
    layer of a fine-tuned network, applied to its penultimate features."""

    def __init__(self, coef=None, intercept=None, classes=None):
        self.coef = coef
        self.intercept = intercept
        self.classes = classes

    def fit(self, X=None, y=None):
        self.coef_ = np.asarray(self.coef, dtype=np.float64)
        self.intercept_ = np.asarray(self.intercept, dtype=np.float64)
        self.classes_ = np.asarray(self.classes)
        return self

    def decision_function(self, X):
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict_proba(self, X):
        z = self.decision_function(X)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.decision_function(X).argmax(axis=1)]


def read_finetuned(path) -> dict:
    """A checkpoint of :func:`featurize.finetuning.finetune.finetune` as the parts of a model that
    predicts like a trained one (``FittedModel(**parts)``): penultimate features of the
    fine-tuned network, then its classifier."""
    import torch

    from featurize.finetuning.finetune import is_finetuned_checkpoint

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a readable featurize model file "
                         f"({type(exc).__name__}: {exc}).") from exc
    if not is_finetuned_checkpoint(payload):
        raise ValueError(f"{os.fspath(path)!r} is a torch checkpoint, not a featurize model: "
                         "train one with `featurize train` or `featurize finetune`.")
    head = LinearHead(payload["head_weight"].numpy(), payload["head_bias"].numpy(),
                      payload["classes"]).fit()
    config = {"backbone": payload["backbone"], "weights": os.path.abspath(os.fspath(path)),
              "layer": "penultimate", "pooling": "avg"}
    provenance = {"backbone": payload["backbone"], "weights": config["weights"],
                  "layer": "penultimate", "pooling": "avg", "head": "fine-tuned",
                  "params": {"best_epoch": payload["best_epoch"], "seed": payload["seed"]},
                  "classes": payload["classes"], "scoring": "balanced_accuracy",
                  "val_scores": {"balanced_accuracy": payload["val_balanced_accuracy"]},
                  "history": payload["history"], "featurize_version": __version__}
    return {"estimator": head, "featurizer_config": config, "provenance": provenance,
            "reports": {"val_paths": payload["val_paths"]}}
