"""Accuracy on ants/bees (train on train/, score on val/) of the default and the automatic pipeline.

1. default: ``make_pipeline(CNNFeaturizer(), StandardScaler(), LogisticRegression(C=0.1,
   max_iter=2000))`` fitted on the train images, scored on the val images;
2. automatic selection: ``featurize train TRAIN_DIR`` (candidate layers, heads and C chosen by
   repeated cross-validation on train only, model refitted and saved), then
   ``featurize evaluate MODEL VAL_DIR``, each as its own process, as a user runs them.

Each with its wall time (features computed from scratch: no cache is shared between the two).
Prints a table, then one JSON line. It is a script, not a test::

    python benchmarks/accuracy.py
    python benchmarks/accuracy.py --backbone resnet18 --weights none   # no pretrained weights
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
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hymenoptera_data"
sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="folder with train/ and val/, one sub-folder per class")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="DEFAULT")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-default", action="store_true")
    p.add_argument("--skip-auto", action="store_true")
    p.add_argument("--json-out", type=Path, default=None)
    return p.parse_args(argv)


def default_pipeline(data: Path, backbone: str, weights, device: str) -> dict:
    """Fit the default pipeline on train/, score it on val/."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from featurize import CNNFeaturizer, load_image_folder

    train, val = load_image_folder(data / "train"), load_image_folder(data / "val")
    pipe = make_pipeline(CNNFeaturizer(backbone=backbone, weights=weights, device=device),
                         StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    start = time.perf_counter()
    pipe.fit(train.paths, train.target)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = pipe.predict(val.paths)
    predict_s = time.perf_counter() - start
    return {
        "val_accuracy": float(accuracy_score(val.target, pred)),
        "val_balanced_accuracy": float(balanced_accuracy_score(val.target, pred)),
        "n_train": len(train.paths), "n_val": len(val.paths),
        "fit_s": round(fit_s, 2), "predict_s": round(predict_s, 2),
        "engine": pipe[0]._get_extractor().engine_name,
    }


def _cli(*args: str) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 3):
        raise SystemExit(f"featurize {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), seconds


def auto_selection(data: Path, backbone: str, weights, device: str, tmp: Path) -> dict:
    """``featurize train`` on train/ then ``featurize evaluate`` on val/."""
    model = tmp / "model.featurize"
    trained, train_s = _cli("train", str(data / "train"), "--out", str(model), "--backbone",
                            backbone, "--weights", str(weights), "--device", device,
                            "--cache", str(tmp / "train.h5"), "--json")
    evaluated, eval_s = _cli("evaluate", str(model), str(data / "val"), "--json")
    return {
        "val_accuracy": evaluated.get("accuracy"),
        "val_balanced_accuracy": evaluated.get("balanced_accuracy"),
        "chosen": {k: trained.get(k) for k in ("layer", "pooling", "head", "params")},
        "cv_scores": trained.get("cv_scores"),
        "train_s": round(train_s, 2), "evaluate_s": round(eval_s, 2),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    data = args.data.resolve()
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        sys.exit(f"expected {data}/train and {data}/val")
    weights = None if str(args.weights).lower() == "none" else args.weights
    report = {"backbone": args.backbone, "weights": weights, "data": str(data),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    if not args.skip_default:
        report["default_pipeline"] = default_pipeline(data, args.backbone, weights, args.device)
    if not args.skip_auto:
        with tempfile.TemporaryDirectory(prefix="featurize-acc-") as tmp:
            report["auto_selection"] = auto_selection(data, args.backbone, weights or "none",
                                                      args.device, Path(tmp))
    print(f"\nants/bees, {args.backbone}: train on train/, score on val/")
    print(f"{'pipeline':<22}{'val acc':>9}{'bal acc':>9}   {'time (s)':<28}")
    if "default_pipeline" in report:
        d = report["default_pipeline"]
        print(f"{'default (logreg C=.1)':<22}{d['val_accuracy']:>9.4f}"
              f"{d['val_balanced_accuracy']:>9.4f}"
              f"   {'fit %.1f + predict %.1f' % (d['fit_s'], d['predict_s']):<28}")
    if "auto_selection" in report:
        a = report["auto_selection"]
        acc, bal = a["val_accuracy"], a["val_balanced_accuracy"]
        print(f"{'automatic selection':<22}{acc if acc is not None else float('nan'):>9.4f}"
              f"{bal if bal is not None else float('nan'):>9.4f}"
              f"   {'train %.1f + evaluate %.1f' % (a['train_s'], a['evaluate_s']):<28}")
        print(f"  chosen: {a['chosen']}")
    line = json.dumps(report)
    print(line)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
