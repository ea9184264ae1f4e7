"""``featurize predict MODEL PATHS_OR_DIR...``: one row per image with its predicted class.

Parse, call :func:`classify.predict_table`, print (or write the CSV).
"""

from __future__ import annotations

import argparse
import sys

from pipelines.arguments import (
    add_model_file_arg,
    add_runtime_args,
    input_source,
    output_file,
    progress_logging,
    report_failed,
    runtime_options,
)

NAME = "predict"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``predict`` sub-command."""
    parser = subparsers.add_parser(
        NAME,
        help="predict the class of images with a trained model",
        description="Write one CSV row per image: path, predicted class, the probability of "
                    "every class (when the model gives them) and an error column. An "
                    "unreadable image gets a row with the reason instead of stopping the run "
                    "(exit code 3). Load only model files you trust.",
    )
    add_model_file_arg(parser)
    parser.add_argument("sources", nargs="+", metavar="PATHS_OR_DIR", type=input_source,
                        help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--out", metavar="CSV", default=None, type=output_file,
                        help="write the table to this CSV file (default: print it)")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict; returns 0, or 3 when some images could not be read."""
    from classify import load_model

    model = load_model(args.model)
    with progress_logging():
        table = model.predict_table(args.sources, **runtime_options(args))
    failed = [(row.path, row.error) for row in table.itertuples() if row.error]
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"{len(table)} images, {len(failed)} unreadable; predictions written to "
              f"{args.out}", file=sys.stderr)
    else:
        table.to_csv(sys.stdout, index=False, float_format="%.6f")
    return report_failed(failed, len(table))
