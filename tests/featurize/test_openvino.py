"""The OpenVINO engine, bf16 on CPUs that compute it natively, and the fallbacks.

Real embedded backbone (efficientnet_lite0 with its ImageNet weights), real images (the
bundled sample), real HDF5 caches. bf16 tests that need the CPU to compute bf16 skip with
the reason on a CPU without AMX or AVX-512 BF16 (OpenVINO would compute fp32 there); the
precision resolution and the cache keys are tested on every CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from featurize.exceptions import BackboneError
from featurize.extraction import Extractor, engine_table, extractor, resolve_precision
from featurize.networks.hardware import _linux_cpu_flags, cpu_has_native_bf16
from featurize.networks.layers import penultimate_module
from featurize.networks.runtimes import (
    auto_candidates,
    available_engines,
    build_engine,
    check_images,
    compare_features,
)
from featurize.storage.cache import FeatureCache
from featurize.storage.keys import config_id
from tests.support import in_forked_child

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
HAS_OPENVINO = "openvino" in available_engines(CPU)
NATIVE_BF16 = cpu_has_native_bf16()
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino (or onnx) not installed")
needs_bf16 = pytest.mark.skipif(
    not (HAS_OPENVINO and NATIVE_BF16),
    reason="OpenVINO bf16 is not computable here: no openvino, or a CPU without AMX or "
           "AVX-512 BF16 (OpenVINO would compute fp32)")
LAYERS = ["blocks.2", "penultimate"]


@pytest.fixture(scope="module")
def eager():
    """Eager fp32, the reference: efficientnet_lite0 with its real weights."""
    return Extractor("efficientnet_lite0", layer=LAYERS, device="cpu", precision="fp32",
                     engine="eager")


@pytest.fixture(scope="module")
def images(eager) -> torch.Tensor:
    """16 sample photos of the 4 classes, decoded and resized for lite0."""
    return check_images(eager.preprocessing, 16)


@pytest.fixture
def fresh_engines(monkeypatch):
    monkeypatch.setattr(engine_table, "TABLE", engine_table.EngineTable())


@pytest.fixture
def openvino_fails(monkeypatch):
    """Call it to make every OpenVINO engine build fail (as on a network it cannot compile)."""
    real = extractor.build_engine

    def build_engine(name, *args, **kwargs):
        if name == "openvino":
            raise BackboneError("simulated: OpenVINO cannot compile this network")
        return real(name, *args, **kwargs)

    return lambda: monkeypatch.setattr(extractor, "build_engine", build_engine)


def _build(eager, precision):
    return build_engine("openvino", eager.model, eager.layers,
                        penultimate_module(eager.model, eager.layer_infos), eager.preprocessing,
                        eager.pooling, CPU, precision=precision)


@pytest.mark.parametrize("precision", [
    pytest.param("fp32", marks=needs_openvino), pytest.param("bf16", marks=needs_bf16)])
def test_openvino_features_are_eager_fp32_features(eager, images, precision):
    reference = eager.forward(images)
    engine = _build(eager, precision)
    out = engine(images)
    assert list(out) == LAYERS
    for name in LAYERS:
        ref, got = reference[name], out[name]
        assert got.shape == ref.shape and got.dtype == np.float32
        min_cos, max_abs = compare_features({name: ref}, {name: got})
        scale = float(np.abs(ref).max())
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        if precision == "fp32":
            assert min_cos >= 0.9999 and max_abs <= 1e-3 * scale, (name, min_cos, max_abs)
        else:  # measured on these images: min 0.995-0.996, median 0.999
            assert min_cos >= 0.98 and np.median(cos) >= 0.997, (name, min_cos)
            assert max_abs > 1e-3 * scale  # bf16 did run (fp32 is 1e-6 off)
    # A row does not depend on the rows beside it: bit for bit, whatever the split.
    for name, row in engine(images[5:6]).items():
        np.testing.assert_array_equal(row[0], out[name][5])


@needs_openvino
def test_openvino_engine_can_be_called_from_threads(eager, images):
    engine = _build(eager, "bf16" if NATIVE_BF16 else "fp32")
    chunks = [images[i:i + 3] for i in range(0, 15, 3)] * 2
    alone = [engine(chunk) for chunk in chunks]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(engine, chunks))
    for a, b in zip(alone, together):
        for name in LAYERS:
            np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_cpu_follows_native_bf16(native):
    expected = "bf16" if native and HAS_OPENVINO else "fp32"
    assert resolve_precision("auto", CPU, native_bf16=native) == expected
    assert resolve_precision("auto", CPU, "openvino", native_bf16=native) == expected
    for engine in ("eager", "onnxruntime", "torchscript"):  # the reference, fp32-only engines
        assert resolve_precision("auto", CPU, engine, native_bf16=native) == "fp32"
    assert resolve_precision("bf16", CPU, native_bf16=native) == "bf16"  # asked: as asked
    assert auto_candidates(CPU, "bf16", native_bf16=native) == (
        ["openvino", "eager"] if native and HAS_OPENVINO else ["eager"])
    fp32 = auto_candidates(CPU, "fp32", native_bf16=native)
    assert fp32[-1] == "eager" and (("openvino" in fp32) == HAS_OPENVINO)


@pytest.mark.skipif(_linux_cpu_flags() is None, reason="no /proc/cpuinfo to compare with")
def test_native_bf16_detection_agrees_with_the_cpu_flags():
    flags = _linux_cpu_flags()
    assert cpu_has_native_bf16() == bool({"amx_bf16", "avx512_bf16"} & flags)


def test_default_cpu_extractor_runs_what_the_machine_computes_best():
    ex = Extractor(device="cpu")
    if NATIVE_BF16 and HAS_OPENVINO:
        assert (ex.precision, ex.engine_name) == ("bf16", "openvino")
        assert ex.layer_config("penultimate")["numerics"] == "openvino"
    else:
        assert ex.precision == "fp32" and ex.engine_name == auto_candidates(CPU, "fp32")[0]
        assert "numerics" not in ex.layer_config("penultimate")


def test_cache_keys_differ_between_fp32_and_bf16(tmp_path):
    paths = sorted(str(p) for p in (REPO / "featurize" / "sample_data" / "clothing4" / "test")
                   .rglob("*.jpg"))[:4]
    fp32 = Extractor(device="cpu", precision="fp32")
    bf16 = Extractor(device="cpu", precision="bf16")  # OpenVINO, or eager autocast
    key32, key16 = fp32.layer_config("penultimate"), bf16.layer_config("penultimate")
    assert config_id(key32) != config_id(key16)
    # fp32 engines share keys (float rounding); eager bf16 and OpenVINO bf16 do not.
    assert key32 == Extractor(device="cpu", precision="fp32", engine="eager").layer_config(
        "penultimate")
    eager16 = Extractor(device="cpu", precision="bf16", engine="eager").layer_config("penultimate")
    assert (eager16 == key16) == (bf16.engine_name == "eager")
    cache = tmp_path / "c.h5"
    a = fp32.extract(paths, cache=cache, num_workers=0)
    b = bf16.extract(paths, cache=cache, num_workers=0)
    assert (a.n_computed, b.n_computed, b.n_cached) == (4, 4, 0)  # never fp32 rows for bf16
    assert not np.array_equal(a.features, b.features)
    again = Extractor(device="cpu", precision="bf16").extract(paths, cache=cache, num_workers=0)
    assert again.n_cached == 4
    np.testing.assert_array_equal(again.features, b.features)


@needs_bf16
def test_openvino_bf16_keys_name_the_layers_read_together():
    """OpenVINO's bf16 rounding depends on the outputs compiled together: so does the key."""
    alone = Extractor(layer="penultimate", device="cpu", precision="bf16")
    both = Extractor(layer=LAYERS, device="cpu", precision="bf16")
    assert alone.layer_config("penultimate") != both.layer_config("penultimate")
    fp32 = [Extractor(layer=layer, device="cpu", precision="fp32").layer_config("penultimate")
            for layer in ("penultimate", LAYERS)]
    assert fp32[0] == fp32[1]


@needs_bf16
def test_auto_bf16_falls_back_to_fp32_before_any_key_when_openvino_fails(openvino_fails, caplog,
                                                                          fresh_engines):
    openvino_fails()
    ex = Extractor(device="cpu")
    assert (ex.precision, ex.engine_name) == ("bf16", "openvino")  # planned
    with caplog.at_level("INFO", logger="featurize.extraction"):
        config = ex.layer_config("penultimate")  # what the cache is keyed by: settled first
    assert config["precision"] == "fp32" and "numerics" not in config
    assert ex.engine_name == auto_candidates(CPU, "fp32")[0] and ex.precision == "fp32"
    assert "openvino engine is not used (simulated" in caplog.text
    assert f"runs the {ex.engine_name} engine in fp32 instead" in caplog.text
    with caplog.at_level("INFO", logger="featurize.extraction"):
        ex.forward(check_images(ex.preprocessing))
    assert f"runs on the {ex.engine_name} engine in fp32" in caplog.text
    # explicitly asked for: the error, not a fallback
    with pytest.raises(BackboneError, match="simulated"):
        Extractor(device="cpu", engine="openvino").layer_config("penultimate")


@needs_bf16
def test_an_openvino_engine_that_disagrees_is_dropped_before_the_keys(monkeypatch,
                                                                      fresh_engines):
    class Wrong:
        name = "openvino"

        def __call__(self, batch):
            return {"penultimate": np.ones((len(batch), 1280), np.float32)}

    real = extractor.build_engine
    monkeypatch.setattr(extractor, "build_engine", lambda name, *a, **k: Wrong()
                        if name == "openvino" else real(name, *a, **k))
    ex = Extractor(device="cpu")
    assert ex.layer_config("penultimate")["precision"] == "fp32"  # checked on real images
    assert ex.engine_name not in ("openvino", "eager")


_WITHOUT_OPENVINO = textwrap.dedent("""
    import json, logging, sys
    import numpy as np
    sys.modules["openvino"] = None  # as if it were not installed
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from featurize.images.datasets import sample_images
    from featurize.extraction import Extractor
    from featurize.networks.runtimes import available_engines
    paths = sorted(str(p) for p in sample_images().test.rglob("*.jpg"))[:2]
    ex = Extractor(device="cpu")
    result = ex.extract(paths, num_workers=0)
    try:
        Extractor(device="cpu", engine="openvino")
        error = None
    except Exception as exc:
        error = str(exc)
    print(json.dumps({"engine": ex.engine_name, "precision": ex.precision,
                      "available": available_engines("cpu"), "error": error,
                      "shape": list(result.features.shape),
                      "finite": bool(np.isfinite(result.features).all())}))
""")


def test_without_openvino_extraction_falls_back_and_says_which_engine_ran():
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_OPENVINO], check=False,
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "openvino" not in out["available"]
    assert out["precision"] == "fp32"  # no bf16 engine: fp32 is faster than emulated bf16
    assert out["engine"] == ([e for e in ("onnxruntime", "torchscript") if e in out["available"]]
                             + ["eager"])[0]
    assert out["finite"] and out["shape"] == [2, 1280]
    assert f"runs on the {out['engine']} engine in fp32" in proc.stderr
    assert "engine='openvino' is not available" in out["error"]
    assert "pip install openvino" in out["error"]


@needs_openvino
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_gets_an_error_or_another_engine_never_a_hang(eager, images):
    """OpenVINO hangs in a child forked after it ran (a user's multiprocessing pool under the
    'fork' start method): there the parent's engine raises, and "auto" picks fp32 engines."""
    engine = _build(eager, "fp32")
    engine(images[:2])  # OpenVINO's threads run in this process

    def in_the_child():  # a hang is killed by the alarm, and the parent sees no result
        out = {"available": available_engines(CPU)}
        try:
            engine(images[:2])
            out["parent_engine"] = "ran"
        except BackboneError as exc:
            out["parent_engine"] = str(exc)
        # (a model is not built here: torch's OpenMP threads did not follow either)
        out["precision"] = resolve_precision("auto", CPU)
        out["candidates"] = auto_candidates(CPU, "fp32")
        return out

    out = in_forked_child(in_the_child, alarm=120)
    assert "openvino" not in out["available"]
    assert "cannot run in process" in out["parent_engine"]
    assert out["precision"] == "fp32" and "openvino" not in out["candidates"]


@needs_bf16
def test_a_model_records_the_precision_that_ran(openvino_fails, monkeypatch, fresh_engines,
                                                tmp_path):
    """OpenVINO fails, auto falls back to fp32: the model says fp32, so predicting reads the
    rows training wrote instead of computing bf16 features the head never saw."""
    from classify.training import train_folder
    from featurize.images.datasets import sample_images

    real = extractor.build_engine
    openvino_fails()
    train = sample_images()["train"]
    cache = tmp_path / "c.h5"
    model = train_folder(train, backbones=["efficientnet_lite0"], layers=["penultimate"],
                         cache=cache, search="exhaustive", heads=["logreg"], n_repeats=1,
                         device="cpu")
    assert model.featurizer_config["precision"] == "fp32"
    monkeypatch.setattr(extractor, "build_engine", real)  # OpenVINO works again
    before = len(FeatureCache(cache).configurations())
    model.predict(sorted(str(p) for p in train.rglob("*.jpg"))[:4], cache=cache)
    assert len(FeatureCache(cache).configurations()) == before  # no bf16 configuration added
