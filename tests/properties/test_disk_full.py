"""A full disk while the feature cache grows: a clear error, and nothing flushed before is lost.

Two ways to run out of space:

* a real small filesystem: a 512 KiB / 1 MiB tmpfs mounted for the test (root on Linux only;
  skipped elsewhere), which fails writes with ENOSPC;
* ``RLIMIT_FSIZE`` in a subprocess (any Linux user): writes past the limit fail with EFBIG
  ("File too large"), the way a quota does; SIGXFSZ is ignored there so the write fails
  instead of killing the process.

After the failure the cache must open *without* freeing space and hold exactly the batches whose
write returned, bit for bit; once space is freed the same write succeeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurize.exceptions import CacheError
from featurize.storage.cache import FeatureCache
from tests.support.cache_writer import CONFIG, fill_until_full
from tests.support.cache_writer import make_batch as writer_batch

ROOT = Path(__file__).resolve().parents[2]
WIDTH, ROWS = 512, 8

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def make_batch(index: int) -> tuple[list[str], np.ndarray, list[str]]:
    """Batch ``index`` of the cache writer's, ``ROWS`` x ``WIDTH``."""
    return writer_batch(index, ROWS, WIDTH)


def assert_holds_exactly(path, n_batches: int) -> None:
    """The cache opens and holds batches 0..n_batches-1, bit for bit, and nothing else."""
    keys, paths, feats = FeatureCache(path).export(CONFIG)
    want = [make_batch(i) for i in range(n_batches)]
    assert keys.tolist() == [k for b in want for k in b[0]]
    assert paths.tolist() == [p for b in want for p in b[2]]
    assert feats.tobytes() == np.concatenate([b[1] for b in want]).tobytes()


@contextlib.contextmanager
def small_filesystem(where: Path, size: str):
    """Mount a tmpfs of ``size`` at ``where`` (root on Linux), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_error_is_clear_and_the_cache_keeps_what_was_written(tmp_path):
    with small_filesystem(tmp_path / "fs", "512k") as fs:
        filler = fs / "filler.bin"
        filler.write_bytes(bytes(64 * 1024))  # freed later, to make room again
        path = fs / "feats.h5"
        cache = FeatureCache(path)
        n, error = fill_until_full(cache, ROWS, WIDTH)
        assert n >= 3
        assert isinstance(error, CacheError), repr(error)
        message = str(error)
        assert str(path) in message and "No space left on device" in message, message
        assert "free disk space" in message, message
        # Still full: the cache opens and serves everything written before, bit for bit.
        assert_holds_exactly(path, n)
        assert not cache.lookup(CONFIG, make_batch(n)[0])[0].any()
        assert sorted(p.name for p in fs.iterdir()) == ["feats.h5", "filler.bin"]
        with pytest.raises(CacheError, match="No space left on device"):
            cache.write(CONFIG, *make_batch(n))  # still full: fails again, still clean
        assert_holds_exactly(path, n)
        filler.unlink()
        cache.write(CONFIG, *make_batch(n))
        assert_holds_exactly(path, n + 1)


_SIZE_LIMITED_WRITER = r"""
import json, resource, signal, sys
sys.path.insert(0, sys.argv[3])
from tests.support.cache_writer import fill_until_full
from featurize.storage.cache import FeatureCache

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
n, error = fill_until_full(FeatureCache(sys.argv[1]), %d, %d)
print(json.dumps({"written": n, "type": type(error).__name__, "error": str(error)}))
""" % (ROWS, WIDTH)


def test_file_size_limit_error_is_clear_and_the_cache_keeps_what_was_written(tmp_path):
    path = tmp_path / "feats.h5"
    proc = subprocess.run(
        [sys.executable, "-c", _SIZE_LIMITED_WRITER, str(path), str(400 * 1024), str(ROOT)],
        check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["written"] >= 3 and result["type"] == "CacheError", result
    assert str(path) in result["error"] and "File too large" in result["error"], result
    assert "free disk space" in result["error"], result
    assert_holds_exactly(path, result["written"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.h5"]
    FeatureCache(path).write(CONFIG, *make_batch(result["written"]))  # no limit here
    assert_holds_exactly(path, result["written"] + 1)


def test_extract_command_on_a_full_disk(tmp_path, capsys):
    """``featurize extract`` stops with exit code 1 and a clear message; the rows it wrote
    stay, and the same command completes the job once there is room."""
    import torch

    from featurize.extraction import Extractor
    from featurize.storage.cache import content_key
    from pipelines.cli import main

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(
            images / f"img{i:02d}.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~10x faster than 2 on the shared VM; same numbers for resnet18
    try:
        with small_filesystem(tmp_path / "fs", "1m") as fs:
            cache = fs / "feats.h5"
            argv = ["extract", str(images), "--cache", str(cache), "--batch-size", "2",
                    "--workers", "0", "--progress", "none", "--backbone", "resnet18",
                    "--weights", "none", "--device", "cpu"]
            # Leave room for the first few batches only.
            filler = fs / "filler.bin"
            free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
            filler.write_bytes(bytes(free - 64 * 1024))
            assert main(argv) == 1
            err = capsys.readouterr().err
            assert "featurize extract: error:" in err and str(cache) in err, err
            assert "No space left on device" in err and "free disk space" in err, err
            store = FeatureCache(cache)
            (conf,) = store.configurations()
            keys, _, feats = store.export(conf["config"])
            assert 0 < len(keys) < 12 and len(set(keys.tolist())) == len(keys)
            files = sorted(str(p) for p in images.iterdir())
            direct = Extractor("resnet18", None, device="cpu").extract(files, num_workers=0)
            by_key = dict(zip(map(content_key, files), direct.features))
            for key, row in zip(keys.tolist(), feats):
                assert row.tobytes() == by_key[key].tobytes()
            filler.unlink()
            assert main(argv) == 0
            keys, _, feats = store.export(conf["config"])
            assert sorted(keys.tolist()) == sorted(by_key)
            for key, row in zip(keys.tolist(), feats):
                assert row.tobytes() == by_key[key].tobytes()
    finally:
        torch.set_num_threads(threads)
