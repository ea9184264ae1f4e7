"""Whole-file operations on caches: merge shards, and describe a file (``featurize info``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from featurize.exceptions import CacheError
from featurize.storage.cache import FeatureCache
from featurize.storage.h5store import CACHE_LAYOUT_VERSION, PROVENANCE_ATTRS, corrupted
from featurize.storage.keys import config_id

__all__ = ["cache_info", "configuration_line", "describe", "merge_caches"]

_MERGE_SLICE_BYTES = 32 * 1024 * 1024  # rows copied per merge transaction


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
                raise corrupted(src, ValueError(f"group {conf['id']} does not match its config"))
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
        attrs = cache.group_attrs(cid)
        provenance = {k: attrs[k] for k in PROVENANCE_ATTRS if k in attrs}
        if conf["width"] is not None and conf["count"]:
            step = max(1, _MERGE_SLICE_BYTES // (conf["width"] * np.dtype(conf["dtype"]).itemsize))
            for start in range(0, conf["count"], step):
                keys, paths, features = cache.read_block(cid, start, start + step)
                added = target.append(conf["config"], keys, features, paths,
                                       dtype=conf["dtype"], provenance=provenance)
                per["added"] += added
                per["skipped"] += len(keys) - added
        failures = cache.failures(conf["config"])
        if failures:
            before = len(target.failures(conf["config"]))
            items = list(failures.items())
            done = target.contains(cid, [key for key, _ in items])  # extracted in `out`
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
    root = cache.root_attributes()
    if root is None:
        raise CacheError(f"{path!r} is empty: not a featurize cache.")
    return {
        "path": os.path.abspath(path),
        "file_size": os.path.getsize(path),
        "layout_version": root.get("featurize_layout_version"),
        "supported_layout_version": CACHE_LAYOUT_VERSION,
        "featurize_version": root.get("featurize_version"),
        "created": root.get("created"),
        "configurations": configurations,
    }


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""  # pragma: no cover


def configuration_line(entry: dict[str, Any]) -> str:
    """One line for an entry of :meth:`FeatureCache.configurations`: id, backbone, layer,
    pooling, precision, rows x width, failures (``featurize info --brief``)."""
    config = entry["config"]
    precision = config.get("precision")
    if config.get("numerics"):  # rounded otherwise than torch (OpenVINO bf16)
        precision = f"{precision}/{config['numerics']}"
    shape = (f"{entry['count']:,} x {entry['width']}" if entry.get("width") is not None
             else "no features yet")
    failures = entry.get("failures", 0)
    return (f"{entry['id']}  {config.get('backbone')}  {config.get('layer')}  "
            f"{config.get('pooling')}  {precision}  {shape}  {failures:,} "
            f"failure{'' if failures == 1 else 's'}")


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
        (f"  layout version {info['layout_version']} (this featurize reads up to "
        f"{info['supported_layout_version']}), created {info['created']} by featurize "
        f"{info['featurize_version']}"),
        (f"  file size {_size(info['file_size'])}, {len(confs)} configuration(s), "
        f"{sum(c['count'] for c in confs):,} feature rows, "
        f"{sum(c['failures'] for c in confs):,} recorded failures"),
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
            (f"    created {conf.get('created')} with featurize {conf.get('featurize_version')}, "
            f"torch {conf.get('torch_version')}, torchvision {conf.get('torchvision_version')}"),
        ]
        for key, value in sorted(conf["config"].items()):
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            lines.append(f"    {key}: {text}")
    return "\n".join(lines)
