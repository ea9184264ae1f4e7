"""What tests share: the repository's root, the real data, and small helpers.

``tests/support/corpus.py`` generates the bad and unusual image files every decode-facing
layer is tested on; ``tests/support/cache_writer.py`` is a process that writes deterministic
batches to a cache (for the crash-safety and concurrency tests). No test module imports
another test module: what two of them need lives here.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np

#: the repository's root
ROOT = Path(__file__).resolve().parents[2]
#: the ants/bees data set (train/ and val/, a folder per class)
DATA = Path(os.environ.get("FEATURIZE_DATA", ROOT.parent / "shared" / "data" / "hymenoptera_data"))

#: Each forward pass of a job run with :data:`SLOW_BATCHES` waits this long first (a controlled,
#: slow batch source): an interrupt test's job can never outrun its poller, however fast the
#: machine, and the largest random extra delay of the interrupt tests is shorter.
BATCH_SECONDS = 0.3
#: Python run in a job's process before the job: every forward pass first waits BATCH_SECONDS.
SLOW_BATCHES = (
    "import time, featurize.extraction.extractor as _x; _f = _x.Extractor.forward; "
    f"_x.Extractor.forward = lambda self, b: (time.sleep({BATCH_SECONDS}), _f(self, b))[1]")


def subprocess_env() -> dict[str, str]:
    """This process's environment, with the repository on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cache_contents(path) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(keys, features, failures)`` of a one-configuration cache file, rows sorted by key.

    ``failures`` maps a content key to its recorded reason. A cache with no configuration
    gives empty arrays.
    """
    from featurize.storage.cache import FeatureCache

    cache = FeatureCache(path)
    configs = cache.configurations() if os.path.exists(path) else []
    if not configs:
        return np.empty(0, dtype="S32").astype(str), np.empty((0, 0), np.float32), {}
    (conf,) = configs
    keys, _, feats = cache.export(conf["id"])
    order = np.argsort(keys)
    failures = {k: reason for k, (_, reason) in cache.failures(conf["config"]).items()}
    return keys[order], feats[order], failures


def in_forked_child(function, *args, alarm: int = 0):
    """Run ``function(*args)`` in a forked child process and return its JSON-able result.

    ``alarm``: seconds after which the child is killed (a hang then fails the assertion here
    instead of hanging the test run); 0 for none.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            if alarm:
                signal.alarm(alarm)
            os.close(read_end)
            with os.fdopen(write_end, "w") as pipe:
                json.dump(function(*args), pipe)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and text, f"the child hung or died: {text!r}"
    return json.loads(text)
