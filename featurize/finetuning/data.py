"""The data side of fine-tuning: which images and classes, the split, decoding in threads.

* :func:`check_classes`: the classes a training folder can be trained on (the rule of
  ``featurize train``: classes with readable images, at least 2 of them);
* :func:`split_train_val`: a seeded, stratified validation split that never takes a class's only
  image;
* :func:`iter_batches`: uint8 batches decoded and transformed by the bounded thread pool of
  :func:`featurize.images.data.decode_in_threads`. Pillow releases the GIL while it decodes, drafts
  and resizes, so threads decode in parallel with nothing to pickle, fork or bootstrap:
  fine-tuning runs the same under every multiprocessing start method (``spawn`` on macOS and
  Windows, ``forkserver``), inside scikit-learn's or Dask's worker processes and in
  notebooks. No process is started.
* :func:`augment`: random resized crop and horizontal flip drawn from a per-image seed, so the
  result does not depend on which thread ran first.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from itertools import islice

import numpy as np
import torch
from PIL import Image

from featurize.exceptions import ImageDecodeError
from featurize.images.data import decode_in_threads

#: Area range and aspect ratios of the random resized crop (torchvision's ratios).
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def check_classes(data_dir, target: np.ndarray, names: Sequence[str], *,
                  listed: np.ndarray | None = None) -> list[int]:
    """The labels (indices into ``names``) that have images, or ValueError like ``train``'s.

    Parameters
    ----------
    data_dir : path
        The training folder, for the message.
    target : ndarray of shape (n_images,)
        Label index of each readable image.
    names : sequence of str
        Class folder names.
    listed : ndarray, default=None
        Label of every image listed before decoding: a ``UserWarning`` names the classes that
        had images but none readable (the folder listing already named the empty folders).

    Returns
    -------
    list of int
        The labels that have at least one image, sorted. Empty class folders are left out, as
        ``featurize train`` leaves them out.

    Raises
    ------
    ValueError
        When fewer than 2 classes have readable images; the words of ``featurize train``.
    """
    present = sorted(int(c) for c in np.unique(target))
    if len(present) < 2:
        raise ValueError(f"{data_dir} has fewer than 2 classes with readable images.")
    emptied = [] if listed is None else sorted(set(np.unique(listed).tolist()) - set(present))
    if emptied:
        warnings.warn("Classes without a readable image are left out: "
                      f"{', '.join(repr(names[c]) for c in emptied)}.", UserWarning,
                      stacklevel=3)
    return present


def split_train_val(target: np.ndarray, fraction: float, seed: int,
                    names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of row indices into training and validation rows.

    Each class gives ``round(fraction * n)`` images to validation, at least 1 and always leaving
    1 for training; a class with a single image keeps it for training and is never validated
    (a ``UserWarning`` names it), as cross-validation does in ``featurize train``.
    (``sklearn.model_selection.train_test_split`` refuses a class of one image and a validation
    part smaller than the number of classes, both common in small folders.)

    Returns
    -------
    train, val : ndarray of int
        Sorted row indices.
    """
    rng = np.random.default_rng(seed)
    train, val, single = [], [], []
    for label in np.unique(target):
        rows = rng.permutation(np.flatnonzero(target == label))
        if len(rows) < 2:
            single.append(names[int(label)])
            train.extend(rows)
            continue
        n_val = min(max(1, round(fraction * len(rows))), len(rows) - 1)
        val.extend(rows[:n_val])
        train.extend(rows[n_val:])
    if single:
        warnings.warn("Classes with a single readable image are trained on and never "
                      f"validated: {', '.join(repr(n) for n in single)}.", UserWarning,
                      stacklevel=3)
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def crop_box(rng: np.random.Generator, width: int, height: int,
             scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """A random ``(left, top, right, bottom)`` box: torchvision's ``RandomResizedCrop`` rule.

    Drawn from ``rng`` rather than torch's global generator, which threads would share.
    """
    area = width * height
    log_ratio = np.log(ratio)
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(*log_ratio)))
        w = round(np.sqrt(target_area * aspect))
        h = round(np.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height  # fallback: the largest central box within the ratios
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def augment(image: Image.Image, seed: int, size: int, resample: int) -> torch.Tensor:
    """Random resized crop to ``size`` and horizontal flip, drawn from ``seed``; uint8 CHW."""
    rng = np.random.default_rng(seed)
    box = crop_box(rng, *image.size)
    image = image.resize((size, size), resample, box=box)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def iter_batches(items: Sequence, work: Callable, batch_size: int, threads: int,
                 ) -> Iterator[tuple[list, torch.Tensor | None, list[tuple[object, str]]]]:
    """Run ``work(item)`` on every item, in a thread pool, and yield batches in order.

    The thread pool is :func:`featurize.images.data.decode_in_threads`'s (bounded prefetch, queued
    work cancelled when the consumer stops).

    Parameters
    ----------
    items : sequence
        What ``work`` takes (e.g. ``(row, seed)`` pairs).
    work : callable
        Returns a uint8 tensor of shape ``(3, H, W)``, or raises
        :class:`~featurize.exceptions.ImageDecodeError`.
    batch_size : int
    threads : int
        Decoding threads; 0 decodes in the calling thread. At most two batches are decoded
        ahead of the one being consumed.

    Yields
    ------
    kept : list
        The items of the batch that decoded.
    images : Tensor of shape (len(kept), 3, H, W) or None
        None when no item of the batch decoded.
    failures : list of (item, reason)
    """

    def load(item):
        try:
            return item, work(item)
        except ImageDecodeError as exc:
            return item, exc

    done = decode_in_threads(load, ((item,) for item in items), threads, 2 * batch_size)
    while True:
        chunk = list(islice(done, batch_size))
        if not chunk:
            return
        kept = [item for item, r in chunk if not isinstance(r, ImageDecodeError)]
        failures = [(item, r.reason) for item, r in chunk if isinstance(r, ImageDecodeError)]
        tensors = [r for _, r in chunk if not isinstance(r, ImageDecodeError)]
        yield kept, (torch.stack(tensors) if tensors else None), failures
