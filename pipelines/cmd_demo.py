"""``featurize demo``: the main job on the sample images that ship with featurize.

It runs ``featurize train`` on the sample's training split and ``featurize evaluate`` on its test
split, the same code with the same defaults, so a fresh installation shows what featurize does
without any data of one's own (:func:`featurize.datasets.sample_images`).
"""

from __future__ import annotations

import argparse
import time

NAME = "demo"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        NAME,
        help="train and evaluate on the bundled sample images (4 clothing classes)",
        description="Train a model with the default selection on the sample images that ship "
                    "with featurize (4 classes of clothing photos, CC0), evaluate it on the "
                    "sample's test split and print the report.",
    )
    parser.add_argument("--out", default="demo-model.joblib", metavar="MODEL",
                        help="model file to write (default demo-model.joblib)")
    parser.add_argument("--cache", default="demo-features.h5", metavar="FILE",
                        help="HDF5 feature cache (default demo-features.h5); a second run "
                             "reuses it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, then evaluate; returns the first non-zero exit code, else 0."""
    from featurize.datasets import sample_images
    from pipelines.cli import build_parser

    sample = sample_images()
    print(f"Sample images: {sample.train} (train) and {sample.test} (test); "
          f"classes {', '.join(sample.target_names)}\n")
    parser = build_parser()
    start = time.perf_counter()
    for argv in (["train", str(sample.train), "--out", args.out, "--cache", args.cache],
                 ["evaluate", args.out, str(sample.test), "--cache", args.cache]):
        print(f"$ featurize {' '.join(argv)}", flush=True)
        sub = parser.parse_args(argv)
        code = sub.func(sub)
        if code:
            return code
        print()
    print(f"Done in {time.perf_counter() - start:.0f} s. Next, on a folder of your own with one "
          "sub-folder per class:\n"
          "  featurize train MY_IMAGES/train --cache feats.h5 --out model.joblib\n"
          "  featurize evaluate model.joblib MY_IMAGES/test --cache feats.h5\n"
          "  featurize predict model.joblib NEW_IMAGES/")
    return 0
