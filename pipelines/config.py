"""Job files: an extraction job described in TOML (``featurize extract --config job.toml``).

The keys are the long command-line options with underscores (dashes are accepted too)::

    sources = ["images/train", "images/extra/*.jpg"]
    cache = "feats.h5"
    backbone = "efficientnet_lite0"
    batch_size = 64
    failures = "failures.csv"

Relative paths in the file (``sources``, ``list``, ``cache``, ``failures``, ``parts_dir``,
a checkpoint path in ``weights``, a scheduler file) are relative to the TOML file's folder,
so a job file works from any current directory. Options given on the command line override
the file's values (SOURCES on the command line replace ``sources``).
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

from featurize.options import CACHE_DTYPES, CACHED_POOLINGS, ENGINES, PRECISIONS
from pipelines.spec import JobConfigError, JobSpec, parse_shard, parse_weights

__all__ = ["KEYS", "build_spec", "load_job_file", "parse_resources"]



def _one_of(names) -> str:
    """``("a", "b", "c")`` -> ``"a, b or c"`` (the option tables of :mod:`featurize.options`)."""
    return f"{', '.join(names[:-1])} or {names[-1]}"


#: TOML key -> (JobSpec field, kind, description). Kinds: str, int, bool, path, paths (a string
#: or a list of strings), strs, weights, shard, resources.
KEYS: dict[str, tuple[str, str, str]] = {
    "sources": ("sources", "paths", "folders (recursive), files or glob patterns"),
    "list": ("lists", "paths", "list files: one path per line, or CSV/TSV with a path column"),
    "column": ("column", "str", "CSV column holding the paths (default 'path')"),
    "cache": ("cache", "path", "the HDF5 feature cache to fill"),
    "backbone": ("backbone", "str", "backbone name (default efficientnet_lite0)"),
    "weights": ("weights", "weights", "'DEFAULT', a weights name, a checkpoint path, or 'none'"),
    "layer": ("layers", "strs", "layer name or list of names (default: penultimate)"),
    "pooling": ("pooling", "str", f"{_one_of(CACHED_POOLINGS)} (default avg)"),
    "device": ("device", "str", "auto, cpu, cuda, cuda:N or mps (default auto)"),
    "precision": ("precision", "str", f"{_one_of(PRECISIONS)} (default auto)"),
    "engine": ("engine", "str", f"{_one_of(ENGINES)} (default auto)"),
    "batch_size": ("batch_size", "int", "images per forward pass (default 32)"),
    "workers": ("workers", "int", "threads decoding images (default: one per core)"),
    "dtype": ("dtype", "str", f"storage type in the cache: {_one_of(CACHE_DTYPES)}"),
    "shard": ("shard", "shard", "'I/N': process shard I of N"),
    "failures": ("failures", "path", "CSV manifest of failed files (path, reason)"),
    "retry_failed": ("retry_failed", "bool", "re-read files recorded as failed"),
    "single_writer": ("single_writer", "bool", "no other process writes the cache (file systems"
                      " without locks)"),
    "chunk_size": ("chunk_size", "int", "files hashed and looked up at a time (default 1024)"),
    "scheduler": ("scheduler", "scheduler", "Dask: local, local:N, tcp://HOST:PORT or a "
                                            "scheduler file"),
    "partition_size": ("partition_size", "int", "images per Dask task (default 128)"),
    "resources": ("resources", "resources", "Dask resources per task, e.g. {GPU = 1}"),
    "parts_dir": ("parts_dir", "path", "folder of the Dask workers' part files"),
}
_ALIASES = {"layers": "layer", "lists": "list"}


def _load_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise JobConfigError("reading a TOML job file needs Python >= 3.11 or the 'tomli' "
                                 "package.") from None
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise JobConfigError(f"job file {path!r} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobConfigError(f"job file {path!r} is not valid TOML: {exc}.") from exc
    except OSError as exc:
        raise JobConfigError(f"cannot read job file {path!r}: {exc}.") from exc


def _resolve(base: str, value: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _looks_like_path(weights: str) -> bool:
    return os.sep in weights or "/" in weights or weights.endswith((".pt", ".pth"))


def parse_resources(value: Any, where: str = "--resources") -> dict[str, float]:
    """``"GPU=1,MEMORY=4e9"`` (or a TOML table) -> ``{"GPU": 1.0, "MEMORY": 4e9}``.

    Raises
    ------
    JobConfigError
        For anything but NAME=NUMBER pairs with positive numbers.
    """
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = []
        for part in str(value).split(","):
            name, sep, amount = part.partition("=")
            if not sep:
                raise JobConfigError(f"{where} expects NAME=AMOUNT[,NAME=AMOUNT], e.g. GPU=1; "
                                     f"got {value!r}.")
            items.append((name.strip(), amount.strip()))
    out: dict[str, float] = {}
    for name, amount in items:
        try:
            number = float(amount)
        except (TypeError, ValueError):
            number = float("nan")
        if not name or isinstance(amount, bool) or not number > 0:
            raise JobConfigError(f"{where} expects NAME=AMOUNT with a positive amount, e.g. "
                                 f"GPU=1; got {name}={amount!r}.")
        out[str(name)] = number
    return out


def _convert(key: str, kind: str, value: Any, base: str, path: str) -> Any:
    where = f"key {key!r} of job file {path!r}"

    def expect(ok: bool, what: str) -> None:
        if not ok:
            raise JobConfigError(f"{where} must be {what}; got {value!r}.")

    if kind in ("paths", "strs"):
        items = [value] if isinstance(value, str) else value
        expect(isinstance(items, list) and all(isinstance(v, str) for v in items),
               "a string or a list of strings")
        return [_resolve(base, v) for v in items] if kind == "paths" else list(items)
    if kind == "int":
        expect(isinstance(value, int) and not isinstance(value, bool), "an integer")
        return value
    if kind == "bool":
        expect(isinstance(value, bool), "true or false")
        return value
    if kind == "resources":
        expect(isinstance(value, dict), "a table such as {GPU = 1}")
        return parse_resources(value, where)
    expect(isinstance(value, str), "a string")
    if kind == "path":
        return _resolve(base, value)
    if kind == "weights":
        weights = parse_weights(value)  # "none" stays a string until the Extractor is built
        return _resolve(base, weights) if weights and _looks_like_path(weights) else value
    if kind == "shard":
        return parse_shard(value)
    if kind == "scheduler" and value.endswith(".json"):
        return _resolve(base, value)
    return value


def load_job_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a TOML job file.

    Parameters
    ----------
    path : str or os.PathLike
        The TOML file.

    Returns
    -------
    values : dict
        :class:`~pipelines.spec.JobSpec` field -> value, for the keys the file sets, with its
        relative paths made relative to the file's folder.

    Raises
    ------
    JobConfigError
        Missing file, invalid TOML, an unknown key (the message lists the valid ones) or a
        value of the wrong type.
    """
    path = os.fspath(path)
    data = _load_toml(path)
    base = os.path.dirname(os.path.abspath(path))
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in KEYS:
            raise JobConfigError(f"job file {path!r} has an unknown key {raw_key!r}; valid keys: "
                                 f"{', '.join(KEYS)}.")
        field_name, kind, _ = KEYS[key]
        if field_name in values:
            raise JobConfigError(f"job file {path!r} sets {key!r} twice.")
        values[field_name] = _convert(key, kind, value, base, path)
    return values


def build_spec(file_values: dict[str, Any] | None = None,
               cli_values: dict[str, Any] | None = None) -> JobSpec:
    """A JobSpec from defaults, then the job file, then the command line.

    Parameters
    ----------
    file_values : dict or None
        From :func:`load_job_file`.
    cli_values : dict or None
        JobSpec field -> value; None (or an empty list) means "not given on the command line".

    Returns
    -------
    JobSpec
        Not validated yet (:meth:`JobSpec.validate`).
    """
    names = {f.name for f in fields(JobSpec)}
    values: dict[str, Any] = {}
    for source in (file_values or {}, cli_values or {}):
        for name, value in source.items():
            if name not in names:
                raise JobConfigError(f"unknown job option {name!r}.")
            if value is None or (isinstance(value, list) and not value):
                continue
            values[name] = value
    return JobSpec(**values)
