"""``featurize train DATA_DIR --out MODEL``: choose features, head and C; save the model.

The images of a folder-per-class tree are featurized by each candidate backbone (by default the
three embedded EfficientNet-Lite networks) at several candidate layers, in one forward pass per
backbone and pooling (cached with ``--cache``); the concatenation of every backbone's last stage
and penultimate layer is one more candidate. :func:`classify.select_model` cross-validates
every (feature set, head, C) on them; the chosen configuration is refitted on all images and
saved.

The helpers it shares with the other classify sub-commands are in
:mod:`pipelines.classify_common`.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pipelines.classify_common import (
    DEFAULT_BACKBONES,
    add_runtime_args,
    add_selection_args,
    candidate_features,
    csv_list,
    load_folder,
    report_failures,
    run_selection,
)

NAME = "train"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` sub-command."""
    parser = subparsers.add_parser(
        NAME,
        help="choose layer, pooling, head and C by cross-validation; save the model",
        description="Featurize a folder-per-class image tree (DATA_DIR/<class>/<images>) at "
                    "several candidate layers, cross-validate every (layer, pooling, head, C) "
                    "on it, refit the best on all images and save the model. Unreadable images "
                    "are reported and left out. Model files are pickles: load only files you "
                    "trust.",
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder with one sub-folder per class")
    parser.add_argument("--out", required=True, metavar="MODEL", help="model file to write")
    add_selection_args(parser, default_backbones=DEFAULT_BACKBONES)
    parser.add_argument("--poolings", type=csv_list, default=["avg"], metavar="P1,P2",
                        help="candidate poolings (default avg; also max, avgmax, gem)")
    parser.add_argument("--nested", action="store_true",
                        help="also estimate the whole procedure by nested cross-validation "
                             "(5x the cost)")
    parser.add_argument("--no-probability", action="store_true",
                        help="do not calibrate SVM heads (faster; an SVM model then gives no "
                             "probabilities)")
    parser.add_argument("--json", action="store_true",
                        help="print the chosen configuration and scores as one JSON object")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and save; returns 0 (errors are raised and reported by the dispatcher)."""
    from classify import fit_selected

    data = load_folder(args.data_dir)
    sets, y, failures, layers, configs = candidate_features(data, args)
    report_failures(data.paths, failures)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{args.data_dir} has fewer than 2 classes with readable images.")
    selection = run_selection(sets, y, args, probability=not args.no_probability,
                              nested=args.nested)
    from featurize.extraction import resolve_device, resolve_precision

    # Saved resolved: a model trained with fp32 features predicts with fp32 features anywhere.
    precision = resolve_precision(args.precision, resolve_device(args.device))
    config = configs[selection.best_feature_set]
    config = ({"parts": [{**part, "precision": precision} for part in config["parts"]]}
              if "parts" in config else {**config, "precision": precision})
    model = fit_selected(selection, sets, y, featurizer_config=config)
    model.provenance.update({"data_dir": str(args.data_dir), "candidate_layers": layers,
                             "n_failed_images": len(failures)})
    # which image each training row is, and what was left out (for `featurize report`)
    model.reports["train_paths"] = [p for i, p in enumerate(data.paths) if i not in failures]
    model.reports["train_failures"] = list(data.skipped) + [
        (data.paths[row], reason) for row, reason in sorted(failures.items())]
    model.save(args.out)
    if args.json:
        p = model.provenance
        print(json.dumps({key: p.get(key) for key in (
            "backbone", "weights", "layer", "pooling", "head", "params", "scoring",
            "cv_scores", "cv_std", "nested_scores", "classes", "class_counts",
            "n_failed_images")} | {"model": str(args.out)}, indent=2))
    else:
        print(selection.to_text())
        print(f"\nSaved the model to {args.out}")
    return 0
