"""Batch extraction jobs: list the inputs, shard them, stream them through a model into a cache.

A job is a reader -> mapper -> writer pipeline (as in clip-retrieval), with per-image status and
an incremental mode (as in img2dataset) that is always on:

* **reader** (:mod:`pipelines.sources`): folders, files, glob patterns and list files become one
  deterministic list of absolute paths; :func:`pipelines.spec.select_shard` keeps a stable 1/N
  of it (a hash of each path, so a file's shard does not change when the folder grows);
* **mapper + writer**: :func:`featurize.extraction.loop.stream_extract`, the library's one
  extraction loop with a sink that holds no features: it hashes the files chunk by chunk, asks
  the cache which ones are done, computes only the missing ones (decoded in a thread pool), and
  writes every batch to the cache (atomically) as soon as it is computed, with each unreadable
  file and its reason.

Resume is the default: re-running a job computes only what the cache lacks, and an
interrupted run (Ctrl-C, SIGTERM, SIGKILL) loses at most the batch in flight. The inference
engine depends on the options and the machine only (never on the size of a job, shard or
partition), so resumed, sharded and Dask runs give the rows an uninterrupted run gives.
"""

from __future__ import annotations

import csv
import logging
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from featurize.progress import Progress, duration, make_progress
from pipelines.sources import resolve_inputs
from pipelines.spec import JobConfigError, JobSpec, select_shard

__all__ = ["FailureManifest", "JobSummary", "peak_rss_bytes", "run_job"]

logger = logging.getLogger(__name__)


class FailureManifest:
    """CSV file ``path,reason`` of the inputs that could not be featurized, written as they come.

    Parameters
    ----------
    path : str or None
        The CSV file (replaced); None only counts.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.count = 0
        self.examples: list[tuple[str, str]] = []  # the first few, for messages
        self._fh = None
        self._writer = None
        if path is not None:
            try:
                self._fh = open(path, "w", encoding="utf-8", errors="surrogateescape",
                                newline="")
            except OSError as exc:
                raise JobConfigError(f"cannot write the failures file {path!r}: {exc}.") from exc
            self._writer = csv.writer(self._fh)
            self._writer.writerow(["path", "reason"])
            self._fh.flush()

    def add(self, path: str, reason: str) -> None:
        """Record one failed input."""
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append((path, reason))
        if self._writer is not None:
            self._writer.writerow([path, reason])
            self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> FailureManifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class JobSummary:
    """What a job did.

    Attributes
    ----------
    total : int
        Inputs of the job (of the shard, with ``--shard``).
    extracted : int
        Images run through the network in this run.
    cached : int
        Images whose features were already in the cache.
    duplicates : int
        Inputs with the same content as an earlier input of the same chunk of ``chunk_size``
        files (computed once). A copy of an image written by an earlier chunk is found by its
        chunk's cache lookup and counts as ``cached``: telling the two apart would need a set
        of every key of the run.
    failed : int
        Inputs that could not be featurized (including failures recorded by earlier runs).
    elapsed_s : float
        Wall-clock seconds of the whole job (listing, model loading, merging included).
    extract_s : float
        Seconds of the extraction loop itself (the model loaded).
    interrupted : bool
        The job was stopped before the end (Ctrl-C, SIGTERM); re-run it to finish.
    cache, failures_file, shard, scheduler : str or None
        What the job wrote and how it ran.
    peak_rss_bytes : int or None
        Peak resident memory of the job's own process.
    first_failures : list of (str, str)
        The first five ``(path, reason)`` failures (all of them are in the manifest).
    """

    total: int = 0
    extracted: int = 0
    cached: int = 0
    duplicates: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    extract_s: float = 0.0
    interrupted: bool = False
    cache: str | None = None
    failures_file: str | None = None
    shard: str | None = None
    scheduler: str | None = None
    peak_rss_bytes: int | None = None
    first_failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        """Throughput of new extraction: ``extracted / extract_s``."""
        return self.extracted / self.extract_s if self.extract_s > 0 else 0.0

    @property
    def missing(self) -> int:
        """Inputs not dealt with (non-zero only after an interruption)."""
        return max(0, self.total - self.extracted - self.cached - self.duplicates - self.failed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (what ``featurize extract --json`` prints)."""
        out = asdict(self)
        out["images_per_s"] = round(self.images_per_s, 3)
        out["missing"] = self.missing
        out["elapsed_s"] = round(self.elapsed_s, 3)
        out["extract_s"] = round(self.extract_s, 3)
        return out

    def text(self) -> str:
        """Human-readable closing summary."""
        head = "interrupted" if self.interrupted else "done"
        lines = [
            f"{head}: {self.total:,} images -> {self.cache}"
            + (f" (shard {self.shard})" if self.shard else "")
            + (f" on Dask {self.scheduler}" if self.scheduler else ""),
            f"  newly extracted  {self.extracted:>10,}",
            f"  from cache       {self.cached:>10,}",
        ]
        if self.duplicates:
            lines.append(f"  duplicates       {self.duplicates:>10,}  (same content as another"
                         " input)")
        lines.append(f"  failed           {self.failed:>10,}"
                     + (f"  (listed in {self.failures_file})" if self.failed
                        and self.failures_file else ""))
        if self.missing:
            lines.append(f"  not done yet     {self.missing:>10,}  (run the same command again"
                         " to resume)")
        lines.append(f"  elapsed {duration(self.elapsed_s)}; {self.images_per_s:.1f} images/s"
                     " extracted (model loading excluded)")
        return "\n".join(lines)


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far (None where unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def run_job(spec: JobSpec, *, progress: Progress | str = "auto",
            stop: threading.Event | None = None) -> JobSummary:
    """Run an extraction job: single process, or on Dask when ``spec.scheduler`` is set.

    Parameters
    ----------
    spec : JobSpec
        The job.
    progress : Progress or {"auto", "bar", "log", "none"}, default="auto"
        Progress reporting (see :func:`make_progress`).
    stop : threading.Event or None, default=None
        Set it (e.g. from a signal handler) to stop after the batch being written.

    Returns
    -------
    JobSummary

    Raises
    ------
    JobConfigError
        Invalid options or inputs (nothing was computed).
    """
    spec.validate()
    t0 = time.monotonic()
    paths = resolve_inputs(spec.sources, spec.lists, spec.column)
    if not paths:
        raise JobConfigError("the sources hold no image files (folders are searched for "
                             "image extensions; name files explicitly to include others).")
    n_inputs = len(paths)
    if spec.shard is not None:
        paths = select_shard(paths, spec.shard)
    target = spec.target
    logger.info("extract: %s images%s -> %s", f"{len(paths):,}",
                f" (shard {spec.shard[0]}/{spec.shard[1]} of {n_inputs:,})" if spec.shard
                else "", target)
    if isinstance(progress, str):
        progress = make_progress(progress)
    should_stop = stop.is_set if stop is not None else (lambda: False)
    summary = JobSummary(total=len(paths), cache=target, failures_file=spec.failures,
                         shard=f"{spec.shard[0]}/{spec.shard[1]}" if spec.shard else None,
                         scheduler=spec.scheduler)
    with FailureManifest(spec.failures) as manifest:
        progress.start(len(paths))
        try:
            if spec.scheduler:
                from pipelines.distributed import run_dask_job

                counts = run_dask_job(paths, spec, target, progress=progress,
                                      on_failure=manifest.add, should_stop=should_stop)
            else:
                counts = _run_local(paths, spec, target, progress, manifest.add,
                                    should_stop)
        finally:
            progress.close()
    for name in ("extracted", "cached", "duplicates", "failed"):
        setattr(summary, name, counts[name])
    summary.interrupted = bool(counts["stopped"])
    summary.extract_s = counts["seconds"]
    summary.first_failures = list(manifest.examples)
    summary.elapsed_s = time.monotonic() - t0
    summary.peak_rss_bytes = peak_rss_bytes()
    logger.info("extract: %s; %s images: %d extracted, %d from cache, %d duplicates, %d failed"
                " in %s", "stopped" if summary.interrupted else "done", f"{summary.total:,}",
                summary.extracted, summary.cached, summary.duplicates, summary.failed,
                duration(summary.elapsed_s))
    return summary


def _run_local(paths, spec: JobSpec, target: str, progress: Progress,
               on_failure, should_stop) -> dict[str, Any]:
    from featurize.extraction import Extractor
    from featurize.extraction.loop import stream_extract
    from featurize.storage.cache import FeatureCache

    extractor = Extractor(**spec.extractor_options())
    engine = extractor.prepare_engine()
    logger.info("extract: %s on %s, %s engine", spec.backbone, extractor.device, engine)
    cache = FeatureCache(target, dtype=spec.dtype, single_writer=spec.single_writer)
    return stream_extract(paths, extractor, cache, batch_size=spec.batch_size,
                          num_workers=spec.workers, retry_failed=spec.retry_failed,
                          chunk_size=spec.chunk_size, progress=progress,
                          on_failure=on_failure, should_stop=should_stop)
