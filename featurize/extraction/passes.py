"""One pass over images with one or more extractors: each image read and decoded once.

:func:`extract_many` runs the extraction loop
(:func:`featurize.extraction.loop.run_extractions`) for several
:class:`~featurize.extraction.extractor.Extractor` objects at once and returns one
:class:`ExtractionResult` per extractor; :meth:`Extractor.extract` is its one-extractor case.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from featurize.exceptions import FeatureExtractionWarning
from featurize.extraction.loop import ArraySink, Task, run_extractions
from featurize.images.decoding import describe_source
from featurize.images.inputs import as_sources
from featurize.options import check_extraction_options
from featurize.progress import make_progress
from featurize.storage.cache import FeatureCache

__all__ = ["ExtractionResult", "extract_many"]


@dataclass
class ExtractionResult:
    """What :meth:`Extractor.extract` returns.

    Attributes
    ----------
    features : ndarray of shape (n_images, n_features), float32
        Rows in input order; the layers' pooled outputs concatenated in the order asked for.
        Rows of failed images are NaN.
    failures : dict of int to str
        ``row -> reason`` for every image that could not be featurized.
    sources : list of str
        A printable name for every row (the path for files).
    widths : dict of str to int
        Width of each layer's part of a row.
    n_computed, n_cached : int
        Images run through the network in this call, and served from the cache.
    """

    features: np.ndarray
    failures: dict[int, str]
    sources: list[str]
    widths: dict[str, int]
    n_computed: int = 0
    n_cached: int = 0
    extra: dict = field(default_factory=dict)




def extract_many(extractors, images, *, batch_size: int = 32, num_workers: int | None = None,
                 cache=None, on_error: str = "raise", verbose: int = 0,
                 retry_failed: bool = False, progress: str | None = None
                 ) -> list[ExtractionResult]:
    """Featurize images with several extractors in one pass: each image is read and decoded
    once, then resized for each backbone (``featurize train`` reads three).

    Parameters
    ----------
    extractors : sequence of Extractor
    images : sequence or folder
        Anything :func:`featurize.images.inputs.as_sources` takes.
    batch_size, num_workers, cache, on_error, verbose, retry_failed, progress
        As in :meth:`Extractor.extract`; one cache serves every extractor (each configuration
        has its own rows in it).

    Returns
    -------
    list of ExtractionResult
        One per extractor, in order.
    """
    check_extraction_options(owner="extract_many", on_error=on_error, batch_size=batch_size,
                             num_workers=num_workers)
    if cache is not None and any(ex.pooling == "none" for ex in extractors):
        raise ValueError("pooling='none' returns feature maps, which are not cached;"
                         " use cache=None.")
    sources = as_sources(images)
    n = len(sources)
    names = [describe_source(s, i) for i, s in enumerate(sources)]
    store = _as_cache(cache)
    sinks = [ArraySink(ex._allocate(n), None if ex.pooling == "none" else ex._columns(), names,
                       on_error) for ex in extractors]
    backbones = "+".join(dict.fromkeys(ex.backbone.name for ex in extractors))
    progress = make_progress(progress or ("bar" if verbose else "none"), interval=10.0,
                             desc=f"featurize {backbones}")
    progress.start(n * len(extractors))
    try:
        run_extractions(sources, [Task(ex, store, sink) for ex, sink in zip(extractors, sinks)],
                        names=names, batch_size=batch_size, num_workers=num_workers,
                        retry_failed=retry_failed, progress=progress)
    finally:
        progress.close()
    failures = dict(sorted((row, why) for sink in sinks for row, why in sink.failures.items()))
    if failures and on_error == "nan":
        _warn_failures(failures, names, n)
    return [ExtractionResult(sink.out, dict(sorted(sink.failures.items())), names,
                             dict(ex.widths), sink.extracted, sink.cached)
            for ex, sink in zip(extractors, sinks)]


def _as_cache(cache):
    if cache is None:
        return None
    if isinstance(cache, FeatureCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return FeatureCache(cache)
    raise TypeError(f"cache must be None, a path or a FeatureCache; got {type(cache).__name__}.")



def _warn_failures(failures: dict[int, str], names: list[str], n: int) -> None:
    rows = sorted(failures)
    listed = "; ".join(f"{names[r]!r}: {failures[r]}" for r in rows[:5])
    more = f"; and {len(rows) - 5} more" if len(rows) > 5 else ""
    warnings.warn(FeatureExtractionWarning(
        f"{len(rows)} of {n} images could not be featurized and got rows of NaN ({listed}{more})."
        " The warning's .failures attribute lists them all.",
        [{"row": r, "source": names[r], "reason": failures[r]} for r in rows],
    ), stacklevel=5)
