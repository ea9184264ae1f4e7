"""The HDF5 side of the cache: opening, checking and reading the file's groups.

Layout (``docs/cache.md``): a 512-byte user block with the file's ID, then the root group with
``featurize_layout_version``; one group ``/configs/<config_id>`` per extraction configuration,
holding ``keys`` (S32), ``paths`` and ``features`` (n_rows, width), of which the first
``n_committed`` rows are valid, and an optional ``failures`` group.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from featurize._version import FEATURE_VERSION, __version__
from featurize.exceptions import CacheCorruptedError, CacheError
from featurize.storage.filekinds import identify, is_hdf5
from featurize.storage.keys import canonical_json

#: Version of the on-disk layout described in ``docs/cache.md``. A file with a greater
#: version was written by a newer featurize and is refused.
CACHE_LAYOUT_VERSION = 1
STORAGE_DTYPES = ("float32", "float16")
LIBVER = ("v110", "v110")  # checksummed metadata; readable by HDF5 >= 1.10 (h5py >= 2.8)
FEATURE_CHUNK_BYTES = 32 * 1024  # features chunk target: scattered lookups vs bulk reads
KEY_CHUNK_ROWS = 2048  # 64 KiB of S32 keys, 32 KiB of variable-length path references
_READ_CALL_S = 40e-6  # measured cost of reading one slice (chunk lookup, fletcher32 check)
_READ_BYTES_PER_S = 1e9  # measured bulk read speed of fletcher32-checked chunks


def h5py_module() -> Any:
    import h5py  # imported on first use: keeps `import featurize` fast

    return h5py


def open_for_reading(path: str) -> Any:
    """Open read-only. Our shared flock is already held; HDF5's own lock (also shared) is
    taken "best-effort", which matches a handle the user may hold open in this process with
    h5py's defaults (HDF5 refuses to open one file twice with different locking flags)."""
    h5py = h5py_module()
    try:
        return h5py.File(path, "r", locking="best-effort")
    except OSError as exc:
        if "locking" not in str(exc) or "flag" not in str(exc):
            raise
        return h5py.File(path, "r", locking=False)  # the user's handle has locking=False


def corrupted(path: str, exc: BaseException) -> CacheCorruptedError:

    kind = identify(path)
    if kind is not None and not is_hdf5(path):
        # a file of another kind, not a damaged cache: never advise deleting it
        return CacheCorruptedError(
            f"cache file {path!r} is not a readable featurize cache: it is {kind}, not an "
            "HDF5 file. Point cache= (--cache) at another file; this one was left as it is.")
    return CacheCorruptedError(
        f"cache file {path!r} is not a readable featurize cache ({exc}). It may be truncated "
        "or corrupted (an interrupted copy or download, a full disk), or not an HDF5 file at "
        "all. Delete it (features will be recomputed) or point cache= at another file."
    )


def _raised_by_h5py(exc: BaseException) -> bool:
    """Did ``exc`` come out of h5py or HDF5 (not out of the code that called them)?"""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    module = last.tb_frame.f_globals.get("__name__", "")
    return module == "h5py" or module.startswith("h5py.")


@contextlib.contextmanager
def h5_errors(path: str) -> Iterator[None]:
    """Turn what h5py raises on a damaged file into a CacheCorruptedError naming it.

    Only errors raised inside h5py or HDF5 are turned into corruption; an error of the calling
    code (a bug) goes through as it is, so that a healthy cache is never called damaged.
    """
    try:
        yield
    except CacheError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        if not _raised_by_h5py(exc):
            raise
        raise corrupted(path, exc) from exc


def check_root(f: Any, path: str) -> None:
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
class GroupState:
    n: int  # committed rows
    width: int | None  # None until the first feature row
    dtype: str | None
    uid: str


def group_state(grp: Any, path: str) -> GroupState:
    try:
        n = int(grp.attrs["n_committed"])
        uid = str(grp.attrs["uid"])
        width = dtype = None
        if "features" in grp:
            keys, paths, feats = grp["keys"], grp["paths"], grp["features"]
            width, dtype = int(feats.shape[1]), str(feats.dtype)
            ok = (feats.ndim == 2 and dtype in STORAGE_DTYPES and keys.dtype == "S32"
                  and min(keys.shape[0], paths.shape[0], feats.shape[0]) >= n >= 0)
        else:
            ok = n == 0
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise corrupted(path, exc) from exc
    if not ok:
        raise corrupted(path, ValueError(f"group {grp.name} is inconsistent"))
    return GroupState(n, width, dtype, uid)


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


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


PROVENANCE_ATTRS = ("created", "featurize_version", "feature_version", "torch_version",
                     "torchvision_version", "numpy_version", "h5py_version", "hdf5_version")


def make_provenance() -> dict[str, Any]:
    h5py = h5py_module()
    return {
        "created": utc_now(),
        "featurize_version": __version__,
        "feature_version": FEATURE_VERSION,
        "torch_version": _package_version("torch"),
        "torchvision_version": _package_version("torchvision"),
        "numpy_version": np.__version__,
        "h5py_version": h5py.__version__,
        "hdf5_version": h5py.version.hdf5_version,
    }


def read_rows(dset: Any, rows: np.ndarray) -> np.ndarray:
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
class Index:
    uid: str
    n: int
    rows: dict[bytes, int]


def decode_text(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def clean_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    value = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    # Paths are provenance only: undecodable file names are kept readable, not refused.
    value = value.replace("\0", "\\x00")  # HDF5 strings end at a NUL
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def create_feature_datasets(grp: Any, width: int, dtype: str) -> None:
    h5py = h5py_module()
    rows = int(min(4096, max(1, FEATURE_CHUNK_BYTES // (width * np.dtype(dtype).itemsize))))
    grp.create_dataset("keys", shape=(0,), maxshape=(None,), dtype="S32",
                       chunks=(KEY_CHUNK_ROWS,), fletcher32=True)
    grp.create_dataset("paths", shape=(0,), maxshape=(None,),
                       dtype=h5py.string_dtype("utf-8"), chunks=(KEY_CHUNK_ROWS,))
    grp.create_dataset("features", shape=(0, width), maxshape=(None, width), dtype=dtype,
                       chunks=(rows, width), fletcher32=True)



def read_failures(grp: Any) -> tuple[list[bytes], list[str], list[str]]:
    if "failures" not in grp:
        return [], [], []
    fails = grp["failures"]
    n = int(fails.attrs["n_committed"])
    return (fails["keys"][:n].tolist(), decode_text(fails["paths"][:n]),
            decode_text(fails["reasons"][:n]))

def write_failures(grp: Any, keys: list[bytes], paths: list[str], reasons: list[str]
                    ) -> None:
    h5py = h5py_module()
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


def require_group(f: Any, cid: str, config: Mapping[str, Any],
                  provenance: Mapping[str, Any] | None, path: str) -> Any:
    """The group of configuration ``cid`` in the open file ``f``, created (with the
    configuration, a fresh uid, no committed row and the provenance) where missing; a group
    that holds another configuration than its name says is a corrupted file."""
    configs = f.require_group("configs")
    if cid in configs:
        grp = configs[cid]
        stored = json.loads(grp.attrs["config"])
        if canonical_json(stored) != canonical_json(config):
            raise corrupted(path, ValueError(
                f"group {cid} holds another configuration than its name says"))
        return grp
    grp = configs.create_group(cid)
    grp.attrs["config"] = json.dumps(config, sort_keys=True, indent=2)
    grp.attrs["config_id"] = cid
    grp.attrs["uid"] = uuid.uuid4().hex
    grp.attrs["n_committed"] = np.int64(0)
    for name, value in (provenance or make_provenance()).items():
        grp.attrs[name] = value
    return grp
