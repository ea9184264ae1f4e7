"""``featurize evaluate MODEL TEST_DIR``: scores of a trained model on a labelled test tree."""

from __future__ import annotations

import argparse
import json

import numpy as np

from pipelines.classify_common import add_runtime_args, extract, load_folder, report_failures

NAME = "evaluate"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` sub-command."""
    parser = subparsers.add_parser(
        NAME,
        help="score a trained model on a folder-per-class test set",
        description="Featurize TEST_DIR/<class>/<images> as the model was trained, predict, and "
                    "report accuracy, balanced accuracy, macro F1, log loss (if the model gives "
                    "probabilities), a per-class report and the confusion matrix. Unreadable "
                    "images are reported and not scored. Load only model files you trust.",
    )
    parser.add_argument("model", metavar="MODEL", help="model file written by `featurize train`")
    parser.add_argument("test_dir", metavar="TEST_DIR", help="folder with one sub-folder per class")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def model_features(model, paths, args):
    """Features of ``paths`` with the model's featurizer configuration: (X, failures).

    For a model of several featurizers, their features are concatenated in order and a row
    fails when any of them fails.
    """
    from classify.model import featurizer_parts

    blocks, failures = [], {}
    for cfg in featurizer_parts(model.featurizer_config):
        X, failed, _ = extract(paths, backbone=cfg.get("backbone", "efficientnet_lite0"),
                               weights=cfg.get("weights", "DEFAULT"), layers=cfg.get("layer"),
                               pooling=cfg.get("pooling", "avg"),
                               precision=cfg.get("precision", "auto"), args=args)
        blocks.append(X)
        failures.update((row, reason) for row, reason in failed.items() if row not in failures)
    return np.hstack(blocks), failures


def evaluate_model(model, test_dir, args) -> dict:
    """Scores of ``model`` on a labelled folder: ``scores``, ``per_class``, ``confusion``,
    ``data``, ``failures``, ``ok`` (rows scored), ``classes``."""
    from classify import compute_scores, confusion_frame, per_class_report

    data = load_folder(test_dir)
    classes = [str(c) for c in model.classes_]
    unknown = sorted(set(data.target_names) - set(classes))
    if unknown:
        raise ValueError(f"{test_dir} has classes the model does not know: {unknown}; the "
                         f"model's classes are {classes}.")
    X, failures = model_features(model, data.paths, args)
    ok = np.setdiff1d(np.arange(len(data.paths)), list(failures))
    if ok.size == 0:
        raise ValueError(f"No readable image in {test_dir}.")
    y_true = np.asarray(data.target_names)[data.target][ok]
    y_pred = model.predict_features(X[ok])
    index = {name: i for i, name in enumerate(classes)}
    true_codes = np.array([index[str(c)] for c in y_true])
    pred_codes = np.array([index[str(c)] for c in y_pred])
    proba = model.predict_proba_features(X[ok]) if model.has_proba else None
    scores = compute_scores(true_codes, pred_codes, proba, np.arange(len(classes)))
    return {"scores": scores, "per_class": per_class_report(true_codes, pred_codes, classes),
            "confusion": confusion_frame(true_codes, pred_codes, classes), "data": data,
            "failures": failures, "ok": ok, "classes": classes}


def run(args: argparse.Namespace) -> int:
    """Evaluate; returns 0 (errors are raised and reported by the dispatcher)."""
    from classify import load_model
    from classify.reports import format_frame, format_scores

    model = load_model(args.model)
    result = evaluate_model(model, args.test_dir, args)
    scores, per_class, confusion = result["scores"], result["per_class"], result["confusion"]
    data, failures, ok, classes = (result["data"], result["failures"], result["ok"],
                                   result["classes"])
    if args.json:
        out = {name: (None if np.isnan(value) else value) for name, value in scores.items()}
        out.update({
            "n_images": int(len(data.paths)),
            "n_scored": int(ok.size),
            # files the folder listing skipped, then images that failed to decode
            "failures": [{"path": path, "reason": why} for path, why in data.skipped]
            + [{"path": data.paths[r], "reason": why} for r, why in sorted(failures.items())],
            "classes": classes,
            "per_class": {name: {k: float(v) for k, v in row.items()}
                          for name, row in per_class.iterrows()},
            "confusion_matrix": confusion.to_numpy().astype(int).tolist(),
            "model": {k: model.provenance.get(k) for k in ("backbone", "layer", "pooling",
                                                            "head", "params")},
        })
        print(json.dumps(out, indent=2))
    else:
        report_failures(data.paths, failures)
        p = model.provenance
        print(f"Model {args.model}: {p.get('backbone')} / {p.get('layer')} / {p.get('pooling')}"
              f" / {p.get('head')} {p.get('params')}")
        print(f"Test set {args.test_dir}: {ok.size} images scored")
        print(format_scores(scores))
        print("\nPer-class report:")
        print(format_frame(per_class))
        print("\nConfusion matrix (rows: true class, columns: predicted):")
        print(format_frame(confusion, "{:.0f}"))
    return 0
