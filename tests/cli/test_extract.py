"""``featurize extract``: shards + merge, SIGKILL / SIGINT then resume, job files, exit codes.

Every run here is compared with one clean, uninterrupted run of the same job (``reference``):
same keys, no duplicates, exactly equal features, same recorded failures.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featurize.storage.cache import FeatureCache, content_key
from pipelines import cli
from tests.support import SLOW_BATCHES
from tests.support import cache_contents as contents
from tests.support.corpus import fail_items, make_corpus, ok_items

REPO = Path(__file__).resolve().parents[2]
MODEL = ["--backbone", "resnet18", "--weights", "none", "--device", "cpu", "--workers", "0",
         "--progress", "none"]


def featurize(*args: str) -> tuple[int, str, str]:
    """Run ``featurize ARGS`` in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def assert_same_cache(path, reference, keys=None) -> None:
    """``path`` holds exactly the reference's rows (restricted to ``keys``), each once."""
    got_keys, got, got_failures = contents(path)
    ref_keys, ref, ref_failures = reference
    if keys is not None:
        keep = np.isin(ref_keys, sorted(keys))
        ref_keys, ref = ref_keys[keep], ref[keep]
        ref_failures = {k: v for k, v in ref_failures.items() if k in keys}
    assert len(set(got_keys)) == len(got_keys), "duplicate keys"
    np.testing.assert_array_equal(got_keys, ref_keys)
    np.testing.assert_array_equal(got, ref)  # exactly equal, not just close
    assert got_failures == ref_failures


def rows_in(path) -> int:
    confs = FeatureCache(path).configurations() if os.path.exists(path) else []
    return confs[0]["count"] if confs else 0


@pytest.fixture(scope="module")
def images(tmp_path_factory, some_jpegs) -> Path:
    """12 distinct images in a/ and b/ (6 real JPEGs, 6 copies with a few bytes appended
    after the image data, so their content keys differ) and one truncated file in a/."""
    root = tmp_path_factory.mktemp("images")
    for i, src in enumerate(some_jpegs[:6]):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        data = Path(src).read_bytes()
        (sub / f"img{i:02d}.jpg").write_bytes(data)
        (sub / f"img{i:02d}_v.jpg").write_bytes(data + f"variant {i}".encode())
    data = Path(some_jpegs[0]).read_bytes()
    (root / "a" / "broken.jpg").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """One clean run over every image: its JSON summary and its cache's contents."""
    out = tmp_path_factory.mktemp("reference")
    code, stdout, _ = featurize("extract", images, "--cache", out / "ref.h5", *MODEL,
                                "--batch-size", "4", "--failures", out / "failures.csv", "--json")
    assert code == 3, stdout
    return json.loads(stdout), contents(out / "ref.h5"), out


def test_clean_run_summary_manifest_and_exit_code(images, reference):
    summary, (keys, feats, failures), out = reference
    assert {k: summary[k] for k in ("total", "extracted", "cached", "failed", "missing")} == {
        "total": 13, "extracted": 12, "cached": 0, "failed": 1, "missing": 0}
    assert summary["interrupted"] is False and summary["images_per_s"] > 0
    assert len(keys) == 12 and feats.shape == (12, 512) and np.isfinite(feats).all()
    with open(out / "failures.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "reason"]
    assert [r[0] for r in rows[1:]] == [str(images / "a" / "broken.jpg")]
    assert rows[1][1].startswith("truncated image data")
    assert list(failures.values()) == [rows[1][1]]
    # Re-running is a no-op served from the cache.
    code, stdout, _ = featurize("extract", images, "--cache", out / "ref.h5", *MODEL, "--json")
    again = json.loads(stdout)
    assert code == 3 and (again["extracted"], again["cached"], again["failed"]) == (0, 12, 1)


def test_two_shards_merged_equal_the_unsharded_run(images, reference, tmp_path):
    totals = 0
    for i in range(2):
        code, stdout, _ = featurize("extract", images, "--cache", tmp_path / "feats.h5",
                                    "--shard", f"{i}/2", *MODEL, "--batch-size", "4", "--json")
        summary = json.loads(stdout)
        assert code in (0, 3) and summary["shard"] == f"{i}/2"
        assert summary["cache"] == str(tmp_path / f"feats.shard-{i}-of-2.h5")
        assert 0 < summary["total"] < 13  # each shard holds some of the files, not all
        totals += summary["total"]
    assert totals == 13 and not (tmp_path / "feats.h5").exists()
    shards = [tmp_path / f"feats.shard-{i}-of-2.h5" for i in range(2)]
    code, stdout, stderr = featurize("merge", *shards, "--out", tmp_path / "feats.h5", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["rows_added"] == 12
    assert_same_cache(tmp_path / "feats.h5", reference[1])
    code, stdout, _ = featurize("merge", *shards, "--out", tmp_path / "feats.h5", "--json")
    assert code == 0 and json.loads(stdout)["rows_added"] == 0  # merging is idempotent
    assert_same_cache(tmp_path / "feats.h5", reference[1])


def _start_job(images: Path, cache: Path) -> subprocess.Popen:
    """The job in a new session (its own process group, as a shell runs a command), one decode
    thread, each batch held for BATCH_SECONDS (so the job cannot end before the signal)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = ["extract", str(images / "a"), "--cache", str(cache), *MODEL, "--batch-size", "1",
            "--workers", "1"]
    code = f"{SLOW_BATCHES}; import sys; from pipelines.cli import main; sys.exit(main({argv!r}))"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def _wait_for_rows(proc: subprocess.Popen, cache: Path, n: int, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the job ended (exit {proc.returncode}) before it could be "
                        f"interrupted:\n{proc.stderr.read()}")
        rows = rows_in(cache)
        if rows >= n:
            return rows
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"the job wrote no {n} rows in {timeout} s")


def _keys_of(folder: Path) -> set[str]:
    return {content_key(p) for p in folder.glob("*.jpg")}


def test_sigkilled_run_resumed_equals_a_clean_run(images, reference, tmp_path):
    cache = tmp_path / "killed.h5"
    proc = _start_job(images, cache)
    _wait_for_rows(proc, cache, 2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group, as a scheduler's hard kill does
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = rows_in(cache)  # the file opens (a commit cut short is replayed from its journal)
    assert 2 <= done < 6, "the kill did not land mid-job"
    code, stdout, _ = featurize("extract", images / "a", "--cache", cache, *MODEL, "--json")
    summary = json.loads(stdout)
    assert code == 3 and summary["cached"] >= done and summary["missing"] == 0
    assert summary["extracted"] + summary["cached"] == 6
    assert_same_cache(cache, reference[1], keys=_keys_of(images / "a"))
    assert not list(tmp_path.glob("*.journal*"))


def test_sigint_stops_after_the_batch_then_resumes(images, reference, tmp_path):
    cache = tmp_path / "stopped.h5"
    proc = _start_job(images, cache)
    _wait_for_rows(proc, cache, 2)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole group, data loader included
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "SIGINT received" in stderr and stdout.startswith("interrupted:")
    assert "run the same command again to resume" in stdout
    done = rows_in(cache)
    assert 2 <= done < 6
    code, stdout, _ = featurize("extract", images / "a", "--cache", cache, *MODEL, "--json")
    assert code == 3 and json.loads(stdout)["extracted"] == 6 - done
    assert_same_cache(cache, reference[1], keys=_keys_of(images / "a"))


def test_job_file_with_a_csv_list_and_the_default_backbone(images, tmp_path):
    """The real default backbone (efficientnet_lite0, ImageNet weights), from a TOML job."""
    job_dir = tmp_path / "job"
    (job_dir / "lists").mkdir(parents=True)
    local = job_dir / "pics"
    local.mkdir()
    for name in ("img00.jpg", "img02.jpg"):  # in b/
        shutil.copy(images / "b" / name, local / name)
    with open(job_dir / "lists" / "images.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["label", "file"])
        writer.writerow(["bee", "../pics/img00.jpg"])  # relative to the list file's folder
        writer.writerow(["bee", "../pics/img02.jpg"])
        writer.writerow(["ant", str(images / "a" / "img01.jpg")])
        writer.writerow(["ant", str(images / "a" / "broken.jpg")])
        writer.writerow(["ant", "../pics/deleted.jpg"])
    (job_dir / "job.toml").write_text(
        'list = "lists/images.csv"\ncolumn = "file"\ncache = "out/feats.h5"\n'
        'failures = "out/failures.csv"\nbatch_size = 1\ndevice = "cpu"\nworkers = 0\n')
    (job_dir / "out").mkdir()
    code, stdout, stderr = featurize("extract", "--config", job_dir / "job.toml",
                                     "--batch-size", "4", "--progress", "none", "--json")
    assert code == 3, stderr
    summary = json.loads(stdout)
    assert (summary["total"], summary["extracted"], summary["failed"]) == (5, 3, 2)
    assert summary["cache"] == str(job_dir / "out" / "feats.h5")
    with open(job_dir / "out" / "failures.csv", newline="") as fh:
        reasons = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(fh)}
    assert set(reasons) == {"broken.jpg", "deleted.jpg"}
    assert reasons["deleted.jpg"] == "file not found"
    (conf,) = FeatureCache(job_dir / "out" / "feats.h5").configurations()
    assert conf["config"]["backbone"] == "efficientnet_lite0" and conf["width"] == 1280
    assert conf["config"]["weights"] == "DEFAULT" and conf["count"] == 3


def test_every_corpus_file_gets_its_documented_outcome(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    listing = tmp_path / "corpus.txt"
    listing.write_text("".join(f"{item.source}\n" for item in corpus.values() if not item.skip),
                       encoding="utf-8")
    code, stdout, stderr = featurize("extract", "--list", listing, "--cache", tmp_path / "c.h5",
                                     "--failures", tmp_path / "failures.csv", *MODEL,
                                     "--batch-size", "8", "--json")
    assert code == 3, stderr
    with open(tmp_path / "failures.csv", newline="", encoding="utf-8") as fh:
        failed = {os.path.abspath(r["path"]): r["reason"] for r in csv.DictReader(fh)}
    for kind, item in fail_items(corpus).items():
        assert item.reason in failed.get(os.path.abspath(item.source), ""), kind
    ok = ok_items(corpus)
    assert not {os.path.abspath(i.source) for i in ok.values()} & set(failed)
    keys = contents(tmp_path / "c.h5")[0]
    assert set(keys) == {content_key(i.source) for i in ok.values()}
    summary = json.loads(stdout)
    assert summary["failed"] == len(fail_items(corpus)) and summary["missing"] == 0


@pytest.mark.parametrize("args, message", [
    (["SRC"], "--cache"),
    (["SRC/nowhere", "--cache", "x.h5"], "no such file or folder"),
    (["SRC/*.png", "--cache", "x.h5"], "no file matches the pattern"),
    (["SRC", "--cache", "x.h5", "--scheduler", "local:0"], "positive number"),
    (["SRC", "--cache", "x.h5", "--batch-size", "0"], "--batch-size must be a positive"),
    (["--config", "JOB", "SRC"], "unknown key 'cahce'"),
    (["SRC", "--cache", "SRC/no/such/folder/x.h5"], "does not exist; create it first"),
])
def test_usage_errors_exit_with_2(images, tmp_path, args, message):
    (tmp_path / "job.toml").write_text('cahce = "x.h5"\n')
    args = [str(a).replace("SRC", str(images)).replace("JOB", str(tmp_path / "job.toml"))
            for a in args]
    code, _, stderr = featurize("extract", *args, *MODEL)
    assert code == 2 and message in stderr, stderr
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(io.StringIO()):
        cli.main(["extract", str(images), "--cache", "x.h5", "--shard", "2/2"])
    assert info.value.code == 2
