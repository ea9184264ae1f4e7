"""classify: heads, honest cross-validation and automatic selection on cached CNN features.

Imports without torch (and without matplotlib): the featurizer is only imported when a fitted
model is asked to predict on images, and matplotlib only when a plot is asked for.
"""

from classify.auto import AutoClassifier
from classify.cv import CVResult, cross_validate_head
from classify.heads import HEADS, default_param_grid, list_heads, make_head
from classify.metrics import SCORE_NAMES, compute_scores
from classify.model import FORMAT_VERSION, FittedModel, fit_selected, load_model, train_model
from classify.reports import confusion_frame, per_class_report
from classify.selection import (
    DEFAULT_HEADS,
    NestedCVResult,
    SelectionResult,
    nested_cross_validate,
    select_model,
    split_columns,
)
from classify.splits import AdaptiveStratifiedKFold, SmallClassWarning


def __getattr__(name: str):
    # Plot functions are re-exported lazily (the module itself imports matplotlib lazily too).
    if name in ("plot_confusion_matrix", "plot_selection_heatmap", "plot_layer_scores",
                "plot_c_curve"):
        from classify import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'classify' has no attribute {name!r}")


__all__ = [
    "DEFAULT_HEADS",
    "FORMAT_VERSION",
    "HEADS",
    "SCORE_NAMES",
    "AdaptiveStratifiedKFold",
    "AutoClassifier",
    "CVResult",
    "FittedModel",
    "NestedCVResult",
    "SelectionResult",
    "SmallClassWarning",
    "compute_scores",
    "confusion_frame",
    "cross_validate_head",
    "default_param_grid",
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
    "select_model",
    "split_columns",
    "train_model",
]
