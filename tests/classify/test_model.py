"""classify.model: the trained model, its provenance, saving and loading; classify imports
without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification

import classify
from classify import FittedModel, load_model, select_model, train_model
from featurize._version import __version__ as FEATURIZE_VERSION
from featurize.exceptions import ModelVersionError

ROOT = Path(__file__).resolve().parents[2]
GRIDS = {"logreg": {"C": [0.01, 0.1, 1.0]}, "rbf_svm": {"C": [1.0, 10.0]}}


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=120, n_features=40, n_informative=8, n_classes=3,
                               n_clusters_per_class=1, class_sep=2.0, random_state=0)
    names = np.array(["ants", "bees", "wasps"])[y]
    noise = np.random.default_rng(0).normal(size=X.shape)
    sets = {("blocks.5", "avg"): noise.astype(np.float32),
            ("penultimate", "avg"): X.astype(np.float32)}
    return sets, names


@pytest.fixture(scope="module")
def model(data):
    sets, y = data
    return train_model(sets, y, featurizer_config={"backbone": "efficientnet_lite0",
                                                   "weights": "DEFAULT", "batch_size": 16},
                       heads=["logreg", "rbf_svm"], param_grids=GRIDS, n_splits=3, n_repeats=1)


def test_out_of_fold_confidences_are_kept_with_the_model(data):
    """Every training row, tested once per repeat, with the probabilities of its true and its
    predicted class, consistent with the out-of-fold predictions (what the report reads)."""
    sets, y = data
    model = train_model(sets, y, heads=["logreg"], n_splits=3, n_repeats=2)
    oof, conf = model.reports["oof_predictions"], model.reports["oof_confidence"]
    assert oof.shape == (2, len(y)) and conf.shape == (2, len(y), 2) and (oof >= 0).all()
    assert np.isfinite(conf).all() and ((conf > 0) & (conf <= 1)).all()
    right = oof == np.unique(y, return_inverse=True)[1]
    assert right.any() and (~right).any()
    np.testing.assert_array_equal(conf[..., 0][right], conf[..., 1][right])
    assert (conf[..., 1][~right] >= conf[..., 0][~right]).all()


def test_trained_model_records_its_choice(model, data):
    sets, y = data
    assert isinstance(model, FittedModel)
    assert model.featurizer_config == {"backbone": "efficientnet_lite0", "weights": "DEFAULT",
                                       "batch_size": 16, "layer": "penultimate",
                                       "pooling": "avg"}
    p = model.provenance
    assert (p["backbone"], p["layer"], p["pooling"]) == ("efficientnet_lite0", "penultimate",
                                                           "avg")
    assert p["head"] in ("logreg", "rbf_svm") and "C" in p["params"]
    assert p["classes"] == ["ants", "bees", "wasps"]
    assert p["class_counts"] == {name: int((y == name).sum()) for name in p["classes"]}
    assert p["featurize_version"] == FEATURIZE_VERSION
    assert p["format_version"] == classify.FORMAT_VERSION
    assert 0.8 < p["cv_scores"]["balanced_accuracy"] <= 1.0
    assert p["cv"]["n_splits"] == 3 and p["n_samples"] == 120 and p["n_features"] == 40
    assert list(model.classes_) == ["ants", "bees", "wasps"]
    assert set(model.reports) == {"table", "per_class", "confusion", "fold_scores",
                                  "oof_predictions", "oof_confidence"}
    text = model.to_text()
    assert "penultimate" in text and "wasps" in text


def test_predict_features(model, data):
    sets, y = data
    X = sets[("penultimate", "avg")]
    pred = model.predict_features(X)
    np.testing.assert_array_equal(pred, model.estimator.predict(X))
    assert np.mean(pred == y) > 0.9
    if model.has_proba:
        proba = model.predict_proba_features(X)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        np.testing.assert_array_equal(model.classes_[proba.argmax(axis=1)], pred)


def test_nan_rows_are_refused_by_name(model, data):
    X = data[0][("penultimate", "avg")][:5].copy()
    X[3] = np.nan
    with pytest.raises(ValueError, match=r"rows \[3\]"):
        model.predict_features(X)


def test_model_without_probabilities_says_so(data):
    sets, y = data
    svm = train_model(sets, y, heads=["linear_svm"], param_grids={"linear_svm": {"C": [0.01]}},
                      n_splits=3, n_repeats=1)
    assert not svm.has_proba
    with pytest.raises(AttributeError, match="probability=True"):
        svm.predict_proba_features(sets[("penultimate", "avg")])
    calibrated = train_model(sets, y, heads=["linear_svm"], probability=True,
                             param_grids={"linear_svm": {"C": [0.01]}}, n_splits=3, n_repeats=1,
                             search="exhaustive")  # the fast search calibrates the refit only
    assert calibrated.predict_proba_features(sets[("penultimate", "avg")]).shape == (120, 3)
    assert svm.cv_scores["log_loss"] is None  # no probabilities, no log loss
    assert calibrated.cv_scores["log_loss"] > 0


def test_save_and_load(model, data, tmp_path):
    path = tmp_path / "model.joblib"
    model.save(path)
    loaded = load_model(path)
    X = data[0][("penultimate", "avg")]
    np.testing.assert_array_equal(loaded.predict_features(X), model.predict_features(X))
    assert loaded.provenance == model.provenance
    assert loaded.featurizer_config == model.featurizer_config
    assert loaded.reports["table"].equals(model.reports["table"])
    # plots and reports work from a loaded model alone
    assert "Per-class report" in loaded.to_text()


def test_incompatible_format_is_refused(model, tmp_path):
    path = tmp_path / "old.joblib"
    model.save(path)
    payload = joblib.load(path)
    payload["format_version"] = classify.FORMAT_VERSION + 1
    joblib.dump(payload, path)
    with pytest.raises(ModelVersionError, match=f"format version {classify.FORMAT_VERSION + 1}"):
        load_model(path)


def test_not_a_model_is_refused(tmp_path):
    other = tmp_path / "other.joblib"
    joblib.dump({"weights": [1, 2, 3]}, other)
    with pytest.raises(ValueError, match="not a featurize model"):
        load_model(other)
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"\x00not a pickle at all" * 10)
    with pytest.raises(ValueError, match="not a readable featurize model"):
        load_model(garbage)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.joblib")


def test_featurizer_numbers_cannot_be_overridden(model):
    with pytest.raises(ValueError, match="layer"):
        model.featurizer(layer="blocks.3")


def test_fit_selected_reuses_a_selection(data):
    sets, y = data
    selection = select_model(sets, y, heads=["logreg"], param_grids=GRIDS, n_splits=3,
                             n_repeats=1, nested=True, outer_splits=3)
    model = classify.fit_selected(selection, sets, y, featurizer_config={"backbone": "x"})
    assert model.provenance["params"] == selection.best_params
    assert "nested" in model.reports and "nested_scores" in model.provenance
    assert "Nested cross-validation" in model.to_text()


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          check=False, capture_output=True, text=True, timeout=300)


def test_classify_imports_without_torch_or_matplotlib():
    done = _run_python("""
        import sys
        import classify
        assert "torch" not in sys.modules, "import classify pulled torch"
        assert "matplotlib" not in sys.modules, "import classify pulled matplotlib"
        print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_train_save_load_predict_features_without_torch(tmp_path):
    done = _run_python(f"""
        import sys
        import numpy as np
        import classify
        rng = np.random.default_rng(0)
        y = np.repeat(["a", "b"], 20)
        X = rng.normal(size=(40, 8)) + (y == "a")[:, None]
        model = classify.train_model({{("layer", "avg"): X}}, y, heads=["logreg"],
                                     param_grids={{"logreg": {{"C": [0.1, 1.0]}}}},
                                     n_splits=3, n_repeats=1)
        model.save({str(tmp_path / "m.joblib")!r})
        loaded = classify.load_model({str(tmp_path / "m.joblib")!r})
        loaded.predict_features(X)
        assert "torch" not in sys.modules, "the feature path pulled torch"
        print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_predict_on_images_uses_the_stored_featurizer(some_jpegs):
    """End to end on 6 real photos: predict(paths) == predict_features(features of paths)."""
    pytest.importorskip("torch")
    from featurize import extract_features

    paths = some_jpegs[:3] + some_jpegs[6:9]  # 3 ants, 3 bees
    config = {"backbone": "efficientnet_lite0", "layer": "penultimate", "pooling": "avg",
              "device": "cpu", "num_workers": 0, "batch_size": 6}
    X = extract_features(paths, **config)
    y = np.repeat(["ants", "bees"], 3)
    model = train_model({("penultimate", "avg"): X}, y,
                        featurizer_config={k: v for k, v in config.items() if k != "layer"},
                        heads=["logreg"], param_grids={"logreg": {"C": [0.1]}}, n_splits=3,
                        n_repeats=1)
    assert model.featurizer_config["layer"] == "penultimate"
    proba = model.predict_proba(paths)
    np.testing.assert_allclose(proba, model.predict_proba_features(X), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(model.predict(paths), model.predict_features(X))
