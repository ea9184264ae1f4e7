"""Optimised engines give the features of eager fp32; "auto" picks, checks and falls back.

Builds are the slow part (a trace or an ONNX export, seconds each on a small machine), so each
engine is built once per backbone with a multi-layer request that covers an early layer, a
middle one and the penultimate embedding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featurize.exceptions import BackboneError
from featurize.extraction import Extractor, engine_table, extractor
from featurize.images.data import Decoder, collate, resize_crop
from featurize.networks.layers import TruncatedNet, penultimate_module
from featurize.networks.runtimes import (
    auto_candidates,
    available_engines,
    build_engine,
    compare_features,
)
from featurize.options import ENGINES
from featurize.storage import keys
from featurize.storage.cache import content_key
from featurize.storage.keys import file_content_key

CPU = torch.device("cpu")
FAST = [name for name in ("onnxruntime", "openvino", "torchscript")
        if name in available_engines(CPU)]
#: backbone, weights, layers (one multi-layer request: early, middle, penultimate)
CASES = {
    "efficientnet_lite0": ("DEFAULT", ["blocks.2", "blocks.10", "penultimate"]),
    "resnet18": (None, ["layer1", "layer3", "penultimate"]),
}


@pytest.fixture(scope="module")
def batch(some_jpegs) -> torch.Tensor:
    """The twelve real JPEGs, decoded and resized as the extractor does (224 px)."""
    from featurize.networks.backbones import load_backbone

    prep = load_backbone("resnet18", None).preprocessing
    items = [Decoder(some_jpegs, [prep])(i) for i in range(12)]
    return collate(items)[1]


#: The engine "auto" picks here on both backbones; the other fast engines on resnet18 only
#: (each build costs seconds).
PAIRS = [(backbone, engine) for backbone in CASES for engine in FAST
         if engine == FAST[0] or backbone == "resnet18"]


@pytest.fixture(scope="module")
def eagers() -> dict:
    return {}


@pytest.mark.parametrize("backbone,engine", PAIRS)
def test_engine_matches_eager_fp32(backbone, engine, batch, eagers):
    if backbone not in eagers:
        weights, layers = CASES[backbone]
        eagers[backbone] = Extractor(backbone, weights, layer=layers, device="cpu",
                                     engine="eager")
    eager = eagers[backbone]
    reference = eager.forward(batch)
    built = build_engine(engine, eager.model, eager.layers,
                         penultimate_module(eager.model, eager.layer_infos), eager.preprocessing,
                         eager.pooling, CPU)
    out = built(batch)
    assert list(out) == eager.layers
    for name in eager.layers:
        assert out[name].shape == reference[name].shape and out[name].dtype == np.float32
        min_cos, max_abs = compare_features({name: reference[name]}, {name: out[name]})
        scale = float(np.abs(reference[name]).max())
        assert min_cos >= 0.999, (engine, name, min_cos)
        assert max_abs <= 1e-3 * scale, (engine, name, max_abs, scale)
    # Rows do not depend on the batch they are in (chunked and single-image runs agree).
    alone = built(batch[:1])
    for name in eager.layers:
        np.testing.assert_allclose(alone[name][0], out[name][0], rtol=1e-4,
                                   atol=1e-4 * float(np.abs(out[name]).max()))


def test_auto_default_extractor_matches_eager_on_files(some_jpegs):
    """The default path (efficientnet_lite0, penultimate, engine="auto") end to end, in fp32
    (the default precision on a CPU without native bf16; bf16: tests/featurize/test_openvino.py)."""
    auto = Extractor(device="cpu", precision="fp32")
    # decided by the configuration and the machine, before any image is seen
    assert auto.engine_name == auto_candidates(CPU, "fp32")[0]
    fast = auto.extract(some_jpegs, num_workers=0).features
    assert auto.engine_name == auto_candidates(CPU, "fp32")[0]
    eager = Extractor(device="cpu", engine="eager")
    ref = eager.extract(some_jpegs, num_workers=0).features
    min_cos, max_abs = compare_features({"x": ref}, {"x": fast})
    assert min_cos >= 0.999 and max_abs <= 1e-3 * float(np.abs(ref).max())
    assert eager.engine_name == "eager"
    # Engines differ by float rounding only: one cache configuration serves both.
    assert auto.layer_config("penultimate") == eager.layer_config("penultimate")


@pytest.fixture
def fresh_engines(monkeypatch):
    """An empty per-process engine memo for this test."""
    monkeypatch.setattr(engine_table, "TABLE", engine_table.EngineTable())


def test_engines_are_built_once_per_configuration(rgb_arrays, fresh_engines, monkeypatch):
    built = []
    real = extractor.build_engine

    def counting(*args, **kwargs):
        built.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(extractor, "build_engine", counting)
    for _ in range(3):
        Extractor("resnet18", None, layer="layer1", device="cpu").extract(rgb_arrays[:2])
    assert len(built) == (1 if FAST else 0)


def test_auto_falls_back_when_a_build_fails(rgb_arrays, monkeypatch, fresh_engines):
    def broken(name, *args, **kwargs):
        raise BackboneError(f"simulated: {name} cannot trace this network")

    monkeypatch.setattr(extractor, "build_engine", broken)
    ex = Extractor("resnet18", None, layer="layer1", device="cpu")
    assert ex.prepare_engine() == "eager"
    assert ex.engine_name == "eager"
    assert ex.extract(rgb_arrays[:2]).features.shape == (2, 64)


def test_auto_rejects_an_engine_that_disagrees_with_eager_on_real_images(monkeypatch, batch,
                                                                         fresh_engines):
    class Wrong:
        name = "torchscript"

        def __call__(self, batch):
            return {"penultimate": np.ones((len(batch), 512), np.float32)}

    monkeypatch.setattr(extractor, "build_engine", lambda *a, **k: Wrong())
    ex = Extractor("resnet18", None, device="cpu", precision="fp32")
    ex.prepare_engine()  # built, but not checked before a real batch comes
    out = ex.forward(batch[:3])  # the first real batch: checked, rejected, eager runs
    assert ex.engine_name == "eager"
    assert not np.allclose(out["penultimate"], 1.0)


def test_explicit_engine_errors():
    with pytest.raises(ValueError, match="'engine' option"):
        Extractor("resnet18", None, device="cpu", engine="tensorrt")  # "one of [...]"
    with pytest.raises(BackboneError, match="fp32 only"):
        Extractor("resnet18", None, device="cpu", precision="bf16", engine="torchscript")
    assert set(ENGINES) >= set(available_engines(CPU))
    assert auto_candidates(CPU, "bf16", native_bf16=False) == ["eager"]
    assert auto_candidates(CPU, "fp16", native_bf16=True) == ["eager"]
    assert auto_candidates(torch.device("meta"), "fp32") == ["eager"]
    with pytest.raises(BackboneError, match="onnxruntime' runs on the CPU only"):
        build_engine("onnxruntime", torch.nn.Identity(), [], None, None, "avg", "meta")


def test_truncated_net_leaves_the_model_alone():
    ex = Extractor("resnet18", None, layer="layer2", device="cpu", engine="eager")
    before = {k: v.clone() for k, v in ex.model.state_dict().items()}
    net = TruncatedNet(ex.model, ["layer2"], None, ex.preprocessing, "avg")
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        (out,) = net(x)
    assert out.shape == (2, 128)
    assert not ex.model.layer2._forward_hooks  # hooks live only during a forward pass
    for k, v in ex.model.state_dict().items():
        assert torch.equal(v, before[k])
    built = build_engine("torchscript", ex.model, ["layer2"], None, ex.preprocessing, "avg", CPU)
    assert built(x)["layer2"].shape == (2, 128)
    assert ex.model.conv1.weight.is_contiguous()  # the engine's channels_last is on a copy


def test_compare_features():
    a = {"x": np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)}
    b = {"x": np.array([[1.0, 1e-3], [0.0, 0.0]], np.float32)}
    min_cos, max_abs = compare_features(a, b)
    assert min_cos > 0.9999 and max_abs == pytest.approx(1e-3)
    assert compare_features(a, {"x": np.full((2, 2), np.nan, np.float32)})[0] == -1.0


def test_resize_crop_matches_pil(some_jpegs):
    from featurize.images.decoding import load_image
    from featurize.networks.backbones import load_backbone

    for name in ("efficientnet_lite0", "resnet18"):  # bicubic 256->224, bilinear 256->224
        prep = load_backbone(name, None).preprocessing
        for path in some_jpegs[:6]:
            image = load_image(path, draft_size=prep.draft_size)
            fast, pil = resize_crop(image, prep), prep.to_uint8(image)
            assert fast.shape == pil.shape == (3, prep.crop_size, prep.crop_size)
            assert fast.dtype == torch.uint8 and fast.is_contiguous()
            diff = (fast.int() - pil.int()).abs()
            assert diff.max() <= 2 and (diff > 0).float().mean() < 0.02
    small = Image.fromarray(np.full((20, 30, 3), 77, np.uint8))  # upscaled: a flat image stays
    assert (resize_crop(small, prep) == 77).all()
    strip = Image.new("RGB", (4000, 3), (10, 20, 30))  # extreme aspect ratio: PIL's window
    assert torch.equal(resize_crop(strip, prep), prep.to_uint8(strip))


def test_file_content_key_memo(tmp_path, monkeypatch):
    monkeypatch.setattr(keys, "_RACY_NS", -10**12)  # memoize files written just now
    monkeypatch.setattr(keys, "_KEY_MEMO", {})
    path = tmp_path / "a.bin"
    path.write_bytes(b"one")
    assert file_content_key(str(path)) == content_key(str(path))
    assert len(keys._KEY_MEMO) == 1
    assert file_content_key(path) == content_key(str(path))  # served by the memo
    path.write_bytes(b"three")  # a new stat: hashed again, never the stale key
    assert file_content_key(str(path)) == content_key(str(path)) != content_key(b"one")
    arr = np.zeros((2, 2), np.uint8)
    assert file_content_key(arr) == content_key(arr)
    with pytest.raises(FileNotFoundError):
        file_content_key(str(tmp_path / "missing.jpg"))


def test_rows_cached_by_a_fast_engine_serve_an_eager_call(some_jpegs, tmp_path):
    """A job with the fast engine and a later eager call share one cache configuration."""
    cache = tmp_path / "feats.h5"
    job = Extractor("resnet18", None, device="cpu", precision="fp32")
    big = job.extract(some_jpegs, cache=cache, num_workers=0)
    assert big.n_computed == len(some_jpegs)
    small = Extractor("resnet18", None, device="cpu", engine="eager")
    again = small.extract(some_jpegs[:3], cache=cache, num_workers=0)
    assert again.n_cached == 3 and again.n_computed == 0
    np.testing.assert_array_equal(again.features, big.features[:3])
