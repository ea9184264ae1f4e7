"""What data that Pillow does not decode is, from its first bytes: an image of a format
featurize refuses (SVG, HEIC, PDF, EPS...), a corrupt header of a known format, or something
else (an HTML error page, a Git LFS pointer, text), for the reason of an
:class:`~featurize.exceptions.ImageDecodeError`."""

from __future__ import annotations

from typing import IO

from PIL import Image

from featurize.images.pillow import PILLOW_ERRORS

__all__ = ["signature_format", "unidentified_reason"]

_SNIFF_BYTES = 1024  # read only after a failure, to describe what the data is
_PREVIEW_BYTES = 20

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


def signature_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for magic, fmt in _SIGNATURES:
        if head.startswith(magic):
            return fmt
    return None


def unidentified_reason(fp: IO[bytes], what: str) -> str:
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
    fmt = signature_format(head)
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
    except PILLOW_ERRORS:
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
