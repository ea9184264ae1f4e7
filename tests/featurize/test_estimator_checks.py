"""scikit-learn's estimator checks for CNNFeaturizer.

CNNFeaturizer takes images (paths, PIL images, uint8 arrays), not a numeric feature matrix. The
common checks feed random numeric matrices, so every check that calls ``transform`` on such a
matrix (or expects ``fit`` to validate one) is listed below as an expected failure, with that
reason. The behaviours those checks guard (pickling, sample order and subset invariance,
idempotent fit, transform not changing state, dtype) are tested on real images in
``test_estimator.py::test_common_behaviours_on_images``.
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from featurize import CNNFeaturizer

NOT_A_MATRIX = ("the input is not a numeric matrix: CNNFeaturizer turns images into features"
                " and refuses a feature matrix (tested on images in test_estimator.py)")
FIT_IGNORES_X = ("the input is not a numeric matrix: fit loads the backbone and does not read"
                 " or validate X (a stateless transformer, like FunctionTransformer)")
EXPECTED_FAILED = {
    "check_fit_score_takes_y": NOT_A_MATRIX,
    "check_estimators_dtypes": NOT_A_MATRIX,
    "check_complex_data": FIT_IGNORES_X,
    "check_dtype_object": NOT_A_MATRIX,
    "check_estimators_empty_data_messages": FIT_IGNORES_X,
    "check_pipeline_consistency": NOT_A_MATRIX,
    "check_estimators_nan_inf": FIT_IGNORES_X,
    "check_estimator_sparse_tag": NOT_A_MATRIX,
    "check_estimators_pickle": NOT_A_MATRIX,
    "check_f_contiguous_array_estimator": NOT_A_MATRIX,
    "check_transformer_data_not_an_array": NOT_A_MATRIX,
    "check_transformer_general": NOT_A_MATRIX,
    "check_transformer_preserve_dtypes": NOT_A_MATRIX,
    "check_methods_sample_order_invariance": NOT_A_MATRIX,
    "check_methods_subset_invariance": NOT_A_MATRIX,
    "check_dict_unchanged": NOT_A_MATRIX,
    "check_fit_idempotent": NOT_A_MATRIX,
    "check_n_features_in": FIT_IGNORES_X,
    "check_n_features_in_after_fitting": FIT_IGNORES_X,
    "check_fit1d": FIT_IGNORES_X,
    "check_fit2d_predict1d": NOT_A_MATRIX,
}


@parametrize_with_checks(
    [CNNFeaturizer(backbone="mobilenet_v3_small", weights=None, device="cpu")],
    expected_failed_checks=lambda est: EXPECTED_FAILED,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
