"""The model file: its layout, its format versions, writing and reading it.

:class:`classify.model.FittedModel` holds four things (the fitted head, the featurizer
configuration, the provenance and the reports); this module writes them to one joblib file
with the format and the versions that wrote it, and reads them back, refusing clearly what it
cannot read. A fine-tuned checkpoint of ``featurize finetune`` (a torch zip file) is read as
the same four things by :mod:`classify.finetuned`.

.. warning::
   Model files are pickles (joblib). Loading one runs code chosen by whoever wrote it: load only
   files you made or trust, never files from untrusted sources.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import zlib

import joblib
import sklearn

from classify.finetuned import read_finetuned
from featurize._version import __version__ as _featurize_version  # torch-free modules
from featurize.exceptions import ModelVersionError
from featurize.storage.atomic import atomic_path
from featurize.storage.filekinds import describe_file, is_hdf5

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "featurize_version", "read_model_state", "version_provenance",
           "write_model_state"]

#: Layout version of saved model files; bump it when a change makes old files unreadable.
#: 2: ``featurizer_config`` may be ``{"parts": [config, ...]}`` (features of several backbones,
#: concatenated). 3: ``reports["train_paths"]`` are relative to the training folder and
#: ``reports["train_labels"]`` holds their classes. Files of versions 1 and 2 are still read.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
FORMAT = "featurize.classify.FittedModel"
#: The parts of a model that its file holds (the arguments of ``FittedModel``).
STATE_KEYS = ("estimator", "featurizer_config", "provenance", "reports")


def featurize_version() -> str:
    """The version of featurize that writes models."""
    return _featurize_version


def version_provenance() -> dict:
    """What every new model records of its making: ``format_version``,
    ``featurize_version``, ``sklearn_version`` and ``created`` (UTC, ISO 8601)."""
    return {"format_version": FORMAT_VERSION, "featurize_version": featurize_version(),
            "sklearn_version": sklearn.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


def write_model_state(path: str | os.PathLike, state: dict, *, compress: int = 3) -> None:
    """Write a model's parts (``estimator``, ``featurizer_config``, ``provenance``,
    ``reports``) to ``path`` with joblib, with the format and the versions that wrote them.

    The file is written beside the target and renamed: Ctrl-C or a kill never leaves a partial
    model.
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "featurize_version": featurize_version(),
        "sklearn_version": sklearn.__version__,
        "state": {key: state[key] for key in STATE_KEYS},
    }
    with atomic_path(path) as tmp:
        joblib.dump(payload, tmp, compress=compress)


def read_model_state(path: str | os.PathLike) -> dict:
    """The parts of the model in ``path`` (a file of :func:`write_model_state` or a
    ``featurize finetune`` checkpoint), as keyword arguments of ``FittedModel``.

    .. warning::
       This unpickles the file, which can run arbitrary code. Read only files you trust.

    Raises
    ------
    featurize.exceptions.ModelVersionError
        The file was written with another ``format_version`` than this featurize reads.
    ValueError
        The file is not a featurize model.
    FileNotFoundError
        No such file.
    """
    with open(path, "rb") as fh:
        if fh.read(2) == b"PK":  # a torch (zip) checkpoint: a fine-tuned network?
            return read_finetuned(path)
    name = os.fspath(path)
    if is_hdf5(path):
        raise ValueError(f"{name!r} is not a model: it is {describe_file(path)}. Pass the model "
                         "file that `featurize train` wrote (--out), or a `featurize finetune` "
                         "checkpoint.")
    try:
        payload = joblib.load(path)
    except zlib.error as exc:
        raise ValueError(f"{name!r} is damaged: it is {describe_file(path)} whose compressed "
                         f"data does not decompress (zlib: {exc}); it changed after it was "
                         "written (a partial copy or download, a disk error). Restore it from "
                         "a copy or train the model again.") from exc
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError, AttributeError,
            ImportError, ValueError) as exc:
        raise ValueError(f"{name!r} is not a readable featurize model file: it is "
                         f"{describe_file(path)} ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{name!r} is not a featurize model file (it holds a "
                         f"{type(payload).__name__}); write models with FittedModel.save.")
    version = payload.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ModelVersionError(
            f"{name!r} has model format version {version!r} (written by featurize "
            f"{payload.get('featurize_version')}); this featurize {featurize_version()} reads "
            f"format versions {', '.join(map(str, READABLE_VERSIONS))}. Retrain the model with "
            f"this version, or load it with featurize {payload.get('featurize_version')}."
        )
    if payload.get("sklearn_version") != sklearn.__version__:
        logger.warning("model %s was written with scikit-learn %s; this is %s",
                       name, payload.get("sklearn_version"), sklearn.__version__)
    return dict(payload["state"])
