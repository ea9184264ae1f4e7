"""Intermediate layers by name: listing, validation, and capture of several layers in one pass.

Layer names are the module names of ``model.named_modules()`` (``"layer3"``, ``"blocks.10"``,
``"features.denseblock4"``) plus ``"penultimate"``: the input of the network's last linear
classifier, i.e. the embedding the network itself classifies (its default). A module that runs
more than once per forward pass (a shared activation) has no single output and is not a layer.
:class:`TruncatedNet` captures several layers in one pass with forward hooks, pools each at
once, and stops the pass as soon as every requested layer has been seen, so a truncated
network costs only the layers it needs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from featurize.exceptions import BackboneError
from featurize.networks.backbones import load_backbone
from featurize.networks.pooling import pool

PENULTIMATE = "penultimate"
#: Stage outputs :func:`default_layers` offers besides the penultimate layer.
DEFAULT_STAGES = 4


@dataclass(frozen=True)
class LayerInfo:
    """One capturable layer.

    Attributes
    ----------
    name : str
        The layer name (module path, or ``"penultimate"``).
    shape : tuple of int
        Output shape for one image, without the batch dimension, e.g. ``(512, 7, 7)``.
    kind : str
        The module's class name.
    """

    name: str
    shape: tuple[int, ...]
    kind: str


class _StopForward(Exception):
    """Raised from a hook once every requested layer is captured."""


def trace_layers(model: nn.Module, image_size: int = 224) -> list[LayerInfo]:
    """Run one dummy forward pass and list every capturable layer in execution order.

    Parameters
    ----------
    model : torch.nn.Module
        The network, in eval mode.
    image_size : int, default=224
        Side of the square dummy input.

    Returns
    -------
    list of LayerInfo
        The last entry is ``"penultimate"`` when the network ends in a linear classifier.
    """
    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    kinds: dict[str, str] = {}
    linear_inputs: list[tuple[str, tuple[int, ...]]] = []
    handles = []

    def make_hook(name, module):
        def hook(mod, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and name not in shapes:
                shapes[name] = tuple(output.shape[1:])
                kinds[name] = type(mod).__name__
            if isinstance(mod, nn.Linear) and inputs and isinstance(inputs[0], torch.Tensor):
                linear_inputs.append((name, tuple(inputs[0].shape[1:])))

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(make_hook(name, module)))
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
    order = list(shapes)  # dicts keep insertion order = order of first output
    layers = [LayerInfo(n, shapes[n], kinds[n]) for n in order if calls.get(n) == 1]
    if linear_inputs and calls.get(linear_inputs[-1][0]) == 1:
        name, shape = linear_inputs[-1]
        layers.append(LayerInfo(PENULTIMATE, shape, f"input of {name}"))
    return layers


def penultimate_module(model: nn.Module, layers: list[LayerInfo]) -> str | None:
    """Name of the module whose input is the ``penultimate`` layer (None if there is none)."""
    for info in layers:
        if info.name == PENULTIMATE:
            return info.kind.removeprefix("input of ")
    return None


def check_layers(requested: list[str], layers: list[LayerInfo], backbone: str) -> None:
    """Raise BackboneError for a layer name that is not capturable, listing close valid names."""
    valid = [info.name for info in layers]
    for name in requested:
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=6, cutoff=0.4)
            raise BackboneError(
                f"Unknown layer {name!r} for backbone {backbone!r}."
                f" Close valid names: {close or valid[-6:]}."
                f" List them all with `featurize layers {backbone}` or featurize.list_layers()."
            )


class TruncatedNet(nn.Module):
    """The one way to truncate a network: uint8 batch -> pooled outputs of the requested layers.

    Normalization, the layers up to the last requested one, and the pooling, as one module:
    ``forward(uint8 (N, 3, H, W)) -> tuple`` of one tensor per layer, in ``layers`` order. The
    eager extractor runs it, and the optimised engines trace or compile it
    (:mod:`featurize.networks.runtimes`), so every engine reads the same layers the same way.

    Each layer is pooled inside its hook, at the moment the module returns, into a tensor of
    its own: an in-place operation later in the network (``ReLU(inplace=True)`` after a
    BatchNorm) cannot change what was captured, so a layer's features do not depend on which
    other layers are read in the same pass. Hooks live only for the duration of a forward
    pass (the network stays a plain module, shareable between extractors); in eager mode the
    pass stops as soon as every layer is captured, and traced graphs end there too.

    Parameters
    ----------
    model : torch.nn.Module
        The full network in eval mode (not copied, not modified).
    layers : list of str
        Layer names (module names or ``"penultimate"``), validated with :func:`check_layers`.
    penultimate : str or None
        Name of the module whose input is the ``"penultimate"`` layer.
    preprocessing : Preprocessing
        Its ``normalize`` is the first step.
    pooling : str
        See :func:`featurize.networks.pooling.pool`.
    channels_last : bool, default=False
        Feed the network in channels_last memory format.
    """

    def __init__(self, model: nn.Module, layers, penultimate: str | None, preprocessing,
                 pooling: str, channels_last: bool = False):
        super().__init__()
        self.net = model
        self.layers = list(dict.fromkeys(layers))
        self.preprocessing = preprocessing
        self.pooling = pooling
        self.channels_last = channels_last
        modules = dict(model.named_modules())
        self._targets = [
            (name, modules[penultimate] if name == PENULTIMATE else modules[name])
            for name in self.layers
        ]
        self._captured: dict[str, torch.Tensor] = {}
        # class and register tokens of a transformer (timm ViTs say how many)
        self._prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))

    def _store(self, name: str, value: torch.Tensor) -> None:
        pooled = pool(value, self.pooling, self._prefix_tokens)
        if pooled.untyped_storage().data_ptr() == value.untyped_storage().data_ptr():
            pooled = pooled.clone()  # a view would follow later in-place operations
        self._captured[name] = pooled
        if len(self._captured) == len(self.layers) and not _tracing():
            raise _StopForward

    def _hook(self, name):
        def hook(module, inputs, output):
            self._store(name, output)

        return hook

    def _pre_hook(self, name):
        def hook(module, inputs):
            self._store(name, inputs[0])

        return hook

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.preprocessing.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self._captured = {}
        handles = [
            module.register_forward_pre_hook(self._pre_hook(name)) if name == PENULTIMATE
            else module.register_forward_hook(self._hook(name))
            for name, module in self._targets
        ]
        try:
            self.net(x)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        captured, self._captured = self._captured, {}
        missing = [n for n in self.layers if n not in captured]
        if missing:
            raise BackboneError(f"Layers {missing} did not run in the forward pass.")
        return tuple(captured[name].contiguous() for name in self.layers)


def _tracing() -> bool:
    """Inside ``torch.jit.trace``, an ONNX export or ``torch.compile`` (no early stop there)."""
    compiling = getattr(torch.compiler, "is_compiling", lambda: False)()
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or compiling


def list_layers(backbone: str = "efficientnet_lite0", weights=None, *,
                image_size: int | None = None) -> list[LayerInfo]:
    """List the layers of a backbone that can be read, with their output shapes.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        A name from :func:`featurize.list_backbones`.
    weights : str, path-like or None, default=None
        Weights to load (see :func:`featurize.networks.backbones.load_backbone`). Shapes do not
        depend on them, so the default builds the network without weights (nothing to find on disk).
    image_size : int, default=None
        Side of the square input the shapes are given for; None: the backbone's own input size
        (its preprocessing's crop: 224 for most, 518 for DINOv2 ViTs).

    Returns
    -------
    list of LayerInfo
        In execution order; the last entry is ``"penultimate"`` when the network ends in a
        linear classifier.
    """

    loaded = load_backbone(backbone, weights)
    return trace_layers(loaded.model.eval(), image_size or loaded.preprocessing.crop_size)


def default_layers(infos: list[LayerInfo], n_stages: int = DEFAULT_STAGES) -> list[str]:
    """Candidate layers of a backbone: the ends of its last stages before the final feature
    map, and ``"penultimate"`` (what ``featurize train`` tries by default).

    A stage is a run of consecutive layers (top-level modules and their direct children, in
    execution order) whose feature maps have the same shape; its last layer is its output.
    The final feature map is left out: pooled, it is the penultimate embedding.

    Parameters
    ----------
    infos : list of LayerInfo
        The backbone's layers, in execution order (:func:`list_layers`).
    n_stages : int, default=DEFAULT_STAGES
        How many stage outputs to offer.

    Returns
    -------
    list of str

    Examples
    --------
    >>> default_layers(list_layers("efficientnet_lite0"))  # doctest: +SKIP
    ['blocks.7', 'blocks.10', 'blocks.14', 'blocks.15', 'penultimate']
    """
    maps = [i for i in infos if len(i.shape) == 3 and i.shape[1] * i.shape[2] > 1
            and i.name.count(".") <= 1]
    ends = [a.name for a, b in zip(maps, maps[1:]) if a.shape != b.shape]
    names = [i.name for i in infos]
    layers = ends[-n_stages:] if n_stages > 0 else []
    if PENULTIMATE in names:
        layers.append(PENULTIMATE)
    elif maps:
        layers.append(maps[-1].name)
    return layers or [names[-1]]
