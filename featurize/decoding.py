"""Turn one image source into a fully loaded RGB PIL image, or fail with a clear reason.

This module is the only place where featurize decodes images. Every other layer (the dataset,
the extractor, the command line) calls :func:`load_image` and relies on its contract:

* it returns a fully loaded ``PIL.Image.Image`` in mode ``"RGB"`` with EXIF orientation applied;
* for any bad input it raises :class:`~featurize.exceptions.ImageDecodeError` (never another
  exception type), whose ``reason`` says what is wrong in a few words.

Decoding policy
---------------
* **Formats.** Whatever this Pillow build decodes (JPEG, PNG, GIF, BMP, TIFF, WebP, PPM/PGM/PBM,
  TGA, ICO, JPEG 2000, AVIF on Pillow >= 11.2, ...), recognised by content, never by file
  extension. EPS/PostScript (Pillow would run Ghostscript on it), WMF/EMF and Pillow's
  identify-only stubs (MPEG, BUFR, GRIB, HDF5) are refused as unsupported. SVG, PDF and HEIC are
  not raster formats Pillow reads and are refused with a hint.
* **Frames.** Animated GIF/WebP/APNG and multi-page TIFF: the first frame only.
* **Orientation.** The EXIF (or XMP) orientation tag is applied as
  ``PIL.ImageOps.exif_transpose`` does. A corrupt EXIF block is ignored (orientation 1).
* **Colour.** ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX`` are converted
  with Pillow's ``convert("RGB")`` (no ICC colour management; Adobe's inverted CMYK JPEGs are
  un-inverted by Pillow's JPEG decoder). Transparent images (``RGBA``, ``RGBa``, ``LA``,
  ``La``, ``PA``, and ``P``/``L``/``RGB`` with a ``transparency`` key) are composited on a
  **white** background. 16-bit grayscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) and 32-bit
  integer ``I`` images are read as 0..65535 (``I`` is clipped to that range) and scaled to 8 bits
  by ``round(v / 257)``, so 65535 -> 255 and 32768 -> 128 (Pillow's own ``convert`` would clip
  everything above 255 to white). Floating point ``F`` images must hold values in [0, 1]
  (mapped to ``round(v * 255)``); anything else is refused. 16-bit RGB PNGs are reduced to 8 bits
  by Pillow's PNG decoder.
* **Size limit.** ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`) is checked against the size
  in the file header, before any pixel is decoded or allocated, so decompression bombs are refused
  cheaply. While featurize decodes, Pillow's own bomb check (``PIL.Image.MAX_IMAGE_PIXELS``) is
  switched off because ``max_pixels`` replaces it, and ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is
  forced to ``False`` so a truncated file fails instead of being silently padded with grey. Both
  Pillow globals are restored as soon as the last concurrent featurize decode finishes (see
  :func:`_strict_pillow`); they are never changed permanently.
* **In-memory inputs.** numpy arrays of shape ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
  ``(H, W, 4)`` with dtype ``uint8``, ``uint16`` (``round(v / 257)``), ``bool`` (0 / 255) or float
  with values in [0, 1] (``round(v * 255)``); 4 channels are RGBA, composited on white. PIL images
  follow the colour and orientation policy above. ``bytes`` hold an encoded file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import IO, NamedTuple, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from featurize.exceptions import ImageDecodeError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageHeader",
    "ImageSource",
    "describe_source",
    "load_image",
    "probe_image",
]

logger = logging.getLogger(__name__)

#: File extensions (lowercase, with the dot) that folder listings treat as images. Decoding itself
#: never looks at the extension: a JPEG named ``.png`` decodes as a JPEG. ``.avif`` needs
#: Pillow >= 11.2 built with libavif; on other builds such files fail with a clear reason.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".avif", ".qoi",
    ".mpo",
)  # fmt: skip

#: Default limit on ``width * height`` read from an image header: 178,956,970 pixels, twice
#: Pillow's default ``MAX_IMAGE_PIXELS`` (89,478,485), i.e. the size at which Pillow itself
#: raises ``DecompressionBombError``. About a 13,000 x 13,000 photo; decoded as RGB it takes
#: roughly 0.7 GB. Pass ``max_pixels=None`` (or a larger value) to :func:`load_image` to allow more.
DEFAULT_MAX_PIXELS = 178_956_970

#: What :func:`load_image` accepts.
ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image, np.ndarray]

# Pillow formats we refuse although Pillow registers them: EPS runs Ghostscript, WMF/EMF need a
# Windows handler, the others are identify-only stubs that cannot produce pixels.
_REFUSED_FORMATS = frozenset({"EPS", "WMF", "MPEG", "BUFR", "GRIB", "HDF5"})
_FIRST_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "MPO", "AVIF")
_ORIENTATION_TAG = 0x0112
_HEAD_BYTES = 32  # enough for the WebP canvas size
_SNIFF_BYTES = 1024  # read only after a failure, to describe what the data is
_PREVIEW_BYTES = 20
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_KEYED_TRANSPARENCY_MODES = frozenset({"P", "L", "RGB"})
# Exceptions Pillow raises for bad data while opening, loading or transposing an image.
_PILLOW_ERRORS: tuple[type[BaseException], ...] = (
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


class ImageHeader(NamedTuple):
    """What an image header says, read by :func:`probe_image` without decoding pixels.

    Attributes
    ----------
    format : str
        Pillow's format name (``"JPEG"``, ``"PNG"``...).
    mode : str
        Pillow's mode of the stored pixels (``"RGB"``, ``"L"``, ``"CMYK"``...).
    width, height : int
        Stored size in pixels, before EXIF orientation.
    """

    format: str
    mode: str
    width: int
    height: int


# --------------------------------------------------------------------------------------------
# Pillow's global settings, overridden only while featurize decodes
# --------------------------------------------------------------------------------------------

_state_lock = threading.Lock()
_state_users = 0
_saved_state: tuple[object, bool] = (None, False)


@contextlib.contextmanager
def _strict_pillow() -> Iterator[None]:
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
def _decodable_formats() -> tuple[str, ...]:
    """Pillow formats tried by :func:`load_image`, most common first."""
    Image.init()
    registered = [fmt for fmt in Image.OPEN if fmt not in _REFUSED_FORMATS]
    first = [fmt for fmt in _FIRST_FORMATS if fmt in registered]
    return tuple(first + sorted(set(registered) - set(first)))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def describe_source(source: object, index: int | None = None) -> str:
    """Return a printable name for an image source, for error messages and failure lists.

    Parameters
    ----------
    source : str, os.PathLike, bytes, PIL.Image.Image, ndarray or object
        An image source as accepted by :func:`load_image`.
    index : int, default=None
        Position of the source in its batch; in-memory sources are named by it.

    Returns
    -------
    name : str
        The path for paths; ``"<PIL image #i>"``, ``"<array #i>"``, ``"<bytes #i>"`` for in-memory
        sources (without ``" #i"`` when ``index`` is None) and ``"<TypeName #i>"`` otherwise.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            return os.fsdecode(os.fspath(source))
        except TypeError:  # a PathLike whose __fspath__ returns neither str nor bytes
            pass
    if isinstance(source, Image.Image):
        label = "PIL image"
    elif isinstance(source, np.ndarray):
        label = "array"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = "bytes"
    else:
        label = type(source).__name__
    return f"<{label}>" if index is None else f"<{label} #{index}>"


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode an image source into a fully loaded RGB image.

    The decoding policy (formats, first frame, EXIF orientation, colour conversions, 16-bit and
    float scaling, transparency on white, size limit) is described in the module docstring.

    Parameters
    ----------
    source : str, os.PathLike, bytes, PIL.Image.Image or ndarray
        A file path; ``bytes`` (or ``bytearray``/``memoryview``) holding an encoded image file; a
        PIL image; or a numpy array of shape ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
        ``(H, W, 4)`` with dtype ``uint8``, ``uint16``, ``bool`` or float (values in [0, 1]).
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS
        Refuse images whose ``width * height`` (as stated in the file header, before any
        decoding) exceeds this. ``None`` disables the limit. Also applied to in-memory inputs.
    draft_size : tuple of (int, int), default=None
        ``(width, height)`` the caller needs, in displayed orientation. For JPEG files and bytes
        only, the decoder may then use DCT scaling (1/2, 1/4 or 1/8) while keeping the result
        at least this large in both dimensions (EXIF rotation is accounted for). Much faster for
        large photos, but an approximation: features change slightly compared with a full decode
        followed by a resize. Ignored for other formats and for PIL or array inputs.
    name : str, default=None
        The file ``bytes`` were read from: errors name it and speak of a file.

    Returns
    -------
    image : PIL.Image.Image
        Mode ``"RGB"``, fully loaded. An input PIL image that is already a loaded RGB image
        without EXIF orientation is returned as is (not copied).

    Raises
    ------
    ImageDecodeError
        For any input that cannot be decoded: missing file, directory, empty, not an image,
        unsupported format or mode, truncated or corrupt data, too large, bad array. Its
        ``reason`` attribute says which, and the original exception is chained.
    TypeError, ValueError
        For invalid ``max_pixels`` or ``draft_size`` parameters (not for bad inputs).
    """
    max_pixels = _check_max_pixels(max_pixels)
    draft_size = _check_draft_size(draft_size)
    what = "data" if name is None else "file"
    name = describe_source(source) if name is None else name
    if isinstance(source, (str, os.PathLike)):
        with _open_path(source, name) as fp, _strict_pillow():
            image = _open_stream(fp, name, "file", max_pixels)
            return _load_opened(image, name, draft_size)
    if isinstance(source, (bytes, bytearray, memoryview)):
        with _strict_pillow():
            image = _open_stream(io.BytesIO(source), name, what, max_pixels)
            return _load_opened(image, name, draft_size)
    if isinstance(source, Image.Image):
        _check_size(source.size, name, max_pixels)
        with _strict_pillow():
            return _load_opened(source, name, None)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, name, max_pixels)
    raise ImageDecodeError(
        name,
        f"unsupported input type {type(source).__qualname__}: expected a file path, bytes, "
        "a PIL image or a numpy array",
    )


def load_image_drafts(
    data: bytes,
    draft_sizes: Sequence[tuple[int, int] | None],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> list[Image.Image]:
    """Decode encoded bytes for several draft sizes, once per distinct result.

    The same images as ``[load_image(data, draft_size=d, ...) for d in draft_sizes]``, pixel for
    pixel, but a JPEG whose DCT scaling comes out the same for two draft sizes (the usual case
    for backbones of similar input sizes) is decoded once: how several backbones share one
    decode of each image.

    Parameters
    ----------
    data : bytes
        An encoded image file.
    draft_sizes : sequence of (int, int) or None
        One draft size (see :func:`load_image`) per image wanted.
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS
    name : str, default=None
        The file ``data`` was read from, for errors.

    Returns
    -------
    list of PIL.Image.Image
        One RGB image per draft size (the same object where the decodes coincide).

    Raises
    ------
    ImageDecodeError
        As :func:`load_image`.
    """
    max_pixels = _check_max_pixels(max_pixels)
    sizes = [_check_draft_size(d) for d in draft_sizes]
    what = "data" if name is None else "file"
    name = describe_source(data) if name is None else name
    decoded: dict[tuple, Image.Image] = {}
    images = []
    with _strict_pillow():
        for size in sizes:
            image = _open_stream(io.BytesIO(data), name, what, max_pixels)
            _apply_draft(image, size)
            scale = (size is None, image.size, image.mode)  # what the decode depends on
            if scale not in decoded:
                decoded[scale] = _decode_opened(image, name)
            images.append(decoded[scale])
    return images


def probe_image(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> ImageHeader:
    """Read an image header with Pillow without decoding its pixels.

    Cheap (a few kilobytes read); used to verify folders. A file that passes may still turn out
    truncated or corrupt when :func:`load_image` decodes its pixels.

    Parameters
    ----------
    source : str, os.PathLike or bytes
        A file path, or ``bytes`` holding an encoded image.
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS
        Same limit as :func:`load_image`.

    Returns
    -------
    header : ImageHeader
        Format, mode and stored size.

    Raises
    ------
    ImageDecodeError
        With the same reasons as :func:`load_image` for everything detectable from the header.
    """
    max_pixels = _check_max_pixels(max_pixels)
    name = describe_source(source)
    if isinstance(source, (str, os.PathLike)):
        stream_cm: contextlib.AbstractContextManager[IO[bytes]] = _open_path(source, name)
        what = "file"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        stream_cm = contextlib.nullcontext(io.BytesIO(source))
        what = "data"
    else:
        raise ImageDecodeError(
            name, f"unsupported input type {type(source).__qualname__}: expected a path or bytes"
        )
    with stream_cm as fp, _strict_pillow():
        image = _open_stream(fp, name, what, max_pixels)
        return ImageHeader(str(image.format), image.mode, image.size[0], image.size[1])


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _check_max_pixels(max_pixels: object) -> int | None:
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise TypeError(
            f"max_pixels must be a positive int or None; got {type(max_pixels).__name__}"
        )
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int or None; got {max_pixels}")
    return int(max_pixels)


def _check_draft_size(draft_size: object) -> tuple[int, int] | None:
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


def _check_size(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(name, f"image has no pixels ({width} x {height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            name,
            f"image too large: {width} x {height} = {width * height} pixels exceeds "
            f"max_pixels={max_pixels} (pass a larger max_pixels to allow it)",
        )


# --------------------------------------------------------------------------------------------
# Files and encoded data
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_path(source: str | os.PathLike[str], name: str) -> Iterator[IO[bytes]]:
    """Open a path for reading, turning every file-system failure into an ImageDecodeError."""
    path = os.fspath(source)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ImageDecodeError(name, "is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageDecodeError(name, "not a regular file (a device, socket or pipe)")
        if info.st_size == 0:
            raise ImageDecodeError(name, "empty file (0 bytes)")
        fp = open(path, "rb")
    except ImageDecodeError:
        raise
    except OSError as exc:
        raise ImageDecodeError(name, os_error_reason(path, exc),
                               transient=is_transient(exc)) from exc
    except ValueError as exc:  # "embedded null byte"
        raise ImageDecodeError(name, f"invalid path ({exc})") from exc
    with fp:
        yield fp


def is_transient(exc: BaseException) -> bool:
    """An error that says nothing about the file's content: not enough memory, or an I/O error
    of the system (Pillow's own errors for bad data carry no ``errno``)."""
    if isinstance(exc, MemoryError):
        return True
    permanent = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
    return isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, permanent)


def os_error_reason(path: str | bytes, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            try:
                target = os.fsdecode(os.readlink(path))
            except OSError:
                target = "?"
            return f"broken symbolic link (its target {target!r} does not exist)"
        return "file not found"
    if isinstance(exc, NotADirectoryError):
        return "file not found (a component of the path is a file, not a folder)"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied (cannot read the file or a folder above it)"
    return f"cannot read file: {exc.strerror or exc}"


def _open_stream(fp: IO[bytes], name: str, what: str, max_pixels: int | None) -> Image.Image:
    """Identify the image in ``fp`` and check its header size; no pixel is decoded."""
    try:
        head = fp.read(_HEAD_BYTES)
        fp.seek(0)
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot read {what}: {exc.strerror or exc}",
                               transient=True) from exc
    if not head:
        raise ImageDecodeError(name, f"empty {what} (0 bytes)")
    webp_size = _webp_canvas_size(head)
    if webp_size is not None:  # Pillow allocates the WebP canvas while opening: check first
        _check_size(webp_size, name, max_pixels)
    try:
        image = Image.open(fp, formats=_decodable_formats())
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(name, _unidentified_reason(fp, what)) from exc
    except _PILLOW_ERRORS as exc:
        fmt = _signature_format(head) or "image"
        reason = f"corrupt or truncated {fmt} header ({type(exc).__name__}: {exc})"
        raise ImageDecodeError(name, reason) from exc
    _check_size(image.size, name, max_pixels)
    return image


def _load_opened(image: Image.Image, name: str, draft_size: tuple[int, int] | None) -> Image.Image:
    """Decode the pixels of an opened image, apply orientation, convert to RGB."""
    _apply_draft(image, draft_size)
    return _decode_opened(image, name)


def _apply_draft(image: Image.Image, draft_size: tuple[int, int] | None) -> None:
    """Let a JPEG decode at the DCT scale that keeps it >= ``draft_size`` (displayed)."""
    if draft_size is not None and image.format in ("JPEG", "MPO"):
        width, height = draft_size
        if _orientation(image) in (5, 6, 7, 8):  # stored rotated by 90 degrees
            width, height = height, width
        image.draft("RGB", (width, height))


def _decode_opened(image: Image.Image, name: str) -> Image.Image:
    try:
        image.load()
    except _PILLOW_ERRORS as exc:
        raise ImageDecodeError(name, _load_error_reason(image, exc),
                               transient=is_transient(exc)) from exc
    orientation = _orientation(image)
    if orientation != 1:
        try:
            image = ImageOps.exif_transpose(image)
        except _PILLOW_ERRORS as exc:
            reason = f"cannot apply EXIF orientation {orientation} ({type(exc).__name__}: {exc})"
            raise ImageDecodeError(name, reason) from exc
    return _to_rgb(image, name)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except _PILLOW_ERRORS as exc:  # corrupt EXIF block: the pixels are still fine
        logger.debug("ignoring unreadable EXIF data (%s: %s)", type(exc).__name__, exc)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _load_error_reason(image: Image.Image, exc: BaseException) -> str:
    fmt = image.format or "image"
    width, height = image.size
    message = str(exc) or type(exc).__name__
    lowered = message.lower()
    if isinstance(exc, EOFError) or "truncated" in lowered or "broken data stream" in lowered:
        return (
            f"truncated image data: the {fmt} data ends before its {width} x {height} pixels "
            f"are complete ({message})"
        )
    if isinstance(exc, MemoryError):
        return f"not enough memory to decode this {width} x {height} {fmt} image"
    if "not available" in lowered or "ghostscript" in lowered:
        return f"unsupported image format: this Pillow build cannot decode {fmt} ({message})"
    return f"corrupt {fmt} image data ({type(exc).__name__}: {message})"


def _webp_canvas_size(head: bytes) -> tuple[int, int] | None:
    """Canvas size of a WebP file from its first 30 bytes (as Pillow >= 12 reads it)."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(head[26:28], "little") & 0x3FFF,
            int.from_bytes(head[28:30], "little") & 0x3FFF,
        )
    return None


# --------------------------------------------------------------------------------------------
# Describing data that is not a decodable image
# --------------------------------------------------------------------------------------------

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
)


def _signature_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for magic, fmt in _SIGNATURES:
        if head.startswith(magic):
            return fmt
    return None


def _unidentified_reason(fp: IO[bytes], what: str) -> str:
    """Why Pillow recognised no decodable format: say what the data looks like instead."""
    try:
        fp.seek(0)
        head = fp.read(_SNIFF_BYTES)
    except OSError as exc:
        return f"cannot read {what}: {exc.strerror or exc}"
    unsupported = _unsupported_format(fp, head)
    if unsupported is not None:
        return f"unsupported image format: {unsupported}"
    preview = repr(head[:_PREVIEW_BYTES]) + ("..." if len(head) > _PREVIEW_BYTES else "")
    fmt = _signature_format(head)
    if fmt is not None:
        return f"corrupt or truncated {fmt} header ({what} starts with {preview})"
    reason = f"not a recognised image format ({what} starts with {preview})"
    looks_like = _looks_like(head)
    return f"{reason}: looks like {looks_like}" if looks_like else reason


def _unsupported_format(fp: IO[bytes], head: bytes) -> str | None:
    """Describe data that is an image, but of a format featurize does not decode."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in stripped and not stripped.startswith((b"<!doctype html", b"<html")):
        return "SVG vector graphics (featurize reads raster images; export it to PNG first)"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC/HEIF (Pillow cannot decode it; convert it to JPEG, or install pillow-heif)"
        if brand in (b"avif", b"avis"):
            return "AVIF (this Pillow build cannot decode it; Pillow >= 11.2 with libavif can)"
    if head.startswith(b"%PDF-"):
        return "PDF document (render the page to PNG or JPEG first)"
    try:  # formats Pillow knows but featurize refuses (EPS, WMF...): identify them, never decode
        fp.seek(0)
        with Image.open(fp) as other:
            fmt = other.format
    except _PILLOW_ERRORS:
        return None
    if fmt == "EPS":
        return "EPS/PostScript (featurize does not run Ghostscript; export it to PNG first)"
    return f"{fmt} (not decoded by featurize)"


def _looks_like(head: bytes) -> str | None:
    """A human description of non-image data, from its first bytes."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<!doctype html", b"<html")) or any(
        tag in stripped for tag in (b"<html", b"<head>", b"<body")
    ):
        return "an HTML web page (an error page or a failed download saved under an image name?)"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer file, not the image itself (run: git lfs pull)"
    if stripped.startswith(b"<?xml"):
        return "an XML document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data"
    if head[4:8] == b"ftyp":
        return "a video or other ISO media file"
    text = _as_text(head)
    if text is not None:
        if text.lstrip()[:1] in ("{", "["):
            return "JSON text"
        return "plain text"
    return None


def _as_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a multi-byte character cut at the end
            return None
        text = head[: exc.start].decode("utf-8")
    if not text or "\x00" in text:
        return None
    printable = sum(ch.isprintable() or ch in "\t\n\r\f" for ch in text)
    return text if printable >= 0.95 * len(text) else None


# --------------------------------------------------------------------------------------------
# Conversions to RGB
# --------------------------------------------------------------------------------------------


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
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


def _array_to_rgb(array: np.ndarray, name: str, max_pixels: int | None) -> Image.Image:
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
    _check_size((shape[1], shape[0]), name, max_pixels)
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
