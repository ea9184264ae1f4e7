"""Preprocessing that comes with the weights: resize, centre crop, mean and std.

The work is split in two so that it runs where it is cheapest:

* in the decode threads (CPU), :meth:`Preprocessing.to_uint8` resizes and crops a PIL image
  and returns a ``uint8`` tensor of shape ``(3, crop, crop)`` (four times smaller to transfer
  than float32);
* on the device, :meth:`Preprocessing.normalize` turns a ``uint8`` batch into normalized floats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

#: A resized image larger than this many times ``resize_size ** 2`` (an aspect ratio beyond
#: 16:1) is resized only inside the centre-crop window, with the same geometry (pixel values may
#: differ by 1 from a full resize). Resizing the short side of a 200000 x 2 strip (0.4
#: megapixels, far under ``max_pixels``) to 256 would otherwise allocate a 25.6 million x 256
#: image (20 GB) only to keep its centre.
_MAX_FULL_RESIZE = 16


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a backbone, as the weights define it.

    Parameters
    ----------
    resize_size : int
        The shorter image side is resized to this many pixels (aspect ratio kept).
    crop_size : int
        A centre square of this size is cropped after resizing; the network input size.
    mean, std : tuple of float
        Per-channel normalization applied to pixel values scaled to [0, 1].
    interpolation : {"bilinear", "bicubic", "nearest", "lanczos"}
        Resampling filter of the resize (always anti-aliased, as PIL does).
    """

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        """Return the preprocessing as a JSON-able dict (part of every cache key)."""
        d = asdict(self)
        d["mean"] = [float(v) for v in self.mean]
        d["std"] = [float(v) for v in self.std]
        return d

    @property
    def draft_size(self) -> tuple[int, int]:
        """Smallest decoded size that keeps the resize exact enough: both sides >= resize_size."""
        return (self.resize_size, self.resize_size)

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """Resize the shorter side, centre-crop, and return a uint8 tensor ``(3, crop, crop)``.

        Parameters
        ----------
        image : PIL.Image.Image
            An RGB image.

        Returns
        -------
        torch.Tensor of shape (3, crop_size, crop_size), dtype uint8
        """
        w, h = image.size
        short = min(w, h)
        if short != self.resize_size:
            scale = self.resize_size / short
            # Same rounding as torchvision's Resize(int): the short side is exact, the long side
            # truncated.
            if w <= h:
                new_w, new_h = self.resize_size, int(h * scale)
            else:
                new_w, new_h = int(w * scale), self.resize_size
            new_w, new_h = max(new_w, 1), max(new_h, 1)
            if new_w * new_h <= _MAX_FULL_RESIZE * self.resize_size ** 2:
                image = image.resize((new_w, new_h), _PIL_FILTERS[self.interpolation])
            else:  # an extreme aspect ratio: resize only the window the centre crop keeps
                win_w, win_h = min(new_w, self.crop_size), min(new_h, self.crop_size)
                left = int(round((new_w - win_w) / 2.0))
                top = int(round((new_h - win_h) / 2.0))
                sx, sy = w / new_w, h / new_h
                box = (left * sx, top * sy, (left + win_w) * sx, (top + win_h) * sy)
                image = image.resize((win_w, win_h), _PIL_FILTERS[self.interpolation], box=box)
        image = _center_crop(image, self.crop_size)
        array = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Scale a uint8 batch ``(N, 3, H, W)`` to [0, 1] and normalize it, on its own device."""
        mean = torch.tensor(self.mean, device=batch.device, dtype=dtype).view(1, 3, 1, 1) * 255.0
        inv_std = 1.0 / (
            torch.tensor(self.std, device=batch.device, dtype=dtype).view(1, 3, 1, 1) * 255.0
        )
        return (batch.to(dtype) - mean) * inv_std


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    """Centre crop as torchvision does, padding with black when the image is smaller than size."""
    w, h = image.size
    if w < size or h < size:
        padded = Image.new("RGB", (max(w, size), max(h, size)))
        padded.paste(image, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        image, (w, h) = padded, padded.size
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))
