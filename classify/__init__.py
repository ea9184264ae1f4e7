"""classify: heads, honest cross-validation and automatic selection on cached CNN features,
and the whole workflow on folders of images (train, evaluate, predict, report).

Imports without torch (and without matplotlib): the featurizer is only imported when features
are computed, and matplotlib only when a plot is asked for.
"""

from classify.auto import AutoClassifier
from classify.cv import CVResult, cross_validate_head
from classify.folders import Evaluation, evaluate_folder, predict_table
from classify.heads import HEADS, default_param_grid, list_heads, make_head
from classify.metrics import SCORE_NAMES, compute_scores
from classify.model import FORMAT_VERSION, FittedModel, load_model
from classify.reports import confusion_frame, per_class_report
from classify.selection import (
    DEFAULT_HEADS,
    NestedCVResult,
    SelectionResult,
    check_selection_params,
    nested_cross_validate,
    select_model,
    split_columns,
)
from classify.splits import AdaptiveStratifiedKFold, SmallClassWarning
from classify.training import (
    DEFAULT_BACKBONES,
    candidate_features,
    fit_selected,
    train_folder,
    train_model,
)


def __getattr__(name: str):
    # Plot functions are re-exported lazily (the module itself imports matplotlib lazily too).
    if name in ("plot_confusion_matrix", "plot_selection_heatmap", "plot_layer_scores",
                "plot_c_curve"):
        from classify import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'classify' has no attribute {name!r}")


__all__ = [
    "DEFAULT_BACKBONES",
    "DEFAULT_HEADS",
    "FORMAT_VERSION",
    "HEADS",
    "SCORE_NAMES",
    "AdaptiveStratifiedKFold",
    "AutoClassifier",
    "CVResult",
    "Evaluation",
    "FittedModel",
    "NestedCVResult",
    "SelectionResult",
    "SmallClassWarning",
    "candidate_features",
    "check_selection_params",
    "compute_scores",
    "confusion_frame",
    "cross_validate_head",
    "default_param_grid",
    "evaluate_folder",
    "fit_selected",
    "list_heads",
    "load_model",
    "make_head",
    "nested_cross_validate",
    "per_class_report",
    "plot_c_curve",
    "plot_confusion_matrix",
    "plot_layer_scores",
    "plot_selection_heatmap",
    "predict_table",
    "select_model",
    "split_columns",
    "train_folder",
    "train_model",
]
