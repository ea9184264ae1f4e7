"""``featurize export-model MODEL OUT.onnx``: the whole trained model as one ONNX file.

Parse, call :func:`classify.onnx_export.export_onnx`, print.
"""

from __future__ import annotations

import argparse
import json

from pipelines.arguments import add_format_arg, add_model_file_arg, output_file

NAME = "export-model"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``export-model`` sub-command."""
    parser = subparsers.add_parser(
        NAME,
        help="write a trained model as one ONNX file (normalized images -> probabilities)",
        description="Write MODEL (from `featurize train`, or a `featurize finetune` "
                    "checkpoint) as one ONNX graph: every backbone truncated at its layers, the "
                    "pooling, the concatenation, the scaler and the head, from float32 "
                    "normalized images (N, 3, crop, crop; one input per preprocessing) to the "
                    "probability of every class. Its metadata holds the class names, the "
                    "preprocessing of each input (resize, crop, mean, std, interpolation) and "
                    "featurize's version; it runs with onnxruntime alone (README: "
                    "'Deploy without featurize'). Heads: logreg, calibrated linear SVM, "
                    "fine-tuned; an RBF SVM cannot be exported.",
    )
    add_model_file_arg(parser)
    parser.add_argument("out", metavar="OUT.onnx", type=output_file,
                        help="ONNX file to write")
    add_format_arg(parser, help_text="output format (default text: one line; json: the "
                                     "inputs, classes and size)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export; returns 0."""
    from classify import load_model
    from classify.onnx_export import export_onnx

    exported = export_onnx(load_model(args.model), args.out)
    if args.format == "json":
        print(json.dumps({"path": exported.path, "bytes": exported.nbytes,
                          "inputs": exported.inputs, "classes": exported.classes}, indent=2))
    else:
        shapes = ", ".join(f"{e['name']} (N, 3, {e['crop_size']}, {e['crop_size']})"
                           for e in exported.inputs)
        print(f"Wrote {exported.path} ({exported.nbytes / 2**20:.1f} MiB): {shapes} -> "
              f"probabilities of {len(exported.classes)} classes")
    return 0
