"""HDF5 cache of CNN features, keyed by image content and extraction configuration.

The cache is one HDF5 file, readable by plain h5py, ``h5ls`` and dask (layout in
``docs/cache.md`` and :mod:`featurize.storage.h5store`). Each extraction configuration gets its own
group ``/configs/<config_id>``; each row is keyed by :func:`~featurize.storage.keys.content_key` of
the image. Every modification is a crash-safe transaction and every access takes a file lock
(:mod:`featurize.storage.journal`). Merging and describing files:
:mod:`featurize.storage.cache_tools`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from typing_extensions import Self

from featurize.exceptions import (
    CacheCorruptedError,
    CacheError,
    CacheLockedError,
    CacheLockingError,
    ConfigNotFoundError,
)
from featurize.storage.access import CacheFile
from featurize.storage.h5store import (
    CACHE_LAYOUT_VERSION,
    PROVENANCE_ATTRS,
    STORAGE_DTYPES,
    GroupState,
    Index,
    clean_text,
    corrupted,
    create_feature_datasets,
    decode_text,
    group_state,
    h5py_module,
    read_failures,
    read_rows,
    require_group,
    write_failures,
)
from featurize.storage.keys import (
    canonical_json,
    config_id,
    content_key,
    given_config,
    normalize_keys,
    resolve_config_id,
)

__all__ = [
    "CACHE_LAYOUT_VERSION",
    "CacheCorruptedError",
    "CacheLockedError",
    "CacheLockingError",
    "ConfigNotFoundError",
    "FeatureCache",
    "config_id",
    "content_key",
]

logger = logging.getLogger(__name__)


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
    single_writer : bool, default=False
        Promise that no other process uses the file, so that it can be written on a file
        system that cannot lock files (some network and FUSE mounts). Without it, such a file
        system raises :class:`~featurize.exceptions.CacheLockingError` instead of risking a
        corrupted cache.

    Notes
    -----
    The object holds no open file: every call opens, locks, works and closes, so one cache
    can be shared by several processes and pickled to workers (only the parameters travel).
    """

    def __init__(self, path: str | os.PathLike, *, dtype: str = "float32",
                 lock_timeout: float = 60.0, fsync: bool = False,
                 single_writer: bool = False) -> None:
        self.path = path
        self.dtype = dtype
        self.lock_timeout = lock_timeout
        self.fsync = fsync
        self.single_writer = single_writer
        self._indexes: dict[str, Index] = {}
        self._mutex = threading.RLock()

    # -- protocol ----------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"FeatureCache({os.fspath(self.path)!r}, dtype={self.dtype!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget the in-memory key index (no file is ever held open)."""
        with self._mutex:
            self._indexes.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "dtype": self.dtype, "lock_timeout": self.lock_timeout,
                "fsync": self.fsync, "single_writer": self.single_writer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], dtype=state["dtype"],  # type: ignore[misc]
                      lock_timeout=state["lock_timeout"], fsync=state.get("fsync", False),
                      single_writer=state.get("single_writer", False))

    # -- file access -------------------------------------------------------------------

    @property
    def _file(self) -> str:
        return os.fspath(self.path)

    def _storage_dtype(self) -> str:
        name = np.dtype(self.dtype).name if self.dtype is not None else None
        if name not in STORAGE_DTYPES:
            raise ValueError(f"The 'dtype' parameter of FeatureCache must be one of "
                             f"{set(STORAGE_DTYPES)}. Got {self.dtype!r} instead.")
        return name

    def _access(self) -> CacheFile:
        return CacheFile(self._file, lock_timeout=self.lock_timeout, fsync=self.fsync,
                         single_writer=self.single_writer, mutex=self._mutex)

    def _reading(self) -> contextlib.AbstractContextManager[Any]:
        """The open h5py.File (shared lock held), or None for a missing or empty cache."""
        return self._access().reading()

    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A writable h5py.File on an in-memory overlay, committed atomically on exit."""
        return self._access().transaction()

    # -- index -------------------------------------------------------------------------

    def _index(self, cid: str, grp: Any, state: GroupState) -> Index:
        """The key -> row index of a group, brought up to date (rows are append-only)."""
        with self._mutex:
            index = self._indexes.get(cid)
            if index is None or index.uid != state.uid or index.n > state.n:
                index = Index(state.uid, 0, {})
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
        wanted = normalize_keys(keys)
        found = np.zeros(len(wanted), dtype=bool)
        storage = self._storage_dtype()
        with self._reading() as f:
            if f is None or f"configs/{cid}" not in f:
                return found, np.empty((0, 0), dtype=np.float32)
            grp = f["configs"][cid]
            state = group_state(grp, self._file)
            if state.width is None:
                return found, np.empty((0, 0), dtype=np.float32)
            self._check_dtype(cid, state, storage)
            self._check_config(grp, config)
            rows = self._rows(cid, grp, state, wanted)
            found = rows >= 0
            features = read_rows(grp["features"], rows[found])
        return found, features.astype(np.float32, copy=False)

    def _rows(self, cid: str, grp: Any, state: GroupState, wanted: list[bytes]) -> np.ndarray:
        rows_map = self._index(cid, grp, state).rows
        return np.fromiter((rows_map.get(k, -1) for k in wanted), dtype=np.int64,
                           count=len(wanted))

    def contains(self, config_or_id: Mapping[str, Any] | str, keys: Sequence[str]
                 ) -> np.ndarray:
        """Which keys have committed rows (bool per key), whatever the storage dtype.

        Cheaper than :meth:`lookup`: no feature is read.
        """
        cid = resolve_config_id(config_or_id)
        wanted = normalize_keys(keys)
        with self._reading() as f:
            if f is None or f"configs/{cid}" not in f:
                return np.zeros(len(wanted), dtype=bool)
            grp = f["configs"][cid]
            state = group_state(grp, self._file)
            if state.width is None:
                return np.zeros(len(wanted), dtype=bool)
            config = given_config(config_or_id)
            if config is not None:
                self._check_config(grp, config)
            return self._rows(cid, grp, state, wanted) >= 0

    def _check_config(self, grp: Any, config: Mapping[str, Any]) -> None:
        if canonical_json(json.loads(grp.attrs["config"])) != canonical_json(config):
            raise corrupted(self._file, ValueError(  # never serve another model's rows
                f"group {grp.name} holds another configuration than its name says"))

    def _check_dtype(self, cid: str, state: GroupState, storage: str) -> None:
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
        return self.append(config, keys, features, paths, dtype=self._storage_dtype())

    def append(self, config: Mapping[str, Any], keys: Any, features: Any, paths: Any, *,
                dtype: str, provenance: Mapping[str, Any] | None = None) -> int:
        cid = config_id(config)
        key_bytes = normalize_keys(keys)
        features = np.asarray(features)
        paths = [clean_text(p) for p in paths]
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
            grp = require_group(f, cid, config, provenance, self._file)
            state = group_state(grp, self._file)
            if state.width is None:
                create_feature_datasets(grp, width, dtype)
                state = group_state(grp, self._file)
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

    # -- failures ----------------------------------------------------------------------

    def _forget_failures(self, grp: Any, keys: set[bytes]) -> None:
        old = read_failures(grp)
        keep = [i for i, key in enumerate(old[0]) if key not in keys]
        if len(keep) < len(old[0]):
            write_failures(grp, *([column[i] for i in keep] for column in old))

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
        key_bytes = normalize_keys(keys)
        paths = [clean_text(p) for p in paths]
        reasons = [clean_text(r) for r in reasons]
        if not len(key_bytes) == len(paths) == len(reasons):
            raise ValueError(f"record_failures expects as many keys, paths and reasons; got "
                             f"{len(key_bytes)}, {len(paths)}, {len(reasons)}.")
        if not key_bytes:
            return
        with self._transaction() as f:
            grp = require_group(f, cid, config, None, self._file)
            old_keys, old_paths, old_reasons = read_failures(grp)
            records = dict(zip(old_keys, zip(old_paths, old_reasons)))
            records.update(zip(key_bytes, zip(paths, reasons)))
            if len(records) != len(old_keys) or any(
                    records[k] != (p, r) for k, p, r in zip(old_keys, old_paths, old_reasons)):
                write_failures(grp, list(records), [v[0] for v in records.values()],
                                     [v[1] for v in records.values()])

    def failures(self, config: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        """Recorded failures of a configuration: ``{key: (path, reason)}``."""
        cid = config_id(config)
        with self._reading() as f:
            if f is None or f"configs/{cid}" not in f:
                return {}
            keys, paths, reasons = read_failures(f["configs"][cid])
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
                state = group_state(grp, self._file)
                info: dict[str, Any] = {
                    "id": cid, "config": json.loads(grp.attrs["config"]), "count": state.n,
                    "width": state.width, "dtype": state.dtype,
                    "failures": len(read_failures(grp)[0]),
                    "nbytes": sum(int(d.id.get_storage_size()) for d in grp.values()
                                  if isinstance(d, h5py_module().Dataset)),
                }
                for name in PROVENANCE_ATTRS:
                    value = grp.attrs.get(name)
                    info[name] = value.item() if isinstance(value, np.generic) else value
                out.append(info)
        return out

    def export(self, config_or_id: Mapping[str, Any] | str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All committed rows of one configuration.

        Parameters
        ----------
        config_or_id : dict or str
            The configuration dict, its id, or an entry of :meth:`configurations`.

        Returns
        -------
        keys : ndarray of str, shape (n_rows,)
        paths : ndarray of object (str), shape (n_rows,)
        features : ndarray of float32, shape (n_rows, n_features)
        """
        keys, paths, features = self.read_block(resolve_config_id(config_or_id))
        return keys.astype("U32"), paths, features.astype(np.float32, copy=False)

    def read_block(self, cid: str, start: int = 0, stop: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``start:stop`` of a configuration as stored: (S32 keys, paths, features)."""
        with self._reading() as f:
            if f is None or f"configs/{cid}" not in f:
                raise ConfigNotFoundError(f"no configuration {cid} in cache file "
                                          f"{self._file!r}.")
            grp = f["configs"][cid]
            state = group_state(grp, self._file)
            if state.width is None:
                return (np.empty(0, "S32"), np.empty(0, object),
                        np.empty((0, 0), np.float32))
            stop = state.n if stop is None else min(stop, state.n)
            return (grp["keys"][start:stop],
                    np.array(decode_text(grp["paths"][start:stop]), object),
                    grp["features"][start:stop])

    def drop(self, config_or_id: Mapping[str, Any] | str) -> None:
        """Delete a configuration and its features.

        HDF5 does not shrink the file: merge it into a new file to reclaim the space.
        """
        cid = resolve_config_id(config_or_id)
        if not os.path.exists(self._file):
            raise ConfigNotFoundError(f"no configuration {cid} in cache file {self._file!r}.")
        with self._transaction() as f:
            if cid not in f["configs"]:
                raise ConfigNotFoundError(f"no configuration {cid} in cache file "
                                          f"{self._file!r}.")
            del f["configs"][cid]
        with self._mutex:
            self._indexes.pop(cid, None)

    def root_attributes(self) -> dict[str, Any] | None:
        """The file's own attributes (layout version, featurize version, creation time), or
        None for a missing or empty file."""
        with self._reading() as f:
            if f is None:
                return None
            return {name: (value.item() if isinstance(value, np.generic) else value)
                    for name, value in f.attrs.items()}

    def group_attrs(self, cid: str) -> dict[str, Any]:
        """The HDF5 attributes of a configuration's group (config, provenance)."""
        with self._reading() as f:
            return dict(f["configs"][cid].attrs)
