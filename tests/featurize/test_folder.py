"""Tests of featurize.images.folder on the real hymenoptera data and on generated trees with
junk."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurize.exceptions import ImageDecodeError
from featurize.images.decoding import load_image
from featurize.images.folder import list_images, load_image_folder
from tests.support.corpus import make_corpus

HYMENOPTERA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hymenoptera_data"
needs_data = pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="shared data not available")


def _image(path: Path, colour: tuple[int, int, int] = (9, 9, 9), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path, fmt)
    return path


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# --------------------------------------------------------------------------------------------
# The real data
# --------------------------------------------------------------------------------------------


@needs_data
def test_hymenoptera_train() -> None:
    root = HYMENOPTERA / "train"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder gives no warning
        data = load_image_folder(root)
    assert data.target_names == ["ants", "bees"]
    assert len(data.paths) == 245 == len(data.target)
    assert data.target.dtype == np.int64
    assert np.bincount(data.target).tolist() == [124, 121]
    assert data.skipped == []
    ants = [p for p, t in zip(data.paths, data.target) if t == 0]
    assert all(os.path.dirname(p) == str(root / "ants") for p in ants)
    assert str(root / "ants" / "ant photos.jpg") in ants  # a space in the name
    assert str(root / "ants" / "imageNotFound.gif") in ants  # a valid GIF, if not an ant
    assert ants == sorted(ants)
    assert data.paths == load_image_folder(root).paths  # deterministic
    assert "ants: 124" in data.DESCR and "bees: 121" in data.DESCR
    assert load_image(data.paths[0]).mode == "RGB"


@needs_data
def test_hymenoptera_val_and_listing() -> None:
    data = load_image_folder(HYMENOPTERA / "val", verify=False)
    assert np.bincount(data.target).tolist() == [70, 83]
    everything = list_images(HYMENOPTERA)
    assert len(everything) == 398
    assert everything == sorted(everything, key=lambda p: Path(p).parts)
    assert list_images(str(HYMENOPTERA / "*" / "ants")) == [
        p for p in everything if Path(p).parent.name == "ants"
    ]
    assert list_images(str(HYMENOPTERA / "**" / "*.gif")) == [
        str(HYMENOPTERA / "train" / "ants" / "imageNotFound.gif")
    ]


# --------------------------------------------------------------------------------------------
# A tree with junk
# --------------------------------------------------------------------------------------------


@pytest.fixture
def junk_tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _image(root / "cats" / "a.jpg")
    _image(root / "cats" / "B.JPG", fmt="JPEG")  # upper-case extension
    _image(root / "cats" / "sub" / "deeper" / "c.png")  # nested: still a cat
    _write(root / "cats" / "notes.txt", b"labelled by Bob\n")
    _write(root / "cats" / "README", b"no extension\n")
    _write(root / "cats" / "broken.jpg", b"<html><body>Error 404</body></html>")
    _write(root / "cats" / "empty.jpeg", b"")
    _write(root / "cats" / ".DS_Store", b"\0\0\0\1Bud1")  # hidden: ignored silently
    _image(root / "cats" / ".hidden" / "x.jpg")  # hidden folder: ignored
    _image(root / "dogs" / "1.png")
    _write(root / "dogs" / "phone.HEIC", b"\0\0\0\x18ftypheic")
    _image(root / "dogs" / "2.webp", fmt="WEBP")
    _image(root / ".ipynb_checkpoints" / "a.jpg")  # hidden class: ignored
    _image(root / "__MACOSX" / "cats" / "a.jpg")  # zip artefact: ignored
    (root / "empty_class").mkdir()
    _write(root / "labels.csv", b"path,label\n")
    return root


def test_junk_tree(junk_tree: Path) -> None:
    with pytest.warns(UserWarning) as record:
        data = load_image_folder(junk_tree)
    assert len(record) == 1
    message = str(record[0].message)
    assert "kept 5 images, skipped 6 files" in message
    assert "3 without an image extension" in message and "2 unreadable" in message
    assert "1 not inside a class folder" in message and "'empty_class'" in message

    root = str(junk_tree)
    assert data.target_names == ["cats", "dogs", "empty_class"]
    assert data.paths == [
        os.path.join(root, "cats", "B.JPG"),
        os.path.join(root, "cats", "a.jpg"),
        os.path.join(root, "cats", "sub", "deeper", "c.png"),
        os.path.join(root, "dogs", "1.png"),
        os.path.join(root, "dogs", "2.webp"),
    ]
    assert data.target.tolist() == [0, 0, 0, 1, 1]
    skipped = dict(data.skipped)
    assert skipped == {
        os.path.join(root, "labels.csv"): "not inside a class folder",
        os.path.join(root, "cats", "README"): "not an image extension (the name has no extension)",
        os.path.join(root, "cats", "broken.jpg"): skipped[os.path.join(root, "cats", "broken.jpg")],
        os.path.join(root, "cats", "empty.jpeg"): "empty file (0 bytes)",
        os.path.join(root, "cats", "notes.txt"): "not an image extension '.txt'",
        os.path.join(root, "dogs", "phone.HEIC"): skipped[os.path.join(root, "dogs", "phone.HEIC")],
    }
    assert "looks like an HTML web page" in skipped[os.path.join(root, "cats", "broken.jpg")]
    assert skipped[os.path.join(root, "dogs", "phone.HEIC")].startswith(
        "unsupported image format '.heic'"
    )
    assert "3 classes, 5 images" in data.DESCR and "empty_class: 0" in data.DESCR
    for path in data.paths:
        assert load_image(path).size == (8, 6)


def test_junk_tree_without_verification(junk_tree: Path) -> None:
    with pytest.warns(UserWarning, match="skipped 4 files"):
        data = load_image_folder(junk_tree, verify=False)
    assert os.path.join(str(junk_tree), "cats", "broken.jpg") in data.paths
    assert len(data.paths) == 7


def test_custom_extensions(junk_tree: Path) -> None:
    with pytest.warns(UserWarning):
        data = load_image_folder(junk_tree, extensions=["PNG"])
    assert [Path(p).name for p in data.paths] == ["c.png", "1.png"]
    assert (os.path.join(str(junk_tree), "cats", "a.jpg"), "not an image extension '.jpg'") in (
        data.skipped
    )


def test_corpus_as_a_class(tmp_path: Path) -> None:
    # Header-level failures are skipped with the decoder's reason; body-level ones (truncated
    # pixel data) pass the header check and only fail when decoded.
    corpus = make_corpus(tmp_path / "junk")
    _image(tmp_path / "good" / "x.png")
    with pytest.warns(UserWarning):
        data = load_image_folder(tmp_path, max_pixels=10_000_000)
    skipped = dict(data.skipped)
    for kind, item in corpus.items():
        path = item.source
        if item.skip:  # e.g. permissions, as root: readable, so simply kept
            continue
        if item.outcome == "ok":
            assert path in data.paths, kind
        elif kind in ("truncated_jpeg", "truncated_png", "jpeg_missing_eoi"):
            assert path in data.paths, kind
            with pytest.raises(ImageDecodeError, match="truncated image data"):
                load_image(path)
        elif kind == "heic":
            assert skipped[path].startswith("unsupported image format '.heic'")
        elif kind in ("missing", "deleted", "directory"):  # nothing to list
            assert path not in data.paths and path not in skipped, kind
        else:
            assert item.reason in skipped[path], kind
    assert data.target_names == ["good", "junk"]


def test_file_deleted_between_listing_and_reading(tmp_path: Path) -> None:
    first = _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.jpg")
    paths = list_images(tmp_path)
    assert paths == [str(first), str(tmp_path / "b.jpg")]
    first.unlink()
    with pytest.raises(ImageDecodeError, match="file not found") as info:
        load_image(paths[0])
    assert info.value.source == paths[0]
    assert load_image(paths[1]).size == (8, 6)


@pytest.mark.parametrize("layout", ["missing", "file", "empty", "only_files", "only_hidden"])
def test_bad_roots(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "root"
    if layout == "missing":
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_image_folder(root)
        return
    if layout == "file":
        _image(tmp_path / "root", fmt="PNG")
        with pytest.raises(NotADirectoryError, match="one sub-folder per class"):
            load_image_folder(root)
        return
    root.mkdir()
    if layout == "only_files":
        _image(root / "a.jpg")
    if layout == "only_hidden":
        _image(root / ".cache" / "a.jpg")
    with pytest.raises(ValueError, match="no class folders in") as info:
        load_image_folder(root)
    assert f"found {1 if layout == 'only_files' else 0} files" in str(info.value)


def test_invalid_extensions(junk_tree: Path) -> None:
    with pytest.raises(ValueError, match="extensions"):
        load_image_folder(junk_tree, extensions=[".jpg", ""])
    with pytest.raises(ValueError, match="extensions"):
        list_images(junk_tree, extensions=[3])  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------
# list_images
# --------------------------------------------------------------------------------------------


def test_list_folder(junk_tree: Path) -> None:
    root = str(junk_tree)
    expected = [
        os.path.join(root, "cats", "B.JPG"),
        os.path.join(root, "cats", "a.jpg"),
        os.path.join(root, "cats", "broken.jpg"),
        os.path.join(root, "cats", "empty.jpeg"),
        os.path.join(root, "cats", "sub", "deeper", "c.png"),
        os.path.join(root, "dogs", "1.png"),
        os.path.join(root, "dogs", "2.webp"),
    ]
    assert list_images(junk_tree) == expected
    assert list_images(root) == expected
    assert list_images(junk_tree / "cats", recursive=False) == expected[:4]
    assert list_images(junk_tree / "empty_class") == []


def test_list_relative_paths_stay_relative(
    junk_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(junk_tree)
    assert list_images("dogs") == [os.path.join("dogs", "1.png"), os.path.join("dogs", "2.webp")]


def test_list_single_file_and_sequence(junk_tree: Path) -> None:
    notes = str(junk_tree / "cats" / "notes.txt")
    assert list_images(notes) == [notes]  # named explicitly: kept whatever its extension
    one = str(junk_tree / "dogs" / "1.png")
    assert list_images([one, junk_tree / "dogs", one]) == [
        one,
        one,
        str(junk_tree / "dogs" / "2.webp"),
        one,
    ]


def test_list_glob_patterns(junk_tree: Path) -> None:
    root = str(junk_tree)
    assert list_images(os.path.join(root, "cats", "*.jpg")) == [
        os.path.join(root, "cats", "a.jpg"),
        os.path.join(root, "cats", "broken.jpg"),
    ]
    assert list_images(os.path.join(root, "**", "*.png")) == [
        os.path.join(root, "cats", "sub", "deeper", "c.png"),
        os.path.join(root, "dogs", "1.png"),
    ]
    assert list_images(os.path.join(root, "cats", "[ab]*")) == [
        os.path.join(root, "cats", "a.jpg"),
        os.path.join(root, "cats", "broken.jpg"),
    ]
    assert list_images(os.path.join(root, "dog?")) == [
        os.path.join(root, "dogs", "1.png"),
        os.path.join(root, "dogs", "2.webp"),
    ]
    with pytest.raises(FileNotFoundError, match="no file matches the pattern"):
        list_images(os.path.join(root, "*.tiff"))


def test_list_literal_brackets_and_missing(tmp_path: Path) -> None:
    odd = _image(tmp_path / "photo[1].jpg")
    assert list_images(odd) == [str(odd)]  # an existing name is not a pattern
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list_images(tmp_path / "nope.jpg")
    with pytest.raises(TypeError):
        list_images(b"/tmp")  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_list_symlinks(tmp_path: Path) -> None:
    real = _image(tmp_path / "real" / "a.jpg")
    os.symlink(tmp_path / "real", tmp_path / "linked")  # followed
    os.symlink(tmp_path, tmp_path / "real" / "loop")  # a loop: each folder visited once
    os.symlink(tmp_path / "gone.jpg", tmp_path / "broken.jpg")  # listed, fails on decode
    paths = list_images(tmp_path)
    assert str(tmp_path / "broken.jpg") in paths
    assert [os.path.realpath(p) for p in paths].count(os.path.realpath(real)) == 1
    assert len(paths) == 2  # linked/ and real/ are the same folder: visited once
    with pytest.raises(ImageDecodeError, match="broken symbolic link"):
        load_image(str(tmp_path / "broken.jpg"))
