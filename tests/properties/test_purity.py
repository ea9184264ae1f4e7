"""A row of features is a pure function of (image bytes, configuration).

One test per way a row could depend on something else; each failed on the code before its
fix. Real images, real HDF5 files, real checkpoints; faults (a file edited mid-job, an I/O
error, a filesystem without locks) are injected where the outside world would inject them.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featurize import FeatureCache, content_key, extract_features
from featurize.exceptions import CacheError
from tests.support import cache_contents

REPO = Path(__file__).resolve().parents[2]
TINY = dict(backbone="resnet18", weights=None, device="cpu", num_workers=0)


# -- 1. a layer's features do not depend on the other layers read in the same pass ---------


@pytest.mark.parametrize("engine", ["eager", "auto"])
def test_layer_alone_equals_its_block_of_a_multi_layer_read(some_jpegs, engine):
    # layer1.0.bn1 is followed by ReLU(inplace=True): a hook that keeps the tensor sees the
    # ReLU's output once penultimate (which runs later) is also asked for.
    alone = extract_features(some_jpegs[:4], layer="layer1.0.bn1", engine=engine, **TINY)
    both = extract_features(some_jpegs[:4], layer=["layer1.0.bn1", "penultimate"],
                            engine=engine, **TINY)
    assert (alone < 0).any()  # BatchNorm output: negative values exist before the ReLU
    np.testing.assert_allclose(both[:, :alone.shape[1]], alone, rtol=1e-5, atol=1e-5)


# -- 2. features do not depend on the size of the call --------------------------------------


def test_rows_do_not_depend_on_the_size_of_the_call(tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(130)]
    opts = dict(backbone="mobilenet_v3_small", weights=None, layer="features.3", device="cpu",
                num_workers=0)
    big = extract_features(images, **opts)  # more than any "large job" threshold
    small = extract_features(images[:5], **opts)
    np.testing.assert_array_equal(small, big[:5])
    # ... and the cache serves the same rows whichever call filled it.
    cache = tmp_path / "c.h5"
    first = extract_features(images[:5], cache=cache, **opts)
    np.testing.assert_array_equal(first, big[:5])


def test_transform_of_a_subset_equals_the_rows_of_the_whole(tmp_path):
    from featurize import CNNFeaturizer

    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (36, 36, 3), dtype=np.uint8) for _ in range(130)]
    f = CNNFeaturizer(backbone="mobilenet_v3_small", weights=None, layer="features.3",
                      device="cpu", num_workers=0).fit()
    whole = f.transform(images)
    from sklearn.base import clone

    part = clone(f).fit().transform(images[10:20])
    np.testing.assert_array_equal(part, whole[10:20])


# -- 3. a non-finite batch is a per-image failure in a job, never a dead job ----------------


def _nan_checkpoint(path: Path) -> Path:
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    state = model.state_dict()
    state["layer4.1.bn2.weight"] = torch.full_like(state["layer4.1.bn2.weight"], float("nan"))
    torch.save(state, path)
    return path


def test_extract_job_records_non_finite_features_as_failures(tmp_path, some_jpegs):
    from pipelines import cli

    ckpt = _nan_checkpoint(tmp_path / "bad.pth")
    cache = tmp_path / "c.h5"
    failures = tmp_path / "failures.csv"
    args = ["extract", *some_jpegs[:3], "--cache", str(cache), "--backbone", "resnet18",
            "--weights", str(ckpt), "--device", "cpu", "--workers", "0", "--progress", "none",
            "--failures", str(failures)]
    assert cli.main(args) == 3  # done, with failures listed
    text = failures.read_text()
    assert all(p in text for p in some_jpegs[:3]) and "non-finite" in text
    # A re-run finishes too (nothing half-written blocks it).
    assert cli.main(args) == 3


# -- 4. the bytes that are hashed are the bytes that are decoded ----------------------------


def test_a_file_changed_while_the_job_runs_is_keyed_by_what_was_decoded(tmp_path, monkeypatch,
                                                                         some_jpegs):
    from featurize.images import data

    target = tmp_path / "img.jpg"
    shutil.copy(some_jpegs[0], target)
    old_key = content_key(str(target))
    original = data.Decoder.__call__

    def edited_before_decoding(self, *args):
        shutil.copy(some_jpegs[5], target)  # another program rewrites the file now
        return original(self, *args)

    monkeypatch.setattr(data.Decoder, "__call__", edited_before_decoding)
    cache = tmp_path / "c.h5"
    got = extract_features([str(target)], cache=cache, **TINY)
    monkeypatch.undo()
    keys, feats, _ = cache_contents(cache)
    assert old_key not in keys.tolist()  # never the new image's features under the old bytes
    assert keys.tolist() == [content_key(some_jpegs[5])]
    np.testing.assert_array_equal(feats, got)


# -- 5. a committed journal survives a copy of the cache -------------------------------------


def test_committed_journal_is_replayed_after_the_cache_is_copied(tmp_path):
    from tests.support.cache_writer import assert_committed_prefix, run_writer

    path = tmp_path / "c.h5"
    proc = run_writer(path, "--batches", "0:6", "--batch-size", 8, "--width", 16,
                      "--die-in-apply", 3, check=False)
    assert proc.returncode == -signal.SIGKILL
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    copied = copy_dir / "c.h5"
    shutil.copy(path, copied)  # a new inode, as after cp, rsync or another NFS client
    shutil.copy(str(path) + ".journal", str(copied) + ".journal")
    assert os.stat(copied).st_ino != os.stat(path).st_ino
    assert assert_committed_prefix(copied, 8, 16, 6) == 3  # replayed, not discarded


# -- 6. no working lock: refuse to write (unless single-writer is explicit) ------------------


def _no_locks(monkeypatch):
    import fcntl

    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)


def test_writing_without_a_working_lock_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "c.h5"
    config = {"backbone": "x", "layer": "y"}
    _no_locks(monkeypatch)
    with pytest.raises(CacheError, match="lock") as info:
        FeatureCache(path).write(config, ["a" * 32], np.ones((1, 4), np.float32), ["a.jpg"])
    assert "single_writer" in str(info.value)  # the message says what to do
    assert not path.exists() or FeatureCache(path, single_writer=True).configurations() == []
    # The explicit single-writer mode works on such a filesystem.
    cache = FeatureCache(path, single_writer=True)
    assert cache.write(config, ["a" * 32], np.ones((1, 4), np.float32), ["a.jpg"]) == 1
    assert cache.lookup(config, ["a" * 32])[0].all()


# -- 7. transient errors are not remembered as bad files ------------------------------------


def test_an_io_error_while_decoding_is_not_recorded_as_a_bad_file(tmp_path, monkeypatch,
                                                                   some_jpegs):
    import builtins

    target = tmp_path / "flaky.jpg"
    shutil.copy(some_jpegs[1], target)
    real_open = builtins.open
    faults = {"n": 0}

    class FlakyReader:
        def __init__(self, fh):
            self.fh = fh

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def read(self, *args):
            raise OSError(errno.EIO, "Input/output error")

        readinto = read

    def flaky_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if os.fspath(file) == str(target) and "b" in mode and faults["n"] < 50:
            faults["n"] += 1
            if faults["n"] > 1:  # the hash reads fine, the decoder's read fails
                return FlakyReader(fh)
        return fh

    cache = tmp_path / "c.h5"
    monkeypatch.setattr(builtins, "open", flaky_open)
    _, failures = extract_features([str(target)], cache=cache, on_error="nan",
                                   return_failures=True, **TINY)
    monkeypatch.undo()
    assert 0 in failures and "Input/output error" in failures[0]
    # Nothing about the file was remembered: the next run (disk healthy again) computes it.
    keys, _, recorded = cache_contents(cache)
    assert recorded == {}
    again, failures = extract_features([str(target)], cache=cache, on_error="nan",
                                       return_failures=True, **TINY)
    assert failures == {} and np.isfinite(again).all()


# -- 8. a bug inside a cache transaction is not reported as a corrupted cache ---------------


def test_a_bug_inside_a_transaction_is_not_called_corruption(tmp_path, monkeypatch):
    from featurize.storage.cache import CacheCorruptedError

    path = tmp_path / "c.h5"
    config = {"backbone": "x", "layer": "y"}
    cache = FeatureCache(path)
    cache.write(config, ["a" * 32], np.ones((1, 4), np.float32), ["a.jpg"])
    before = path.read_bytes()

    def bug(self, *args, **kwargs):
        raise KeyError("a programming error, not a damaged file")

    monkeypatch.setattr(FeatureCache, "_forget_failures", bug)
    with pytest.raises(KeyError, match="programming error") as info:
        cache.write(config, ["b" * 32], np.ones((1, 4), np.float32), ["b.jpg"])
    assert not isinstance(info.value, CacheCorruptedError)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the transaction was dropped, the cache is healthy
    assert cache.lookup(config, ["a" * 32])[0].all()


# -- 9. smaller ones --------------------------------------------------------------------------


def test_dask_part_files_differ_across_containers_with_the_same_host_and_pid():
    code = ("import os, socket; os.getpid = lambda: 7; socket.gethostname = lambda: 'box';"
            "from pipelines.distributed import part_path; print(part_path('/parts'))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    names = {subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True).stdout.strip() for _ in range(2)}
    assert len(names) == 2, names


def test_pil_key_depends_on_its_transparency():
    a = Image.new("P", (4, 4), 1)
    a.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    b = a.copy()
    a.info["transparency"] = 0
    b.info["transparency"] = 1
    assert content_key(a) != content_key(b)


def test_train_saves_the_resolved_precision(tmp_path, hymenoptera):
    from classify import load_model
    from pipelines import cli

    data = tmp_path / "data"
    for cls in ("ants", "bees"):
        (data / cls).mkdir(parents=True)
        for p in sorted((hymenoptera / "train" / cls).glob("*.jpg"))[:6]:
            shutil.copy(p, data / cls / p.name)
    out = tmp_path / "m.joblib"
    code = cli.main(["train", str(data), "--out", str(out), "--backbone", "resnet18",
                     "--weights", "none", "--device", "cpu", "--layers", "penultimate",
                     "--heads", "logreg", "--no-probability"])
    assert code == 0
    precision = load_model(out).featurizer_config["precision"]
    from featurize.extraction import resolve_precision

    assert precision == resolve_precision("auto", torch.device("cpu"))
    assert precision != "auto"


def test_fitted_model_featurizer_honours_a_new_device():
    from featurize import CNNFeaturizer

    f = CNNFeaturizer(backbone="resnet18", weights=None, device="cpu").fit()
    f.set_params(device="cuda")
    if torch.cuda.is_available():
        f.transform([np.zeros((8, 8, 3), np.uint8)])
        assert f._get_extractor().device.type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA"):
            f.transform([np.zeros((8, 8, 3), np.uint8)])

