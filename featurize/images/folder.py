"""Find image files: in a folder tree, by glob pattern, or in a folder-per-class data set.

Listing rules shared by both functions:

* folders are walked recursively, entries in sorted order, so results are deterministic;
* hidden files and folders (name starting with ``"."``, e.g. ``.DS_Store``, ``.ipynb_checkpoints``,
  macOS ``._photo.jpg`` resource forks) and ``__MACOSX`` folders are ignored silently;
* symbolic links to folders are followed (each folder visited once, so link loops terminate);
  broken links to files are listed, so decoding later reports them instead of dropping them;
* image files are recognised by extension, case-insensitively (``IMAGE_EXTENSIONS``); decoding
  itself goes by content.
"""

from __future__ import annotations

import errno
import glob
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Union

import numpy as np
from sklearn.utils import Bunch

from featurize.exceptions import ImageDecodeError
from featurize.images.decoding import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, probe_image

__all__ = ["list_images", "load_image_folder"]

PathSource = Union[str, "os.PathLike[str]"]

_IGNORED_FOLDERS = frozenset({"__MACOSX"})
_GLOB_CHARS = frozenset("*?[")
# Image formats people put in data sets that Pillow cannot decode: say so instead of
# "not an image extension".
_KNOWN_UNSUPPORTED = {
    ".heic": "HEIC (Pillow cannot decode it; convert it to JPEG, or install pillow-heif)",
    ".heif": "HEIF (Pillow cannot decode it; convert it to JPEG, or install pillow-heif)",
    ".svg": "SVG vector graphics (export it to PNG first)",
    ".pdf": "PDF (render the page to PNG or JPEG first)",
    ".eps": "EPS/PostScript (featurize does not run Ghostscript; export it to PNG first)",
    ".dng": "camera RAW (convert it to JPEG or TIFF first)",
    ".cr2": "camera RAW (convert it to JPEG or TIFF first)",
    ".nef": "camera RAW (convert it to JPEG or TIFF first)",
    ".arw": "camera RAW (convert it to JPEG or TIFF first)",
}


def list_images(
    source: PathSource | Sequence[PathSource],
    *,
    recursive: bool = True,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
) -> list[str]:
    """List image files from a folder, a file, a glob pattern, or a sequence of those.

    Parameters
    ----------
    source : str, os.PathLike or sequence of them
        A folder (its image files, in sorted order), a single file (returned as is, whatever its
        extension: the user named it), or a glob pattern containing ``*``, ``?`` or ``[`` (``**``
        matches across folders; matched folders are listed, matched files are kept if they have
        an image extension). An existing path is never treated as a pattern, even if its name
        contains ``[``. A sequence is expanded item by item, keeping its order and duplicates.
    recursive : bool, default=True
        Whether to descend into sub-folders of a folder.
    extensions : iterable of str, default=IMAGE_EXTENSIONS
        Extensions that count as images, compared case-insensitively (``".jpg"`` or ``"jpg"``).

    Returns
    -------
    paths : list of str
        Paths built from ``source`` (relative stays relative). A folder without images gives an
        empty list.

    Raises
    ------
    FileNotFoundError
        If a path does not exist, or a pattern matches nothing.
    """
    allowed = _normalise_extensions(extensions)
    if isinstance(source, (str, os.PathLike)):
        return _list_one(os.fspath(source), recursive, allowed)
    if isinstance(source, (bytes, bytearray)) or not isinstance(source, Iterable):
        raise TypeError(
            f"source must be a path, a glob pattern or a sequence of them; got "
            f"{type(source).__name__}"
        )
    paths: list[str] = []
    for item in source:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"source items must be paths; got {type(item).__name__}")
        paths.extend(_list_one(os.fspath(item), recursive, allowed))
    return paths


def load_image_folder(
    root: PathSource,
    *,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    verify: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Bunch:
    """Load the file list and labels of a folder-per-class image data set.

    The layout is ``root/<class name>/<images>``, as in torchvision's ``ImageFolder``; images in
    nested sub-folders of a class folder belong to that class. Classes are the sorted names of the
    (non-hidden) sub-folders of ``root``, so labels are reproducible.

    Parameters
    ----------
    root : str or os.PathLike
        The data set folder.
    extensions : iterable of str, default=IMAGE_EXTENSIONS
        File extensions kept as images (case-insensitive). Other files are reported in
        ``skipped`` with the reason ``"not an image extension '.txt'"``.
    verify : bool, default=True
        Open each kept file's header with Pillow (no pixel decoding, a few KB read per file) and
        move unreadable files to ``skipped`` with the reason of the
        :class:`~featurize.exceptions.ImageDecodeError`. A file that passes may still fail
        later if its pixel data is truncated.
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS
        With ``verify=True``, images larger than this are skipped (see ``load_image``).

    Returns
    -------
    data : sklearn.utils.Bunch
        ``paths`` : list of str, the kept image files, class by class, each class sorted.
        ``target`` : ndarray of shape (n_images,), dtype int64, index into ``target_names``.
        ``target_names`` : list of str, the sorted class folder names (a class folder with no
        usable image is kept, so labels follow the folders).
        ``skipped`` : list of (path, reason) tuples, for files that are not used: not an image
        extension, unreadable (with ``verify=True``), or not inside a class folder.
        ``DESCR`` : str, a short summary. ``root`` : str.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    NotADirectoryError
        If ``root`` is a file.
    ValueError
        If ``root`` has no class sub-folder.

    Warns
    -----
    UserWarning
        Once, summarising how many files were skipped and why (and which classes are empty).
    """
    root = os.fspath(root)
    allowed = _normalise_extensions(extensions)
    if not os.path.exists(root):
        raise FileNotFoundError(errno.ENOENT, "image folder does not exist", root)
    if not os.path.isdir(root):
        raise NotADirectoryError(
            errno.ENOTDIR,
            "expected a folder with one sub-folder per class (root/<class>/<images>), got a file",
            root,
        )
    class_dirs, loose_files = [], []
    for entry in _sorted_entries(root):
        (class_dirs if _is_dir(entry) else loose_files).append(entry)
    if not class_dirs:
        raise ValueError(
            f"no class folders in {root!r}: expected one sub-folder per class holding its "
            f"images, e.g. {os.path.join(root, 'cats', '001.jpg')!r} "
            f"(found {len(loose_files)} files directly in the folder)"
        )

    paths: list[str] = []
    target: list[int] = []
    skipped: list[tuple[str, str]] = [
        (entry.path, "not inside a class folder") for entry in loose_files
    ]
    counts = {"extension": 0, "unreadable": 0, "loose": len(loose_files)}
    per_class: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        n_kept = 0
        for path in _walk(class_dir.path, recursive=True):
            extension = os.path.splitext(path)[1].lower()
            if extension not in allowed:
                skipped.append((path, _extension_reason(extension)))
                counts["extension"] += 1
                continue
            if verify:
                try:
                    probe_image(path, max_pixels=max_pixels)
                except ImageDecodeError as exc:
                    skipped.append((path, exc.reason))
                    counts["unreadable"] += 1
                    continue
            paths.append(path)
            target.append(label)
            n_kept += 1
        per_class.append(n_kept)

    target_names = [entry.name for entry in class_dirs]
    empty = [name for name, n in zip(target_names, per_class) if n == 0]
    if skipped or empty:
        warnings.warn(_skip_summary(root, len(paths), skipped, counts, empty), UserWarning,
                      stacklevel=2)
    return Bunch(
        paths=paths,
        target=np.asarray(target, dtype=np.int64),
        target_names=target_names,
        skipped=skipped,
        root=root,
        DESCR=_describe(root, target_names, per_class, skipped, verify),
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    if isinstance(extensions, str):
        extensions = [extensions]
    normalised = set()
    for extension in extensions:
        if not isinstance(extension, str) or not extension.strip("."):
            raise ValueError(f"extensions must be strings such as '.jpg'; got {extension!r}")
        normalised.add("." + extension.lower().lstrip("."))
    return frozenset(normalised)


def _has_image_extension(path: str, allowed: frozenset[str]) -> bool:
    return os.path.splitext(path)[1].lower() in allowed


def _list_one(source: str, recursive: bool, allowed: frozenset[str]) -> list[str]:
    if os.path.isdir(source):
        return [p for p in _walk(source, recursive) if _has_image_extension(p, allowed)]
    if os.path.lexists(source):  # a file, or a broken link the decoder will report
        return [source]
    if not _GLOB_CHARS.intersection(source):
        raise FileNotFoundError(errno.ENOENT, "no such file or folder", source)
    matches = sorted(glob.glob(source, recursive=True))
    if not matches:
        raise FileNotFoundError(errno.ENOENT, "no file matches the pattern", source)
    paths: list[str] = []
    for match in matches:
        if os.path.isdir(match):
            paths.extend(p for p in _walk(match, recursive) if _has_image_extension(p, allowed))
        elif _has_image_extension(match, allowed):
            paths.append(match)
    return paths


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_FOLDERS


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _sorted_entries(folder: str) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not _is_hidden(e.name)), key=lambda e: e.name)


def _walk(root: str, recursive: bool) -> Iterator[str]:
    """Yield the non-hidden files under ``root`` in sorted order (names compared per level)."""
    seen: set[tuple[int, int]] = set()

    def visit(folder: str) -> Iterator[str]:
        try:
            info = os.stat(folder)
            key = (info.st_dev, info.st_ino)
            if key in seen:  # a symlink loop or a folder linked twice
                return
            seen.add(key)
            entries = _sorted_entries(folder)
        except OSError as exc:
            warnings.warn(f"cannot list folder {folder!r}: {exc.strerror or exc}; its files "
                          "are ignored", UserWarning, stacklevel=4)
            return
        for entry in entries:
            if _is_dir(entry):
                if recursive:
                    yield from visit(entry.path)
            else:
                yield entry.path

    yield from visit(root)


def _extension_reason(extension: str) -> str:
    if extension in _KNOWN_UNSUPPORTED:
        return f"unsupported image format {extension!r}: {_KNOWN_UNSUPPORTED[extension]}"
    if not extension:
        return "not an image extension (the name has no extension)"
    return f"not an image extension {extension!r}"


def _skip_summary(
    root: str, n_kept: int, skipped: list[tuple[str, str]], counts: dict[str, int],
    empty: list[str],
) -> str:
    parts = []
    if counts["extension"]:
        parts.append(f"{counts['extension']} without an image extension")
    if counts["unreadable"]:
        parts.append(f"{counts['unreadable']} unreadable")
    if counts["loose"]:
        parts.append(f"{counts['loose']} not inside a class folder")
    message = (
        f"load_image_folder({root!r}): kept {n_kept} images, skipped {len(skipped)} files"
        + (f" ({', '.join(parts)})" if parts else "")
        + "; see the 'skipped' field of the result for each path and reason."
    )
    if empty:
        message += f" Class folders with no usable image: {', '.join(map(repr, empty))}."
    return message


def _describe(
    root: str, target_names: list[str], per_class: list[int], skipped: list[tuple[str, str]],
    verify: bool,
) -> str:
    lines = [
        f"Image folder {root!r}: {len(target_names)} classes, {sum(per_class)} images "
        f"(headers {'verified' if verify else 'not verified'}).",
    ]
    lines += [f"  {name}: {count}" for name, count in zip(target_names, per_class)]
    lines.append(f"Skipped files: {len(skipped)}.")
    return "\n".join(lines)
