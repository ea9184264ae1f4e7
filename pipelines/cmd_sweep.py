"""``featurize sweep DATA_DIR``: cross-validated scores of every layer x pooling x head."""

from __future__ import annotations

import argparse
import sys

from pipelines.classify_common import (
    add_runtime_args,
    add_selection_args,
    candidate_features,
    csv_list,
    load_folder,
    report_failures,
    run_selection,
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
                    "that cell. Nothing is saved except the feature cache.",
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder with one sub-folder per class")
    add_selection_args(parser)
    parser.add_argument("--poolings", type=csv_list, default=["avg", "max", "gem"],
                        metavar="P1,P2", help="candidate poolings (default avg,max,gem; one "
                                              "forward pass each)")
    parser.add_argument("--format", choices=["text", "csv", "json"], default="text",
                        help="output format (default text)")
    parser.add_argument("--probability", action="store_true",
                        help="calibrate the SVM heads (adds their log loss; slower)")
    add_runtime_args(parser)
    # a sweep is the full table: exhaustive unless asked otherwise (--search fast: the screened
    # layers' ridge scores are in the notes, the tuned ones in the table)
    parser.set_defaults(func=run, search="exhaustive")


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
    """Sweep; returns 0 (errors are raised and reported by the dispatcher)."""
    from classify.reports import format_frame

    data = load_folder(args.data_dir)
    sets, y, failures, _, _ = candidate_features(data, args)
    report_failures(data.paths, failures)
    selection = run_selection(sets, y, args, probability=args.probability)
    table = sweep_table(selection)
    if args.format == "csv":
        table.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2))
    else:
        cv = selection.best_cv
        print(f"Cross-validated scores ({cv.n_repeats} x {cv.n_splits}-fold, {len(y)} images, "
              f"C chosen per cell by the {args.rule!r} rule on {args.scoring}):")
        print(format_frame(table.set_index(["layer", "pooling", "head"])))
        layer, pooling = selection.best_feature_set
        print(f"\nBest: layer {layer!r}, pooling {pooling!r}, head {selection.best_head!r}, "
              f"{selection.best_params}: {args.scoring} {selection.best_score:.4f}")
    return 0
