"""The CUDA path: autocast, channels_last, pinned memory, GPU engines. Skipped without CUDA.

A real CUDA out-of-memory is hard to provoke reliably; the batch halving is tested with a
simulated one in ``tests/featurize/test_extraction.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featurize.extraction import Extractor
from featurize.networks.runtimes import auto_candidates, compare_features

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cpu_reference(some_jpegs) -> np.ndarray:
    """efficientnet_lite0 (real weights) penultimate features, eager fp32 on the CPU."""
    ex = Extractor("efficientnet_lite0", device="cpu", engine="eager")
    return ex.extract(some_jpegs, num_workers=0).features


def _bf16_ok() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@pytest.mark.parametrize("precision", [
    "fp32", "fp16",
    pytest.param("bf16", marks=pytest.mark.skipif(not _bf16_ok(),
                                                  reason="needs a CUDA GPU with bf16")),
])
def test_cuda_precisions_agree_with_fp32_on_cpu(precision, some_jpegs, cpu_reference):
    ex = Extractor("efficientnet_lite0", device="cuda", precision=precision)
    assert ex.channels_last and ex.engine_name == "eager"
    feats = ex.extract(some_jpegs, num_workers=2, batch_size=5).features
    min_cos, _ = compare_features({"x": cpu_reference}, {"x": feats})
    assert min_cos >= (0.999 if precision == "fp32" else 0.99), (precision, min_cos)


def test_auto_precision_and_pinned_non_blocking_batches(some_jpegs, cpu_reference):
    ex = Extractor("efficientnet_lite0", device="cuda")
    assert ex.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert auto_candidates(ex.device, ex.precision) == ["eager"]
    pinned = []
    real = ex._forward_once

    def spy(batch):
        pinned.append(batch.is_pinned())
        return real(batch)

    ex._forward_once = spy
    feats = ex.extract(some_jpegs, num_workers=2, batch_size=4).features
    assert pinned and all(pinned)  # DataLoader(pin_memory=True) on CUDA
    assert compare_features({"x": cpu_reference}, {"x": feats})[0] >= 0.99


def test_multi_layer_pooling_on_the_gpu(some_jpegs):
    cpu = Extractor("resnet18", None, layer=["layer2", "penultimate"], pooling="avgmax",
                    device="cpu", engine="eager")
    gpu = Extractor("resnet18", None, layer=["layer2", "penultimate"], pooling="avgmax",
                    device="cuda", precision="fp32")
    a = cpu.extract(some_jpegs[:6], num_workers=0).features
    b = gpu.extract(some_jpegs[:6], num_workers=0).features
    assert a.shape == b.shape == (6, 2 * (128 + 512))
    assert compare_features({"x": a}, {"x": b})[0] >= 0.999


def test_torchscript_engine_on_cuda(some_jpegs):
    cpu = Extractor("resnet18", None, layer=["layer3", "penultimate"], device="cpu",
                    engine="eager")
    gpu = Extractor("resnet18", None, layer=["layer3", "penultimate"], device="cuda",
                    precision="fp32", engine="torchscript")
    b = gpu.extract(some_jpegs[:6], num_workers=0).features
    assert gpu.engine_name == "torchscript"
    a = cpu.extract(some_jpegs[:6], num_workers=0).features
    assert compare_features({"x": a}, {"x": b})[0] >= 0.999


@pytest.mark.slow
def test_compile_engine_on_cuda(some_jpegs, cpu_reference):
    ex = Extractor("efficientnet_lite0", device="cuda", engine="compile")
    feats = ex.extract(some_jpegs, num_workers=0).features
    assert compare_features({"x": cpu_reference}, {"x": feats})[0] >= 0.99


@pytest.mark.slow
def test_throughput_benchmark_runs_on_cuda(tmp_path):
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick",
                    "--device", "cuda", "--json-out", str(out)], check=True, cwd=REPO,
                   timeout=600)
    assert '"device": "cuda' in out.read_text()
