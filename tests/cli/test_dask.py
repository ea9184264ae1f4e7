"""Extraction on a real Dask ``LocalCluster``: equal to a single-process run, and complete
when a worker process is killed mid-job."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from featurize.storage.cache import FeatureCache
from pipelines import cli
from pipelines.distributed import parse_scheduler, part_path
from pipelines.jobs import run_job
from pipelines.spec import JobConfigError, JobSpec
from tests.support import cache_contents as contents

distributed = pytest.importorskip("distributed")

RANDOM = {"backbone": "resnet18", "weights": "none", "device": "cpu"}




def assert_same(path, reference) -> None:
    keys, feats, failures = contents(path)
    assert len(set(keys)) == len(keys), "duplicate keys"
    np.testing.assert_array_equal(keys, reference[0])
    np.testing.assert_allclose(feats, reference[1], rtol=1e-5, atol=1e-6)
    assert failures == reference[2]


@pytest.fixture(scope="module")
def images(tmp_path_factory, some_jpegs) -> Path:
    """Ten distinct JPEGs (six real, four with bytes appended) and a truncated one."""
    root = tmp_path_factory.mktemp("dask_images")
    for i, src in enumerate(some_jpegs[:6]):
        data = Path(src).read_bytes()
        (root / f"img{i}.jpg").write_bytes(data)
        if i < 4:
            (root / f"img{i}_v.jpg").write_bytes(data + b"another file")
    data = Path(some_jpegs[0]).read_bytes()
    (root / "broken.jpg").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """The single-process run of the job."""
    path = tmp_path_factory.mktemp("dask_ref") / "ref.h5"
    summary = run_job(JobSpec(sources=[str(images)], cache=str(path), batch_size=4, workers=0,
                              **RANDOM), progress="none")
    assert (summary.extracted, summary.failed) == (10, 1)
    return contents(path)


def test_parse_scheduler():
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("local")[0] == "local"
    assert parse_scheduler("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    for bad in ("local:0", "local:x"):
        with pytest.raises(JobConfigError, match="local:N"):
            parse_scheduler(bad)


def test_local_cluster_run_equals_the_single_process_run(images, reference, tmp_path):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["extract", str(images), "--cache", str(tmp_path / "dask.h5"),
                         "--scheduler", "local:2", "--partition-size", "3", "--batch-size", "2",
                         "--backbone", "resnet18", "--weights", "none", "--device", "cpu",
                         "--progress", "none", "--failures", str(tmp_path / "failures.csv"),
                         "--json"])
    assert code == 3, err.getvalue()
    summary = json.loads(out.getvalue())
    assert (summary["total"], summary["extracted"], summary["failed"]) == (11, 10, 1)
    assert summary["scheduler"] == "local:2"
    assert_same(tmp_path / "dask.h5", reference)
    assert not (tmp_path / "dask.h5.parts").exists()  # merged, then removed
    assert (tmp_path / "failures.csv").read_text().count("broken.jpg") == 1


@pytest.fixture
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield cluster, client


def test_a_worker_killed_mid_job_loses_nothing(images, reference, tmp_path, cluster):
    _, client = cluster
    target = tmp_path / "dask.h5"
    spec = JobSpec(sources=[str(images)], cache=str(target), scheduler=client.scheduler.address,
                   partition_size=1, batch_size=1, **RANDOM)
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(summary=run_job(spec, progress="none")))
    job.start()
    pids = client.run(os.getpid)  # worker address -> pid
    parts = client.run(part_path, str(target) + ".parts")  # worker address -> its part file
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and job.is_alive():
        # A worker that is running a task and has already committed a batch to its part file.
        for address, keys in client.processing().items():
            part = parts[address]
            if keys and os.path.exists(part) and FeatureCache(part).configurations():
                victim = pids[address]
                break
        time.sleep(0.05)
    assert victim is not None, "no worker was caught busy"
    os.kill(victim, signal.SIGKILL)
    assert job.is_alive(), "the kill came after the job"
    job.join(timeout=240)
    assert not job.is_alive(), "the job did not finish after the worker was killed"
    summary = result["summary"]
    assert summary.total == 11 and summary.failed == 1 and summary.missing == 0
    assert not summary.interrupted
    assert_same(target, reference)
    assert not (tmp_path / "dask.h5.parts").exists()
    assert victim not in client.run(os.getpid).values()  # it really died (and was replaced)
