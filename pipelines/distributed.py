"""Run an extraction job on a Dask distributed cluster.

The client cuts the job's input list into partitions (``partition_size`` images each) and
submits one task per partition. On the workers:

* each worker process loads the model once (:func:`get_extractor` keeps the
  :class:`~featurize.extraction.Extractor` in a per-process cache keyed by its options);
* a task reads the target cache (read only) to skip what is done, and writes what it computes
  into the process's own part file ``<parts_dir>/part-<host>-<pid>.h5``, so no two processes
  ever write the same file;
* when every partition is done, the client merges the part files into the target cache
  (:func:`featurize.storage.cache_tools.merge_caches`: bit-for-bit copies, duplicate keys
  skipped) and removes them.

A worker that dies mid-job loses only its unfinished partitions: Dask reschedules them on
the other workers (up to ``distributed.scheduler.allowed-failures`` times, then the
partition's files are reported as failed), and the batches the dead process had committed
stay in its part file (the cache writes are crash-safe), so they are merged too; rows
computed twice are skipped by the merge. A client that dies leaves the part files in place;
the next run merges them before it starts (resume).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from featurize.exceptions import FeaturizeError
from featurize.extraction.loop import stream_extract
from featurize.progress import Progress
from pipelines.spec import JobSpec, parse_scheduler  # noqa: F401 (parse_scheduler: API)

__all__ = ["DaskJobError", "connect", "extract_partition", "get_extractor", "merge_parts",
           "parse_scheduler", "run_dask_job"]

logger = logging.getLogger(__name__)

_PART_PATTERN = "part-*.h5"
_EXTRACTORS: dict[str, Any] = {}
_CACHES: dict[tuple[str, str], Any] = {}
_STATE_LOCK = threading.Lock()
_RUN_LOCKS: dict[str, threading.Lock] = {}


class DaskJobError(FeaturizeError, RuntimeError):
    """A Dask task failed for another reason than an unreadable image or a lost worker."""


# --------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------


def get_extractor(options: dict[str, Any]):
    """The process's :class:`~featurize.extraction.Extractor` for these options (loaded once).

    Parameters
    ----------
    options : dict
        Keyword arguments of ``Extractor`` (JSON-able); the cache key is their JSON.

    Returns
    -------
    extractor : featurize.extraction.Extractor
    lock : threading.Lock
        Held while the extractor runs: its layer hooks are not thread-safe, so a worker with
        several threads runs its partitions one at a time.
    """
    key = json.dumps(options, sort_keys=True)
    with _STATE_LOCK:
        extractor = _EXTRACTORS.get(key)
        if extractor is None:
            from featurize.extraction import Extractor

            logger.info("worker %s: loading %s", os.getpid(), key)
            extractor = Extractor(**options)
            extractor.prepare_engine()
            _EXTRACTORS[key] = extractor
            _RUN_LOCKS[key] = threading.Lock()
        return extractor, _RUN_LOCKS[key]


def _cache(path: str, dtype: str):
    """One FeatureCache object per file and process, so its key index is read once."""
    with _STATE_LOCK:
        cache = _CACHES.get((path, dtype))
        if cache is None:
            from featurize.storage.cache import FeatureCache

            cache = FeatureCache(path, dtype=dtype)
            _CACHES[(path, dtype)] = cache
        return cache


#: A random part of this process's part-file name: two containers can share a host name and
#: a pid (each starts its processes at 1), never this token.
_PROCESS_TOKEN = uuid.uuid4().hex[:12]


def part_path(parts_dir: str) -> str:
    """This process's part file in ``parts_dir``: ``part-<host>-<pid>-<random>.h5``."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    return os.path.join(parts_dir, f"part-{host}-{os.getpid()}-{_PROCESS_TOKEN}.h5")


def extract_partition(paths: Sequence[str], *, options: dict[str, Any], target: str,
                      parts_dir: str, dtype: str = "float32", batch_size: int = 32,
                      workers: int | None = None, retry_failed: bool = False) -> dict[str, Any]:
    """The Dask task: featurize ``paths`` into this process's part file.

    Parameters
    ----------
    paths : sequence of str
        The partition (paths as seen from the worker: use a shared file system).
    options : dict
        ``Extractor`` options.
    target : str
        The job's target cache, read to skip features that exist already.
    parts_dir : str
        Folder of the part files.
    dtype, batch_size, retry_failed
        As in :class:`pipelines.spec.JobSpec`.
    workers : int or None, default=None
        Decode threads (None: one per core, see
        :func:`featurize.images.data.default_decode_threads`).

    Returns
    -------
    result : dict
        ``n``, ``extracted``, ``cached``, ``duplicates``, ``failed``, ``failures`` (list of
        ``(path, reason)``), ``part``, ``worker`` (``host:pid``) and ``engine``.
    """
    extractor, run_lock = get_extractor(options)
    os.makedirs(parts_dir, exist_ok=True)
    part = _cache(part_path(parts_dir), dtype)
    failures: list[tuple[str, str]] = []
    with run_lock:  # the model's layer hooks are not thread-safe: one partition at a time
        counts = stream_extract(
            list(paths), extractor, part, read_caches=[_cache(target, dtype)],
            batch_size=batch_size, num_workers=workers, retry_failed=retry_failed,
            chunk_size=max(1, len(paths)), on_failure=lambda p, r: failures.append((p, r)))
    counts.update(n=len(paths), failures=failures, part=os.fspath(part.path),
                  worker=f"{socket.gethostname()}:{os.getpid()}", engine=extractor.engine_name)
    return counts


# --------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def connect(scheduler: str) -> Iterator[tuple[Any, bool]]:
    """A Dask client for ``--scheduler``; a ``local[:N]`` cluster is started and stopped here.

    Yields
    ------
    client : distributed.Client
    local : bool
        Whether the cluster was started here (and stops with the client).
    """
    from distributed import Client, LocalCluster

    kind, value = parse_scheduler(scheduler)
    if kind == "local":
        # the dashboard needs bokeh; without it, no dashboard rather than a warning
        dashboard = ":0" if importlib.util.find_spec("bokeh") is not None else None
        cluster = LocalCluster(n_workers=value, threads_per_worker=1, processes=True,
                               dashboard_address=dashboard)
        client = Client(cluster)
        logger.info("started a local Dask cluster: %d worker processes%s", value,
                    f", dashboard {client.dashboard_link}" if dashboard else "")
        try:
            yield client, True
        finally:
            client.close()
            cluster.close()
        return
    client = Client(scheduler_file=value) if kind == "file" else Client(value)
    logger.info("connected to Dask scheduler %s (%d workers)", client.scheduler.address,
                len(client.scheduler_info().get("workers", {})))
    try:
        yield client, False
    finally:
        client.close()


def merge_parts(parts_dir: str, target: str, *, remove: bool = True) -> dict[str, Any] | None:
    """Merge the part files of ``parts_dir`` into ``target`` (and remove them).

    Returns
    -------
    counts : dict or None
        What :func:`featurize.storage.cache_tools.merge_caches` returned; None when there was
        no part file.
    """
    from featurize.storage.cache_tools import merge_caches

    parts = sorted(glob.glob(os.path.join(glob.escape(parts_dir), _PART_PATTERN)))
    if not parts:
        return None
    counts = merge_caches(parts, target)
    logger.info("merged %d part file(s) into %s: %d rows added, %d duplicates skipped",
                len(parts), target, counts["rows_added"], counts["rows_skipped"])
    if remove:
        for part in parts:
            for leftover in (part, part + ".journal", part + ".journal.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
        with contextlib.suppress(OSError):
            os.rmdir(parts_dir)  # only if empty
    return counts


def _partitions(paths: Sequence[str], size: int) -> list[list[str]]:
    return [list(paths[i:i + size]) for i in range(0, len(paths), size)]


def run_dask_job(paths: Sequence[str], spec: JobSpec, target: str, *,
                 progress: Progress | None = None,
                 on_failure: Callable[[str, str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Featurize ``paths`` into ``target`` on the Dask cluster named by ``spec.scheduler``.

    Parameters
    ----------
    paths : sequence of str
        Inputs, as the workers see them.
    spec : JobSpec
        The job (model options, batch size, partition size, resources, parts folder...).
    target : str
        The cache file the part files are merged into.
    progress, on_failure, should_stop
        As in :func:`featurize.extraction.loop.stream_extract`; progress advances per partition.

    Returns
    -------
    counts : dict
        ``extracted``, ``cached``, ``duplicates``, ``failed``, ``stopped``, ``partitions``,
        ``lost_partitions`` and ``seconds`` (from submission to the last result: the workers'
        model loading is included, the cluster start and the merge are not).

    Raises
    ------
    DaskJobError
        A task raised (e.g. the weights are missing on a worker). What was computed is merged
        into the target before the error is raised.
    """
    from distributed import KilledWorker, wait

    progress = progress or Progress()
    on_failure = on_failure or (lambda path, reason: None)
    should_stop = should_stop or (lambda: False)
    target = os.path.abspath(target)
    parts_dir = os.path.abspath(spec.parts_dir or target + ".parts")
    leftover = merge_parts(parts_dir, target)
    if leftover:
        logger.warning("merged the part files an earlier, interrupted run left in %s.",
                       parts_dir)
    totals: dict[str, Any] = {"extracted": 0, "cached": 0, "duplicates": 0, "failed": 0,
                              "stopped": False, "partitions": 0, "lost_partitions": 0,
                              "seconds": 0.0}
    partitions = _partitions(paths, spec.partition_size)
    options = spec.extractor_options()
    engines: dict[str, str] = {}  # engine -> a worker that used it
    totals["partitions"] = len(partitions)
    error: BaseException | None = None
    local = False
    if partitions:
        with connect(spec.scheduler) as (client, local):
            t0 = time.monotonic()
            token = uuid.uuid4().hex[:12]
            futures = client.map(
                extract_partition, partitions,
                key=[f"featurize-extract-{i}-{token}" for i in range(len(partitions))],
                pure=False, retries=1, resources=spec.resources,
                options=options, target=target, parts_dir=parts_dir,
                dtype=spec.dtype, batch_size=spec.batch_size, workers=spec.workers,
                retry_failed=spec.retry_failed)
            which = {f.key: i for i, f in enumerate(futures)}
            remaining = set(futures)
            while remaining and error is None:
                if should_stop():
                    totals["stopped"] = True
                    break
                try:
                    done, remaining = wait(remaining, timeout=0.5,
                                           return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                for future in done:
                    part = partitions[which[future.key]]
                    if future.status == "error":
                        exc = future.exception()
                        if isinstance(exc, KilledWorker):
                            totals["lost_partitions"] += 1
                            reason = ("the Dask workers processing it died repeatedly "
                                      "(KilledWorker); run again to retry")
                            for path in part:
                                on_failure(path, reason)
                            totals["failed"] += len(part)
                            progress.advance(len(part))
                            logger.error("partition %d (%s...) was given up: %s",
                                         which[future.key], part[0], exc)
                        else:
                            error = exc
                            break
                    else:
                        result = future.result()
                        engines.setdefault(result["engine"], result["worker"])
                        for name in ("extracted", "cached", "duplicates", "failed"):
                            totals[name] += result[name]
                        for path, reason in result["failures"]:
                            on_failure(path, reason)
                        progress.advance(result["n"])
                    future.release()
            if remaining:
                client.cancel(list(remaining))
            totals["seconds"] = time.monotonic() - t0
    # The local cluster is gone here, so nobody writes the parts any more; on a remote
    # cluster cancelled tasks may still be finishing, so their parts stay (merged next run).
    keep = (totals["stopped"] or error is not None) and not local
    merge_parts(parts_dir, target, remove=not keep)
    if keep:
        logger.warning("kept the part files in %s (tasks may still be running); the next run "
                       "merges them.", parts_dir)
    if len(engines) > 1:
        logger.warning(
            "the workers ran different engines (%s): rows in %s differ by float rounding "
            "depending on the worker. Give every worker the same packages, or pass --engine "
            "NAME.", ", ".join(f"{k} on {v}" for k, v in engines.items()), target)
    if error is not None:
        raise DaskJobError(f"a Dask task failed: {type(error).__name__}: {error}") from error
    return totals
