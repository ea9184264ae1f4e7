"""Benchmark of ``featurize extract`` jobs: throughput and memory.

1. images/s of a single-process job vs the same job on ``--scheduler local:N`` (Dask), over
   the ants/bees data (398 files), each from an empty cache;
2. peak resident memory (RSS) of the job process for a small and a large job (400 vs 4,000
   distinct files by default: the 398 files copied over and over, each copy with a few unique
   bytes appended after the image data, so every file has its own content key). A streaming
   job keeps the ratio near 1.

Every job runs as its own ``python -m pipelines extract`` process, as a user would run it.
Prints a table and one JSON line. It is a script, not a test::

    python benchmarks/jobs.py                          # efficientnet_lite0, 400 vs 4000
    python benchmarks/jobs.py --n-large 1200 --backbone resnet18 --weights none   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hymenoptera_data"


def source_files(data: Path) -> list[Path]:
    """The data set's files, sorted."""
    files = sorted(p for p in data.rglob("*") if p.is_file())
    if not files:
        sys.exit(f"no files under {data}")
    return files


def make_copies(files: list[Path], n: int, out: Path) -> Path:
    """``n`` distinct files: copies of ``files`` in turn, each with unique trailing bytes."""
    out.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        src = files[k % len(files)]
        folder = out / f"copy{k // len(files):03d}"
        folder.mkdir(exist_ok=True)
        (folder / src.name).write_bytes(src.read_bytes() + f"\0featurize-copy-{k}".encode())
    return out


class _RssSampler(threading.Thread):
    """Peak RSS of a process and of its process tree (data-loader workers), sampled."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_main = self.peak_tree = 0
        self._done = threading.Event()

    def run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        try:
            proc = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._done.is_set():
            try:
                main = proc.memory_info().rss
                tree = main + sum(c.memory_info().rss for c in proc.children(recursive=True))
            except psutil.Error:
                break
            self.peak_main, self.peak_tree = max(self.peak_main, main), max(self.peak_tree, tree)
            time.sleep(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_extract(sources: list[str], cache: Path, args: argparse.Namespace,
                extra: list[str] = ()) -> dict:
    """Run one job; its JSON summary plus wall time and sampled peak RSS."""
    cmd = [sys.executable, "-m", "pipelines", "extract", *sources, "--cache", str(cache),
           "--backbone", args.backbone, "--weights", args.weights, "--device", args.device,
           "--batch-size", str(args.batch_size), "--progress", "none", "--json", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    sampler = _RssSampler(proc.pid)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - t0
    sampler.stop()
    if proc.returncode not in (0, 3):
        sys.exit(f"job failed ({proc.returncode}): {' '.join(cmd)}\n{stderr[-3000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary.update(wall_s=round(wall, 2), end_to_end_images_per_s=round(summary["total"] / wall, 2),
                   sampled_peak_rss_bytes=sampler.peak_main,
                   sampled_peak_tree_rss_bytes=sampler.peak_tree)
    return summary


def mib(n: int | None) -> str:
    return "?" if not n else f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="DEFAULT")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dask-workers", type=int, default=2)
    parser.add_argument("--n-small", type=int, default=400)
    parser.add_argument("--n-large", type=int, default=4000)
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--tmp", type=Path, default=None, help="work folder (default: a temp dir)")
    args = parser.parse_args(argv)

    files = source_files(args.data)
    results: dict = {"backbone": args.backbone, "weights": args.weights, "device": args.device,
                     "batch_size": args.batch_size, "cpu_count": os.cpu_count(),
                     "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        single = run_extract([str(args.data)], tmp / "single.h5", args)
        results["single"] = single
        if not args.skip_dask:
            results["dask"] = run_extract([str(args.data)], tmp / "dask.h5", args,
                                          ["--scheduler", f"local:{args.dask_workers}"])
        copies = make_copies(files, args.n_large, tmp / "copies")
        small_list = tmp / "small.txt"
        all_paths = sorted(str(p) for p in copies.rglob("*") if p.is_file())
        small_list.write_text("\n".join(all_paths[: args.n_small]) + "\n")
        results["small"] = run_extract(["--list", str(small_list)], tmp / "small.h5", args)
        results["large"] = run_extract([str(copies)], tmp / "large.h5", args)

    small, large = results["small"], results["large"]
    results["rss_ratio_large_over_small"] = round(large["peak_rss_bytes"]
                                                  / small["peak_rss_bytes"], 3)
    print(f"\nfeaturize extract benchmark: {args.backbone} ({args.weights}), {args.device}, "
          f"batch {args.batch_size}, {os.cpu_count()} CPUs, load average "
          f"{results['load_average'][0]:.1f}" if results["load_average"] else "")
    header = (f"{'run':<22}{'images':>8}{'extracted':>10}{'extract img/s':>15}"
              f"{'end-to-end img/s':>18}{'wall':>9}{'peak RSS (job)':>16}{'peak RSS (tree)':>17}")
    print(header)
    print("-" * len(header))
    rows = [("single process", results["single"])]
    if "dask" in results:
        rows.append((f"dask local:{args.dask_workers}", results["dask"]))
    rows += [(f"memory: {args.n_small} files", small), (f"memory: {args.n_large} files", large)]
    for name, r in rows:
        print(f"{name:<22}{r['total']:>8,}{r['extracted']:>10,}{r['images_per_s']:>15.1f}"
              f"{r['end_to_end_images_per_s']:>18.1f}{r['wall_s']:>8.0f}s"
              f"{mib(r['peak_rss_bytes']):>16}{mib(r['sampled_peak_tree_rss_bytes']):>17}")
    print(f"peak RSS ratio ({args.n_large} / {args.n_small} files): "
          f"{results['rss_ratio_large_over_small']}")
    print("(dask 'extract img/s' counts from task submission, so it includes each worker "
          "loading the model; end-to-end includes process start, model loading and merging)")
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
