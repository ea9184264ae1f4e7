"""``featurize demo``: the main job on the sample images that ship with featurize.

It does what ``featurize train`` does on the sample's training split and ``featurize evaluate``
on its test split (the same library calls, :func:`classify.train_folder` and
:meth:`classify.FittedModel.evaluate`, with the same defaults), so a fresh installation shows
what featurize does without any data of one's own (:func:`featurize.images.datasets.sample_images`).
"""

from __future__ import annotations

import argparse
import time

from pipelines.arguments import output_file, progress_logging, report_failed

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
    parser.add_argument("--out", default="demo-model.joblib", metavar="MODEL", type=output_file,
                        help="model file to write (default demo-model.joblib)")
    parser.add_argument("--cache", default="demo-features.h5", metavar="FILE",
                        help="HDF5 feature cache (default demo-features.h5); a second run "
                             "reuses it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, then evaluate; returns 0, or 3 when some files were left out."""
    from classify.training import train_folder
    from featurize.images.datasets import sample_images

    sample = sample_images()
    print(f"Sample images: {sample.train} (train) and {sample.test} (test); "
          f"classes {', '.join(sample.target_names)}\n")
    start = time.perf_counter()
    print(f"$ featurize train {sample.train} --out {args.out} --cache {args.cache}", flush=True)
    with progress_logging():
        model, selection = train_folder(sample.train, cache=args.cache, n_jobs=-1,
                                        progress="auto", return_selection=True)
    model.save(args.out)
    failed = model.training_failures(sample.train)
    print(selection.to_text())
    print(f"\nSaved the model to {args.out}\n")
    print(f"$ featurize evaluate {args.out} {sample.test} --cache {args.cache}", flush=True)
    with progress_logging():
        result = model.evaluate(sample.test, cache=args.cache, progress="auto")
    failed += result.failed
    print(result.to_text())
    print(f"\nDone in {time.perf_counter() - start:.0f} s. Next, on a folder of your own with one "
          "sub-folder per class:\n"
          "  featurize train MY_IMAGES/train --cache feats.h5 --out model.joblib\n"
          "  featurize evaluate model.joblib MY_IMAGES/test --cache feats.h5\n"
          "  featurize predict model.joblib NEW_IMAGES/\n"
          "or from Python: classify.train_folder(...), model.evaluate(...), "
          "model.predict_table(...) (README, 'From Python').")
    return report_failed(failed)
