"""``featurize finetune DATA_DIR --out model.pt``: fine-tune a backbone (see featurize.finetune)."""

from __future__ import annotations

import argparse

NAME = "finetune"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``finetune`` sub-command."""
    parser = subparsers.add_parser(
        NAME, help="fine-tune a backbone on a folder-per-class data set",
        description="A new linear classifier on the frozen network first, then the last "
                    "--unfreeze stages with a 10x lower learning rate; light augmentation; the "
                    "best epoch on a validation split carved from DATA_DIR (stops early). "
                    "Ctrl-C keeps the best checkpoint so far. `featurize evaluate` and "
                    "`featurize predict` take the checkpoint, and --weights CHECKPOINT uses the "
                    "fine-tuned network as a featurize backbone.")
    parser.add_argument("data_dir", metavar="DATA_DIR")
    parser.add_argument("--out", required=True, metavar="CHECKPOINT")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="DEFAULT")
    parser.add_argument("--unfreeze", type=int, default=2, metavar="N",
                        help="last stages trained in stage two (default 2)")
    parser.add_argument("--head-epochs", type=int, default=2, metavar="E",
                        help="epochs of the classifier alone (default 2)")
    parser.add_argument("--epochs", type=int, default=6, metavar="E",
                        help="most epochs of stage two (default 6; early stopping)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fine-tune; returns 0, or 130 after Ctrl-C (the best checkpoint so far is kept)."""
    from featurize.finetune import finetune
    from featurize.progress import log_to_stderr

    with log_to_stderr(["featurize.progress"]):
        result = finetune(args.data_dir, args.out, backbone=args.backbone, weights=args.weights,
                          unfreeze=args.unfreeze, head_epochs=args.head_epochs,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, device=args.device, num_workers=args.num_workers)
    print(f"{'Interrupted: kept' if result.interrupted else 'Saved'} the best checkpoint "
          f"(epoch {result.best_epoch}, validation balanced accuracy {result.val_score:.4f}) "
          f"to {result.checkpoint} in {result.seconds:.0f} s")
    return 130 if result.interrupted else 0
