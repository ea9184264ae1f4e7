"""The colour policy of :func:`featurize.images.decoding.load_image` (described in its module
docstring): loaded PIL images and numpy arrays of any supported mode or dtype to 8-bit RGB,
transparency composited on white."""

from __future__ import annotations

import numpy as np
from PIL import Image

from featurize.exceptions import ImageDecodeError
from featurize.images.limits import check_size

__all__ = ["array_to_rgb", "to_rgb"]

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_KEYED_TRANSPARENCY_MODES = frozenset({"P", "L", "RGB"})


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Apply the colour policy of the module docstring to a loaded image."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image)
        if mode == "I":
            values = np.clip(values, 0, 65535)
        return _gray_to_rgb(_uint16_to_uint8(values))
    if mode == "F":
        return _gray_to_rgb(_float_to_uint8(np.asarray(image), name))
    try:
        if mode in _ALPHA_MODES or (
            mode in _KEYED_TRANSPARENCY_MODES and "transparency" in image.info
        ):
            if mode == "La":  # Pillow converts premultiplied La only to LA
                image = image.convert("LA")
            return _on_white(image.convert("RGBA"))
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(
            name, f"unsupported image mode {mode!r}: cannot convert it to RGB ({exc})"
        ) from exc


def _on_white(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image on a white background: ``a * colour + (1 - a) * 255``."""
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8)).convert("RGB")


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    """Round ``v / 257`` for integers in [0, 65535]: 65535 -> 255, 32768 -> 128."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _float_to_uint8(values: np.ndarray, name: str) -> np.ndarray:
    """Map floats in [0, 1] to ``round(v * 255)``; refuse NaN, infinities and other ranges."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ImageDecodeError(name, "float image contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ImageDecodeError(
            name,
            f"float image values must lie in [0, 1]; got [{low:g}, {high:g}] "
            "(rescale it, e.g. divide by 255, or clip it)",
        )
    return np.rint(values * 255.0).astype(np.uint8)


def array_to_rgb(array: np.ndarray, name: str, max_pixels: int | None) -> Image.Image:
    """Convert a numpy array following the array policy of the module docstring."""
    shape = array.shape
    valid_shape = array.ndim == 2 or (array.ndim == 3 and shape[2] in (1, 3, 4))
    if not valid_shape:
        hint = ""
        if array.ndim == 3 and shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):
            hint = "; it looks channels-first: pass array.transpose(1, 2, 0)"
        raise ImageDecodeError(
            name,
            f"unsupported array shape {shape}: expected (H, W), (H, W, 1), (H, W, 3) "
            f"or (H, W, 4){hint}",
        )
    if array.size == 0:
        raise ImageDecodeError(name, f"empty array of shape {shape}")
    check_size((shape[1], shape[0]), name, max_pixels)
    kind, itemsize = array.dtype.kind, array.dtype.itemsize
    if kind == "u" and itemsize == 1:
        values = array
    elif kind == "u" and itemsize == 2:  # either byte order
        values = _uint16_to_uint8(array)
    elif kind == "b":
        values = array.astype(np.uint8) * np.uint8(255)
    elif kind == "f":
        values = _float_to_uint8(array, name)
    else:
        raise ImageDecodeError(
            name,
            f"unsupported array dtype {array.dtype}: expected uint8, uint16, bool or float in "
            "[0, 1] (convert it, e.g. array.astype(np.uint8) for values in 0..255)",
        )
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    image = Image.fromarray(np.ascontiguousarray(values))
    if image.mode == "RGBA":
        return _on_white(image)
    return image.convert("RGB")
