"""CNNFeaturizer as a scikit-learn citizen: clone, pickle, Pipeline, CV, GridSearchCV, pandas."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featurize import CNNFeaturizer, load_image_folder
from featurize.exceptions import FeatureExtractionWarning, ImageDecodeError

RANDOM = {"backbone": "resnet18", "weights": None, "device": "cpu"}


def test_init_stores_parameters_only():
    f = CNNFeaturizer(backbone="no_such_backbone", layer="x")
    assert vars(f) == f.get_params()
    assert not hasattr(f, "_extractor")


def test_invalid_parameter_is_reported_in_sklearn_wording():
    with pytest.raises(ValueError, match="The 'pooling' option of CNNFeaturizer must be"):
        CNNFeaturizer(pooling="median").fit()


def test_clone_does_not_load_weights_and_pickle_drops_the_network(some_jpegs):
    f = CNNFeaturizer(**RANDOM).fit()
    assert hasattr(f, "_extractor")
    assert not hasattr(clone(f), "_extractor")
    blob = pickle.dumps(f)
    assert len(blob) < 50_000  # no weights inside
    restored = pickle.loads(blob)
    np.testing.assert_array_equal(restored.transform(some_jpegs[:3]), f.transform(some_jpegs[:3]))
    np.testing.assert_array_equal(clone(f).fit().transform(some_jpegs[:3]),
                                  f.transform(some_jpegs[:3]))


def test_unfitted_transform_raises():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        CNNFeaturizer(**RANDOM).transform(["a.jpg"])


def test_feature_names_and_pandas_output(some_jpegs):
    pd = pytest.importorskip("pandas")
    f = CNNFeaturizer(layer=["layer3", "layer4"], **RANDOM).set_output(transform="pandas")
    paths = pd.Series(some_jpegs[:2], index=["a", "b"])
    out = f.fit(paths).transform(paths)
    assert isinstance(out, pd.DataFrame) and out.shape == (2, 256 + 512)
    assert list(out.index) == ["a", "b"]
    assert out.columns[0] == "layer3_avg_0" and out.columns[-1] == "layer4_avg_511"
    assert f.feature_widths_ == {"layer3": 256, "layer4": 512}


def test_nan_mode_exposes_failures(tmp_path, some_jpegs):
    bad = tmp_path / "text.jpg"
    bad.write_text("hello")
    f = CNNFeaturizer(on_error="nan", **RANDOM).fit()
    with pytest.warns(FeatureExtractionWarning, match="text.jpg") as record:
        X = f.transform([some_jpegs[0], str(bad)])
    assert np.isnan(X[1]).all() and np.isfinite(X[0]).all()
    (failure,) = record[0].message.failures
    assert failure["row"] == 1 and failure["source"].endswith("text.jpg")
    with pytest.raises(ImageDecodeError, match="text.jpg"):
        CNNFeaturizer(**RANDOM).fit().transform([str(bad)])


def test_pipeline_cross_val_and_grid_search_with_loky_workers(hymenoptera):
    data = load_image_folder(hymenoptera / "train")
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(data.target == c), 12, replace=False)
                          for c in (0, 1)])
    paths = [data.paths[i] for i in idx]
    y = data.target[idx]
    pipe = make_pipeline(CNNFeaturizer(layer="layer2", **RANDOM), StandardScaler(),
                         LogisticRegression(max_iter=500))
    scores = cross_val_score(pipe, paths, y, cv=3)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    grid = GridSearchCV(pipe, {"cnnfeaturizer__pooling": ["avg", "max"]}, cv=2, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        grid.fit(paths, y)
    assert grid.best_params_["cnnfeaturizer__pooling"] in ("avg", "max")
    assert len(grid.cv_results_["mean_test_score"]) == 2


def test_embedded_backbone_end_to_end_on_ants_and_bees(hymenoptera):
    """The done-when criterion of the core issue: >= 0.93 val accuracy, real weights."""
    train = load_image_folder(hymenoptera / "train")
    val = load_image_folder(hymenoptera / "val")
    clf = make_pipeline(CNNFeaturizer(), StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    clf.fit(train.paths, train.target)
    accuracy = clf.score(val.paths, val.target)
    print(f"efficientnet_lite0 + logreg(C=0.1): val accuracy {accuracy:.4f}")
    assert accuracy >= 0.93


def test_common_behaviours_on_images(some_jpegs):
    """The estimator checks that need images instead of a numeric matrix (see test_common)."""
    f = CNNFeaturizer(**RANDOM).fit(some_jpegs)
    state = {k: v for k, v in vars(f).items() if k != "_extractor"}
    X = f.transform(some_jpegs[:6])
    assert X.dtype == np.float32 and X.shape == (6, 512)
    assert {k: v for k, v in vars(f).items() if k != "_extractor"}.keys() == state.keys()
    order = np.array([3, 0, 5, 1, 4, 2])
    np.testing.assert_allclose(f.transform([some_jpegs[i] for i in order]), X[order],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f.transform(some_jpegs[2:4]), X[2:4], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(f.fit(some_jpegs[:2]).transform(some_jpegs[:6]), X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(f)).transform(some_jpegs[:6]), X)


def test_cross_val_score_with_cache_runs_the_network_once_per_image(some_jpegs, tmp_path,
                                                                      monkeypatch):
    """Issue 3: with a cache, 5-fold CV extracts each image once in total, not once per fold."""
    from featurize.extraction import Extractor

    computed = []
    real = Extractor._forward_once

    def counting(self, batch):
        computed.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(Extractor, "_forward_once", counting)
    y = np.array([0] * 6 + [1] * 6)

    def pipe(cache):
        return make_pipeline(CNNFeaturizer(cache=cache, **RANDOM), StandardScaler(),
                             LogisticRegression(max_iter=500))

    uncached = cross_val_score(pipe(None), some_jpegs, y, cv=5)
    assert sum(computed) == 5 * len(some_jpegs)  # every fold transforms every image once
    computed.clear()
    cached = cross_val_score(pipe(tmp_path / "feats.h5"), some_jpegs, y, cv=5)
    assert sum(computed) == len(some_jpegs)
    np.testing.assert_allclose(cached, uncached)
    computed.clear()
    cross_val_score(pipe(tmp_path / "feats.h5"), some_jpegs, y, cv=3)
    assert sum(computed) == 0  # a re-run (other folds, same images) computes nothing
