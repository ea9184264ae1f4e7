"""``featurize info FILE``: describe a feature cache file."""

from __future__ import annotations

import argparse
import json
import sys

from featurize.cache_tools import cache_info, describe
from featurize.exceptions import CacheError
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
        else:
            text = describe(args.file)
    except CacheError as exc:
        sys.stderr.write(f"featurize {NAME}: error: {exc}\n")
        return 1
    sys.stdout.write(text + "\n")
    return 0
