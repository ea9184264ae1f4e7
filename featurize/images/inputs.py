"""Turn what users pass (paths, a folder, arrays, PIL images, a pandas Series) into a list."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from featurize.images.folder import list_images

_GLOB_CHARS = ("*", "?", "[")


def as_sources(images) -> list:
    """Return a list with one entry per image, in input order.

    Parameters
    ----------
    images : str, path-like, sequence, ndarray, PIL.Image or pandas Series
        * a folder (str or Path): every image below it, recursively, in sorted order;
        * a glob pattern (``"photos/*.jpg"``): the matching images, sorted;
        * a single file path, PIL image, or ``(H, W, 3|4)`` array: one image;
        * a sequence (list, tuple, pandas Series, 1-D object/str array) of paths, bytes, PIL
          images or arrays;
        * a numeric array ``(N, H, W, 3|4)`` (colour) or ``(N, H, W)`` (grayscale): N images.
          A 3-D array whose last axis has length 3 or 4 is read as ONE colour image ``(H, W, C)``.

    Returns
    -------
    list

    Raises
    ------
    TypeError
        For an input that is none of the above (for instance a 2-D numeric matrix).
    """

    if isinstance(images, (str, os.PathLike)):
        text = os.fspath(images)
        if os.path.isdir(text) or any(c in text for c in _GLOB_CHARS):

            return list(list_images(text))
        return [text]
    if isinstance(images, Image.Image):
        return [images]
    if hasattr(images, "to_numpy") and hasattr(images, "index"):  # pandas Series / DataFrame
        values = images.to_numpy()
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise TypeError(
                f"Expected a pandas Series (or one-column DataFrame) of image paths; got shape"
                f" {values.shape}."
            )
        return list(values)
    if isinstance(images, np.ndarray):
        if images.dtype.kind in "OUS":
            if images.ndim == 2 and images.shape[1] == 1:
                images = images[:, 0]
            if images.ndim != 1:
                raise TypeError(
                    f"Expected a 1-D array of image paths; got an array of shape {images.shape}."
                )
            return [str(p) if images.dtype.kind in "US" else p for p in images]
        if images.ndim == 4 and images.shape[-1] in (1, 3, 4):
            return list(images)
        if images.ndim == 3 and images.shape[-1] in (3, 4):
            return [images]
        if images.ndim == 3:
            return list(images)
        raise TypeError(
            "Expected images: a list of paths, a folder, PIL images, or a uint8 array of shape"
            f" (N, H, W, 3), (H, W, 3) or (N, H, W); got a numeric array of shape {images.shape}."
            " featurize turns images into features; it does not take a feature matrix."
        )
    if isinstance(images, (list, tuple)):
        return list(images)
    if hasattr(images, "__len__") and hasattr(images, "__getitem__"):
        return [images[i] for i in range(len(images))]
    raise TypeError(
        "Expected images: a list of paths, a folder, PIL images, or a uint8 array; got"
        f" {type(images).__name__}."
    )
