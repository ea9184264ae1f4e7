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
  :func:`featurize.images.pillow.strict_pillow`); they are never changed permanently.
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
from collections.abc import Iterator, Sequence
from typing import IO, NamedTuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featurize.exceptions import ImageDecodeError
from featurize.images.colour import array_to_rgb, to_rgb
from featurize.images.limits import (
    DEFAULT_MAX_PIXELS,
    check_draft_size,
    check_max_pixels,
    check_size,
)
from featurize.images.pillow import PILLOW_ERRORS, decodable_formats, strict_pillow
from featurize.images.sniffing import signature_format, unidentified_reason

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

#: What :func:`load_image` accepts.
ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image, np.ndarray]

_ORIENTATION_TAG = 0x0112
_HEAD_BYTES = 32  # enough for the WebP canvas size
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
    max_pixels = check_max_pixels(max_pixels)
    draft_size = check_draft_size(draft_size)
    what = "data" if name is None else "file"
    name = describe_source(source) if name is None else name
    if isinstance(source, (str, os.PathLike)):
        with _open_path(source, name) as fp, strict_pillow():
            image = _open_stream(fp, name, "file", max_pixels)
            return _load_opened(image, name, draft_size)
    if isinstance(source, (bytes, bytearray, memoryview)):
        with strict_pillow():
            image = _open_stream(io.BytesIO(source), name, what, max_pixels)
            return _load_opened(image, name, draft_size)
    if isinstance(source, Image.Image):
        check_size(source.size, name, max_pixels)
        with strict_pillow():
            return _load_opened(source, name, None)
    if isinstance(source, np.ndarray):
        return array_to_rgb(source, name, max_pixels)
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
    max_pixels = check_max_pixels(max_pixels)
    sizes = [check_draft_size(d) for d in draft_sizes]
    what = "data" if name is None else "file"
    name = describe_source(data) if name is None else name
    decoded: dict[tuple, Image.Image] = {}
    images = []
    with strict_pillow():
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
    max_pixels = check_max_pixels(max_pixels)
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
    with stream_cm as fp, strict_pillow():
        image = _open_stream(fp, name, what, max_pixels)
        return ImageHeader(str(image.format), image.mode, image.size[0], image.size[1])


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
        check_size(webp_size, name, max_pixels)
    try:
        image = Image.open(fp, formats=decodable_formats())
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(name, unidentified_reason(fp, what)) from exc
    except PILLOW_ERRORS as exc:
        fmt = signature_format(head) or "image"
        reason = f"corrupt or truncated {fmt} header ({type(exc).__name__}: {exc})"
        raise ImageDecodeError(name, reason) from exc
    check_size(image.size, name, max_pixels)
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
    except PILLOW_ERRORS as exc:
        raise ImageDecodeError(name, _load_error_reason(image, exc),
                               transient=is_transient(exc)) from exc
    orientation = _orientation(image)
    if orientation != 1:
        try:
            image = ImageOps.exif_transpose(image)
        except PILLOW_ERRORS as exc:
            reason = f"cannot apply EXIF orientation {orientation} ({type(exc).__name__}: {exc})"
            raise ImageDecodeError(name, reason) from exc
    return to_rgb(image, name)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except PILLOW_ERRORS as exc:  # corrupt EXIF block: the pixels are still fine
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


