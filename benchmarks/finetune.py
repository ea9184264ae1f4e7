"""Features + heads against fine-tuning, on the same training data and the same test data.

For each data set: (a) ``featurize train`` with its defaults, then ``featurize evaluate`` on
the test split; (b) ``featurize finetune`` with its defaults, then ``featurize evaluate`` on the
same test split. Each command in its own process, from an empty cache; wall time of each, the
fine-tuning's epochs and the paired comparison of the two models on the test images (images
they predict differently, McNemar's exact test). Then, unless ``--no-speed``, the training
step's throughput in fp32 and under the default autocast, same run, same machine. A script,
not a test::

    python benchmarks/finetune.py                         # ants/bees and clothing
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SETS = {"hymenoptera": (SHARED / "hymenoptera_data", "train", "val"),
        "clothing": (SHARED / "clothing", "train", "test")}


def _run(*args: str) -> tuple[str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"featurize {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - start


def _predictions(model_path: str, test: Path) -> dict:
    """Predicted class of every test image (path -> class), as `featurize evaluate` scores."""
    from classify import load_model
    from featurize.images.folder import load_image_folder

    data = load_image_folder(test)
    pred = load_model(model_path).predict(data.paths)
    return {"paths": data.paths, "true": np.asarray(data.target_names)[data.target],
            "pred": np.asarray(pred)}


def training_speed(backbone: str = "efficientnet_lite2", unfreeze: int = 3, steps: int = 6,
                   batch_size: int = 32) -> dict:
    """Training images/s of the fine-tuning step (last ``unfreeze`` stages, channels_last), in
    fp32 and under the default autocast, alternated in one run."""
    import torch

    from featurize.finetuning.finetune import _stages, autocast_dtype
    from featurize.networks.backbones import load_backbone
    from featurize.networks.layers import penultimate_module, trace_layers

    loaded = load_backbone(backbone)
    model, size = loaded.model.eval(), loaded.preprocessing.crop_size
    layers = trace_layers(model, size)
    classifier = penultimate_module(model, layers)
    names = [classifier, *_stages(model, layers, classifier)[-unfreeze:]]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for n in names for p in model.get_submodule(n).parameters()]
    for p in params:
        p.requires_grad_(True)
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(params, lr=1e-5)
    x = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch_size, dtype=torch.long)
    auto = autocast_dtype("auto", torch.device("cpu"))
    best = {"fp32": float("inf"), "auto": float("inf")}
    for _ in range(2):  # alternated, best of each: the machine's load hits both
        for name, dtype in (("fp32", None), ("auto", auto)):
            for step in range(steps):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=dtype or torch.float32,
                                    enabled=dtype is not None):
                    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step:
                    best[name] = min(best[name], time.perf_counter() - start)
    return {"backbone": backbone, "autocast": str(auto), "fp32_img_s": batch_size / best["fp32"],
            "auto_img_s": batch_size / best["auto"], "ratio": best["fp32"] / best["auto"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default="hymenoptera,clothing")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    from classify.metrics import paired_comparison

    rows = []
    with tempfile.TemporaryDirectory(prefix="featurize-finetune-") as tmp:
        for name in args.sets.split(","):
            root, train, test = SETS[name]
            model, ckpt = Path(tmp) / f"{name}.joblib", Path(tmp) / f"{name}.pt"
            _, train_s = _run("train", str(root / train), "--out", str(model), "--cache",
                              str(Path(tmp) / f"{name}.h5"))
            out, _ = _run("evaluate", str(model), str(root / test), "--json")
            rows.append({"data": name, "method": "features + heads (featurize train)",
                         "test_balanced_accuracy": json.loads(out)["balanced_accuracy"],
                         "train_s": train_s})
            print(json.dumps(rows[-1]), flush=True)
            _, ft_s = _run("finetune", str(root / train), "--out", str(ckpt))
            out, _ = _run("evaluate", str(ckpt), str(root / test), "--json")
            saved = torch.load(ckpt, weights_only=True)
            history = saved["history"]  # every epoch run, the probe (epoch 0) included
            rows.append({"data": name, "method": f"fine-tuning (featurize finetune, "
                                                 f"{saved['backbone']})",
                         "test_balanced_accuracy": json.loads(out)["balanced_accuracy"],
                         "train_s": ft_s, "best_epoch": saved["best_epoch"],
                         "epochs": len(history) - 1,
                         "val_balanced_accuracy": [round(r["val_balanced_accuracy"], 4)
                                                   for r in history],
                         "epoch_end_s": [round(r["seconds"]) for r in history]})
            a, b = _predictions(str(model), root / test), _predictions(str(ckpt), root / test)
            rows[-1]["paired"] = paired_comparison(a["true"], a["pred"], b["pred"])
            print(json.dumps(rows[-1]), flush=True)
    print("| data | method | test balanced accuracy | wall time (s) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['method']} | {r['test_balanced_accuracy']:.4f} "
              f"| {r['train_s']:.0f} |")
    speed = None if args.no_speed else training_speed()
    if speed:
        print(f"\nTraining step, {speed['backbone']}: fp32 {speed['fp32_img_s']:.1f} img/s, "
              f"autocast {speed['autocast']} {speed['auto_img_s']:.1f} img/s "
              f"(x{speed['ratio']:.2f})")
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "speed": speed}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
