"""What a file is, from its first bytes: for errors that say what was given instead.

A feature cache passed where a model is expected, a model file passed as ``--cache``, an image
given as weights: the error names the file and what it holds, so that the fix is obvious.
No torch, no h5py: only the file's leading bytes are read.
"""

from __future__ import annotations

import os

__all__ = ["describe_file", "identify", "is_hdf5"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: (leading bytes, description), first match wins
_MAGIC = (
    (b"PK\x03\x04", "a zip archive (a torch checkpoint, e.g. of `featurize finetune`)"),
    (b"\x80", "a pickle (a joblib or torch file)"),
    (b"x\x01", "a zlib-compressed joblib file (e.g. a model of `featurize train`)"),
    (b"x^", "a zlib-compressed joblib file (e.g. a model of `featurize train`)"),
    (b"x\x9c", "a zlib-compressed joblib file (e.g. a model of `featurize train`)"),
    (b"x\xda", "a zlib-compressed joblib file (e.g. a model of `featurize train`)"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"\x93NUMPY", "a NumPy array file"),
)


def is_hdf5(path) -> bool:
    """Whether ``path`` holds an HDF5 file: its signature at offset 0, or after a user block
    (512, 1024, 2048... bytes, as featurize caches have)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            offset = 0
            while offset + len(_HDF5_SIGNATURE) <= size:
                fh.seek(offset)
                if fh.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else 2 * offset
    except OSError:
        return False
    return False


def identify(path) -> str | None:
    """A few words on what ``path`` holds when its kind is recognised (``"a JPEG image"``,
    ``"an HDF5 file (...)"``, ``"a folder"``...), else None (empty, unknown or unreadable)."""
    if os.path.isdir(path):
        return "a folder"
    if is_hdf5(path):
        return "an HDF5 file (a featurize feature cache, as `--cache` writes)"
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return None
    if not head:
        return None
    for magic, text in _MAGIC:
        if head.startswith(magic):
            return text
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "a text file"


def describe_file(path) -> str:
    """:func:`identify`, or ``"a missing file"``, ``"an empty file (0 bytes)"``, ``"an
    unreadable file"``, ``"a file of unknown type"``."""
    kind = identify(path)
    if kind is not None:
        return kind
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return "a missing file"
    except OSError as exc:
        return f"an unreadable file ({exc.strerror or exc})"
    return "an empty file (0 bytes)" if size == 0 else "a file of unknown type"
