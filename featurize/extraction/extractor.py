"""The extractor: a backbone truncated at its layers, loaded once, run by an engine.

:class:`Extractor` holds a loaded, truncated backbone and runs its forward pass (through the
engine chosen for the configuration and the machine, with out-of-memory halving);
:func:`extract_features` is the plain function on top of it, and
:class:`featurize.CNNFeaturizer` the scikit-learn estimator. Several extractors share one pass
over the images in :mod:`featurize.extraction.passes`.
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np
import torch

from featurize._version import FEATURE_VERSION
from featurize.exceptions import BackboneError, CacheError
from featurize.extraction import engine_table
from featurize.extraction.passes import ExtractionResult, extract_many
from featurize.images.decoding import DEFAULT_MAX_PIXELS
from featurize.networks.backbones import load_backbone
from featurize.networks.hardware import resolve_device
from featurize.networks.layers import (
    PENULTIMATE,
    TruncatedNet,
    check_layers,
    penultimate_module,
    trace_layers,
)
from featurize.networks.pooling import pool
from featurize.networks.runtimes import (
    auto_candidates,
    auto_min_cosine,
    available_engines,
    build_engine,
    check_images,
    check_precision,
    compare_features,
    engine_numerics,
    resolve_precision,
)
from featurize.options import (
    check_extraction_options,
    pooling_key,
)

__all__ = ["ExtractionResult", "Extractor", "extract_features", "extract_many",
           "resolve_device", "resolve_precision"]

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Extractor:
    """A backbone truncated at one or more layers, loaded once, ready to featurize batches.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        A name from :func:`featurize.list_backbones`.
    weights : str, path-like or None, default="DEFAULT"
        See :func:`featurize.networks.backbones.load_backbone`.
    layer : str, list of str or None, default=None
        Layer name(s) from :func:`featurize.list_layers`; None is ``"penultimate"``, the
        embedding the network's own classifier uses.
    pooling : {"avg", "max", "catavgmax", "gem", "flatten", "none"}, default="avg"
        How each layer's map becomes a vector (see :func:`featurize.networks.pooling.pool`);
        ``catavgmax`` concatenates avg and max (``avgmax``: its old name, an alias).
    device : str, default="auto"
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Precision of the forward pass. ``"auto"`` is bf16 (or fp16) autocast on CUDA; on the CPU
        bf16 run by OpenVINO where the CPU computes bf16 natively (AMX or AVX-512 BF16) and
        OpenVINO is installed, else fp32 (see
        :func:`~featurize.networks.runtimes.resolve_precision`). After
        :meth:`prepare_engine` the attribute holds what runs (an OpenVINO engine that fails
        falls back to fp32 under ``"auto"``); it is part of the cache key.
    channels_last : bool or None, default=None
        Memory format of the input; None uses channels_last on CUDA only.
    draft : bool, default=True
        Decode large JPEGs at a reduced DCT scale when the result stays >= the resize size.
    max_pixels : int
        Larger images are refused without being decoded (decompression-bomb guard).
    engine : {"auto", "eager", "onnxruntime", "openvino", "torchscript", "compile"}, \
default="auto"
        How the forward pass runs (see :mod:`featurize.networks.runtimes`). ``"eager"`` is the
        PyTorch reference. ``"auto"`` is decided by the configuration and the machine, whatever the
        size of a call: on the CPU in fp32 the fastest engine installed (ONNX Runtime, else
        OpenVINO, else a frozen TorchScript graph), in bf16 OpenVINO, checked against eager
        fp32 on real images; eager elsewhere. In fp32 engines agree with eager up to float
        rounding (as CPU and GPU runs do), so the engine is not part of the cache key: rows
        cached by a fast engine serve an eager call and vice versa. OpenVINO's bf16 rounds
        otherwise than torch's bf16 autocast, and has cache keys of its own.

    Attributes
    ----------
    engine_name : str
        The engine that runs (``"eager"`` after a fallback); also logged when it is chosen.
    precision : str
        The precision that runs.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", weights="DEFAULT", layer=None,
                 pooling: str = "avg", device="auto", precision: str = "auto",
                 channels_last: bool | None = None, draft: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS, engine: str = "auto"):
        check_extraction_options(owner="Extractor", pooling=pooling, engine=engine,
                                 layer=layer)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device, engine)
        self._precision_option = precision
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
        self._net = TruncatedNet(model, self.layers, penultimate_module(model, self.layer_infos),
                                 self.preprocessing, pooling, self.channels_last)
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
                    " pip install 'featurize[onnx]', engine='openvino' pip install openvino"
                    " onnx.")
            check_precision(engine, self.precision)
        # Decided by the configuration and the machine, never by the size of a call.
        self._planned = (auto_candidates(self.device, self.precision)[0] if engine == "auto"
                         else engine)
        self._engine = None  # the built featurize.networks.runtimes.Engine, None for eager
        self._announced = False  # the engine that runs was logged

    # -- configuration ---------------------------------------------------------------------

    def layer_config(self, layer: str) -> dict:
        """Everything that changes one layer's numbers: the cache key of its features.

        Where the engine's numerics are part of the key (OpenVINO bf16), the engine is built
        (and under ``engine="auto"`` checked) first, so that the key names what runs. Such
        an engine compiles the layers read together into one graph whose bf16 rounding
        depends on which outputs it has (a layer read alone differs from the same layer
        read with others by about 0.2%), so the key also names the layers read.
        """
        if self._engine is None and engine_numerics(self._planned, self.precision):
            self.prepare_engine()
        numerics = engine_numerics(self.engine_name, self.precision)
        return {
            "backbone": self.backbone.name,
            "weights": self.backbone.weights,
            "weights_sha256": self.backbone.weights_sha256,
            "layer": layer,
            # "catavgmax" keeps the key of its old name "avgmax" (caches stay warm)
            "pooling": pooling_key(self.pooling),
            "preprocessing": self.preprocessing.to_dict(),
            "precision": self.precision,
            "draft": bool(self.draft),
            "max_pixels": int(self.max_pixels),
            "feature_version": FEATURE_VERSION,
            # only when set, so that the keys of torchvision and embedded backbones are unchanged
            **({"library": self.backbone.library} if self.backbone.library else {}),
            # only for an engine that rounds otherwise than torch (fp32 and autocast keys stay)
            **({"numerics": numerics, "layers_read": sorted(self.layers)} if numerics else {}),
        }

    def _check_batch(self) -> torch.Tensor | None:
        """Real images to check an engine on before the first batch (None: none here)."""
        try:
            return check_images(self.preprocessing)
        except (FileNotFoundError, OSError) as exc:
            logger.warning("No sample images to check the %s engine on (%s).", self._planned, exc)
            return None

    @property
    def engine_name(self) -> str:
        """The engine :meth:`forward` runs (an ``"auto"`` one that fails its check: eager)."""
        return self._engine.name if self._engine is not None else self._planned

    def _engine_key(self, name: str) -> tuple:
        return (self.backbone.name, str(self.backbone.weights), self.backbone.weights_sha256,
                self.backbone.library, tuple(self.layers), self.pooling, str(self.device),
                self.precision, name, self.preprocessing.crop_size, self.channels_last)

    def prepare_engine(self, batch: torch.Tensor | None = None) -> str:
        """Build (or reuse) the engine before the first batch; returns :attr:`engine_name`.

        Engines are built once per process and configuration (a trace or an ONNX export
        costs seconds). With ``engine="auto"`` a new engine is checked against eager on
        ``batch`` (real preprocessed images: the first batch of the job); one that fails to
        build or disagrees is replaced by the next candidate, eager last. Without a batch the
        check waits for the first one :meth:`forward` gets, except for an engine whose
        numerics are part of the cache key (OpenVINO bf16), checked at once on the bundled
        sample images. If such an engine fails where ``precision="auto"`` chose bf16 for it,
        the fp32 engines are next (faster on a CPU than bf16 autocast) and
        :attr:`precision` becomes ``"fp32"``.

        Parameters
        ----------
        batch : uint8 tensor (N, 3, H, W) or None, default=None

        Returns
        -------
        str
        """
        table = engine_table.TABLE
        while self._engine is None and self._planned != "eager":
            name = self._planned
            key = self._engine_key(name)
            engine = table.get(key)
            # an engine asked for by name is built (or its error raised) even if "auto"
            # rejected it before
            if engine is None and (not table.is_rejected(key) or self.engine != "auto"):
                try:
                    engine = build_engine(
                        name, self.model, self.layers,
                        penultimate_module(self.model, self.layer_infos), self.preprocessing,
                        self.pooling, self.device, precision=self.precision)
                except BackboneError as exc:
                    if self.engine != "auto":
                        raise
                    table.reject(key, str(exc))
                    engine = None
            if engine is not None and self.engine == "auto" and not table.is_checked(key):
                check = batch
                if check is None and engine_numerics(name, self.precision):
                    check = self._check_batch()  # it decides the cache key: checked now
                    if check is None:
                        table.reject(key, "no real images to check it on")
                if check is None and not table.is_rejected(key):
                    return name  # checked on the first real batch
                reason = table.rejection(key) or self._disagreement(engine, check)
                if reason is None:
                    table.mark_checked(key)
                else:
                    table.reject(key, reason)
                    engine = None
            if engine is None:
                self._fall_back(name, table.rejection(key))
                continue
            table.remember(key, engine)
            self._engine = engine
        if not self._announced and (self._engine is not None or self._planned == "eager"):
            self._announced = True
            logger.info("%s runs on the %s engine in %s.", self.backbone.name,
                        self.engine_name, self.precision)
        return self.engine_name

    def _fall_back(self, name: str, reason: str | None) -> None:
        """Plan the candidate after ``name``, which is not used."""
        if self._precision_option == "auto" and self.precision != "fp32" \
                and self.device.type == "cpu":
            # "auto" chose bf16 for this engine only: the fp32 engines are faster than autocast
            self.precision = "fp32"
            self._planned = auto_candidates(self.device, "fp32")[0]
        else:
            candidates = auto_candidates(self.device, self.precision)
            self._planned = candidates[candidates.index(name) + 1]
        logger.warning("The %s engine is not used (%s); %s runs the %s engine in %s instead.",
                       name, reason, self.backbone.name, self._planned, self.precision)

    def _disagreement(self, engine, batch: torch.Tensor) -> str | None:
        """None if ``engine`` gives eager fp32's features on (up to 2 images of) ``batch``."""
        check = batch[:2]
        min_cos, max_abs = compare_features(self._forward_eager(check, autocast=False),
                                            engine(check))
        if min_cos >= auto_min_cosine(self.precision):
            return None
        return (f"its features differ from eager fp32 (cosine {min_cos:.5f}, max abs diff"
                f" {max_abs:.3g})")

    def check_cached_width(self, cache, layer: str, features: np.ndarray | None) -> None:
        """Refuse cached rows whose width is not this model's (a mislabelled file)."""
        if features is not None and features.shape[1] != self.widths[layer]:
            raise CacheError(
                f"cache file {os.fspath(cache.path)!r} holds features of width "
                f"{features.shape[1]} for layer {layer!r}, but this model gives "
                f"{self.widths[layer]}: the file does not match its configuration, so it is "
                "refused. Delete it or point cache= at another file.")

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

    def _forward_eager(self, batch: torch.Tensor, autocast: bool = True
                       ) -> dict[str, np.ndarray]:
        x = batch.to(self.device, non_blocking=True)
        with torch.inference_mode(), (self._autocast() if autocast
                                      else contextlib.nullcontext()):
            outputs = self._net(x)
        return {name: v.float().cpu().numpy() for name, v in zip(self.layers, outputs)}

    def forward(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """Features of a uint8 batch ``(N, 3, H, W)``, one array per layer, rows in batch order.

        On a device out-of-memory error the batch is split in halves (and later batches are cut
        to the size that worked), down to one image; no row is lost or repeated.
        """
        if len(batch) == 0:
            return {name: np.empty((0, w), np.float32) for name, w in self.widths.items()}
        self.prepare_engine(batch)
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
                retry_failed: bool = False, progress: str | None = None) -> ExtractionResult:
        """Featurize images, reusing and filling the cache.

        Parameters
        ----------
        images : sequence or folder
            Anything :func:`featurize.images.inputs.as_sources` takes.
        batch_size : int, default=32
            Images per forward pass (halved automatically on out-of-memory).
        num_workers : int or None, default=None
            Threads decoding images (0: in the calling thread; None: one per core, at most
            8). featurize never starts processes of its own.
        cache : str, path-like, FeatureCache or None, default=None
            An HDF5 feature cache; None computes everything and stores nothing.
        on_error : {"raise", "nan"}, default="raise"
            ``"raise"``: an unreadable image raises :class:`ImageDecodeError` naming the file and
            the reason (the batches before it are already in the cache). ``"nan"``: its row is
            NaN, one :class:`FeatureExtractionWarning` gives the count, and the result's
            ``failures`` lists the rows.
        verbose : int, default=0
            ``>= 1`` shows a tqdm progress bar with images/s.
        progress : {"auto", "bar", "log", "none"}, default=None
            Overrides ``verbose``: ``"auto"`` is a bar on a terminal and otherwise an INFO line
            of the ``featurize.progress`` logger every 10 s (what the command line uses).
        retry_failed : bool, default=False
            Retry files the cache recorded as failed before (by default their recorded failure
            is reported again without re-reading them).

        Returns
        -------
        ExtractionResult
        """
        return extract_many([self], images, batch_size=batch_size, num_workers=num_workers,
                            cache=cache, on_error=on_error, verbose=verbose,
                            retry_failed=retry_failed, progress=progress)[0]

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
    pooling : {"avg", "max", "catavgmax", "gem", "flatten", "none"}, default="avg"
        Pooling of each layer's output.
    batch_size : int, default=32
        Images per forward pass.
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``...
    num_workers : int or None, default=None
        Threads decoding images (None: one per core, at most 8; 0: the calling thread).
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Forward-pass precision (``"auto"``: mixed precision on CUDA, bf16 on a CPU that
        computes it natively with OpenVINO, fp32 elsewhere; see :class:`Extractor`).
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
    engine : {"auto", "eager", "onnxruntime", "openvino", "torchscript", "compile"}, \
default="auto"
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

