"""Tests of featurize.images.decoding: the corpus outcomes, in-memory inputs, limits and
Pillow state."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import re
import tempfile
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, UnidentifiedImageError

from featurize.exceptions import ImageDecodeError
from featurize.images.decoding import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageHeader,
    describe_source,
    load_image,
    probe_image,
)
from tests.support.corpus import (
    BOMB_SIZE,
    FAIL_KINDS,
    OK_KINDS,
    CorpusItem,
    make_corpus,
    write_png_bomb,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusItem]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _pillow_state() -> tuple[object, bool, list[object]]:
    return Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)


def _png(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def _jpeg(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


def test_corpus_has_every_kind_and_is_cheap(tmp_path: Path) -> None:
    start = time.perf_counter()
    corpus = make_corpus(tmp_path)
    elapsed = time.perf_counter() - start
    assert tuple(corpus) == OK_KINDS + FAIL_KINDS
    assert len(corpus) >= 22
    assert elapsed < 1.0, f"building the corpus took {elapsed:.2f} s"
    for kind, item in corpus.items():
        assert item.kind == kind and isinstance(item.source, str)
        assert item.outcome in ("ok", "fail")
        assert item.expected[0] == item.outcome
        if item.outcome == "ok":
            assert item.size is not None and item.reason is None
            assert os.path.isfile(item.source)
        else:
            assert item.reason


@pytest.mark.parametrize("kind", OK_KINDS)
def test_corpus_ok_kind_decodes(corpus: dict[str, CorpusItem], kind: str) -> None:
    item = corpus[kind]
    image = load_image(item.source)
    item.verify(image)  # mode RGB, size after EXIF rotation, pixel checks
    assert image.getbbox() is not None or image.getpixel((0, 0)) == (0, 0, 0)  # fully loaded


@pytest.mark.parametrize("kind", FAIL_KINDS)
def test_corpus_fail_kind_raises_decode_error(corpus: dict[str, CorpusItem], kind: str) -> None:
    item = corpus[kind]
    if item.skip:
        pytest.skip(item.skip)
    with pytest.raises(ImageDecodeError) as info:
        load_image(item.source)
    error = info.value
    assert item.reason in error.reason
    assert error.source == item.source
    assert repr(item.source) in str(error) and error.reason in str(error)


def test_corpus_verify_catches_wrong_images(corpus: dict[str, CorpusItem]) -> None:
    # The corpus checks themselves must be able to fail.
    wrong_colour = Image.new("RGB", (16, 16), (0, 0, 255))
    with pytest.raises(AssertionError):
        corpus["animated_gif"].verify(wrong_colour)
    with pytest.raises(AssertionError):
        corpus["exif_rotated_jpeg"].verify(Image.new("RGB", (40, 20)))  # not rotated
    with pytest.raises(AssertionError):
        corpus["gray16_png"].verify(Image.new("RGB", (4, 1), (255, 255, 255)))  # clipped
    with pytest.raises(AssertionError):
        corpus["rgba_png"].verify(Image.new("RGB", (4, 1)))  # transparent -> black
    with pytest.raises(AssertionError):
        corpus["jpeg"].verify(Image.new("L", (64, 48)))


@pytest.mark.parametrize("kind", OK_KINDS)
def test_bytes_decode_like_paths(corpus: dict[str, CorpusItem], kind: str) -> None:
    item = corpus[kind]
    data = Path(item.source).read_bytes()
    from_path = np.asarray(load_image(item.source))
    for source in (data, bytearray(data), memoryview(data)):
        decoded = load_image(source)
        item.verify(decoded)
        np.testing.assert_array_equal(np.asarray(decoded), from_path)


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("truncated_jpeg", OSError),
        ("random_bytes", UnidentifiedImageError),
        ("missing", FileNotFoundError),
        ("deleted", FileNotFoundError),
        ("broken_symlink", FileNotFoundError),
    ],
)
def test_errors_are_chained(corpus: dict[str, CorpusItem], kind: str, cause: type) -> None:
    if corpus[kind].skip:
        pytest.skip(corpus[kind].skip)
    with pytest.raises(ImageDecodeError) as info:
        load_image(corpus[kind].source)
    assert isinstance(info.value.__cause__, cause)


def test_not_an_image_shows_first_bytes_safely(corpus: dict[str, CorpusItem]) -> None:
    with pytest.raises(ImageDecodeError) as info:
        load_image(corpus["html"].source)
    assert "file starts with b'<!DOCTYPE html>" in info.value.reason
    with pytest.raises(ImageDecodeError) as info:
        load_image(corpus["random_bytes"].source)
    reason = info.value.reason
    assert reason.isprintable() and "\\x" in reason  # escaped, never raw binary
    with pytest.raises(ImageDecodeError, match="data starts with b'hello"):
        load_image(b"hello, this is text and not an image at all")


@pytest.mark.parametrize("kind", FAIL_KINDS)
def test_errors_pickle(corpus: dict[str, CorpusItem], kind: str) -> None:
    item = corpus[kind]
    if item.skip:
        pytest.skip(item.skip)
    with pytest.raises(ImageDecodeError) as info:
        load_image(item.source)
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is ImageDecodeError
    assert (clone.source, clone.reason, str(clone)) == (
        info.value.source,
        info.value.reason,
        str(info.value),
    )


def _load_in_worker(path: str) -> tuple[int, int]:
    return load_image(path).size


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
def test_errors_cross_process_boundaries(corpus: dict[str, CorpusItem]) -> None:
    # As in DataLoader workers: the worker raises, the parent receives the same error.
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        assert pool.apply(_load_in_worker, (corpus["jpeg"].source,)) == (64, 48)
        with pytest.raises(ImageDecodeError) as info:
            pool.apply(_load_in_worker, (corpus["truncated_png"].source,))
    assert "truncated image data" in info.value.reason
    assert info.value.source == corpus["truncated_png"].source


# --------------------------------------------------------------------------------------------
# File-system failures that the corpus cannot produce everywhere
# --------------------------------------------------------------------------------------------


def test_permission_denied_is_reported(
    corpus: dict[str, CorpusItem], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores file modes, so simulate the error the operating system would give.
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("featurize.images.decoding.open", denied, raising=False)
    with pytest.raises(ImageDecodeError, match="permission denied") as info:
        load_image(corpus["jpeg"].source)
    assert isinstance(info.value.__cause__, PermissionError)


@pytest.mark.skipif(
    not hasattr(os, "fork") or not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root, to drop to an unprivileged user in a child process",
)
def test_permission_denied_for_an_unprivileged_user() -> None:
    # The real operating-system error, for the corpus kind that root cannot exercise.
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o711)
        readable, locked = os.path.join(folder, "ok.png"), os.path.join(folder, "locked.png")
        Image.new("RGB", (2, 2)).save(readable)
        Image.new("RGB", (2, 2)).save(locked)
        os.chmod(readable, 0o644)
        os.chmod(locked, 0)
        pid = os.fork()
        if pid == 0:  # child: become "nobody", then read both files
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                code = 2 if load_image(readable).size != (2, 2) else 3
                try:
                    load_image(locked)
                except ImageDecodeError as exc:
                    code = 0 if exc.reason.startswith("permission denied") else 4
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_read_error_is_reported(
    corpus: dict[str, CorpusItem], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_disk(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("featurize.images.decoding.open", broken_disk, raising=False)
    with pytest.raises(ImageDecodeError, match="cannot read file: Input/output error"):
        load_image(corpus["jpeg"].source)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loop(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    os.symlink(b, a)
    os.symlink(a, b)
    with pytest.raises(ImageDecodeError, match="cannot read file: .*symbolic links"):
        load_image(a)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        load_image(fifo)


def test_path_inside_a_file(corpus: dict[str, CorpusItem]) -> None:
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_image(os.path.join(corpus["jpeg"].source, "x.jpg"))


@pytest.mark.parametrize(("path", "reason"), [("", "file not found"),
                                              ("a\0b.jpg", "invalid path (embedded null byte)")])
def test_invalid_paths(path: str, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=re.escape(reason)):
        load_image(path)


def test_pathlike_and_symlinked_file(corpus: dict[str, CorpusItem], tmp_path: Path) -> None:
    corpus["jpeg"].verify(load_image(Path(corpus["jpeg"].source)))
    link = tmp_path / "link.jpg"
    os.symlink(corpus["jpeg"].source, link)
    corpus["jpeg"].verify(load_image(str(link)))


# --------------------------------------------------------------------------------------------
# Size limit and decompression bombs
# --------------------------------------------------------------------------------------------


def test_bomb_is_a_real_valid_png(corpus: dict[str, CorpusItem]) -> None:
    # Inflate the pixel stream (streamed, never held in memory): 400 MP of valid zero rows.
    data = Path(corpus["decompression_bomb"].source).read_bytes()
    assert len(data) < 200_000
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    stream = data[start : start + length]
    inflater = zlib.decompressobj()
    total, nonzero = 0, 0
    chunk = inflater.decompress(stream, 1 << 22)
    while chunk:
        total += len(chunk)
        nonzero += len(chunk) - chunk.count(0)
        chunk = inflater.decompress(inflater.unconsumed_tail, 1 << 22)
    assert inflater.eof  # complete stream, checksum verified by zlib
    width, height = BOMB_SIZE
    assert total == height * (1 + (width + 7) // 8)
    assert nonzero == 0
    assert width * height > DEFAULT_MAX_PIXELS


def test_bomb_refused_quickly_without_decoding(
    corpus: dict[str, CorpusItem], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = []
    original_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        loads.append(self.size)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    load_image(corpus["one_pixel"].source)
    assert (1, 1) in loads  # the spy sees pixel decoding

    loads.clear()
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError) as info:
        load_image(corpus["decompression_bomb"].source)
    elapsed = time.perf_counter() - start
    assert loads == []  # refused from the header, no pixel decoded or allocated
    assert elapsed < 0.5
    assert info.value.reason == (
        "image too large: 20000 x 20000 = 400000000 pixels exceeds max_pixels=178956970 "
        "(pass a larger max_pixels to allow it)"
    )
    with pytest.raises(ImageDecodeError, match="image too large"):
        probe_image(corpus["decompression_bomb"].source)
    assert loads == []


def test_max_pixels_boundary(tmp_path: Path) -> None:
    path = tmp_path / "small_bomb.png"
    write_png_bomb(path, 300, 200)
    too_large = r"300 x 200 = 60000 pixels exceeds max_pixels=59999 "
    with pytest.raises(ImageDecodeError, match=too_large):
        load_image(path, max_pixels=59_999)
    image = load_image(path, max_pixels=60_000)
    assert image.size == (300, 200) and image.getextrema() == ((0, 0), (0, 0), (0, 0))
    assert load_image(path, max_pixels=None).size == (300, 200)


def test_max_pixels_applies_to_in_memory_inputs() -> None:
    with pytest.raises(ImageDecodeError, match="image too large: 10 x 5 = 50 pixels"):
        load_image(np.zeros((5, 10), np.uint8), max_pixels=49)
    with pytest.raises(ImageDecodeError, match="image too large"):
        load_image(Image.new("RGB", (10, 5)), max_pixels=49)
    assert load_image(np.zeros((5, 10), np.uint8), max_pixels=50).size == (10, 5)


@pytest.mark.parametrize(
    ("kwargs", "chunk"),
    [({"lossless": True}, b"VP8L"), ({"quality": 80}, b"VP8 "), ({"icc_profile": b"x"}, b"VP8X")],
)
def test_webp_canvas_checked_before_pillow_allocates_it(
    kwargs: dict, chunk: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow's WebP plugin allocates the whole canvas inside Image.open: refuse before it.
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (9, 9, 9)).save(buffer, "WEBP", **kwargs)
    assert buffer.getvalue()[12:16] == chunk  # each of the three WebP header layouts
    opened = []
    original_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or original_open(*a, **k))
    with pytest.raises(ImageDecodeError, match="300 x 200 = 60000 pixels"):
        load_image(buffer.getvalue(), max_pixels=1000)
    assert opened == []
    assert load_image(buffer.getvalue(), max_pixels=60_000).size == (300, 200)
    assert opened == [1]


def test_pillow_bomb_limit_neither_applies_nor_warns_nor_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A user lowered Pillow's global limit: featurize uses its own max_pixels instead, Pillow
    # raises nothing and warns nothing, and the user's value is left in place.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    warning_band = _png(Image.new("RGB", (12, 12), (1, 2, 3)))  # 144 px: Pillow would warn
    error_band = _png(Image.new("RGB", (100, 100), (1, 2, 3)))  # 10000 px: Pillow would raise
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(warning_band).size == (12, 12)
        assert load_image(error_band).size == (100, 100)
        assert probe_image(error_band) == ImageHeader("PNG", "RGB", 100, 100)
        with pytest.raises(ImageDecodeError, match="image too large"):
            load_image(error_band, max_pixels=9999)
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(Image.DecompressionBombError):  # Pillow itself still enforces it
        Image.open(io.BytesIO(error_band))


def test_truncated_files_fail_even_if_user_allows_them(
    corpus: dict[str, CorpusItem], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageDecodeError, match="truncated image data"):
        load_image(corpus["truncated_jpeg"].source)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    Image.open(corpus["truncated_jpeg"].source).load()  # Pillow itself still pads it


def test_pillow_state_unchanged_and_no_warnings(corpus: dict[str, CorpusItem]) -> None:
    before = _pillow_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inner = _pillow_state()
        for item in corpus.values():
            if item.skip:
                continue
            try:
                load_image(item.source)
            except ImageDecodeError:
                pass
        assert _pillow_state() == inner
    assert [str(w.message) for w in caught] == []
    assert _pillow_state() == before
    assert Image.MAX_IMAGE_PIXELS is not None and ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_concurrent_threads(corpus: dict[str, CorpusItem]) -> None:
    before = _pillow_state()
    items = [item for item in corpus.values() if not item.skip] * 4

    def run(item: CorpusItem) -> str:
        try:
            item.verify(load_image(item.source))
            return "ok"
        except ImageDecodeError as exc:
            return "fail" if item.reason in exc.reason else f"wrong reason {exc.reason}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(run, items))
    assert outcomes == [item.outcome for item in items]
    assert _pillow_state() == before


# --------------------------------------------------------------------------------------------
# Orientation and draft decoding
# --------------------------------------------------------------------------------------------

# EXIF orientation -> how the stored pixels are shown (EXIF 2.3, tag 0x0112).
_ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1, :],  # mirrored vertically
    5: lambda a: a.transpose(1, 0, 2),  # mirrored + rotated: transpose
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise to display
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # transverse
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise to display
}


@pytest.mark.parametrize("orientation", sorted(_ORIENTED))
def test_every_exif_orientation(orientation: int) -> None:
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _png(Image.fromarray(stored), exif=exif)
    expected = _ORIENTED[orientation](stored)
    np.testing.assert_array_equal(np.asarray(load_image(data)), expected)
    # A PIL input is oriented the same way, and not modified.
    opened = Image.open(io.BytesIO(data))
    np.testing.assert_array_equal(np.asarray(load_image(opened)), expected)
    assert opened.size == (7, 5)


def test_corrupt_exif_orientation_is_ignored() -> None:
    exif = Image.Exif()
    exif[0x0112] = 99  # not an orientation
    image = load_image(_jpeg(Image.new("RGB", (8, 4), (200, 0, 0)), exif=exif))
    assert image.size == (8, 4)


def test_draft_size_keeps_at_least_the_requested_size() -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 800, 3), np.uint8))
    data = _jpeg(photo)
    assert load_image(data).size == (800, 600)
    assert load_image(data, draft_size=(200, 150)).size == (200, 150)  # 1/4 DCT scaling
    assert load_image(data, draft_size=(201, 150)).size == (400, 300)  # 1/2 keeps >= 201
    assert load_image(data, draft_size=(90, 10)).size == (100, 75)  # at most 1/8
    assert load_image(data, draft_size=(1000, 1000)).size == (800, 600)  # never upscaled
    # Approximation only: close to the full decode resized.
    small = np.asarray(load_image(data, draft_size=(200, 150)), dtype=float)
    reference = np.asarray(load_image(data).resize((200, 150), Image.BOX), dtype=float)
    assert np.abs(small - reference).mean() < 12


def test_draft_size_accounts_for_exif_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 800 x 200, displayed 200 x 800
    data = _jpeg(Image.new("RGB", (800, 200), (0, 90, 0)), exif=exif)
    width, height = load_image(data, draft_size=(200, 100)).size
    assert width >= 200 and height >= 100
    assert load_image(data, draft_size=(50, 200)).size == (50, 200)


def test_draft_size_ignored_for_other_formats() -> None:
    data = _png(Image.new("RGB", (800, 600)))
    assert load_image(data, draft_size=(100, 75)).size == (800, 600)


@pytest.mark.parametrize("draft_size", [(0, 10), (10,), "ab", (1.5, 2), (True, 3), (-1, 4)])
def test_invalid_draft_size(draft_size: object) -> None:
    with pytest.raises(ValueError, match="draft_size") as info:
        load_image(np.zeros((2, 2), np.uint8), draft_size=draft_size)  # type: ignore[arg-type]
    assert not isinstance(info.value, ImageDecodeError)


@pytest.mark.parametrize(("max_pixels", "error"), [(0, ValueError), (-5, ValueError),
                                                   (1.5, TypeError), ("10", TypeError),
                                                   (True, TypeError)])
def test_invalid_max_pixels(max_pixels: object, error: type) -> None:
    with pytest.raises(error, match="max_pixels") as info:
        load_image(np.zeros((2, 2), np.uint8), max_pixels=max_pixels)  # type: ignore[arg-type]
    assert not isinstance(info.value, ImageDecodeError)


# --------------------------------------------------------------------------------------------
# In-memory inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0, 7, 255]], np.uint8), [0, 7, 255]),
        (np.array([[[0], [7], [255]]], np.uint8), [0, 7, 255]),
        (np.array([[0, 128, 257, 32768, 65535]], np.uint16), [0, 0, 1, 128, 255]),
        (np.array([[0, 129]], ">u2"), [0, 1]),  # big-endian, round(129 / 257) = 1
        (np.array([[False, True]]), [0, 255]),
        (np.array([[0.0, 0.25, 0.5, 1.0]], np.float32), [0, 64, 128, 255]),
        (np.array([[0.0, 0.1, 1.0]], np.float64), [0, 26, 255]),
        (np.array([[0.0, 1.0]], np.float16), [0, 255]),
    ],
)
def test_gray_arrays(array: np.ndarray, expected: list[int]) -> None:
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (array.shape[1], array.shape[0])
    pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels[0], np.repeat(np.array(expected)[:, None], 3, axis=1))


def test_colour_arrays() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(rgb)), rgb)
    np.testing.assert_array_equal(np.asarray(load_image(rgb[:, ::-1])), rgb[:, ::-1])  # a view
    np.testing.assert_array_equal(np.asarray(load_image(rgb.astype(np.uint16) * 257)), rgb)
    np.testing.assert_array_equal(np.asarray(load_image(rgb / 255.0)), rgb)
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], np.uint8)
    np.testing.assert_allclose(
        np.asarray(load_image(rgba))[0], [[10, 20, 30], [255, 255, 255], [127, 127, 127]], atol=1
    )
    rgba16 = rgba.astype(np.uint16) * 257
    np.testing.assert_array_equal(np.asarray(load_image(rgba16)), np.asarray(load_image(rgba)))


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.array([[0.0, 1.5]]), r"float image values must lie in \[0, 1\]; got \[0, 1.5\]"),
        (np.array([[-0.1, 0.5]], np.float32), r"must lie in \[0, 1\]"),
        (np.array([[np.nan, 0.5]]), "NaN or infinite"),
        (np.array([[0, 255]], np.int64), "unsupported array dtype int64"),
        (np.array([[0, 1]], np.int8), "unsupported array dtype int8"),
        (np.array([[1 + 2j]]), "unsupported array dtype complex128"),
        (np.array([["a"]], object), "unsupported array dtype object"),
        (np.zeros((4, 4, 2), np.uint8), r"unsupported array shape \(4, 4, 2\)"),
        (np.zeros((3, 32, 32), np.uint8), "channels-first"),
        (np.zeros(5, np.uint8), r"unsupported array shape \(5,\)"),
        (np.zeros((2, 2, 2, 3), np.uint8), "unsupported array shape"),
        (np.zeros((0, 4), np.uint8), "empty array"),
    ],
)
def test_bad_arrays(array: np.ndarray, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason) as info:
        load_image(array)
    assert info.value.source == "<array>"


_MODE_CASES = [
    # mode, fill value, expected RGB of every pixel
    ("1", 1, (255, 255, 255)),
    ("L", 77, (77, 77, 77)),
    ("RGB", (1, 2, 3), (1, 2, 3)),
    ("RGBX", (1, 2, 3, 4), (1, 2, 3)),
    ("RGBA", (200, 100, 0, 255), (200, 100, 0)),
    ("RGBA", (200, 100, 0, 0), (255, 255, 255)),
    ("RGBa", (100, 50, 0, 255), (100, 50, 0)),
    ("LA", (30, 0), (255, 255, 255)),
    ("LA", (30, 255), (30, 30, 30)),
    ("La", (30, 255), (30, 30, 30)),
    ("PA", (0, 0), (255, 255, 255)),
    ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("YCbCr", (255, 128, 128), (255, 255, 255)),
    ("HSV", (0, 255, 255), (255, 0, 0)),
    ("LAB", (255, 128, 128), (254, 255, 254)),
    ("I;16", 65535, (255, 255, 255)),
    ("I;16", 32768, (128, 128, 128)),
    ("I;16B", 25700, (100, 100, 100)),
    ("I", 32768, (128, 128, 128)),
    ("I", 70000, (255, 255, 255)),  # clipped to 16 bits first
    ("I", -5, (0, 0, 0)),
    ("F", 0.5, (128, 128, 128)),
    ("F", 1.0, (255, 255, 255)),
]


@pytest.mark.parametrize(("mode", "fill", "expected"), _MODE_CASES)
def test_pil_modes(mode: str, fill: object, expected: tuple[int, int, int]) -> None:
    source = Image.new(mode, (3, 2), fill)  # type: ignore[arg-type]
    image = load_image(source)
    assert image.mode == "RGB" and image.size == (3, 2)
    assert image.getpixel((2, 1)) == expected
    assert source.mode == mode  # the input is not modified


def test_palette_images() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 40, 50, 60])
    palette.putdata([0, 1])
    assert np.asarray(load_image(palette)).tolist() == [[[10, 20, 30], [40, 50, 60]]]
    palette.info["transparency"] = 1
    assert np.asarray(load_image(palette)).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    gray = Image.new("L", (1, 1), 9)
    gray.info["transparency"] = 9  # colour-keyed transparency
    assert load_image(gray).getpixel((0, 0)) == (255, 255, 255)


def test_float_pil_image_out_of_range() -> None:
    with pytest.raises(ImageDecodeError, match=r"must lie in \[0, 1\]; got \[2, 2\]") as info:
        load_image(Image.new("F", (2, 2), 2.0))
    assert info.value.source == "<PIL image>"


def test_loaded_rgb_pil_image_returned_as_is() -> None:
    image = Image.new("RGB", (3, 3), (5, 6, 7))
    assert load_image(image) is image


def test_lazy_pil_image_is_loaded_and_truncation_detected(corpus: dict[str, CorpusItem]) -> None:
    with Image.open(corpus["jpeg"].source) as lazy:
        corpus["jpeg"].verify(load_image(lazy))
    with Image.open(corpus["truncated_jpeg"].source) as lazy:
        with pytest.raises(ImageDecodeError, match="truncated image data"):
            load_image(lazy)


@pytest.mark.parametrize("source", [b"", bytearray()])
def test_empty_bytes(source: bytes) -> None:
    with pytest.raises(ImageDecodeError, match=r"empty data \(0 bytes\)") as info:
        load_image(source)
    assert info.value.source == "<bytes>"


@pytest.mark.parametrize("source", [123, None, [1, 2, 3], {"a": 1}, 1.5])
def test_unsupported_input_types(source: object) -> None:
    with pytest.raises(ImageDecodeError, match="unsupported input type"):
        load_image(source)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Robustness: mutated files never raise anything but ImageDecodeError
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*:UserWarning:PIL")  # Pillow's notes on corrupt metadata
def test_mutated_files_only_raise_decode_errors() -> None:
    rng = np.random.default_rng(1234)
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = []
    for fmt, kwargs in [("JPEG", {"exif": exif}), ("PNG", {}), ("GIF", {}), ("BMP", {}),
                        ("TIFF", {"exif": exif}), ("WEBP", {"lossless": True}), ("TGA", {}),
                        ("PPM", {}), ("ICO", {})]:
        buffer = io.BytesIO()
        base.save(buffer, fmt, **kwargs)
        seeds.append(buffer.getvalue())
    outcomes = {"ok": 0, "fail": 0}
    for data in seeds:
        for _ in range(40):
            mutated = bytearray(data)
            for _ in range(int(rng.integers(1, 6))):
                position = int(rng.integers(0, len(mutated)))
                if rng.random() < 0.7:
                    mutated[position] = int(rng.integers(0, 256))
                else:
                    del mutated[position:]
                if len(mutated) < 2:
                    break
            try:
                image = load_image(bytes(mutated), max_pixels=1_000_000)
            except ImageDecodeError as exc:
                assert exc.reason and exc.source == "<bytes>"
                outcomes["fail"] += 1
            else:
                assert image.mode == "RGB"
                image.tobytes()
                outcomes["ok"] += 1
    assert outcomes["fail"] > 100  # the mutations really broke files


# --------------------------------------------------------------------------------------------
# probe_image, describe_source, constants
# --------------------------------------------------------------------------------------------


def test_probe_image_reads_headers_only(corpus: dict[str, CorpusItem]) -> None:
    assert probe_image(corpus["jpeg"].source) == ImageHeader("JPEG", "RGB", 64, 48)
    assert probe_image(corpus["exif_rotated_jpeg"].source)[2:] == (40, 20)  # stored size
    assert probe_image(corpus["cmyk_jpeg"].source).mode == "CMYK"
    assert probe_image(Path(corpus["gray16_png"].source)).mode == "I;16"
    # Pixel data is not decoded: a truncated body passes, a bad header does not.
    assert probe_image(corpus["truncated_jpeg"].source).format == "JPEG"
    for kind in ("zero_byte", "html", "svg", "missing", "directory", "jpeg_header_only"):
        with pytest.raises(ImageDecodeError, match=re.escape(corpus[kind].reason)):
            probe_image(corpus[kind].source)
    with pytest.raises(ImageDecodeError, match="unsupported input type"):
        probe_image(np.zeros((2, 2)))  # type: ignore[arg-type]


def test_describe_source() -> None:
    assert describe_source("a/b.jpg", 3) == "a/b.jpg"
    assert describe_source(Path("a") / "b c.jpg") == os.path.join("a", "b c.jpg")
    assert describe_source(Image.new("RGB", (1, 1)), 2) == "<PIL image #2>"
    assert describe_source(np.zeros(3), 0) == "<array #0>"
    assert describe_source(b"abc", 7) == "<bytes #7>"
    assert describe_source(b"abc") == "<bytes>"
    assert describe_source(12, 1) == "<int #1>"


def test_constants() -> None:
    assert DEFAULT_MAX_PIXELS == 178_956_970 == 2 * 89_478_485
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
            ".pgm"} <= set(IMAGE_EXTENSIONS)
    assert len(set(IMAGE_EXTENSIONS)) == len(IMAGE_EXTENSIONS)


def test_bad_files_doc_matches_the_code(corpus: dict[str, CorpusItem]) -> None:
    # docs/bad_files.md goes into the README: every corpus kind it names must behave as it says.
    doc = (Path(__file__).resolve().parents[2] / "docs" / "bad_files.md").read_text("utf-8")
    checked = set()
    for line in doc.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3:
            continue
        kinds = [k for k in re.findall(r"`([a-z0-9_]+)`", cells[0]) if k in corpus]
        for kind in kinds:
            item = corpus[kind]
            checked.add(kind)
            if cells[1].startswith("ImageDecodeError"):
                assert item.outcome == "fail", kind
                if item.skip:
                    continue
                with pytest.raises(ImageDecodeError) as info:
                    load_image(item.source)
                documented = re.fullmatch(r"`(.*)`", cells[2])
                assert documented, f"{kind}: reason cell must be in backticks"
                position = 0
                for fragment in documented.group(1).split("…"):
                    found = info.value.reason.find(fragment, position)
                    assert found >= 0, f"{kind}: {fragment!r} not in {info.value.reason!r}"
                    position = found + len(fragment)
            else:
                assert item.outcome == "ok", kind
    assert checked == set(corpus), f"kinds missing from the doc: {set(corpus) - checked}"
