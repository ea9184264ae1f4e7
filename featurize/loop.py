"""The one extraction loop: plan -> look up -> compute what is missing -> check -> write -> sink.

Every path that turns images into features runs :func:`run_extraction`:
:meth:`featurize.extraction.Extractor.extract` (hence :func:`featurize.extract_features` and
:class:`featurize.CNNFeaturizer`) with an :class:`ArraySink` that fills an ``(n, d)`` array,
and ``featurize extract`` and each Dask partition (:func:`stream_extract`) with a
:class:`CountingSink` that holds no features at all.

* **plan** (a chunk of inputs at a time, lazily: it is the DataLoader's sampler): content keys
  (:func:`featurize.keys.file_content_key`), then the cache is asked which rows exist and
  which inputs are known to be bad; identical contents are computed once;
* **compute**: the missing rows go through one ``DataLoader`` (the workers read each file
  once, hash the bytes and decode the same bytes) and :meth:`Extractor.forward`;
* **check**: a row with NaN or inf is a failure of its image, never a row;
* **write**: each batch goes to the cache (atomically) under the key of the bytes decoded;
  content failures are recorded there too; transient ones (I/O errors, memory, a file
  changed while read) are reported but never remembered;
* **sink**: receives rows served from the cache, computed rows, copies and failures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from featurize.decoding import describe_source, load_image
from featurize.exceptions import ImageDecodeError
from featurize.keys import file_content_key
from featurize.progress import Progress

__all__ = ["ArraySink", "CountingSink", "run_extraction", "stream_extract"]

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


class _Plan:
    """The lazy plan (the DataLoader's sampler) and the consumer of computed batches."""

    def __init__(self, sources, names, extractor, cache, read_caches, sink, retry_failed,
                 chunk_size, progress, should_stop):
        self.sources, self.names = sources, names
        self.extractor, self.sink = extractor, sink
        self.cache = cache
        self.lookup_caches = [c for c in (cache, *read_caches) if c is not None]
        self.retry_failed = retry_failed
        self.chunk_size = chunk_size
        self.progress = progress
        self.should_stop = should_stop
        self.configs = {name: extractor.layer_config(name) for name in extractor.layers}
        self.keys: dict[int, str] = {}  # planned rows in flight -> key
        self.pending: dict[str, _Pending] = {}  # key in flight -> its rows
        self.failed_keys: dict[str, str] = {}  # content failures of this run
        self.written: dict[str, int] = {}  # keys written since the last lookup -> row
        self.stopped = False

    # -- plan -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[int]:
        n = len(self.sources)
        for start in range(0, n, self.chunk_size):
            if self.should_stop():
                self.stopped = True
                return
            yield from self._plan_chunk(range(start, min(n, start + self.chunk_size)))

    def _hash_chunk(self, rows) -> list[str | None]:
        def key_of(row):
            try:
                return file_content_key(self.sources[row])
            except (OSError, ValueError, TypeError):
                return None

        paths = all(isinstance(self.sources[r], (str, os.PathLike)) for r in rows)
        if paths and len(rows) > 1:
            with ThreadPoolExecutor(max_workers=min(8, len(rows))) as pool:
                return list(pool.map(key_of, rows))
        return [key_of(r) for r in rows]

    def _plan_chunk(self, rows: range) -> Iterator[int]:
        keys = self._hash_chunk(rows)
        done = 0
        keyed_rows, keyed = [], []
        for row, key in zip(rows, keys):
            if key is None:
                self.sink.failed(row, _unreadable_reason(self.sources[row], self.names[row],
                                                         self.extractor.max_pixels))
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
        for row, key, hit in zip(keyed_rows, keyed, have):
            if hit:
                done += 1
                continue
            if key in known or key in self.failed_keys:
                self.sink.failed(row, known[key][1] if key in known else self.failed_keys[key])
            elif key in self.written:  # a copy of an image written since the lookup
                self.sink.copied(row, self.written[key])
            elif key in self.pending:
                self.pending[key].copies.append(row)  # settled with the row it duplicates
                continue
            else:
                if done:
                    self.progress.advance(done)
                    done = 0
                self.pending[key] = _Pending(row, [])
                self.keys[row] = key
                yield row
                continue
            done += 1
        self.progress.advance(done)

    def _lookup(self, rows: list[int], keys: list[str]) -> np.ndarray:
        have = np.ones(len(keys), dtype=bool)
        if not keys or not self.lookup_caches:
            return np.zeros(len(keys), dtype=bool)
        features = {}
        for name, config in self.configs.items():
            found = np.zeros(len(keys), dtype=bool)
            for cache in self.lookup_caches:
                if self.sink.needs_features and cache is self.lookup_caches[0]:
                    hit, feats = cache.lookup(config, keys)
                    hit = np.asarray(hit, dtype=bool)
                    self.extractor.check_cached_width(cache, name, feats if hit.any() else None)
                    features[name] = (hit, feats)
                else:
                    hit = np.asarray(cache.contains(config, keys), dtype=bool)
                found |= hit
            have &= found
        served = [r for r, h in zip(rows, have) if h]
        if served and self.sink.needs_features:
            rows_feats = {}
            for name, (hit, feats) in features.items():
                # keep the rows found for every layer, in order
                take = np.cumsum(hit) - 1
                rows_feats[name] = feats[take[have]]
            self.sink.served(served, rows_feats)
        elif served:
            self.sink.served(served, None)
        return have

    # -- consume ------------------------------------------------------------------------

    def consume(self, indices, batch, bad, decoded_keys) -> None:
        n_done = 0
        bad = list(bad)
        if batch is not None:
            feats = self.extractor.forward(batch)
            rows = indices.numpy()
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


def _unreadable_reason(source, name: str, max_pixels: int) -> str:
    """Why a source that could not even be hashed cannot be read (load_image's wording)."""
    try:
        load_image(source, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return exc.reason
    return "could not be read"


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process.

    A terminal sends SIGINT to the whole process group and Slurm sends SIGTERM to every
    process of the job step; the main process stops after its batch and then shuts the workers
    down, which it could not do cleanly if they had died first.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_extraction(sources: Sequence, extractor, cache, sink, *, names=None,
                   read_caches: Sequence = (), batch_size: int = 32, num_workers: int = 0,
                   retry_failed: bool = False, chunk_size: int | None = None,
                   progress: Progress | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict:
    """Featurize ``sources`` into ``sink``, computing only what the caches lack.

    Parameters
    ----------
    sources : sequence
        Paths, bytes, PIL images or arrays (see :func:`featurize.decoding.load_image`).
    extractor : featurize.extraction.Extractor
        The loaded model.
    cache : FeatureCache or None
        Read, and written with every computed batch and content failure.
    sink : CountingSink or ArraySink
        Receives the rows.
    names : list of str, default=None
        Printable names of the sources (default: :func:`describe_source`).
    read_caches : sequence of FeatureCache, default=()
        Further caches that count as done (read only; Dask workers read the target).
    batch_size, num_workers
        Of the DataLoader.
    retry_failed : bool, default=False
        Re-read inputs recorded as failed in the caches.
    chunk_size : int or None, default=None
        Inputs hashed and looked up at a time (None: all at once).
    progress : Progress or None
        Receives ``advance(n)`` as inputs are dealt with.
    should_stop : callable or None
        Polled after every batch; True stops after writing that batch.

    Returns
    -------
    dict
        ``stopped`` (bool) and ``seconds``.
    """
    from torch.utils.data import DataLoader

    from featurize.data import ImageDataset, collate

    t0 = time.monotonic()
    sources = sources if isinstance(sources, list) else list(sources)
    names = names or [describe_source(s, i) for i, s in enumerate(sources)]
    plan = _Plan(sources, names, extractor, cache, tuple(read_caches), sink, retry_failed,
                 max(1, chunk_size or len(sources)), progress or Progress(),
                 should_stop or (lambda: False))
    if sources:
        dataset = ImageDataset(sources, (), extractor.preprocessing, extractor.max_pixels,
                               extractor.draft)
        dataset.indices = range(len(sources))  # rows are addressed directly; O(1) memory
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=plan, num_workers=num_workers,
            collate_fn=collate, pin_memory=extractor.device.type == "cuda",
            prefetch_factor=2 if num_workers > 0 else None,
            worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
        )
        for indices, batch, bad, keys in loader:
            plan.consume(indices, batch, bad, keys)
            if plan.should_stop():
                plan.stopped = True
                break
    return {"stopped": plan.stopped, "seconds": time.monotonic() - t0}


def stream_extract(paths: Sequence[str], extractor, cache, *, read_caches: Sequence = (),
                   batch_size: int = 32, num_workers: int = 0, retry_failed: bool = False,
                   chunk_size: int = 1024, progress: Progress | None = None,
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
