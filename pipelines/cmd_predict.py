"""``featurize predict MODEL PATHS_OR_DIR...``: one row per image with its predicted class."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pipelines.classify_common import add_runtime_args
from pipelines.cmd_evaluate import model_features

NAME = "predict"
#: Exit code when some images could not be read (their rows say why), as for ``extract``.
EXIT_PARTIAL = 3


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
    parser.add_argument("model", metavar="MODEL", help="model file written by `featurize train`")
    parser.add_argument("sources", nargs="+", metavar="PATHS_OR_DIR",
                        help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--out", metavar="CSV", default=None,
                        help="write the table to this CSV file (default: print it)")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict; returns 0, or 3 when some images could not be read."""
    import pandas as pd

    from classify import load_model
    from featurize.folder import list_images

    model = load_model(args.model)
    paths = []
    for source in args.sources:
        try:
            paths += list_images(source)
        except FileNotFoundError:
            if any(char in source for char in "*?["):
                raise
            paths.append(source)  # a named file that is missing: its row says why
    if not paths:
        raise ValueError(f"No image files found in {args.sources}.")
    X, failures = model_features(model, paths, args)
    ok = np.setdiff1d(np.arange(len(paths)), list(failures))
    table = pd.DataFrame({"path": paths, "predicted": pd.Series([None] * len(paths),
                                                                dtype=object)})
    classes = [str(c) for c in model.classes_]
    if ok.size:
        table.loc[ok, "predicted"] = model.predict_features(X[ok]).astype(str)
        if model.has_proba:
            proba = model.predict_proba_features(X[ok])
            for j, name in enumerate(classes):
                table[f"proba_{name}"] = np.nan
                table.loc[ok, f"proba_{name}"] = proba[:, j]
    table["error"] = [failures.get(i, "") for i in range(len(paths))]
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"{len(paths)} images, {len(failures)} unreadable; predictions written to "
              f"{args.out}", file=sys.stderr)
    else:
        table.to_csv(sys.stdout, index=False, float_format="%.6f")
    return EXIT_PARTIAL if failures else 0
