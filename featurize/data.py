"""A dataset of images for the DataLoader that never hides or substitutes a failure.

Each item is ``(index, uint8 tensor or None, reason or None)``. A file that cannot be decoded
yields ``None`` and its reason: it is reported for its own row, and never replaced by another
image (timm's ``ImageDataset`` returns the next image on a decode error; so a file silently gets
another file's features).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from featurize.decoding import DEFAULT_MAX_PIXELS, load_image
from featurize.exceptions import ImageDecodeError
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
        try:
            image = load_image(
                self.sources[index], max_pixels=self.max_pixels,
                draft_size=self.preprocessing.draft_size if self.draft else None,
            )
            return index, self.preprocessing.to_uint8(image), None
        except ImageDecodeError as exc:
            return index, None, exc.reason


def collate(items):
    """Stack the good items; keep the failures with their row numbers.

    Returns
    -------
    indices : torch.Tensor of int64
        Rows of the images in ``batch``.
    batch : torch.Tensor of uint8, shape (n_good, 3, H, W), or None
    failures : list of (int, str)
        ``(row, reason)`` for items that could not be decoded.
    """
    good = [(i, t) for i, t, _ in items if t is not None]
    failures = [(i, r) for i, t, r in items if t is None]
    if not good:
        return torch.empty(0, dtype=torch.int64), None, failures
    indices = torch.tensor([i for i, _ in good], dtype=torch.int64)
    return indices, torch.stack([t for _, t in good]), failures
