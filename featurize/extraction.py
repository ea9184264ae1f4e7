"""Batched feature extraction: images in, one row of features per image out, in input order.

:class:`Extractor` holds a loaded, truncated backbone; :func:`extract_features` is the plain
function on top of it, and :class:`featurize.CNNFeaturizer` the scikit-learn estimator.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from featurize._version import FEATURE_VERSION
from featurize.backbones import load_backbone
from featurize.data import ImageDataset, collate
from featurize.decoding import DEFAULT_MAX_PIXELS, describe_source, load_image
from featurize.engine import (
    AUTO_MIN_COSINE,
    AUTO_MIN_IMAGES,
    ENGINES,
    auto_candidates,
    available_engines,
    build_engine,
    compare_features,
)
from featurize.exceptions import (
    BackboneError,
    CacheError,
    FeatureExtractionWarning,
    ImageDecodeError,
)
from featurize.inputs import as_sources
from featurize.layers import PENULTIMATE, LayerTap, check_layers, penultimate_module, trace_layers
from featurize.pooling import POOLINGS, pool

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ON_ERROR = ("raise", "nan")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"Invalid device {device!r}. Expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available here;"
                         " use device='auto' or 'cpu'.")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bf16 on CUDA GPUs that support it, else fp16 on CUDA, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}. Expected one of {PRECISIONS}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def default_num_workers(n_images: int, batch_size: int, device=None) -> int:
    """Data-loader worker processes: none for small jobs, else enough to feed the device.

    On a GPU (or ``device=None``) up to the CPU count (max 8): decoding is the bottleneck.
    On the CPU the workers compete with the forward pass for the same cores and decoding
    costs about a fifth of the forward, so a quarter of the cores (at least 1, max 8):
    measured on 2 cores, 1 worker is as fast as 2 with half the memory
    (``benchmarks/README.md``).
    """
    if n_images <= batch_size:
        return 0
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1))
    if device is not None and torch.device(device).type == "cpu":
        return max(1, min(8, cpus // 4))
    return max(1, min(8, cpus))


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


class Extractor:
    """A backbone truncated at one or more layers, loaded once, ready to featurize batches.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        A name from :func:`featurize.list_backbones`.
    weights : str, path-like or None, default="DEFAULT"
        See :func:`featurize.backbones.load_backbone`.
    layer : str, list of str or None, default=None
        Layer name(s) from :func:`featurize.list_layers`; None is ``"penultimate"``, the
        embedding the network's own classifier uses.
    pooling : {"avg", "max", "avgmax", "gem", "flatten", "none"}, default="avg"
        How each layer's map becomes a vector (see :func:`featurize.pooling.pool`).
    device : str, default="auto"
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast precision of the forward pass; ``"auto"`` is bf16 (or fp16) on CUDA, fp32 on CPU.
    channels_last : bool or None, default=None
        Memory format of the input; None uses channels_last on CUDA only.
    draft : bool, default=True
        Decode large JPEGs at a reduced DCT scale when the result stays >= the resize size.
    max_pixels : int
        Larger images are refused without being decoded (decompression-bomb guard).
    engine : {"auto", "eager", "onnxruntime", "torchscript", "compile"}, default="auto"
        How the forward pass runs (see :mod:`featurize.engine`). ``"eager"`` is the PyTorch
        reference. ``"auto"``: for calls of at least
        :data:`~featurize.engine.AUTO_MIN_IMAGES` images on the CPU in fp32, the fastest engine
        installed (ONNX Runtime, else a frozen TorchScript graph), checked against eager when
        built; eager otherwise. Engines agree with eager up to float rounding (as CPU and GPU
        runs do), so the engine is not part of the cache key: rows cached by a fast engine serve
        an eager call and vice versa.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", weights="DEFAULT", layer=None,
                 pooling: str = "avg", device="auto", precision: str = "auto",
                 channels_last: bool | None = None, draft: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS, engine: str = "auto"):
        if pooling not in POOLINGS:
            raise BackboneError(f"Unknown pooling {pooling!r}. Expected one of {POOLINGS}.")
        if engine not in ENGINES:
            raise ValueError(f"Unknown engine {engine!r}. Expected one of {ENGINES}.")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.pooling = pooling
        self.draft = draft
        self.max_pixels = max_pixels
        self.backbone = load_backbone(backbone, weights)
        self.preprocessing = self.backbone.preprocessing
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        model = self.backbone.model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.layer_infos = trace_layers(model, self.preprocessing.crop_size)
        if layer is None:
            names = [info.name for info in self.layer_infos]
            layers = [PENULTIMATE if PENULTIMATE in names else names[-1]]
        elif isinstance(layer, str):
            layers = [layer]
        else:
            layers = list(layer)
        if not layers:
            raise BackboneError("layer=[] names no layer; pass None for the default embedding.")
        check_layers(layers, self.layer_infos, backbone)
        if pooling == "none" and len(layers) > 1:
            raise BackboneError("pooling='none' returns feature maps and takes a single layer.")
        self.layers = list(dict.fromkeys(layers))
        self._tap = LayerTap(model, self.layers, penultimate_module(model, self.layer_infos))
        shapes = {info.name: info.shape for info in self.layer_infos}
        self.widths = {
            name: int(np.prod(pool(torch.zeros((1,) + shapes[name]), pooling).shape[1:]))
            for name in self.layers
        }
        self._max_batch: int | None = None
        self.engine = engine
        if engine not in ("auto", "eager"):
            if engine not in available_engines(self.device):
                raise BackboneError(
                    f"engine={engine!r} is not available on {self.device} here (available:"
                    f" {available_engines(self.device)}); engine='onnxruntime' needs"
                    " pip install 'featurize[onnx]'.")
            if self.precision != "fp32" and engine != "compile":
                raise BackboneError(f"engine={engine!r} runs in fp32 only; got precision="
                                    f"{self.precision!r}.")
        self._planned = "eager" if engine == "auto" else engine
        self._engine = None  # the built featurize.engine.Engine, None for eager
        self._failed_engines: set[str] = set()

    # -- configuration ---------------------------------------------------------------------

    def layer_config(self, layer: str) -> dict:
        """Everything that changes one layer's numbers: the cache key of its features."""
        return {
            "backbone": self.backbone.name,
            "weights": self.backbone.weights,
            "weights_sha256": self.backbone.weights_sha256,
            "layer": layer,
            "pooling": self.pooling,
            "preprocessing": self.preprocessing.to_dict(),
            "precision": self.precision,
            "draft": bool(self.draft),
            "max_pixels": int(self.max_pixels),
            "feature_version": FEATURE_VERSION,
        }

    @property
    def engine_name(self) -> str:
        """The engine :meth:`forward` runs (``"eager"`` until ``"auto"`` picks another)."""
        return self._engine.name if self._engine is not None else self._planned

    def prepare_engine(self, n_images: int | None = None) -> str:
        """Choose and build the engine for a job of ``n_images`` images, before computing keys.

        With ``engine="auto"``, a job of at least :data:`~featurize.engine.AUTO_MIN_IMAGES`
        images (or ``n_images=None``) gets the fastest engine that builds and agrees with eager
        on a check batch; smaller jobs keep eager. Call it before :meth:`layer_config` when
        driving :meth:`forward` yourself.

        Parameters
        ----------
        n_images : int or None, default=None
            Size of the job; None means large.

        Returns
        -------
        str
            :attr:`engine_name`.
        """
        self._plan_engine(n_images)
        self._ensure_engine()
        return self.engine_name

    def _plan_engine(self, n_images: int | None) -> None:
        if self.engine != "auto" or self._engine is not None or self._planned != "eager":
            return
        if n_images is None or n_images >= AUTO_MIN_IMAGES:
            candidates = [c for c in auto_candidates(self.device, self.precision)
                          if c not in self._failed_engines]
            self._planned = candidates[0]

    def _ensure_engine(self) -> None:
        while self._engine is None and self._planned != "eager":
            name = self._planned
            try:
                engine = build_engine(
                    name, self.model, self.layers, penultimate_module(self.model, self.layer_infos),
                    self.preprocessing, self.pooling, self.device, precision=self.precision)
                if self.engine == "auto":
                    self._check_engine(engine)
            except BackboneError as exc:
                if self.engine != "auto":
                    raise
                logger.warning("The %s engine is not used (%s); trying the next one.", name, exc)
                self._failed_engines.add(name)
                candidates = [c for c in auto_candidates(self.device, self.precision)
                              if c not in self._failed_engines]
                self._planned = candidates[0]
                continue
            self._engine = engine

    def _check_engine(self, engine) -> None:
        """Raise BackboneError if ``engine`` disagrees with eager on a check batch."""
        size = self.preprocessing.crop_size
        generator = torch.Generator().manual_seed(1)
        check = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=generator)
        min_cos, max_abs = compare_features(self._forward_eager(check), engine(check))
        if not min_cos >= AUTO_MIN_COSINE:
            raise BackboneError(f"its features differ from eager (cosine {min_cos:.5f},"
                                f" max abs diff {max_abs:.3g})")

    @property
    def n_features(self) -> int:
        """Width of one output row."""
        return sum(self.widths.values())

    # -- forward ------------------------------------------------------------------------------

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_TORCH_DTYPES[self.precision])

    def _forward_once(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        if self._engine is not None:
            return self._engine(batch)
        return self._forward_eager(batch)

    def _forward_eager(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        x = batch.to(self.device, non_blocking=True)
        x = self.preprocessing.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            outputs = self._tap(x)
            pooled = {name: pool(outputs[name], self.pooling) for name in self.layers}
        return {name: v.float().cpu().numpy() for name, v in pooled.items()}

    def forward(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """Features of a uint8 batch ``(N, 3, H, W)``, one array per layer, rows in batch order.

        On a device out-of-memory error the batch is split in halves (and later batches are cut
        to the size that worked), down to one image; no row is lost or repeated.
        """
        if len(batch) == 0:
            return {name: np.empty((0, w), np.float32) for name, w in self.widths.items()}
        self._ensure_engine()
        chunk = min(len(batch), self._max_batch or len(batch))
        parts: list[dict[str, np.ndarray]] = []
        start = 0
        while start < len(batch):
            piece = batch[start:start + chunk]
            try:
                parts.append(self._forward_once(piece))
            except torch.OutOfMemoryError:
                if chunk == 1:
                    raise
                chunk = max(1, chunk // 2)
                self._max_batch = chunk
                logger.warning("Out of memory on the %s; batch size halved to %d.",
                               self.device, chunk)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start += len(piece)
        return {name: np.concatenate([p[name] for p in parts]) for name in self.layers}

    # -- extraction -------------------------------------------------------------------------

    def extract(self, images, *, batch_size: int = 32, num_workers: int | None = None,
                cache=None, on_error: str = "raise", verbose: int = 0,
                retry_failed: bool = False) -> ExtractionResult:
        """Featurize images, reusing and filling the cache.

        Parameters
        ----------
        images : sequence or folder
            Anything :func:`featurize.inputs.as_sources` takes.
        batch_size : int, default=32
            Images per forward pass (halved automatically on out-of-memory).
        num_workers : int or None, default=None
            Data-loader worker processes; None picks :func:`default_num_workers`.
        cache : str, path-like, FeatureCache or None, default=None
            An HDF5 feature cache; None computes everything and stores nothing.
        on_error : {"raise", "nan"}, default="raise"
            ``"raise"``: an unreadable image raises :class:`ImageDecodeError` naming the file and
            the reason (the batches before it are already in the cache). ``"nan"``: its row is
            NaN, one :class:`FeatureExtractionWarning` gives the count, and the result's
            ``failures`` lists the rows.
        verbose : int, default=0
            ``>= 1`` shows a tqdm progress bar with images/s.
        retry_failed : bool, default=False
            Retry files the cache recorded as failed before (by default their recorded failure
            is reported again without re-reading them).

        Returns
        -------
        ExtractionResult
        """
        if on_error not in ON_ERROR:
            raise ValueError(f"Unknown on_error {on_error!r}. Expected one of {ON_ERROR}.")
        if self.pooling == "none" and cache is not None:
            raise ValueError("pooling='none' returns feature maps, which are not cached;"
                             " use cache=None.")
        sources = as_sources(images)
        n = len(sources)
        names = [describe_source(s, i) for i, s in enumerate(sources)]
        failures: dict[int, str] = {}
        out = self._allocate(n)
        cache = _as_cache(cache)
        todo = list(range(n))
        keys: list[str | None] = [None] * n
        n_cached = 0
        self._plan_engine(n)
        configs = {name: self.layer_config(name) for name in self.layers}
        if cache is not None:
            todo, n_cached = self._from_cache(cache, sources, names, keys, configs, out,
                                              failures, retry_failed)
            if failures and on_error == "raise":
                row = min(failures)
                raise ImageDecodeError(names[row], failures[row])
        # Identical content is computed once (same key), then copied to its other rows.
        first_of: dict[str, int] = {}
        copies: list[tuple[int, int]] = []
        unique = []
        for row in todo:
            key = keys[row]
            if key is not None and key in first_of:
                copies.append((row, first_of[key]))
            else:
                if key is not None:
                    first_of[key] = row
                unique.append(row)
        n_computed = self._run(sources, unique, names, keys, configs, out, failures, cache,
                               batch_size, num_workers, on_error, verbose)
        for row, src in copies:
            if src in failures:
                failures[row] = failures[src]
            out[row] = out[src]
        for row in failures:
            out[row] = np.nan
        if failures and on_error == "nan":
            _warn_failures(failures, names, n)
        return ExtractionResult(out, dict(sorted(failures.items())), names, dict(self.widths),
                                n_computed, n_cached)

    def _allocate(self, n: int) -> np.ndarray:
        if self.pooling == "none":
            shape = {i.name: i.shape for i in self.layer_infos}[self.layers[0]]
            return np.zeros((n,) + tuple(shape), np.float32)
        return np.zeros((n, self.n_features), np.float32)

    def _columns(self) -> dict[str, slice]:
        cols, start = {}, 0
        for name in self.layers:
            cols[name] = slice(start, start + self.widths[name])
            start += self.widths[name]
        return cols

    def _from_cache(self, cache, sources, names, keys, configs, out, failures, retry_failed):
        for row, source in enumerate(sources):
            try:
                keys[row] = file_content_key(source)
            except (OSError, ValueError, TypeError):
                failures[row] = _decode_reason(source, names[row], self.max_pixels)
        rows = [r for r in range(len(sources)) if keys[r] is not None]
        row_keys = [keys[r] for r in rows]
        have = np.ones(len(rows), dtype=bool)
        cols = self._columns()
        for name, config in configs.items():
            found, feats = cache.lookup(config, row_keys)
            found = np.asarray(found, dtype=bool)
            if found.any() and feats.shape[1] != self.widths[name]:
                raise CacheError(
                    f"cache file {os.fspath(cache.path)!r} holds features of width "
                    f"{feats.shape[1]} for layer {name!r}, but this model gives "
                    f"{self.widths[name]}: the file does not match its configuration, so it is "
                    "refused. Delete it or point cache= at another file.")
            if found.any():
                out[np.asarray(rows, dtype=np.int64)[found], cols[name]] = feats
            have &= found
        if not retry_failed and not have.all():  # all found: no need to open the file again
            known = cache.failures(configs[self.layers[0]])
            for row, key, hit in zip(rows, row_keys, have):
                if not hit and key in known:
                    failures[row] = known[key][1]
        todo = [r for r, hit in zip(rows, have) if not hit and r not in failures]
        return todo, int(have.sum())

    def _run(self, sources, rows, names, keys, configs, out, failures, cache, batch_size,
             num_workers, on_error, verbose) -> int:
        if not rows:
            return 0
        self._ensure_engine()  # an "auto" engine that fails to build falls back to eager
        configs = {name: self.layer_config(name) for name in self.layers}
        if num_workers is None:
            in_memory = not all(isinstance(sources[r], (str, os.PathLike)) for r in rows)
            num_workers = (0 if in_memory
                           else default_num_workers(len(rows), batch_size, self.device))
        dataset = ImageDataset(sources, rows, self.preprocessing, self.max_pixels, self.draft)
        loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if num_workers > 0 else None,
        )
        cols = self._columns()
        progress = _progress(len(rows), verbose)
        computed = 0
        try:
            for indices, batch, bad in loader:
                bad = list(bad)
                if batch is not None:
                    feats = self.forward(batch)
                    idx = indices.numpy()
                    finite = np.ones(len(idx), dtype=bool)
                    for value in feats.values():
                        finite &= np.isfinite(value.reshape(len(idx), -1)).all(axis=1)
                    if not finite.all():  # never cache (or serve) NaN/inf as features
                        bad += [(int(r), "the network produced non-finite features (NaN or"
                                 " inf); try precision='fp32'") for r in idx[~finite]]
                        idx = idx[finite]
                        feats = {name: value[finite] for name, value in feats.items()}
                    if self.pooling == "none":
                        out[idx] = feats[self.layers[0]]
                    else:
                        for name in self.layers:
                            out[idx, cols[name]] = feats[name]
                    computed += len(idx)
                    if cache is not None:
                        for name, config in configs.items():
                            cache.write(config, [keys[i] for i in idx], feats[name],
                                        [names[i] for i in idx])
                for row, reason in bad:
                    failures[row] = reason
                if bad and cache is not None:
                    bad_keyed = [(r, why) for r, why in bad if keys[r] is not None]
                    if bad_keyed:
                        for config in configs.values():
                            cache.record_failures(config, [keys[r] for r, _ in bad_keyed],
                                                  [names[r] for r, _ in bad_keyed],
                                                  [why for _, why in bad_keyed])
                if bad and on_error == "raise":
                    row, reason = min(bad)
                    raise ImageDecodeError(names[row], reason)
                progress.update((0 if batch is None else len(batch)) + len(bad))
        finally:
            progress.close()
        return computed


def _warn_failures(failures: dict[int, str], names: list[str], n: int) -> None:
    rows = sorted(failures)
    listed = "; ".join(f"{names[r]!r}: {failures[r]}" for r in rows[:5])
    more = f"; and {len(rows) - 5} more" if len(rows) > 5 else ""
    warnings.warn(FeatureExtractionWarning(
        f"{len(rows)} of {n} images could not be featurized and got rows of NaN ({listed}{more})."
        " The warning's .failures attribute lists them all.",
        [{"row": r, "source": names[r], "reason": failures[r]} for r in rows],
    ), stacklevel=4)


#: Content keys of files already hashed by this process, by (path, device, inode, size, mtime,
#: ctime): a warm-cache re-run then costs a ``stat`` per file instead of reading every byte.
_KEY_MEMO: dict[tuple, str] = {}
_KEY_MEMO_MAX = 500_000  # about 150 MB at most; emptied when full
#: A file modified less than this long before it was hashed is not memoized: a change within
#: the file system's timestamp granularity could otherwise keep the same stat ("racy git").
_RACY_NS = 2_000_000_000


def file_content_key(source) -> str:
    """:func:`featurize.cache.content_key`, memoized for regular files by their ``stat``.

    The key of a file is remembered (in this process) with its path, device, inode, size,
    modification and status-change times in nanoseconds; any change to the file gives a new
    ``stat`` and the file is hashed again. Files changed in the 2 seconds before they were
    hashed are not remembered. Other sources are hashed every time.

    Parameters
    ----------
    source : str, os.PathLike, bytes, ndarray or PIL.Image.Image

    Returns
    -------
    str
    """
    from featurize.cache import content_key

    if isinstance(source, str):  # the common case first: isinstance(x, os.PathLike) is slow
        path = source
    elif isinstance(source, os.PathLike):
        path = os.fspath(source)
    else:
        return content_key(source)
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return content_key(source)  # raises the error content_key gives
    if not stat.S_ISREG(st.st_mode):
        return content_key(source)
    memo = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    key = _KEY_MEMO.get(memo)  # dict reads and writes are atomic: no lock needed
    if key is not None:
        return key
    key = content_key(source)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
        if len(_KEY_MEMO) >= _KEY_MEMO_MAX:
            _KEY_MEMO.clear()
        _KEY_MEMO[memo] = key
    return key


def _decode_reason(source, name: str, max_pixels: int) -> str:
    """The reason :func:`load_image` gives for a source that could not even be hashed."""
    try:
        load_image(source, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return exc.reason
    return "could not be read"


def _as_cache(cache):
    if cache is None:
        return None
    from featurize.cache import FeatureCache

    if isinstance(cache, FeatureCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return FeatureCache(cache)
    raise TypeError(f"cache must be None, a path or a FeatureCache; got {type(cache).__name__}.")


class _NoProgress:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, verbose: int):
    if not verbose:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="featurize", smoothing=0.1)


def extract_features(images, *, backbone: str = "efficientnet_lite0", weights="DEFAULT",
                     layer=None, pooling: str = "avg", batch_size: int = 32, device="auto",
                     num_workers: int | None = None, precision: str = "auto", cache=None,
                     on_error: str = "raise", verbose: int = 0, return_failures: bool = False,
                     retry_failed: bool = False, engine: str = "auto"):
    """Extract CNN embeddings for a sequence of images.

    Parameters
    ----------
    images : sequence, folder, ndarray or PIL image
        Paths (str or Path), a folder or glob, PIL images, uint8 arrays ``(N, H, W, 3)`` /
        ``(H, W, 3)`` / grayscale ``(N, H, W)``, bytes, or a pandas Series of paths.
    backbone : str, default="efficientnet_lite0"
        A name from :func:`featurize.list_backbones`.
    weights : str, path-like or None, default="DEFAULT"
        Pretrained weights name, local checkpoint path, or None (random init).
    layer : str, list of str or None, default=None
        Layer(s) to read; None is the network's penultimate embedding. Several layers are read
        in one forward pass and concatenated in the given order.
    pooling : {"avg", "max", "avgmax", "gem", "flatten", "none"}, default="avg"
        Pooling of each layer's output.
    batch_size : int, default=32
        Images per forward pass.
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``...
    num_workers : int or None, default=None
        Data-loader worker processes (None: automatic).
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Forward-pass precision (``"auto"``: mixed precision on CUDA, fp32 elsewhere).
    cache : str, path-like, FeatureCache or None, default=None
        HDF5 feature cache to read from and write to.
    on_error : {"raise", "nan"}, default="raise"
        What an unreadable image does (see :meth:`Extractor.extract`).
    verbose : int, default=0
        Show a progress bar.
    return_failures : bool, default=False
        Also return ``{row: reason}`` for the rows that failed.
    retry_failed : bool, default=False
        Re-read files the cache recorded as failed.
    engine : {"auto", "eager", "onnxruntime", "torchscript", "compile"}, default="auto"
        Forward-pass engine (see :class:`Extractor`).

    Returns
    -------
    features : ndarray of shape (n_images, n_features), float32
        With ``pooling="none"``: ``(n_images, C, H, W)``.
    failures : dict of int to str
        Only with ``return_failures=True``.

    Examples
    --------
    >>> from featurize import extract_features                        # doctest: +SKIP
    >>> X = extract_features(["a.jpg", "b.png"], cache="feats.h5")  # doctest: +SKIP
    >>> X.shape                                                        # doctest: +SKIP
    (2, 1280)
    """
    extractor = Extractor(backbone, weights, layer, pooling, device, precision, engine=engine)
    result = extractor.extract(images, batch_size=batch_size, num_workers=num_workers,
                               cache=cache, on_error=on_error, verbose=verbose,
                               retry_failed=retry_failed)
    return (result.features, result.failures) if return_failures else result.features

