"""Test helper for tests/test_cache.py: a process that writes deterministic batches to a cache.

Run as ``python tests/_cache_writer.py PATH --batches 0:200 ...``. It prints ``ready`` once
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
import sys
import time

import numpy as np

CONFIG = {"backbone": "kill-test", "layer": "blocks.6", "pooling": "avg", "feature_version": 1}


def make_batch(index: int, batch_size: int, width: int) -> tuple[list[str], np.ndarray, list[str]]:
    """Keys, float32 features and paths of batch ``index`` (same on every call)."""
    keys = [hashlib.blake2b(f"{index}/{j}".encode(), digest_size=16).hexdigest()
            for j in range(batch_size)]
    features = np.random.default_rng(index).standard_normal((batch_size, width)).astype(
        np.float32)
    paths = [f"/images/batch{index:05d}/img{j:03d}.jpg" for j in range(batch_size)]
    return keys, features, paths


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

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from featurize import cache as cache_module
    from featurize import journal

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
