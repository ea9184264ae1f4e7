"""``featurize evaluate MODEL TEST_DIR``: scores of a trained model on a labelled test tree.

Parse, call :meth:`classify.model.FittedModel.evaluate` (:func:`classify.evaluate_folder`),
print.
"""

from __future__ import annotations

import argparse
import json

from pipelines.arguments import (
    add_format_arg,
    add_model_file_arg,
    add_runtime_args,
    input_folder,
    progress_logging,
    report_failed,
    runtime_options,
)

NAME = "evaluate"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` sub-command."""
    parser = subparsers.add_parser(
        NAME,
        help="score a trained model on a folder-per-class test set",
        description="Featurize TEST_DIR/<class>/<images> as the model was trained, predict, and "
                    "report accuracy, balanced accuracy, macro F1, log loss (if the model gives "
                    "probabilities), a per-class report, the confusion matrix and the "
                    "misclassified files. Unreadable images are listed and not scored (exit "
                    "code 3). Load only model files you trust.",
    )
    add_model_file_arg(parser)
    parser.add_argument("test_dir", metavar="TEST_DIR", type=input_folder,
                        help="folder with one sub-folder per class")
    add_format_arg(parser, help_text="output format (default text; json: one JSON object with "
                                     "every score, failure and misclassified file)")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate; returns 0, or 3 when some files were left out."""
    from classify import load_model

    model = load_model(args.model)
    with progress_logging():
        result = model.evaluate(args.test_dir, **runtime_options(args))
    code = report_failed(result.failed, result.n_images + len(result.skipped))
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        p = model.provenance
        print(f"Model {args.model}: {p.get('backbone')} / {p.get('layer')} / {p.get('pooling')}"
              f" / {p.get('head')} {p.get('params')}")
        print(result.to_text())
    return code
