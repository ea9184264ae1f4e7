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
(:func:`featurize.hardware.cpu_has_native_bf16`: 2-4x faster there) and on CUDA; tensors are
channels_last. Images are decoded by threads (:mod:`featurize._finetune_data`): no worker
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
import logging
import os
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn

from featurize._finetune_checkpoint import (
    FORMAT,
    failure_list,
    is_finetuned_checkpoint,
    record_history,
    save_checkpoint,
)
from featurize._finetune_data import (
    CROP_SCALE,
    augment,
    check_classes,
    iter_batches,
    split_train_val,
)
from featurize.options import PRECISIONS, check_choice

__all__ = ["FORMAT", "FinetuneResult", "finetune", "is_finetuned_checkpoint"]

logger = logging.getLogger(__name__)

#: ``C`` values of the probe's logistic regression, chosen by validation log loss.
PROBE_CS = (0.01, 0.1, 1.0)


@dataclass
class FinetuneResult:
    """What :func:`finetune` did.

    Attributes
    ----------
    checkpoint : str
    paths : list of str
        Every image of the folder.
    classes : list of str
        The classes trained (class folders with readable images).
    best_epoch : int
        The epoch kept; 0 is the linear probe on the frozen network.
    val_score : float
        Its validation balanced accuracy.
    history : list of dict
        One row per epoch: ``epoch``, ``stage``, ``loss``, ``val_balanced_accuracy``,
        ``val_loss``, ``seconds``.
    seconds : float
    interrupted : bool
    failures : dict of int to str
        ``row -> reason`` for the images of ``paths`` left out (they could not be decoded).
    skipped : list of (str, str)
        Files of the folder that are not images or not inside a class folder.
    """

    checkpoint: str
    paths: list
    classes: list
    best_epoch: int
    val_score: float
    history: list
    seconds: float
    interrupted: bool = False
    failures: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)

    @property
    def failed(self) -> list:
        """``(path, reason)`` of every file left out: skipped by the listing, then unreadable
        (what ``featurize train`` lists)."""
        return list(self.skipped) + failure_list(self.paths, self.failures)


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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast type of training: ``"auto"`` is bf16 on CPUs that compute it natively and
    on CUDA GPUs that support it, fp16 on other CUDA GPUs, else None (fp32)."""
    from featurize.hardware import cpu_has_native_bf16

    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
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
    from featurize.backbones import load_backbone
    from featurize.data import default_decode_threads
    from featurize.extraction import resolve_device
    from featurize.folder import load_image_folder
    from featurize.layers import penultimate_module, trace_layers

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
    from sklearn.utils import Bunch

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
        run = _Run(model=model, prep=prep, dev=dev, amp=amp, threads=threads,
                   batch_size=batch_size, verbose=verbose, start=start)
        torch.manual_seed(seed)
        return run.fit(data, out, classifier=classifier, original_head=original_head,
                       stages=stages, meta={"backbone": backbone, "base_weights": str(weights),
                                            "seed": int(seed)},
                       epochs=epochs, lr=lr, backbone_lr_factor=backbone_lr_factor,
                       weight_decay=weight_decay, val_fraction=val_fraction,
                       patience=patience, keep=keep, seed=seed, on_epoch=on_epoch)


@dataclass
class _Run:
    model: nn.Module
    prep: object
    dev: torch.device
    amp: torch.dtype | None
    threads: int
    batch_size: int
    verbose: int
    start: float

    def _autocast(self):
        return torch.autocast(self.dev.type, dtype=self.amp or torch.float32,
                              enabled=self.amp is not None)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prep.normalize(images.to(self.dev, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last)

    def _progress(self, desc: str, total: int):
        from featurize.progress import make_progress

        # a bar on a terminal, else log lines (featurize.progress) every 10 s
        progress = make_progress("auto" if self.verbose else "none", interval=10.0, desc=desc,
                                 unit="img")
        progress.start(total)
        return progress

    def _outputs(self, paths, rows, desc: str | None = None):
        """The network's outputs on the centre crops of ``paths[rows]`` (the weights'
        preprocessing, as featurize extracts): ``{row: ndarray}`` and ``{row: reason}``."""
        from featurize.decoding import load_image

        def work(row):
            return self.prep.to_uint8(load_image(paths[row], draft_size=self.prep.draft_size))

        outputs, failures = {}, {}
        progress = self._progress(desc, len(rows)) if desc else None
        self.model.eval()
        try:
            for kept, images, failed in iter_batches(list(rows), work, self.batch_size,
                                                     self.threads):
                failures.update(failed)
                if images is not None:
                    with torch.inference_mode(), self._autocast():
                        out = self.model(self._to_device(images)).float().cpu().numpy()
                    outputs.update(zip(kept, out))
                if progress is not None:
                    progress.advance(len(kept) + len(failed))
        finally:
            if progress is not None:
                progress.close()
        return outputs, failures

    def _evaluate(self, paths, rows, y, failures) -> tuple[float, float]:
        """Validation balanced accuracy and cross-entropy of the current network."""
        from sklearn.metrics import balanced_accuracy_score

        logits, failed = self._outputs(paths, rows)
        _add_failures(failures, failed, paths)
        keep = [i for i, row in enumerate(rows) if row in logits]
        if not keep:
            return float("nan"), float("nan")
        z = torch.from_numpy(np.stack([logits[rows[i]] for i in keep]))
        truth = torch.from_numpy(np.asarray(y)[keep])
        loss = float(nn.functional.cross_entropy(z, truth))
        return float(balanced_accuracy_score(truth.numpy(), z.argmax(1).numpy())), loss

    def fit(self, data, out, *, classifier, original_head, stages, meta, epochs, lr,
            backbone_lr_factor, weight_decay, val_fraction, patience, keep, seed,
            on_epoch) -> FinetuneResult:
        model, paths = self.model, [str(p) for p in data.paths]
        _set_module(model, classifier, nn.Identity())
        # channels_last: 1.5-2x faster convolutions on CPUs (oneDNN) as on CUDA
        model.to(self.dev, memory_format=torch.channels_last)
        feats, failed = self._outputs(paths, range(len(paths)), "frozen features")
        failures = dict(sorted(failed.items()))
        if failures:
            logger.warning("%d of %d images could not be read and are left out (the "
                           "'failures' of the result and of the checkpoint list them).",
                           len(failures), len(paths))
        rows = np.asarray(sorted(feats), dtype=np.int64)
        present = check_classes(data.root, data.target[rows], data.target_names,
                                listed=data.target)
        classes = [data.target_names[c] for c in present]
        y_all = np.searchsorted(present, data.target[rows])
        tr, va = split_train_val(y_all, val_fraction, seed, classes)
        if len(va) == 0:
            raise ValueError(f"{data.root}: every class has a single readable image, so none "
                             "can be held out to validate the fine-tuning. Add images.")
        weight, bias, c = _fit_probe(np.stack([feats[r] for r in rows[tr]]), y_all[tr],
                                     np.stack([feats[r] for r in rows[va]]), y_all[va],
                                     len(classes))
        head = nn.Linear(weight.shape[1], len(classes))
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weight))
            head.bias.copy_(torch.from_numpy(bias))
        _set_module(model, classifier, head.to(self.dev))
        del feats
        history, best = [], {"score": (-1.0, 0.0), "epoch": 0}
        val_paths = [paths[r] for r in rows[va]]
        failed_files = partial(failure_list, paths, failures, data.skipped)
        save = partial(save_checkpoint, out, model, classifier, original_head, meta, classes,
                       val_paths, failed_files)

        def record(epoch, stage, loss):
            score, val_loss = self._evaluate(paths, rows[va], y_all[va], failures)
            row = {"epoch": epoch, "stage": stage, "loss": loss, "val_balanced_accuracy": score,
                   "val_loss": val_loss, "seconds": time.perf_counter() - self.start}
            history.append(row)
            if self.verbose:
                logger.info("epoch %d (%s): loss %.4f, val balanced accuracy %.4f, val loss "
                            "%.4f", epoch, stage, loss, score, val_loss)
            improved = (score, -val_loss) > best["score"]
            if improved or keep == "last":
                best.update(score=(score, -val_loss), epoch=epoch)
                save(history, best)
            if on_epoch is not None:
                on_epoch(row)
            return improved

        interrupted = False
        try:
            record(0, f"probe (C={c:g})", float("nan"))
            if stages and epochs > 0:
                self._finetune(tr, rows, y_all, paths, classifier, stages, record, epochs=epochs,
                               lr=lr, backbone_lr_factor=backbone_lr_factor,
                               weight_decay=weight_decay, patience=patience, seed=seed,
                               failures=failures)
        except KeyboardInterrupt:
            interrupted = True
            if not history:
                raise
        record_history(out, history, failed_files())
        return FinetuneResult(str(out), paths, classes, best["epoch"], best["score"][0], history,
                              time.perf_counter() - self.start, interrupted, failures,
                              list(data.skipped))

    def _finetune(self, tr, rows, y_all, paths, classifier, stages, record, *, epochs, lr,
                  backbone_lr_factor, weight_decay, patience, seed, failures):
        from PIL import Image

        from featurize.decoding import load_image

        model, prep = self.model, self.prep
        names = [classifier, *stages]
        for p in model.parameters():
            p.requires_grad_(False)
        for name in names:
            for p in model.get_submodule(name).parameters():
                p.requires_grad_(True)
        head = model.get_submodule(classifier)
        params = [p for s in stages for p in model.get_submodule(s).parameters()]
        opt = torch.optim.AdamW([{"params": head.parameters()}, {"params": params}],
                                lr=lr, weight_decay=weight_decay)
        n = len(tr)
        drop_last = n > self.batch_size
        steps = n // self.batch_size if drop_last else 1
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[lr, lr * backbone_lr_factor], total_steps=epochs * steps,
            pct_start=0.15, cycle_momentum=False)
        scaler = torch.amp.GradScaler(self.dev.type, enabled=self.amp == torch.float16)
        loss_fn = nn.CrossEntropyLoss()
        resample = getattr(Image.Resampling, prep.interpolation.upper())
        targets_of = dict(zip(rows.tolist(), y_all.tolist()))

        # a JPEG draft large enough that the smallest random crop is not upsampled
        side = int(np.ceil(prep.crop_size / np.sqrt(CROP_SCALE[0])))

        def work(item):
            row, image_seed = item
            image = load_image(paths[row], draft_size=(side, side))
            return augment(image, image_seed, prep.crop_size, resample)

        stale = 0
        for epoch in range(1, epochs + 1):
            rng = np.random.default_rng([seed, epoch])
            order = rows[tr][rng.permutation(n)][:steps * self.batch_size]
            seeds = rng.integers(0, 2 ** 63 - 1, size=len(order))
            # Eval mode throughout: batch normalization keeps the statistics it learnt on
            # ImageNet (batches of a small data set estimate them worse), and its scale and
            # shift are trained.
            model.eval()
            progress = self._progress(f"epoch {epoch}", len(order))
            total, count = 0.0, 0
            try:
                for kept, images, failed in iter_batches(list(zip(order.tolist(),
                                                                  seeds.tolist())), work,
                                                         self.batch_size, self.threads):
                    _add_failures(failures, {row: why for (row, _), why in failed}, paths)
                    progress.advance(len(kept) + len(failed))
                    if images is None or len(kept) < 2:
                        continue
                    targets = torch.as_tensor([targets_of[row] for row, _ in kept],
                                              device=self.dev)
                    with self._autocast():
                        loss = loss_fn(model(self._to_device(images)).float(), targets)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    schedule.step()
                    total += float(loss.detach()) * len(kept)
                    count += len(kept)
            finally:
                progress.close()
            improved = record(epoch, f"last {len(stages)} stages", total / max(count, 1))
            stale = 0 if improved else stale + 1
            if patience is not None and stale >= patience:
                break


def _fit_probe(x_tr, y_tr, x_va, y_va, n_classes: int):
    """Standardized L2 logistic regression, ``C`` by validation log loss, folded into one
    linear layer on the raw features: ``(weight (k, d), bias (k,), C)`` as float32."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_tr)
    z_tr, z_va = scaler.transform(x_tr), scaler.transform(x_va)
    best = None
    for c in PROBE_CS:
        clf = LogisticRegression(C=c, max_iter=2000).fit(z_tr, y_tr)
        loss = log_loss(y_va, clf.predict_proba(z_va), labels=clf.classes_)
        if best is None or loss < best[0]:
            best = (loss, c, clf)
    _, c, clf = best
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: the same probabilities as two symmetric logits
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-1, 1]) * intercept / 2
    full_w = np.zeros((n_classes, coef.shape[1]))
    full_b = np.full(n_classes, -1e4)  # a class the probe never saw is never predicted
    full_w[clf.classes_], full_b[clf.classes_] = coef, intercept
    weight = full_w / scaler.scale_
    bias = full_b - weight @ scaler.mean_
    return weight.astype(np.float32), bias.astype(np.float32), c


def _add_failures(failures: dict, failed: dict, paths) -> None:
    """Record images that became unreadable after the probe pass (changed or removed)."""
    for row, reason in failed.items():
        if row not in failures:
            failures[row] = reason
            logger.warning("Left out %s: %s", paths[row], reason)
