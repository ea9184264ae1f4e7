"""Head selection at the scale users bring: time against extraction, and test scores.

Run from the repository root::

    python benchmarks/selection.py timing          # 3,000 x 100 classes, default candidate widths
    python benchmarks/selection.py accuracy        # clothing and ants/bees: fast vs exhaustive
    python benchmarks/selection.py accuracy --strategies fast   # skip the (slow) exhaustive one
    python benchmarks/selection.py scale           # 5,000 and 20,000 x 100 classes, 3 backbones
    python benchmarks/selection.py rules           # the choice rules on resplits of 5 data sets

``timing`` extracts the default candidate layers of the embedded backbone from the clothing
training images (no cache: the real extraction cost on this machine), then runs the default
(fast) selection on synthetic features of the same widths for 3,000 images of 100 classes,
and prints both times and their ratio (target: at most 2), and the peak memory the selection
allocates in this process against the size of the candidate matrices (target: at most 2).

``accuracy`` trains with each strategy on the training split of each data set (features
cached under ``--cache-dir``) and scores the chosen model on the held-out split: strategy,
wall time, chosen configuration, CV score, test score. Choices are made on training data only.

``scale`` runs the default selection of ``featurize train`` (fast search, probabilities) on
synthetic float32 features of 100 classes shaped like the 16 default candidate sets of the three
EfficientNet-Lite backbones (widths 80 to 1,280, and their 4,832-column concatenation), at 5,000
and 20,000 images by default, each size in a fresh process. It prints one JSON line: per size the
seconds of the screening and of the finalists' cross-validation, the extraction time of as many
images at ``--extraction-rate`` images/s (the three backbones on this 2-core machine), the ratio
``finalists_cv / extraction`` (target <= 1), and the peak resident memory of the process tree
(the selection's process and its joblib workers, sampled every 0.1 s) beside the size of the
candidate matrices.

``rules`` compares the choice rules (``select_model(rule=...)``) where they differ: on random
stratified resplits of training data only (the images of a data set's training split, or a
scikit-learn data set), it selects on ``n`` rows as ``featurize train`` does (fast search,
probabilities; the 16 default candidate sets of the three backbones for the image sets) and
scores the refitted choice on the other rows. It prints, per data set and size, the mean
held-out balanced accuracy and log loss of each rule, how many resplits each rule won against
``best``, and the chosen C values, then one JSON line. The test splits are not read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("FEATURIZE_SHARED", ROOT.parent / "shared" / "data"))
DATASETS = {"clothing": ("clothing/train", "clothing/test"),
            "ants_bees": ("hymenoptera_data/train", "hymenoptera_data/val")}


def candidate_layers(backbone: str = "efficientnet_lite0") -> list[str]:
    from featurize.networks.layers import default_layers, list_layers

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


#: Widths of ``featurize train``'s 16 default candidate sets with the three EfficientNet-Lite
#: backbones (the last one is the concatenation of each backbone's last two), as on clothing.
DEFAULT_WIDTHS = {"lite0": [80, 112, 192, 320, 1280], "lite1": [80, 112, 192, 320, 1280],
                  "lite2": [88, 120, 208, 352, 1280]}


def scale_sets(n: int, n_classes: int, seed: int = 0, signal: float = 0.4,
               rank: int = 512, power: float = 1.0) -> tuple[dict, np.ndarray]:
    """Correlated, post-ReLU-like float32 features in the shape of the default candidates.

    Each backbone sees the images through one latent (class means plus noise) whose k-th
    direction is scaled by ``k ** -power``: a power-law spectrum like that of pooled CNN
    features, which makes logistic regression need as many L-BFGS iterations as on real
    features (60 to 160 per fit, as on clothing; an isotropic latent needed about 10 and made
    the cross-validation look 6x cheaper than it is). Each layer is a random projection of the
    latent plus its own small noise, later layers carrying more of it.
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    spectrum = (np.arange(1, rank + 1) ** -power).astype(np.float32)
    means = rng.standard_normal((n_classes, rank)).astype(np.float32) * signal
    sets, last = {}, []
    for backbone, widths in DEFAULT_WIDTHS.items():
        latent = (means[y] + rng.standard_normal((n, rank), dtype=np.float32)) * spectrum
        for depth, width in enumerate(widths):
            A = rng.standard_normal((rank, width), dtype=np.float32) * np.float32(
                (depth + 1) / len(widths))
            X = latent @ A
            X += 0.05 * rng.standard_normal((n, width), dtype=np.float32)
            np.maximum(X, 0, out=X)
            sets[(f"{backbone}:block{depth}", "avg")] = X
        last += [sets[(f"{backbone}:block{d}", "avg")] for d in (len(widths) - 2, len(widths) - 1)]
    sets[("concat:lite0+lite1+lite2", "avg")] = np.hstack(last)
    return sets, y


class _TreeRSS(logging.Handler):
    """Peak resident memory of this process and its children (joblib workers), sampled; and
    the wall and CPU seconds of the process tree when the cross-validation starts (the
    selection logs "cross-validating ..." then), so that the screening and the finalists'
    cross-validation are timed apart. CPU seconds / cores is the wall time a quiet machine
    would take (the shared development machine is often loaded several times over)."""

    def __init__(self, interval: float = 0.1):
        super().__init__(logging.INFO)
        self.root, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._workers: dict = {}
        self.marks: list = []

    def cpu(self) -> float:
        """CPU seconds of this process and of every worker seen so far (dead ones: last seen)."""
        for proc in self.root.children(recursive=True):
            try:
                t = proc.cpu_times()
            except psutil.Error:  # a worker that just ended: its last sample counts
                continue
            self._workers[proc.pid] = t.user + t.system
        t = self.root.cpu_times()
        return t.user + t.system + sum(self._workers.values())

    def emit(self, record) -> None:
        if record.getMessage().startswith("cross-validating") and not self.marks:
            self.marks.append((time.perf_counter(), self.cpu()))

    def _sample(self) -> None:
        total = 0
        for proc in [self.root] + self.root.children(recursive=True):
            try:
                total += proc.memory_info().rss
                if proc is not self.root:
                    t = proc.cpu_times()
                    self._workers[proc.pid] = t.user + t.system
            except psutil.Error:  # a worker that just ended
                pass
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self.before = self.peak  # the inputs' memory, before the selection
        self.start = (time.perf_counter(), self.cpu())
        logging.getLogger("classify").addHandler(self)
        logging.getLogger("classify").setLevel(logging.INFO)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.end = (time.perf_counter(), self.cpu())
        logging.getLogger("classify").removeHandler(self)
        self._stop.set()
        self._thread.join()
        self._sample()


def run_scale_one(args) -> None:
    """One size, in this process: the JSON of one row on stdout."""
    from classify import select_model

    sets, y = scale_sets(args.n_images, args.n_classes)
    nbytes = sum(X.nbytes for X in sets.values())
    with _TreeRSS() as rss:
        result = select_model(sets, y, probability=True, n_jobs=-1, n_splits=args.folds,
                              progress="none")
    (w0, c0), (w1, c1), (w2, c2) = rss.start, rss.marks[0], rss.end
    cores = len(os.sched_getaffinity(0))
    extraction = args.n_images / args.extraction_rate
    cv = result.best_cv
    print(json.dumps({
        "n_images": args.n_images, "n_classes": args.n_classes, "n_sets": len(sets),
        "concat_width": int(sets[("concat:lite0+lite1+lite2", "avg")].shape[1]),
        "screening_s": round(w1 - w0, 1), "finalists_cv_s": round(w2 - w1, 1),
        "selection_s": round(w2 - w0, 1), "extraction_s": round(extraction, 1),
        "screening_cpu_s": round(c1 - c0, 1), "finalists_cv_cpu_s": round(c2 - c1, 1),
        "cores": cores, "load_average_1min": round(os.getloadavg()[0], 1),
        "ratio_finalists_cv_to_extraction": round((w2 - w1) / extraction, 3),
        "ratio_finalists_cv_cpu_per_core_to_extraction": round((c2 - c1) / cores / extraction,
                                                               3),
        "ratio_selection_to_extraction": round((w2 - w0) / extraction, 3),
        "folds": f"{cv.n_repeats}x{cv.n_splits}", "fits": int(result.table.shape[0])
        * cv.n_repeats * cv.n_splits,
        "chosen": f"{'/'.join(result.best_feature_set)} {result.best_head} {result.best_params}",
        "cv_balanced_accuracy": round(result.best_score, 4),
        "rss_before_selection_mib": round(rss.before / 2**20),
        "peak_rss_mib": round(rss.peak / 2**20), "self_maxrss_mib":
        round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "candidate_matrices_mib": round(nbytes / 2**20),
    }), flush=True)


def run_scale(args) -> None:
    """Every size in a fresh process (peak memory per size), one JSON line at the end."""
    rows = []
    for n in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "scale-one", "--n-images", str(n), "--n-classes",
             str(args.n_classes), "--extraction-rate", str(args.extraction_rate)]
            + ["--folds", str(args.folds)],
            check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "selection scale", "extraction_images_per_s":
                      args.extraction_rate, "rows": rows}))


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


#: (data set, training rows per resplit) of ``rules``; the rest of the rows are held out.
RULE_SIZES = {"clothing": (100, 300, 1000), "ants_bees": (60, 120), "digits": (150, 600),
              "breast_cancer": (100,), "wine": (60,)}


def rule_data(name: str, cache_dir: Path) -> tuple[dict, np.ndarray]:
    """Candidate feature sets and labels of a ``rules`` data set (training images only)."""
    import sklearn.datasets

    if name in DATASETS:
        from classify.training import DEFAULT_BACKBONES, candidate_features
        from featurize import load_image_folder

        cache_dir.mkdir(parents=True, exist_ok=True)
        candidates = candidate_features(load_image_folder(SHARED / DATASETS[name][0]),
                                        backbones=DEFAULT_BACKBONES,
                                        cache=cache_dir / f"{name}.h5", progress="auto")
        return candidates.sets, candidates.y
    X, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    return {"x": X.astype(np.float32)}, y


def run_rules(args) -> None:
    from sklearn.metrics import balanced_accuracy_score, log_loss
    from sklearn.model_selection import StratifiedShuffleSplit

    from classify import fit_selected, select_model

    results = []
    for name in args.datasets:
        sets, y = rule_data(name, Path(args.cache_dir))
        for n in RULE_SIZES[name]:
            split = StratifiedShuffleSplit(args.resplits, train_size=n, random_state=0)
            scores = {rule: [] for rule in args.rules}
            for train, held in split.split(y, y):
                for rule in args.rules:
                    part = {k: X[train] for k, X in sets.items()}
                    selection = select_model(part, y[train], probability=True, rule=rule)
                    model = fit_selected(selection, part, y[train])
                    X_held = sets[selection.best_feature_set][held]
                    proba = model.predict_proba_features(X_held)
                    scores[rule].append((
                        balanced_accuracy_score(y[held], model.classes_[proba.argmax(1)]),
                        log_loss(y[held], proba, labels=model.classes_),
                        selection.best_params.get("C")))
            row = {"data": name, "n": n, "held_out": len(y) - n, "resplits": args.resplits}
            for rule, values in scores.items():
                acc, loss, cs = zip(*values)
                row[rule] = {"balanced_accuracy": round(float(np.mean(acc)), 4),
                             "log_loss": round(float(np.mean(loss)), 4),
                             "C": [float(c) if c is not None else None for c in cs]}
                if rule != "best" and "best" in scores:
                    diff = np.subtract(acc, [v[0] for v in scores["best"]])
                    row[rule]["vs_best"] = [int((diff > 0).sum()), int((diff < 0).sum())]
            results.append(row)
            print(json.dumps(row), flush=True)
    print("\n| data | n | " + " | ".join(f"{r} bal. acc. / log loss" for r in args.rules)
          + " |")
    print("|---|---|" + "---|" * len(args.rules))
    for row in results:
        cells = [f"{row[r]['balanced_accuracy']:.4f} / {row[r]['log_loss']:.3f}"
                 + (f" ({row[r]['vs_best'][0]}+ {row[r]['vs_best'][1]}-)"
                    if "vs_best" in row[r] else "") for r in args.rules]
        print(f"| {row['data']} | {row['n']} | " + " | ".join(cells) + " |")
    print(json.dumps({"rules": results}))


def main(argv=None) -> int:
    from classify.rules import RULES

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    timing = sub.add_parser("timing")
    timing.add_argument("--n-images", type=int, default=3000)
    timing.add_argument("--n-classes", type=int, default=100)
    for name in ("scale", "scale-one"):
        scale = sub.add_parser(name)
        if name == "scale":
            scale.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
        else:
            scale.add_argument("--n-images", type=int, required=True)
        scale.add_argument("--n-classes", type=int, default=100)
        scale.add_argument("--folds", type=int, default=5,
                           help="n_splits of select_model (default 5, as featurize train)")
        scale.add_argument("--extraction-rate", type=float, default=125.0,
                           help="images/s of the three-backbone extraction (the reference)")
    accuracy = sub.add_parser("accuracy")
    accuracy.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    accuracy.add_argument("--strategies", nargs="+", default=["fast", "exhaustive"],
                          choices=["fast", "exhaustive"])
    accuracy.add_argument("--cache-dir", default="benchmark-cache")
    rules = sub.add_parser("rules")
    rules.add_argument("--datasets", nargs="+", default=list(RULE_SIZES), choices=RULE_SIZES)
    rules.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    rules.add_argument("--resplits", type=int, default=5)
    rules.add_argument("--cache-dir", default="benchmark-cache")
    args = parser.parse_args(argv)
    {"timing": run_timing, "accuracy": run_accuracy, "scale": run_scale,
     "scale-one": run_scale_one, "rules": run_rules}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
