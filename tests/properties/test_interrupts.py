"""``featurize extract`` killed (SIGKILL) or interrupted (SIGINT) at random points, then resumed.

A stress version of the basic interrupt test of ``tests/cli/test_extract.py``: the same job is
started again and again on one cache and each run is signalled at a point drawn from a seeded RNG
between "this run has written its first batch" and the job's end (a row count, plus a random
fraction of a batch so that signals land in the forward pass, in the cache write and in its
commit alike). Each batch's forward pass is held for :data:`BATCH_SECONDS` first (a controlled,
slow batch source), so the job can never outrun the poller and end before its kill point,
however fast the machine. After every signal the cache must open and hold each image at most
once with its exact features; after the final resume it must equal an uninterrupted run's
cache, bit for bit.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurize.storage.cache import FeatureCache
from tests.support import SLOW_BATCHES

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 36
BATCH = 3
#: fp32: most rounds are forks of this test process, and a fork of a process that ran
#: OpenVINO (the bf16 engine) cannot run it (see featurize.networks.runtimes): fp32's engine
#: serves both.
RANDOM = ["--backbone", "resnet18", "--weights", "none", "--device", "cpu", "--precision",
          "fp32"]
SEED = 20240611
#: (signal, decode threads, fresh interpreter) of each run; the kill points come from the
#: seeded RNG.
ROUNDS = [(signal.SIGINT, 0, True), (signal.SIGKILL, 0, False), (signal.SIGINT, 1, False),
          (signal.SIGKILL, 1, False), (signal.SIGKILL, 0, False)]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """See tests/properties/test_reliability.py: one thread is ~10x faster on the shared 2-core
    VM."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A list file: 36 distinct images, a byte copy of one, a truncated file, a text file."""
    root = tmp_path_factory.mktemp("interrupts")
    rng = np.random.default_rng(SEED)
    paths = []
    for i in range(N_IMAGES):
        path = root / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (24 + i, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    shutil.copy(paths[5], root / "copy_of_img05.png")
    data = paths[9].read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "notes.jpg").write_text("not an image\n")
    order = [*paths[:10], root / "truncated.png", *paths[10:20], root / "copy_of_img05.png",
             *paths[20:30], root / "notes.jpg", *paths[30:]]
    listing = root / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in order))
    return listing


def _argv(listing: Path, cache: Path, workers: int = 0) -> list[str]:
    return ["extract", "--list", str(listing), "--cache", str(cache), "--batch-size",
            str(BATCH), "--workers", str(workers), "--progress", "none", "--json", *RANDOM]


def _contents(cache: Path) -> tuple[dict[str, np.ndarray], dict, int]:
    """``{key: features}``, the recorded failures, and the number of rows (duplicates too)."""
    store = FeatureCache(cache)
    (conf,) = store.configurations()
    keys, _, feats = store.export(conf["id"])
    return dict(zip(keys.tolist(), feats)), store.failures(conf["config"]), len(keys)


def _rows(cache: Path, cid: str) -> int:
    if not cache.exists():
        return 0
    for conf in FeatureCache(cache).configurations():
        if conf["id"] == cid:
            return int(conf["count"])
    return 0


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """An uninterrupted run of the same command (in this process)."""
    from pipelines.cli import main

    cache = tmp_path_factory.mktemp("reference") / "feats.h5"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(_argv(inputs, cache)) == 3  # two files cannot be read
    feats, failures, n_rows = _contents(cache)
    assert n_rows == len(feats) == N_IMAGES and len(failures) == 2
    (conf,) = FeatureCache(cache).configurations()
    return feats, failures, conf["id"], json.loads(out.getvalue().strip().splitlines()[-1])


def test_clean_run_counts_each_image_once(reference):
    """The byte copy of img05 comes 16 rows after it, when img05's batch is long written: it is
    a duplicate, not a second extraction (the SIGINT check below relies on "extracted" being
    the number of rows the run added)."""
    summary = reference[3]
    assert (summary["extracted"], summary["duplicates"], summary["failed"]) == (N_IMAGES, 1, 2)


def _assert_consistent(cache: Path, reference, context: str) -> int:
    feats, failures, n_rows = _contents(cache)
    ref_feats, ref_failures = reference[:2]
    assert n_rows == len(feats), f"{context}: a key is stored twice"
    assert set(feats) <= set(ref_feats), f"{context}: unknown rows"
    for key, row in feats.items():
        assert np.array_equal(row, ref_feats[key]), f"{context}: row {key} differs"
    assert set(failures.items()) <= set(ref_failures.items()), context
    return n_rows


class _Run:
    """One ``featurize extract`` process, in its own session (process group).

    ``fresh``: a new interpreter (``python -m pipelines extract ...``), as a user starts it.
    Otherwise a fork of this test process, which has torch imported already, running the same
    ``pipelines.cli.main(argv)`` with its own pid, output files and default SIGINT handling: a
    real process that is really killed, without paying the interpreter and torch start-up
    (~10 s on the shared VM) for every kill point.
    """

    def __init__(self, argv: list[str], folder: Path, fresh: bool, env: dict) -> None:
        self.out, self.err = folder / "stdout.txt", folder / "stderr.txt"
        self.returncode: int | None = None
        self._proc = None
        if fresh:
            code = (f"import sys; {SLOW_BATCHES}; from pipelines.cli import main;"
                    " sys.exit(main(sys.argv[1:]))")
            with open(self.out, "w") as out, open(self.err, "w") as err:
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", code, *argv], cwd=ROOT, env=env,
                    stdout=out, stderr=err, start_new_session=True)
            self.pid = self._proc.pid
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(argv, self.out, self.err)  # never returns
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._proc is not None:
                self.returncode = self._proc.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"featurize extract (pid {self.pid}) did not exit")
            time.sleep(0.02)
        return self.returncode

    def kill_group(self) -> None:
        """Kill whatever is left in its process group (e.g. orphaned loader workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.poll() is None:
            self.wait(30)

    def output(self) -> tuple[str, str]:
        return self.out.read_text(), self.err.read_text()


def _child(argv: list[str], out: Path, err: Path) -> None:
    code = 70
    try:
        os.setsid()
        stdout, stderr = open(out, "w", buffering=1), open(err, "w", buffering=1)
        os.dup2(stdout.fileno(), 1)
        os.dup2(stderr.fileno(), 2)
        sys.stdout, sys.stderr = stdout, stderr
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a new interpreter
        exec(SLOW_BATCHES, {})
        from pipelines.cli import main

        code = main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def test_random_kills_and_interrupts_then_resume_equal_a_clean_run(inputs, reference, tmp_path,
                                                                   capsys):
    from pipelines.cli import main

    cache = tmp_path / "feats.h5"
    cid = reference[2]
    rng = np.random.default_rng(SEED)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = []
    share = (N_IMAGES - 2 * BATCH) / len(ROUNDS)
    for number, (sig, workers, fresh) in enumerate(ROUNDS):
        before = _rows(cache, cid)
        # Signal once this run has written a batch and the cache holds `target` rows, then
        # after a random part of a batch: in the forward pass, the write or its commit.
        target = max(before + 1, int(rng.integers(number * share, (number + 1) * share)) + 1)
        extra_delay = float(rng.uniform(0, 0.25))
        folder = tmp_path / f"run{number}"
        folder.mkdir()
        run = _Run(_argv(inputs, cache, workers), folder, fresh, env)
        try:
            deadline = time.monotonic() + 180
            while run.poll() is None and _rows(cache, cid) < target:
                assert time.monotonic() < deadline, "the job never wrote its batches"
                time.sleep(0.02)
            time.sleep(extra_delay)
            ended_first = run.poll() is not None
            if not ended_first:
                if sig == signal.SIGINT:
                    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
                else:
                    os.kill(run.pid, signal.SIGKILL)  # the OOM killer: the main process only
            run.wait(120)
        finally:
            run.kill_group()
        out, err = run.output()
        after = _assert_consistent(cache, reference, f"after run {number} ({sig.name})")
        log.append((sig.name, workers, fresh, before, target, round(extra_delay, 3), after,
                    run.returncode))
        if ended_first:  # the job ended before the kill point: nothing more to check
            assert run.returncode == 3, err[-2000:]
            continue
        if sig == signal.SIGKILL:
            assert run.returncode == -signal.SIGKILL, (log, err[-2000:])
            continue
        assert run.returncode == 130, (log, err[-2000:])
        assert "SIGINT received" in err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["interrupted"]
        # Flushed: every batch this run computed is in the cache, and nothing else.
        assert after == before + summary["extracted"], (log, summary)
    assert sum(1 for entry in log if entry[-1] in (-signal.SIGKILL, 130)) == len(ROUNDS), log
    # Resume: the same command, to the end.
    assert main(_argv(inputs, cache)) == 3
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["missing"] == 0 and not resumed["interrupted"]
    feats, failures, n_rows = _contents(cache)
    ref_feats, ref_failures = reference[:2]
    assert n_rows == len(ref_feats) and sorted(feats) == sorted(ref_feats), log
    for key, row in ref_feats.items():
        assert np.array_equal(feats[key], row), key
    assert failures == ref_failures
    assert not os.path.exists(f"{cache}.journal") and not os.path.exists(f"{cache}.journal.tmp")
