"""Inference engines: the backbone truncated at the requested layers, made fast for one device.

:class:`featurize.extraction.Extractor` runs its forward pass through an *engine*; every
engine runs the same :class:`featurize.layers.TruncatedNet`:

``"eager"``
    The reference: the truncated PyTorch module run as it is, autocast on CUDA.
``"onnxruntime"``
    The truncated network (uint8 input, normalization, layers, pooling) exported to ONNX
    in memory and run by ONNX Runtime's CPU provider. The fastest engine on CPU by far
    (about 5-8x eager PyTorch for efficientnet_lite0 on a 2-core machine, see
    ``benchmarks/README.md``). Needs ``pip install "featurize[onnx]"``.
``"torchscript"``
    The truncated network traced with ``torch.jit.trace`` and frozen (constant weights,
    conv-BN folding, dead code removed), channels_last. About 1.5-2x eager on CPU.
``"compile"``
    ``torch.compile`` of the truncated network. Opt-in only (minutes to compile on a small
    CPU machine).
``"auto"``
    Decided by the configuration and the machine, never by the size of a call: on CPU in
    fp32, ``"onnxruntime"`` when installed, else ``"torchscript"``; elsewhere (CUDA, MPS,
    reduced precision) ``"eager"``, which already runs autocast and channels_last there.

Every engine computes the same function as eager fp32 up to floating-point rounding (cosine
>= 0.999 is checked by ``tests/test_engine.py``). An ``"auto"`` engine is checked against
eager on the first real batch it gets (preprocessed images, not noise): one that fails to
build or disagrees is dropped for the next candidate (eager last). The engine is not part of
the cache key: like a CPU and a GPU run of the same model, engines differ only by float
rounding.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from featurize.exceptions import BackboneError
from featurize.layers import TruncatedNet
from featurize.options import ENGINES
from featurize.preprocessing import Preprocessing

__all__ = [
    "ENGINES",
    "Engine",
    "auto_candidates",
    "available_engines",
    "build_engine",
    "compare_features",
]

logger = logging.getLogger(__name__)

#: An ``"auto"`` engine whose features have a cosine below this against eager (on a check
#: batch at build time) is not used.
AUTO_MIN_COSINE = 0.9999
_ONNX_OPSET = 17


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules[name] = None
        return False


def available_engines(device: torch.device | str = "cpu") -> list[str]:
    """Engines that can run on ``device`` with the packages installed here.

    Parameters
    ----------
    device : torch.device or str, default="cpu"

    Returns
    -------
    list of str
    """
    device = torch.device(device)
    names = ["eager"]
    if device.type == "cpu" and _has_module("onnxruntime") and _has_module("onnx"):
        names.append("onnxruntime")
    if device.type in ("cpu", "cuda"):
        names.append("torchscript")
    names.append("compile")
    return names


def auto_candidates(device: torch.device, precision: str) -> list[str]:
    """Engines ``"auto"`` tries, best first (the last one is always ``"eager"``)."""
    if device.type != "cpu" or precision != "fp32":
        return ["eager"]
    return [name for name in ("onnxruntime", "torchscript") if name in available_engines(device)] \
        + ["eager"]


class Engine:
    """A built engine: ``engine(uint8 batch) -> {layer: float32 ndarray}``.

    Attributes
    ----------
    name : str
        One of :data:`ENGINES` (never ``"auto"``).
    layers : list of str
    build_seconds : float
        Time it took to build (trace, export, compile and warm up).
    """

    name = "engine"

    def __init__(self, layers: Sequence[str]):
        self.layers = list(layers)
        self.build_seconds = 0.0

    def run(self, batch: torch.Tensor) -> tuple:
        """Return one array-like per layer (subclasses)."""
        raise NotImplementedError

    def __call__(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """Features of a uint8 batch ``(N, 3, H, W)``: ``{layer: float32 array}``."""
        outputs = self.run(batch)
        return {name: _to_numpy(value) for name, value in zip(self.layers, outputs)}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} layers={self.layers}>"


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


class _TorchEngine(Engine):
    def __init__(self, name: str, module, layers: Sequence[str], device: torch.device,
                 autocast_dtype: torch.dtype | None = None):
        super().__init__(layers)
        self.name = name
        self.module = module
        self.device = device
        self.autocast_dtype = autocast_dtype

    def run(self, batch: torch.Tensor) -> tuple:
        autocast = (contextlib.nullcontext() if self.autocast_dtype is None
                    else torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype))
        with torch.inference_mode(), autocast:
            return self.module(batch.to(self.device, non_blocking=True))


class _OnnxRuntimeEngine(Engine):
    """ONNX Runtime, a batch split in chunks run concurrently by ``parallel`` threads.

    Concurrent ``session.run`` calls on chunks of the batch (each with few intra-op threads)
    use the cores better than one call with many intra-op threads on a small or busy machine:
    an op's threads wait for each other at every layer, so one thread preempted by a decoding
    worker stalls the others, while independent chunks only meet once per batch. Rows do not
    depend on how the batch is split.
    """

    name = "onnxruntime"

    def __init__(self, session, layers: Sequence[str], parallel: int = 1):
        super().__init__(layers)
        self.session = session
        self.parallel = parallel
        self._input = session.get_inputs()[0].name
        self._pool = None
        if parallel > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(parallel, thread_name_prefix="featurize-ort")

    def _run_one(self, array: np.ndarray) -> list:
        return self.session.run(None, {self._input: array})

    def run(self, batch: torch.Tensor) -> tuple:
        array = np.ascontiguousarray(batch.numpy() if batch.device.type == "cpu"
                                     else batch.cpu().numpy())
        if self._pool is None or len(array) < 2:
            return tuple(self._run_one(array))
        chunks = np.array_split(array, min(len(array), 2 * self.parallel))
        parts = list(self._pool.map(self._run_one, chunks))
        return tuple(np.concatenate([part[i] for part in parts]) for i in range(len(self.layers)))

    def __del__(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False)


@contextlib.contextmanager
def _quiet():
    """Silence the tracer's and exporters' warnings (TracerWarning, deprecations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _example(size: int, device: torch.device, n: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                         generator=generator).to(device)


def _build_torchscript(net: TruncatedNet, example: torch.Tensor, device: torch.device):
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    return _TorchEngine("torchscript", frozen, net.layers, device)


def _build_onnxruntime(net: TruncatedNet, example: torch.Tensor, threads: int | None):
    if not (_has_module("onnxruntime") and _has_module("onnx")):
        raise BackboneError(
            "engine='onnxruntime' needs the onnxruntime and onnx packages, which are not"
            " installed. Install them with: pip install 'featurize[onnx]' (or use"
            " engine='auto', which picks the best engine installed)."
        )
    import onnxruntime as ort

    names = [f"out{i}" for i in range(len(net.layers))]
    buffer = io.BytesIO()
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            net, (example.cpu(),), buffer, dynamo=False, input_names=["images"],
            output_names=names, opset_version=_ONNX_OPSET, do_constant_folding=True,
            dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
        )
    threads = threads or torch.get_num_threads()
    # Up to 4 concurrent chunks, the remaining threads inside each (2 cores: 2 x 1 thread).
    parallel = max(1, min(threads, 4))
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads // parallel)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads spinning would steal the CPU from the data-loader workers.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(buffer.getvalue(), options,
                                   providers=["CPUExecutionProvider"])
    return _OnnxRuntimeEngine(session, net.layers, parallel)


def _build_compile(net: TruncatedNet, device: torch.device, autocast_dtype):
    module = torch.compile(net.to(device))
    return _TorchEngine("compile", module, net.layers, device, autocast_dtype)


def build_engine(name: str, model: nn.Module, layers: Sequence[str], penultimate: str | None,
                 preprocessing: Preprocessing, pooling: str, device: torch.device | str = "cpu",
                 *, precision: str = "fp32", channels_last: bool = True,
                 threads: int | None = None, warmup: int = 1) -> Engine:
    """Build one engine (not ``"auto"`` nor ``"eager"``, which the Extractor runs itself).

    Parameters
    ----------
    name : {"onnxruntime", "torchscript", "compile"}
    model : torch.nn.Module
        The full network in eval mode (not modified).
    layers : list of str
        Validated layer names, in output order.
    penultimate : str or None
        Module whose input is the ``"penultimate"`` layer.
    preprocessing : Preprocessing
    pooling : str
    device : torch.device or str, default="cpu"
    precision : {"fp32", "bf16", "fp16"}, default="fp32"
        Only ``"compile"`` runs reduced precision (under autocast); the traced engines are
        fp32 only.
    channels_last : bool, default=True
        Memory format of the traced network (torchscript and compile).
    threads : int or None, default=None
        Intra-op threads of ONNX Runtime; None follows ``torch.get_num_threads()``.
    warmup : int, default=1
        Forward passes on a 2-image batch after building (a graph that cannot take another
        batch size fails here).

    Returns
    -------
    Engine

    Raises
    ------
    BackboneError
        The engine is unknown, needs a package that is missing, or the network cannot be
        traced or exported (the message has the reason).
    """
    device = torch.device(device)
    if name not in ENGINES or name in ("auto", "eager"):
        raise BackboneError(f"build_engine() builds 'onnxruntime', 'torchscript' or 'compile';"
                            f" got {name!r}.")
    if precision != "fp32" and name != "compile":
        raise BackboneError(f"engine={name!r} runs in fp32 only; got precision={precision!r}."
                            " Use engine='eager' (autocast) or precision='fp32'.")
    if name == "onnxruntime" and device.type != "cpu":
        raise BackboneError("engine='onnxruntime' runs on the CPU only; use engine='auto' or"
                            " 'eager' on a GPU.")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    start = time.perf_counter()
    channels_last = channels_last and name != "onnxruntime"
    copy_ = copy.deepcopy(model).eval()  # the caller's (shared) model keeps its memory format
    if channels_last:
        copy_ = copy_.to(memory_format=torch.channels_last)
    net = TruncatedNet(copy_, layers, penultimate, preprocessing, pooling,
                       channels_last=channels_last).to(device)
    # Traced with one image, checked and warmed up with two: a batch size baked into the
    # graph fails the warm-up (and "auto"'s check) instead of passing silently.
    example = _example(preprocessing.crop_size, device, n=1)
    try:
        if name == "torchscript":
            engine = _build_torchscript(net, example, device)
        elif name == "onnxruntime":
            engine = _build_onnxruntime(net, example, threads)
        else:
            engine = _build_compile(net, device, autocast_dtype)
        check = _example(preprocessing.crop_size, device, n=2)
        for _ in range(warmup if name != "compile" else 0):  # compile: at the first batch
            engine(check)
    except BackboneError:
        raise
    except Exception as exc:  # tracers and exporters raise many types for unsupported models
        raise BackboneError(f"Cannot build the {name!r} engine for this network:"
                            f" {type(exc).__name__}: {exc}") from exc
    engine.build_seconds = time.perf_counter() - start
    logger.info("Built the %s engine in %.1f s.", name, engine.build_seconds)
    return engine


def compare_features(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, float]:
    """Smallest row cosine and largest absolute difference between two feature dicts.

    Parameters
    ----------
    a, b : dict of str to ndarray
        ``{layer: (n, ...)}`` with the same keys and shapes.

    Returns
    -------
    min_cosine : float
        Over every row of every layer (1.0 for two all-zero rows; NaN rows give -1).
    max_abs_diff : float
    """
    min_cos, max_abs = 1.0, 0.0
    for name in a:
        x = np.asarray(a[name], np.float64).reshape(len(a[name]), -1)
        y = np.asarray(b[name], np.float64).reshape(len(b[name]), -1)
        if x.shape != y.shape:
            return -1.0, float("inf")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            return -1.0, float("inf")
        max_abs = max(max_abs, float(np.abs(x - y).max(initial=0.0)))
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        dots = (x * y).sum(axis=1)
        both_zero = norms == 0
        cos = np.where(both_zero, 1.0, dots / np.where(both_zero, 1.0, norms))
        min_cos = min(min_cos, float(cos.min(initial=1.0)))
    return min_cos, max_abs
