"""Head selection at the scale users bring: time against extraction, and test scores.

Run from the repository root::

    python benchmarks/selection.py timing          # 3,000 x 100 classes, default candidate widths
    python benchmarks/selection.py accuracy        # clothing and ants/bees: fast vs exhaustive
    python benchmarks/selection.py accuracy --strategies fast   # skip the (slow) exhaustive one

``timing`` extracts the default candidate layers of the embedded backbone from the clothing
training images (no cache: the real extraction cost on this machine), then runs the default
(fast) selection on synthetic features of the same widths for 3,000 images of 100 classes,
and prints both times and their ratio (target: at most 2), and the peak memory the selection
allocates in this process against the size of the candidate matrices (target: at most 2).

``accuracy`` trains with each strategy on the training split of each data set (features
cached under ``--cache-dir``) and scores the chosen model on the held-out split: strategy,
wall time, chosen configuration, CV score, test score. Choices are made on training data only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("FEATURIZE_SHARED", ROOT.parent / "shared" / "data"))
DATASETS = {"clothing": ("clothing/train", "clothing/test"),
            "ants_bees": ("hymenoptera_data/train", "hymenoptera_data/val")}


def candidate_layers(backbone: str = "efficientnet_lite0") -> list[str]:
    from featurize.layers import default_layers, list_layers

    return default_layers(list_layers(backbone))


def extract_sets(folder: Path, layers, cache) -> tuple[dict, np.ndarray, float]:
    """Candidate feature sets of a folder-per-class tree, its labels, and the seconds taken."""
    from featurize import Extractor, load_image_folder

    data = load_image_folder(folder)
    start = time.perf_counter()
    result = Extractor(layer=layers, device="cpu").extract(data.paths, cache=cache,
                                                           on_error="nan", verbose=1)
    seconds = time.perf_counter() - start
    ok = np.isfinite(result.features).all(axis=1)
    sets, col = {}, 0
    for layer in layers:
        width = result.widths[layer]
        sets[(layer, "avg")] = result.features[ok, col:col + width]
        col += width
    return sets, np.asarray(data.target_names)[data.target][ok], seconds


def synthetic_sets(widths: dict, n: int, n_classes: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Class-structured features of the given widths (later layers carry more signal)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n // n_classes)
    sets = {}
    for i, (key, width) in enumerate(widths.items()):
        signal = 0.08 + 0.04 * i  # moderate accuracy: logistic fits need real iterations
        means = rng.standard_normal((n_classes, width)).astype(np.float32)
        noise = rng.standard_normal((len(y), width)).astype(np.float32)
        sets[key] = np.maximum(signal * means[y] + noise, 0)  # post-ReLU-like, pooled
    return sets, y


def run_timing(args) -> None:
    from classify import select_model

    layers = candidate_layers()
    folder = SHARED / "clothing" / "train"
    sets, _, extract_s = extract_sets(folder, layers, cache=None)
    n_images = len(next(iter(sets.values())))
    widths = {key: X.shape[1] for key, X in sets.items()}
    print(f"extraction of {len(layers)} candidate layers {layers} for {n_images} images "
          f"(lite0, CPU, no cache): {extract_s:.1f} s")
    synth, y = synthetic_sets(widths, args.n_images, args.n_classes)
    nbytes = sum(X.nbytes for X in synth.values())
    tracemalloc.start()
    start = time.perf_counter()
    result = select_model(synth, y, probability=True, n_jobs=-1, progress="auto")
    select_s = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"fast selection on {args.n_images} x {args.n_classes} classes, widths "
          f"{list(widths.values())}: {select_s:.1f} s; chose "
          f"{result.best_feature_set}/{result.best_head} {result.best_params}")
    print(f"ratio selection / extraction = {select_s / extract_s:.2f} (target <= 2)")
    print(f"peak memory allocated by the selection (this process) = {peak / 2**20:.0f} MiB; "
          f"candidate matrices = {nbytes / 2**20:.0f} MiB; ratio {peak / nbytes:.2f} "
          "(target <= 2)")


def run_accuracy(args) -> None:
    from sklearn.metrics import balanced_accuracy_score

    from classify import fit_selected, select_model

    layers = candidate_layers()
    cache_dir = Path(args.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.datasets:
        train, test = DATASETS[name]
        cache = cache_dir / f"{name}.h5"
        sets, y, _ = extract_sets(SHARED / train, layers, cache)
        test_sets, y_test, _ = extract_sets(SHARED / test, layers, cache)
        for strategy in args.strategies:
            start = time.perf_counter()
            selection = select_model(sets, y, probability=True, n_jobs=-1, search=strategy,
                                     progress="auto")
            model = fit_selected(selection, sets, y)
            seconds = time.perf_counter() - start
            pred = model.predict_features(test_sets[selection.best_feature_set])
            row = (name, strategy, f"{seconds:.1f}",
                   f"{'/'.join(selection.best_feature_set)} {selection.best_head} "
                   f"{selection.best_params}", f"{selection.best_score:.4f}",
                   f"{balanced_accuracy_score(y_test, pred):.4f}")
            rows.append(row)
            print(" | ".join(row), flush=True)
    print("\n| data | strategy | wall s | chosen | CV bal. acc. | test bal. acc. |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    timing = sub.add_parser("timing")
    timing.add_argument("--n-images", type=int, default=3000)
    timing.add_argument("--n-classes", type=int, default=100)
    accuracy = sub.add_parser("accuracy")
    accuracy.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    accuracy.add_argument("--strategies", nargs="+", default=["fast", "exhaustive"],
                          choices=["fast", "exhaustive"])
    accuracy.add_argument("--cache-dir", default="benchmark-cache")
    args = parser.parse_args(argv)
    (run_timing if args.what == "timing" else run_accuracy)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
