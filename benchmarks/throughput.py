"""Throughput of feature extraction: the forward pass alone vs the whole pipeline, side by side.

Measured in one process, interleaved, ``--repeats`` times (medians reported), because the
development machines are small and shared: only ratios taken within one run mean anything.

1. model-only: ``Extractor.forward`` on pre-decoded, pre-resized uint8 batches already on the
   device (the same engine and batch size as 2);
2. end-to-end: ``Extractor.extract`` from JPEG files into a fresh (cold) HDF5 cache;
3. naive: an img2vec-style loop (PIL open, torchvision transform, one image per forward pass
   of the eager model), on a subset (``--naive-images``);
4. warm: the same ``extract`` call again, every row served by the cache (the median of
   repeated calls filling a second: one call lasts milliseconds);
5. loader-only: the decode threads of 2 without the forward pass (what decoding alone
   sustains);
6. end-to-end with worker processes: 2 with the loader featurize had before it decoded in
   threads (a torch DataLoader with ``--process-workers`` worker processes, default 1: the old
   automatic choice on 2 cores), a benchmark-only switch, so both loaders are measured in
   one run (``ratios["threads/processes"]``).

Before them, the engine table: model-only images/s and process CPU time per image of every
engine x precision the machine runs (eager fp32 first, the reference of the agreement
columns), interleaved on the same decoded batches (``engines`` in the JSON), and the CPU
time per image of reading and decoding a file in one thread. From these two the machine's
limit, ``limit_images_per_s`` = cores / (best forward core-time + decode core-time), and
``ratios["end_to_end/limit"]``. ``--compare-engines`` prints the engine table alone.

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
import contextlib
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
                   help="decode threads (default: the library's automatic choice)")
    p.add_argument("--process-workers", type=int, default=1,
                   help="worker processes of the old loader in stage 6 (0: skip stage 6)")
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
                   help="instead: only the engine table (model-only images/s of every engine x"
                        " precision, interleaved, with feature agreement vs eager fp32)")
    p.add_argument("--engine-seconds", type=float, default=2.0,
                   help="engine table: seconds each engine-precision runs per repeat")
    p.add_argument("--with-compile", action="store_true",
                   help="engine table: also torch.compile (minutes to compile on CPU)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_images, args.repeats, args.naive_images = 160, 1, 16
        args.engine_seconds = min(args.engine_seconds, 1.0)
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


class _Rows(torch.utils.data.Dataset):
    """The decode work as a torch Dataset, for the old loader of stage 6."""

    def __init__(self, decode, work):
        self.decode, self.work = decode, work

    def __len__(self):
        return len(self.work)

    def __getitem__(self, i):
        return self.decode(*self.work[i])


@contextlib.contextmanager
def process_loader(workers: int):
    """Benchmark-only: decode in DataLoader worker processes, as featurize did before threads.

    Replaces the loop's thread pool (``featurize.extraction.loop.decode_in_threads``) with a
    ``DataLoader`` of ``workers`` processes that collates in the workers, for the duration of
    the ``with`` block.
    """
    import featurize.extraction.loop as loop

    def decode_in_processes(decode, work, threads, window):
        loader = torch.utils.data.DataLoader(_Rows(decode, list(work)), batch_size=32,
                                             num_workers=workers, collate_fn=list,
                                             prefetch_factor=2)
        for items in loader:
            yield from items

    saved = loop.decode_in_threads
    loop.decode_in_threads = decode_in_processes
    try:
        yield
    finally:
        loop.decode_in_threads = saved


def peak_rss_mb() -> dict:
    """Peak RSS of this process and of its largest finished child (stage 6's workers)."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"main_mb": round(self_kb / 1024, 1), "largest_worker_mb": round(child_kb / 1024, 1)}


def naive_features(paths, backbone, device) -> tuple[np.ndarray, float]:
    """img2vec-style: PIL open, torchvision transforms, one forward pass per image."""
    from PIL import Image
    from torchvision import transforms

    from featurize.networks.layers import penultimate_module, trace_layers

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
    from featurize.images.data import Decoder

    unique = paths[:min(len(paths), 400)]
    decoder = Decoder(unique, [extractor.preprocessing], [extractor.draft], extractor.max_pixels)
    tensors = [item.tensors[0] for item in map(decoder, range(len(unique))) if item.tensors]
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


# -- engines x precisions, model-only, and the machine's limit (issue 23) ---------------------


def engine_variants(device: torch.device, with_compile: bool = False) -> list[tuple[str, str]]:
    """Every ``(engine, precision)`` this machine runs, eager fp32 (the reference) first.

    fp32 on every engine installed; the reduced precision of the device (bf16 on a CPU, where
    eager runs it under autocast, natively or emulated, and OpenVINO where the CPU computes
    it natively; CUDA's autocast type) on the engines that compute it.
    """
    from featurize.exceptions import BackboneError
    from featurize.networks.runtimes import auto_candidates, available_engines, check_precision

    engines = [e for e in available_engines(device) if e != "compile" or with_compile]
    reduced = {"cpu": ["bf16"], "cuda": ["bf16" if device.type == "cuda"
                                         and torch.cuda.is_bf16_supported() else "fp16"]}
    variants = []
    for precision in ["fp32"] + reduced.get(device.type, []):
        for engine in engines:
            try:
                check_precision(engine, precision)
            except BackboneError:
                continue
            if engine == "openvino" and engine not in auto_candidates(device, precision):
                continue  # bf16 without native instructions: OpenVINO would compute fp32
            variants.append((engine, precision))
    return variants


def build_variants(args, weights, layer, device, variants) -> tuple[dict, dict]:
    """``{"engine-precision": Extractor}`` with its engine built, and the build seconds."""
    from featurize.exceptions import BackboneError
    from featurize.extraction import Extractor

    extractors, build = {}, {}
    for engine, precision in variants:
        label = f"{engine}-{precision}"
        start = time.perf_counter()
        try:
            ex = Extractor(args.backbone, weights, layer, device=device, precision=precision,
                           engine=engine, draft=not args.no_draft)
            ex.prepare_engine()
        except BackboneError as exc:
            print(f"# {label} not measured: {exc}", file=sys.stderr)
            continue
        build[label] = time.perf_counter() - start
        extractors[label] = ex
    return extractors, build


def measure_engines(extractors: dict, batches: list, repeats: int, min_seconds: float,
                    device) -> dict:
    """Model-only images/s and process CPU ms per image of each extractor, interleaved.

    Each variant runs the batches (in turn) for at least ``min_seconds`` per repeat, so slow
    eager variants take a batch or two and fast engines many; medians over the repeats. The
    features of the first batch are compared with the first extractor's (eager fp32).
    """
    from featurize.networks.runtimes import compare_features

    labels = list(extractors)
    reference = extractors[labels[0]].forward(batches[0])
    agreement = {}
    for label, ex in extractors.items():
        got = ex.forward(batches[0])  # also the warm-up
        min_cos, max_abs = compare_features(reference, got)
        agreement[label] = {"min_cosine": round(min_cos, 6), "max_abs_diff": float(max_abs)}
    rates = {label: [] for label in labels}
    core_ms = {label: [] for label in labels}
    for _ in range(repeats):
        for label, ex in extractors.items():
            images = k = 0
            start, cpu = time.perf_counter(), time.process_time()
            while k == 0 or time.perf_counter() - start < min_seconds:
                batch = batches[k % len(batches)]
                ex.forward(batch)
                images, k = images + len(batch), k + 1
            sync(device)
            rates[label].append(images / (time.perf_counter() - start))
            core_ms[label].append(1000 * (time.process_time() - cpu) / images)
    return {label: {"images_per_s": round(statistics.median(rates[label]), 2),
                    "core_ms_per_image": round(statistics.median(core_ms[label]), 3),
                    "per_repeat": [round(r, 2) for r in rates[label]], **agreement[label]}
            for label in labels}


def decode_core_ms(extractor, paths: list, repeats: int) -> float:
    """Process CPU ms per image to read, hash, decode and resize a file, in this thread."""
    from featurize.images.data import Decoder

    decoder = Decoder(paths, [extractor.preprocessing], [extractor.draft], extractor.max_pixels)
    times = []
    for _ in range(repeats):
        cpu = time.process_time()
        for row in range(len(paths)):
            decoder(row)
        times.append(1000 * (time.process_time() - cpu) / len(paths))
    return statistics.median(times)


def machine_limit(engines: dict, decode_ms: float, device) -> dict:
    """What the machine sustains end to end: cores / (best forward + decode core-time).

    On a GPU the forward pass does not use the cores: the limit is the slower of the best
    model-only rate and cores / decode core-time.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    best = min(engines, key=lambda label: engines[label]["core_ms_per_image"])
    forward_ms = engines[best]["core_ms_per_image"]
    if device.type == "cpu":
        limit = 1000 * cores / (forward_ms + decode_ms)
    else:
        best = max(engines, key=lambda label: engines[label]["images_per_s"])
        limit = min(engines[best]["images_per_s"], 1000 * cores / decode_ms)
    return {"limit_images_per_s": round(limit, 2),
            "limit": {"cores": cores, "best_engine": best,
                      "forward_core_ms": forward_ms, "decode_core_ms": round(decode_ms, 3)}}


def speedups(engines: dict, base: str) -> dict:
    """Each variant's images/s over ``base``'s: the median of the per-repeat ratios."""
    return {label: statistics.median(r / b for r, b in zip(row["per_repeat"],
                                                           engines[base]["per_repeat"]))
            for label, row in engines.items()}


def _bases(engines: dict) -> list[str]:
    """The references of the speed-up columns: eager fp32 (first) and ONNX Runtime fp32."""
    return list(dict.fromkeys([next(iter(engines))]
                              + [label for label in ("onnxruntime-fp32",) if label in engines]))


def print_engines(engines: dict, build: dict, title: str) -> None:
    print(f"\n{title}")
    bases = _bases(engines)
    columns = {base: speedups(engines, base) for base in bases}
    print(f"{'engine-precision':<22}{'images/s':>10}"
          + "".join(f"{'vs ' + base.replace('onnxruntime', 'ort'):>14}" for base in bases)
          + f"{'core ms':>9}{'min cos':>10}{'max abs':>10}{'build s':>9}")
    for label, row in engines.items():
        print(f"{label:<22}{row['images_per_s']:>10.1f}"
              + "".join(f"{columns[base][label]:>14.2f}" for base in bases)
              + f"{row['core_ms_per_image']:>9.2f}{row['min_cosine']:>10.5f}"
              f"{row['max_abs_diff']:>10.2g}{build.get(label, float('nan')):>9.1f}")


def engine_table(args, weights, layer, device, paths: list) -> tuple[dict, dict]:
    """Every engine x precision on real decoded batches: ``(engines, build seconds)``."""
    extractors, build = build_variants(args, weights, layer, device,
                                       engine_variants(device, args.with_compile))
    batch_size = args.batch_size or 32
    batches = decoded_batches(next(iter(extractors.values())), paths, 4 * batch_size,
                              batch_size, device)
    engines = measure_engines(extractors, batches, args.repeats, args.engine_seconds, device)
    print_engines(engines, build, f"model-only, {args.backbone} on {device}, batch {batch_size},"
                  f" {torch.get_num_threads()} threads, >= {args.engine_seconds} s per variant,"
                  f" median of {args.repeats} interleaved repeats")
    return engines, build


def engine_report(engines: dict, build: dict, limit: dict) -> dict:
    """The JSON entries of the engine table and the limit."""
    return {"engines": {label: row["images_per_s"] for label, row in engines.items()},
            "engines_detail": {label: {**row, "build_s": round(build[label], 2)}
                               for label, row in engines.items()},
            "engine_speedups": {f"{label}/{base}": round(value, 3)
                                for base in _bases(engines)
                                for label, value in speedups(engines, base).items()
                                if label != base},
            **limit}


def print_limit(limit: dict) -> None:
    info = limit["limit"]
    print(f"limit: {info['cores']} cores / ({info['best_engine']} forward"
          f" {info['forward_core_ms']:.2f} + decode {info['decode_core_ms']:.2f} core-ms per"
          f" image) = {limit['limit_images_per_s']:.1f} images/s")


def compare_engines(args, weights, layer) -> dict:
    """``--compare-engines``: the engine table alone."""
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    files = sorted(str(p) for p in args.data.resolve().rglob("*") if p.is_file())
    engines, build = engine_table(args, weights, layer, device, files[:400])
    return {"backbone": args.backbone, "device": str(device),
            "batch_size": args.batch_size or 32, "repeats": args.repeats,
            "torch_threads": torch.get_num_threads(),
            **engine_report(engines, build, {}),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def repeated_seconds(call, setup=None, min_total_s: float = 1.0, max_calls: int = 200) -> float:
    """Median seconds of ``call()`` over as many calls as fill ``min_total_s`` (at least 5),
    each after an untimed ``setup()``; :mod:`timeit`'s protocol, for calls too short to time
    once."""
    import timeit

    timer = timeit.Timer(call, setup=setup or (lambda: None))
    first = timer.timeit(number=1)
    calls = int(min(max_calls, max(5, min_total_s / max(first, 1e-9))))
    return statistics.median(timer.repeat(repeat=calls, number=1))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare_engines:
        weights = None if str(args.weights).lower() == "none" else args.weights
        from featurize.exceptions import WeightsNotFoundError
        from featurize.networks.backbones import load_backbone

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
    from featurize.exceptions import WeightsNotFoundError
    from featurize.extraction import Extractor
    from featurize.images.data import Decoder, decode_in_threads, default_decode_threads
    from featurize.networks.backbones import load_backbone
    from featurize.storage import keys

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
               else default_decode_threads(n, extractor.device))

    tmp = tempfile.TemporaryDirectory(prefix="featurize-bench-")
    root = Path(tmp.name)
    paths = make_copies(files, n, root / "images")
    batches = decoded_batches(extractor, paths, n, batch_size, device)
    naive_paths = paths[:args.naive_images]
    # 0. every engine x precision, model-only, and the CPU time of decoding (the limit)
    engines, engine_build = engine_table(args, weights, layer, device, paths[:400])
    decode_ms = decode_core_ms(extractor, paths[:min(n, 200)], args.repeats)

    results = {k: [] for k in ("model_only", "end_to_end", "warm", "warm_rehash", "naive",
                               "loader_only", "end_to_end_processes")}
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
        # 4. warm cache (a call lasts milliseconds: the median of repeated calls)
        def warm_call():
            got = extractor.extract(paths, cache=cache, batch_size=batch_size,
                                    num_workers=workers, on_error="nan")
            if got.n_computed:
                print(f"# warning: the warm run computed {got.n_computed} rows",
                      file=sys.stderr)

        results["warm"].append(n / repeated_seconds(warm_call))
        # 4b. warm cache as a new process sees it: every file hashed again
        results["warm_rehash"].append(
            n / repeated_seconds(warm_call, setup=keys._KEY_MEMO.clear))
        # 3. naive per-image loop
        if naive_paths:
            naive, seconds = naive_features(naive_paths, extractor.backbone, device)
            results["naive"].append(len(naive_paths) / seconds)
        # 5. decode threads alone
        decoder = Decoder(paths, [extractor.preprocessing], [extractor.draft],
                          extractor.max_pixels)
        start = time.perf_counter()
        for _ in decode_in_threads(decoder, ((i,) for i in range(n)), workers,
                                   2 * batch_size):
            pass
        results["loader_only"].append(n / (time.perf_counter() - start))
        # 6. end-to-end, cold cache, with the old loader (worker processes)
        if args.process_workers:
            with process_loader(args.process_workers):
                start = time.perf_counter()
                extractor.extract(paths, cache=root / f"old{rep}.h5", batch_size=batch_size,
                                  on_error="nan")
                results["end_to_end_processes"].append(n / (time.perf_counter() - start))
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
    if results["end_to_end_processes"]:
        ratios["threads/processes"] = statistics.median(
            e / p for e, p in zip(results["end_to_end"], results["end_to_end_processes"]))
    if results["naive"]:
        ratios["end_to_end/naive"] = statistics.median(
            e / v for e, v in zip(results["end_to_end"], results["naive"]))
    limit = machine_limit(engines, decode_ms, device)
    ratios["end_to_end/limit"] = med["end_to_end"] / limit["limit_images_per_s"]
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
    report.update(engine_report(engines, engine_build, limit))
    print(f"\nfeaturize throughput: {args.backbone} on {device}, engine {engine}"
          f" (built in {build_s:.1f} s), batch {batch_size}, {workers} decode threads,"
          f" {torch.get_num_threads()} torch threads, {n} distinct images, median of"
          f" {args.repeats}")
    print(f"{'stage':<34}{'images/s':>10}")
    labels = {"model_only": "1. model-only (forward)", "end_to_end": "2. end-to-end, cold cache",
              "naive": f"3. naive loop ({len(naive_paths)} images)",
              "warm": "4. warm cache", "warm_rehash": "4b. warm, files re-hashed",
              "loader_only": "5. decode threads only (decode+resize)",
              "end_to_end_processes": f"6. end-to-end, {args.process_workers} worker process(es)"}
    for key, label in labels.items():
        if key in med:
            print(f"{label:<34}{med[key]:>10.1f}")
    for key, value in ratios.items():
        print(f"{key:<34}{value:>10.3f}")
    spread = [e / m for e, m, _, _ in per_rep]
    print(f"{'  end_to_end/model_only per repeat':<36}"
          f"{', '.join(f'{x:.2f}' for x in spread):>10}")
    print(f"{'limiting stage':<34}{limiting:>10}")
    print_limit(limit)
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
