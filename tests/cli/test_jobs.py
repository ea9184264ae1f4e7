"""Batch jobs (pipelines.jobs, pipelines.config): inputs, shards, job files, resume, failures."""

from __future__ import annotations

import csv
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from featurize.extraction import Extractor
from featurize.progress import Progress
from featurize.storage.cache import FeatureCache
from pipelines.config import KEYS, build_spec, load_job_file, parse_resources
from pipelines.jobs import run_job
from pipelines.sources import read_list_file, resolve_inputs
from pipelines.spec import (
    JobConfigError,
    JobSpec,
    parse_shard,
    select_shard,
    shard_cache_path,
    shard_of,
)

RANDOM = {"backbone": "resnet18", "weights": "none", "device": "cpu"}


def exported(path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(keys, features) of a one-configuration cache, sorted by key, and its failures."""
    cache = FeatureCache(path)
    (conf,) = cache.configurations()
    keys, _, feats = cache.export(conf["id"])
    order = np.argsort(keys)
    return keys[order], feats[order], cache.failures(conf["config"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory, some_jpegs) -> Path:
    """Six real JPEGs in two sub-folders, a byte-identical copy, a broken file, a text file."""
    root = tmp_path_factory.mktemp("job")
    for i, src in enumerate(some_jpegs[:6]):
        sub = root / ("ants" if i < 3 else "bees")
        sub.mkdir(exist_ok=True)
        shutil.copy(src, sub / f"img{i}.jpg")
    shutil.copy(some_jpegs[0], root / "bees" / "copy_of_img0.jpg")
    data = Path(some_jpegs[1]).read_bytes()
    (root / "bees" / "broken.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def resnet() -> Extractor:
    return Extractor("resnet18", None, device="cpu")


@pytest.fixture(scope="module")
def shared_model(resnet):
    """Jobs get the module's loaded model instead of loading their own (1-4 s each).

    The job must still ask for exactly the model of ``RANDOM``.
    """
    asked = []

    def factory(**options):
        asked.append(options)
        assert options == {"backbone": "resnet18", "weights": None, "layer": None,
                           "pooling": "avg", "device": "cpu", "precision": "auto",
                           "engine": "auto"}  # the options as given; never by job size
        return resnet

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("featurize.extraction.Extractor", factory)
        yield asked


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory, shared_model):
    """A complete job over ``folder`` (batches of 2, hashed 3 files at a time)."""
    out = tmp_path_factory.mktemp("reference")
    spec = JobSpec(sources=[str(folder)], cache=str(out / "f.h5"), batch_size=2, workers=0,
                   chunk_size=3, failures=str(out / "failures.csv"), **RANDOM)
    return spec, run_job(spec, progress="none")


# -- shards -------------------------------------------------------------------------------


def test_parse_shard_and_shard_file_names():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("4/4", "-1/4", "1", "a/b", "1/0", ""):
        with pytest.raises(JobConfigError, match="I/N"):
            parse_shard(bad)
    assert shard_cache_path("out/feats.h5", (0, 4)) == "out/feats.shard-0-of-4.h5"
    assert shard_cache_path("feats", (2, 3)) == "feats.shard-2-of-3"


def test_shards_partition_the_inputs_and_are_stable_when_the_folder_grows():
    paths = [f"/data/img_{i:05d}.jpg" for i in range(2000)]
    shards = [select_shard(paths, (i, 4)) for i in range(4)]
    assert sorted(p for s in shards for p in s) == sorted(paths)  # disjoint and complete
    assert all(400 < len(s) < 600 for s in shards)  # a hash, not round-robin on position
    grown = paths + [f"/data/new_{i}.jpg" for i in range(500)]
    assert [shard_of(p, 4) for p in paths] == [shard_of(p, 4) for p in grown[:2000]]
    assert select_shard(grown, (1, 4))[: len(shards[1])] == shards[1]  # order kept
    assert shard_of("/data/x.jpg", 7) == shard_of("/data/x.jpg", 7)


# -- inputs -------------------------------------------------------------------------------


def test_list_files_text_csv_tsv_relative_to_their_folder(tmp_path, monkeypatch):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "a.txt").write_text("# a comment\n\nimgs/one.jpg\n  /abs/two.jpg  \n")
    (lists / "b.csv").write_text("label,path\nant,imgs/three.jpg\nbee,\nbee,../four.jpg\n")
    (lists / "c.tsv").write_text("file\tlabel\nimgs/five.jpg\tant\n")
    monkeypatch.chdir(tmp_path)  # must not matter
    assert read_list_file(str(lists / "a.txt")) == [str(lists / "imgs/one.jpg"), "/abs/two.jpg"]
    assert read_list_file("lists/b.csv") == [str(lists / "imgs/three.jpg"),
                                             str(tmp_path / "four.jpg")]
    assert read_list_file(str(lists / "c.tsv"), column="file") == [str(lists / "imgs/five.jpg")]
    with pytest.raises(JobConfigError, match=r"no column 'path'.*\['file', 'label'\]"):
        read_list_file(str(lists / "c.tsv"))
    with pytest.raises(JobConfigError, match="does not exist"):
        read_list_file(str(lists / "missing.txt"))


def test_resolve_inputs_folders_globs_lists_once_each(folder, tmp_path):
    listing = tmp_path / "more.txt"
    listing.write_text(f"{folder}/ants/img0.jpg\n{folder}/nowhere.jpg\n")
    paths = resolve_inputs([str(folder / "bees"), str(folder / "ants" / "*.jpg"),
                            str(folder / "bees" / "img3.jpg")], [str(listing)])
    names = [os.path.relpath(p, folder) for p in paths]
    assert names == ["bees/broken.jpg", "bees/copy_of_img0.jpg", "bees/img3.jpg", "bees/img4.jpg",
                     "bees/img5.jpg", "ants/img0.jpg", "ants/img1.jpg", "ants/img2.jpg",
                     "nowhere.jpg"]  # listed entries are kept even if missing: they fail later
    assert all(os.path.isabs(p) for p in paths)
    with pytest.raises(JobConfigError, match="no such file or folder"):
        resolve_inputs([str(folder / "typo")])
    with pytest.raises(JobConfigError, match="matches the pattern"):
        resolve_inputs([str(folder / "*.png")])


# -- job files ----------------------------------------------------------------------------


def test_job_file_keys_paths_and_command_line_overrides(tmp_path):
    (tmp_path / "jobs" / "out").mkdir(parents=True)
    job = tmp_path / "jobs" / "job.toml"
    job.write_text('sources = ["../images", "/abs/*.jpg"]\nlist = "paths.csv"\ncolumn = "file"\n'
                   'cache = "out/feats.h5"\nweights = "none"\nbackbone = "resnet18"\n'
                   'layer = ["layer3", "layer4"]\nbatch-size = 8\nshard = "1/3"\n'
                   'retry_failed = true\nscheduler = "local:2"\nresources = {GPU = 1}\n')
    values = load_job_file(job)
    base = str(tmp_path / "jobs")
    assert values["sources"] == [str(tmp_path / "images"), "/abs/*.jpg"]
    assert values["lists"] == [os.path.join(base, "paths.csv")]
    assert values["cache"] == os.path.join(base, "out", "feats.h5")
    assert values["shard"] == (1, 3) and values["batch_size"] == 8
    assert values["resources"] == {"GPU": 1.0}
    spec = build_spec(values, {"batch_size": 32, "sources": [], "weights": None,
                               "layers": ["layer2"]})
    spec.validate()
    assert spec.batch_size == 32  # the command line wins
    assert spec.sources == values["sources"]  # an empty command-line list does not
    assert spec.layers == ["layer2"] and spec.column == "file" and spec.retry_failed is True
    assert spec.extractor_options()["weights"] is None
    assert spec.extractor_options()["engine"] == "auto"  # the same for any size of job
    assert spec.target == os.path.join(base, "out", "feats.shard-1-of-3.h5")
    assert set(KEYS) >= {"sources", "cache", "backbone", "shard", "scheduler", "failures"}
    with pytest.raises(JobConfigError, match="does not exist; create it first"):
        build_spec(values, {"cache": str(tmp_path / "nowhere" / "f.h5")}).validate()


@pytest.mark.parametrize("text, match", [
    ('cahce = "x.h5"\n', "unknown key 'cahce'; valid keys: sources, list"),
    ("batch_size = '8'\n", "'batch_size' .* must be an integer"),
    ('shard = "3/3"\n', "0 <= I < N"),
    ("sources = [1, 2]\n", "a string or a list of strings"),
    ("resources = {GPU = -1}\n", "positive amount"),
    ("cache = \n", "not valid TOML"),
])
def test_job_file_errors_say_what_is_wrong(tmp_path, text, match):
    job = tmp_path / "job.toml"
    job.write_text(text)
    with pytest.raises(JobConfigError, match=match):
        load_job_file(job)


def test_spec_validation_and_resources():
    with pytest.raises(JobConfigError, match="no inputs"):
        JobSpec(cache="x.h5").validate()
    with pytest.raises(JobConfigError, match="--cache"):
        JobSpec(sources=["a"]).validate()
    with pytest.raises(JobConfigError, match="not cached"):
        JobSpec(sources=["a"], cache="x.h5", pooling="none").validate()
    with pytest.raises(JobConfigError, match="--batch-size must be a positive integer"):
        JobSpec(sources=["a"], cache="x.h5", batch_size=0).validate()
    assert parse_resources("GPU=1, MEMORY=4e9") == {"GPU": 1.0, "MEMORY": 4e9}
    with pytest.raises(JobConfigError, match="NAME=AMOUNT"):
        parse_resources("GPU")


# -- running jobs -------------------------------------------------------------------------


class _StopAfter(Progress):
    """Sets the stop event once ``n`` inputs were dealt with (what a Ctrl-C handler does)."""

    def __init__(self, stop: threading.Event, n: int):
        self.stop, self.n, self.done = stop, n, 0

    def advance(self, n: int) -> None:
        self.done += n
        if self.done >= self.n:
            self.stop.set()


def test_job_extracts_dedupes_records_failures_and_resumes(folder, reference, resnet,
                                                           shared_model):
    spec, first = reference
    assert (first.total, first.extracted, first.failed) == (8, 6, 1)
    # The copy is computed once: a duplicate of a row in flight, or found in the cache.
    assert first.duplicates + first.cached == 1
    assert not first.interrupted and first.missing == 0
    with open(spec.failures, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "reason"] and len(rows) == 2
    assert rows[1][0] == str(folder / "bees" / "broken.jpg")
    assert rows[1][1].startswith("truncated image data")
    keys, feats, failures = exported(spec.cache)
    assert len(keys) == len(set(keys)) == 6
    assert list(failures.values()) == [tuple(rows[1])]  # recorded in the cache too
    # The rows are exactly what Extractor.extract computes for these files.
    from featurize.storage.cache import content_key

    files = sorted(str(p) for p in folder.rglob("img*.jpg"))
    direct = dict(zip(map(content_key, files), resnet.extract(files, num_workers=0).features))
    np.testing.assert_array_equal(feats, np.stack([direct[k] for k in keys]))

    again = run_job(spec, progress="none")  # resume: nothing left to compute
    assert (again.extracted, again.cached, again.failed) == (0, 7, 1)
    assert np.array_equal(exported(spec.cache)[1], feats)
    retry = run_job(JobSpec(**{**spec.__dict__, "retry_failed": True}), progress="none")
    assert (retry.extracted, retry.cached, retry.failed) == (0, 7, 1)
    assert shared_model  # the jobs did build their model through Extractor(**options)


def test_stopped_job_resumes_to_the_same_cache(reference, tmp_path):
    spec, _ = reference
    part = JobSpec(**{**spec.__dict__, "cache": str(tmp_path / "part.h5"), "batch_size": 1,
                      "failures": None})
    stop = threading.Event()
    stopped = run_job(part, progress=_StopAfter(stop, 2), stop=stop)
    assert stopped.interrupted and 2 <= stopped.extracted < 6 and stopped.missing > 0
    assert len(exported(part.cache)[0]) == stopped.extracted
    resumed = run_job(part, progress="none")
    assert not resumed.interrupted and resumed.missing == 0
    assert resumed.extracted + stopped.extracted == 6  # nothing computed twice
    a, b = exported(spec.cache), exported(part.cache)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_no_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobConfigError, match="hold no image files"):
        run_job(JobSpec(sources=[str(tmp_path / "empty")], cache=str(tmp_path / "f.h5"),
                        **RANDOM), progress="none")


def test_log_progress_speaks_during_a_long_silent_step(caplog):
    from featurize.progress import make_progress

    progress = make_progress("log", interval=0.2, desc="select", unit="fit")
    with caplog.at_level("INFO", logger="featurize.progress"):
        progress.start(10)
        time.sleep(0.7)  # one long fit: no advance() at all
        lines_while_silent = len(caplog.records)
        progress.close()
    assert lines_while_silent >= 2
    assert "select: 0/10 fit" in caplog.records[0].getMessage()
