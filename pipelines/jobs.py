"""Batch extraction jobs: list the inputs, shard them, stream them through a model into a cache.

A job is a reader -> mapper -> writer pipeline (as in clip-retrieval), with per-image status and
an incremental mode (as in img2dataset) that is always on:

* **reader**: :func:`resolve_inputs` turns folders, files, glob patterns and list files (text or
  CSV) into one deterministic list of absolute paths; :func:`select_shard` keeps a stable 1/N of
  it (a hash of each path, so a file's shard does not change when the folder grows);
* **mapper**: :func:`stream_extract` hashes the files chunk by chunk, asks the cache which ones
  are done, and feeds only the missing ones to one ``DataLoader`` whose sampler is that lazy
  plan; every batch goes through :meth:`featurize.extraction.Extractor.forward`;
* **writer**: each batch is written to the :class:`featurize.cache.FeatureCache` (atomically)
  as soon as it is computed, and each unreadable file is recorded there with its reason.

Why not call :meth:`Extractor.extract` on chunks: it allocates an ``(n, d)`` output and
starts a data loader per call. Here no feature ever stays in memory (only the batch in
flight), one pool of loader processes serves the whole job, and progress is reported per
batch. What grows with the number of images is the path list and the cache's key index
(about 100 bytes per image each); decoded images and features do not.

Resume is the default: re-running a job computes only what the cache lacks, and an
interrupted run (Ctrl-C, SIGTERM, SIGKILL) loses at most the batch in flight. The inference
engine is decided once per job, from the size of the whole job
(:meth:`JobSpec.extractor_options`), never per shard, partition or run, so that all rows of a
job (and of its resumed runs) come from one engine. (Engines differ only by float rounding and
are not part of the cache key.)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from featurize.exceptions import FeaturizeError

__all__ = [
    "FailureManifest",
    "JobConfigError",
    "JobSpec",
    "JobSummary",
    "Progress",
    "make_progress",
    "parse_shard",
    "read_list_file",
    "resolve_inputs",
    "run_job",
    "select_shard",
    "shard_cache_path",
    "shard_of",
    "stream_extract",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: featurize.engine.ENGINES (repeated here so that checking a job does not import torch)
ENGINES = ("auto", "eager", "onnxruntime", "torchscript", "compile")
CACHE_DTYPES = ("float32", "float16")
#: poolings a job can cache (``"none"`` returns feature maps, which the cache does not store)
JOB_POOLINGS = ("avg", "max", "avgmax", "gem", "flatten")
_NO_WEIGHTS = ("none", "None", "random")


class JobConfigError(FeaturizeError, ValueError):
    """The job description is invalid (a usage error: ``featurize extract`` exits with 2)."""


# --------------------------------------------------------------------------------------
# Job description
# --------------------------------------------------------------------------------------


@dataclass
class JobSpec:
    """Everything that describes an extraction job (command line and TOML file alike).

    Parameters
    ----------
    sources : list of str
        Folders (recursive), files, or glob patterns.
    lists : list of str
        List files: one path per line, or a CSV/TSV file with a ``column`` of paths. Relative
        paths in them are relative to the list file's folder.
    column : str or None, default=None
        Column of the paths in CSV list files (None: ``"path"``). Giving it makes every list
        file be read as CSV, whatever its extension.
    cache : str
        Target HDF5 cache. With ``shard`` the job writes ``shard_cache_path(cache, shard)``.
    backbone, weights, layers, pooling, device, precision
        The :class:`featurize.extraction.Extractor` options; ``weights`` None or ``"none"`` is
        a random initialisation.
    engine : {"auto", "eager", "onnxruntime", "torchscript", "compile"}, default="auto"
        How the forward pass runs (see :mod:`featurize.engine`); ``"auto"`` is decided once
        for the whole job (see :meth:`extractor_options`).
    batch_size : int, default=32
        Images per forward pass.
    workers : int or None, default=None
        Data-loader worker processes (None: automatic).
    dtype : {"float32", "float16"}, default="float32"
        Storage type of the features in the cache.
    shard : tuple of (int, int) or None, default=None
        ``(i, n)``: process only the inputs whose path hashes to shard ``i`` of ``n``.
    failures : str or None, default=None
        CSV manifest of the files that could not be featurized (``path,reason``).
    retry_failed : bool, default=False
        Re-read files the cache recorded as failed (by default they are reported again).
    chunk_size : int, default=1024
        Files hashed and looked up in the cache at a time.
    scheduler : str or None, default=None
        Run on Dask: ``"local"``, ``"local:N"``, a scheduler address, or a scheduler file.
    partition_size : int, default=128
        Images per Dask task.
    resources : dict of str to float or None, default=None
        Dask worker resources each task needs, e.g. ``{"GPU": 1}``.
    parts_dir : str or None, default=None
        Where Dask workers write their part files (default: ``<cache>.parts``).
    """

    sources: list[str] = field(default_factory=list)
    lists: list[str] = field(default_factory=list)
    column: str | None = None
    cache: str | None = None
    backbone: str = "efficientnet_lite0"
    weights: str | None = "DEFAULT"
    layers: list[str] | None = None
    pooling: str = "avg"
    device: str = "auto"
    precision: str = "auto"
    engine: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    dtype: str = "float32"
    shard: tuple[int, int] | None = None
    failures: str | None = None
    retry_failed: bool = False
    chunk_size: int = 1024
    scheduler: str | None = None
    partition_size: int = 128
    resources: dict[str, float] | None = None
    parts_dir: str | None = None

    def validate(self) -> None:
        """Check the values that can be checked without loading anything.

        Raises
        ------
        JobConfigError
            With a message naming the option, what was expected and what came.
        """
        if not self.sources and not self.lists:
            raise JobConfigError("no inputs: give SOURCES (folders, files, globs) or --list FILE.")
        if not self.cache:
            raise JobConfigError("no cache file: give --cache FILE (the HDF5 file to fill).")
        if self.pooling not in JOB_POOLINGS:
            raise JobConfigError(f"--pooling must be one of {', '.join(JOB_POOLINGS)}; got "
                                 f"{self.pooling!r} ('none' returns feature maps, which are "
                                 "not cached).")
        if self.precision not in PRECISIONS:
            raise JobConfigError(f"--precision must be one of {', '.join(PRECISIONS)}; got "
                                 f"{self.precision!r}.")
        if self.engine not in ENGINES:
            raise JobConfigError(f"--engine must be one of {', '.join(ENGINES)}; got "
                                 f"{self.engine!r}.")
        if self.dtype not in CACHE_DTYPES:
            raise JobConfigError(f"--dtype must be one of {', '.join(CACHE_DTYPES)}; got "
                                 f"{self.dtype!r}.")
        for name in ("batch_size", "chunk_size", "partition_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise JobConfigError(f"--{name.replace('_', '-')} must be a positive integer; "
                                     f"got {value!r}.")
        if self.workers is not None and (isinstance(self.workers, bool)
                                         or not isinstance(self.workers, int) or self.workers < 0):
            raise JobConfigError(f"--workers must be an integer >= 0; got {self.workers!r}.")
        if self.shard is not None:
            i, n = self.shard
            if not 0 <= i < n:
                raise JobConfigError(f"--shard I/N needs 0 <= I < N; got {i}/{n}.")
        if self.layers is not None and not self.layers:
            raise JobConfigError("--layer names no layer; leave it out for the default embedding.")
        for name, path in (("--cache", self.target), ("--failures", self.failures)):
            folder = os.path.dirname(os.path.abspath(path)) if path else None
            if folder and not os.path.isdir(folder):
                raise JobConfigError(f"the folder of {name} {path!r} does not exist; create "
                                     "it first.")
        if self.scheduler is not None:
            from pipelines.distributed import parse_scheduler

            parse_scheduler(self.scheduler)
        for name, amount in (self.resources or {}).items():
            if not name or not isinstance(amount, (int, float)) or amount <= 0:
                raise JobConfigError(f"--resources expects NAME=AMOUNT with a positive amount; "
                                     f"got {name}={amount!r}.")

    @property
    def target(self) -> str:
        """The cache file this job writes (the shard's own file with ``shard``)."""
        if self.cache is None:
            raise JobConfigError("no cache file: give --cache FILE.")
        return shard_cache_path(self.cache, self.shard) if self.shard else self.cache

    def extractor_options(self, n_inputs: int) -> dict[str, Any]:
        """Keyword arguments of :class:`featurize.extraction.Extractor` (JSON-able).

        Every run, shard and Dask worker of a job uses the same engine, so a resumed or sharded
        job is bitwise equal to an uninterrupted one (engines differ by float rounding only, and
        are not part of the cache key). ``engine="auto"`` is therefore decided from the number
        of inputs of the whole job (before sharding), as :meth:`Extractor.extract` decides it
        for a call with that many images: ``"eager"`` below
        ``featurize.engine.AUTO_MIN_IMAGES``, else ``"auto"``, which
        :meth:`Extractor.prepare_engine` resolves to the fastest engine installed.
        ``extract_features(paths, cache=...)`` on the same images then finds the job's rows.

        Parameters
        ----------
        n_inputs : int
            Inputs of the whole job.
        """
        from featurize.engine import AUTO_MIN_IMAGES

        engine = self.engine
        if engine == "auto" and n_inputs < AUTO_MIN_IMAGES:
            engine = "eager"
        return {"backbone": self.backbone, "weights": parse_weights(self.weights),
                "layer": list(self.layers) if self.layers else None, "pooling": self.pooling,
                "device": self.device, "precision": self.precision, "engine": engine}


def parse_weights(text: str | None) -> str | None:
    """``"none"`` (or ``"None"``, ``"random"``) means a random initialisation: None."""
    return None if text is None or text in _NO_WEIGHTS else text


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (shard I of N, counted from 0).

    Raises
    ------
    JobConfigError
        For anything but two integers with ``0 <= I < N``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise JobConfigError(f"--shard expects I/N, e.g. 0/4 (shard 0 of 4); got {text!r}.")
    i, n = int(match.group(1)), int(match.group(2))
    if not 0 <= i < n:
        raise JobConfigError(f"--shard I/N needs 0 <= I < N (shards are counted from 0); got "
                             f"{text!r}.")
    return i, n


def shard_cache_path(cache: str | os.PathLike, shard: tuple[int, int]) -> str:
    """``feats.h5`` with shard ``(0, 4)`` -> ``feats.shard-0-of-4.h5``."""
    stem, ext = os.path.splitext(os.fspath(cache))
    return f"{stem}.shard-{shard[0]}-of-{shard[1]}{ext}"


def shard_of(path: str, n_shards: int) -> int:
    """The shard (0 to ``n_shards - 1``) of an input path.

    A blake2b hash of the absolute path, so it is the same in every process, on every run, and
    does not depend on the other files: adding files never moves a file to another shard.
    """
    digest = hashlib.blake2b(os.fsencode(path), digest_size=8, person=b"featurize.shard")
    return int.from_bytes(digest.digest(), "big") % n_shards


def select_shard(paths: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """The paths that belong to shard ``shard = (i, n)``, in their original order."""
    i, n = shard
    return [p for p in paths if shard_of(p, n) == i]


# --------------------------------------------------------------------------------------
# Reader: inputs
# --------------------------------------------------------------------------------------


def read_list_file(path: str, column: str | None = None) -> list[str]:
    """Read the paths listed in a text or CSV file.

    Parameters
    ----------
    path : str
        A text file with one path per line (blank lines and lines starting with ``#`` are
        skipped; surrounding whitespace is stripped), or a CSV (``.csv``) / TSV (``.tsv``)
        file with a header row. ``"-"`` reads standard input.
    column : str or None, default=None
        The CSV column holding the paths (None: ``"path"``). Giving it reads the file as
        CSV whatever its extension.

    Returns
    -------
    paths : list of str
        Absolute paths. Relative entries are taken relative to the list file's folder (the
        current folder for ``"-"``), so a list file can travel with its images. Entries are
        literal paths: no glob expansion, no folder listing.

    Raises
    ------
    JobConfigError
        The file does not exist, or the CSV has no such column.
    """
    base = os.getcwd() if path == "-" else os.path.dirname(os.path.abspath(path))
    lower = path.lower()
    as_csv = column is not None or lower.endswith((".csv", ".tsv"))
    try:
        handle = (contextlib.nullcontext(sys.stdin) if path == "-" else
                  open(path, encoding="utf-8", errors="surrogateescape", newline=""))
    except FileNotFoundError:
        raise JobConfigError(f"list file {path!r} does not exist.") from None
    except OSError as exc:
        raise JobConfigError(f"cannot read list file {path!r}: {exc}.") from exc
    entries: list[str] = []
    with handle as fh:
        if as_csv:
            reader = csv.DictReader(fh, delimiter="\t" if lower.endswith(".tsv") else ",")
            name = column or "path"
            if not reader.fieldnames or name not in reader.fieldnames:
                raise JobConfigError(
                    f"list file {path!r} has no column {name!r}; its columns are "
                    f"{reader.fieldnames or []}. Pick one with --column.")
            entries = [row[name].strip() for row in reader if (row.get(name) or "").strip()]
        else:
            for line in fh:
                text = line.strip()
                if text and not text.startswith("#"):
                    entries.append(text)
    return [os.path.abspath(os.path.join(base, os.path.expanduser(e))) for e in entries]


def resolve_inputs(sources: Iterable[str] = (), lists: Iterable[str] = (),
                   column: str | None = None) -> list[str]:
    """The job's input files, in a deterministic order, each once.

    Parameters
    ----------
    sources : iterable of str
        Folders (listed recursively, sorted, image extensions only, hidden files skipped), files
        (kept whatever their extension) and glob patterns (``**`` crosses folders); see
        :func:`featurize.folder.list_images`.
    lists : iterable of str
        List files (see :func:`read_list_file`).
    column : str or None, default=None
        CSV column of the paths in the list files.

    Returns
    -------
    paths : list of str
        Absolute paths: the sources' files in the order given, then the list files' entries;
        a path reached twice is kept at its first place.

    Raises
    ------
    JobConfigError
        A source does not exist, or a glob pattern matches nothing.
    """
    from featurize.folder import list_images

    out: dict[str, None] = {}
    for source in sources:
        try:
            found = list_images(source)
        except FileNotFoundError as exc:
            raise JobConfigError(f"source {source!r}: {exc.strerror or exc}.") from None
        if not found:
            logger.warning("source %s holds no image files.", source)
        out.update((os.path.abspath(p), None) for p in found)
    for list_file in lists:
        out.update((p, None) for p in read_list_file(list_file, column))
    return list(out)


# --------------------------------------------------------------------------------------
# Progress and failures
# --------------------------------------------------------------------------------------


class Progress:
    """Receives the progress of a job; this base class ignores it.

    ``start(total)`` once, ``advance(n)`` for every ``n`` inputs dealt with (extracted, served
    from the cache, or failed), ``close()`` at the end.
    """

    def start(self, total: int) -> None:
        """The job has ``total`` inputs."""

    def advance(self, n: int) -> None:
        """``n`` more inputs were dealt with."""

    def close(self) -> None:
        """The job ended (or stopped)."""


class _BarProgress(Progress):
    """A tqdm bar with images/s and ETA (for terminals)."""

    def __init__(self, desc: str = "extract") -> None:
        self.desc = desc
        self._bar = None

    def start(self, total: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, unit="img", desc=self.desc, smoothing=0.05,
                         dynamic_ncols=True)

    def advance(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _LogProgress(Progress):
    """One INFO log line every ``interval`` seconds (for logs and batch schedulers)."""

    def __init__(self, interval: float = 30.0, desc: str = "extract") -> None:
        self.interval = interval
        self.desc = desc
        self.total = self.done = 0
        self._t0 = self._last = 0.0

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self._t0 = self._last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._log(now)

    def _log(self, now: float) -> None:
        elapsed = max(now - self._t0, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        logger.info("%s: %s/%s images (%.1f%%), %.1f img/s, elapsed %s, ETA %s", self.desc,
                    f"{self.done:,}", f"{self.total:,}", 100 * self.done / max(self.total, 1),
                    rate, _duration(elapsed), _duration(left))

    def close(self) -> None:
        if self.total:
            self._log(time.monotonic())


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def make_progress(mode: str = "auto", *, interval: float = 30.0) -> Progress:
    """A progress reporter.

    Parameters
    ----------
    mode : {"auto", "bar", "log", "none"}, default="auto"
        ``"auto"``: a tqdm bar when standard error is a terminal, else periodic log lines.
    interval : float, default=30.0
        Seconds between two log lines (``"log"``).
    """
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "log"
    if mode == "bar":
        return _BarProgress()
    if mode == "log":
        return _LogProgress(interval)
    if mode == "none":
        return Progress()
    raise JobConfigError(f"progress must be one of auto, bar, log, none; got {mode!r}.")


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
        lines.append(f"  elapsed {_duration(self.elapsed_s)}; {self.images_per_s:.1f} images/s"
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


# --------------------------------------------------------------------------------------
# Mapper + writer: the streaming core
# --------------------------------------------------------------------------------------


@dataclass
class _Counts:
    extracted: int = 0
    cached: int = 0
    duplicates: int = 0
    failed: int = 0


def _unreadable_reason(path: str, max_pixels: int) -> str:
    """Why a file that could not even be hashed cannot be read (load_image's wording)."""
    from featurize.decoding import load_image
    from featurize.exceptions import ImageDecodeError

    try:
        load_image(path, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return exc.reason
    return "could not be read"


def _hash(path: str) -> str | None:
    from featurize.cache import content_key

    try:
        return content_key(path)
    except OSError:
        return None


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process.

    A terminal sends SIGINT to the whole process group and Slurm sends SIGTERM to every
    process of the job step; the main process stops after its batch and then shuts the workers
    down, which it could not do cleanly if they had died first.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Stream:
    """State of one :func:`stream_extract` call, shared by the plan and the consumer loop."""

    def __init__(self, paths, extractor, cache, read_caches, retry_failed, chunk_size,
                 progress, on_failure, should_stop):
        self.paths = paths
        self.extractor = extractor
        self.cache = cache
        self.lookup_caches = [cache, *read_caches]
        self.retry_failed = retry_failed
        self.chunk_size = chunk_size
        self.progress = progress
        self.on_failure = on_failure
        self.should_stop = should_stop
        self.configs = {name: extractor.layer_config(name) for name in extractor.layers}
        self.counts = _Counts()
        self.pending: dict[str, list[int]] = {}  # key in flight -> later rows with that content
        self.row_key: dict[int, str] = {}  # rows in flight -> key
        self.failed_keys: dict[str, str] = {}  # keys that failed in this run -> reason
        # Keys written since the last cache lookup: a chunk's lookup cannot see rows written
        # while its own rows are planned. Reset at every lookup, so it stays small.
        self.written_keys: set[str] = set()
        self.stopped = False

    # -- the plan: rows to compute, decided a chunk at a time (the DataLoader's sampler) --

    def __iter__(self) -> Iterator[int]:
        n = len(self.paths)
        for start in range(0, n, self.chunk_size):
            if self.should_stop():
                self.stopped = True
                return
            rows = range(start, min(n, start + self.chunk_size))
            yield from self._plan_chunk(rows)

    def _plan_chunk(self, rows: range) -> Iterator[int]:
        import numpy as np

        with ThreadPoolExecutor(max_workers=min(8, len(rows))) as pool:
            keys = list(pool.map(_hash, (self.paths[r] for r in rows)))
        done = 0
        keyed_rows, keyed = [], []
        for row, key in zip(rows, keys):
            if key is None:
                self._fail(row, _unreadable_reason(self.paths[row], self.extractor.max_pixels))
                done += 1
            else:
                keyed_rows.append(row)
                keyed.append(key)
        have = np.ones(len(keyed), dtype=bool)
        known: dict[str, tuple[str, str]] = {}
        self.written_keys.clear()  # what was written before this lookup, the lookup sees
        for config in self.configs.values():
            found = np.zeros(len(keyed), dtype=bool)
            for cache in self.lookup_caches:
                if keyed:
                    found |= np.asarray(cache.lookup(config, keyed)[0], dtype=bool)
            have &= found
        if not self.retry_failed:
            first = self.configs[self.extractor.layers[0]]
            for cache in self.lookup_caches:
                known.update(cache.failures(first))
        for row, key, hit in zip(keyed_rows, keyed, have):
            if hit:
                self.counts.cached += 1
                done += 1
            elif key in known:
                self._fail(row, known[key][1])
                done += 1
            elif key in self.failed_keys:
                self._fail(row, self.failed_keys[key])
                done += 1
            elif key in self.written_keys:  # a copy of an image written since the lookup
                self.counts.duplicates += 1
                done += 1
            elif key in self.pending:
                self.pending[key].append(row)  # settled with the row it duplicates
            else:
                if done:
                    self.progress.advance(done)
                    done = 0
                self.pending[key] = []
                self.row_key[row] = key
                yield row
        self.progress.advance(done)

    # -- the consumer: write each computed batch --

    def _fail(self, row: int, reason: str) -> None:
        self.counts.failed += 1
        self.on_failure(self.paths[row], reason)

    def _settle(self, key: str, reason: str | None) -> int:
        later = self.pending.pop(key)
        for row in later:
            if reason is None:
                self.counts.duplicates += 1
            else:
                self._fail(row, reason)
        return len(later)

    def consume(self, indices, batch, bad) -> None:
        n_done = 0
        if batch is not None:
            feats = self.extractor.forward(batch)
            rows = indices.tolist()
            keys = [self.row_key.pop(r) for r in rows]
            names = [self.paths[r] for r in rows]
            for name, config in self.configs.items():
                self.cache.write(config, keys, feats[name], names)
            self.written_keys.update(keys)
            self.counts.extracted += len(rows)
            n_done += len(rows) + sum(self._settle(k, None) for k in keys)
        if bad:
            keys = [self.row_key.pop(r) for r, _ in bad]
            reasons = [why for _, why in bad]
            for config in self.configs.values():
                self.cache.record_failures(config, keys, [self.paths[r] for r, _ in bad],
                                           reasons)
            for (row, reason), key in zip(bad, keys):
                self._fail(row, reason)
                self.failed_keys[key] = reason
                n_done += 1 + self._settle(key, reason)
        self.progress.advance(n_done)


def _row_dataset(paths: Sequence[str], extractor):
    from featurize.data import ImageDataset

    dataset = ImageDataset(paths, (), extractor.preprocessing, extractor.max_pixels,
                           extractor.draft)
    dataset.indices = range(len(paths))  # rows are addressed directly; O(1) memory
    return dataset


def stream_extract(paths: Sequence[str], extractor, cache, *, read_caches: Sequence = (),
                   batch_size: int = 32, num_workers: int = 0, retry_failed: bool = False,
                   chunk_size: int = 1024, progress: Progress | None = None,
                   on_failure: Callable[[str, str], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Featurize files into a cache, computing only what it lacks, holding no features.

    Parameters
    ----------
    paths : sequence of str
        Image files.
    extractor : featurize.extraction.Extractor
        The loaded model.
    cache : featurize.cache.FeatureCache
        Where features and failures are written (one atomic write per batch).
    read_caches : sequence of FeatureCache, default=()
        Further caches that count as done (only read; used by Dask workers, which read the
        target and write their own part file).
    batch_size : int, default=32
        Images per forward pass.
    num_workers : int, default=0
        Data-loader worker processes decoding the images.
    retry_failed : bool, default=False
        Re-read files recorded as failed in the caches.
    chunk_size : int, default=1024
        Files hashed and looked up per cache query.
    progress : Progress or None, default=None
        Receives ``advance(n)`` as inputs are dealt with.
    on_failure : callable or None, default=None
        Called as ``on_failure(path, reason)`` for every input that cannot be featurized.
    should_stop : callable or None, default=None
        Polled after every batch; when it returns True the job stops after writing that batch.

    Returns
    -------
    counts : dict
        ``extracted``, ``cached``, ``duplicates``, ``failed``, ``stopped`` (bool) and
        ``seconds`` (of this call).
    """
    from torch.utils.data import DataLoader

    from featurize.data import collate

    t0 = time.monotonic()
    stream = _Stream(list(paths) if not isinstance(paths, list) else paths, extractor, cache,
                     list(read_caches), retry_failed, chunk_size, progress or Progress(),
                     on_failure or (lambda path, reason: None), should_stop or (lambda: False))
    if stream.paths:
        loader = DataLoader(
            _row_dataset(stream.paths, extractor), batch_size=batch_size, sampler=stream,
            num_workers=num_workers, collate_fn=collate,
            pin_memory=extractor.device.type == "cuda",
            prefetch_factor=2 if num_workers > 0 else None,
            worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
        )
        for indices, batch, bad in loader:
            stream.consume(indices, batch, bad)
            if stream.should_stop():
                stream.stopped = True
                break
    counts = asdict(stream.counts)
    counts["stopped"] = stream.stopped
    counts["seconds"] = time.monotonic() - t0
    return counts


# --------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------


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

                counts = run_dask_job(paths, spec, target, n_inputs=n_inputs, progress=progress,
                                      on_failure=manifest.add, should_stop=should_stop)
            else:
                counts = _run_local(paths, spec, target, n_inputs, progress, manifest.add,
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
                _duration(summary.elapsed_s))
    return summary


def _run_local(paths, spec: JobSpec, target: str, n_inputs: int, progress: Progress,
               on_failure, should_stop) -> dict[str, Any]:
    from featurize.cache import FeatureCache
    from featurize.extraction import Extractor, default_num_workers

    extractor = Extractor(**spec.extractor_options(n_inputs))
    engine = extractor.prepare_engine(None)  # before the configs (the engine is in the key)
    logger.info("extract: %s on %s, %s engine", spec.backbone, extractor.device, engine)
    workers = spec.workers
    if workers is None:
        workers = default_num_workers(len(paths), spec.batch_size, extractor.device)
    cache = FeatureCache(target, dtype=spec.dtype)
    return stream_extract(paths, extractor, cache, batch_size=spec.batch_size,
                          num_workers=workers, retry_failed=spec.retry_failed,
                          chunk_size=spec.chunk_size, progress=progress,
                          on_failure=on_failure, should_stop=should_stop)
