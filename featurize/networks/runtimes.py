"""Inference engines: the backbone truncated at the requested layers, made fast for one device.

:class:`featurize.extraction.extractor.Extractor` runs its forward pass through an *engine*; every
engine runs the same :class:`featurize.networks.layers.TruncatedNet`:

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
    :func:`featurize.networks.hardware.cpu_has_native_bf16`) 2.2-2.6x ONNX Runtime fp32. Part of
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
(cosine >= 0.999 is checked by ``tests/featurize/test_engine.py``), so the engine is not part of the
cache key: like a CPU and a GPU run of the same model, engines differ only by float rounding.
In reduced precision engines round differently (OpenVINO bf16 is not torch's bf16
autocast): :func:`engine_numerics` names such an engine, and the cache key holds the name.
An ``"auto"`` engine is checked against eager fp32 on real images (the first real batch, or
the bundled sample images when its numerics decide the cache key before any batch):
one that fails to build or disagrees is dropped for the next candidate (eager last).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from featurize.exceptions import BackboneError
from featurize.images.datasets import sample_images
from featurize.images.decoding import load_image
from featurize.images.preprocessing import Preprocessing
from featurize.networks.engines import (
    Engine,
    _build_compile,
    _build_onnxruntime,
    _build_openvino,
    _build_torchscript,
    _example,
    _forked_after_openvino,
    _has_module,
    export_onnx,
)
from featurize.networks.hardware import cpu_has_native_bf16
from featurize.networks.layers import TruncatedNet
from featurize.options import ENGINES, PRECISIONS, check_choice

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
    "resolve_precision",
]

logger = logging.getLogger(__name__)

#: The old name of :func:`featurize.networks.engines.export_onnx` (``classify.onnx_export``).
_export_onnx = export_onnx

#: An ``"auto"`` engine whose features have a cosine below this against eager fp32 (on a
#: check batch of real images) is not used. See :func:`auto_min_cosine` for bf16.
AUTO_MIN_COSINE = 0.9999
#: The same in bf16, whose 8-bit mantissa costs up to a hundredth of cosine: on the 120
#: sample images OpenVINO bf16 against eager fp32 has a median of 0.998-0.9995 and a minimum
#: of 0.995 (efficientnet_lite0) and 0.989 (lite2) (``benchmarks/README.md``).
AUTO_MIN_COSINE_BF16 = 0.97
#: Engines that run on the CPU only.
_CPU_ONLY = ("onnxruntime", "openvino")
#: Precisions an engine computes (the others: fp32 only; compile: any, under autocast).
_PRECISIONS = {"openvino": ("fp32", "bf16"), "compile": ("fp32", "bf16", "fp16")}


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
        (:func:`featurize.networks.hardware.cpu_has_native_bf16`). Without it OpenVINO would run
        fp32 under a bf16 request, so bf16 stays with eager autocast (emulated, slow).

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
    (:meth:`featurize.extraction.extractor.Extractor.layer_config`).
    """
    return "openvino" if name == "openvino" and precision != "fp32" else None


def auto_min_cosine(precision: str) -> float:
    """The agreement with eager fp32 that an ``"auto"`` engine must reach in ``precision``."""
    return AUTO_MIN_COSINE if precision == "fp32" else AUTO_MIN_COSINE_BF16


def resolve_precision(precision: str, device: torch.device, engine: str = "auto", *,
                      native_bf16: bool | None = None) -> str:
    """The precision ``"auto"`` stands for on ``device`` with ``engine``.

    On CUDA bf16 where the GPU supports it, else fp16. On the CPU bf16 where it computes bf16
    natively and OpenVINO runs it (``engine`` ``"auto"`` or ``"openvino"``, OpenVINO
    installed), fp32 elsewhere: emulated bf16 is slower than fp32, and the other CPU engines
    are fp32 only. An engine that then fails falls back to fp32
    (:meth:`featurize.extraction.extractor.Extractor.prepare_engine`).

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16", "fp16"}
    device : torch.device
    engine : str, default="auto"
    native_bf16 : bool or None, default=None
        Whether the CPU computes bf16 natively; None detects it
        (:func:`featurize.networks.hardware.cpu_has_native_bf16`).

    Returns
    -------
    str
    """
    check_choice("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if (device.type == "cpu" and engine in ("auto", "openvino")
            and auto_candidates(device, "bf16", native_bf16=native_bf16)[0] == "openvino"):
        return "bf16"
    return "fp32"


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
    paths = sorted(sample_images().train.rglob("*.jpg"))
    step = max(1, len(paths) // n)  # different classes
    return torch.stack([preprocessing.to_uint8(load_image(path)) for path in paths[::step][:n]])


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
