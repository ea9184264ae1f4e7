"""The engines themselves: a :class:`~featurize.networks.layers.TruncatedNet` made fast.

Each engine takes a uint8 batch and returns one float32 array per layer; how each is built
(a frozen TorchScript trace, an ONNX export run by ONNX Runtime or compiled by OpenVINO,
``torch.compile``) is here. Which engine runs where, and the one entry point that builds
them, :func:`featurize.networks.runtimes.build_engine`, are in :mod:`featurize.networks.runtimes`.
ONNX Runtime and OpenVINO are optional and imported when their engine is built.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import queue
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from featurize.exceptions import BackboneError
from featurize.networks.layers import TruncatedNet

__all__ = ["Engine", "export_onnx"]

_ONNX_OPSET = 17


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules[name] = None
        return False


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


def export_onnx(net: nn.Module, example: torch.Tensor | tuple, *,
                 input_names: Sequence[str] = ("images",),
                 output_names: Sequence[str] | None = None) -> bytes:
    """The truncated network as an ONNX graph (uint8 ``images`` in, ``out0``... out, any
    batch size): what the ONNX Runtime and OpenVINO engines run. Also the export of a whole
    model (:mod:`classify.onnx_export`): any module, ``example`` a tensor per input, the batch
    axis of every input and output dynamic."""
    names = list(output_names or [f"out{i}" for i in range(len(net.layers))])
    examples = tuple(e.cpu() for e in (example if isinstance(example, tuple) else (example,)))
    buffer = io.BytesIO()
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            net, examples, buffer, dynamo=False, input_names=list(input_names),
            output_names=names, opset_version=_ONNX_OPSET, do_constant_folding=True,
            dynamic_axes={n: {0: "batch"} for n in [*input_names, *names]},
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

    graph = export_onnx(net, example)
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
    compiled = core.compile_model(core.read_model(export_onnx(net, example)), "CPU", {
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
