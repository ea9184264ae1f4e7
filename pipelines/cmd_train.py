"""``featurize train DATA_DIR --out MODEL``: choose features, head and C; save the model.

Parse, call :func:`classify.training.train_folder`, print. See that function for what is done:
the candidate feature sets of the default backbones (the three embedded EfficientNet-Lite
networks) in one pass over the images, the cross-validated selection, the refit, and the
model's records (its training images relative to DATA_DIR, their classes, the files left out).
"""

from __future__ import annotations

import argparse
import json

from pipelines.arguments import (
    add_format_arg,
    add_model_args,
    add_runtime_args,
    add_selection_args,
    input_folder,
    output_file,
    progress_logging,
    report_failed,
    runtime_options,
    selection_options,
)

NAME = "train"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` sub-command."""
    from classify.training import DEFAULT_BACKBONES

    parser = subparsers.add_parser(
        NAME,
        help="choose layer, pooling, head and C by cross-validation; save the model",
        description="Featurize a folder-per-class image tree (DATA_DIR/<class>/<images>; "
                    "images in sub-folders of a class folder belong to that class) at "
                    "several candidate layers, cross-validate every (layer, pooling, head, C) "
                    "on it, refit the best on all images and save the model. Unreadable images "
                    "are listed and left out (exit code 3). Model files are pickles: load only "
                    "files you trust.",
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", type=input_folder,
                        help="folder with one sub-folder per class")
    parser.add_argument("--out", required=True, metavar="MODEL", type=output_file,
                        help="model file to write (required)")
    add_model_args(parser, backbones=DEFAULT_BACKBONES, several=True,
                   layers_help="candidate layers of every backbone (default: the ends of the "
                               "last 4 stages and 'penultimate')",
                   pooling_help="candidate poolings (default avg; one forward pass each)")
    add_selection_args(parser)
    parser.add_argument("--nested", action="store_true",
                        help="also estimate the whole procedure by nested cross-validation "
                             "(5x the cost; default off)")
    parser.add_argument("--no-probability", action="store_true",
                        help="do not calibrate SVM heads (faster; an SVM model then gives no "
                             "probabilities; default: calibrated)")
    add_format_arg(parser, help_text="output format (default text: the candidates and the "
                                     "choice; json: the chosen configuration and scores)")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and save; returns 0, or 3 when some files were left out."""
    from classify.reports import optimism_note
    from classify.training import train_folder

    with progress_logging(args.verbose):
        model, selection = train_folder(
            args.data_dir, backbones=args.backbone, weights=args.weights, layers=args.layers,
            poolings=args.poolings, precision=args.precision, nested=args.nested,
            probability=not args.no_probability, return_selection=True,
            **selection_options(args), **runtime_options(args))
    model.save(args.out)
    failed = model.training_failures(args.data_dir)
    code = report_failed(failed, len(model.reports["train_paths"]) + len(failed))
    if args.format == "json":
        p = model.provenance
        print(json.dumps({key: p.get(key) for key in (
            "backbone", "weights", "layer", "pooling", "head", "params", "scoring",
            "cv_scores", "cv_std", "nested_scores", "classes", "class_counts",
            "n_failed_images", "n_skipped_files", "n_candidates")} | {
                "cv_scores_note": optimism_note(p.get("n_candidates"), args.nested),
                "failures": [{"path": path, "reason": why} for path, why in failed],
                "model": str(args.out)}, indent=2))
    else:
        print(selection.to_text())
        print(f"\nSaved the model to {args.out}")
    return code
