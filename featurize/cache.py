"""HDF5 cache of CNN features, keyed by image content and extraction configuration.

The cache is one HDF5 file, readable by plain h5py, ``h5ls`` and dask (layout in
``docs/cache.md``). Each extraction configuration (backbone, weights, layer, pooling, ...) gets
its own group ``/configs/<config_id>``; each row is keyed by :func:`content_key` of the image.

Crash safety. HDF5 is not journaled: a process killed while the library writes metadata can
leave a file that no longer opens. Every modification here is therefore a transaction: h5py
works on an in-memory overlay of the file (h5py's ``fileobj`` driver), so nothing reaches the
disk while HDF5 runs; the bytes it changed are then written to a redo journal
(``<file>.journal``, made visible by an atomic rename), applied to the file, and the journal is
removed. A process killed at any moment leaves either the old file (journal not yet complete)
or a complete journal that the next featurize operation on the file replays. Inside each
transaction a batch only becomes visible once the group's ``n_committed`` attribute says so.

Concurrency. No file is held open between operations: each one takes an ``flock`` on the
file (shared to read, exclusive to write, the same lock HDF5 itself takes), retrying with
backoff for up to ``lock_timeout`` seconds, does its work and closes the file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import random
import signal
import stat
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from featurize._version import FEATURE_VERSION, __version__
from featurize.exceptions import CacheError

try:  # POSIX only; without it there is no inter-process locking (logged once)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CACHE_LAYOUT_VERSION",
    "CacheCorruptedError",
    "CacheLockedError",
    "ConfigNotFoundError",
    "FeatureCache",
    "cache_info",
    "config_id",
    "content_key",
    "describe",
    "merge_caches",
]

logger = logging.getLogger(__name__)

#: Version of the on-disk layout described in ``docs/cache.md``. A file with a greater
#: version was written by a newer featurize and is refused.
CACHE_LAYOUT_VERSION = 1

_KEY_LEN = 32  # content_key and config_id: blake2b, 16-byte digest, 32 hex characters
_STORAGE_DTYPES = ("float32", "float16")
_LIBVER = ("v110", "v110")  # checksummed metadata; readable by HDF5 >= 1.10 (h5py >= 2.8)
_FEATURE_CHUNK_BYTES = 32 * 1024  # features chunk target: scattered lookups vs bulk reads
_KEY_CHUNK_ROWS = 2048  # 64 KiB of S32 keys, 32 KiB of variable-length path references
_READ_CALL_S = 40e-6  # measured cost of reading one slice (chunk lookup, fletcher32 check)
_READ_BYTES_PER_S = 1e9  # measured bulk read speed of fletcher32-checked chunks
_MERGE_SLICE_BYTES = 32 * 1024 * 1024  # rows copied per merge transaction
_JOURNAL_MAGIC = b"FZCJRNL1"
_JOURNAL_HEADER = struct.Struct("<8sQQQQQ")  # magic, st_dev, st_ino, cut, final_size, n_extents
_JOURNAL_EXTENT = struct.Struct("<QQ")  # offset, length
_PAGE = 4096
_BLOCKED_SIGNALS = {signal.SIGINT, signal.SIGTERM} | (
    {signal.SIGHUP} if hasattr(signal, "SIGHUP") else set()
)


class CacheCorruptedError(CacheError):
    """The cache file is truncated, corrupted, not HDF5 or internally inconsistent."""


class CacheLockedError(CacheError):
    """Another process held the cache file for longer than ``lock_timeout``."""


class ConfigNotFoundError(CacheError, KeyError):
    """The requested configuration has no group in the cache file."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------


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
        digest = hashlib.blake2b(digest_size=16, person=b"featurize.file")
        with open(os.fspath(source), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.blake2b(bytes(source), digest_size=16, person=b"featurize.file").hexdigest()
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
        digest.update(json.dumps([source.mode, list(source.size), palette, orientation]).encode())
        digest.update(source.tobytes())
        return digest.hexdigest()
    raise TypeError(
        "content_key expects a path (str or os.PathLike), bytes, a numpy array or a PIL "
        f"image; got {type(source).__name__}."
    )


def _canonical_json(config: Mapping[str, Any]) -> str:
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
    canonical = _canonical_json(config)
    return hashlib.blake2b(canonical.encode("ascii"), digest_size=16,
                           person=b"featurize.config").hexdigest()


def _resolve_id(config_or_id: Mapping[str, Any] | str) -> str:
    if isinstance(config_or_id, str):
        cid = config_or_id.lower()
        if len(cid) != _KEY_LEN or any(c not in "0123456789abcdef" for c in cid):
            raise ValueError(f"expected a config dict or a {_KEY_LEN}-character config id; "
                             f"got {config_or_id!r}.")
        return cid
    return config_id(config_or_id)


def _normalize_keys(keys: Any) -> list[bytes]:
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


def _clean_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    value = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    # Paths are provenance only: undecodable file names are kept readable, not refused.
    value = value.replace("\0", "\\x00")  # HDF5 strings end at a NUL
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


# --------------------------------------------------------------------------------------
# Locking, overlay and journal (the crash-safety machinery)
# --------------------------------------------------------------------------------------

_warned_no_lock = False


def _flock(fd: int, path: str, exclusive: bool, timeout: float) -> None:
    global _warned_no_lock
    if fcntl is None:
        return
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, operation)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            if not _warned_no_lock:
                logger.warning("file locking is not supported for %s (%s): concurrent "
                               "processes sharing this cache are not protected.", path, exc)
                _warned_no_lock = True
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CacheLockedError(
                f"cache file {path!r} stayed locked for {timeout:g} s: another process holds "
                "it (another featurize run, or an open h5py/dask handle on the file). Close "
                "that handle, wait for the other run, or raise lock_timeout."
            )
        time.sleep(min(remaining, delay * (0.5 + random.random())))
        delay = min(delay * 2, 0.2)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP (not SIGKILL) while the file itself is being modified."""
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_SIGNALS)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - non-POSIX
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _pread(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        block = os.pread(fd, size, offset)
        if not block:
            break
        parts.append(block)
        size -= len(block)
        offset += len(block)
    return b"".join(parts)


class _Overlay:
    """File-like object for h5py's ``fileobj`` driver: reads fall through to ``fd``, writes
    stay in memory (4 KiB pages) until :meth:`extents` hands them to the journal."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.orig_size = os.fstat(fd).st_size
        self.cut = self.orig_size  # bytes at or past ``cut`` read as zeros (after a truncate)
        self.size = self.orig_size
        self._pos = 0
        self._pages: dict[int, bytearray] = {}

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _disk(self, offset: int, size: int) -> bytes:
        size = min(size, self.cut - offset)
        return _pread(self._fd, size, offset) if size > 0 else b""

    def _fill(self, offset: int, out: memoryview) -> None:
        length = len(out)
        if length == 0:
            return
        data = self._disk(offset, length)
        out[: len(data)] = data
        if len(data) < length:  # like sec2: bytes past the end read as zeros
            out[len(data):] = bytes(length - len(data))
        first, last = offset // _PAGE, (offset + length - 1) // _PAGE
        if last - first + 1 <= len(self._pages):
            numbers: Any = range(first, last + 1)
        else:
            numbers = sorted(n for n in self._pages if first <= n <= last)
        for number in numbers:
            page = self._pages.get(number)
            if page is not None:
                start = number * _PAGE
                lo, hi = max(offset, start), min(offset + length, start + _PAGE)
                out[lo - offset: hi - offset] = page[lo - start: hi - start]

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        buffer = bytearray(size)
        self._fill(self._pos, memoryview(buffer))
        self._pos += size
        return bytes(buffer)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        self._fill(self._pos, view)
        self._pos += len(view)
        return len(view)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done, length = 0, len(view)
        while done < length:
            position = self._pos + done
            number, within = divmod(position, _PAGE)
            step = min(_PAGE - within, length - done)
            page = self._pages.get(number)
            if page is None:
                if step == _PAGE:
                    self._pages[number] = bytearray(view[done: done + step])
                    done += step
                    continue
                page = bytearray(_PAGE)
                old = self._disk(number * _PAGE, _PAGE)
                page[: len(old)] = old
                self._pages[number] = page
            page[within: within + step] = view[done: done + step]
            done += step
        self._pos += length
        self.size = max(self.size, self._pos)
        return length

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if size < self.size:
            self.cut = min(self.cut, size)
            for number in [n for n in self._pages if n * _PAGE >= size]:
                del self._pages[number]
            number, within = divmod(size, _PAGE)
            if number in self._pages:
                self._pages[number][within:] = bytes(_PAGE - within)
        self.size = size
        return size

    def extents(self) -> list[tuple[int, bytes]]:
        """Changed byte ranges (page-aligned, merged, clipped to the final size)."""
        runs: list[tuple[int, list[bytes]]] = []
        end = -1
        for number in sorted(self._pages):
            start = number * _PAGE
            valid = min(_PAGE, self.size - start)
            if valid <= 0:
                continue
            page = bytes(memoryview(self._pages[number])[:valid])
            before = self._disk(start, valid)
            if page == before + bytes(valid - len(before)):
                continue  # rewritten with identical bytes (e.g. HDF5's status flags)
            if start == end:
                runs[-1][1].append(page)
            else:
                runs.append((start, [page]))
            end = start + valid
        return [(start, b"".join(parts)) for start, parts in runs]

    @property
    def changed(self) -> bool:
        return self.size != self.orig_size or self.cut != self.orig_size


def _journal_path(path: str) -> str:
    return path + ".journal"


def _apply_journal(fd: int, cut: int, final_size: int, extents: Sequence[tuple[int, bytes]]
                   ) -> None:
    """Bring the file to its post-transaction state. Idempotent, so a replay is safe."""
    if cut < os.fstat(fd).st_size:
        os.ftruncate(fd, cut)
    for offset, data in extents:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    os.ftruncate(fd, final_size)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not every filesystem can fsync a directory
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _reserve(fd: int, extents: Sequence[tuple[int, bytes]]) -> None:
    """Allocate the disk blocks the extents will be written to, before the commit point.

    A full disk (ENOSPC) or a file size limit (EFBIG) then fails here, while the file is still
    unchanged, instead of half-way through applying a committed journal, which would leave a
    cache that cannot be opened until space is freed. (HDF5 leaves holes in the file, so
    overwriting inside it can need new blocks too.) Filesystems without ``fallocate`` skip this.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    for offset, data in extents:
        try:
            os.posix_fallocate(fd, offset, len(data))
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                return
            raise


def _commit(path: str, fd: int, overlay: _Overlay, fsync: bool) -> None:
    extents = overlay.extents()
    if not extents and not overlay.changed:
        return
    info = os.fstat(fd)
    body = [_JOURNAL_HEADER.pack(_JOURNAL_MAGIC, info.st_dev, info.st_ino, overlay.cut,
                                 overlay.size, len(extents))]
    for offset, data in extents:
        body += [_JOURNAL_EXTENT.pack(offset, len(data)), data]
    payload = b"".join(body)
    payload += hashlib.blake2b(payload, digest_size=32).digest()
    journal = _journal_path(path)
    with _signals_blocked():
        try:
            _reserve(fd, extents)
            with open(journal + ".tmp", "wb") as fh:
                fh.write(payload)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(journal + ".tmp", journal)  # the commit point
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(journal + ".tmp")
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size > info.st_size:  # grown by _reserve: back to as it was
                    os.ftruncate(fd, info.st_size)
            raise CacheError(f"could not write cache file {path!r} or its journal: {exc}. "
                             "The cache is unchanged; free disk space (the disk is full or a "
                             "file size limit is reached) or check permissions.") from exc
        if fsync:
            _fsync_dir(path)
        try:
            _apply_journal(fd, overlay.cut, overlay.size, extents)
            if fsync:
                os.fsync(fd)
        except OSError as exc:
            raise CacheError(f"could not write cache file {path!r}: {exc}. The write is "
                             f"committed in {journal!r} and will be completed by the next "
                             "operation on the cache; free disk space.") from exc
        os.unlink(journal)


def _parse_journal(payload: bytes) -> tuple[int, int, int, int, list[tuple[int, bytes]]]:
    head, digest = payload[:-32], payload[-32:]
    if (len(payload) < _JOURNAL_HEADER.size + 32
            or hashlib.blake2b(head, digest_size=32).digest() != digest):
        raise ValueError("bad checksum")
    magic, dev, ino, cut, final_size, count = _JOURNAL_HEADER.unpack_from(head)
    if magic != _JOURNAL_MAGIC:
        raise ValueError("bad magic")
    pos, extents = _JOURNAL_HEADER.size, []
    for _ in range(count):
        offset, length = _JOURNAL_EXTENT.unpack_from(head, pos)
        pos += _JOURNAL_EXTENT.size
        extents.append((offset, head[pos: pos + length]))
        pos += length
    if pos != len(head):
        raise ValueError("bad length")
    return dev, ino, cut, final_size, extents


def _recover(path: str, fd: int, fsync: bool) -> None:
    """Replay or discard what a killed transaction left. Needs the exclusive lock."""
    journal = _journal_path(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal + ".tmp")  # incomplete journal: the file itself was not touched
    try:
        with open(journal, "rb") as fh:
            payload = fh.read()
    except FileNotFoundError:
        return
    try:
        dev, ino, cut, final_size, extents = _parse_journal(payload)
    except (ValueError, struct.error) as exc:
        raise CacheCorruptedError(
            f"cache file {path!r} has an unreadable journal {journal!r} ({exc}): an "
            "interrupted write cannot be completed, so the cache may be damaged (this happens "
            "after a power loss or a disk error, not after a killed process). Delete both "
            "files (features will be recomputed) or point cache= at another file."
        ) from exc
    info = os.fstat(fd)
    if (info.st_dev, info.st_ino) != (dev, ino):
        logger.warning("discarding %s: it belongs to an earlier file of that name.", journal)
        os.unlink(journal)
        return
    with _signals_blocked():
        _apply_journal(fd, cut, final_size, extents)
        if fsync:
            os.fsync(fd)
        os.unlink(journal)
    logger.warning("completed an interrupted write to cache file %s from its journal.", path)


# --------------------------------------------------------------------------------------
# HDF5 helpers
# --------------------------------------------------------------------------------------


def _h5py() -> Any:
    import h5py  # imported on first use: keeps `import featurize` fast

    return h5py


def _open_for_reading(path: str) -> Any:
    """Open read-only. Our shared flock is already held; HDF5's own lock (also shared) is
    taken "best-effort", which matches a handle the user may hold open in this process with
    h5py's defaults (HDF5 refuses to open one file twice with different locking flags)."""
    h5py = _h5py()
    try:
        return h5py.File(path, "r", locking="best-effort")
    except OSError as exc:
        if "locking" not in str(exc) or "flag" not in str(exc):
            raise
        return h5py.File(path, "r", locking=False)  # the user's handle has locking=False


def _corrupted(path: str, exc: BaseException) -> CacheCorruptedError:
    return CacheCorruptedError(
        f"cache file {path!r} is not a readable featurize cache ({exc}). It may be truncated "
        "or corrupted (an interrupted copy or download, a full disk), or not an HDF5 file at "
        "all. Delete it (features will be recomputed) or point cache= at another file."
    )


@contextlib.contextmanager
def _h5_errors(path: str) -> Iterator[None]:
    """Turn what h5py raises on a damaged file into a CacheCorruptedError naming it."""
    try:
        yield
    except CacheError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise _corrupted(path, exc) from exc


def _check_root(f: Any, path: str) -> None:
    version = f.attrs.get("featurize_layout_version")
    if version is None:
        raise CacheError(
            f"{path!r} is an HDF5 file but not a featurize feature cache (its root group has "
            "no 'featurize_layout_version' attribute). It was left untouched; point cache= "
            "at another file."
        )
    if int(version) > CACHE_LAYOUT_VERSION:
        raise CacheError(
            f"cache file {path!r} has layout version {int(version)}, but featurize "
            f"{__version__} reads layout versions up to {CACHE_LAYOUT_VERSION}: it was "
            "written by a newer featurize. Upgrade featurize or point cache= at another file."
        )


@dataclass
class _GroupState:
    n: int  # committed rows
    width: int | None  # None until the first feature row
    dtype: str | None
    uid: str


def _group_state(grp: Any, path: str) -> _GroupState:
    try:
        n = int(grp.attrs["n_committed"])
        uid = str(grp.attrs["uid"])
        width = dtype = None
        if "features" in grp:
            keys, paths, feats = grp["keys"], grp["paths"], grp["features"]
            width, dtype = int(feats.shape[1]), str(feats.dtype)
            ok = (feats.ndim == 2 and dtype in _STORAGE_DTYPES and keys.dtype == "S32"
                  and min(keys.shape[0], paths.shape[0], feats.shape[0]) >= n >= 0)
        else:
            ok = n == 0
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise _corrupted(path, exc) from exc
    if not ok:
        raise _corrupted(path, ValueError(f"group {grp.name} is inconsistent"))
    return _GroupState(n, width, dtype, uid)


@functools.cache
def _installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _package_version(name: str) -> str:
    module = sys.modules.get(name)  # the imported one wins (it may carry a local suffix)
    version = getattr(module, "__version__", None)
    return str(version) if version else _installed_version(name)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_PROVENANCE_ATTRS = ("created", "featurize_version", "feature_version", "torch_version",
                     "torchvision_version", "numpy_version", "h5py_version", "hdf5_version")


def _provenance() -> dict[str, Any]:
    h5py = _h5py()
    return {
        "created": _now(),
        "featurize_version": __version__,
        "feature_version": FEATURE_VERSION,
        "torch_version": _package_version("torch"),
        "torchvision_version": _package_version("torchvision"),
        "numpy_version": np.__version__,
        "h5py_version": h5py.__version__,
        "hdf5_version": h5py.version.hdf5_version,
    }


def _read_rows(dset: Any, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (any order, repeats allowed) of a 2-D dataset, in that order.

    Reads either one contiguous block or one slice per run of consecutive rows, whichever
    is estimated cheaper. (h5py's fancy indexing builds one HDF5 selection out of every
    row; for 1,000 scattered rows that is several times slower than slicing each.)
    """
    if rows.size == 0:
        return np.empty((0, dset.shape[1]), dtype=dset.dtype)
    unique, inverse = np.unique(rows, return_inverse=True)
    row_bytes = dset.shape[1] * dset.dtype.itemsize
    breaks = np.flatnonzero(np.diff(unique) != 1) + 1
    starts, ends = np.r_[0, breaks], np.r_[breaks, unique.size]
    lo, hi = int(unique[0]), int(unique[-1]) + 1
    span_cost = (hi - lo) * row_bytes / _READ_BYTES_PER_S
    runs_cost = starts.size * _READ_CALL_S + unique.size * row_bytes / _READ_BYTES_PER_S
    if unique.size == hi - lo:
        data = dset[lo:hi]
    elif span_cost <= runs_cost:
        data = dset[lo:hi][unique - lo]
    else:
        data = np.empty((unique.size, dset.shape[1]), dtype=dset.dtype)
        for start, end in zip(starts.tolist(), ends.tolist()):
            data[start:end] = dset[int(unique[start]): int(unique[end - 1]) + 1]
    if inverse.size == unique.size and (inverse.size < 2 or (np.diff(inverse) == 1).all()):
        return data  # the request was already sorted and without repeats
    return data[inverse]


@dataclass
class _Index:
    uid: str
    n: int
    rows: dict[bytes, int]


def _text(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


# --------------------------------------------------------------------------------------
# FeatureCache
# --------------------------------------------------------------------------------------


class FeatureCache:
    """Features of images, stored per extraction configuration in one HDF5 file.

    Parameters
    ----------
    path : str or os.PathLike
        The cache file. Created on the first write; a missing file is an empty cache.
    dtype : {"float32", "float16"}, default="float32"
        Storage type of new configurations. float16 halves the size; reads always return
        float32. A configuration stored in one type is refused under the other.
    lock_timeout : float, default=60.0
        Seconds to wait for another process holding the file before raising
        :class:`CacheLockedError`.
    fsync : bool, default=False
        Also survive power loss and OS crashes (on disks that honour fsync), at the cost
        of three ``fsync`` calls per write. Killed processes are survived either way.

    Notes
    -----
    The object holds no open file: every call opens, locks, works and closes, so one cache
    can be shared by several processes and pickled to workers (only the parameters travel).
    """

    def __init__(self, path: str | os.PathLike, *, dtype: str = "float32",
                 lock_timeout: float = 60.0, fsync: bool = False) -> None:
        self.path = path
        self.dtype = dtype
        self.lock_timeout = lock_timeout
        self.fsync = fsync
        self._indexes: dict[str, _Index] = {}
        self._mutex = threading.RLock()

    # -- protocol ----------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"FeatureCache({os.fspath(self.path)!r}, dtype={self.dtype!r})"

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget the in-memory key index (no file is ever held open)."""
        with self._mutex:
            self._indexes.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "dtype": self.dtype, "lock_timeout": self.lock_timeout,
                "fsync": self.fsync}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], dtype=state["dtype"],  # type: ignore[misc]
                      lock_timeout=state["lock_timeout"], fsync=state.get("fsync", False))

    # -- file access -------------------------------------------------------------------

    @property
    def _file(self) -> str:
        return os.fspath(self.path)

    def _storage_dtype(self) -> str:
        name = np.dtype(self.dtype).name if self.dtype is not None else None
        if name not in _STORAGE_DTYPES:
            raise ValueError(f"The 'dtype' parameter of FeatureCache must be one of "
                             f"{set(_STORAGE_DTYPES)}. Got {self.dtype!r} instead.")
        return name

    def _open_fd(self, writable: bool) -> int | None:
        path = self._file
        flags = (os.O_RDWR | os.O_CREAT) if writable else os.O_RDONLY
        try:
            fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileNotFoundError:
            if writable:
                raise CacheError(f"cannot create cache file {path!r}: its directory does not "
                                 "exist.") from None
            return None
        except IsADirectoryError:
            raise CacheError(f"cache path {path!r} is a directory; expected an HDF5 file "
                             "path.") from None
        except OSError as exc:
            raise CacheError(f"cannot open cache file {path!r}: {exc}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CacheError(f"cache path {path!r} is not a regular file; expected an HDF5 "
                             "file path.")
        return fd

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        """Yield the open h5py.File (shared lock held), or None for a missing/empty cache."""
        path = self._file
        fd = self._open_fd(writable=False)
        if fd is None:
            yield None
            return
        try:
            _flock(fd, path, exclusive=False, timeout=self.lock_timeout)
            if os.path.exists(_journal_path(path)):  # a killed writer: finish its commit
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)  # our own shared lock would block us
                self._recover_now()
                _flock(fd, path, exclusive=False, timeout=self.lock_timeout)
            if os.fstat(fd).st_size == 0:
                yield None
                return
            with _h5_errors(path):
                f = _open_for_reading(path)
            try:
                with _h5_errors(path):
                    _check_root(f, path)
                    yield f
            finally:
                f.close()
        finally:
            os.close(fd)

    def _recover_now(self) -> None:
        try:
            fd = self._open_fd(writable=True)
        except CacheError as exc:
            raise CacheError(
                f"cache file {self._file!r} has an interrupted write to complete (from "
                f"{_journal_path(self._file)!r}), which needs write access: {exc}"
            ) from exc
        try:
            _flock(fd, self._file, exclusive=True, timeout=self.lock_timeout)
            _recover(self._file, fd, self.fsync)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """Yield a writable h5py.File on an in-memory overlay; commit it atomically on exit."""
        path = self._file
        with self._mutex:
            fd = self._open_fd(writable=True)
            try:
                _flock(fd, path, exclusive=True, timeout=self.lock_timeout)
                _recover(path, fd, self.fsync)
                overlay = _Overlay(fd)
                h5py = _h5py()
                new = overlay.size == 0
                with _h5_errors(path):
                    f = h5py.File(overlay, "w" if new else "r+", libver=_LIBVER)
                try:
                    with _h5_errors(path):
                        if new:
                            f.attrs["featurize_layout_version"] = CACHE_LAYOUT_VERSION
                            f.attrs["featurize_version"] = __version__
                            f.attrs["created"] = _now()
                            f.create_group("configs")
                        else:
                            _check_root(f, path)
                        yield f
                        f.flush()
                finally:
                    f.close()  # on error the overlay is simply dropped: the file is untouched
                _commit(path, fd, overlay, self.fsync)
            finally:
                os.close(fd)

    # -- index -------------------------------------------------------------------------

    def _index(self, cid: str, grp: Any, state: _GroupState) -> _Index:
        """The key -> row index of a group, brought up to date (rows are append-only)."""
        with self._mutex:
            index = self._indexes.get(cid)
            if index is None or index.uid != state.uid or index.n > state.n:
                index = _Index(state.uid, 0, {})
                self._indexes[cid] = index
            if index.n < state.n:
                new = grp["keys"][index.n: state.n].tolist()
                index.rows.update(zip(new, range(index.n, state.n)))
                index.n = state.n
            return index

    # -- public API --------------------------------------------------------------------

    def lookup(self, config: Mapping[str, Any], keys: Sequence[str]
               ) -> tuple[np.ndarray, np.ndarray]:
        """Find cached features.

        Parameters
        ----------
        config : dict
            Extraction configuration.
        keys : sequence of str
            Content keys (duplicates allowed).

        Returns
        -------
        found : ndarray of bool, shape (n_keys,)
        features : ndarray of float32, shape (n_found, n_features)
            Features of the found keys, in the order of ``keys``.
        """
        cid = config_id(config)
        wanted = _normalize_keys(keys)
        found = np.zeros(len(wanted), dtype=bool)
        storage = self._storage_dtype()
        with self._reading() as f:
            if f is None or f"configs/{cid}" not in f:
                return found, np.empty((0, 0), dtype=np.float32)
            grp = f["configs"][cid]
            state = _group_state(grp, self._file)
            if state.width is None:
                return found, np.empty((0, 0), dtype=np.float32)
            self._check_dtype(cid, state, storage)
            if _canonical_json(json.loads(grp.attrs["config"])) != _canonical_json(config):
                raise _corrupted(self._file, ValueError(  # never serve another model's rows
                    f"group {cid} holds another configuration than its name says"))
            rows = self._rows(cid, grp, state, wanted)
            found = rows >= 0
            features = _read_rows(grp["features"], rows[found])
        return found, features.astype(np.float32, copy=False)

    def _rows(self, cid: str, grp: Any, state: _GroupState, wanted: list[bytes]) -> np.ndarray:
        rows_map = self._index(cid, grp, state).rows
        return np.fromiter((rows_map.get(k, -1) for k in wanted), dtype=np.int64,
                           count=len(wanted))

    def _has_keys(self, cid: str, keys: Sequence[str]) -> np.ndarray:
        """Which keys have committed rows, whatever the storage dtype."""
        wanted = _normalize_keys(keys)
        with self._reading() as f:
            if f is None or f"configs/{cid}" not in f:
                return np.zeros(len(wanted), dtype=bool)
            grp = f["configs"][cid]
            state = _group_state(grp, self._file)
            if state.width is None:
                return np.zeros(len(wanted), dtype=bool)
            return self._rows(cid, grp, state, wanted) >= 0

    def _check_dtype(self, cid: str, state: _GroupState, storage: str) -> None:
        if state.dtype is not None and state.dtype != storage:
            raise CacheError(
                f"configuration {cid} in cache file {self._file!r} is stored as "
                f"{state.dtype}, but this FeatureCache uses dtype={storage!r}. Open the cache "
                f"with dtype={state.dtype!r}, or point cache= at another file."
            )

    def write(self, config: Mapping[str, Any], keys: Sequence[str], features: np.ndarray,
              paths: Sequence[str | os.PathLike | None]) -> int:
        """Append one batch of features; keys already cached are skipped.

        Parameters
        ----------
        config : dict
            Extraction configuration (one HDF5 group per configuration).
        keys : sequence of str, length n_rows
            Content keys of the rows.
        features : array-like of shape (n_rows, n_features)
            Finite feature values.
        paths : sequence of str or None, length n_rows
            Where each image came from (provenance only).

        Returns
        -------
        n_new : int
            Number of rows added.
        """
        return self._append(config, keys, features, paths, dtype=self._storage_dtype())

    def _append(self, config: Mapping[str, Any], keys: Any, features: Any, paths: Any, *,
                dtype: str, provenance: Mapping[str, Any] | None = None) -> int:
        cid = config_id(config)
        key_bytes = _normalize_keys(keys)
        features = np.asarray(features)
        paths = [_clean_text(p) for p in paths]
        if features.ndim != 2 or not (len(key_bytes) == len(paths) == features.shape[0]):
            raise ValueError(
                "write expects features of shape (n_rows, n_features) and as many keys and "
                f"paths as rows; got features {features.shape}, {len(key_bytes)} keys, "
                f"{len(paths)} paths."
            )
        if not np.issubdtype(features.dtype, np.number) or features.shape[1] == 0:
            raise ValueError(f"features must be numeric with at least one column; got dtype "
                             f"{features.dtype}, shape {features.shape}.")
        with np.errstate(over="ignore", invalid="ignore"):  # reported just below
            stored = features.astype(dtype, copy=False)
        if not np.isfinite(stored).all():
            raise ValueError("features contain NaN or infinity" + (
                " (or values beyond the float16 range)" if dtype == "float16" else "")
                + "; write only successfully extracted rows.")
        if not key_bytes:
            return 0
        first = {}
        for i, key in enumerate(key_bytes):
            first.setdefault(key, i)
        width = stored.shape[1]
        with self._transaction() as f:
            grp = self._require_group(f, cid, config, provenance)
            state = _group_state(grp, self._file)
            if state.width is None:
                self._create_feature_datasets(grp, width, dtype)
                state = _group_state(grp, self._file)
            self._check_dtype(cid, state, dtype)
            if state.width != width:
                raise CacheError(
                    f"configuration {cid} in cache file {self._file!r} holds features of "
                    f"width {state.width}; got a batch of width {width}. The configuration "
                    "dict must describe everything that changes the features."
                )
            index = self._index(cid, grp, state)
            new_keys = [k for k in first if k not in index.rows]
            n0, m = state.n, len(new_keys)
            if m:
                take = np.fromiter((first[k] for k in new_keys), dtype=np.int64, count=m)
                for name in ("keys", "paths", "features"):
                    grp[name].resize(n0 + m, axis=0)  # also drops rows past n_committed
                grp["keys"][n0:] = np.array(new_keys, dtype="S32")
                grp["paths"][n0:] = [paths[i] for i in take]
                grp["features"][n0:] = stored[take]
                f.flush()
                grp.attrs["n_committed"] = n0 + m  # the batch becomes visible here
            self._forget_failures(grp, set(first))
        with self._mutex:
            index = self._indexes.get(cid)
            if index is not None and index.uid == state.uid and index.n == n0:
                index.rows.update(zip(new_keys, range(n0, n0 + m)))
                index.n = n0 + m
        logger.debug("cache %s: %d new rows for %s", self._file, m, cid)
        return m

    def _require_group(self, f: Any, cid: str, config: Mapping[str, Any],
                       provenance: Mapping[str, Any] | None) -> Any:
        configs = f.require_group("configs")
        if cid in configs:
            grp = configs[cid]
            stored = json.loads(grp.attrs["config"])
            if _canonical_json(stored) != _canonical_json(config):
                raise _corrupted(self._file, ValueError(
                    f"group {cid} holds another configuration than its name says"))
            return grp
        grp = configs.create_group(cid)
        grp.attrs["config"] = json.dumps(config, sort_keys=True, indent=2)
        grp.attrs["config_id"] = cid
        grp.attrs["uid"] = uuid.uuid4().hex
        grp.attrs["n_committed"] = np.int64(0)
        for name, value in (provenance or _provenance()).items():
            grp.attrs[name] = value
        return grp

    @staticmethod
    def _create_feature_datasets(grp: Any, width: int, dtype: str) -> None:
        h5py = _h5py()
        rows = int(min(4096, max(1, _FEATURE_CHUNK_BYTES // (width * np.dtype(dtype).itemsize))))
        grp.create_dataset("keys", shape=(0,), maxshape=(None,), dtype="S32",
                           chunks=(_KEY_CHUNK_ROWS,), fletcher32=True)
        grp.create_dataset("paths", shape=(0,), maxshape=(None,),
                           dtype=h5py.string_dtype("utf-8"), chunks=(_KEY_CHUNK_ROWS,))
        grp.create_dataset("features", shape=(0, width), maxshape=(None, width), dtype=dtype,
                           chunks=(rows, width), fletcher32=True)

    # -- failures ----------------------------------------------------------------------

    @staticmethod
    def _read_failures(grp: Any) -> tuple[list[bytes], list[str], list[str]]:
        if "failures" not in grp:
            return [], [], []
        fails = grp["failures"]
        n = int(fails.attrs["n_committed"])
        return (fails["keys"][:n].tolist(), _text(fails["paths"][:n]),
                _text(fails["reasons"][:n]))

    @staticmethod
    def _write_failures(grp: Any, keys: list[bytes], paths: list[str], reasons: list[str]
                        ) -> None:
        h5py = _h5py()
        if "failures" not in grp:
            fails = grp.create_group("failures")
            fails.create_dataset("keys", shape=(0,), maxshape=(None,), dtype="S32",
                                 chunks=(256,))
            for name in ("paths", "reasons"):
                fails.create_dataset(name, shape=(0,), maxshape=(None,),
                                     dtype=h5py.string_dtype("utf-8"), chunks=(256,))
        fails = grp["failures"]
        for name, values in (("keys", np.array(keys, dtype="S32")), ("paths", paths),
                             ("reasons", reasons)):
            fails[name].resize(len(keys), axis=0)
            if keys:
                fails[name][:] = values
        fails.attrs["n_committed"] = np.int64(len(keys))

    def _forget_failures(self, grp: Any, keys: set[bytes]) -> None:
        old = self._read_failures(grp)
        keep = [i for i, key in enumerate(old[0]) if key not in keys]
        if len(keep) < len(old[0]):
            self._write_failures(grp, *([column[i] for i in keep] for column in old))

    def record_failures(self, config: Mapping[str, Any], keys: Sequence[str],
                        paths: Sequence[str | os.PathLike | None], reasons: Sequence[str]
                        ) -> None:
        """Remember inputs that could not be featurized, so a re-run can skip them.

        Parameters
        ----------
        config : dict
            Extraction configuration.
        keys, paths, reasons : sequences of the same length
            Content key, path and reason of each failure. A key recorded again with
            another path or reason is updated; writing features for a key removes it.
        """
        cid = config_id(config)
        key_bytes = _normalize_keys(keys)
        paths = [_clean_text(p) for p in paths]
        reasons = [_clean_text(r) for r in reasons]
        if not len(key_bytes) == len(paths) == len(reasons):
            raise ValueError(f"record_failures expects as many keys, paths and reasons; got "
                             f"{len(key_bytes)}, {len(paths)}, {len(reasons)}.")
        if not key_bytes:
            return
        with self._transaction() as f:
            grp = self._require_group(f, cid, config, None)
            old_keys, old_paths, old_reasons = self._read_failures(grp)
            records = dict(zip(old_keys, zip(old_paths, old_reasons)))
            records.update(zip(key_bytes, zip(paths, reasons)))
            if len(records) != len(old_keys) or any(
                    records[k] != (p, r) for k, p, r in zip(old_keys, old_paths, old_reasons)):
                self._write_failures(grp, list(records), [v[0] for v in records.values()],
                                     [v[1] for v in records.values()])

    def failures(self, config: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        """Recorded failures of a configuration: ``{key: (path, reason)}``."""
        cid = config_id(config)
        with self._reading() as f:
            if f is None or f"configs/{cid}" not in f:
                return {}
            keys, paths, reasons = self._read_failures(f["configs"][cid])
        return {k.decode("ascii"): (p, r) for k, p, r in zip(keys, paths, reasons)}

    def clear_failures(self, config: Mapping[str, Any] | None = None) -> int:
        """Forget recorded failures, of one configuration or (``None``) of all.

        Returns
        -------
        n_cleared : int
            Number of failure records removed.
        """
        cid = None if config is None else config_id(config)
        if not os.path.exists(self._file):
            return 0
        cleared = 0
        with self._transaction() as f:
            configs = f["configs"]
            for name in ([cid] if cid is not None else list(configs)):
                if name is None or name not in configs or "failures" not in configs[name]:
                    continue
                grp = configs[name]
                cleared += int(grp["failures"].attrs["n_committed"])
                del grp["failures"]
                if "features" not in grp:  # a group that only held failures
                    del configs[name]
        return cleared

    # -- inspection and maintenance ----------------------------------------------------

    def configurations(self) -> list[dict[str, Any]]:
        """One dict per stored configuration.

        Returns
        -------
        configurations : list of dict
            Keys ``id``, ``config`` (dict), ``count``, ``width``, ``dtype``, ``failures``,
            ``nbytes`` (bytes stored), ``created`` and the library versions that made it.
        """
        out = []
        with self._reading() as f:
            if f is None:
                return out
            for cid, grp in f["configs"].items():
                state = _group_state(grp, self._file)
                info: dict[str, Any] = {
                    "id": cid, "config": json.loads(grp.attrs["config"]), "count": state.n,
                    "width": state.width, "dtype": state.dtype,
                    "failures": len(self._read_failures(grp)[0]),
                    "nbytes": sum(int(d.id.get_storage_size()) for d in grp.values()
                                  if isinstance(d, _h5py().Dataset)),
                }
                for name in _PROVENANCE_ATTRS:
                    value = grp.attrs.get(name)
                    info[name] = value.item() if isinstance(value, np.generic) else value
                out.append(info)
        return out

    def export(self, config_or_id: Mapping[str, Any] | str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All committed rows of one configuration.

        Returns
        -------
        keys : ndarray of str, shape (n_rows,)
        paths : ndarray of object (str), shape (n_rows,)
        features : ndarray of float32, shape (n_rows, n_features)
        """
        keys, paths, features = self._export_raw(_resolve_id(config_or_id))
        return keys.astype("U32"), paths, features.astype(np.float32, copy=False)

    def _export_raw(self, cid: str, start: int = 0, stop: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._reading() as f:
            if f is None or f"configs/{cid}" not in f:
                raise ConfigNotFoundError(f"no configuration {cid} in cache file "
                                          f"{self._file!r}.")
            grp = f["configs"][cid]
            state = _group_state(grp, self._file)
            if state.width is None:
                return (np.empty(0, "S32"), np.empty(0, object),
                        np.empty((0, 0), np.float32))
            stop = state.n if stop is None else min(stop, state.n)
            return (grp["keys"][start:stop], np.array(_text(grp["paths"][start:stop]), object),
                    grp["features"][start:stop])

    def drop(self, config_or_id: Mapping[str, Any] | str) -> None:
        """Delete a configuration and its features.

        HDF5 does not shrink the file: merge it into a new file to reclaim the space.
        """
        cid = _resolve_id(config_or_id)
        if not os.path.exists(self._file):
            raise ConfigNotFoundError(f"no configuration {cid} in cache file {self._file!r}.")
        with self._transaction() as f:
            if cid not in f["configs"]:
                raise ConfigNotFoundError(f"no configuration {cid} in cache file "
                                          f"{self._file!r}.")
            del f["configs"][cid]
        with self._mutex:
            self._indexes.pop(cid, None)

    def _group_attrs(self, cid: str) -> dict[str, Any]:
        with self._reading() as f:
            return dict(f["configs"][cid].attrs)


# --------------------------------------------------------------------------------------
# Merging and describing
# --------------------------------------------------------------------------------------


def merge_caches(sources: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 lock_timeout: float = 60.0) -> dict[str, Any]:
    """Combine cache files (e.g. shards written by separate jobs) into one.

    Rows are copied bit for bit, keys already in ``out`` are skipped (merging twice adds
    nothing), failures are carried over, and each configuration keeps the provenance of the
    run that extracted it. Everything is checked before anything is written.

    Parameters
    ----------
    sources : sequence of path
        Cache files to read.
    out : path
        Cache file to create or extend (must not be one of ``sources``).
    lock_timeout : float, default=60.0
        Passed to every :class:`FeatureCache`.

    Returns
    -------
    counts : dict
        ``sources``, ``configs``, ``rows_added``, ``rows_skipped``, ``failures_added`` and
        ``per_config`` (``{config_id: {"added", "skipped"}}``).

    Raises
    ------
    CacheError
        A source is missing or unreadable, or the same configuration has different widths or
        storage dtypes in two files.
    """
    out_path = os.path.abspath(os.fspath(out))
    source_paths = [os.path.abspath(os.fspath(s)) for s in sources]
    for src in source_paths:
        if not os.path.isfile(src):
            raise CacheError(f"cannot merge {src!r}: no such file.")
        if os.path.exists(out_path) and os.path.samefile(src, out_path):
            raise ValueError(f"the output {out_path!r} is also a source; pick another --out.")
    target = FeatureCache(out_path, lock_timeout=lock_timeout)
    seen: dict[str, tuple[str, dict[str, Any]]] = {
        c["id"]: (out_path, c) for c in target.configurations()}
    plans = []
    problems = []
    for src in source_paths:
        cache = FeatureCache(src, lock_timeout=lock_timeout)
        confs = cache.configurations()
        for conf in confs:
            if config_id(conf["config"]) != conf["id"]:
                raise _corrupted(src, ValueError(f"group {conf['id']} does not match its config"))
            other = seen.get(conf["id"])
            if other is not None:
                other_path, prev = other
                for field in ("width", "dtype"):
                    if None not in (prev[field], conf[field]) and prev[field] != conf[field]:
                        problems.append(
                            f"configuration {conf['id']} has {field} {conf[field]} in {src!r} "
                            f"but {prev[field]} in {other_path!r}")
            if other is None or other[1]["width"] is None:
                seen[conf["id"]] = (src, conf)
            plans.append((cache, conf))
    if problems:
        raise CacheError("cannot merge: " + "; ".join(problems) + ". Features of one "
                         "configuration must share width and storage dtype; merge such files "
                         "separately.")
    counts: dict[str, Any] = {"sources": len(source_paths), "configs": len(
        {conf["id"] for _, conf in plans}), "rows_added": 0, "rows_skipped": 0,
        "failures_added": 0, "per_config": {}}
    for cache, conf in plans:
        cid = conf["id"]
        per = counts["per_config"].setdefault(cid, {"added": 0, "skipped": 0})
        attrs = cache._group_attrs(cid)
        provenance = {k: attrs[k] for k in _PROVENANCE_ATTRS if k in attrs}
        if conf["width"] is not None and conf["count"]:
            step = max(1, _MERGE_SLICE_BYTES // (conf["width"] * np.dtype(conf["dtype"]).itemsize))
            for start in range(0, conf["count"], step):
                keys, paths, features = cache._export_raw(cid, start, start + step)
                added = target._append(conf["config"], keys, features, paths,
                                       dtype=conf["dtype"], provenance=provenance)
                per["added"] += added
                per["skipped"] += len(keys) - added
        failures = cache.failures(conf["config"])
        if failures:
            before = len(target.failures(conf["config"]))
            items = list(failures.items())
            done = target._has_keys(cid, [key for key, _ in items])  # extracted in `out`
            todo = [(key, record) for (key, record), hit in zip(items, done) if not hit]
            if todo:
                target.record_failures(conf["config"], [key for key, _ in todo],
                                       [path for _, (path, _) in todo],
                                       [reason for _, (_, reason) in todo])
            counts["failures_added"] += len(target.failures(conf["config"])) - before
    counts["rows_added"] = sum(p["added"] for p in counts["per_config"].values())
    counts["rows_skipped"] = sum(p["skipped"] for p in counts["per_config"].values())
    return counts


def cache_info(path: str | os.PathLike) -> dict[str, Any]:
    """Machine-readable summary of a cache file (what ``featurize info --json`` prints).

    Raises
    ------
    CacheError
        The file is missing, locked, corrupted or not a featurize cache.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CacheError(f"no cache file {path!r}.")
    cache = FeatureCache(path)
    configurations = cache.configurations()
    root: dict[str, Any] = {}
    with cache._reading() as f:
        if f is None:
            raise CacheError(f"{path!r} is empty: not a featurize cache.")
        for name in ("featurize_layout_version", "featurize_version", "created"):
            value = f.attrs.get(name)
            root[name] = value.item() if isinstance(value, np.generic) else value
    return {
        "path": os.path.abspath(path),
        "file_size": os.path.getsize(path),
        "layout_version": root["featurize_layout_version"],
        "supported_layout_version": CACHE_LAYOUT_VERSION,
        "featurize_version": root["featurize_version"],
        "created": root["created"],
        "configurations": configurations,
    }


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""  # pragma: no cover


def describe(path: str | os.PathLike) -> str:
    """Human-readable summary of a cache file, for ``featurize info FILE``.

    Raises
    ------
    CacheError
        The file is missing, locked, corrupted or not a featurize cache.
    """
    info = cache_info(path)
    confs = info["configurations"]
    stored = sum(c["nbytes"] for c in confs)
    lines = [
        f"featurize feature cache {info['path']}",
        f"  layout version {info['layout_version']} (this featurize reads up to "
        f"{info['supported_layout_version']}), created {info['created']} by featurize "
        f"{info['featurize_version']}",
        f"  file size {_size(info['file_size'])}, {len(confs)} configuration(s), "
        f"{sum(c['count'] for c in confs):,} feature rows, "
        f"{sum(c['failures'] for c in confs):,} recorded failures",
    ]
    if info["file_size"] > 2 * stored + (1 << 20):
        lines.append(f"  {_size(info['file_size'] - stored)} unused (dropped data): "
                     "`featurize merge FILE --out NEW` writes a compact copy")
    for number, conf in enumerate(confs, 1):
        shape = (f"{conf['count']:,} rows x {conf['width']} {conf['dtype']}"
                 if conf["width"] is not None else "no features yet")
        lines += [
            "",
            f"[{number}] {conf['id']}",
            f"    {shape}, {_size(conf['nbytes'])} stored, {conf['failures']:,} failures",
            f"    created {conf.get('created')} with featurize {conf.get('featurize_version')}, "
            f"torch {conf.get('torch_version')}, torchvision {conf.get('torchvision_version')}",
        ]
        for key, value in sorted(conf["config"].items()):
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            lines.append(f"    {key}: {text}")
    return "\n".join(lines)
