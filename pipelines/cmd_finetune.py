"""``featurize finetune DATA_DIR --out model.pt``: fine-tune a backbone.

Parse, call :func:`featurize.finetuning.finetune.finetune` (with the class rule of
``featurize train``), print.
"""

from __future__ import annotations

import argparse

from featurize.options import PRECISIONS, parse_weights
from pipelines.arguments import input_folder, output_file, report_failed

NAME = "finetune"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``finetune`` sub-command."""
    parser = subparsers.add_parser(
        NAME, help="fine-tune a backbone on a folder-per-class data set",
        description="A linear probe on the frozen network first (one pass over the images), "
                    "then the last --unfreeze stages and the classifier trained at a low rate "
                    "on a one-cycle schedule, with light augmentation; the best epoch (the "
                    "probe included) on a validation split carved from DATA_DIR. Unreadable "
                    "images are listed and left out (exit code 3). Ctrl-C keeps the best "
                    "checkpoint so far. `featurize evaluate` and `featurize predict` take the "
                    "checkpoint, and --weights CHECKPOINT uses the fine-tuned network as a "
                    "featurize backbone.")
    parser.add_argument("data_dir", metavar="DATA_DIR", type=input_folder,
                        help="folder with one sub-folder per class")
    parser.add_argument("--out", required=True, metavar="CHECKPOINT", type=output_file,
                        help="checkpoint to write (required)")
    # None: the library's default (featurize.finetuning.finetune.finetune), stated in the help
    parser.add_argument("--backbone", default=None, metavar="NAME",
                        help="backbone to fine-tune (default efficientnet_lite2)")
    parser.add_argument("--weights", default="DEFAULT", type=parse_weights, metavar="W",
                        help="its weights: a name or a local checkpoint (default DEFAULT: the "
                             "pretrained weights)")
    parser.add_argument("--unfreeze", type=int, default=None, metavar="N",
                        help="last stages trained after the probe (default 3; 0: the probe "
                             "only)")
    parser.add_argument("--epochs", type=int, default=None, metavar="E",
                        help="epochs of fine-tuning after the probe (default 6)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak AdamW learning rate (default 1e-4)")
    parser.add_argument("--keep", default="best", choices=("best", "last"),
                        help="the epoch kept: the best on the validation split, the probe "
                             "(epoch 0) included, or the last one (default best)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split, the shuffling and the augmentation (default 0)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="autocast type (default auto: bf16 on CPUs that compute it "
                             "natively and on CUDA, else fp32)")
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto, cpu, cuda, cuda:1, mps (default auto)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="training images per step (default 32)")
    parser.add_argument("--workers", "--num-workers", dest="workers", type=int, default=None,
                        metavar="N", help="threads decoding images (default: one per core, at "
                                          "most 8; 0: none)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fine-tune; returns 0, 3 when some files were left out, or 130 after Ctrl-C (the best
    checkpoint so far is kept)."""
    from functools import partial

    from classify.splits import plan_folds
    from featurize.finetuning.finetune import finetune
    from featurize.progress import log_to_stderr

    options = {name: getattr(args, name) for name in ("backbone", "unfreeze", "epochs", "lr")
               if getattr(args, name) is not None}
    with log_to_stderr(["featurize.progress", "featurize.finetuning.finetune"]):
        result = finetune(args.data_dir, args.out, weights=args.weights, keep=args.keep,
                          batch_size=args.batch_size, seed=args.seed, device=args.device,
                          precision=args.precision, num_workers=args.workers,
                          # the folders `featurize train` refuses, refused in its words
                          check_labels=partial(plan_folds, small_classes="error"), **options)
    code = report_failed(result.failed, len(result.paths) + len(result.skipped))
    print(f"{'Interrupted: kept' if result.interrupted else 'Saved'} the best checkpoint "
          f"(epoch {result.best_epoch}, validation balanced accuracy {result.val_score:.4f}) "
          f"to {result.checkpoint} in {result.seconds:.0f} s")
    return 130 if result.interrupted else code
