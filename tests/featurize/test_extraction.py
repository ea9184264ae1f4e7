"""Extraction: layers, pooling, input kinds, failures, batching, OOM halving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featurize import extract_features
from featurize.exceptions import BackboneError, FeatureExtractionWarning, ImageDecodeError
from featurize.extraction import Extractor
from featurize.networks.pooling import pool

RANDOM = {"backbone": "resnet18", "weights": None, "device": "cpu"}


@pytest.fixture(scope="module")
def resnet():
    return Extractor("resnet18", None, layer=["layer2", "layer4"], pooling="avg", device="cpu",
                     precision="fp32")  # exact properties; bf16: tests/featurize/test_openvino.py


def test_rows_follow_input_order_and_match_single_image_runs(resnet, some_jpegs):
    together = resnet.extract(some_jpegs[:6], batch_size=4, num_workers=2).features
    alone = np.concatenate([resnet.extract([p], num_workers=0).features for p in some_jpegs[:6]])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    reversed_ = resnet.extract(some_jpegs[:6][::-1], batch_size=5, num_workers=0).features
    np.testing.assert_allclose(reversed_[::-1], together, rtol=1e-4, atol=1e-5)


def test_multi_layer_widths_and_order(resnet, some_jpegs):
    assert resnet.widths == {"layer2": 128, "layer4": 512}
    both = resnet.extract(some_jpegs[:2], num_workers=0).features
    single = Extractor("resnet18", None, layer="layer4", device="cpu", precision="fp32")
    np.testing.assert_allclose(both[:, 128:], single.extract(some_jpegs[:2]).features,
                               rtol=1e-4, atol=1e-5)


def test_penultimate_equals_the_networks_own_embedding(some_jpegs):
    ex = Extractor("resnet18", None, device="cpu", precision="fp32")
    assert ex.layers == ["penultimate"]
    feats = ex.extract(some_jpegs[:3]).features
    model = ex.model
    captured = {}
    hook = model.avgpool.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    from featurize.images.data import Decoder, collate

    batch = collate([Decoder(some_jpegs, [ex.preprocessing])(i) for i in range(3)])[1]
    with torch.inference_mode():
        model(ex.preprocessing.normalize(batch))
    hook.remove()
    np.testing.assert_allclose(feats, captured["x"].flatten(1).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method,width", [("avg", 64), ("max", 64), ("catavgmax", 128),
                                          ("avgmax", 128), ("gem", 64),
                                          ("flatten", 64 * 56 * 56)])
def test_pooling_widths(method, width, rgb_arrays):
    ex = Extractor("resnet18", None, layer="layer1", pooling=method, device="cpu")
    out = ex.extract(rgb_arrays[:2]).features
    assert out.shape == (2, width) and ex.n_features == width
    assert np.isfinite(out).all()


def test_pooling_math():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(pool(x, "avg"), x.mean((2, 3)))
    assert torch.equal(pool(x, "catavgmax"), torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1))
    assert torch.equal(pool(x, "avgmax"), pool(x, "catavgmax"))  # the old name, an alias
    gem = pool(x + 1, "gem")
    assert torch.allclose(gem, ((x + 1) ** 3).mean((2, 3)) ** (1 / 3))
    assert torch.equal(pool(x, "none"), x)


def test_catavgmax_is_served_by_a_cache_filled_under_its_old_name_avgmax(some_jpegs,
                                                                          tmp_path):
    cache = tmp_path / "c.h5"
    old = Extractor("resnet18", None, layer="layer2", pooling="avgmax", device="cpu",
                    precision="fp32")
    new = Extractor("resnet18", None, layer="layer2", pooling="catavgmax", device="cpu",
                    precision="fp32")
    assert new.layer_config("layer2") == old.layer_config("layer2")
    assert old.layer_config("layer2")["pooling"] == "avgmax"  # the key caches already hold
    cold = old.extract(some_jpegs[:3], cache=cache)
    warm = new.extract(some_jpegs[:3], cache=cache)
    assert warm.n_cached == 3 and warm.n_computed == 0
    np.testing.assert_array_equal(warm.features, cold.features)


def test_pooling_none_returns_maps(rgb_arrays):
    maps = extract_features(rgb_arrays[:2], layer="layer3", pooling="none", **RANDOM)
    assert maps.shape == (2, 256, 14, 14)


def test_wrong_layer_lists_close_names():
    with pytest.raises(BackboneError, match=r"layer4"):
        Extractor("resnet18", None, layer="layr4", device="cpu")


def test_input_kinds_agree(tmp_path, rgb_arrays):
    img = rgb_arrays[3]
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    ex = Extractor("resnet18", None, device="cpu")
    ref = ex.extract([str(path)]).features
    for variant in ([path], [Image.fromarray(img)], [img], img, str(tmp_path),
                    np.stack([img, img])):
        out = ex.extract(variant).features
        np.testing.assert_allclose(out[0], ref[0], rtol=1e-5, atol=1e-6)
    gray = np.stack([img[..., 0], img[..., 1]])
    assert ex.extract(gray).features.shape == (2, 512)
    pd = pytest.importorskip("pandas")
    assert ex.extract(pd.Series([str(path), str(path)])).features.shape == (2, 512)


def test_numeric_matrix_is_refused_clearly():
    with pytest.raises(TypeError, match="feature matrix"):
        extract_features(np.zeros((4, 10)), **RANDOM)


def test_bad_file_raise_names_the_file(tmp_path, some_jpegs):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"<html>404</html>")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        extract_features([some_jpegs[0], str(bad)], **RANDOM)


def test_bad_file_nan_keeps_every_other_row(tmp_path, some_jpegs):
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    inputs = [some_jpegs[0], str(bad), some_jpegs[1], str(tmp_path / "missing.jpg")]
    with pytest.warns(FeatureExtractionWarning, match="2 of 4"):
        feats, failures = extract_features(inputs, on_error="nan", return_failures=True,
                                           batch_size=2, num_workers=2, **RANDOM)
    assert sorted(failures) == [1, 3]
    assert np.isnan(feats[[1, 3]]).all() and np.isfinite(feats[[0, 2]]).all()
    good = extract_features([some_jpegs[0], some_jpegs[1]], **RANDOM)
    np.testing.assert_allclose(feats[[0, 2]], good, rtol=1e-4, atol=1e-5)


def test_oom_halves_the_batch_without_losing_rows(rgb_arrays, monkeypatch):
    ex = Extractor("resnet18", None, device="cpu")
    expected = ex.extract(rgb_arrays, batch_size=5).features
    real = ex._forward_once
    sizes = []

    def flaky(batch):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return real(batch)

    monkeypatch.setattr(ex, "_forward_once", flaky)
    out = ex.extract(rgb_arrays, batch_size=5).features
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert sizes[:3] == [5, 2, 2] and max(sizes[3:]) <= 2


def test_duplicate_inputs_computed_once(some_jpegs, tmp_path):
    ex = Extractor("resnet18", None, device="cpu")
    calls = []
    real = ex._forward_once
    ex._forward_once = lambda b: calls.append(len(b)) or real(b)
    out = ex.extract([some_jpegs[0], some_jpegs[1], some_jpegs[0]],
                     cache=tmp_path / "c.h5").features
    assert sum(calls) == 2
    np.testing.assert_array_equal(out[0], out[2])


def test_non_finite_network_output_is_a_failure_not_a_cached_row(rgb_arrays, tmp_path):
    from featurize.storage.cache import FeatureCache

    ex = Extractor("resnet18", None, device="cpu")
    real = ex._forward_once

    def poisoned(batch):
        out = real(batch)
        out["penultimate"][1] = np.inf
        return out

    ex._forward_once = poisoned
    cache = FeatureCache(tmp_path / "c.h5")
    result = ex.extract(rgb_arrays[:3], cache=cache, on_error="nan", batch_size=3)
    assert list(result.failures) == [1] and "non-finite" in result.failures[1]
    assert np.isnan(result.features[1]).all() and np.isfinite(result.features[[0, 2]]).all()
    (info,) = cache.configurations()
    assert info["count"] == 2


def test_cache_misses_exactly_what_changed(some_jpegs, tmp_path):
    """Issue 3: backbone, weights, layer, pooling or one byte of one image: a miss for that."""
    import shutil

    images = []
    for p in some_jpegs[:3]:
        images.append(str(shutil.copy(p, tmp_path)))
    cache = tmp_path / "feats.h5"

    def run(backbone="resnet18", weights=None, layer="layer3", pooling="avg", paths=images):
        ex = Extractor(backbone, weights, layer=layer, pooling=pooling, device="cpu")
        result = ex.extract(paths, cache=cache, num_workers=0)
        return result.n_computed, result.n_cached

    assert run() == (3, 0)
    assert run() == (0, 3)
    assert run(backbone="resnet34") == (3, 0)
    ckpt = tmp_path / "w.pth"
    torch.save(Extractor("resnet18", None, device="cpu").model.state_dict(), ckpt)
    assert run(weights=str(ckpt)) == (3, 0)  # same numbers, but another weights identity
    assert run(layer="layer4") == (3, 0)
    assert run(pooling="max") == (3, 0)
    with open(images[1], "ab") as fh:  # one byte more after the JPEG end: decodes the same
        fh.write(b"\0")
    assert run() == (1, 2)
    moved = str(tmp_path / "renamed.jpg")
    shutil.move(images[0], moved)
    assert run(paths=[moved, images[1], images[2]]) == (0, 3)  # a renamed file still hits


# -- one pass, threads, the warm path ---------------------------------------------------------


def test_a_warm_cache_decodes_nothing(resnet, some_jpegs, tmp_path, monkeypatch):
    from featurize.images import data

    cache = tmp_path / "c.h5"
    cold = resnet.extract(some_jpegs, cache=cache).features
    decoded = []
    original = data.Decoder.__call__
    monkeypatch.setattr(data.Decoder, "__call__",
                        lambda self, *args: decoded.append(args) or original(self, *args))
    warm = resnet.extract(some_jpegs, cache=cache)
    assert decoded == [] and warm.n_cached == len(some_jpegs) and warm.n_computed == 0
    np.testing.assert_array_equal(warm.features, cold)


def test_several_backbones_read_and_decode_each_file_once(some_jpegs, tmp_path, monkeypatch):
    """The embedded backbones at 224, 240 and 260 px share one read and one decode of each
    file, and their rows are exactly those of separate runs."""
    from featurize.extraction import extract_many
    from featurize.images import data

    extractors = [Extractor(name, "DEFAULT", device="cpu") for name in
                  ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")]
    alone = [ex.extract(some_jpegs, num_workers=2).features for ex in extractors]
    reads = []
    original = data.read_keyed
    monkeypatch.setattr(data, "read_keyed", lambda path: reads.append(path) or original(path))
    cache = tmp_path / "c.h5"
    results = extract_many(extractors, some_jpegs, cache=cache, num_workers=2, batch_size=5)
    assert sorted(reads) == sorted(some_jpegs)  # each file read once, for three backbones
    for result, expected, ex in zip(results, alone, extractors):
        assert result.features.shape == (len(some_jpegs), ex.n_features)
        np.testing.assert_allclose(result.features, expected, rtol=1e-5, atol=1e-6)
        assert result.n_computed == len(some_jpegs)
    again = extract_many(extractors, some_jpegs, cache=cache)  # each from its own rows
    for result, expected in zip(again, alone):
        assert result.n_cached == len(some_jpegs)
        np.testing.assert_allclose(result.features, expected, rtol=1e-5, atol=1e-6)


def test_rows_found_only_in_a_read_cache_are_their_own_images(resnet, some_jpegs, tmp_path):
    """A row served from a further (read-only) cache is that image's row, never another's."""
    from featurize.extraction.loop import ArraySink, run_extraction
    from featurize.storage.cache import FeatureCache

    expected = resnet.extract(some_jpegs).features
    first, other = FeatureCache(tmp_path / "first.h5"), FeatureCache(tmp_path / "other.h5")
    resnet.extract(some_jpegs[:4], cache=first)  # rows 0-3 here
    resnet.extract(some_jpegs[6:], cache=other)  # rows 6-11 only in the read cache
    names = list(some_jpegs)
    out = np.zeros_like(expected)
    sink = ArraySink(out, resnet._columns(), names, "raise")
    run_extraction(some_jpegs, resnet, first, sink, names=names, read_caches=[other])
    assert sink.cached == 4 + 6 and sink.extracted == 2
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
