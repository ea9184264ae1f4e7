"""The ``featurize`` command.

Sub-commands live in ``pipelines/cmd_<name>.py`` modules, each defining ``add_parser(subparsers)``
(which calls ``parser.set_defaults(func=run)``) and ``run(args) -> int``: parse, one library
call, print. A command never imports another command. What they share (the exit codes, the
flag vocabulary, argument types) is in :mod:`pipelines.arguments`.

Exit codes (every command): 0 done; 1 an error (message on stderr, no traceback); 2 a usage
error (a bad option, a missing input folder, an output that cannot be written); 3 done, but
some inputs were skipped or could not be read (listed); 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from featurize._version import __version__
from pipelines.arguments import (  # noqa: F401 (re-exported: the exit codes, output_file)
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    check_output_file,
    notes_on_stderr,
    output_file,
)

#: sub-command modules, in the order ``featurize --help`` lists them
COMMANDS = ("backbones", "download", "layers", "extract", "info", "export", "merge", "rank",
            "train", "evaluate", "predict", "export-model", "sweep", "report", "finetune",
            "compare", "demo")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="featurize",
        description="Transfer learning by features: CNN embeddings of images, cached in HDF5,"
                    " and scikit-learn heads trained on them.",
        epilog="exit codes (every command):\n" + "\n".join(
            f"  {code:<4} {text}" for code, text in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"featurize {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"pipelines.cmd_{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pipelines.cmd_{name.replace('-', '_')}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USAGE
    from featurize.exceptions import FeaturizeError

    try:
        with notes_on_stderr():  # a warning is one line, "note: ...", never a source path
            return int(args.func(args) or 0)
    except BrokenPipeError:  # `featurize layers x | head`
        return EXIT_OK
    except KeyboardInterrupt:
        print("featurize: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FeaturizeError, OSError, ValueError) as exc:
        print(f"featurize {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
