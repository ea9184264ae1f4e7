"""``featurize export CACHE --out F --format npy|parquet|csv``: the features of one
configuration of a cache, with the path and content key of every row beside it.

Parse, read with :meth:`featurize.FeatureCache.export`, write, print.
"""

from __future__ import annotations

import argparse
import os
import sys

from featurize.storage.atomic import atomic_path
from pipelines.arguments import input_file, output_file

NAME = "export"
FORMATS = ("npy", "parquet", "csv")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``export`` sub-command."""
    parser = subparsers.add_parser(
        NAME,
        help="write the features of one cache configuration as npy, parquet or csv",
        description="Write every row of one configuration of a feature cache with its image "
                    "path and content key: csv and parquet as one table (key, path, f0, f1, "
                    "...); npy as the float32 array OUT plus OUT without its suffix + "
                    "'.rows.csv' (key, path of each row, in order). `featurize info --brief "
                    "CACHE` lists the configurations and their ids.",
    )
    parser.add_argument("cache", metavar="CACHE", type=input_file, help="the HDF5 cache file")
    parser.add_argument("--out", required=True, metavar="FILE", type=output_file,
                        help="file to write (required)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="npy, parquet (needs pyarrow: pip install 'featurize[parquet]') or "
                             "csv (default: from the suffix of --out, else npy)")
    parser.add_argument("--config", metavar="ID", default=None,
                        help="id of the configuration, or its first characters (default: the "
                             "only one; see `featurize info --brief CACHE`)")
    parser.set_defaults(func=run)


def _choose(entries: list, wanted: str | None, cache: str) -> dict:
    from featurize.storage.cache_tools import configuration_line

    listing = "\n".join("  " + configuration_line(e) for e in entries)
    if not entries:
        raise ValueError(f"{cache!r} holds no configuration: nothing to export.")
    if wanted is None:
        if len(entries) == 1:
            return entries[0]
        raise ValueError(f"{cache!r} holds {len(entries)} configurations; choose one with "
                         f"--config ID:\n{listing}")
    found = [e for e in entries if e["id"].startswith(wanted.lower())]
    if len(found) != 1:
        raise ValueError(f"--config {wanted!r} matches {len(found)} of the configurations of "
                         f"{cache!r}; give one of these ids (or enough of its first characters):"
                         f"\n{listing}")
    return found[0]


def _format(args) -> str:
    if args.format:
        return args.format
    suffix = os.path.splitext(args.out)[1].lower().lstrip(".")
    return suffix if suffix in FORMATS else "npy"


def _table(keys, paths, features):
    import pandas as pd

    columns = {"key": keys.astype(str), "path": paths.astype(str)}
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(features.shape[1])])
    return pd.concat([pd.DataFrame(columns), frame], axis=1)


def rows_file(out: str) -> str:
    """The file beside an npy export that names its rows."""
    return os.path.splitext(out)[0] + ".rows.csv"


def run(args: argparse.Namespace) -> int:
    """Export; returns 0."""
    import numpy as np

    from featurize.storage.cache import FeatureCache

    fmt = _format(args)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError("--format parquet needs pyarrow, which is not installed: "
                             "pip install 'featurize[parquet]' (or pip install pyarrow), or "
                             "use --format npy or csv.") from None
    cache = FeatureCache(args.cache)
    entry = _choose(cache.configurations(), args.config, args.cache)
    keys, paths, features = cache.export(entry)
    written = [args.out]
    if fmt == "npy":
        rows = rows_file(args.out)
        with atomic_path(args.out, suffix=".npy") as tmp:
            np.save(tmp, features)
            _table(keys, paths, features[:, :0]).to_csv(rows, index=False)
        written.append(rows)
    elif fmt == "csv":
        _table(keys, paths, features).to_csv(args.out, index=False, float_format="%.9g")
    else:
        _table(keys, paths, features).to_parquet(args.out, index=False)
    print(f"{len(keys):,} rows x {features.shape[1]} features of configuration {entry['id']} "
          f"({entry['config'].get('backbone')} {entry['config'].get('layer')} "
          f"{entry['config'].get('pooling')}) written to {' and '.join(written)}",
          file=sys.stderr)
    return 0
