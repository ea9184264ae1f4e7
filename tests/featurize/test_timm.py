"""timm backbones: features equal timm's own intermediate outputs, local weights, keys."""


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
    from featurize.networks import backbones

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

    from featurize.networks.downloads import DownloadError, download_url

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

    from featurize.networks.downloads import DownloadError, download_weights

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


# -- weights: never an implicit download, no process-wide switch, effective timeouts ------------

PLAIN_URL = "timm:legacy_seresnet18"  # weights at a GitHub release URL, not on the hub


@pytest.fixture
def no_network(monkeypatch):
    """Connections to anything but the loopback fail at once, and every download function a
    load could reach records its call: a test sees an attempt without any traffic leaving."""
    import socket

    import huggingface_hub
    import huggingface_hub.file_download
    import timm.models._hub

    attempts = []
    real_connect = socket.socket.connect

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(("connect", address))
            raise OSError("network disabled in this test")
        return real_connect(sock, address)

    def refuse(what):
        def download(*args, **kwargs):
            attempts.append((what, args[:1]))
            raise OSError("network disabled in this test")
        return download

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse("torch.hub"))
    monkeypatch.setattr(timm.models._hub, "download_url_to_file", refuse("timm"))
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", refuse("hub"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse("hub"))
    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", refuse("hub"))
    return attempts


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty torch and Hugging Face hub caches (and no memoized backbone)."""
    from huggingface_hub import constants

    from featurize.networks import backbones

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    backbones._MEMO.clear()
    yield tmp_path
    backbones._MEMO.clear()


def test_weights_at_a_plain_url_are_never_downloaded_implicitly(empty_caches, no_network):
    import time

    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone(PLAIN_URL, "DEFAULT")
    assert time.perf_counter() - start < 30
    assert no_network == []  # not even an attempt
    message = str(info.value)
    assert f"featurize download {PLAIN_URL}" in message and "seresnet18-4bb0ce65.pth" in message


def test_weights_at_a_plain_url_in_the_torch_hub_cache_load_without_network(empty_caches,
                                                                           no_network):
    state = timm.create_model(PLAIN_URL[len("timm:"):]).state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    folder = empty_caches / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / "seresnet18-4bb0ce65.pth")
    loaded = load_backbone(PLAIN_URL, "DEFAULT").model.state_dict()
    assert no_network == []
    assert loaded.keys() == state.keys()
    for key in state:
        torch.testing.assert_close(loaded[key], state[key])


def _hub_cache_with(folder, repo: str, state: dict) -> None:
    """A Hugging Face hub cache holding ``state`` as ``repo``'s model.safetensors (its layout:
    refs/main -> a commit, snapshots/<commit>/<file>)."""
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    root = folder / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()},
              str(root / "snapshots" / commit / "model.safetensors"))


def test_hub_cached_weights_load_in_threads_without_touching_process_wide_settings(
        empty_caches, no_network, monkeypatch):
    """Two loads in threads (Dask's threaded workers) cannot switch the hub on or off under
    each other: loading reads the cache, and leaves the environment and the hub's settings
    as they are."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import constants

    state = timm.create_model("resnet18").state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    _hub_cache_with(empty_caches / "hf" / "hub", "timm/resnet18.a1_in1k", state)
    seen, real_create = [], timm.create_model

    def create_model(*args, **kwargs):
        seen.append((os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE))
        return real_create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    before = (os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE)

    def load(_):
        from featurize.networks.backbones import _load_uncached

        return _load_uncached(CNN, "DEFAULT").model.state_dict()["fc.weight"]

    with ThreadPoolExecutor(4) as pool:
        weights = list(pool.map(load, range(4)))
    assert seen and all(setting == before for setting in seen)
    assert (os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE) == before
    for w in weights:
        torch.testing.assert_close(w, state["fc.weight"])
    assert no_network == []


def test_a_timm_download_from_a_server_that_never_answers_times_out(tmp_path):
    """A server on the loopback accepts connections and never answers: the download must give
    up after its timeout (2 s here), not after the hub client's retries."""
    import os
    import socket
    import subprocess
    import sys
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"),
               HF_HUB_DISABLE_TELEMETRY="1")
    for name in ("HF_HUB_OFFLINE", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        env.pop(name, None)
    code = ("import featurize.networks.downloads as d; d.TIMEOUT_S = 2; "
            "d.download_weights('timm:resnet18')")
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=90, check=False)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    elapsed = time.perf_counter() - start
    assert done.returncode != 0 and "DownloadError" in done.stderr, done.stderr[-2000:]
    assert endpoint in done.stderr and "featurize download timm:resnet18" in done.stderr
    assert elapsed < 30, elapsed  # about the interpreter's start, timm's import and 2 s
