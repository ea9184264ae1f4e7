"""A corpus of bad and unusual image files, generated on the fly (no committed binaries).

Every decode-facing layer of featurize (``load_image``, the dataset, ``CNNFeaturizer``, the
``featurize extract`` / ``featurize predict`` commands) must give each of these inputs its
documented outcome, so the corpus is shared by their tests::

    from tests.support.corpus import make_corpus

    @pytest.fixture(scope="module")
    def corpus(tmp_path_factory):
        return make_corpus(tmp_path_factory.mktemp("corpus"))

    def test_something(corpus):
        for kind, item in corpus.items():
            if item.skip:
                continue
            if item.outcome == "ok":
                item.verify(load_image(item.source))      # size and pixel checks
            else:
                with pytest.raises(ImageDecodeError, match=re.escape(item.reason)):
                    load_image(item.source)

Every ``item.source`` is a file-system path (``str``), so command-line tests can pass them on
a command line. Some of them deliberately do not exist or are not files. Building the corpus takes
well under a second and writes about 0.5 MB.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "BOMB_SIZE",
    "FAIL_KINDS",
    "OK_KINDS",
    "CorpusItem",
    "fail_items",
    "make_corpus",
    "ok_items",
    "write_png_bomb",
]

#: Kinds that must decode, in corpus order (usable in ``pytest.mark.parametrize``).
OK_KINDS = (
    "jpeg", "jpeg_named_png", "unicode_path", "exif_rotated_jpeg", "cmyk_jpeg", "gray8_png",
    "gray16_png", "bilevel_png", "float_tiff", "rgba_png", "la_png", "palette_transparency_png",
    "static_gif", "animated_gif", "webp", "animated_webp", "tiff", "multipage_tiff", "bmp",
    "one_pixel", "very_wide",
)  # fmt: skip

#: Kinds that must fail with ``ImageDecodeError``, in corpus order.
FAIL_KINDS = (
    "zero_byte", "truncated_jpeg", "jpeg_missing_eoi", "jpeg_header_only", "truncated_png",
    "random_bytes", "text", "html", "lfs_pointer", "svg", "heic", "eps", "decompression_bomb",
    "missing", "directory", "broken_symlink", "deleted", "permission_denied",
)  # fmt: skip

#: (width, height) that the decompression bomb's header claims: 400 megapixels, more than twice
#: featurize's default ``max_pixels``, in a 50 KB file whose pixel stream really inflates to it.
BOMB_SIZE = (20_000, 20_000)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)
WHITE = (255, 255, 255)

PixelCheck = Callable[[np.ndarray], None]


@dataclass(frozen=True)
class CorpusItem:
    """One corpus input and the outcome ``featurize.images.decoding.load_image`` must give it.

    Attributes
    ----------
    kind : str
        Short name of the kind of input (the key in the corpus dict).
    source : str
        File-system path of the input. May be missing, a directory or a broken link on purpose.
    outcome : {"ok", "fail"}
        Whether decoding must succeed or raise ``ImageDecodeError``.
    reason : str or None
        For ``"fail"``: a substring that the error's ``reason`` must contain.
    size : tuple of (int, int) or None
        For ``"ok"``: expected ``(width, height)`` of the decoded RGB image (after EXIF rotation).
    check : callable or None
        For ``"ok"``: called with the decoded pixels (uint8 array of shape ``(H, W, 3)``);
        raises ``AssertionError`` if they are wrong.
    skip : str or None
        Why this kind cannot be exercised on this machine (then the other fields are still set).
    description : str
        What the input is, in words.
    """

    kind: str
    source: str
    outcome: str
    reason: str | None = None
    size: tuple[int, int] | None = None
    check: PixelCheck | None = None
    skip: str | None = None
    description: str = ""

    @property
    def expected(self) -> tuple[str, object]:
        """``("ok", size)`` or ``("fail", reason_substring)``."""
        if self.outcome == "ok":
            return ("ok", self.size)
        return ("fail", self.reason)

    def verify(self, image: Image.Image) -> None:
        """Assert that a decoded image matches this ``"ok"`` item (mode, size, pixels)."""
        if self.outcome != "ok":
            raise AssertionError(f"{self.kind}: expected a failure ({self.reason!r}), got {image}")
        if image.mode != "RGB":
            raise AssertionError(f"{self.kind}: mode {image.mode!r}, expected 'RGB'")
        if self.size is not None and image.size != self.size:
            raise AssertionError(f"{self.kind}: size {image.size}, expected {self.size}")
        if self.check is not None:
            self.check(np.asarray(image))


def ok_items(corpus: dict[str, CorpusItem]) -> dict[str, CorpusItem]:
    """The items that must decode, excluding those skipped on this machine."""
    return {k: v for k, v in corpus.items() if v.outcome == "ok" and not v.skip}


def fail_items(corpus: dict[str, CorpusItem]) -> dict[str, CorpusItem]:
    """The items that must fail, excluding those skipped on this machine."""
    return {k: v for k, v in corpus.items() if v.outcome == "fail" and not v.skip}


# --------------------------------------------------------------------------------------------
# Pixel checks
# --------------------------------------------------------------------------------------------


def _pixel_is(points: dict[tuple[int, int], tuple[int, int, int]], tol: int = 0) -> PixelCheck:
    """Check the colour at ``(x, y)`` points, each channel within ``tol``."""

    def check(pixels: np.ndarray) -> None:
        for (x, y), colour in points.items():
            actual = pixels[y, x].astype(int)
            if np.abs(actual - np.array(colour)).max() > tol:
                raise AssertionError(f"pixel ({x}, {y}) is {tuple(actual)}, expected {colour}")

    return check


def _uniform(colour: tuple[int, int, int], tol: int = 0) -> PixelCheck:
    """Check that every pixel has ``colour`` (each channel within ``tol``)."""

    def check(pixels: np.ndarray) -> None:
        error = np.abs(pixels.astype(int) - np.array(colour)).max()
        if error > tol:
            raise AssertionError(f"pixels differ from {colour} by up to {error} (tol {tol})")

    return check


def _gray_row(values: list[int]) -> PixelCheck:
    """Check a one-row image whose pixels are the gray levels ``values`` (R = G = B)."""

    def check(pixels: np.ndarray) -> None:
        expected = np.repeat(np.array(values, dtype=np.uint8)[None, :, None], 3, axis=2)
        if not np.array_equal(pixels, expected):
            raise AssertionError(f"gray row {pixels[0].tolist()}, expected {values}")

    return check


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def _quadrants(width: int, height: int) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    pixels = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    pixels[:h2, :w2], pixels[:h2, w2:] = RED, GREEN
    pixels[h2:, :w2], pixels[h2:, w2:] = BLUE, YELLOW
    return Image.fromarray(pixels)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, width: int, height: int) -> None:
    """Write a valid 1-bit black PNG of ``width x height`` that is tiny on disk.

    The pixel stream is built from one deflate-compressed block of zero rows replayed many times
    (a full flush makes each copy self-contained), so 400 megapixels take ~50 ms and ~50 KB.
    """
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then 1 bit per pixel
    rows_per_block = 1000
    full_blocks, rest = divmod(height, rows_per_block)
    block = row * rows_per_block
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, zlib framing added below
    part = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(row * rest) + compressor.flush(zlib.Z_FINISH)
    adler = 1
    for _ in range(full_blocks):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    stream = b"\x78\xda" + part * full_blocks + tail + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", stream)
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_bytes(image: Image.Image, **kwargs: object) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def _png_bytes(image: Image.Image, **kwargs: object) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


def make_corpus(directory: str | os.PathLike[str]) -> dict[str, CorpusItem]:
    """Write the bad/unusual input corpus into ``directory`` and describe each input.

    Parameters
    ----------
    directory : str or os.PathLike
        An empty, writable folder (a pytest ``tmp_path``); created if missing.

    Returns
    -------
    corpus : dict of str to CorpusItem
        Keyed by kind, in the order ``OK_KINDS + FAIL_KINDS``. See :class:`CorpusItem`.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    items: list[CorpusItem] = []

    def add(kind: str, name: str | None, outcome: str, description: str, **kw: object) -> Path:
        path = root / (name if name is not None else kind)
        fields: dict = dict(kw)
        item = CorpusItem(kind, str(path), outcome, description=description, **fields)
        items.append(item)
        return path

    quadrants = _quadrants(40, 20)
    photo = _jpeg_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3),
                                                                          dtype=np.uint8)))

    # ---- inputs that must decode ----------------------------------------------------------
    add("jpeg", "photo.jpg", "ok", "baseline RGB JPEG", size=(64, 48)).write_bytes(photo)

    path = add("jpeg_named_png", "really_a_jpeg.png", "ok", "a JPEG file with a .png extension",
               size=(40, 20), check=_pixel_is({(5, 5): RED, (35, 15): YELLOW}, tol=12))
    path.write_bytes(_jpeg_bytes(quadrants))

    path = add("unicode_path", "café ß 写真 photo 🐝.jpg", "ok",
               "valid JPEG whose name has accents, CJK, an emoji and spaces",
               size=(40, 20), check=_pixel_is({(5, 5): RED, (35, 5): GREEN}, tol=12))
    path.write_bytes(_jpeg_bytes(quadrants))

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = add("exif_rotated_jpeg", "rotated.jpg", "ok",
               "40 x 20 JPEG with EXIF orientation 6: displayed 20 x 40, stored top-left (red) "
               "lands top-right, stored bottom-left (blue) lands top-left",
               size=(20, 40),
               check=_pixel_is({(5, 5): BLUE, (15, 5): RED, (5, 35): YELLOW, (15, 35): GREEN},
                               tol=12))
    path.write_bytes(_jpeg_bytes(quadrants, exif=exif))

    path = add("cmyk_jpeg", "cmyk.jpg", "ok",
               "CMYK JPEG (Pillow writes Adobe's inverted CMYK); C=0 M=Y=100% is red",
               size=(16, 16), check=_uniform(RED, tol=8))
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, "JPEG", quality=95)

    path = add("gray8_png", "gray8.png", "ok", "8-bit grayscale PNG, values 0, 100, 255",
               size=(3, 1), check=_gray_row([0, 100, 255]))
    Image.fromarray(np.array([[0, 100, 255]], np.uint8)).save(path)

    path = add("gray16_png", "gray16.png", "ok",
               "16-bit grayscale PNG, values 0, 32768, 65535, 25700 -> 0, 128, 255, 100",
               size=(4, 1), check=_gray_row([0, 128, 255, 100]))
    Image.fromarray(np.array([[0, 32768, 65535, 25700]], np.uint16)).save(path)

    path = add("bilevel_png", "bilevel.png", "ok", "1-bit black and white PNG",
               size=(8, 1), check=_gray_row([0, 255] * 4))
    Image.fromarray(np.array([[False, True] * 4])).save(path)

    path = add("float_tiff", "float.tif", "ok", "32-bit float TIFF, values 0, 0.25, 1",
               size=(3, 1), check=_gray_row([0, 64, 255]))
    Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32)).save(path)

    rgba = np.array([[[255, 0, 0, 255], [0, 0, 0, 0], [255, 0, 0, 128], [0, 0, 255, 255]]],
                    np.uint8)
    path = add("rgba_png", "rgba.png", "ok",
               "RGBA PNG: opaque red, fully transparent black (-> white), half-transparent red "
               "(-> pink on white), opaque blue",
               size=(4, 1),
               check=_pixel_is({(0, 0): RED, (1, 0): WHITE, (2, 0): (255, 127, 127),
                                (3, 0): BLUE}, tol=1))
    Image.fromarray(rgba).save(path)

    path = add("la_png", "gray_alpha.png", "ok",
               "gray + alpha PNG: opaque gray 100, fully transparent black (-> white)",
               size=(2, 1), check=_gray_row([100, 255]))
    Image.fromarray(np.array([[[100, 255], [0, 0]]], np.uint8)).save(path)

    palette = Image.new("P", (4, 1))
    palette.putpalette([255, 0, 0, 0, 0, 0, 0, 0, 255])
    palette.putdata([0, 1, 2, 1])
    path = add("palette_transparency_png", "palette_trns.png", "ok",
               "palette PNG whose index 1 (black) is transparent: those pixels become white",
               size=(4, 1),
               check=_pixel_is({(0, 0): RED, (1, 0): WHITE, (2, 0): BLUE, (3, 0): WHITE}))
    palette.save(path, transparency=1)

    path = add("static_gif", "static.gif", "ok", "single-frame GIF", size=(32, 24),
               check=_uniform((0, 128, 255)))
    Image.new("RGB", (32, 24), (0, 128, 255)).save(path)

    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, GREEN, BLUE)]
    path = add("animated_gif", "animated.gif", "ok",
               "3-frame GIF (red, green, blue): the first frame is used", size=(16, 16),
               check=_uniform(RED))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)

    path = add("webp", "lossless.webp", "ok", "lossless WebP", size=(40, 20),
               check=_pixel_is({(5, 5): RED, (35, 5): GREEN, (5, 15): BLUE, (35, 15): YELLOW}))
    quadrants.save(path, lossless=True)

    path = add("animated_webp", "animated.webp", "ok",
               "2-frame lossless WebP (green, red): the first frame is used", size=(16, 16),
               check=_uniform(GREEN))
    frames[1].save(path, save_all=True, append_images=[frames[0]], lossless=True, duration=100)

    path = add("tiff", "image.tiff", "ok", "RGB TIFF", size=(40, 20),
               check=_pixel_is({(5, 5): RED, (35, 15): YELLOW}))
    quadrants.save(path)

    path = add("multipage_tiff", "pages.tif", "ok",
               "2-page TIFF (blue, red): the first page is used", size=(16, 16),
               check=_uniform(BLUE))
    frames[2].save(path, save_all=True, append_images=[frames[0]])

    path = add("bmp", "image.bmp", "ok", "24-bit BMP", size=(40, 20),
               check=_pixel_is({(5, 5): RED, (35, 15): YELLOW}))
    quadrants.save(path)

    path = add("one_pixel", "one_pixel.png", "ok", "a 1 x 1 image", size=(1, 1),
               check=_uniform((12, 34, 56)))
    Image.new("RGB", (1, 1), (12, 34, 56)).save(path)

    wide = Image.new("L", (20_000, 10), 0)
    wide.paste(255, (10_000, 0, 20_000, 10))
    path = add("very_wide", "very_wide.png", "ok",
               "20000 x 10 grayscale strip: left half black, right half white",
               size=(20_000, 10), check=_pixel_is({(0, 0): (0, 0, 0), (19_999, 9): WHITE}))
    wide.save(path)

    # ---- inputs that must fail ------------------------------------------------------------
    add("zero_byte", "empty.jpg", "fail", "a 0-byte file named .jpg",
        reason="empty file (0 bytes)").write_bytes(b"")

    add("truncated_jpeg", "truncated.jpg", "fail", "the first half of a JPEG",
        reason="truncated image data").write_bytes(photo[: len(photo) // 2])

    add("jpeg_missing_eoi", "no_eoi.jpg", "fail",
        "a JPEG missing only its last byte (the end-of-image marker): Pillow reports truncation",
        reason="truncated image data").write_bytes(photo[:-1])

    add("jpeg_header_only", "header_only.jpg", "fail", "the first 20 bytes of a JPEG",
        reason="corrupt or truncated JPEG header").write_bytes(photo[:20])

    png = _png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3),
                                                                       dtype=np.uint8)))
    add("truncated_png", "truncated.png", "fail", "the first half of a PNG",
        reason="truncated image data").write_bytes(png[: len(png) // 2])

    add("random_bytes", "noise.jpg", "fail", "2 KB of random bytes named .jpg",
        reason="not a recognised image format").write_bytes(
        np.random.default_rng(0).bytes(2048))

    add("text", "notes.jpg", "fail", "a plain-text file named .jpg",
        reason="looks like plain text").write_text(
        "This is not an image.\nIt is a text file with a .jpg extension.\n", encoding="utf-8")

    add("html", "download.jpg", "fail", "an HTML error page saved as .jpg (a failed download)",
        reason="looks like an HTML web page").write_text(
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
        "<body><h1>Not Found</h1></body></html>\n", encoding="utf-8")

    add("lfs_pointer", "lfs.jpg", "fail", "a Git LFS pointer file checked out instead of the image",
        reason="Git LFS pointer").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 12345\n", encoding="ascii")

    add("svg", "vector.png", "fail", "an SVG drawing named .png (a format Pillow cannot read)",
        reason="unsupported image format: SVG").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        '<rect width="10" height="10" fill="red"/></svg>\n', encoding="utf-8")

    add("heic", "phone.heic", "fail", "the header of an iPhone HEIC file (no Pillow decoder)",
        reason="unsupported image format: HEIC").write_bytes(
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))

    add("eps", "figure.jpg", "fail",
        "an EPS file named .jpg: Pillow would run Ghostscript, featurize refuses",
        reason="unsupported image format: EPS").write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n")

    write_png_bomb(
        add("decompression_bomb", "bomb.png", "fail",
            f"a ~50 KB valid PNG whose header says {BOMB_SIZE[0]} x {BOMB_SIZE[1]} (400 MP)",
            reason="image too large"),
        *BOMB_SIZE,
    )

    add("missing", "does_not_exist.jpg", "fail", "a path that does not exist",
        reason="file not found")

    add("directory", "folder.jpg", "fail", "a directory whose name ends in .jpg",
        reason="is a directory").mkdir()

    link = add("broken_symlink", "dangling.jpg", "fail", "a symbolic link to a missing file",
               reason="broken symbolic link")
    try:
        os.symlink(root / "no_such_target.jpg", link)
    except (OSError, NotImplementedError) as exc:  # Windows without symlink privilege
        items[-1] = _skipped(items[-1], f"cannot create symlinks here ({exc})")

    deleted = add("deleted", "deleted.jpg", "fail",
                  "a file listed and then deleted before it is read", reason="file not found")
    deleted.write_bytes(photo)
    deleted.unlink()

    locked = add("permission_denied", "locked.jpg", "fail", "a JPEG without read permission",
                 reason="permission denied")
    locked.write_bytes(photo)
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root, or a file system without permissions
        items[-1] = _skipped(items[-1], "file permissions are not enforced for this user")

    ok = [item for item in items if item.outcome == "ok"]
    fail = [item for item in items if item.outcome == "fail"]
    return {item.kind: item for item in ok + fail}


def _skipped(item: CorpusItem, why: str) -> CorpusItem:
    return CorpusItem(item.kind, item.source, item.outcome, item.reason, item.size, item.check,
                      why, item.description)
