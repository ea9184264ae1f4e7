"""What an extraction job is: :class:`JobSpec` (command line and TOML alike) and its shards.

Options and their choices come from :mod:`featurize.options`; every invalid value raises
:class:`~featurize.exceptions.ConfigError` (``featurize extract`` exits with 2).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from featurize.exceptions import ConfigError
from featurize.options import check_extraction_options, parse_weights

__all__ = ["JobConfigError", "JobSpec", "parse_scheduler", "parse_shard", "parse_weights",
           "select_shard", "shard_cache_path", "shard_of"]

#: The job description is invalid (a usage error): the one option error of featurize.
JobConfigError = ConfigError


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
    engine : str, default="auto"
        How the forward pass runs, one of :data:`featurize.options.ENGINES` (see
        :mod:`featurize.networks.runtimes`); ``"auto"`` is decided once
        for the whole job (see :meth:`extractor_options`).
    batch_size : int, default=32
        Images per forward pass.
    workers : int or None, default=None
        Threads decoding images (None: one per core, at most 8).
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
    single_writer : bool, default=False
        No other process writes the cache: allowed on a file system without file locks.
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
    single_writer: bool = False

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
        check_extraction_options(owner="featurize extract", cached=True, pooling=self.pooling,
                                 precision=self.precision, engine=self.engine,
                                 dtype=self.dtype, layer=self.layers)
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
        for name, path in (("--cache", self.target), ("--failures", self.failures)):
            folder = os.path.dirname(os.path.abspath(path)) if path else None
            if folder and not os.path.isdir(folder):
                raise JobConfigError(f"the folder of {name} {path!r} does not exist; create "
                                     "it first.")
        if self.scheduler is not None:
            parse_scheduler(self.scheduler)
            if importlib.util.find_spec("distributed") is None:
                raise JobConfigError("--scheduler runs the job on Dask, which is not installed: "
                                     "pip install 'featurize[dask]'.")
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

    def extractor_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`featurize.extraction.Extractor` (JSON-able).

        The same for every run, shard and Dask worker of a job, and for the function with the
        same options, so all of them read and write the same cache rows.
        """
        return {"backbone": self.backbone, "weights": parse_weights(self.weights),
                "layer": list(self.layers) if self.layers else None, "pooling": self.pooling,
                "device": self.device, "precision": self.precision, "engine": self.engine}


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


def parse_scheduler(text: str) -> tuple[str, Any]:
    """Read ``--scheduler``.

    Returns
    -------
    kind, value : tuple
        ``("local", n_workers)`` for ``local`` / ``local:N`` (N defaults to the CPU count),
        ``("file", path)`` for an existing scheduler file (JSON, as written by
        ``dask scheduler --scheduler-file``), else ``("address", text)`` (``tcp://host:8786``).

    Raises
    ------
    JobConfigError
        For ``local:`` followed by anything but a positive integer.
    """
    text = str(text).strip()
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2]
        if not count:
            return "local", len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
                else (os.cpu_count() or 1)
        if not count.isdigit() or int(count) < 1:
            raise JobConfigError(f"--scheduler local:N needs a positive number of worker "
                                 f"processes; got {text!r}.")
        return "local", int(count)
    if text.endswith(".json") and os.path.isfile(text):
        return "file", text
    if not text:
        raise JobConfigError("--scheduler is empty; give local[:N] or tcp://HOST:PORT.")
    return "address", text
