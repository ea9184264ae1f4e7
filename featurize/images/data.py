"""Decode images in a bounded thread pool; never hide or substitute a failure.

:class:`Decoder` turns one row of the caller's input into a :class:`Decoded` item: the uint8
tensor of the image for each preprocessing asked for (several backbones share one read and one
decode), or the failure ``(reason, transient)`` of that row. A failure is reported for its own
row and never replaced by another image (timm's ``ImageDataset`` returns the next image on a
decode error; so a file silently gets another file's features).

A file is read once: its bytes are hashed (``key``) and decoded from memory, so the key names
exactly the pixels that were featurized, even if another program rewrites the file meanwhile.

:func:`decode_in_threads` runs a decoder over rows in a thread pool with a bounded prefetch
window and yields the items in order. Threads, not processes: Pillow releases the GIL while it
decodes, converts and resizes, and torch's resize kernels do too, so threads decode as fast as
worker processes did, with nothing to pickle, fork or bootstrap -- featurize runs inside
scikit-learn's workers, notebooks and ``spawn``/``forkserver`` scripts alike.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from featurize.exceptions import ImageDecodeError
from featurize.images.decoding import (
    DEFAULT_MAX_PIXELS,
    describe_source,
    is_transient,
    load_image,
    load_image_drafts,
    os_error_reason,
)
from featurize.images.preprocessing import Preprocessing
from featurize.storage.keys import read_keyed


class Decoded(NamedTuple):
    """One decoded row: ``tensors`` (by preprocessing number) or a ``failure``."""

    row: int
    tensors: dict[int, torch.Tensor] | None
    failure: tuple[str, bool] | None  # (reason, transient)
    key: str | None  # content key of the bytes decoded (files only)


class Decoder:
    """Read, decode and preprocess one input row for one or more preprocessings.

    Parameters
    ----------
    sources : sequence
        Paths, bytes, PIL images or arrays (see :func:`featurize.images.decoding.load_image`).
    preprocessings : sequence of Preprocessing
        Resize and crop of each consumer (one per backbone).
    drafts : sequence of bool, default=None
        For each preprocessing, whether large JPEGs may decode at a reduced DCT scale (still
        >= its resize size); None: all may.
    max_pixels : int
        Images larger than this are refused without being decoded.
    """

    def __init__(self, sources: Sequence, preprocessings: Sequence[Preprocessing],
                 drafts: Sequence[bool] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.sources = sources
        self.preprocessings = list(preprocessings)
        self.drafts = [True] * len(self.preprocessings) if drafts is None else list(drafts)
        self.max_pixels = max_pixels

    def __call__(self, row: int, which: Sequence[int] = (0,)) -> Decoded:
        """Decode ``sources[row]`` for the preprocessings numbered ``which``."""
        source = self.sources[row]
        preps = [self.preprocessings[i] for i in which]
        drafts = [p.draft_size if self.drafts[i] else None for i, p in zip(which, preps)]
        key = None
        try:
            if isinstance(source, (str, os.PathLike)):
                key, images = self._read_file(source, drafts)
            elif isinstance(source, (bytes, bytearray, memoryview)):
                images = load_image_drafts(source, drafts, max_pixels=self.max_pixels)
            else:  # PIL images and arrays: nothing to draft
                images = [load_image(source, max_pixels=self.max_pixels)] * len(preps)
            tensors = {i: resize_crop(image, p) for i, image, p in zip(which, images, preps)}
            return Decoded(row, tensors, None, key)
        except ImageDecodeError as exc:
            return Decoded(row, None, (exc.reason, exc.transient), getattr(exc, "key", key))

    def _read_file(self, path, drafts):
        """``(key, images)`` of a file read once: the bytes hashed are the bytes decoded."""
        name = describe_source(path)
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            info = None
        if info is None or not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            load_image(path, max_pixels=self.max_pixels)  # raises the specific reason
        try:
            data, key = read_keyed(path)
        except OSError as exc:
            raise ImageDecodeError(name, os_error_reason(path, exc),
                                   transient=is_transient(exc)) from exc
        try:
            return key, load_image_drafts(data, drafts, max_pixels=self.max_pixels, name=name)
        except ImageDecodeError as exc:
            exc.key = key
            raise


def decode_in_threads(decode: Callable[..., Decoded], work: Iterable[tuple], threads: int,
                      window: int) -> Iterator[Decoded]:
    """``decode(*args)`` for each ``args`` of ``work``, in order, ``threads`` at a time.

    At most ``window`` items are decoded ahead of the consumer (bounded memory). With
    ``threads=0`` everything runs in the calling thread. When the consumer stops early
    (``break``, an exception, Ctrl-C), queued work is cancelled and the images being decoded
    finish before this returns.
    """
    if threads <= 0:
        for args in work:
            yield decode(*args)
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="featurize-decode")
    pending: deque = deque()
    work = iter(work)
    try:
        for args in work:
            pending.append(pool.submit(decode, *args))
            if len(pending) >= max(1, window):
                break
        while pending:
            item = pending.popleft().result()
            for args in work:  # top the window up by one
                pending.append(pool.submit(decode, *args))
                break
            yield item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def default_decode_threads(n_images: int, device=None) -> int:
    """Decode threads: none for a single image, else one per core (at most 8).

    Threads cost nothing to start, so every job of two images or more decodes in parallel. On
    the CPU they share the cores with the forward pass, which is most of the work; the thread
    pool fills the time the forward pass leaves (``benchmarks/throughput.py``).
    """
    if n_images <= 1:
        return 0
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1))
    return max(1, min(8, cpus))


#: Interpolations resized with torch's anti-aliased uint8 kernels (``F.interpolate(...,
#: antialias=True)``, made to match PIL's resampling: pixel values differ by at most 2, on
#: fewer than 1% of pixels), about 3x faster than PIL's ``Image.resize`` for a photo. Others go
#: through :meth:`Preprocessing.to_uint8` (PIL).
_TORCH_RESIZE = ("bilinear", "bicubic")
#: A resized image larger than this many times ``resize_size ** 2`` goes through PIL (see
#: ``featurize.images.preprocessing``, which resizes only the crop window of extreme aspect ratios).
_MAX_TORCH_RESIZE = 16


def resize_crop(image: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    """Resize the shorter side and centre-crop, as :meth:`Preprocessing.to_uint8` does, faster.

    Same geometry as ``to_uint8`` (torchvision's rounding: short side exact, long side
    truncated; centre crop offsets rounded), resampled by torch's anti-aliased uint8 kernels
    for bilinear and bicubic. The numbers are part of :data:`featurize.FEATURE_VERSION`.

    Parameters
    ----------
    image : PIL.Image.Image
        An RGB image.
    preprocessing : Preprocessing

    Returns
    -------
    torch.Tensor of shape (3, crop_size, crop_size), dtype uint8
    """
    w, h = image.size
    size, crop = preprocessing.resize_size, preprocessing.crop_size
    scale = size / min(w, h)
    new_w, new_h = (size, int(h * scale)) if w <= h else (int(w * scale), size)
    if (preprocessing.interpolation not in _TORCH_RESIZE or min(w, h) == size
            or min(new_w, new_h) < crop or new_w * new_h > _MAX_TORCH_RESIZE * size ** 2):
        return preprocessing.to_uint8(image)
    # (1, 3, H, W) with channels_last strides: the layout of torch's fast uint8 kernels.
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)
    resized = torch.nn.functional.interpolate(
        pixels, size=(new_h, new_w), mode=preprocessing.interpolation, antialias=True,
        align_corners=False,
    )
    left = int(round((new_w - crop) / 2.0))
    top = int(round((new_h - crop) / 2.0))
    return resized[0, :, top:top + crop, left:left + crop].contiguous()


def collate(items: Sequence[Decoded], part: int = 0, pin_memory: bool = False):
    """Stack the good items' tensors number ``part``; keep the failures with their rows.

    Returns
    -------
    indices : ndarray of int64
        Rows of the images in ``batch``.
    batch : torch.Tensor of uint8, shape (n_good, 3, H, W), or None
    failures : list of (int, str, bool)
        ``(row, reason, transient)`` for items that could not be decoded.
    keys : dict of int to str
        Content key of the bytes decoded, by row, for files.
    """
    good = [item for item in items if item.tensors is not None]
    failures = [(item.row, *item.failure) for item in items if item.tensors is None]
    keys = {item.row: item.key for item in items if item.key is not None}
    if not good:
        return np.empty(0, dtype=np.int64), None, failures, keys
    batch = torch.stack([item.tensors[part] for item in good])
    if pin_memory:
        batch = batch.pin_memory()
    return np.array([item.row for item in good], dtype=np.int64), batch, failures, keys
