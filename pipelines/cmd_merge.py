"""``featurize merge SHARD... --out FILE``: combine feature cache files into one."""

from __future__ import annotations

import argparse
import json
import os
import sys

from featurize.exceptions import CacheError
from featurize.storage.cache_tools import merge_caches
from pipelines.arguments import add_format_arg, input_file, output_file

NAME = "merge"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``merge`` sub-command.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers()`` returned.
    """
    parser = subparsers.add_parser(
        NAME,
        help="combine feature cache files (e.g. shards of a batch job) into one",
        description="Copy every configuration, feature row and recorded failure of the "
                    "SHARD files into --out (created if missing). Rows already in --out are "
                    "skipped, so merging twice adds nothing. Also writes a compact copy of a "
                    "single file whose configurations were dropped.",
    )
    parser.add_argument("shards", nargs="+", metavar="SHARD", type=input_file,
                        help="cache files to read")
    parser.add_argument("--out", required=True, metavar="FILE", type=output_file,
                        help="cache file to write (required; created if missing)")
    add_format_arg(parser, help_text="output format (default text; json: the counts)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Merge ``args.shards`` into ``args.out`` and print the counts.

    Returns
    -------
    exit_code : int
        0 on success, 2 for a usage error (``--out`` is also a shard), 1 when a file is
        missing, locked, corrupted or the shards do not fit together.
    """
    out = os.path.abspath(args.out)
    if any(os.path.abspath(shard) == out or (os.path.exists(shard) and os.path.exists(out)
                                             and os.path.samefile(shard, out))
           for shard in args.shards):
        sys.stderr.write(f"featurize {NAME}: error: --out {args.out} is also one of the "
                         "shards; write to a new file.\n")
        return 2
    try:
        counts = merge_caches(args.shards, args.out)
    except CacheError as exc:
        sys.stderr.write(f"featurize {NAME}: error: {exc}\n")
        return 1
    if args.format == "json":
        sys.stdout.write(json.dumps(counts, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(
            f"merged {counts['sources']} file(s) into {args.out}: {counts['configs']} "
            f"configuration(s), {counts['rows_added']:,} rows added, "
            f"{counts['rows_skipped']:,} already present, {counts['failures_added']:,} "
            "failure record(s) added\n")
    return 0
