"""Fine-tuning a backbone on a folder-per-class data set, to compare with features + heads.

Two stages, as the PyTorch transfer-learning tutorial does: a new linear classifier on the
frozen network (``head_epochs``), then the last ``unfreeze`` stages trained too, with a
learning rate ``backbone_lr_factor`` times lower (discriminative rates). Light augmentation
(random resized crop, horizontal flip); a validation split carved from the training folder only
(stratified, seeded) decides the best epoch and stops early. AMP and channels_last on CUDA.

The checkpoint is a plain dict of tensors, strings and numbers (``torch.load(...,
weights_only=True)`` reads it, no pickled code): the fine-tuned network with its *original*
classifier shape (so ``weights=<checkpoint>`` loads it as a featurize backbone, and its SHA-256
enters the cache key), the new classifier apart (``head_weight``, ``head_bias``), the classes,
the validation files and the history. :func:`classify.load_model` turns it into a model that
predicts like a trained featurize model (penultimate features of the fine-tuned network, then
the fine-tuned linear classifier).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["FORMAT", "FinetuneResult", "finetune", "is_finetuned_checkpoint"]

FORMAT = "featurize.finetuned"


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the checkpoint, the best epoch, its validation score and
    the per-epoch history (``epoch``, ``stage``, ``loss``, ``val_balanced_accuracy``,
    ``seconds``)."""

    checkpoint: str
    classes: list
    best_epoch: int
    val_score: float
    history: list
    seconds: float
    interrupted: bool = False


def is_finetuned_checkpoint(payload) -> bool:
    """Whether a loaded object is a checkpoint written by :func:`finetune`."""
    return isinstance(payload, dict) and payload.get("format") == FORMAT


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths, targets, transform):
        self.paths, self.targets, self.transform = list(paths), list(targets), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from featurize.decoding import load_image

        image = load_image(self.paths[i], draft_size=(512, 512))
        return self.transform(image), self.targets[i]


def _stages(model: nn.Module, layers, classifier: str) -> list[str]:
    """Names of the network's stages with parameters, in execution order, classifier excluded:
    top-level modules and their direct children (``blocks.15``, ``head``, ``layer4``...)."""
    modules = dict(model.named_modules())
    names = [info.name for info in layers if info.name.count(".") <= 1
             and info.name in modules and info.name != classifier
             and any(True for _ in modules[info.name].parameters())]
    # a parent and its children both appear: keep the innermost, in order
    return [n for n in names if not any(o.startswith(n + ".") for o in names)]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def finetune(data_dir, out, *, backbone: str = "efficientnet_lite0", weights="DEFAULT",
             unfreeze: int = 2, head_epochs: int = 2, epochs: int = 6, batch_size: int = 32,
             lr: float = 1e-3, backbone_lr_factor: float = 0.1, val_fraction: float = 0.15,
             patience: int = 2, seed: int = 0, device="auto", num_workers: int | None = None,
             verbose: int = 1, on_epoch=None) -> FinetuneResult:
    """Fine-tune ``backbone`` on ``data_dir`` and write the best checkpoint to ``out``.

    Parameters
    ----------
    data_dir : path
        Folder-per-class training images. The validation split is carved from it.
    out : path
        Checkpoint to write (rewritten, atomically, at every improvement: Ctrl-C keeps the
        best so far).
    backbone, weights
        As for :func:`featurize.load_backbone`.
    unfreeze : int, default=2
        Stages trained in the second stage (the last ones, e.g. ``blocks.15`` and ``head``).
    head_epochs : int, default=2
        Epochs of the first stage (classifier only).
    epochs : int, default=6
        Most epochs of the second stage (stops after ``patience`` epochs without improvement).
    lr, backbone_lr_factor : float
        AdamW learning rate of the classifier, and the factor for the unfrozen stages.
    val_fraction : float, default=0.15
    seed : int, default=0
        Seeds the split, the new classifier, the shuffling and the augmentation: the same
        seed on the same device gives the same numbers.
    on_epoch : callable, default=None
        Called with each history row (used by tests).

    Returns
    -------
    FinetuneResult
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split
    from torchvision.transforms import v2

    from featurize.backbones import load_backbone
    from featurize.extraction import resolve_device
    from featurize.folder import load_image_folder
    from featurize.layers import penultimate_module, trace_layers
    from featurize.progress import make_progress

    start = time.perf_counter()
    torch.manual_seed(seed)
    data = load_image_folder(data_dir)
    classes = list(data.target_names)
    tr, va = train_test_split(np.arange(len(data.paths)), test_size=val_fraction,
                              stratify=data.target, random_state=seed)
    loaded = load_backbone(backbone, weights)
    model, prep = loaded.model, loaded.preprocessing
    layers = trace_layers(model.eval(), prep.crop_size)
    classifier = penultimate_module(model, layers)
    if classifier is None:
        raise ValueError(f"{backbone} does not end in a linear classifier; it cannot be "
                         "fine-tuned here.")
    original_head = copy.deepcopy(model.get_submodule(classifier))
    stages = _stages(model, layers, classifier)[-unfreeze:] if unfreeze > 0 else []
    in_features = original_head.in_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(in_features, len(classes))
    _set_module(model, classifier, head)
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    model.to(dev)
    if cuda:
        model.to(memory_format=torch.channels_last)
    interpolation = getattr(v2.InterpolationMode, prep.interpolation.upper())
    train_tf = v2.Compose([v2.RandomResizedCrop(prep.crop_size, scale=(0.35, 1.0),
                                                interpolation=interpolation, antialias=True),
                           v2.RandomHorizontalFlip(), v2.PILToTensor()])
    workers = min(2, os.cpu_count() or 1) if num_workers is None else num_workers
    gen = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(
        _Images([data.paths[i] for i in tr], data.target[tr], train_tf), batch_size=batch_size,
        shuffle=True, num_workers=workers, generator=gen, drop_last=len(tr) > batch_size,
        worker_init_fn=lambda w: torch.manual_seed(seed * 1000 + w), pin_memory=cuda)
    val_loader = torch.utils.data.DataLoader(
        _Images([data.paths[i] for i in va], data.target[va], prep.to_uint8),
        batch_size=batch_size, num_workers=workers)
    loss_fn = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    history, best = [], {"score": -1.0, "epoch": 0}
    val_paths = [str(data.paths[i]) for i in va]

    def trainable(names):
        for p in model.parameters():
            p.requires_grad_(False)
        for name in names:
            for p in model.get_submodule(name).parameters():
                p.requires_grad_(True)

    def set_modes(names):
        model.eval()  # frozen parts keep their batch-norm statistics
        for name in names:
            model.get_submodule(name).train()

    def run_epoch(epoch, stage, optimizer, names):
        set_modes(names)
        # a bar on a terminal, else log lines (featurize.progress) every 10 s
        progress = make_progress("auto" if verbose else "none", interval=10.0,
                                 desc=f"epoch {epoch} ({stage})", unit="img")
        progress.start(len(tr))
        total, count = 0.0, 0
        try:
            for images, targets in train_loader:
                x = prep.normalize(images.to(dev, non_blocking=True))
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                targets = targets.to(dev)
                with torch.autocast(dev.type, enabled=cuda):
                    loss = loss_fn(model(x), targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += float(loss.detach()) * len(targets)
                count += len(targets)
                progress.advance(len(targets))
        finally:
            progress.close()
        model.eval()
        preds = []
        with torch.no_grad(), torch.autocast(dev.type, enabled=cuda):
            for images, _ in val_loader:
                preds.append(model(prep.normalize(images.to(dev))).argmax(1).cpu())
        score = balanced_accuracy_score(data.target[va], torch.cat(preds).numpy())
        row = {"epoch": epoch, "stage": stage, "loss": total / max(count, 1),
               "val_balanced_accuracy": float(score),
               "seconds": time.perf_counter() - start}
        history.append(row)
        if verbose:
            print(f"epoch {epoch} ({stage}): loss {row['loss']:.4f}, val balanced accuracy "
                  f"{score:.4f}", flush=True)
        if score > best["score"]:
            best.update(score=float(score), epoch=epoch)
            _save(out, model, classifier, original_head, backbone, weights, classes, history,
                  val_paths, best, seed)
        if on_epoch is not None:
            on_epoch(row)
        return score

    interrupted = False
    try:
        trainable([classifier])
        head_opt = torch.optim.AdamW(head.parameters(), lr=lr)
        epoch = 0
        for _ in range(head_epochs):
            epoch += 1
            run_epoch(epoch, "head", head_opt, [classifier])
        if stages and epochs > 0:
            trainable([classifier, *stages])
            params = [p for s in stages for p in model.get_submodule(s).parameters()]
            opt = torch.optim.AdamW([{"params": head.parameters(), "lr": lr},
                                     {"params": params, "lr": lr * backbone_lr_factor}])
            stale = 0
            for _ in range(epochs):
                epoch += 1
                before = best["score"]
                run_epoch(epoch, f"last {len(stages)} stages", opt, [classifier, *stages])
                stale = 0 if best["score"] > before else stale + 1
                if stale >= patience:
                    break
    except KeyboardInterrupt:
        interrupted = True
        if best["epoch"] == 0:
            raise
    _record_history(out, history)
    return FinetuneResult(str(out), classes, best["epoch"], best["score"], history,
                          time.perf_counter() - start, interrupted)


def _record_history(out, history) -> None:
    """Rewrite the best checkpoint with the whole history (it was saved mid-run)."""
    payload = torch.load(out, map_location="cpu", weights_only=True)
    payload["history"] = [dict(row) for row in history]
    _write_atomic(payload, out)


def _write_atomic(payload: dict, out) -> None:
    """``torch.save`` beside ``out``, then rename: a kill never leaves a partial checkpoint."""
    tmp = f"{os.fspath(out)}.tmp-{os.getpid()}"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save(out, model, classifier, original_head, backbone, weights, classes, history,
          val_paths, best, seed) -> None:
    """Write the checkpoint beside ``out`` and rename it (atomic)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    head_weight = state.pop(f"{classifier}.weight")
    head_bias = state.pop(f"{classifier}.bias")
    for key, value in original_head.state_dict().items():  # the backbone's own shape
        state[f"{classifier}.{key}"] = value.detach().cpu().clone()
    payload = {"format": FORMAT, "backbone": backbone, "base_weights": str(weights),
               "classifier": classifier, "classes": [str(c) for c in classes],
               "state_dict": state, "head_weight": head_weight, "head_bias": head_bias,
               "best_epoch": int(best["epoch"]), "val_balanced_accuracy": float(best["score"]),
               "history": [dict(row) for row in history], "val_paths": list(val_paths),
               "seed": int(seed)}
    _write_atomic(payload, out)
