"""Throughput of feature extraction: the forward pass alone vs the whole pipeline, side by side.

Measured in one process, interleaved, ``--repeats`` times (medians reported), because the
development machines are small and shared: only ratios taken within one run mean anything.

1. model-only: ``Extractor.forward`` on pre-decoded, pre-resized uint8 batches already on the
   device (the same engine and batch size as 2);
2. end-to-end: ``Extractor.extract`` from JPEG files into a fresh (cold) HDF5 cache;
3. naive: an img2vec-style loop (PIL open, torchvision transform, one image per forward pass
   of the eager model), on a subset (``--naive-images``);
4. warm: the same ``extract`` call again, every row served by the cache;
5. loader-only: the data loader of 2 without the forward pass (what decoding alone sustains).

The files are the data set (default ``../shared/data/hymenoptera_data`` next to the repo)
copied until there are ``--n-images`` of them, each copy with a few unique bytes appended
after the image data, so every file has its own content key (the cache would otherwise
compute each distinct image once). Prints a table, then one JSON line. It is a script, not a
test::

    python benchmarks/throughput.py                     # efficientnet_lite0, 1000 images, CPU
    python benchmarks/throughput.py --quick             # smoke run, about a minute
    python benchmarks/throughput.py --device cuda --backbone resnet50 --weights none
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hymenoptera_data"
sys.path.insert(0, str(REPO))

import numpy as np
import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="DEFAULT",
                   help="weights name, checkpoint path, or 'none' (random init: same speed)."
                        " DEFAULT falls back to random init when the weights are not here.")
    p.add_argument("--layer", default=None, help="layer(s), comma-separated (default penultimate)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--n-images", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: the library default of Extractor.extract")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data-loader workers (default: the library's automatic choice)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads before anything runs (default: untouched)")
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--naive-images", type=int, default=100)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 160 images, 1 repeat, 16 naive images")
    p.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--compare-engines", action="store_true",
                   help="instead: model-only images/s of every engine (and eager channels_last),"
                        " interleaved, with speed-up and feature agreement vs eager fp32")
    p.add_argument("--with-compile", action="store_true",
                   help="with --compare-engines: also torch.compile (minutes to compile on CPU)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_images, args.repeats, args.naive_images = 160, 1, 16
    return args


def make_copies(files: list[Path], n: int, out: Path) -> list[str]:
    """``n`` distinct files: copies of ``files`` in turn, each with unique trailing bytes."""
    paths = []
    for k in range(n):
        src = files[k % len(files)]
        folder = out / f"copy{k // len(files):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / src.name
        dst.write_bytes(src.read_bytes() + f"\0featurize-copy-{k}".encode())
        paths.append(str(dst))
    return paths


def peak_rss_mb() -> dict:
    """Peak RSS of this process and of its largest finished child (data-loader worker)."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"main_mb": round(self_kb / 1024, 1), "largest_worker_mb": round(child_kb / 1024, 1)}


def naive_features(paths, backbone, device) -> tuple[np.ndarray, float]:
    """img2vec-style: PIL open, torchvision transforms, one forward pass per image."""
    from PIL import Image
    from torchvision import transforms

    from featurize.layers import penultimate_module, trace_layers

    prep = backbone.preprocessing
    transform = transforms.Compose([
        transforms.Resize(prep.resize_size,
                          interpolation=transforms.InterpolationMode(prep.interpolation)),
        transforms.CenterCrop(prep.crop_size),
        transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])
    model = backbone.model.to(device).eval()
    target = penultimate_module(model, trace_layers(model, prep.crop_size))
    captured = {}
    handle = dict(model.named_modules())[target].register_forward_pre_hook(
        lambda module, inputs: captured.__setitem__("x", inputs[0]))
    rows = []
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for path in paths:
                image = Image.open(path).convert("RGB")
                model(transform(image).unsqueeze(0).to(device))
                rows.append(captured["x"].flatten(1).cpu().numpy())
    finally:
        handle.remove()
    return np.concatenate(rows), time.perf_counter() - start


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def decoded_batches(extractor, paths, n, batch_size, device):
    """uint8 batches of ``n`` images already decoded and resized, on the device."""
    from featurize.data import ImageDataset

    unique = paths[:min(len(paths), 400)]
    dataset = ImageDataset(unique, range(len(unique)), extractor.preprocessing,
                           extractor.max_pixels, extractor.draft)
    tensors = [t for _, t, _, _ in (dataset[i] for i in range(len(unique))) if t is not None]
    stacked = torch.stack(tensors)
    batches, done = [], 0
    while done < n:
        take = min(batch_size, n - done)
        idx = torch.arange(done, done + take) % len(stacked)
        batches.append(stacked[idx].to(device))
        done += take
    return batches


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_engines(args, weights, layer) -> dict:
    """Model-only images/s of each engine on the same batches, interleaved; agreement vs eager."""
    from featurize.runtimes import available_engines, compare_features
    from featurize.extraction import Extractor

    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    variants = {"eager": dict(engine="eager", channels_last=False),
                "eager channels_last": dict(engine="eager", channels_last=True)}
    for name in ("torchscript", "onnxruntime") + (("compile",) if args.with_compile else ()):
        if name in available_engines(device):
            variants[name] = dict(engine=name)
    extractors, build = {}, {}
    for label, options in variants.items():
        start = time.perf_counter()
        ex = Extractor(args.backbone, weights, layer, device=device, precision="fp32", **options)
        ex.prepare_engine()
        build[label] = time.perf_counter() - start
        extractors[label] = ex
    reference = extractors["eager"]
    size = reference.preprocessing.crop_size
    generator = torch.Generator().manual_seed(0)
    batch_size = args.batch_size or 32
    n = min(args.n_images, 4 * batch_size) if not args.quick else batch_size
    batches = [torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8,
                             generator=generator).to(device) for _ in range(n // batch_size)]
    expected = reference.forward(batches[0])
    agreement = {}
    for label, ex in extractors.items():
        got = ex.forward(batches[0])  # also the warm-up
        min_cos, max_abs = compare_features(expected, got)
        agreement[label] = {"min_cosine": min_cos, "max_abs_diff": max_abs}
    times = {label: [] for label in extractors}
    for _ in range(args.repeats):
        for label, ex in extractors.items():
            start = time.perf_counter()
            for batch in batches:
                ex.forward(batch)
            sync(device)
            times[label].append(time.perf_counter() - start)
    images = len(batches) * batch_size
    report = {"backbone": args.backbone, "device": str(device), "batch_size": batch_size,
              "images_per_repeat": images, "repeats": args.repeats,
              "torch_threads": torch.get_num_threads(), "engines": {}}
    print(f"\nmodel-only, {args.backbone} on {device}, batch {batch_size}, fp32,"
          f" {torch.get_num_threads()} threads, median of {args.repeats} interleaved repeats")
    print(f"{'engine':<22}{'images/s':>10}{'vs eager':>10}{'min cos':>10}{'max abs':>10}"
          f"{'build s':>9}")
    for label in extractors:
        speedup = statistics.median(e / t for e, t in zip(times["eager"], times[label]))
        rate = images / statistics.median(times[label])
        report["engines"][label] = {"images_per_s": round(rate, 2),
                                    "speedup_vs_eager": round(speedup, 3),
                                    "build_s": round(build[label], 2), **agreement[label]}
        print(f"{label:<22}{rate:>10.1f}{speedup:>10.2f}{agreement[label]['min_cosine']:>10.6f}"
              f"{agreement[label]['max_abs_diff']:>10.2g}{build[label]:>9.1f}")
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare_engines:
        weights = None if str(args.weights).lower() == "none" else args.weights
        from featurize.backbones import load_backbone
        from featurize.exceptions import WeightsNotFoundError

        try:
            load_backbone(args.backbone, weights)
        except WeightsNotFoundError:
            weights = None
        report = compare_engines(args, weights, args.layer.split(",") if args.layer else None)
        line = json.dumps(report)
        print(line)
        if args.json_out:
            args.json_out.write_text(line + "\n")
        return 0
    from featurize import keys
    from featurize.backbones import load_backbone
    from featurize.data import ImageDataset, collate
    from featurize.exceptions import WeightsNotFoundError
    from featurize.extraction import Extractor, default_num_workers

    data = args.data.resolve()
    files = sorted(p for p in data.rglob("*") if p.is_file())
    if not files:
        sys.exit(f"no files under {data}")
    weights = None if str(args.weights).lower() == "none" else args.weights
    try:
        load_backbone(args.backbone, weights)
    except WeightsNotFoundError:
        print(f"# weights {weights!r} of {args.backbone} not on this machine: random init"
              " (same speed)", file=sys.stderr)
        weights = None
    layer = args.layer.split(",") if args.layer else None
    extractor = Extractor(args.backbone, weights, layer, device=args.device,
                          precision=args.precision, draft=not args.no_draft, engine=args.engine)
    device = extractor.device
    batch_size = args.batch_size or Extractor.extract.__kwdefaults__["batch_size"]
    n = args.n_images
    t0 = time.perf_counter()
    engine = extractor.prepare_engine()
    build_s = time.perf_counter() - t0
    workers = (args.num_workers if args.num_workers is not None
               else default_num_workers(n, batch_size, extractor.device))

    tmp = tempfile.TemporaryDirectory(prefix="featurize-bench-")
    root = Path(tmp.name)
    paths = make_copies(files, n, root / "images")
    batches = decoded_batches(extractor, paths, n, batch_size, device)
    naive_paths = paths[:args.naive_images]

    results = {k: [] for k in ("model_only", "end_to_end", "warm", "warm_rehash", "naive",
                               "loader_only")}
    e2e_features = naive = None
    for rep in range(args.repeats):
        # 1. model-only
        extractor.forward(batches[0])
        sync(device)
        start = time.perf_counter()
        for batch in batches:
            extractor.forward(batch)
        sync(device)
        results["model_only"].append(n / (time.perf_counter() - start))
        # 2. end-to-end, cold cache
        cache = root / f"cache{rep}.h5"
        start = time.perf_counter()
        res = extractor.extract(paths, cache=cache, batch_size=batch_size, num_workers=workers,
                                on_error="nan")
        results["end_to_end"].append(n / (time.perf_counter() - start))
        e2e_features, failures = res.features, res.failures
        # 4. warm cache
        start = time.perf_counter()
        warm = extractor.extract(paths, cache=cache, batch_size=batch_size, num_workers=workers,
                                 on_error="nan")
        results["warm"].append(n / (time.perf_counter() - start))
        if warm.n_computed:
            print(f"# warning: the warm run computed {warm.n_computed} rows", file=sys.stderr)
        # 4b. warm cache as a new process sees it: every file hashed again
        keys._KEY_MEMO.clear()
        start = time.perf_counter()
        extractor.extract(paths, cache=cache, batch_size=batch_size, num_workers=workers,
                          on_error="nan")
        results["warm_rehash"].append(n / (time.perf_counter() - start))
        # 3. naive per-image loop
        if naive_paths:
            naive, seconds = naive_features(naive_paths, extractor.backbone, device)
            results["naive"].append(len(naive_paths) / seconds)
        # 5. loader alone
        dataset = ImageDataset(paths, range(n), extractor.preprocessing, extractor.max_pixels,
                               extractor.draft)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
            pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
        start = time.perf_counter()
        for _ in loader:
            pass
        results["loader_only"].append(n / (time.perf_counter() - start))
        print(f"# repeat {rep + 1}/{args.repeats}: "
              + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items() if v), file=sys.stderr)

    med = {k: statistics.median(v) for k, v in results.items() if v}
    per_rep = list(zip(results["end_to_end"], results["model_only"], results["warm"],
                       results["warm_rehash"]))
    ratios = {
        "end_to_end/model_only": statistics.median(e / m for e, m, _, _ in per_rep),
        "warm/cold": statistics.median(w / e for e, _, w, _ in per_rep),
        "warm_rehash/cold": statistics.median(w / e for e, _, _, w in per_rep),
    }
    if results["naive"]:
        ratios["end_to_end/naive"] = statistics.median(
            e / v for e, v in zip(results["end_to_end"], results["naive"]))
    agreement = {}
    if naive is not None:
        mine = e2e_features[:len(naive_paths)]
        keep = ~np.isnan(mine).any(1)
        cos = cosines(mine[keep], naive[keep])
        agreement = {"rows": int(keep.sum()),
                     "max_abs_diff": float(np.abs(mine[keep] - naive[keep]).max()),
                     "min_cosine": float(cos.min()), "median_cosine": float(np.median(cos)),
                     "rows_below_0.999": int((cos < 0.999).sum())}
    limiting = "decode/loader" if med["loader_only"] < med["model_only"] else "forward pass"
    report = {
        "backbone": args.backbone, "weights": weights, "device": str(device),
        "engine": extractor.engine_name, "engine_build_s": round(build_s, 2),
        "precision": extractor.precision, "batch_size": batch_size, "num_workers": workers,
        "torch_threads": torch.get_num_threads(), "n_images": n, "repeats": args.repeats,
        "draft": extractor.draft, "failures": len(failures),
        "images_per_s": {k: round(v, 2) for k, v in med.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "per_repeat": {k: [round(x, 2) for x in v] for k, v in results.items() if v},
        "limiting_stage": limiting, "naive_vs_end_to_end": agreement,
        "peak_rss": peak_rss_mb(),
        "machine": {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(f"\nfeaturize throughput: {args.backbone} on {device}, engine {engine}"
          f" (built in {build_s:.1f} s), batch {batch_size}, {workers} workers,"
          f" {torch.get_num_threads()} torch threads, {n} distinct images, median of"
          f" {args.repeats}")
    print(f"{'stage':<34}{'images/s':>10}")
    labels = {"model_only": "1. model-only (forward)", "end_to_end": "2. end-to-end, cold cache",
              "naive": f"3. naive loop ({len(naive_paths)} images)",
              "warm": "4. warm cache", "warm_rehash": "4b. warm, files re-hashed",
              "loader_only": "5. loader only (decode+resize)"}
    for key, label in labels.items():
        if key in med:
            print(f"{label:<34}{med[key]:>10.1f}")
    for key, value in ratios.items():
        print(f"{key:<34}{value:>10.3f}")
    spread = [e / m for e, m, _, _ in per_rep]
    print(f"{'  end_to_end/model_only per repeat':<36}"
          f"{', '.join(f'{x:.2f}' for x in spread):>10}")
    print(f"{'limiting stage':<34}{limiting:>10}")
    if agreement:
        print(f"end-to-end vs naive features: min cosine {agreement['min_cosine']:.5f}, max abs"
              f" diff {agreement['max_abs_diff']:.3g}, {agreement['rows_below_0.999']} of"
              f" {agreement['rows']} rows below 0.999 (draft decoding, EXIF orientation)")
    print(f"peak RSS: {report['peak_rss']}")
    line = json.dumps(report)
    print(line)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
