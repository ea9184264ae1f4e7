"""timm backbones (#15): features equal timm's own intermediate outputs, local weights, keys."""


from __future__ import annotations

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")

from featurize import extract_features, list_layers, load_backbone
from featurize.exceptions import WeightsNotFoundError
from featurize.extraction import Extractor

CNN, VIT = "timm:resnet18", "timm:vit_tiny_patch16_224"


def _images(name):
    """Random images whose short side is the backbone's resize size: only the centre crop
    remains, so featurize's loader and the reference below see the same pixels."""
    side = load_backbone(name, None).preprocessing.resize_size
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(3, side, side + 20, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def images():
    return _images(CNN)


@pytest.fixture(scope="module")
def vit_images():
    return _images(VIT)


def _inputs(backbone, images):
    """The normalized batch featurize feeds the network (its own preprocessing)."""
    from PIL import Image

    prep = backbone.preprocessing
    batch = torch.stack([prep.to_uint8(Image.fromarray(a)) for a in images])
    return prep.normalize(batch)


def _features(name, images, layer, pooling, weights=None):
    return extract_features(list(images), backbone=name, weights=weights, layer=layer,
                            pooling=pooling, device="cpu", precision="fp32", engine="eager",
                            num_workers=0)


def test_cnn_stage_equals_timm_intermediates(images):
    backbone = load_backbone(CNN, None)
    with torch.no_grad():
        (stage,) = backbone.model.forward_intermediates(_inputs(backbone, images), indices=[3],
                                                        intermediates_only=True)
    expected = stage.mean((2, 3)).numpy()
    np.testing.assert_allclose(_features(CNN, images, "layer3", "avg"), expected, rtol=1e-4,
                               atol=1e-5)


def test_vit_block_tokens_pooled_as_timm_gives_them(vit_images):
    images = vit_images
    backbone = load_backbone(VIT, None)
    with torch.no_grad():
        ((patches, prefix),) = backbone.model.forward_intermediates(
            _inputs(backbone, images), indices=[11], output_fmt="NLC", intermediates_only=True,
            return_prefix_tokens=True)
        pre_logits = backbone.model.forward_head(
            backbone.model.forward_features(_inputs(backbone, images)), pre_logits=True)
    cls, mean = prefix[:, 0].numpy(), patches.mean(1).numpy()
    np.testing.assert_allclose(_features(VIT, images, "blocks.11", "cls"), cls, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(_features(VIT, images, "blocks.11", "mean"), mean, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(_features(VIT, images, "blocks.11", "clsmean"),
                               np.hstack([cls, mean]), rtol=1e-4, atol=1e-5)
    # penultimate: the pre-logits embedding
    np.testing.assert_allclose(_features(VIT, images, "penultimate", "avg"), pre_logits.numpy(),
                               rtol=1e-4, atol=1e-5)
    names = [info.name for info in list_layers(VIT)]
    assert "blocks.0" in names and "blocks.11" in names and names[-1] == "penultimate"


def test_a_token_pooling_on_a_feature_map_is_a_clear_error(images):
    with pytest.raises(ValueError, match="token sequence"):
        _features(CNN, images, "layer3", "cls")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_give_the_in_memory_models_features(images, tmp_path, suffix):
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.normal_(model.fc.weight)  # anything but featurize's own random init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    path = tmp_path / f"resnet18{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model.eval()
    backbone = load_backbone(CNN, None)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(_inputs(backbone, images)),
                                      pre_logits=True).numpy()
    np.testing.assert_allclose(_features(CNN, images, "penultimate", "avg", weights=str(path)),
                               expected, rtol=1e-4, atol=1e-5)


def test_cache_key_has_the_timm_version_model_and_weights_file(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    def key(name, weights=None):
        return Extractor(name, weights, "penultimate", "avg", "cpu", "fp32").layer_config(
            "penultimate")

    base = key(CNN)
    assert base["library"] == f"timm {timm.__version__}"
    assert key("timm:resnet34") != base
    state = timm.create_model("resnet18").state_dict()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(a))
    state["fc.bias"] = state["fc.bias"] + 1
    save_file({k: v.contiguous() for k, v in state.items()}, str(b))
    assert key(CNN, str(a))["weights_sha256"] != key(CNN, str(b))["weights_sha256"]
    from featurize import backbones

    backbones._MEMO.clear()
    monkeypatch.setattr(timm, "__version__", "0.0-test")
    assert key(CNN) != base
    backbones._MEMO.clear()


def test_pretrained_weights_not_in_the_cache_fail_fast_and_say_how_to_get_them(tmp_path,
                                                                              monkeypatch):
    import time

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="featurize download timm:resnet18"):
        load_backbone(CNN, "DEFAULT")
    assert time.perf_counter() - start < 30


def test_a_download_with_the_network_unreachable_fails_fast_and_clearly(tmp_path):
    """Port 9 on the loopback refuses connections: no traffic leaves the machine."""
    import time

    from featurize.downloads import DownloadError, download_url

    url = "http://127.0.0.1:9/resnet18-f37072fd.pth"
    start = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        download_url(url, tmp_path / "hub" / "resnet18-f37072fd.pth", backbone="resnet18",
                     progress=False)
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert url in message and "resnet18-f37072fd.pth" in message
    assert "featurize download resnet18" in message
    assert not (tmp_path / "hub" / "resnet18-f37072fd.pth").exists()


def test_a_timm_download_without_network_fails_fast(tmp_path, monkeypatch):
    """The reachability probe answers at once; the hub client's retries are never reached."""
    import time

    from featurize.downloads import DownloadError, download_weights

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(DownloadError, match="featurize download timm:resnet18"):
        download_weights("timm:resnet18")
    assert time.perf_counter() - start < 30


def test_download_command_of_a_timm_model_without_network_exits_1(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-m", "pipelines", "download", "timm:resnet18"],
                          check=False, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert "http://127.0.0.1:9" in done.stderr and "featurize download timm:resnet18" in done.stderr


def test_featurize_layers_of_a_vit_lists_blocks_and_its_pre_logits():
    names = {info.name: info.shape for info in list_layers("timm:vit_small_patch14_dinov2")}
    assert names["blocks.11"] == (1370, 384) and names["penultimate"] == (384,)
