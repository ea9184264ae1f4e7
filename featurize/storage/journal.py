"""Crash safety and concurrency of the cache file: locks, an in-memory overlay, a redo journal.

HDF5 is not journaled: a process killed while the library writes metadata can leave a file
that no longer opens. Every modification is therefore a transaction: h5py works on an
:class:`Overlay` of the file (h5py's ``fileobj`` driver), so nothing reaches the disk while
HDF5 runs; the bytes it changed are then written to a redo journal (``<file>.journal``, made
visible by an atomic rename: the commit point), applied to the file, and the journal is
removed. A process killed at any moment leaves either the old file or a complete journal that
the next operation replays (:func:`recover`).

A journal names its file by the ID written in the file's HDF5 user block (:func:`read_file_id`),
so a cache copied with its journal, remounted, or seen by another NFS client keeps it.

No file is held open between operations: each takes an ``flock`` (shared to read, exclusive to
write), retrying with backoff for up to a timeout. Where the file system cannot lock, writing is
refused unless the caller says it is the only writer.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import random
import signal
import struct
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from featurize.exceptions import (
    CacheCorruptedError,
    CacheError,
    CacheLockedError,
    CacheLockingError,
)

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["USERBLOCK_SIZE", "Overlay", "commit", "flock", "journal_path", "new_file_id",
           "read_file_id", "recover", "signals_blocked", "unlock", "write_file_id"]

logger = logging.getLogger(__name__)

_JOURNAL_MAGIC = b"FZCJRNL2"
#: magic, file id, st_dev, st_ino, cut, final_size, orig_size, n_extents
_JOURNAL_HEADER = struct.Struct("<8s16sQQQQqQ")
_JOURNAL_MAGIC_V1 = b"FZCJRNL1"
_JOURNAL_HEADER_V1 = struct.Struct("<8sQQQQQ")  # magic, st_dev, st_ino, cut, final_size, n
_JOURNAL_EXTENT = struct.Struct("<QQ")  # offset, length
_PAGE = 4096
_BLOCKED_SIGNALS = {signal.SIGINT, signal.SIGTERM} | (
    {signal.SIGHUP} if hasattr(signal, "SIGHUP") else set()
)
#: HDF5 user block of a cache file: HDF5 never writes there. It starts with a magic and the
#: file's random ID.
USERBLOCK_SIZE = 512
_ID_MAGIC = b"featurize-cache\0"


class _Journal(NamedTuple):
    file_id: bytes
    dev: int
    ino: int
    cut: int
    final_size: int
    orig_size: int
    extents: list


def new_file_id() -> bytes:
    """A random 16-byte ID for a new cache file."""
    return uuid.uuid4().bytes


def write_file_id(fh, file_id: bytes) -> None:
    """Write the user block (magic + ID) at the start of a new file's overlay."""
    fh.seek(0)
    fh.write(_ID_MAGIC + file_id)


def read_file_id(fd: int) -> bytes | None:
    """The ID in the file's user block, or None (an empty file, or one of featurize 0.1)."""
    head = os.pread(fd, len(_ID_MAGIC) + 16, 0)
    if len(head) == len(_ID_MAGIC) + 16 and head.startswith(_ID_MAGIC):
        return head[len(_ID_MAGIC):]
    return None


def flock(fd: int, path: str, exclusive: bool, timeout: float, single_writer: bool = False
          ) -> None:
    """Lock the open file ``fd`` (shared or exclusive), waiting up to ``timeout`` seconds.

    Raises
    ------
    CacheLockedError
        Another process held the file for longer than ``timeout``.
    CacheLockingError
        The file system cannot lock files (some network or FUSE mounts), unless
        ``single_writer`` says that no other process uses the file.
    """
    if fcntl is None:
        if single_writer:
            return
        raise _no_locking(path, "this platform has no fcntl.flock")
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
            if single_writer:
                return
            raise _no_locking(path, exc) from exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CacheLockedError(
                f"cache file {path!r} stayed locked for {timeout:g} s: another process holds "
                "it (another featurize run, or an open h5py/dask handle on the file). Close "
                "that handle, wait for the other run, or raise lock_timeout."
            )
        time.sleep(min(remaining, delay * (0.5 + random.random())))
        delay = min(delay * 2, 0.2)


def unlock(fd: int) -> None:
    """Release this process's lock on ``fd`` (a no-op where there are no locks)."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)


def _no_locking(path: str, why: object) -> CacheLockingError:
    return CacheLockingError(
        f"cannot lock cache file {path!r} ({why}): this file system does not support file "
        "locks, so two writers could corrupt it. Put the cache on a local disk, or, if no "
        "other process uses this file, open it with FeatureCache(path, single_writer=True) "
        "(command line: --single-writer).")


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
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


class Overlay:
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


def journal_path(path: str) -> str:
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


def commit(path: str, fd: int, overlay: Overlay, fsync: bool, file_id: bytes | None) -> None:
    """Write the overlay's changes to the journal (the commit point), then to the file."""
    extents = overlay.extents()
    if not extents and not overlay.changed:
        return
    info = os.fstat(fd)
    body = [_JOURNAL_HEADER.pack(_JOURNAL_MAGIC, file_id or bytes(16), info.st_dev,
                                 info.st_ino, overlay.cut, overlay.size, overlay.orig_size,
                                 len(extents))]
    for offset, data in extents:
        body += [_JOURNAL_EXTENT.pack(offset, len(data)), data]
    payload = b"".join(body)
    payload += hashlib.blake2b(payload, digest_size=32).digest()
    journal = journal_path(path)
    with signals_blocked():
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


def _parse_journal(payload: bytes) -> _Journal:
    head, digest = payload[:-32], payload[-32:]
    if (len(payload) < _JOURNAL_HEADER_V1.size + 32
            or hashlib.blake2b(head, digest_size=32).digest() != digest):
        raise ValueError("bad checksum")
    if head[:8] == _JOURNAL_MAGIC:
        _, file_id, dev, ino, cut, final_size, orig_size, count = _JOURNAL_HEADER.unpack_from(head)
        pos = _JOURNAL_HEADER.size
    elif head[:8] == _JOURNAL_MAGIC_V1:  # written by featurize 0.1: no file id
        _, dev, ino, cut, final_size, count = _JOURNAL_HEADER_V1.unpack_from(head)
        file_id, orig_size, pos = bytes(16), -1, _JOURNAL_HEADER_V1.size
    else:
        raise ValueError("bad magic")
    extents = []
    for _ in range(count):
        offset, length = _JOURNAL_EXTENT.unpack_from(head, pos)
        pos += _JOURNAL_EXTENT.size
        extents.append((offset, head[pos: pos + length]))
        pos += length
    if pos != len(head):
        raise ValueError("bad length")
    return _Journal(file_id, dev, ino, cut, final_size, orig_size, extents)


def _journal_belongs(journal: _Journal, fd: int) -> bool:
    """Is ``journal`` a transaction of the file open as ``fd``?

    A file is identified by the ID in its user block, which copies, remounts and other NFS
    clients keep (a device and inode number do not). A transaction that created the file
    (it was empty) belongs to a file with no ID yet, or with its ID. Files and journals of
    featurize 0.1 have no ID: there the device and inode decide, as they did.
    """
    if journal.file_id != bytes(16):
        current = read_file_id(fd)
        if current is not None:
            return current == journal.file_id
        return journal.orig_size == 0
    info = os.fstat(fd)
    return (info.st_dev, info.st_ino) == (journal.dev, journal.ino)


def recover(path: str, fd: int, fsync: bool) -> None:
    """Replay or discard what a killed transaction left. Needs the exclusive lock."""
    journal = journal_path(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal + ".tmp")  # incomplete journal: the file itself was not touched
    try:
        with open(journal, "rb") as fh:
            payload = fh.read()
    except FileNotFoundError:
        return
    try:
        journal_record = _parse_journal(payload)
    except (ValueError, struct.error) as exc:
        raise CacheCorruptedError(
            f"cache file {path!r} has an unreadable journal {journal!r} ({exc}): an "
            "interrupted write cannot be completed, so the cache may be damaged (this happens "
            "after a power loss or a disk error, not after a killed process). Delete both "
            "files (features will be recomputed) or point cache= at another file."
        ) from exc
    if not _journal_belongs(journal_record, fd):
        logger.warning("discarding %s: it belongs to another file of that name.", journal)
        os.unlink(journal)
        return
    with signals_blocked():
        _apply_journal(fd, journal_record.cut, journal_record.final_size,
                       journal_record.extents)
        if fsync:
            os.fsync(fd)
        os.unlink(journal)
    logger.warning("completed an interrupted write to cache file %s from its journal.", path)
