"""``featurize rank DATA_DIR``: which backbone and layer? Every candidate of ``featurize train``
screened before any training (ridge leave-one-out score, width, extraction cost per image).

Parse, call :func:`classify.ranking.rank_folder`, print.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.arguments import (
    add_format_arg,
    add_model_args,
    add_runtime_args,
    input_folder,
    output_file,
    progress_logging,
    report_failed,
    runtime_options,
)

NAME = "rank"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``rank`` sub-command."""
    from classify.ranking import RIDGE_SCORINGS
    from classify.training import DEFAULT_BACKBONES

    parser = subparsers.add_parser(
        NAME,
        help="rank the candidate backbones and layers before training (ridge leave-one-out)",
        description="Featurize a folder-per-class image tree (DATA_DIR/<class>/<images>) at "
                    "every candidate layer `featurize train` would try, in one pass, and rank "
                    "the candidates by the leave-one-out score of a ridge classifier (closed "
                    "form: the screening of train's fast search), with their width and "
                    "extraction cost per image (GFLOPs). With --cache, a later `featurize "
                    "train` on the same folder and cache computes no feature again. "
                    "Unreadable images are listed and left out (exit code 3).",
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", type=input_folder,
                        help="folder with one sub-folder per class")
    add_model_args(parser, backbones=DEFAULT_BACKBONES, several=True,
                   layers_help="candidate layers of every backbone (default: train's, the "
                               "ends of the last stages and 'penultimate')",
                   pooling_help="candidate poolings (default avg; one forward pass each)")
    parser.add_argument("--scoring", default="balanced_accuracy", choices=RIDGE_SCORINGS,
                        help="leave-one-out score of the ridge classifier (default "
                             "balanced_accuracy)")
    add_format_arg(parser, choices=("text", "json", "csv"),
                   help_text="output format (default text: the table; json; csv)")
    parser.add_argument("--out", metavar="FILE", default=None, type=output_file,
                        help="write the table there (in --format; default: print it)")
    add_runtime_args(parser, cache_help="HDF5 feature cache: give `featurize train` the same "
                                        "one and it computes no feature again (default: none)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Rank; returns 0, or 3 when some files were left out."""
    from classify.ranking import rank_folder

    with progress_logging():
        ranking = rank_folder(args.data_dir, backbones=args.backbone, weights=args.weights,
                              layers=args.layers, poolings=args.poolings,
                              precision=args.precision, scoring=args.scoring,
                              **runtime_options(args))
    if args.format == "json":
        text = json.dumps({"scoring": ranking.scoring, "n_images": ranking.n_images,
                           "candidates": ranking.table.to_dict(orient="records"),
                           "seconds": ranking.seconds,
                           "failures": [{"path": p, "reason": r} for p, r in ranking.failures]},
                          indent=2)
    elif args.format == "csv":
        text = ranking.table.to_csv(index=False).rstrip("\n")
    else:
        text = ranking.to_text()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        print(f"{len(ranking.table)} candidates ranked; written to {args.out}", file=sys.stderr)
    else:
        print(text)
    return report_failed(ranking.failures, ranking.n_images + len(ranking.failures))
