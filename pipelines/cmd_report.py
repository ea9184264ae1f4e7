"""``featurize report MODEL DATA_DIR [--test TEST_DIR] --out report.html``: see the data.

Parse, call :meth:`classify.model.FittedModel.report` (:func:`classify.folders.report_folder`),
print.
"""

from __future__ import annotations

import argparse
import time

from pipelines.arguments import (
    add_model_file_arg,
    add_runtime_args,
    input_folder,
    output_file,
    progress_logging,
    report_failed,
    runtime_options,
)

NAME = "report"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``report`` sub-command."""
    parser = subparsers.add_parser(
        NAME,
        help="write a self-contained HTML report of a model on its data, with the images",
        description="One HTML file (thumbnails and scripts inline; it opens offline; paths "
                    "relative to the folder holding DATA_DIR, so it can be shared): the "
                    "headline score (on TEST_DIR when given, else out of fold), the confusion "
                    "matrix as a heat map and the per-class table, the most confused pairs, a "
                    "summary, the mistakes (out of fold on the training data; on TEST_DIR "
                    "when given), likely label errors, "
                    "near-duplicates and train/test leaks, a 2-D map of the embeddings, and "
                    "the files that failed. Built from the model's out-of-fold predictions and "
                    "the cached features (--cache): the model is not trained again. DATA_DIR "
                    "is the training folder wherever it is now: the model finds its training "
                    "images by their path inside it. Load only model files you trust.",
    )
    add_model_file_arg(parser, help_text="model file written by `featurize train`")
    parser.add_argument("data_dir", metavar="DATA_DIR", type=input_folder,
                        help="the folder the model was trained on (it may have moved)")
    parser.add_argument("--test", metavar="TEST_DIR", default=None, type=input_folder,
                        help="a labelled folder-per-class test set (default: none)")
    parser.add_argument("--out", required=True, metavar="HTML", type=output_file,
                        help="report file to write (required)")
    parser.add_argument("--map", default="pca", choices=["pca", "tsne"],
                        help="2-D map of the embeddings (default pca; tsne is slower)")
    add_runtime_args(parser, cache_help="HDF5 feature cache, e.g. the one `featurize train` "
                                        "filled: nothing is computed again (default: none)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build and write the report; returns 0, or 3 when some files could not be read."""
    from classify import load_model

    start = time.perf_counter()
    model = load_model(args.model)
    with progress_logging():
        report = model.report(args.data_dir, args.test, out=args.out, map_method=args.map,
                              **runtime_options(args))
    code = report_failed(report.failed_now)
    print(f"Wrote {args.out} in {time.perf_counter() - start:.0f} s:")
    if report.headline:
        print(f"  {report.headline}")
    for key, value in report.summary.items():
        print(f"  {key}: {value}")
    return code
