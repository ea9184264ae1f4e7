"""Fine-tuning a backbone on a folder-per-class data set, to compare with features + heads.

Linear probing, then fine-tuning (LP-FT, Kumar et al., ICLR 2022), with the PyTorch
transfer-learning tutorial's augmentation:

1. **Probe.** One pass of the frozen network over every training image (centre crop) gives
   its penultimate features; a standardized L2 logistic regression on them, its ``C`` chosen
   on the validation split, becomes the new linear classifier (the standardization folded into
   its weights). This is "epoch 0": a converged classifier, in one forward pass. The same pass
   finds the images that cannot be decoded: they are left out and reported (``failures``).
2. **Fine-tuning.** The last ``unfreeze`` stages and the classifier are trained for ``epochs``
   epochs with AdamW at a low rate on a one-cycle schedule (short warm-up, cosine decay), on
   random resized crops and flips. Batch normalization keeps its ImageNet statistics.

A validation split carved from the training folder only (stratified, seeded) scores every
epoch, the probe included; the best (balanced accuracy, then validation loss) is kept.
Autocast runs bf16 on CPUs that compute it natively
(:func:`featurize.networks.hardware.cpu_has_native_bf16`: 2-4x faster there) and on CUDA; tensors
are channels_last. Images are decoded by threads (:mod:`featurize.finetuning.data`): no worker
process, so any multiprocessing start method works.

The checkpoint is a plain dict of tensors, strings and numbers (``torch.load(...,
weights_only=True)`` reads it, no pickled code): the fine-tuned network with its *original*
classifier shape (so ``weights=<checkpoint>`` loads it as a featurize backbone, and its SHA-256
enters the cache key), the new classifier apart (``head_weight``, ``head_bias``), the classes,
the validation files, the unreadable files and the history. :func:`classify.load_model` turns
it into a model that predicts like a trained featurize model (penultimate features of the
fine-tuned network, then the fine-tuned linear classifier).
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch
from sklearn.utils import Bunch
from torch import nn

from featurize.finetuning.checkpoint import FORMAT, is_finetuned_checkpoint
from featurize.finetuning.data import check_classes
from featurize.finetuning.training import FinetuneResult, TrainingRun
from featurize.images.data import default_decode_threads
from featurize.images.folder import load_image_folder
from featurize.networks import hardware
from featurize.networks.backbones import load_backbone
from featurize.networks.hardware import resolve_device
from featurize.networks.layers import penultimate_module, trace_layers
from featurize.options import PRECISIONS, check_choice

__all__ = ["FORMAT", "FinetuneResult", "autocast_dtype", "finetune", "is_finetuned_checkpoint"]


def _stages(model: nn.Module, layers, classifier: str) -> list[str]:
    """Names of the network's stages with parameters, in execution order, classifier excluded:
    top-level modules and their direct children (``blocks.15``, ``head``, ``layer4``...)."""
    modules = dict(model.named_modules())
    names = [info.name for info in layers if info.name.count(".") <= 1
             and info.name in modules and info.name != classifier
             and any(True for _ in modules[info.name].parameters())]
    # a parent and its children both appear: keep the innermost, in order
    return [n for n in names if not any(o.startswith(n + ".") for o in names)]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast type of training: ``"auto"`` is bf16 on CPUs that compute it natively and
    on CUDA GPUs that support it, fp16 on other CUDA GPUs, else None (fp32)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and hardware.cpu_has_native_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"The {name!r} parameter of finetune must be an int >= {minimum}"
                         f"{' or None' if allow_none else ''}. Got {value!r} instead.")


def finetune(data_dir, out, *, backbone: str = "efficientnet_lite2", weights="DEFAULT",
             unfreeze: int = 3, epochs: int = 6, batch_size: int = 32, lr: float = 1e-4,
             backbone_lr_factor: float = 1.0, weight_decay: float = 0.05,
             val_fraction: float = 0.15,
             patience: int | None = None, keep: str = "best", seed: int = 0, device="auto",
             precision: str = "auto", num_workers: int | None = None, verbose: int = 1,
             check_labels=None, on_epoch=None) -> FinetuneResult:
    """Fine-tune ``backbone`` on ``data_dir`` and write the best checkpoint to ``out``.

    Parameters
    ----------
    data_dir : path or Bunch
        Folder-per-class training images, or what :func:`featurize.load_image_folder`
        returned for it. The validation split is carved from it. Images that cannot be decoded
        and class folders without a readable image are left out; fewer than 2 classes with
        readable images is refused, as ``featurize train`` refuses it.
    out : path
        Checkpoint to write (rewritten, atomically, at every improvement: Ctrl-C keeps the
        best so far). Its folder must exist.
    backbone, weights
        As for :func:`featurize.load_backbone`.
    unfreeze : int, default=3
        Stages trained after the probe (the last ones, e.g. ``blocks.21``, ``blocks.22`` and
        ``head`` of EfficientNet-Lite2); 0 keeps the probe.
    epochs : int, default=6
        Epochs of fine-tuning after the probe (the one-cycle schedule spans them).
    batch_size : int, default=32
    lr, backbone_lr_factor : float, default=1e-4, 1.0
        Peak AdamW learning rate of the classifier, and the factor for the unfrozen stages.
        The probe's classifier is already trained, so one low rate suits both (LP-FT).
    weight_decay : float, default=0.05
    val_fraction : float, default=0.15
        Share of each class held out to choose ``C`` and the epoch.
    patience : int or None, default=None
        Stop after this many epochs without improvement (None: run every epoch).
    keep : {"best", "last"}, default="best"
        The epoch whose network is kept: the best on the validation split (balanced accuracy,
        then loss; the probe, epoch 0, included), or the last one run.
    seed : int, default=0
        Seeds the split, the shuffling, the augmentation and the network's randomness (a
        private generator state: the caller's torch RNG is left as it was): the same seed on
        the same device gives the same numbers.
    device : str, default="auto"
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast type of training (see :func:`autocast_dtype`).
    num_workers : int or None, default=None
        Decoding threads (None: one per core, at most 8; 0: decode in the calling thread).
    verbose : int, default=1
        Progress (tqdm on a terminal, else log lines) and one log line per epoch.
    check_labels : callable, default=None
        Called with the class name of every image the folder listing kept (ndarray of str)
        before any image is decoded; raises to refuse the data. ``featurize finetune`` passes
        the rule of ``featurize train`` (:func:`classify.splits.plan_folds` with
        ``small_classes="error"``), so both refuse the same folders in the same words. After
        decoding, as in ``featurize train``, fewer than 2 classes with readable images is
        refused, and a class left with a single readable image is trained on and never
        validated (a ``UserWarning`` names it).
    on_epoch : callable, default=None
        Called with each history row (used by tests).

    Returns
    -------
    FinetuneResult
    """
    start = time.perf_counter()
    check_choice("precision", precision, PRECISIONS, owner="finetune")
    check_choice("keep", keep, ("best", "last"), owner="finetune")
    for name, value, minimum in (("unfreeze", unfreeze, 0), ("epochs", epochs, 0),
                                 ("batch_size", batch_size, 1), ("seed", seed, 0)):
        _check_int(name, value, minimum)
    _check_int("patience", patience, 1, allow_none=True)
    _check_int("num_workers", num_workers, 0, allow_none=True)
    if not 0 < val_fraction < 1:
        raise ValueError(f"The 'val_fraction' parameter of finetune must be in (0, 1). Got "
                         f"{val_fraction!r} instead.")
    folder = os.path.dirname(os.path.abspath(os.fspath(out)))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Cannot write the checkpoint {os.fspath(out)!r}: the folder "
                                f"{folder!r} does not exist. Create it first.")
    data = data_dir if isinstance(data_dir, Bunch) else load_image_folder(data_dir)
    data_dir = data.root

    if check_labels is not None:
        check_labels(np.asarray(data.target_names)[data.target])
    check_classes(data_dir, data.target, data.target_names)  # before any decoding
    dev = resolve_device(device)
    amp = autocast_dtype(precision, dev)
    threads = default_decode_threads(len(data.paths)) if num_workers is None else num_workers
    # A private RNG state, restored for the caller afterwards, seeded after the network is
    # built (building it consumes random numbers; a second call is served from the backbone
    # memo and does not: the numbers must not depend on it).
    cuda = [torch.cuda.current_device() if dev.index is None else dev.index] if (
        dev.type == "cuda") else []
    with torch.random.fork_rng(devices=cuda):
        loaded = load_backbone(backbone, weights)
        model, prep = loaded.model, loaded.preprocessing
        layers = trace_layers(model.eval(), prep.crop_size)
        classifier = penultimate_module(model, layers)
        if classifier is None:
            raise ValueError(f"{backbone} does not end in a linear classifier; it cannot be "
                             "fine-tuned here.")
        original_head = copy.deepcopy(model.get_submodule(classifier))
        stages = _stages(model, layers, classifier)[-unfreeze:] if unfreeze > 0 else []
        run = TrainingRun(model=model, prep=prep, dev=dev, amp=amp, threads=threads,
                   batch_size=batch_size, verbose=verbose, start=start)
        torch.manual_seed(seed)
        return run.fit(data, out, classifier=classifier, original_head=original_head,
                       stages=stages, meta={"backbone": backbone, "base_weights": str(weights),
                                            "seed": int(seed)},
                       epochs=epochs, lr=lr, backbone_lr_factor=backbone_lr_factor,
                       weight_decay=weight_decay, val_fraction=val_fraction,
                       patience=patience, keep=keep, seed=seed, on_epoch=on_epoch)
