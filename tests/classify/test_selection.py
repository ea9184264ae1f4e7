"""classify.selection: choosing feature set, head and C by cross-validation, nested CV."""

from __future__ import annotations

import time

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits, load_wine, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from classify import (
    AutoClassifier,
    nested_cross_validate,
    select_model,
    split_columns,
)
from classify.metrics import SCORE_NAMES

SMALL_GRIDS = {"logreg": {"C": [1e-3, 1e-2, 1e-1, 1.0]},
               "linear_svm": {"C": [1e-4, 1e-2]},
               "rbf_svm": {"C": [1.0, 10.0]}}


@pytest.fixture(scope="module")
def digits_sets():
    """Two candidate "layers": the digit pixels (informative) and pure noise."""
    X, y = load_digits(return_X_y=True)
    X, y = X[:240], y[:240]
    noise = np.random.default_rng(0).normal(size=(240, 64))
    return {("pixels", "avg"): X, ("noise", "avg"): noise}, y


@pytest.fixture(scope="module")
def digits_result(digits_sets):
    sets, y = digits_sets
    return select_model(sets, y, param_grids=SMALL_GRIDS, n_splits=3, n_repeats=2,
                        search="exhaustive")


def test_informative_feature_set_wins(digits_result):
    result = digits_result
    assert result.best_feature_set == ("pixels", "avg")
    assert result.best_cv.mean_scores()["accuracy"] > 0.85
    heads = result.head_table()
    assert list(heads.index) == ["pixels/avg", "noise/avg"]
    assert list(heads.columns) == ["logreg", "linear_svm", "rbf_svm"]
    assert (heads.loc["noise/avg"] < 0.3).all()  # chance is 0.1
    assert (heads.loc["pixels/avg"] > 0.8).all()


def test_table_lists_every_candidate(digits_result):
    table = digits_result.table
    assert len(table) == 2 * (4 + 2 + 2)
    assert sorted(table["rank"]) == list(range(1, len(table) + 1))
    assert table.loc[digits_result.best_index, "rank"] == 1
    assert set(table["layer"]) == {"pixels", "noise"} and set(table["pooling"]) == {"avg"}
    for name in SCORE_NAMES[:3]:
        assert table[f"{name}_mean"].between(0, 1).all()
    # log loss exists exactly for the heads with probabilities
    assert table.loc[table["head"] == "logreg", "log_loss_mean"].notna().all()
    assert table.loc[table["head"] != "logreg", "log_loss_mean"].isna().all()
    text = digits_result.to_text()
    assert "Chosen: feature set 'pixels/avg'" in text and "noise/avg" in text


def test_rules(digits_sets):
    sets, y = digits_sets
    best = select_model(sets, y, heads=["logreg"], param_grids=SMALL_GRIDS, n_splits=3,
                        n_repeats=2, rule="best")
    one_se = select_model(sets, y, heads=["logreg"], param_grids=SMALL_GRIDS, n_splits=3,
                          n_repeats=2, rule="one_se")
    means = best.table["balanced_accuracy_mean"]
    assert best.best_score == pytest.approx(means.max())
    # one_se: same feature set and head, C no larger, score within one standard error
    assert one_se.best_feature_set == best.best_feature_set
    assert one_se.best_params["C"] <= best.best_params["C"]
    row = best.table.loc[best.best_index]
    se = row["balanced_accuracy_std"] / np.sqrt(3)
    assert one_se.best_score >= row["balanced_accuracy_mean"] - se - 1e-12
    smaller = best.table[(best.table["feature_set"] == row["feature_set"])
                         & (best.table["C"] < one_se.best_params["C"])]
    assert (smaller["balanced_accuracy_mean"] < row["balanced_accuracy_mean"] - se).all()


def test_one_se_log_loss_takes_the_lowest_log_loss_among_the_c_tied_with_the_best():
    X, y = load_wine(return_X_y=True)
    sets = {"wine": X, "noise": np.random.default_rng(0).normal(size=X.shape)}
    kwargs = {"heads": ["logreg"], "param_grids": {"logreg": {"C": [1e-3, 1e-2, 1e-1, 1.0, 10.0]}},
              "n_splits": 3, "n_repeats": 2}
    best = select_model(sets, y, **kwargs)
    assert best.rule == "best"  # the default
    chosen = select_model(sets, y, rule="one_se_log_loss", **kwargs)
    assert (chosen.best_feature_set, chosen.best_head) == (best.best_feature_set,
                                                           best.best_head)
    table, row = best.table, best.table.loc[best.best_index]
    same = table[(table["feature_set"] == row["feature_set"]) & (table["head"] == row["head"])]
    # tied: the best's lead, split by split (3 folds x 2 repeats), within one standard error
    score = SCORE_NAMES.index("balanced_accuracy")
    lead = (best.split_scores[best.best_index, :, score]
            - best.split_scores[same.index.to_numpy(), :, score])
    assert lead.shape == (len(same), 6)
    tied = same[lead.mean(axis=1) <= lead.std(axis=1) / np.sqrt(3) + 1e-12]
    assert len(tied) > 1  # a real tie, or this test would not tell the rules apart
    assert chosen.best_params["C"] == tied.loc[tied["log_loss_mean"].idxmin(), "C"]
    assert chosen.best_params["C"] != best.best_params["C"]
    assert chosen.table.loc[chosen.best_index, "rank"] == 1
    # the split scores are those the table summarizes, and the summary shows the chosen C
    assert np.allclose(chosen.split_scores.mean(axis=1)[:, score],
                       chosen.table["balanced_accuracy_mean"])
    summary = chosen.summary_table()
    assert chosen.best_index in set(summary["row"])


def test_one_se_log_loss_never_takes_a_candidate_that_failed_on_a_split():
    from classify.rules import decide

    X, y = load_wine(return_X_y=True)
    result = select_model({"wine": X}, y, heads=["logreg"], n_splits=3, n_repeats=2,
                          param_grids={"logreg": {"C": [1e-2, 1e-1, 1.0, 10.0]}},
                          rule="one_se_log_loss")
    chosen = result.best_index
    scores = result.split_scores.copy()
    scores[chosen, 0] = np.nan  # the chosen candidate fails on one split
    again, _ = decide(scores, result.candidates, "balanced_accuracy", "one_se_log_loss", 3)
    assert again != chosen
    assert np.isfinite(scores[again]).all()


def test_the_grid_extends_where_the_rule_chooses_in_clean_decades(monkeypatch):
    from classify import search

    X, y = load_wine(return_X_y=True)
    monkeypatch.setitem(search.FAST_C_GRID, "logreg", [0.01, 0.1, 1.0])
    kwargs = {"n_splits": 3, "n_repeats": 2}
    best = select_model({"wine": X}, y, rule="best", **kwargs)
    assert sorted(best.table["C"]) == [0.01, 0.1, 1.0]  # the best C (0.1) is inside the grid
    chosen = select_model({"wine": X}, y, rule="one_se_log_loss", **kwargs)
    assert chosen.best_params["C"] >= 1.0
    assert 10.0 in set(chosen.table["C"])  # its C was at the end: the grid went one further
    assert repr(search.extension([1e-6, 1e-4], 1e-6)) == "1e-07"
    assert repr(search.extension([1e-2, 1e2], 1e2)) == "1000.0"


def test_without_probabilities_one_se_log_loss_keeps_the_best_c(digits_sets):
    # SVMs compared uncalibrated have no log loss to break the tie with
    sets, y = digits_sets
    kwargs = {"heads": ["linear_svm"], "n_splits": 3, "n_repeats": 2}
    best = select_model(sets, y, rule="best", **kwargs)
    chosen = select_model(sets, y, rule="one_se_log_loss", **kwargs)
    assert chosen.table["log_loss_mean"].isna().all()
    assert chosen.best_params == best.best_params


def test_regularization_is_tuned_per_data_set():
    # A weak signal spread over 400 noisy features and 60 samples needs strong regularization
    # (a fixed C=1 leaves accuracy behind) ...
    rng = np.random.default_rng(0)
    y_wide = np.repeat([0, 1], 30)
    X_wide = rng.normal(size=(60, 400)) + 0.08 * (2 * y_wide - 1)[:, None]
    wide = select_model(X_wide, y_wide, heads=["logreg"], n_splits=4, n_repeats=2, rule="best")
    at_one = wide.table.set_index("C").loc[1.0, "balanced_accuracy_mean"]
    assert wide.best_score > at_one + 0.03
    # ... while 300 samples of 10 features want little
    X_tall, y_tall = make_classification(n_samples=300, n_features=10, n_informative=5,
                                         n_redundant=0, random_state=0)
    tall = select_model(X_tall, y_tall, heads=["logreg"], n_splits=4, n_repeats=2, rule="best")
    assert tall.best_params["C"] >= 100 * wide.best_params["C"]


def test_reproducible_and_parallel_backends_agree(digits_sets):
    sets, y = digits_sets
    kwargs = dict(heads=["logreg", "rbf_svm"], param_grids=SMALL_GRIDS, n_splits=3,
                  n_repeats=1)
    cols = ["balanced_accuracy_mean", "accuracy_mean", "log_loss_mean"]
    ref = select_model(sets, y, **kwargs).table[cols]
    again = select_model(sets, y, n_jobs=2, **kwargs).table[cols]
    np.testing.assert_allclose(again.to_numpy(), ref.to_numpy(), equal_nan=True)
    with joblib.parallel_backend("threading", n_jobs=2):
        threaded = select_model(sets, y, **kwargs).table[cols]
    np.testing.assert_allclose(threaded.to_numpy(), ref.to_numpy(), equal_nan=True)


def test_dask_backend(digits_sets):
    distributed = pytest.importorskip("distributed")
    sets, y = digits_sets
    kwargs = dict(heads=["logreg"], param_grids=SMALL_GRIDS, n_splits=3, n_repeats=1)
    ref = select_model(sets, y, **kwargs).table["balanced_accuracy_mean"]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster), joblib.parallel_backend("dask"):
        remote = select_model(sets, y, **kwargs).table["balanced_accuracy_mean"]
    np.testing.assert_allclose(remote, ref)


def test_nested_cv_never_looks_at_the_outer_test_fold(digits_sets):
    sets, y = digits_sets
    kwargs = dict(heads=["logreg"], param_grids=SMALL_GRIDS, n_splits=3, n_repeats=1,
                  outer_splits=3)
    nested = nested_cross_validate(sets, y, **kwargs)
    folds = nested.fold_scores
    assert len(folds) == 3 and set(folds["feature_set"]) == {"pixels/avg"}
    assert (nested.oof_predictions >= 0).all()
    assert nested.mean_scores()["accuracy"] > 0.85
    # Scramble the features of the first outer test fold: what was chosen and measured inside
    # that fold's selection cannot change, since it only saw the outer training part.
    from classify.splits import AdaptiveStratifiedKFold

    test0 = next(AdaptiveStratifiedKFold(3).split(y=y))[1]
    rng = np.random.default_rng(1)
    scrambled = {key: X.copy() for key, X in sets.items()}
    for X in scrambled.values():
        X[test0] = rng.normal(size=(len(test0), X.shape[1]))
    again = nested_cross_validate(scrambled, y, **kwargs).fold_scores
    assert again.loc[0, ["feature_set", "head", "params"]].tolist() == \
        folds.loc[0, ["feature_set", "head", "params"]].tolist()
    assert again.loc[0, "inner_score"] == folds.loc[0, "inner_score"]
    assert again.loc[0, "accuracy"] < folds.loc[0, "accuracy"]  # its test rows are now noise
    assert "Nested cross-validation" in nested.to_text()


def test_select_model_with_nested(digits_sets):
    sets, y = digits_sets
    result = select_model(sets, y, heads=["logreg"], param_grids=SMALL_GRIDS, n_splits=3,
                          n_repeats=1, nested=True, outer_splits=3)
    assert result.nested is not None and len(result.nested.fold_scores) == 3
    # the inner winner's score is a maximum over noisy estimates: the nested one is not higher
    # by much
    assert result.nested.mean_scores()["balanced_accuracy"] <= result.best_score + 0.05


def test_split_columns():
    X = np.arange(20.0).reshape(2, 10)
    parts = split_columns(X, {("a", "avg"): 3, ("b", "avg"): 7})
    np.testing.assert_array_equal(parts[("b", "avg")], X[:, 3:])
    assert np.shares_memory(parts[("a", "avg")], X)
    with pytest.raises(ValueError, match="add up to 9"):
        split_columns(X, {"a": 4, "b": 5})


def test_failed_candidates_are_skipped():
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    result = select_model(X[:150], y[:150], heads={"custom": pipe},
                          param_grids={"custom": {"logisticregression__C": [-1.0, 0.1]}},
                          n_splits=3, n_repeats=1)
    table = result.table
    assert table.loc[0, "error"] is not None and "C" in table.loc[0, "error"]
    assert result.best_params == {"logisticregression__C": 0.1}
    assert any("failed" in note for note in result.notes)


@pytest.mark.parametrize("kwargs, message", [
    ({"heads": ["knn"]}, "Unknown head 'knn'"),
    ({"scoring": "auc"}, "'scoring' parameter"),
    ({"rule": "median"}, "'rule' parameter"),
    ({"heads": ["logreg"], "param_grids": {"logref": {"C": [1.0]}}}, "neither in heads"),
])
def test_invalid_arguments(digits_sets, kwargs, message):
    sets, y = digits_sets
    with pytest.raises(ValueError, match=message):
        select_model(sets, y, **kwargs)


def test_invalid_features(digits_sets):
    sets, y = digits_sets
    bad = dict(sets)
    bad[("pixels", "avg")] = sets[("pixels", "avg")].copy()
    bad[("pixels", "avg")][5, 0] = np.nan
    with pytest.raises(ValueError, match="pixels/avg.*NaN"):
        select_model(bad, y)
    with pytest.raises(ValueError, match="has 239 rows"):
        select_model({"x": sets[("pixels", "avg")][:-1]}, y)
    with pytest.raises(ValueError, match="empty"):
        select_model({}, y)


def test_auto_classifier_blocks_and_nesting(digits_sets):
    sets, y = digits_sets
    X = np.hstack([sets[("noise", "avg")], sets[("pixels", "avg")]])
    auto = AutoClassifier(feature_sets={"noise": slice(0, 64), "pixels": (64, 128)},
                          heads=("logreg",), param_grids=SMALL_GRIDS, n_splits=3, n_repeats=1)
    auto.fit(X, y)
    assert auto.best_feature_set_ == "pixels"
    np.testing.assert_array_equal(auto.best_columns_, np.arange(64, 128))
    assert auto.score(X, y) > 0.9
    assert auto.predict_proba(X).shape == (len(y), 10)
    # an estimator: sklearn's cross-validation of it is a nested cross-validation
    scores = cross_val_score(auto, X, y, cv=3)
    assert scores.mean() > 0.8


@pytest.mark.slow
def test_benchmark_speed():
    """~400 images x 1280 features x 6 layers x 3 heads x default grids, 5 x 3-fold CV."""
    X, y = make_classification(n_samples=400, n_features=1280 * 6, n_informative=120,
                               n_classes=4, random_state=0)
    sets = split_columns(X.astype(np.float32), {f"layer{i}": 1280 for i in range(6)})
    start = time.perf_counter()
    result = select_model(sets, y, n_jobs=2)
    elapsed = time.perf_counter() - start
    print(f"\n{len(result.table)} candidates x 15 folds: {elapsed:.1f} s")
    # ~16 s on two idle cores (31 s of CPU); generous for a shared machine
    assert elapsed < 300


# -- the fast search (issue #12) --------------------------------------------------------------


def test_fast_search_screens_every_set_and_tunes_the_finalists(digits_sets):
    sets, y = digits_sets
    result = select_model(sets, y, n_splits=3, n_finalists=1)
    assert result.search == "fast"
    screen = result.screening
    assert list(screen["feature_set"]) == ["pixels/avg", "noise/avg"]
    assert screen.loc[0, "loo_score"] > 0.8 > 0.3 > screen.loc[1, "loo_score"]
    assert list(screen["tuned"]) == [True, False]
    assert set(result.table["feature_set"]) == {"pixels/avg"}  # only the finalist is tuned
    assert result.best_feature_set == ("pixels", "avg") and result.best_head == "logreg"
    assert any("ridge leave-one-out" in note for note in result.notes)


def test_fast_search_agrees_with_exhaustive_on_the_same_candidates(digits_sets):
    """With every set a finalist and the same grid and folds, both strategies are one search."""
    sets, y = digits_sets
    kwargs = dict(heads=["logreg"], param_grids={"logreg": {"C": [0.01, 0.1, 1.0]}},
                  n_splits=3, n_repeats=2)
    fast = select_model(sets, y, search="fast", n_finalists=2, **kwargs)
    full = select_model(sets, y, search="exhaustive", **kwargs)
    cols = ["feature_set", "head", "params", "balanced_accuracy_mean"]
    pd.testing.assert_frame_equal(fast.table[cols], full.table[cols])
    assert fast.best_index == full.best_index


def test_fast_search_extends_a_c_grid_whose_best_is_at_an_end(monkeypatch):
    from classify import search

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 10))
    y = (X @ rng.standard_normal(10) > 0).astype(int)  # separable: more C is better at first
    monkeypatch.setitem(search.FAST_C_GRID, "logreg", [1e-5, 1e-4])
    result = select_model({"x": X}, y, n_splits=3, n_repeats=1, rule="best")
    cs = sorted(result.table["C"])
    assert cs[:2] == [1e-5, 1e-4] and len(cs) > 2  # extended upwards, one decade at a time
    assert np.allclose(np.diff(np.log10(cs)), 1)
    best_c = result.table.loc[result.table["balanced_accuracy_mean"].idxmax(), "C"]
    assert best_c < cs[-1] or len(cs) == 2 + search.MAX_EXTENSIONS
    assert result.best_cv.mean_scores()["accuracy"] > 0.9


def test_fast_search_progress_and_nested(digits_sets, capsys):
    sets, y = digits_sets
    result = select_model(sets, y, n_splits=3, progress="bar", nested=True, outer_splits=3)
    err = capsys.readouterr().err
    assert "screen feature sets" in err and "cross-validate" in err and "fit" in err
    assert result.nested is not None and len(result.nested.fold_scores) == 3
    assert result.nested.mean_scores()["accuracy"] > 0.8


def test_screening_of_a_binary_problem_is_a_real_score():
    """Two classes: ridge encodes one +-1 column; its LOO decisions are read by sign."""
    from classify.screening import screen_feature_sets

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    informative = rng.standard_normal((200, 30)) + 0.8 * y[:, None]
    noise = rng.standard_normal((200, 30))
    screen = screen_feature_sets([informative, noise], y)
    assert screen.loc[0, "loo_score"] > 0.85
    assert 0.3 < screen.loc[1, "loo_score"] < 0.65


@pytest.mark.parametrize("n, p, n_classes", [(120, 20, 3), (60, 200, 4), (80, 15, 2)])
def test_ridge_loo_equals_scikit_learn(n, p, n_classes):
    """The screening's closed form gives RidgeClassifierCV's leave-one-out decisions."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.preprocessing import StandardScaler

    from classify.screening import ridge_loo_decisions

    rng = np.random.default_rng(n)
    y = rng.integers(0, n_classes, n)
    X = rng.standard_normal((n, p)) + y[:, None] * 0.3
    alphas = [0.5, 10.0, 300.0]
    ours = list(ridge_loo_decisions(X, y, n_classes, alphas))
    Z = StandardScaler().fit_transform(X.astype(np.float32)).astype(np.float64)
    ref = RidgeClassifierCV(alphas=alphas, store_cv_results=True, scoring="accuracy").fit(Z, y)
    for a, values in enumerate(ours):
        expected = ref.cv_results_[..., a].reshape(n, -1)
        np.testing.assert_allclose(values, expected, rtol=2e-3, atol=2e-3)


def test_screening_of_pure_noise_wider_than_tall_is_at_chance():
    """More features than images: a tiny alpha interpolates, and its 'leave-one-out' must not
    pass for a perfect score."""
    from classify.screening import ridge_loo_decisions, screen_feature_sets

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    noise = rng.standard_normal((80, 600))
    assert screen_feature_sets([noise], y).loc[0, "loo_score"] < 0.75
    (tiny,) = ridge_loo_decisions(noise, y, 2, [1e-6])
    assert np.isnan(tiny).all()  # refused, not trusted


# -- what the selection refuses up front, and what it says of its own score ---------------------


def test_a_class_of_one_image_is_refused_by_name_before_any_fit(monkeypatch):
    from classify import _evaluation

    fits = []
    real = _evaluation.evaluate
    monkeypatch.setattr(_evaluation, "evaluate", lambda *a, **k: fits.append(1) or real(*a, **k))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(21, 5))
    y = np.array(["ant"] * 10 + ["bee"] * 10 + ["wasp"])
    for heads in (["logreg"], ["linear_svm"]):
        with pytest.raises(ValueError, match=r"\['wasp'\] have a single sample"):
            select_model({"x": X}, y, heads=heads, probability=True, n_splits=3, n_repeats=1)
    assert fits == []


def test_fast_search_scores_svms_by_log_loss_with_their_calibrated_probabilities(digits_sets):
    sets, y = digits_sets
    only_svm = select_model(sets, y, heads=["linear_svm"], scoring="log_loss", probability=True,
                            n_splits=3, n_repeats=1, n_finalists=1)
    assert np.isfinite(only_svm.table["log_loss_mean"]).all()
    both = select_model(sets, y, heads=["logreg", "linear_svm"], scoring="log_loss",
                        probability=True, n_splits=3, n_repeats=1, n_finalists=1)
    svm = both.table[both.table["head"] == "linear_svm"]
    assert len(svm) and np.isfinite(svm["log_loss_mean"]).all()  # compared, not left out
    assert hasattr(both.best_estimator(), "predict_proba")


def test_log_loss_with_heads_without_probabilities_is_refused_up_front(digits_sets):
    sets, y = digits_sets
    for search in ("fast", "exhaustive"):
        with pytest.raises(ValueError, match=r"log_loss.*\['linear_svm'\].*probability=True"):
            select_model(sets, y, heads=["logreg", "linear_svm"], scoring="log_loss",
                         probability=False, search=search, n_splits=3, n_repeats=1)


@pytest.mark.parametrize("n_finalists", [0, -3, 1.5])
def test_finalists_below_one_are_refused(digits_sets, n_finalists):
    sets, y = digits_sets
    with pytest.raises(ValueError, match=r"'n_finalists' parameter.*\[1, inf\)"):
        select_model(sets, y, n_finalists=n_finalists, n_splits=3, n_repeats=1)


def test_default_c_grids_extend_when_another_head_has_a_given_grid(monkeypatch):
    from classify import search

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 10))
    y = (X @ rng.standard_normal(10) > 0).astype(int)  # separable: more C is better at first
    monkeypatch.setitem(search.FAST_C_GRID, "logreg", [1e-5, 1e-4])
    result = select_model({"x": X}, y, heads=["logreg"], n_splits=3, n_repeats=1,
                          param_grids={"linear_svm": {"C": [1e-3]}})  # a grid of an unused head
    assert sorted(result.table["C"])[:3] == [1e-5, 1e-4, 1e-3]  # extended upwards
    given = select_model({"x": X}, y, heads=["logreg"], n_splits=3, n_repeats=1,
                         param_grids={"logreg": {"C": [1e-5, 1e-4, 1e-3]}})
    assert sorted(given.table["C"]) == [1e-5, 1e-4, 1e-3]  # a given grid: searched as given
    assert any("largest value of the logreg grid" in note for note in given.notes)


def test_the_chosen_score_is_called_optimistic_and_points_to_nested_cross_validation():
    """On pure noise the best of many candidates scores above chance: the text says so next
    to the number, in the selection's text and in the model's."""
    from classify import fit_selected

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 30)), np.repeat(["a", "b"], 30)
    result = select_model({"x": X}, y, n_splits=3, n_repeats=1)
    text = result.to_text()
    scores = text.split("Chosen:")[1]
    assert (f"optimistic: the best of {result.n_compared} candidates, chosen and scored on the "
            "same folds" in scores and "--nested" in scores)
    model_text = fit_selected(result, {"x": X}, y).to_text()
    line = next(line for line in model_text.splitlines() if "Cross-validation on" in line)
    assert "optimistic" in line and "--nested" in line
    nested = select_model({"x": X}, y, n_splits=3, n_repeats=1, nested=True, outer_splits=3)
    assert "the nested cross-validation estimates" in nested.to_text().split("Chosen:")[1]


def test_fast_search_uses_two_folds_from_5000_images():
    """Every image is still tested once; the note says the scores are a little pessimistic."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 2500)
    X = rng.standard_normal((5000, 4)) + y[:, None]
    result = select_model({"x": X}, y, n_repeats=3)
    assert (result.best_cv.n_splits, result.best_cv.n_repeats) == (2, 1)
    assert (result.best_cv.oof_predictions >= 0).all()
    assert any("2-fold cross-validation instead of 5-fold" in note for note in result.notes)
    small = select_model({"x": X[::2]}, y[::2], n_repeats=3)
    assert (small.best_cv.n_splits, small.best_cv.n_repeats) == (5, 1)
