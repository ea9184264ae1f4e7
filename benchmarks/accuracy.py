"""Accuracy levers: data set x configuration -> CV score on train, test score, times.

For each data set (a folder with a training split and a test split, one sub-folder per class):

1. **baseline**: ``make_pipeline(CNNFeaturizer(), StandardScaler(),
   LogisticRegression(C=0.1))``: Lite0 penultimate features, fitted on train, scored on test;
   its CV score is a 5-fold cross-validation of the same pipeline on train.
2. **levers**, each a fixed feature configuration with a standardized logistic regression
   whose C is chosen by 5-fold CV on train (grid 0.01 ... 1): backbones (Lite0/1/2 at their
   native 224/240/260 px), concatenated layers, concatenated backbones, test-time horizontal
   flip (mean of the features of the image and its mirror), L2 / signed square root / PCA
   whitening (fitted inside the folds), and a nearest-centroid head.
3. **few-shot**: 5 training images per class (5 random draws), logistic regression against a
   nearest-centroid head on the same features; test score averaged over the draws.
4. **featurize train** as a user runs it, with its defaults and with older defaults, then
   ``featurize evaluate`` on the test split (each in its own process).

The test split is used only to report the score of each configuration, never to choose.
Features are extracted once per backbone into a fresh HDF5 cache (extraction time = that cold
run); mirrored images go through the same extractor without the cache. It is a script, not a
test::

    python benchmarks/accuracy.py                         # clothing and ants/bees (~30 min)
    python benchmarks/accuracy.py --sets hymenoptera       # ants/bees only (~5 min)
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
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
SETS = {"clothing": (SHARED / "clothing", "train", "test"),
        "hymenoptera": (SHARED / "hymenoptera_data", "train", "val")}
L0, L1, L2 = "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"
CS = (0.01, 0.03, 0.1, 0.3, 1.0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default="clothing,hymenoptera",
                   help="comma-separated: clothing, hymenoptera")
    p.add_argument("--skip-cli", action="store_true", help="skip the featurize train rows")
    p.add_argument("--json-out", type=Path, default=None)
    return p.parse_args(argv)


class Features:
    """Per-(backbone, flip) feature blocks of one split, extracted once."""

    def __init__(self, paths, cache: Path):
        self.paths, self.cache, self.blocks, self.seconds = paths, cache, {}, {}

    def get(self, backbone: str, layer: str, flip: bool = False) -> np.ndarray:
        if (backbone, flip) not in self.blocks:
            self._extract(backbone, flip)
        return self.blocks[backbone, flip][layer]

    def _extract(self, backbone: str, flip: bool) -> None:
        from PIL import ImageOps

        from featurize import default_layers, extract_features, list_layers, load_image

        layers = default_layers(list_layers(backbone))
        sources = self.paths
        start = time.perf_counter()
        if flip:
            sources = []
            for path in self.paths:
                try:
                    sources.append(ImageOps.mirror(load_image(path)))
                except Exception:  # the extractor reports it as a NaN row
                    sources.append(path)
        X = extract_features(sources, backbone=backbone, layer=layers, on_error="nan",
                             cache=None if flip else str(self.cache), verbose=0)
        self.seconds[backbone, flip] = time.perf_counter() - start
        widths = {i.name: i.shape[0] for i in list_layers(backbone)}
        out, start_col = {}, 0
        for layer in layers:
            out[layer] = X[:, start_col:start_col + widths[layer]]
            start_col += widths[layer]
        self.blocks[backbone, flip] = out


def last_two(backbone):
    from featurize import default_layers, list_layers

    return [(backbone, layer) for layer in default_layers(list_layers(backbone))[-2:]]


def levers():
    """(name, members, flip, transform, head)."""
    lite0_b = last_two(L0)
    s6 = last_two(L0) + last_two(L1) + last_two(L2)
    p3 = [(L0, "penultimate"), (L1, "penultimate"), (L2, "penultimate")]
    return [
        ("lite0 penultimate (C by CV)", [(L0, "penultimate")], False, None, "logreg"),
        ("lite1 penultimate (240 px)", [(L1, "penultimate")], False, None, "logreg"),
        ("lite2 penultimate (260 px)", [(L2, "penultimate")], False, None, "logreg"),
        ("lite0 last stage + penultimate", lite0_b, False, None, "logreg"),
        ("lite0 penultimate, flip TTA", [(L0, "penultimate")], True, None, "logreg"),
        ("lite0 penultimate, L2", [(L0, "penultimate")], False, "l2", "logreg"),
        ("lite0 penultimate, sqrt", [(L0, "penultimate")], False, "sqrt", "logreg"),
        ("lite0 penultimate, PCA whiten", [(L0, "penultimate")], False, "pca", "logreg"),
        ("lite0 penultimate, nearest centroid", [(L0, "penultimate")], False, "l2", "centroid"),
        ("lite0 + lite2 penultimate", [(L0, "penultimate"), (L2, "penultimate")], False, None,
         "logreg"),
        ("lite0+1+2 penultimate", p3, False, None, "logreg"),
        ("lite0+1+2 (stage + penultimate)", s6, False, None, "logreg"),
        ("lite0+1+2 (stage + pen.), flip TTA", s6, True, None, "logreg"),
        ("lite0+1+2 (stage + pen.), sqrt", s6, False, "sqrt", "logreg"),
    ]


def make_head(transform, head, C):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestCentroid
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler

    steps = {"l2": [Normalizer()],
             "sqrt": [FunctionTransformer(lambda X: np.sign(X) * np.sqrt(np.abs(X)))],
             "pca": [StandardScaler(), PCA(n_components=0.99, whiten=True, random_state=0)],
             None: []}[transform]
    if head == "centroid":
        return make_pipeline(*steps, StandardScaler(), Normalizer(), NearestCentroid())
    return make_pipeline(*steps, StandardScaler(), LogisticRegression(C=C, max_iter=3000))


def score(estimator, Xtr, ytr, Xte, yte, cv):
    from sklearn.base import clone
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import cross_val_predict

    pred = cross_val_predict(clone(estimator), Xtr, ytr, cv=cv, n_jobs=2)
    test = clone(estimator).fit(Xtr, ytr).predict(Xte)
    return balanced_accuracy_score(ytr, pred), balanced_accuracy_score(yte, test)


def matrix(features: Features, members, flip):
    blocks = []
    for backbone, layer in members:
        block = features.get(backbone, layer)
        if flip:
            block = (block + features.get(backbone, layer, flip=True)) / 2
        blocks.append(block)
    return np.hstack(blocks)


def run_set(name: str, tmp: Path, skip_cli: bool) -> list[dict]:
    from sklearn.model_selection import StratifiedKFold

    from featurize import load_image_folder

    root, train_split, test_split = SETS[name]
    train, test = load_image_folder(root / train_split), load_image_folder(root / test_split)
    cache = tmp / f"{name}.h5"
    ftr, fte = Features(train.paths, cache), Features(test.paths, cache)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    rows = []

    def emit(row):
        rows.append({"data": name, **row})
        print(json.dumps(rows[-1]), flush=True)

    # 1. the plain baseline, as in the issue
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Xtr, Xte = ftr.get(L0, "penultimate"), fte.get(L0, "penultimate")
    ok, okt = np.isfinite(Xtr).all(1), np.isfinite(Xte).all(1)
    ytr, yte = train.target[ok], test.target[okt]
    start = time.perf_counter()
    cv_s, test_s = score(make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)),
                         Xtr[ok], ytr, Xte[okt], yte, cv)
    emit({"config": "baseline: lite0 penultimate, logreg C=0.1", "cv": cv_s, "test": test_s,
          "extract_s": ftr.seconds[L0, False] + fte.seconds[L0, False],
          "select_s": time.perf_counter() - start, "C": 0.1})

    # 2. levers, C by CV on train
    for config, members, flip, transform, head in levers():
        Xtr, Xte = matrix(ftr, members, flip), matrix(fte, members, flip)
        extract_s = sum(f.seconds[b, fl] for f in (ftr, fte) for b in {m[0] for m in members}
                        for fl in ({False, True} if flip else {False}))
        start = time.perf_counter()
        results = [(C, *score(make_head(transform, head, C), Xtr[ok], ytr, Xte[okt], yte, cv))
                   for C in (CS if head == "logreg" else (None,))]
        C, cv_s, test_s = max(results, key=lambda r: r[1])
        emit({"config": config, "cv": cv_s, "test": test_s, "extract_s": extract_s,
              "select_s": time.perf_counter() - start, "C": C, "dim": int(Xtr.shape[1])})

    # 3. few-shot: 5 images per class
    from sklearn.metrics import balanced_accuracy_score

    s6 = last_two(L0) + last_two(L1) + last_two(L2)
    for config, members in (("lite0 penultimate", [(L0, "penultimate")]), ("lite0+1+2", s6)):
        Xtr, Xte = matrix(ftr, members, False)[ok], matrix(fte, members, False)[okt]
        for head in ("logreg", "centroid"):
            scores = []
            for draw in range(5):
                rng = np.random.default_rng(draw)
                idx = np.concatenate([rng.choice(np.flatnonzero(ytr == c), 5, replace=False)
                                      for c in np.unique(ytr)])
                model = make_head("l2" if head == "centroid" else None, head, 0.1)
                scores.append(balanced_accuracy_score(yte, model.fit(Xtr[idx], ytr[idx])
                                                      .predict(Xte)))
            emit({"config": f"5 per class: {config}, {head}", "cv": None,
                  "test": float(np.mean(scores)), "test_std": float(np.std(scores))})

    # 4. featurize train as a user runs it (warm cache: the selection's own time), then evaluate
    if not skip_cli:
        for config, extra in (
                ("featurize train (defaults)", []),
                ("featurize train --rule one_se", ["--rule", "one_se"]),
                ("featurize train --backbone lite0 --rule one_se (0.1 defaults)",
                 ["--backbone", L0, "--rule", "one_se"])):
            model = tmp / f"{name}-{len(rows)}.joblib"
            start = time.perf_counter()
            trained = _cli("train", str(root / train_split), "--out", str(model), "--cache",
                           str(cache), "--json", *extra)
            train_s = time.perf_counter() - start
            evaluated = _cli("evaluate", str(model), str(root / test_split), "--cache",
                             str(cache), "--json")
            emit({"config": config, "cv": trained["cv_scores"]["balanced_accuracy"],
                  "test": evaluated["balanced_accuracy"], "train_s_warm": train_s,
                  "chosen": f"{trained['backbone']} / {trained['layer']} / {trained['head']} "
                            f"{trained['params']}"})
    return rows


def _cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"featurize {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def table(rows) -> str:
    def num(value, fmt="{:.4f}"):
        return "" if value is None else fmt.format(value)

    lines = ["| data | configuration | CV bal. acc. (train) | test bal. acc. | C | extraction s "
             "| selection s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        select = r.get("select_s", r.get("train_s_warm"))
        lines.append(f"| {r['data']} | {r['config']} | {num(r.get('cv'))} | {num(r['test'])} "
                     f"| {r.get('C') or ''} | {num(r.get('extract_s'), '{:.0f}')} "
                     f"| {num(select, '{:.0f}')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="featurize-accuracy-") as tmp:
        for name in args.sets.split(","):
            rows += run_set(name.strip(), Path(tmp), args.skip_cli)
    print(table(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
