"""``featurize sweep DATA_DIR``: cross-validated scores of every layer x pooling x head.

Parse, call :func:`classify.training.select_on_folder`, print the table.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.arguments import (
    add_format_arg,
    add_model_args,
    add_runtime_args,
    add_selection_args,
    input_folder,
    progress_logging,
    report_failed,
    runtime_options,
    selection_options,
)

NAME = "sweep"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``sweep`` sub-command."""
    parser = subparsers.add_parser(
        NAME,
        help="table of cross-validated scores for every layer x pooling x head",
        description="Featurize DATA_DIR/<class>/<images> at the candidate layers and poolings "
                    "and print, for every (layer, pooling, head), the cross-validated mean and "
                    "standard deviation of each score at the C the selection rule picks in "
                    "that cell. Nothing is saved except the feature cache. Unreadable images "
                    "are listed and left out (exit code 3).",
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", type=input_folder,
                        help="folder with one sub-folder per class")
    add_model_args(parser, backbones=("efficientnet_lite0",), several=True,
                   layers_help="candidate layers (default: the ends of the last 4 stages and "
                               "'penultimate')", poolings=("avg", "max", "gem"),
                   pooling_help="candidate poolings (default avg,max,gem; one forward pass "
                                "each)")
    # a sweep is the full table: exhaustive unless asked otherwise (--search fast: the screened
    # layers' ridge scores are in the notes, the tuned ones in the table)
    add_selection_args(parser, search="exhaustive")
    parser.add_argument("--probability", action="store_true",
                        help="calibrate the SVM heads (adds their log loss; slower; default "
                             "off)")
    add_format_arg(parser, choices=("text", "csv", "json"))
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def sweep_table(selection):
    """One row per (layer, pooling, head): chosen params, mean and std of every score."""
    import pandas as pd

    from classify import SCORE_NAMES

    rows = []
    for _, cell in selection.summary_table().iterrows():
        row = {"layer": cell["layer"], "pooling": cell["pooling"], "head": cell["head"],
               "params": cell["params"]}
        scores = selection.table.loc[cell["row"]]
        for name in SCORE_NAMES:
            row[f"{name}_mean"] = scores[f"{name}_mean"]
            row[f"{name}_std"] = scores[f"{name}_std"]
        rows.append(row)
    return pd.DataFrame(rows)


def run(args: argparse.Namespace) -> int:
    """Sweep; returns 0, or 3 when some files were left out."""
    from classify.reports import format_frame, optimism_note
    from classify.training import select_on_folder

    with progress_logging(args.verbose):
        data, candidates, selection = select_on_folder(
            args.data_dir, backbones=args.backbone, weights=args.weights, layers=args.layers,
            poolings=args.poolings, precision=args.precision, probability=args.probability,
            **selection_options(args), **runtime_options(args))
    failed = list(data.skipped) + [(data.paths[row], reason)
                                   for row, reason in candidates.failures.items()]
    code = report_failed(failed, len(data.paths) + len(data.skipped))
    table = sweep_table(selection)
    if args.format == "csv":
        table.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2))
    else:
        cv = selection.best_cv
        print(f"Cross-validated scores ({cv.n_repeats} x {cv.n_splits}-fold, "
              f"{len(candidates.y)} images, C chosen per cell by the {args.rule!r} rule on "
              f"{args.scoring}):")
        print(format_frame(table.set_index(["layer", "pooling", "head"])))
        layer, pooling = selection.best_feature_set
        print(f"\nBest: layer {layer!r}, pooling {pooling!r}, head {selection.best_head!r}, "
              f"{selection.best_params}: {args.scoring} {selection.best_score:.4f} "
              f"({optimism_note(selection.n_compared)})")
    return code
