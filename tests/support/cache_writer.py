"""A process that writes deterministic batches to a cache, and the helpers of the tests that
run it (crash safety, concurrency, purity).

Run as ``python tests/support/cache_writer.py PATH --batches 0:200 ...``. It prints ``ready`` once
imported, then the index of every batch after ``FeatureCache.write`` returned. Batch ``i`` is
always the same keys, paths and features (:func:`make_batch`), so a test can check a file
left by a killed writer bit for bit, and a re-run resumes where the killed one stopped.

``--slow`` stretches the window in which the cache file itself is modified (applying the
journal) so that a SIGKILL at a random moment often lands inside it; ``--die-in-apply K``
SIGKILLs the process half-way through applying its K-th commit; ``--wait`` waits for a line
on stdin after ``ready``, so that a test can start several writers at the same moment.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from featurize.exceptions import CacheError
from featurize.storage.cache import ConfigNotFoundError, FeatureCache
from tests.support import subprocess_env

CONFIG = {"backbone": "kill-test", "layer": "blocks.6", "pooling": "avg", "feature_version": 1}


def make_batch(index: int, batch_size: int, width: int) -> tuple[list[str], np.ndarray, list[str]]:
    """Keys, float32 features and paths of batch ``index`` (same on every call)."""
    keys = [hashlib.blake2b(f"{index}/{j}".encode(), digest_size=16).hexdigest()
            for j in range(batch_size)]
    features = np.random.default_rng(index).standard_normal((batch_size, width)).astype(
        np.float32)
    paths = [f"/images/batch{index:05d}/img{j:03d}.jpg" for j in range(batch_size)]
    return keys, features, paths


#: this file, run as a process by :func:`run_writer`
WRITER = Path(__file__).resolve()


def run_writer(path, *args, check=True):
    proc = subprocess.run([sys.executable, str(WRITER), str(path), *map(str, args)], check=False,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def expected_rows(batches, batch_size, width):
    keys, feats, paths = [], [], []
    for i in batches:
        k, f, p = make_batch(i, batch_size, width)
        keys += k
        feats.append(f)
        paths += p
    return keys, np.concatenate(feats) if feats else np.empty((0, width), np.float32), paths


def assert_committed_prefix(path, batch_size, width, n_batches):
    """The file holds exactly batches 0..k-1, bit for bit; returns k."""
    try:
        keys, paths, feats = FeatureCache(path, lock_timeout=30).export(CONFIG)
    except ConfigNotFoundError:  # killed before its first commit: an empty cache
        assert not os.path.exists(path) or FeatureCache(path).configurations() == []
        return 0
    assert len(keys) % batch_size == 0
    k = len(keys) // batch_size
    assert k <= n_batches
    want_keys, want_feats, want_paths = expected_rows(range(k), batch_size, width)
    assert keys.tolist() == want_keys and paths.tolist() == want_paths
    assert feats.tobytes() == want_feats.tobytes()
    return k


def fill_until_full(cache, batch_size: int, width: int, limit: int = 1000):
    """Write batches 0, 1, ... until a write fails; returns (batches written, the error)."""
    for index in range(limit):
        try:
            cache.write(CONFIG, *make_batch(index, batch_size, width))
        except (CacheError, OSError) as exc:
            return index, exc
    raise AssertionError(f"{limit} batches fit: the filesystem is not small")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--batches", default="0:100", help="START:STOP[:STEP] batch indices")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--slow", action="store_true")
    parser.add_argument("--die-in-apply", type=int, default=0)
    parser.add_argument("--wait", action="store_true",
                        help="after 'ready', wait for a line on stdin (a start barrier)")
    args = parser.parse_args(argv)

    from featurize.storage import cache as cache_module
    from featurize.storage import journal

    original_apply = journal._apply_journal
    calls = [0]

    def instrumented_apply(fd, cut, final_size, extents):
        calls[0] += 1
        if args.die_in_apply and calls[0] == args.die_in_apply:
            # Write the first half of every extent, then die like a killed process.
            for offset, data in extents:
                os.pwrite(fd, data[: len(data) // 2], offset)
            os.kill(os.getpid(), signal.SIGKILL)
        if args.slow:
            # Same end result as the original, applied piecewise with pauses.
            if cut < os.fstat(fd).st_size:
                os.ftruncate(fd, cut)
            for offset, data in extents:
                for start in range(0, len(data), 2048):
                    os.pwrite(fd, data[start: start + 2048], offset + start)
                    time.sleep(0.0005)
            os.ftruncate(fd, final_size)
            return
        original_apply(fd, cut, final_size, extents)

    journal._apply_journal = instrumented_apply
    cache = cache_module.FeatureCache(args.path, dtype=args.dtype, lock_timeout=30)
    start, stop, *step = (int(x) for x in args.batches.split(":"))
    print("ready", flush=True)
    if args.wait:
        sys.stdin.readline()
    for index in range(start, stop, step[0] if step else 1):
        keys, features, paths = make_batch(index, args.batch_size, args.width)
        cache.write(CONFIG, keys, features, paths)
        print(index, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
