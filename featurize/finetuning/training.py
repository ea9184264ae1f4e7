"""The training run of :func:`~featurize.finetuning.finetune.finetune`: the linear probe on
the frozen network's features ("epoch 0"), then the epochs of fine-tuning of the last stages
and the classifier, each scored on the validation split, the best (or last) checkpoint kept.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, log_loss
from sklearn.preprocessing import StandardScaler
from torch import nn

from featurize.finetuning.checkpoint import failure_list, record_history, save_checkpoint
from featurize.finetuning.data import (
    CROP_SCALE,
    augment,
    check_classes,
    iter_batches,
    split_train_val,
)
from featurize.images.decoding import load_image
from featurize.progress import make_progress

__all__ = ["PROBE_CS", "FinetuneResult", "TrainingRun"]

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


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)



@dataclass
class TrainingRun:
    """One fine-tuning run of a network on a folder: the probe, then the epochs.

    :func:`~featurize.finetuning.finetune.finetune` checks the options, loads the network and
    calls :meth:`fit`; the attributes are the network, its preprocessing, the device, the
    autocast type, the decoding threads, the batch size, the verbosity and the start time.
    """


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
        # a bar on a terminal, else log lines (featurize.progress) every 10 s
        progress = make_progress("auto" if self.verbose else "none", interval=10.0, desc=desc,
                                 unit="img")
        progress.start(total)
        return progress

    def _outputs(self, paths, rows, desc: str | None = None):
        """The network's outputs on the centre crops of ``paths[rows]`` (the weights'
        preprocessing, as featurize extracts): ``{row: ndarray}`` and ``{row: reason}``."""
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
