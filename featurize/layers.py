"""Intermediate layers by name: listing, validation, and capture of several layers in one pass.

Layer names are the module names of ``model.named_modules()`` (``"layer3"``, ``"blocks.10"``,
``"features.denseblock4"``) plus ``"penultimate"``: the input of the network's last linear
classifier, i.e. the embedding the network itself classifies (its default). A module that runs
more than once per forward pass (a shared activation) has no single output and is not a layer.
Capture uses forward hooks and stops the forward pass as soon as every requested layer has been
seen, so a truncated network costs only the layers it needs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from featurize.exceptions import BackboneError

PENULTIMATE = "penultimate"


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


class LayerTap:
    """Capture the outputs of several layers in one forward pass, stopping early.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    layers : list of str
        Layer names (validated beforehand with :func:`check_layers`).
    penultimate : str or None
        Name of the module whose input is the ``"penultimate"`` layer.
    """

    def __init__(self, model: nn.Module, layers: list[str], penultimate: str | None):
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self._captured: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self._targets = [
            (name, modules[penultimate] if name == PENULTIMATE else modules[name])
            for name in self.layers
        ]

    def _store(self, name: str, value: torch.Tensor) -> None:
        self._captured[name] = value
        if len(self._captured) == len(self.layers):
            raise _StopForward

    def _hook(self, name):
        def hook(module, inputs, output):
            self._store(name, output)

        return hook

    def _pre_hook(self, name):
        def hook(module, inputs):
            self._store(name, inputs[0])

        return hook

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network on ``x`` and return ``{layer: output}`` for the requested layers.

        The hooks live only for the duration of the call: the model stays a plain module.
        """
        self._captured = {}
        handles = [
            module.register_forward_pre_hook(self._pre_hook(name)) if name == PENULTIMATE
            else module.register_forward_hook(self._hook(name))
            for name, module in self._targets
        ]
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        captured, self._captured = self._captured, {}
        missing = [n for n in self.layers if n not in captured]
        if missing:
            raise BackboneError(f"Layers {missing} did not run in the forward pass.")
        return captured


def list_layers(backbone: str = "efficientnet_lite0", weights=None, *,
                image_size: int = 224) -> list[LayerInfo]:
    """List the layers of a backbone that can be read, with their output shapes.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        A name from :func:`featurize.list_backbones`.
    weights : str, path-like or None, default=None
        Weights to load (see :func:`featurize.backbones.load_backbone`). Shapes do not depend
        on them, so the default builds the network without weights (nothing to find on disk).
    image_size : int, default=224
        Side of the square input the shapes are given for.

    Returns
    -------
    list of LayerInfo
        In execution order; the last entry is ``"penultimate"`` when the network ends in a
        linear classifier.
    """
    from featurize.backbones import load_backbone  # backbones does not import this module

    model = load_backbone(backbone, weights).model.eval()
    return trace_layers(model, image_size)
