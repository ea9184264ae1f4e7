"""``featurize report MODEL DATA_DIR [--test TEST_DIR] --out report.html``: see the data."""

from __future__ import annotations

import argparse
import time

from pipelines.classify_common import add_runtime_args

NAME = "report"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``report`` sub-command."""
    parser = subparsers.add_parser(
        NAME,
        help="write a self-contained HTML report of a model on its data, with the images",
        description="One HTML file (thumbnails and scripts inline; it opens offline): summary, "
                    "confusion matrix and per-class table, the mistakes (out of fold on the "
                    "training data; on TEST_DIR when given), likely label errors, "
                    "near-duplicates and train/test leaks, a 2-D map of the embeddings, and "
                    "the files that failed. Built from the model's out-of-fold predictions and "
                    "the cached features (--cache): the model is not trained again. Load only "
                    "model files you trust.",
    )
    parser.add_argument("model", metavar="MODEL", help="model file written by `featurize train`")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="the folder the model was trained on")
    parser.add_argument("--test", metavar="TEST_DIR", default=None,
                        help="a labelled folder-per-class test set")
    parser.add_argument("--out", required=True, metavar="HTML", help="report file to write")
    parser.add_argument("--map", default="pca", choices=["pca", "tsne"],
                        help="2-D map of the embeddings (default pca; tsne is slower)")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build and write the report; returns 0."""
    from classify import load_model

    start = time.perf_counter()
    model = load_model(args.model)
    overrides = {"cache": args.cache, "device": args.device, "batch_size": args.batch_size,
                 "num_workers": args.num_workers}
    report = model.report(args.data_dir, args.test, out=args.out, map_method=args.map,
                          **overrides)
    print(f"Wrote {args.out} in {time.perf_counter() - start:.0f} s:")
    for key, value in report.summary.items():
        print(f"  {key}: {value}")
    return 0
