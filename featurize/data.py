"""A dataset of images for the DataLoader that never hides or substitutes a failure.

Each item is ``(index, uint8 tensor or None, failure or None, key or None)``. A file that cannot
be decoded yields ``None`` and its failure ``(reason, transient)``: it is reported for its own
row, and never replaced by another image (timm's ``ImageDataset`` returns the next image on a
decode error; so a file silently gets another file's features).

A file is read once: its bytes are hashed (``key``) and decoded from memory, so the key names
exactly the pixels that were featurized, even if another program rewrites the file meanwhile.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from featurize.decoding import (
    DEFAULT_MAX_PIXELS,
    describe_source,
    is_transient,
    load_image,
    os_error_reason,
)
from featurize.exceptions import ImageDecodeError
from featurize.keys import read_keyed
from featurize.preprocessing import Preprocessing


class ImageDataset(Dataset):
    """Decode and preprocess images to uint8 tensors.

    Parameters
    ----------
    sources : sequence
        Paths, bytes, PIL images or arrays (see :func:`featurize.decoding.load_image`).
    indices : sequence of int
        Row numbers reported with each item (the positions in the caller's input).
    preprocessing : Preprocessing
        Resize and crop applied on the worker.
    max_pixels : int
        Images larger than this are refused without being decoded.
    draft : bool, default=True
        Let large JPEGs decode at a reduced DCT scale (still >= the resize size).
    """

    def __init__(self, sources: Sequence, indices: Sequence[int], preprocessing: Preprocessing,
                 max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True):
        self.sources = sources
        self.indices = list(indices)
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        self.draft = draft

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        source = self.sources[index]
        draft = self.preprocessing.draft_size if self.draft else None
        key = None
        try:
            if isinstance(source, (str, os.PathLike)):
                key, image = self._read_file(source, draft)
            else:
                image = load_image(source, max_pixels=self.max_pixels, draft_size=draft)
            return index, resize_crop(image, self.preprocessing), None, key
        except ImageDecodeError as exc:
            return index, None, (exc.reason, exc.transient), getattr(exc, "key", key)

    def _read_file(self, path, draft):
        """``(key, image)`` of a file read once: the bytes hashed are the bytes decoded."""
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
            return key, load_image(data, max_pixels=self.max_pixels, draft_size=draft, name=name)
        except ImageDecodeError as exc:
            exc.key = key
            raise


#: Interpolations resized with torch's anti-aliased uint8 kernels (``F.interpolate(...,
#: antialias=True)``, made to match PIL's resampling: pixel values differ by at most 2, on
#: fewer than 1% of pixels), about 3x faster than PIL's ``Image.resize`` for a photo. Others go
#: through :meth:`Preprocessing.to_uint8` (PIL).
_TORCH_RESIZE = ("bilinear", "bicubic")
#: A resized image larger than this many times ``resize_size ** 2`` goes through PIL (see
#: ``featurize.preprocessing``, which resizes only the crop window of extreme aspect ratios).
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


def collate(items):
    """Stack the good items; keep the failures with their row numbers.

    Returns
    -------
    indices : torch.Tensor of int64
        Rows of the images in ``batch``.
    batch : torch.Tensor of uint8, shape (n_good, 3, H, W), or None
    failures : list of (int, str, bool)
        ``(row, reason, transient)`` for items that could not be decoded.
    keys : dict of int to str
        Content key of the bytes decoded, by row, for files (read by the worker).
    """
    good = [(i, t) for i, t, _, _ in items if t is not None]
    failures = [(i, f[0], f[1]) for i, t, f, _ in items if t is None]
    keys = {i: k for i, _, _, k in items if k is not None}
    if not good:
        return torch.empty(0, dtype=torch.int64), None, failures, keys
    indices = torch.tensor([i for i, _ in good], dtype=torch.int64)
    return indices, torch.stack([t for _, t in good]), failures, keys
