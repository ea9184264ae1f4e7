"""Inference engines: the backbone truncated at the requested layers, made fast for one device.

:class:`featurize.extraction.Extractor` runs its forward pass through an *engine*; every
engine runs the same :class:`featurize.layers.TruncatedNet`:

``"eager"``
    The reference: the truncated PyTorch module run as it is, autocast on CUDA.
``"onnxruntime"``
    The truncated network (uint8 input, normalization, layers, pooling) exported to ONNX
    in memory and run by ONNX Runtime's CPU provider. The fastest fp32 engine on CPU
    (about 5-8x eager PyTorch for efficientnet_lite0 on a 2-core machine, see
    ``benchmarks/README.md``). Needs ``pip install "featurize[onnx]"``.
``"openvino"``
    The same exported ONNX graph, compiled by OpenVINO's CPU plugin in fp32 or bf16 (its
    ``INFERENCE_PRECISION_HINT``), with torch's thread count and as many parallel streams
    as OpenVINO finds best. In bf16 on a CPU that computes it natively (AMX or AVX-512 BF16,
    :func:`featurize.hardware.cpu_has_native_bf16`) 2.2-2.6x ONNX Runtime fp32. Part of
    the default install where OpenVINO has a wheel (Linux, macOS and Windows on x86-64;
    Linux and macOS on arm64). Safe to call from several threads at once: each call runs on
    infer requests of its own.
``"torchscript"``
    The truncated network traced with ``torch.jit.trace`` and frozen (constant weights,
    conv-BN folding, dead code removed), channels_last. About 1.5-2x eager on CPU.
``"compile"``
    ``torch.compile`` of the truncated network. Opt-in only (minutes to compile on a small
    CPU machine).
``"auto"``
    Decided by the configuration and the machine, never by the size of a call
    (:func:`auto_candidates`): on CPU in fp32, ``"onnxruntime"``, else ``"openvino"``, else
    ``"torchscript"``; on CPU in bf16, ``"openvino"`` where the CPU computes bf16 natively;
    elsewhere (CUDA, MPS, fp16, bf16 emulated) ``"eager"``, which runs autocast and
    channels_last there.

In fp32 every engine computes the same function as eager fp32 up to floating-point rounding
(cosine >= 0.999 is checked by ``tests/test_engine.py``), so the engine is not part of the
cache key: like a CPU and a GPU run of the same model, engines differ only by float rounding.
In reduced precision engines round differently (OpenVINO bf16 is not torch's bf16
autocast): :func:`engine_numerics` names such an engine, and the cache key holds the name.
An ``"auto"`` engine is checked against eager fp32 on real images (the first real batch, or
the bundled sample images when its numerics decide the cache key before any batch):
one that fails to build or disagrees is dropped for the next candidate (eager last).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import os
import queue
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from featurize.exceptions import BackboneError
from featurize.hardware import cpu_has_native_bf16
from featurize.layers import TruncatedNet
from featurize.options import ENGINES
from featurize.preprocessing import Preprocessing

__all__ = [
    "ENGINES",
    "Engine",
    "auto_candidates",
    "auto_min_cosine",
    "available_engines",
    "build_engine",
    "check_images",
    "check_precision",
    "compare_features",
    "engine_numerics",
]

logger = logging.getLogger(__name__)

#: An ``"auto"`` engine whose features have a cosine below this against eager fp32 (on a
#: check batch of real images) is not used. See :func:`auto_min_cosine` for bf16.
AUTO_MIN_COSINE = 0.9999
#: The same in bf16, whose 8-bit mantissa costs up to a hundredth of cosine: on the 120
#: sample images OpenVINO bf16 against eager fp32 has a median of 0.998-0.9995 and a minimum
#: of 0.995 (efficientnet_lite0) and 0.989 (lite2) (``benchmarks/README.md``).
AUTO_MIN_COSINE_BF16 = 0.97
_ONNX_OPSET = 17
#: Engines that run on the CPU only.
_CPU_ONLY = ("onnxruntime", "openvino")
#: Precisions an engine computes (the others: fp32 only; compile: any, under autocast).
_PRECISIONS = {"openvino": ("fp32", "bf16"), "compile": ("fp32", "bf16", "fp16")}


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
    if device.type == "cpu" and _has_module("onnx"):  # both run the ONNX export
        names += [name for name in _CPU_ONLY if _has_module(name)
                  and not (name == "openvino" and _forked_after_openvino())]
    if device.type in ("cpu", "cuda"):
        names.append("torchscript")
    names.append("compile")
    return names


def auto_candidates(device: torch.device, precision: str, *,
                    native_bf16: bool | None = None) -> list[str]:
    """Engines ``"auto"`` tries, best first (the last one is always ``"eager"``).

    Parameters
    ----------
    device : torch.device
    precision : {"fp32", "bf16", "fp16"}
        The resolved precision.
    native_bf16 : bool or None, default=None
        Whether the CPU computes bf16 natively; None detects it
        (:func:`featurize.hardware.cpu_has_native_bf16`). Without it OpenVINO would run fp32
        under a bf16 request, so bf16 stays with eager autocast (emulated, slow).

    Returns
    -------
    list of str
    """
    if device.type != "cpu":
        return ["eager"]
    if precision == "fp32":
        order = ("onnxruntime", "openvino", "torchscript")
    elif precision == "bf16" and (cpu_has_native_bf16() if native_bf16 is None
                                  else native_bf16):
        order = ("openvino",)
    else:
        order = ()
    installed = available_engines(device)
    return [name for name in order if name in installed] + ["eager"]


def engine_numerics(name: str, precision: str) -> str | None:
    """What the cache key says about an engine's rounding: None where it is eager's.

    In fp32 every engine is eager up to float rounding (None). In reduced precision, torch's
    autocast (eager, compile, CUDA) decides which ops run in bf16/fp16 (None, the keys of
    earlier versions); OpenVINO decides otherwise (``"openvino"``), so its rows have keys of
    their own. Its rows do not depend on the batch size or the thread count (bit for bit), but
    do on the set of layers compiled together, which the key then also names
    (:meth:`featurize.extraction.Extractor.layer_config`).
    """
    return "openvino" if name == "openvino" and precision != "fp32" else None


def auto_min_cosine(precision: str) -> float:
    """The agreement with eager fp32 that an ``"auto"`` engine must reach in ``precision``."""
    return AUTO_MIN_COSINE if precision == "fp32" else AUTO_MIN_COSINE_BF16


def check_images(preprocessing: Preprocessing, n: int = 2) -> torch.Tensor:
    """``n`` real images (the bundled sample), preprocessed: a check batch before any job's.

    Returns
    -------
    uint8 tensor of shape (n, 3, crop, crop)

    Raises
    ------
    FileNotFoundError
        The package was installed without its sample images.
    """
    from featurize.datasets import sample_images
    from featurize.decoding import load_image

    paths = sorted(sample_images().train.rglob("*.jpg"))
    step = max(1, len(paths) // n)  # different classes
    return torch.stack([preprocessing.to_uint8(load_image(path)) for path in paths[::step][:n]])


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


class _OpenVinoEngine(Engine):
    """An OpenVINO compiled model; a batch split in chunks run concurrently on its streams.

    Each call takes infer requests of its own from a pool (a request runs one inference at a
    time; a compiled model runs many), so threads can call the engine concurrently. The
    chunks of a batch (up to 4 per stream, of at least 4 images) run in parallel on
    OpenVINO's streams (``PERFORMANCE_HINT`` ``THROUGHPUT``): on 2 cores 2 streams of 1
    thread are 1.1-1.3x one stream of 2 threads (for the reason given in
    :class:`_OnnxRuntimeEngine`), and 8 chunks of 4 images 1.08-1.16x 2 chunks of 16
    (``benchmarks/README.md``). Rows do not depend on the split (bit for bit).
    """

    name = "openvino"

    def __init__(self, compiled, layers: Sequence[str], precision: str):
        super().__init__(layers)
        self.compiled = compiled
        self.precision = precision
        self.streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._pid = os.getpid()

    def _request(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self.compiled.create_infer_request()

    def run(self, batch: torch.Tensor) -> tuple:
        if os.getpid() != self._pid:  # an error, not a hang (see _forked_after_openvino)
            raise BackboneError(
                f"This OpenVINO engine was built in process {self._pid} and cannot run in"
                f" process {os.getpid()}, forked from it: OpenVINO hangs after fork. Build the"
                " Extractor in the child of a 'spawn' or 'forkserver' start method, or use"
                " engine='onnxruntime' (precision='fp32') in forked children.")
        array = np.ascontiguousarray(batch.cpu().numpy())
        chunks = np.array_split(array, max(1, min(len(array) // 4, 4 * self.streams)))
        requests = [self._request() for _ in chunks]
        for request, chunk in zip(requests, chunks):
            request.start_async({0: chunk})
        for request in requests:
            request.wait()
        # concatenate copies out of the requests' buffers before they are reused
        outputs = tuple(np.concatenate([r.get_output_tensor(i).data for r in requests])
                        for i in range(len(self.layers)))
        for request in requests:  # only requests that finished go back (not after an error)
            self._idle.put(request)
        return outputs


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


def _export_onnx(net: TruncatedNet, example: torch.Tensor) -> bytes:
    """The truncated network as an ONNX graph (uint8 ``images`` in, ``out0``... out, any
    batch size): what the ONNX Runtime and OpenVINO engines run."""
    names = [f"out{i}" for i in range(len(net.layers))]
    buffer = io.BytesIO()
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            net, (example.cpu(),), buffer, dynamo=False, input_names=["images"],
            output_names=names, opset_version=_ONNX_OPSET, do_constant_folding=True,
            dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
        )
    return buffer.getvalue()


def _missing(name: str, install: str) -> BackboneError:
    return BackboneError(
        f"engine={name!r} needs the {name} and onnx packages, which are not installed. Install"
        f" them with: {install} (or use engine='auto', which picks the best engine installed).")


def _build_onnxruntime(net: TruncatedNet, example: torch.Tensor, threads: int | None):
    if not (_has_module("onnxruntime") and _has_module("onnx")):
        raise _missing("onnxruntime", "pip install 'featurize[onnx]'")
    import onnxruntime as ort

    graph = _export_onnx(net, example)
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
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    return _OnnxRuntimeEngine(session, net.layers, parallel)


#: The process that started OpenVINO's runtime (its TBB thread pool), if one did.
_OPENVINO_PID: int | None = None


def _forked_after_openvino() -> bool:
    """True in a child forked from a process that ran OpenVINO: OpenVINO's thread pool does
    not survive ``fork`` and any OpenVINO call there hangs (seen with 2026.4), so such a child
    (a ``multiprocessing`` pool under the ``fork`` start method) uses another engine."""
    return _OPENVINO_PID is not None and _OPENVINO_PID != os.getpid()


def _import_openvino():
    """``import openvino`` without its import-time telemetry.

    ``import openvino`` also imports its model converter (``openvino.tools.ovc``), which sends
    a usage event to Google Analytics and, on Linux, starts a process to send it: a process
    started by featurize, which under ``spawn`` re-runs an unguarded user script. featurize
    needs only the runtime, so the converter is kept out of that first import; it imports
    normally afterwards (``from openvino.tools.ovc import convert_model``).
    """
    if "openvino" not in sys.modules:
        sys.modules["openvino.tools.ovc"] = None  # its import fails; openvino skips it
        try:
            import openvino  # noqa: F401
        finally:
            if "openvino.tools.ovc" in sys.modules and sys.modules["openvino.tools.ovc"] is None:
                del sys.modules["openvino.tools.ovc"]
    import openvino as ov

    return ov


def _build_openvino(net: TruncatedNet, example: torch.Tensor, threads: int | None,
                    precision: str):
    global _OPENVINO_PID
    if not (_has_module("openvino") and _has_module("onnx")):
        raise _missing("openvino", "pip install openvino onnx")
    if _forked_after_openvino():
        raise BackboneError(
            f"OpenVINO cannot run in this process: it was forked from process {_OPENVINO_PID},"
            " which had started OpenVINO, and OpenVINO hangs after fork. Use the 'spawn' or"
            " 'forkserver' start method, or engine='onnxruntime'.")
    _OPENVINO_PID = os.getpid()
    ov = _import_openvino()
    import openvino.properties as props
    import openvino.properties.hint as hints

    wanted = {"fp32": ov.Type.f32, "bf16": ov.Type.bf16}[precision]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(_export_onnx(net, example)), "CPU", {
        # explicit in fp32 too: OpenVINO's default on a CPU with AMX is bf16
        hints.inference_precision: wanted,
        props.inference_num_threads: threads or torch.get_num_threads(),
        hints.performance_mode: hints.PerformanceMode.THROUGHPUT,
    })
    got = compiled.get_property(hints.inference_precision)
    if got != wanted:  # a hint: without bf16 instructions OpenVINO computes f32 instead
        raise BackboneError(
            f"OpenVINO computes this network in {got} on this CPU, not {precision}: the CPU"
            " has no native bf16 (AMX or AVX-512 BF16). Use precision='fp32' (or 'auto').")
    return _OpenVinoEngine(compiled, net.layers, precision)


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
    name : {"onnxruntime", "openvino", "torchscript", "compile"}
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
        ``"openvino"`` runs fp32 or bf16 (natively only: see :func:`auto_candidates`),
        ``"compile"`` any precision (under autocast); the other engines fp32 only.
    channels_last : bool, default=True
        Memory format of the traced network (torchscript and compile).
    threads : int or None, default=None
        Threads of ONNX Runtime and OpenVINO; None follows ``torch.get_num_threads()``.
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
        raise BackboneError(f"build_engine() builds 'onnxruntime', 'openvino', 'torchscript' or"
                            f" 'compile'; got {name!r}.")
    check_precision(name, precision)
    if name in _CPU_ONLY and device.type != "cpu":
        raise BackboneError(f"engine={name!r} runs on the CPU only; use engine='auto' or"
                            " 'eager' on a GPU.")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    start = time.perf_counter()
    channels_last = channels_last and name not in _CPU_ONLY  # an exported graph: NCHW
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
        elif name == "openvino":
            engine = _build_openvino(net, example, threads, precision)
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
    logger.info("Built the %s engine (%s) in %.1f s.", name, precision, engine.build_seconds)
    return engine


def check_precision(name: str, precision: str) -> None:
    """Raise BackboneError if engine ``name`` cannot run ``precision`` at all."""
    allowed = _PRECISIONS.get(name, ("fp32",))
    if name not in ("auto", "eager") and precision not in allowed:
        raise BackboneError(
            f"engine={name!r} runs in {' or '.join(allowed)} only; got precision={precision!r}."
            " Use engine='auto' or 'eager' (autocast), or another precision.")


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
