"""``featurize compare DATA_DIR --test TEST_DIR``: features + heads against fine-tuning."""

from __future__ import annotations

import argparse
import os
import time

from pipelines.classify_common import add_runtime_args

NAME = "compare"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``compare`` sub-command."""
    parser = subparsers.add_parser(
        NAME, help="train features + heads and a fine-tuned network; score both on TEST_DIR",
        description="Answer 'would fine-tuning have done better?': `featurize train` and "
                    "`featurize finetune`, both with their defaults, on DATA_DIR, then both "
                    "scored on TEST_DIR, with the time each took.")
    parser.add_argument("data_dir", metavar="DATA_DIR")
    parser.add_argument("--test", required=True, metavar="TEST_DIR")
    parser.add_argument("--out-dir", default="compare", metavar="DIR",
                        help="where the two models go (default ./compare)")
    parser.add_argument("--report", default=None, metavar="HTML",
                        help="also write the HTML report of the features + heads model, with "
                             "the comparison at its top (see `featurize report`)")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train both, score both, say which to use; returns 0."""
    from classify import load_model
    from featurize.finetune import finetune
    from featurize.progress import log_to_stderr
    from pipelines.cli import build_parser
    from pipelines.cmd_evaluate import evaluate_model

    os.makedirs(args.out_dir, exist_ok=True)
    model_path = os.path.join(args.out_dir, "features.joblib")
    ckpt = os.path.join(args.out_dir, "finetuned.pt")
    cache = args.cache or os.path.join(args.out_dir, "features.h5")
    runtime = ["--device", args.device, "--batch-size", str(args.batch_size)] + (
        ["--num-workers", str(args.num_workers)] if args.num_workers is not None else [])
    start = time.perf_counter()
    sub = build_parser().parse_args(["train", args.data_dir, "--out", model_path, "--cache",
                                     cache, *runtime])
    sub.func(sub)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    with log_to_stderr(["featurize.progress"]):
        finetune(args.data_dir, ckpt, device=args.device, num_workers=args.num_workers)
    finetune_s = time.perf_counter() - start
    rows = []
    for name, path, seconds in (("features + heads", model_path, train_s),
                                ("fine-tuning", ckpt, finetune_s)):
        scores = evaluate_model(load_model(path), args.test, args)["scores"]
        rows.append((name, scores["balanced_accuracy"], scores["accuracy"], seconds, path))
    print(f"\nOn {args.test}:")
    print(f"{'method':<18}{'balanced acc.':>14}{'accuracy':>10}{'time':>9}  model")
    for name, bal, acc, seconds, path in rows:
        print(f"{name:<18}{bal:>14.4f}{acc:>10.4f}{seconds:>8.0f}s  {path}")
    (a, bal_a, *_), (b, bal_b, *_) = sorted(rows, key=lambda r: -r[1])
    verdict = (f"Use {a}: {100 * (bal_a - bal_b):+.1f} points of balanced accuracy over {b}."
               if bal_a > bal_b else "Both score the same; features + heads is the cheaper one.")
    print(f"\n{verdict}")
    if args.report:
        import html

        table = "".join(f"<tr><th>{html.escape(name)}</th><td>{bal:.4f}</td><td>{acc:.4f}</td>"
                        f"<td>{seconds:.0f} s</td></tr>" for name, bal, acc, seconds, _ in rows)
        extra = {"Features + heads or fine-tuning?": (
            f"<p><b>{html.escape(verdict)}</b> (test folder {html.escape(str(args.test))})</p>"
            "<table><thead><tr><th>method</th><th>balanced accuracy</th><th>accuracy</th>"
            f"<th>time</th></tr></thead><tbody>{table}</tbody></table>")}
        load_model(model_path).report(args.data_dir, args.test, out=args.report, extra=extra,
                                      cache=cache, device=args.device)
        print(f"Wrote {args.report}")
    return 0
