"""Backbones: registry, real embedded weights, torchvision weights from local files, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featurize import list_backbones, list_layers, load_backbone
from featurize.exceptions import BackboneError, WeightsNotFoundError
from featurize.extraction import Extractor
from featurize.networks.backbones import checkpoint_sha256

REQUIRED_TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "alexnet",
                        "googlenet", "densenet121", "mobilenet_v2", "mobilenet_v3_large",
                        "efficientnet_b0", "convnext_tiny"]


def test_registry_lists_embedded_and_torchvision():
    names = list_backbones()
    assert names[:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    for name in REQUIRED_TORCHVISION:
        assert name in names


@pytest.mark.parametrize("image,classes", [("chelsea", range(281, 286)), ("coffee", [967])])
def test_embedded_weights_classify_imagenet_images(image, classes):
    """The real efficientnet_lite0 weights, through the featurizer's own code path."""
    skimage_data = pytest.importorskip("skimage.data")
    extractor = Extractor("efficientnet_lite0", layer="classifier", device="cpu")
    logits = extractor.extract([getattr(skimage_data, image)()]).features
    assert logits.shape == (1, 1000)
    assert int(np.argmax(logits[0])) in classes


def test_embedded_preprocessing_is_tf_style():
    bb = load_backbone("efficientnet_lite0")
    p = bb.preprocessing
    assert (p.crop_size, p.resize_size, p.interpolation) == (224, 256, "bicubic")
    assert p.mean == (0.498,) * 3 and p.std == (0.502,) * 3
    assert bb.weights_sha256 and len(bb.weights_sha256) == 64
    assert load_backbone("efficientnet_lite2").preprocessing.crop_size == 260


def test_random_init_is_deterministic():
    a = load_backbone("resnet18", weights=None).model.state_dict()
    b = load_backbone("resnet18", weights=None).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchvision_preprocessing_comes_from_weights():
    p = load_backbone("resnet18", weights=None).preprocessing
    assert (p.resize_size, p.crop_size, p.interpolation) == (256, 224, "bilinear")
    assert p.mean == pytest.approx((0.485, 0.456, 0.406))


def test_torchvision_local_checkpoint_round_trip(tmp_path):
    model = load_backbone("resnet18", weights=None).model
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "my_resnet18.pth"
    torch.save(state, path)
    loaded = load_backbone("resnet18", weights=str(path))
    assert torch.equal(loaded.model.state_dict()["fc.weight"], state["fc.weight"])
    assert loaded.weights_sha256 == checkpoint_sha256(path)


def test_checkpoint_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="weights_only=True"):
        load_backbone("resnet18", weights=str(path))


def test_torch_hub_cache_weights_load_offline(tmp_path, monkeypatch):
    """A weights enum name resolves to the hub cache file; present -> loaded, no network."""
    from torchvision.models import ResNet18_Weights

    # TORCH_HOME, not torch.hub.set_dir: set_dir would pin the folder for the later tests
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert torch.hub.get_dir() == str(tmp_path / "hub")
    with pytest.raises(WeightsNotFoundError) as err:
        load_backbone("resnet18", weights="IMAGENET1K_V1")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and "never downloads" in message
    ckpt = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(load_backbone("resnet18", weights=None).model.state_dict(), ckpt)
    bb = load_backbone("resnet18", weights="DEFAULT")
    assert bb.weights == ResNet18_Weights.DEFAULT.name
    assert bb.weights_sha256 == checkpoint_sha256(ckpt)


def test_unknown_names_get_helpful_errors():
    with pytest.raises(BackboneError, match="resnet18"):
        load_backbone("resnet-18")
    with pytest.raises(BackboneError, match="IMAGENET1K_V1"):
        load_backbone("resnet18", weights="IMAGENET_V9")


@pytest.mark.parametrize("name", REQUIRED_TORCHVISION)
def test_every_required_torchvision_backbone_has_a_penultimate_layer(name):
    layers = list_layers(name)
    assert layers[-1].name == "penultimate"
    assert len(layers[-1].shape) == 1 and layers[-1].shape[0] >= 512


def test_memoized_backbones_are_independent_copies(tmp_path):
    first = load_backbone("resnet18", weights=None)
    with torch.no_grad():
        first.model.fc.weight.zero_()
    second = load_backbone("resnet18", weights=None)
    assert second.model is not first.model and second.model.fc.weight.abs().sum() > 0
    path = tmp_path / "ckpt.pth"
    state = second.model.state_dict()
    torch.save(state, path)
    a = load_backbone("resnet18", weights=path)
    state["fc.bias"] = state["fc.bias"] + 1.0
    torch.save(state, path)  # a changed file is loaded again, not served from memory
    b = load_backbone("resnet18", weights=path)
    assert torch.equal(b.model.fc.bias, a.model.fc.bias + 1.0)


# -- downloads (on request only; local file:// URLs, never the network) -------------------------


def test_a_download_whose_hash_differs_from_its_file_name_is_refused_and_not_kept(tmp_path):
    """torchvision names its files ``<name>-<first hex digits of their SHA-256>.pth``."""
    import hashlib

    from featurize.networks.downloads import DownloadError, download_url

    source = tmp_path / "served.pth"
    source.write_bytes(b"not the weights you asked for")
    good = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    hub = tmp_path / "hub" / "checkpoints"
    with pytest.raises(DownloadError, match="f37072fd") as info:
        download_url(source.as_uri(), hub / "resnet18-f37072fd.pth", backbone="resnet18",
                     progress=False)
    assert "resnet18-f37072fd.pth" in str(info.value) and source.as_uri() in str(info.value)
    assert list(hub.iterdir()) == []  # nothing kept, not even a partial file
    kept = download_url(source.as_uri(), hub / f"resnet18-{good}.pth", progress=False)
    assert kept.read_bytes() == source.read_bytes()


def test_download_of_unknown_weights_is_a_one_line_error_listing_the_valid_ones(capsys):
    from pipelines.cli import main

    assert main(["download", "resnet18", "--weights", "NOPE"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "'NOPE'" in err and "resnet18" in err and "IMAGENET1K_V1" in err
