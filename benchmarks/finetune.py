"""Features + heads against fine-tuning, on the same training data and the same test data.

For each data set: (a) ``featurize train`` with its defaults, then ``featurize evaluate`` on
the test split; (b) ``featurize finetune`` with its defaults, then ``featurize evaluate`` on the
same test split. Each command in its own process, from an empty cache; wall time of each, and
training images/s of the fine-tuning. A script, not a test::

    python benchmarks/finetune.py                         # ants/bees and clothing (2 cores: ~40 min)
    python benchmarks/finetune.py --sets hymenoptera
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SETS = {"hymenoptera": (SHARED / "hymenoptera_data", "train", "val"),
        "clothing": (SHARED / "clothing", "train", "test")}


def _run(*args: str) -> tuple[str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"featurize {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default="hymenoptera,clothing")
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="featurize-finetune-") as tmp:
        for name in args.sets.split(","):
            root, train, test = SETS[name]
            model, ckpt = Path(tmp) / f"{name}.joblib", Path(tmp) / f"{name}.pt"
            _, train_s = _run("train", str(root / train), "--out", str(model), "--cache",
                              str(Path(tmp) / f"{name}.h5"))
            out, eval_s = _run("evaluate", str(model), str(root / test), "--json")
            rows.append({"data": name, "method": "features + heads (featurize train)",
                         "test_balanced_accuracy": json.loads(out)["balanced_accuracy"],
                         "train_s": train_s})
            print(json.dumps(rows[-1]), flush=True)
            _, ft_s = _run("finetune", str(root / train), "--out", str(ckpt))
            out, _ = _run("evaluate", str(ckpt), str(root / test), "--json")
            import torch

            history = torch.load(ckpt, weights_only=True)["history"]  # every epoch run
            n_train = sum(1 for _ in (root / train).rglob("*") if _.is_file())
            rows.append({"data": name, "method": "fine-tuning (featurize finetune)",
                         "test_balanced_accuracy": json.loads(out)["balanced_accuracy"],
                         "train_s": ft_s, "epochs": len(history),
                         "train_images_per_s": round(0.85 * n_train * len(history) / ft_s, 1)})
            print(json.dumps(rows[-1]), flush=True)
    print("| data | method | test balanced accuracy | wall time (s) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['method']} | {r['test_balanced_accuracy']:.4f} "
              f"| {r['train_s']:.0f} |")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
