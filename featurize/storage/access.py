"""One access to a cache file: a locked read, or a journaled transaction.

Every call of :class:`~featurize.storage.cache.FeatureCache` opens the file, locks it
(:func:`featurize.storage.journal.flock`), finishes an interrupted commit if a killed writer
left one (:func:`~featurize.storage.journal.recover`), works, and closes it: no file is held
open between calls. A write works on an in-memory overlay of the file and commits it through
the redo journal, atomically.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from typing import Any

from featurize._version import __version__
from featurize.exceptions import CacheError
from featurize.storage.h5store import (
    CACHE_LAYOUT_VERSION,
    LIBVER,
    check_root,
    h5_errors,
    h5py_module,
    open_for_reading,
    utc_now,
)
from featurize.storage.journal import (
    USERBLOCK_SIZE,
    Overlay,
    commit,
    flock,
    journal_path,
    new_file_id,
    read_file_id,
    recover,
    unlock,
    write_file_id,
)

__all__ = ["CacheFile"]


class CacheFile:
    """How one cache file is opened, locked, recovered and committed.

    Parameters
    ----------
    path : str
    lock_timeout : float
        Seconds to wait for another process holding the file.
    fsync : bool
        Also survive power loss (three ``fsync`` per commit).
    single_writer : bool
        Write without a working file lock (no other process uses the file).
    mutex : threading.RLock
        Serializes the transactions of the threads of this process.
    """

    def __init__(self, path: str, *, lock_timeout: float, fsync: bool, single_writer: bool,
                 mutex: threading.RLock) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self.fsync = fsync
        self.single_writer = single_writer
        self._mutex = mutex

    def open_fd(self, writable: bool) -> int | None:
        path = self.path
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
    def reading(self) -> Iterator[Any]:
        """Yield the open h5py.File (shared lock held), or None for a missing/empty cache."""
        path = self.path
        fd = self.open_fd(writable=False)
        if fd is None:
            yield None
            return
        try:
            flock(fd, path, exclusive=False, timeout=self.lock_timeout,
                  single_writer=self.single_writer)
            if os.path.exists(journal_path(path)):  # a killed writer: finish its commit
                unlock(fd)  # our own shared lock would block the recovery
                self.recover_now()
                flock(fd, path, exclusive=False, timeout=self.lock_timeout,
                  single_writer=self.single_writer)
            if os.fstat(fd).st_size == 0:
                yield None
                return
            with h5_errors(path):
                f = open_for_reading(path)
            try:
                with h5_errors(path):
                    check_root(f, path)
                    yield f
            finally:
                f.close()
        finally:
            os.close(fd)

    def recover_now(self) -> None:
        try:
            fd = self.open_fd(writable=True)
        except CacheError as exc:
            raise CacheError(
                f"cache file {self.path!r} has an interrupted write to complete (from "
                f"{journal_path(self.path)!r}), which needs write access: {exc}"
            ) from exc
        try:
            flock(fd, self.path, exclusive=True, timeout=self.lock_timeout,
                  single_writer=self.single_writer)
            recover(self.path, fd, self.fsync)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """Yield a writable h5py.File on an in-memory overlay; commit it atomically on exit."""
        path = self.path
        with self._mutex:
            fd = self.open_fd(writable=True)
            try:
                flock(fd, path, exclusive=True, timeout=self.lock_timeout,
                  single_writer=self.single_writer)
                recover(path, fd, self.fsync)
                overlay = Overlay(fd)
                h5py = h5py_module()
                new = overlay.size == 0
                file_id = new_file_id() if new else read_file_id(fd)
                with h5_errors(path):
                    f = (h5py.File(overlay, "w", libver=LIBVER, userblock_size=USERBLOCK_SIZE)
                         if new else h5py.File(overlay, "r+", libver=LIBVER))
                try:
                    with h5_errors(path):
                        if new:
                            f.attrs["featurize_layout_version"] = CACHE_LAYOUT_VERSION
                            f.attrs["featurize_version"] = __version__
                            f.attrs["created"] = utc_now()
                            f.create_group("configs")
                        else:
                            check_root(f, path)
                        yield f
                        f.flush()
                finally:
                    f.close()  # on error the overlay is simply dropped: the file is untouched
                if new:
                    write_file_id(overlay, file_id)
                commit(path, fd, overlay, self.fsync, file_id)
            finally:
                os.close(fd)
