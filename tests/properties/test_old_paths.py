"""Modules that moved into featurize's sub-packages keep their old import paths."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest

#: old path -> where the module lives now (the paths users import in scripts and notebooks)
MOVED = {
    "featurize.cache": "featurize.storage.cache",
    "featurize.cache_tools": "featurize.storage.cache_tools",
    "featurize.keys": "featurize.storage.keys",
    "featurize.decoding": "featurize.images.decoding",
    "featurize.folder": "featurize.images.folder",
    "featurize.datasets": "featurize.images.datasets",
    "featurize.backbones": "featurize.networks.backbones",
    "featurize.layers": "featurize.networks.layers",
    "featurize.pooling": "featurize.networks.pooling",
    "featurize.runtimes": "featurize.networks.runtimes",
    "featurize.estimator": "featurize.extraction.estimator",
    "featurize.loop": "featurize.extraction.loop",
    "featurize.finetune": "featurize.finetuning.finetune",
}


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_an_old_path_is_the_module_itself(old, new):
    # the same module object: a monkeypatch or an isinstance check through either path agrees
    assert importlib.import_module(old) is importlib.import_module(new)


def test_the_old_names_of_featurize_extraction_are_still_there():
    from featurize.extraction import Extractor, extract_features, extract_many
    from featurize.extraction.extractor import Extractor as real

    assert Extractor is real and callable(extract_features) and callable(extract_many)


def test_an_estimator_pickled_under_the_old_path_loads_without_torch():
    from featurize.estimator import CNNFeaturizer

    # a pickle written before the move names the old module (protocol 0 spells it out)
    blob = pickle.dumps(CNNFeaturizer(layer="blocks.2"), protocol=0)
    assert b"featurize.extraction.estimator" in blob
    blob = blob.replace(b"featurize.extraction.estimator", b"featurize.estimator")
    code = ("import pickle, sys; est = pickle.loads(sys.stdin.buffer.read()); "
            "assert est.layer == 'blocks.2', est; assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], input=blob, check=False,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
