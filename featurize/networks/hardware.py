"""The machine: the device a network runs on, and what its CPU computes natively (detected,
never guessed from a model name)."""

from __future__ import annotations

import functools
import logging
import platform

import torch

__all__ = ["cpu_has_native_bf16", "resolve_device"]

logger = logging.getLogger(__name__)

#: /proc/cpuinfo flags of the x86 instructions that compute bf16 (Intel AMX, AVX-512 BF16).
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 AMX-BF16 or AVX-512 BF16).

    Asks PyTorch's CPU feature detection (cpuinfo, which also checks that the operating
    system enabled the registers), and the kernel's CPU flags where PyTorch cannot say. A CPU
    without these instructions (AVX2 only, Apple silicon, other ARM CPUs) can still run bf16,
    but emulated and slower than fp32, so it answers False.

    Returns
    -------
    bool
    """
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported",
                                                     "_is_avx512_bf16_supported")]
    if all(callable(check) for check in checks):
        return any(bool(check()) for check in checks)
    flags = _linux_cpu_flags()
    if flags is None:
        logger.info("Cannot tell whether this %s CPU computes bf16 natively; assuming not.",
                    platform.machine())
        return False
    return any(flag in flags for flag in _BF16_FLAGS)


def _linux_cpu_flags() -> set[str] | None:
    """The ``flags`` of the first CPU in /proc/cpuinfo, or None where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return None


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


