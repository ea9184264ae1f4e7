"""``featurize compare DATA_DIR --test TEST_DIR``: features + heads against fine-tuning.

The paired test of the two on the same test images is
:func:`classify.metrics.paired_comparison` (McNemar's exact test).
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import numpy as np

from featurize.progress import log_to_stderr
from pipelines.arguments import (
    add_runtime_args,
    input_folder,
    output_file,
    report_failed,
    runtime_options,
)

NAME = "compare"
#: Below this McNemar p-value the verdict names a winner.
ALPHA = 0.05


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``compare`` sub-command."""
    parser = subparsers.add_parser(
        NAME, help="train features + heads and a fine-tuned network; score both on TEST_DIR",
        description="Answer 'would fine-tuning have done better?': `featurize train` and "
                    "`featurize finetune`, both with their defaults, on DATA_DIR, then both "
                    "scored on TEST_DIR, with the time each took, the number of test images "
                    "on which they differ and McNemar's exact test of the difference.")
    parser.add_argument("data_dir", metavar="DATA_DIR", type=input_folder,
                        help="training folder with one sub-folder per class")
    parser.add_argument("--test", required=True, metavar="TEST_DIR", type=input_folder,
                        help="test folder with the same classes (required)")
    parser.add_argument("--out-dir", default="compare", metavar="DIR",
                        help="where the two models go (default ./compare)")
    parser.add_argument("--report", default=None, metavar="HTML", type=output_file,
                        help="also write the HTML report of the features + heads model, with "
                             "the comparison at its top (see `featurize report`; default: "
                             "none)")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def verdict(rows, paired: dict) -> str:
    """Which to use, with its uncertainty. ``rows``: (name, balanced accuracy, accuracy,
    seconds, ...) of the two models; ``paired``: :func:`classify.metrics.paired_comparison` of
    the two in that order."""
    (a, bal_a, _, sec_a, *_), (b, bal_b, _, sec_b, *_) = rows
    evidence = (f"they predict differently on {paired['disagree']} of {paired['n']} test "
                f"images; {paired['only_a']} are right only with {a}, {paired['only_b']} only "
                f"with {b} (McNemar exact test p = {paired['p_value']:.3g})")
    if paired["p_value"] >= ALPHA or bal_a == bal_b:
        faster = a if sec_a <= sec_b else b
        return (f"No significant difference ({100 * (bal_b - bal_a):+.1f} points of balanced "
                f"accuracy for {b}; {evidence}): use {faster}, the faster one to train.")
    best, worst = (a, b) if bal_a > bal_b else (b, a)
    return (f"Use {best}: {100 * abs(bal_a - bal_b):+.1f} points of balanced accuracy over "
            f"{worst}; {evidence}.")


def report_section(rows, text: str, test_dir) -> dict:
    """The comparison as a section of the HTML report (title -> the verdict and a table; see
    :func:`classify.html_report.extra_blocks`). The test folder is named, not its absolute
    path: the report may be shared."""
    import pandas as pd

    table = pd.DataFrame([(name, bal, acc, f"{seconds:.0f} s") for name, bal, acc, seconds, *_
                          in rows], columns=["method", "balanced accuracy", "accuracy", "time"])
    name = os.path.basename(os.path.abspath(os.fspath(test_dir)))
    return {"Features + heads or fine-tuning?": [f"{text} (test folder {name})",
                                                 table.set_index("method")]}


def run(args: argparse.Namespace) -> int:
    """Train both, score both, say which to use; returns 0, or 3 when some files were left
    out."""
    # classify (scikit-learn) and fine-tuning (torch) load when the command runs, not when the
    # command line starts
    from classify import load_model
    from classify.metrics import paired_comparison
    from classify.splits import plan_folds
    from classify.training import train_folder
    from featurize.finetuning.finetune import finetune

    os.makedirs(args.out_dir, exist_ok=True)
    model_path = os.path.join(args.out_dir, "features.joblib")
    ckpt = os.path.join(args.out_dir, "finetuned.pt")
    runtime = runtime_options(args) | {
        "cache": args.cache or os.path.join(args.out_dir, "features.h5")}
    with log_to_stderr(["featurize.progress", "featurize.finetuning.finetune"]):
        start = time.perf_counter()
        model = train_folder(args.data_dir, **runtime)
        model.save(model_path)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        tuned = finetune(args.data_dir, ckpt, device=args.device, num_workers=args.workers,
                         check_labels=partial(plan_folds, small_classes="error"))
        finetune_s = time.perf_counter() - start
        evaluations = [load_model(path).evaluate(args.test, **runtime)
                       for path in (model_path, ckpt)]
    # the files left out of training (the same for both) and of the test folder
    code = max(report_failed(tuned.failed, len(tuned.paths) + len(tuned.skipped),
                             where=" of the training folder"),
               report_failed(evaluations[0].failed, evaluations[0].n_images
                             + len(evaluations[0].skipped), where=" of the test folder"))
    rows = [(name, e.scores["balanced_accuracy"], e.scores["accuracy"], seconds, path)
            for (name, path, seconds), e in zip(
                (("features + heads", model_path, train_s), ("fine-tuning", ckpt, finetune_s)),
                evaluations)]
    paired = paired_comparison(*_common_rows(*evaluations))
    print(f"\nOn {args.test}:")
    print(f"{'method':<18}{'balanced acc.':>14}{'accuracy':>10}{'time':>9}  model")
    for name, bal, acc, seconds, path in rows:
        print(f"{name:<18}{bal:>14.4f}{acc:>10.4f}{seconds:>8.0f}s  {path}")
    text = verdict(rows, paired)
    print(f"\n{text}")
    if args.report:
        extra = report_section(rows, text, args.test)
        model.report(args.data_dir, args.test, out=args.report, extra=extra, **runtime)
        print(f"Wrote {args.report}")
    return code


def _common_rows(a, b):
    """True classes and both predictions on the test images both models could read (two
    :class:`classify.folders.Evaluation` of the same folder)."""
    both = np.intersect1d(a.ok, b.ok)
    pred_a = dict(zip(a.ok.tolist(), a.predicted))
    pred_b = dict(zip(b.ok.tolist(), b.predicted))
    return (a.labels[both], [pred_a[row] for row in both.tolist()],
            [pred_b[row] for row in both.tolist()])
