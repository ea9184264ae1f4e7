"""Content keys of images and identifiers of configurations: what the cache is keyed by.

A row of features is a pure function of (image bytes, configuration). :func:`content_key`
hashes the bytes (never the name), :func:`config_id` the configuration;
:func:`read_keyed` reads a file once and returns the bytes with their key, so that the bytes
decoded are exactly the bytes hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "KEY_LENGTH",
    "canonical_json",
    "config_id",
    "content_key",
    "file_content_key",
    "normalize_keys",
    "read_keyed",
    "resolve_config_id",
]

#: content_key and config_id: blake2b, 16-byte digest, 32 hex characters
KEY_LENGTH = 32
_KEY_LEN = KEY_LENGTH


def _file_digest():
    return hashlib.blake2b(digest_size=16, person=b"featurize.file")


def read_keyed(path: str | os.PathLike) -> tuple[bytes, str]:
    """Read a file once: ``(its bytes, their content key)``.

    Decoding these bytes (not the file again) is what makes the key describe the pixels that
    were featurized, even if another program rewrites the file meanwhile.

    Raises
    ------
    OSError
        The file cannot be read.
    """
    with open(os.fspath(path), "rb") as fh:
        data = fh.read()
    return data, content_key(data)




def content_key(source: Any) -> str:
    """Return the cache key of an image: a hash of its content, never of its name.

    Parameters
    ----------
    source : str, os.PathLike, bytes, numpy.ndarray or PIL.Image.Image
        A path (the file's bytes are hashed, read in 1 MiB chunks, so a renamed or copied
        file keeps its key), the encoded bytes of a file (same key as the file), a pixel
        array (dtype, shape and bytes are hashed) or a PIL image (mode, size, palette,
        EXIF orientation and pixels are hashed). The four kinds are hashed in separate
        domains: an array and a file never share a key.

    Returns
    -------
    key : str
        32 lowercase hexadecimal characters (blake2b, 16-byte digest).

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError, OSError
        The path cannot be read.
    TypeError
        ``source`` is of an unsupported type.
    """
    if isinstance(source, (str, os.PathLike)):
        digest = _file_digest()
        with open(os.fspath(source), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest = _file_digest()
        digest.update(source)
        return digest.hexdigest()
    if isinstance(source, np.ndarray):
        if source.dtype.hasobject:
            raise TypeError(f"content_key cannot hash an array of dtype {source.dtype}: "
                            "expected a numeric pixel array.")
        digest = hashlib.blake2b(digest_size=16, person=b"featurize.array")
        digest.update(f"{source.dtype.str}|{source.shape}|".encode("ascii"))
        digest.update(np.ascontiguousarray(source).tobytes())
        return digest.hexdigest()
    pil_image = sys.modules.get("PIL.Image")
    if pil_image is not None and isinstance(source, pil_image.Image):
        digest = hashlib.blake2b(digest_size=16, person=b"featurize.pil")
        palette = source.getpalette() if source.mode in ("P", "PA") else None
        orientation = source.getexif().get(0x0112)
        # Decoding honours a palette or colour-key transparency (composited on white), so the
        # key must too.
        transparency = source.info.get("transparency")
        if isinstance(transparency, bytes):
            transparency = transparency.hex()
        elif isinstance(transparency, tuple):
            transparency = list(transparency)
        meta = [source.mode, list(source.size), palette, orientation]
        if transparency is not None:  # absent: the key of earlier versions, unchanged
            meta.append(transparency)
        digest.update(json.dumps(meta).encode())
        digest.update(source.tobytes())
        return digest.hexdigest()
    raise TypeError(
        "content_key expects a path (str or os.PathLike), bytes, a numpy array or a PIL "
        f"image; got {type(source).__name__}."
    )


def canonical_json(config: Mapping[str, Any]) -> str:
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict; got {type(config).__name__}.")
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"config must be JSON-serialisable (str, numbers, lists, dicts): {exc}"
                        ) from exc


def config_id(config: Mapping[str, Any]) -> str:
    """Return the stable identifier (HDF5 group name) of an extraction configuration.

    Parameters
    ----------
    config : dict
        JSON-serialisable description of everything that changes the numbers.

    Returns
    -------
    config_id : str
        32 hexadecimal characters: blake2b of the canonical JSON (sorted keys, compact).
    """
    canonical = canonical_json(config)
    return hashlib.blake2b(canonical.encode("ascii"), digest_size=16,
                           person=b"featurize.config").hexdigest()


def is_configuration_entry(value: Any) -> bool:
    """Whether ``value`` is an entry of :meth:`FeatureCache.configurations` (a dict with the
    ``id`` and the ``config`` of a stored configuration) rather than a configuration dict."""
    return (isinstance(value, Mapping) and isinstance(value.get("id"), str)
            and isinstance(value.get("config"), Mapping))


def given_config(config_or_id: Mapping[str, Any] | str) -> Mapping[str, Any] | None:
    """The configuration dict given (an entry's ``config``), or None for an id."""
    if is_configuration_entry(config_or_id):
        return config_or_id["config"]
    return None if isinstance(config_or_id, str) else config_or_id


def resolve_config_id(config_or_id: Mapping[str, Any] | str) -> str:
    """The id of a configuration given as its dict, its id, or an entry of
    :meth:`FeatureCache.configurations` (whose ``id`` it takes)."""
    if is_configuration_entry(config_or_id):
        config_or_id = config_or_id["id"]
    if isinstance(config_or_id, str):
        cid = config_or_id.lower()
        if len(cid) != _KEY_LEN or any(c not in "0123456789abcdef" for c in cid):
            raise ValueError(f"expected a config dict, a {_KEY_LEN}-character config id or an "
                             f"entry of FeatureCache.configurations(); got {config_or_id!r}.")
        return cid
    return config_id(config_or_id)


def normalize_keys(keys: Any) -> list[bytes]:
    seq = keys.tolist() if isinstance(keys, np.ndarray) else keys
    try:  # fast path, the common case: ASCII str keys as made by content_key
        fast = [key.encode("ascii") for key in seq]
    except (AttributeError, UnicodeEncodeError):
        fast = None
    if fast is not None and b"\0" not in b"".join(fast) and all(
            0 < len(raw) <= _KEY_LEN for raw in fast):
        return fast
    out = []
    for key in seq:
        if isinstance(key, str):
            raw = key.encode("ascii") if key.isascii() else b""
        else:
            raw = key if isinstance(key, bytes) else b""
        if not 0 < len(raw) <= _KEY_LEN or b"\0" in raw or not raw.isascii():
            raise ValueError(f"cache keys must be ASCII strings of 1 to {_KEY_LEN} characters "
                             f"(as made by content_key); got {key!r}.")
        out.append(raw)
    return out


#: Content keys of files already hashed by this process, by (path, device, inode, size, mtime,
#: ctime): a warm-cache re-run then costs a ``stat`` per file instead of reading every byte.
_KEY_MEMO: dict[tuple, str] = {}
_KEY_MEMO_MAX = 500_000  # about 150 MB at most; emptied when full
#: A file modified less than this long before it was hashed is not memoized: a change within
#: the file system's timestamp granularity could otherwise keep the same stat ("racy git").
_RACY_NS = 2_000_000_000


def _stat_memo(source) -> tuple[tuple | None, os.stat_result | None]:
    """The memo entry of a regular file as it is now, and its stat (None, None otherwise)."""
    if isinstance(source, str):  # the common case first: isinstance(x, os.PathLike) is slow
        path = source
    elif isinstance(source, os.PathLike):
        path = os.fspath(source)
    else:
        return None, None
    try:
        st = os.stat(path)
    except (OSError, ValueError, TypeError):
        return None, None
    if not stat.S_ISREG(st.st_mode):
        return None, None
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), st


def remembered_content_key(source) -> str | None:
    """The key :func:`file_content_key` remembers for the file as it is now, or None.

    One ``stat``, no byte read: what a warm cache needs to serve a file it has seen.
    """
    memo, _ = _stat_memo(source)
    return None if memo is None else _KEY_MEMO.get(memo)


def file_content_key(source) -> str:
    """:func:`featurize.storage.cache.content_key`, memoized for regular files by their ``stat``.

    The key of a file is remembered (in this process) with its path, device, inode, size,
    modification and status-change times in nanoseconds; any change to the file gives a new
    ``stat`` and the file is hashed again. Files changed in the 2 seconds before they were
    hashed are not remembered. Other sources are hashed every time.

    Parameters
    ----------
    source : str, os.PathLike, bytes, ndarray or PIL.Image.Image

    Returns
    -------
    str
    """
    memo, st = _stat_memo(source)
    if memo is None:
        return content_key(source)  # not a regular file: hashed (or its error raised)
    key = _KEY_MEMO.get(memo)  # dict reads and writes are atomic: no lock needed
    if key is not None:
        return key
    key = content_key(source)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
        if len(_KEY_MEMO) >= _KEY_MEMO_MAX:
            _KEY_MEMO.clear()
        _KEY_MEMO[memo] = key
    return key
