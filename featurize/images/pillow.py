"""Pillow as featurize uses it: the formats it tries, the errors it raises for bad data, and
its two global settings, overridden only while featurize decodes (reference-counted)."""

from __future__ import annotations

import contextlib
import struct
import threading
import zlib
from collections.abc import Iterator
from functools import lru_cache

from PIL import Image, ImageFile

__all__ = ["PILLOW_ERRORS", "decodable_formats", "strict_pillow"]

# Pillow formats we refuse although Pillow registers them: EPS runs Ghostscript, WMF/EMF need a
# Windows handler, the others are identify-only stubs that cannot produce pixels.
_REFUSED_FORMATS = frozenset({"EPS", "WMF", "MPEG", "BUFR", "GRIB", "HDF5"})
_FIRST_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "MPO", "AVIF")
# Exceptions Pillow raises for bad data while opening, loading or transposing an image.
PILLOW_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,  # "broken PNG file", "not a TIFF file"...
    ValueError,  # "Invalid dimensions", unknown modes...
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,  # some plugins raise it for malformed tags (e.g. TIFF "Missing dimensions")
    zlib.error,
    MemoryError,
    Image.DecompressionBombError,
)



_state_lock = threading.Lock()
_state_users = 0
_saved_state: tuple[object, bool] = (None, False)


@contextlib.contextmanager
def strict_pillow() -> Iterator[None]:
    """Switch off Pillow's bomb check and force strict truncation handling, reference-counted.

    Pillow reads two module globals: ``Image.MAX_IMAGE_PIXELS`` (warns above it, raises above
    twice it) and ``ImageFile.LOAD_TRUNCATED_IMAGES``. featurize applies its own per-call
    ``max_pixels`` and must fail on truncated files, so while at least one featurize decode runs
    in this process the first is ``None`` and the second ``False``. The first thread to enter
    saves the user's values and the last one to leave restores them, so concurrent decodes in a
    thread pool never restore a half-overridden state, and no ``warnings`` filter is touched
    (``warnings.catch_warnings`` is not thread-safe before Python 3.14). Other code that uses
    Pillow in another thread during that window sees the overridden values.
    """
    global _state_users, _saved_state
    with _state_lock:
        if _state_users == 0:
            _saved_state = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
            Image.MAX_IMAGE_PIXELS = None
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _state_users += 1
    try:
        yield
    finally:
        with _state_lock:
            _state_users -= 1
            if _state_users == 0:
                _restore_pillow_state()


def _restore_pillow_state() -> None:
    # Leave a value alone if other code changed it meanwhile: only undo our own override.
    if Image.MAX_IMAGE_PIXELS is None:
        Image.MAX_IMAGE_PIXELS = _saved_state[0]  # type: ignore[assignment]
    if ImageFile.LOAD_TRUNCATED_IMAGES is False:
        ImageFile.LOAD_TRUNCATED_IMAGES = _saved_state[1]


@lru_cache(maxsize=1)
def decodable_formats() -> tuple[str, ...]:
    """Pillow formats tried by :func:`load_image`, most common first."""
    Image.init()
    registered = [fmt for fmt in Image.OPEN if fmt not in _REFUSED_FORMATS]
    first = [fmt for fmt in _FIRST_FORMATS if fmt in registered]
    return tuple(first + sorted(set(registered) - set(first)))
