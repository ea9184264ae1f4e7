"""The one extraction loop: plan -> look up -> compute what is missing -> check -> write -> sink.

Every path that turns images into features runs :func:`run_extraction`:
:meth:`featurize.extraction.extractor.Extractor.extract` (hence :func:`featurize.extract_features`
and :class:`featurize.CNNFeaturizer`) with an :class:`ArraySink` that fills an ``(n, d)`` array,
and ``featurize extract`` and each Dask partition (:func:`stream_extract`) with a
:class:`CountingSink` that holds no features at all.

* **plan** (a chunk of inputs at a time): content keys
  (:func:`featurize.storage.keys.file_content_key`),
  then the cache is asked which rows exist and which inputs are known to be bad; identical
  contents are computed once; with every row in the cache nothing is decoded at all;
* **compute**: the missing rows are decoded in a bounded thread pool
  (:func:`featurize.images.data.decode_in_threads`: each file read once, its bytes hashed and the
  same bytes decoded) and batched through :meth:`Extractor.forward`;
* **check**: a row with NaN or inf is a failure of its image, never a row;
* **write**: each batch goes to the cache (atomically) under the key of the bytes decoded;
  content failures are recorded there too; transient ones (I/O errors, memory, a file
  changed while read) are reported but never remembered;
* **sink**: receives rows served from the cache, computed rows, copies and failures.

Several models can share one pass (:func:`run_extractions`, one :class:`Task` each, as
``featurize train`` does with its three backbones): each image is read and decoded once, then
resized for each model that lacks its row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from featurize.exceptions import ImageDecodeError
from featurize.images.data import Decoder, collate, decode_in_threads, default_decode_threads
from featurize.images.decoding import describe_source, load_image
from featurize.progress import Progress
from featurize.storage.keys import file_content_key, remembered_content_key

__all__ = ["ArraySink", "CountingSink", "Task", "run_extraction", "run_extractions",
           "stream_extract"]

NON_FINITE = ("the network produced non-finite features (NaN or inf); try precision='fp32' or"
              " check the weights")
CHANGED = "the file changed while it was being read; run again"


class CountingSink:
    """Counts what happened; holds no features (a streaming job's sink).

    Attributes
    ----------
    extracted, cached, duplicates, n_failed : int
    on_failure : callable
        Called as ``on_failure(name, reason)`` for every failed input.
    """

    needs_features = False

    def __init__(self, on_failure: Callable[[str, str], None] | None = None, names=None):
        self.extracted = self.cached = self.duplicates = self.n_failed = 0
        self.on_failure = on_failure or (lambda name, reason: None)
        self.names = names

    def served(self, rows, features) -> None:
        self.cached += len(rows)

    def computed(self, rows, features) -> None:
        self.extracted += len(rows)

    def copied(self, row: int, source_row: int | None) -> None:
        self.duplicates += 1

    def failed(self, row: int, reason: str) -> None:
        self.n_failed += 1
        self.on_failure(self.names[row], reason)


class ArraySink(CountingSink):
    """Fills an array with one row per input, in input order (NaN rows for failures).

    Parameters
    ----------
    out : ndarray
        ``(n, d)`` (or ``(n, C, H, W)`` for ``pooling="none"``), filled in place.
    columns : dict of str to slice
        Where each layer's features go in a row (None for maps).
    names : list of str
        Printable names of the inputs.
    on_error : {"raise", "nan"}
        ``"raise"``: the first failure raises :class:`ImageDecodeError`.
    """

    needs_features = True

    def __init__(self, out: np.ndarray, columns: dict | None, names, on_error: str):
        super().__init__(names=names)
        self.out = out
        self.columns = columns
        self.on_error = on_error
        self.failures: dict[int, str] = {}

    def _fill(self, rows, features) -> None:
        if not len(rows):
            return
        rows = np.asarray(rows, dtype=np.int64)
        if self.columns is None:
            (self.out[rows],) = features.values()
        else:
            for name, cols in self.columns.items():
                self.out[rows, cols] = features[name]

    def served(self, rows, features) -> None:
        super().served(rows, features)
        self._fill(rows, features)

    def computed(self, rows, features) -> None:
        super().computed(rows, features)
        self._fill(rows, features)

    def copied(self, row: int, source_row: int | None) -> None:
        super().copied(row, source_row)
        self.out[row] = self.out[source_row]

    def failed(self, row: int, reason: str) -> None:
        super().failed(row, reason)
        self.failures[row] = reason
        self.out[row] = np.nan
        if self.on_error == "raise":
            raise ImageDecodeError(self.names[row], reason)


@dataclass
class _Pending:
    row: int  # the row being computed for this content
    copies: list  # later rows with the same content


@dataclass
class Task:
    """One model of a pass: its extractor, the cache it fills and the sink of its rows.

    Attributes
    ----------
    extractor : featurize.extraction.extractor.Extractor
    cache : FeatureCache or None
        Read, and written with every computed batch and content failure.
    sink : CountingSink or ArraySink
    read_caches : sequence of FeatureCache, default=()
        Further caches that count as done (read only; Dask workers read the target).
    """

    extractor: Any
    cache: Any
    sink: CountingSink
    read_caches: Sequence = ()


class _Plan:
    """What one task computes: the lookup of each chunk, and the consumer of its batches."""

    def __init__(self, task: Task, names, retry_failed, progress):
        self.names = names
        self.extractor, self.sink, self.cache = task.extractor, task.sink, task.cache
        self.lookup_caches = [c for c in (task.cache, *task.read_caches) if c is not None]
        self.retry_failed = retry_failed
        self.progress = progress
        self.configs = {name: self.extractor.layer_config(name) for name in self.extractor.layers}
        self.keys: dict[int, str] = {}  # planned rows in flight -> key
        self.pending: dict[str, _Pending] = {}  # key in flight -> its rows
        self.failed_keys: dict[str, str] = {}  # content failures of this run
        self.written: dict[str, int] = {}  # keys written since the last lookup -> row

    # -- plan -------------------------------------------------------------------------

    def plan(self, rows: range, keys: list, unreadable: dict[int, str]) -> list[int]:
        """Settle what the caches know of ``rows``; return the rows to compute."""
        done = 0
        keyed_rows, keyed = [], []
        for row, key in zip(rows, keys):
            if key is None:
                self.sink.failed(row, unreadable[row])
                done += 1
            else:
                keyed_rows.append(row)
                keyed.append(key)
        have = self._lookup(keyed_rows, keyed)
        known: dict[str, tuple[str, str]] = {}
        if not self.retry_failed and not have.all():
            first = self.configs[self.extractor.layers[0]]
            for cache in self.lookup_caches:
                known.update(cache.failures(first))
        self.written.clear()  # what was written before this lookup, the lookup saw
        compute = []
        for row, key, hit in zip(keyed_rows, keyed, have):
            if hit:
                done += 1
            elif key in known or key in self.failed_keys:
                self.sink.failed(row, known[key][1] if key in known else self.failed_keys[key])
                done += 1
            elif key in self.written:  # a copy of an image written since the lookup
                self.sink.copied(row, self.written[key])
                done += 1
            elif key in self.pending:
                self.pending[key].copies.append(row)  # settled with the row it duplicates
            else:
                self.pending[key] = _Pending(row, [])
                self.keys[row] = key
                compute.append(row)
        self.progress.advance(done)
        return compute

    def _lookup(self, rows: list[int], keys: list[str]) -> np.ndarray:
        """Which keys every layer has in some cache; served rows go to the sink.

        A row's features come from the cache that holds them (the first one that does).
        """
        if not keys or not self.lookup_caches:
            return np.zeros(len(keys), dtype=bool)
        have = np.ones(len(keys), dtype=bool)
        features = {}
        for name, config in self.configs.items():
            found = np.zeros(len(keys), dtype=bool)
            feats = None
            for cache in self.lookup_caches:
                todo = np.flatnonzero(~found & have)
                if not len(todo):
                    break
                asked = keys if len(todo) == len(keys) else [keys[i] for i in todo]
                if self.sink.needs_features:
                    hit, got = cache.lookup(config, asked)
                    hit = np.asarray(hit, dtype=bool)
                    if hit.any():
                        self.extractor.check_cached_width(cache, name, got)
                        if feats is None:
                            feats = np.empty((len(keys),) + got.shape[1:], dtype=got.dtype)
                        feats[todo[hit]] = got
                else:
                    hit = np.asarray(cache.contains(config, asked), dtype=bool)
                found[todo[hit]] = True
            have &= found
            features[name] = feats
        if have.any():
            served = [r for r, h in zip(rows, have) if h]
            self.sink.served(served, {name: feats[have] for name, feats in features.items()}
                             if self.sink.needs_features else None)
        return have

    # -- consume ------------------------------------------------------------------------

    def consume(self, rows: np.ndarray, batch, bad, decoded_keys) -> None:
        n_done = 0
        bad = list(bad)
        if batch is not None:
            feats = self.extractor.forward(batch)
            finite = np.ones(len(rows), dtype=bool)
            for value in feats.values():
                finite &= np.isfinite(value.reshape(len(rows), -1)).all(axis=1)
            if not finite.all():  # never cache (or serve) NaN/inf as features
                bad += [(int(r), NON_FINITE, False) for r in rows[~finite]]
                rows = rows[finite]
                feats = {name: value[finite] for name, value in feats.items()}
            rows = rows.tolist()
            keys = [decoded_keys.get(r, self.keys[r]) for r in rows]
            if self.cache is not None and rows:
                for name, config in self.configs.items():
                    self.cache.write(config, keys, feats[name], [self.names[r] for r in rows])
            self.sink.computed(rows, feats)
            for row, key in zip(rows, keys):
                n_done += 1 + self._settle(row, key, None)
        content_failures = [(r, why, decoded_keys.get(r, self.keys[r]))
                            for r, why, transient in bad if not transient]
        if content_failures and self.cache is not None:
            for config in self.configs.values():
                self.cache.record_failures(config, [k for _, _, k in content_failures],
                                           [self.names[r] for r, _, _ in content_failures],
                                           [why for _, why, _ in content_failures])
        for row, reason, transient in bad:
            key = decoded_keys.get(row, self.keys[row])
            if not transient:
                self.failed_keys[key] = reason
            n_done += 1 + self._settle(row, key, reason)
        self.progress.advance(n_done)

    def _settle(self, row: int, key: str, reason: str | None) -> int:
        """Settle ``row`` and the later rows that share its planned content."""
        planned = self.keys.pop(row)
        pending = self.pending.pop(planned)
        if reason is not None:
            self.sink.failed(row, reason)
        if key != planned:  # the file changed between planning and reading
            reason = CHANGED
        elif reason is None:
            self.written[key] = row
        for copy in pending.copies:
            if reason is None:
                self.sink.copied(copy, row)
            else:
                self.sink.failed(copy, reason)
        return len(pending.copies)


def _hash_chunk(sources, rows: range, max_pixels: int) -> tuple[list, dict[int, str]]:
    """Content keys of ``rows`` (None where unreadable), and why each unreadable row is.

    Files hashed before and unchanged since (one ``stat``) are answered here; the others are
    hashed in a thread pool (hashing releases the GIL).
    """
    def key_of(row):
        try:
            return file_content_key(sources[row])
        except (OSError, ValueError, TypeError):
            return None

    keys = [remembered_content_key(sources[row]) for row in rows]
    todo = [i for i, key in enumerate(keys) if key is None]
    paths = all(isinstance(sources[rows[i]], (str, os.PathLike)) for i in todo)
    if paths and len(todo) > 1:
        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
            hashed = list(pool.map(key_of, (rows[i] for i in todo)))
    else:
        hashed = [key_of(rows[i]) for i in todo]
    for i, key in zip(todo, hashed):
        keys[i] = key
    unreadable = {row: _unreadable_reason(sources[row], max_pixels)
                  for row, key in zip(rows, keys) if key is None}
    return keys, unreadable


def _unreadable_reason(source, max_pixels: int) -> str:
    """Why a source that could not even be hashed cannot be read (load_image's wording)."""
    try:
        load_image(source, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return exc.reason
    return "could not be read"


def run_extraction(sources: Sequence, extractor, cache, sink, *, names=None,
                   read_caches: Sequence = (), batch_size: int = 32,
                   num_workers: int | None = None, retry_failed: bool = False,
                   chunk_size: int | None = None, progress: Progress | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict:
    """Featurize ``sources`` into ``sink``, computing only what the caches lack.

    :func:`run_extractions` with one :class:`Task`.

    Parameters
    ----------
    sources : sequence
        Paths, bytes, PIL images or arrays (see :func:`featurize.images.decoding.load_image`).
    extractor : featurize.extraction.extractor.Extractor
        The loaded model.
    cache : FeatureCache or None
        Read, and written with every computed batch and content failure.
    sink : CountingSink or ArraySink
        Receives the rows.
    read_caches : sequence of FeatureCache, default=()
        Further caches that count as done (read only; Dask workers read the target).
    names, batch_size, num_workers, retry_failed, chunk_size, progress, should_stop
        See :func:`run_extractions`.

    Returns
    -------
    dict
        ``stopped`` (bool) and ``seconds``.
    """
    return run_extractions(sources, [Task(extractor, cache, sink, tuple(read_caches))],
                           names=names, batch_size=batch_size, num_workers=num_workers,
                           retry_failed=retry_failed, chunk_size=chunk_size, progress=progress,
                           should_stop=should_stop)


def run_extractions(sources: Sequence, tasks: Sequence[Task], *, names=None,
                    batch_size: int = 32, num_workers: int | None = None,
                    retry_failed: bool = False, chunk_size: int | None = None,
                    progress: Progress | None = None,
                    should_stop: Callable[[], bool] | None = None) -> dict:
    """Featurize ``sources`` for every task in one pass: each image is read and decoded once.

    Parameters
    ----------
    sources : sequence
        Paths, bytes, PIL images or arrays (see :func:`featurize.images.decoding.load_image`).
    tasks : sequence of Task
        The models, each with its cache and sink. Each gets the rows its caches lack, resized
        by its own preprocessing from the shared decode.
    names : list of str, default=None
        Printable names of the sources (default: :func:`describe_source`).
    batch_size : int, default=32
        Images per forward pass.
    num_workers : int or None, default=None
        Decode threads (0: decode in the calling thread; None:
        :func:`featurize.images.data.default_decode_threads`). Never processes.
    retry_failed : bool, default=False
        Re-read inputs recorded as failed in the caches.
    chunk_size : int or None, default=None
        Inputs hashed and looked up at a time (None: all at once).
    progress : Progress or None
        Receives ``advance(n)`` as inputs are dealt with, once per task.
    should_stop : callable or None
        Polled after every batch; True stops after writing that batch.

    Returns
    -------
    dict
        ``stopped`` (bool) and ``seconds``.
    """
    t0 = time.monotonic()
    sources = sources if isinstance(sources, list) else list(sources)
    names = names or [describe_source(s, i) for i, s in enumerate(sources)]
    progress = progress or Progress()
    should_stop = should_stop or (lambda: False)
    threads = (default_decode_threads(len(sources)) if num_workers is None
               else int(num_workers))
    groups: dict[int, list[Task]] = {}  # one decode serves the tasks of one size limit
    for task in tasks:
        groups.setdefault(int(task.extractor.max_pixels), []).append(task)
    stopped = False
    for max_pixels, group in groups.items():
        plans = [_Plan(task, names, retry_failed, progress) for task in group]
        stopped = _run_group(sources, plans, max_pixels, batch_size, threads,
                             max(1, chunk_size or len(sources)), should_stop)
        if stopped:
            break
    return {"stopped": stopped, "seconds": time.monotonic() - t0}


def _run_group(sources, plans, max_pixels, batch_size, threads, chunk_size,
               should_stop) -> bool:
    """Plan, decode and consume ``sources`` a chunk at a time; True if stopped."""
    decoder = Decoder(sources, [plan.extractor.preprocessing for plan in plans],
                      [plan.extractor.draft for plan in plans], max_pixels)
    pin = [plan.extractor.device.type == "cuda" for plan in plans]
    window = max(2 * batch_size, 4 * threads)  # images decoded ahead of the forward pass
    n = len(sources)
    for start in range(0, n, chunk_size):
        if should_stop():
            return True
        rows = range(start, min(n, start + chunk_size))
        keys, unreadable = _hash_chunk(sources, rows, max_pixels)
        wanted: dict[int, list[int]] = {}
        for i, plan in enumerate(plans):
            for row in plan.plan(rows, keys, unreadable):
                wanted.setdefault(row, []).append(i)
        if not wanted:
            continue  # every row served from the cache: nothing to decode
        buffers: list[list] = [[] for _ in plans]
        good = [0] * len(plans)
        work = ((row, tuple(parts)) for row, parts in sorted(wanted.items()))
        for item in decode_in_threads(decoder, work, threads, window):
            for i in wanted[item.row]:
                buffers[i].append(item)
                good[i] += item.tensors is not None
                if good[i] >= batch_size:
                    plans[i].consume(*collate(buffers[i], i, pin[i]))
                    buffers[i], good[i] = [], 0
                    if should_stop():
                        return True
        for i, buffer in enumerate(buffers):
            if buffer:
                plans[i].consume(*collate(buffer, i, pin[i]))
                if should_stop():
                    return True
    return False


def stream_extract(paths: Sequence[str], extractor, cache, *, read_caches: Sequence = (),
                   batch_size: int = 32, num_workers: int | None = None,
                   retry_failed: bool = False, chunk_size: int = 1024,
                   progress: Progress | None = None,
                   on_failure: Callable[[str, str], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict:
    """Featurize files into a cache, holding no features: :func:`run_extraction` with a
    :class:`CountingSink`.

    Returns
    -------
    counts : dict
        ``extracted``, ``cached``, ``duplicates``, ``failed``, ``stopped`` (bool) and
        ``seconds`` (of this call).
    """
    paths = paths if isinstance(paths, list) else list(paths)
    sink = CountingSink(on_failure, names=paths)
    result = run_extraction(paths, extractor, cache, sink, names=paths, read_caches=read_caches,
                            batch_size=batch_size, num_workers=num_workers,
                            retry_failed=retry_failed, chunk_size=chunk_size, progress=progress,
                            should_stop=should_stop)
    return {"extracted": sink.extracted, "cached": sink.cached,
            "duplicates": sink.duplicates, "failed": sink.n_failed, **result}
