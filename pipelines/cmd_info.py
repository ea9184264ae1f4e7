"""``featurize info FILE``: describe a feature cache file."""

from __future__ import annotations

import argparse
import json
import sys

from featurize.exceptions import CacheError
from featurize.storage.cache_tools import cache_info, configuration_line, describe
from pipelines.arguments import add_format_arg, input_file

NAME = "info"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``info`` sub-command.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers()`` returned.
    """
    parser = subparsers.add_parser(
        NAME,
        help="describe a feature cache file",
        description="Show what a featurize feature cache holds: its configurations (backbone, "
                    "layer, pooling, ...), row counts, widths, storage dtypes, recorded "
                    "failures, sizes and layout version.",
    )
    parser.add_argument("file", metavar="FILE", type=input_file, help="the HDF5 cache file")
    add_format_arg(parser, help_text="output format (default text; json: a machine-readable "
                                     "document)")
    parser.add_argument("--brief", action="store_true",
                        help="one line per configuration: id, backbone, layer, pooling, "
                             "precision, rows x width, failures (the id is what `featurize "
                             "export --config` takes)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the description of ``args.file``.

    Returns
    -------
    exit_code : int
        0 on success, 1 when the file is missing, locked, corrupted or not a cache.
    """
    try:
        if args.format == "json":
            text = json.dumps(cache_info(args.file), indent=2, sort_keys=True, default=str)
        elif args.brief:
            text = "\n".join(configuration_line(entry)
                             for entry in cache_info(args.file)["configurations"])
        else:
            text = describe(args.file)
    except CacheError as exc:
        sys.stderr.write(f"featurize {NAME}: error: {exc}\n")
        return 1
    sys.stdout.write(text + "\n" if text else "")
    return 0
