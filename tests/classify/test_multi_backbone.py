"""Several backbones as candidates, and a model that reads their concatenated features."""

from __future__ import annotations

import joblib
import numpy as np
import pytest

from classify import load_model
from classify.model import FittedModel, describe_featurizer, featurizer_parts
from classify.training import candidate_features
from featurize import load_image_folder

BACKBONES = ["efficientnet_lite0", "efficientnet_lite1"]  # real embedded weights


@pytest.fixture(scope="module")
def data(hymenoptera, tmp_path_factory):
    """Five ants and five bees (real JPEGs), as a folder-per-class tree."""
    root = tmp_path_factory.mktemp("few")
    for name in ("ants", "bees"):
        (root / name).mkdir()
        for src in sorted((hymenoptera / "train" / name).glob("*.jpg"))[:5]:
            (root / name / src.name).write_bytes(src.read_bytes())
    return load_image_folder(root)


RUNTIME = dict(device="cpu", batch_size=8, num_workers=0)


@pytest.fixture(scope="module")
def candidates(data):
    return candidate_features(data, backbones=BACKBONES, precision="fp32", **RUNTIME)


def test_every_backbone_layer_and_the_concatenation_are_candidates(candidates):
    sets, y, failures, layers, configs = (candidates.sets, candidates.y, candidates.failures,
                                          candidates.layers, candidates.configs)
    assert not failures and len(y) == 10
    assert set(layers) == set(BACKBONES)
    singles = {(f"{b}:{layer}", "avg") for b in BACKBONES for layer in layers[b]}
    concat = ("concat:" + "+".join(BACKBONES), "avg")
    assert set(sets) == singles | {concat}
    members = [sets[(f"{b}:{layer}", "avg")] for b in BACKBONES for layer in layers[b][-2:]]
    np.testing.assert_array_equal(sets[concat], np.hstack(members))
    assert [part["backbone"] for part in featurizer_parts(configs[concat])] == BACKBONES
    assert configs[("efficientnet_lite1:penultimate", "avg")]["backbone"] == "efficientnet_lite1"


def test_a_concatenated_model_featurizes_images_as_it_was_trained(candidates, data):
    """The model's own featurizer (a FeatureUnion) and the CLI's extraction give the training
    rows, column for column, for the concatenation of real backbones."""
    from sklearn.linear_model import LogisticRegression

    sets, y, configs = candidates.sets, candidates.y, candidates.configs
    key = ("concat:" + "+".join(BACKBONES), "avg")
    config = {"parts": [{**part, "precision": "fp32", "device": "cpu", "num_workers": 0}
                        for part in configs[key]["parts"]]}
    model = FittedModel(LogisticRegression().fit(sets[key], y), featurizer_config=config)
    np.testing.assert_allclose(model.transform(data.paths), sets[key], rtol=1e-5, atol=1e-5)
    features = model.features(data.paths, **RUNTIME)
    assert not features.failures
    np.testing.assert_allclose(features.X, sets[key], rtol=1e-5, atol=1e-5)
    assert describe_featurizer(config)["backbone"] == " + ".join(BACKBONES)
    assert (model.predict(data.paths, batch_size=4) == model.predict_features(sets[key])).all()


def test_weights_of_one_network_refuse_several_backbones(data):
    with pytest.raises(ValueError, match="single backbone"):
        candidate_features(data, backbones=BACKBONES, weights="some.pth", **RUNTIME)


def test_model_files_of_format_1_are_still_read(tmp_path):
    from sklearn.linear_model import LogisticRegression

    model = FittedModel(LogisticRegression().fit([[0.0], [1.0]], [0, 1]),
                        featurizer_config={"backbone": "efficientnet_lite0",
                                           "layer": "penultimate"})
    path = tmp_path / "m.joblib"
    model.save(path)
    payload = joblib.load(path)
    payload["format_version"] = 1
    joblib.dump(payload, path)
    assert load_model(path).featurizer_config["layer"] == "penultimate"
