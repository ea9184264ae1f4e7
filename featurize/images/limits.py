"""The size limits of decoding: ``max_pixels`` (checked against the header, before any
pixel is decoded: the decompression-bomb guard) and JPEG draft sizes."""

from __future__ import annotations

import numpy as np

from featurize.exceptions import ImageDecodeError

__all__ = ["DEFAULT_MAX_PIXELS", "check_draft_size", "check_max_pixels", "check_size"]

#: Default limit on ``width * height`` read from an image header: 178,956,970 pixels, twice
#: Pillow's default ``MAX_IMAGE_PIXELS`` (89,478,485), i.e. the size at which Pillow itself
#: raises ``DecompressionBombError``. About a 13,000 x 13,000 photo; decoded as RGB it takes
#: roughly 0.7 GB. Pass ``max_pixels=None`` (or a larger value) to :func:`load_image` to allow more.
DEFAULT_MAX_PIXELS = 178_956_970


def check_max_pixels(max_pixels: object) -> int | None:
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise TypeError(
            f"max_pixels must be a positive int or None; got {type(max_pixels).__name__}"
        )
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int or None; got {max_pixels}")
    return int(max_pixels)


def check_draft_size(draft_size: object) -> tuple[int, int] | None:
    if draft_size is None:
        return None
    try:
        width, height = draft_size  # type: ignore[misc]
    except (TypeError, ValueError):
        width = height = None
    ok = all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
        for v in (width, height)
    )
    if not ok:
        raise ValueError(f"draft_size must be None or (width, height) > 0; got {draft_size!r}")
    return int(width), int(height)  # type: ignore[arg-type]


def check_size(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(name, f"image has no pixels ({width} x {height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            name,
            f"image too large: {width} x {height} = {width * height} pixels exceeds "
            f"max_pixels={max_pixels} (pass a larger max_pixels to allow it)",
        )
