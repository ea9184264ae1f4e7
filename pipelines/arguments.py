"""What every ``featurize`` sub-command shares: the exit codes, one flag vocabulary, argument
types that check inputs and outputs before any work, and how failures and notes are shown.

Exit codes (the same for every command):

====  =====================================================================================
0     done: every input was processed
1     an error (a one-line message on stderr, no traceback)
2     a usage error, before any work: a bad option, a missing input folder or file, an
      output file that cannot be written
3     done, but some inputs were skipped or could not be read (listed on stderr: path and
      reason, the first :data:`LIST_LIMIT`; the JSON output, ``--failures`` or the predict
      table has them all)
130   interrupted (Ctrl-C or SIGTERM), after flushing what was done
====  =====================================================================================

Flag vocabulary: ``--workers`` (decoding threads; alias ``--num-workers``), ``--layer`` and
``--pooling`` (repeatable, or comma-separated; aliases ``--layers``, ``--poolings``),
``--backbone`` (the same, where several are allowed), ``--format text|json[|csv]`` (``--json``
is ``--format json``), ``--cache``, ``--device``, ``--batch-size``, ``--weights``,
``--precision``, ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence

from featurize.options import CACHED_POOLINGS, PRECISIONS, parse_weights

__all__ = ["EXIT_CODES", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARTIAL",
           "EXIT_USAGE", "LIST_LIMIT", "Items", "add_format_arg", "add_model_args",
           "add_model_file_arg", "add_runtime_args", "add_selection_args", "check_output_file",
           "exit_code",
           "input_file", "input_folder", "input_source", "model_file", "notes_on_stderr",
           "output_file", "progress_logging", "report_failed", "runtime_options",
           "selection_options"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: The exit-code table (README, ``featurize --help``).
EXIT_CODES = {
    EXIT_OK: "done: every input was processed",
    EXIT_ERROR: "an error (a one-line message on stderr)",
    EXIT_USAGE: "a usage error, before any work: a bad option, a missing input folder or file, "
                "an output file that cannot be written",
    EXIT_PARTIAL: "done, but some inputs were skipped or could not be read (listed on stderr)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGTERM), after flushing what was done",
}
#: How many failed inputs a command lists on stderr.
LIST_LIMIT = 10


def exit_code(n_failed: int) -> int:
    """The exit code of a command that finished: 3 when ``n_failed`` inputs were skipped or
    could not be read, else 0."""
    return EXIT_PARTIAL if n_failed else EXIT_OK


def report_failed(failed: Sequence[tuple[str, str]], n_inputs: int | None = None, *,
                  file=None, limit: int = LIST_LIMIT, where: str = "") -> int:
    """List skipped or unreadable inputs on stderr (path and reason, the first ``limit``);
    returns :func:`exit_code` of their number."""
    file = file or sys.stderr
    failed = list(failed)
    if failed:
        of = f" of {n_inputs}" if n_inputs is not None else ""
        one = len(failed) == 1 and n_inputs is None
        print(f"{len(failed)}{of} file{'' if one else 's'}{where} "
              f"{'was' if len(failed) == 1 else 'were'} skipped or could not be read, and "
              f"{'is' if len(failed) == 1 else 'are'} left out:", file=file)
        for path, reason in failed[:limit]:
            print(f"  {path}: {reason}", file=file)
        if len(failed) > limit:
            print(f"  ... and {len(failed) - limit} more (--format json lists them all)",
                  file=file)
    return exit_code(len(failed))


@contextlib.contextmanager
def notes_on_stderr() -> Iterator[None]:
    """Every warning shown as one line, ``note: <message>``, on stderr (no source path, no
    repeated line)."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"note: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


# -- argument types: checked by argparse, before any work (a usage error: exit code 2) --------

def check_output_file(path) -> str:
    """Refuse, before any work, an output file that cannot be written; returns ``path``.

    Every command that writes a file (a model, a report, a table) checks its path with this
    (as the argparse ``type`` of the option: :func:`output_file`), so that a typo fails at
    once, not after the extraction and the selection.

    Raises
    ------
    ValueError
        ``path`` is a folder, its folder does not exist, or it cannot be written there.
    """
    text = os.fspath(path)
    if not text:
        raise ValueError("the output file name is empty")
    if os.path.isdir(text):
        raise ValueError(f"{text!r} is a folder; give the path of a file to write, e.g. "
                         f"{os.path.join(text, 'out')!r}")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {text!r}: the folder {os.path.dirname(text) or folder!r} "
                         "does not exist (create it first)")
    if os.path.exists(text) and not os.access(text, os.W_OK):
        raise ValueError(f"cannot write {text!r}: the file exists and is read-only")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {text!r}: no permission to create files in {folder!r}")
    return text


def output_file(text: str) -> str:
    """argparse ``type`` of an option naming a file to write (see :func:`check_output_file`)."""
    try:
        return check_output_file(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def input_folder(text: str) -> str:
    """argparse ``type`` of a folder to read (a folder-per-class tree): it must exist."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}")
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file; expected a folder with one "
                                         "sub-folder per class (DIR/<class>/<images>)")
    return text


def input_source(text: str) -> str:
    """argparse ``type`` of an image source: an existing file or folder, a glob pattern, or a
    named image file (which, if missing, gets a row saying so)."""
    from featurize.images.decoding import IMAGE_EXTENSIONS

    if (os.path.exists(text) or any(char in text for char in "*?[")
            or os.path.splitext(text)[1].lower() in IMAGE_EXTENSIONS):
        return text
    raise argparse.ArgumentTypeError(f"no such file or folder: {text!r}")


def input_file(text: str) -> str:
    """argparse ``type`` of a file to read (a cache, a model): it must exist."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file"
                                         if os.path.isdir(text) else f"no such file: {text!r}")
    return text


model_file = input_file


def _int_at_least(text: str, low: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _count(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


class Items(argparse.Action):
    """A repeatable option whose values may be comma-separated: ``--layer a --layer b,c`` and
    ``--layers a,b,c`` both give ``["a", "b", "c"]``. The default (a tuple) is replaced, not
    extended. ``choices`` are checked item by item; ``max_items`` caps the count."""

    def __init__(self, option_strings, dest, *, max_items: int | None = None, **kwargs):
        self.item_choices = kwargs.pop("choices", None)
        self.max_items = max_items
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        items = [item.strip() for item in str(values).split(",") if item.strip()]
        if not items:
            parser.error(f"{option_string}: expected a name or a comma-separated list")
        if self.item_choices is not None:
            bad = [item for item in items if item not in self.item_choices]
            if bad:
                parser.error(f"{option_string}: invalid choice {bad[0]!r} (choose from "
                             f"{', '.join(self.item_choices)})")
        current = getattr(namespace, self.dest, None)
        current = [] if current is None or isinstance(current, tuple) else list(current)
        current += [item for item in items if item not in current]
        if self.max_items is not None and len(current) > self.max_items:
            parser.error(f"{option_string}: this command takes {self.max_items} value(s); got "
                         f"{', '.join(current)}")
        setattr(namespace, self.dest, current)


# -- the shared options -----------------------------------------------------------------------

def add_runtime_args(parser: argparse.ArgumentParser, *, cache_help: str | None = None) -> None:
    """``--cache``, ``--device``, ``--batch-size``, ``--workers``: how fast features are
    computed, never their values."""
    group = parser.add_argument_group("feature extraction")
    group.add_argument("--cache", metavar="FILE", default=None,
                       help=cache_help or "HDF5 feature cache: features are computed once and "
                       "reused (default: none, nothing stored)")
    group.add_argument("--device", default="auto", metavar="DEVICE",
                       help="auto, cpu, cuda, cuda:1, mps (default auto: CUDA, then MPS, then "
                            "CPU)")
    group.add_argument("--batch-size", type=_positive, default=32, metavar="N",
                       help="images per forward pass (default 32)")
    group.add_argument("--workers", "--num-workers", dest="workers", type=_count, default=None,
                       metavar="N", help="threads decoding images (default: one per core, at "
                                         "most 8; 0: none)")


def runtime_options(args: argparse.Namespace) -> dict:
    """The library's run-time keyword arguments from :func:`add_runtime_args`'s options, with
    progress on stderr (a bar on a terminal, else a log line every 10 s)."""
    return {"cache": args.cache, "device": args.device, "batch_size": args.batch_size,
            "num_workers": args.workers, "progress": "auto"}


def add_model_args(parser: argparse.ArgumentParser, *, backbones: Sequence[str],
                   several: bool, layers_help: str, poolings: Sequence[str] = ("avg",),
                   pooling_help: str = "") -> None:
    """``--backbone``, ``--weights``, ``--layer``, ``--pooling``, ``--precision``.

    ``several``: whether several backbones and poolings may be given (train, sweep) or one
    (extract)."""
    group = parser.add_argument_group("features")
    shown = ",".join(backbones) if backbones else "efficientnet_lite0"
    group.add_argument("--backbone", "--backbones", dest="backbone", action=Items,
                       default=tuple(backbones), max_items=None if several else 1,
                       metavar="NAME" if not several else "B1,B2",
                       help=(f"pretrained network{'(s)' if several else ''} (default {shown}; "
                             "see `featurize backbones`)" + (
                                 ". With several, each one's layers are candidates, and so is "
                                 "the concatenation of every backbone's last stage and "
                                 "penultimate layer; repeat the option or separate names with "
                                 "commas" if several else "")))
    group.add_argument("--weights", default="DEFAULT", type=parse_weights, metavar="W",
                       help="weights name or local checkpoint (stored as an absolute path) of a "
                            "single backbone; 'none' for a random initialisation (default "
                            "DEFAULT: the pretrained weights)")
    group.add_argument("--layer", "--layers", dest="layers", action=Items, default=None,
                       metavar="NAME", help=layers_help + "; repeat the option or separate "
                       "names with commas (see `featurize layers BACKBONE`)")
    group.add_argument("--pooling", "--poolings", dest="poolings", action=Items,
                       default=tuple(poolings), choices=CACHED_POOLINGS,
                       max_items=None if several else 1, metavar="P",
                       help=(pooling_help or f"pooling of a feature map (default "
                             f"{','.join(poolings)})") + f"; one of {', '.join(CACHED_POOLINGS)}")
    group.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="forward-pass precision (default auto: mixed on CUDA; on a CPU "
                            "bf16 where it computes bf16 natively, else fp32)")


def add_model_file_arg(parser: argparse.ArgumentParser,
                  help_text: str = "model file written by `featurize train` (or a `featurize "
                                   "finetune` checkpoint)") -> None:
    """The positional ``MODEL``: an existing model file (see :func:`model_file`)."""
    parser.add_argument("model", metavar="MODEL", type=model_file, help=help_text)


def add_format_arg(parser: argparse.ArgumentParser, choices: Sequence[str] = ("text", "json"),
                   help_text: str = "") -> None:
    """``--format text|json[|csv]`` (default text) and ``--json`` for ``--format json``."""
    parser.add_argument("--format", choices=list(choices), default="text",
                        help=help_text or f"output format (default text; {', '.join(choices)})")
    parser.add_argument("--json", dest="format", action="store_const", const="json",
                        help="the same as --format json")


def add_selection_args(parser: argparse.ArgumentParser, *, search: str = "fast") -> None:
    """Cross-validation and selection options (train and sweep); ``search`` is the default
    search."""
    from classify.metrics import DEFAULT_SCORING, SCORE_NAMES
    from classify.rules import DEFAULT_RULE, RULES
    from classify.search import SEARCHES

    group = parser.add_argument_group("selection")
    group.add_argument("--search", default=search, choices=SEARCHES,
                       help=f"fast: screen every layer in closed form (ridge leave-one-out), "
                            "tune only the best --finalists; exhaustive: every layer x head x C "
                            f"on every fold (default {search})")
    group.add_argument("--finalists", type=_positive, default=2, metavar="N",
                       help="fast search: layers tuned after the screening (default 2)")
    group.add_argument("--heads", action=Items, default=None, metavar="H1,H2",
                       help="candidate heads (default: logreg for the fast search, "
                            "logreg,linear_svm,rbf_svm for the exhaustive one)")
    group.add_argument("--scoring", default=DEFAULT_SCORING, choices=SCORE_NAMES,
                       help=f"score that decides (default {DEFAULT_SCORING})")
    group.add_argument("--rule", default=DEFAULT_RULE, choices=RULES,
                       help=f"best: the highest mean score; one_se: the smallest C within "
                            "one standard error of the best; one_se_log_loss: of the C tied "
                            f"with the best split by split, the lowest log loss (default "
                            f"{DEFAULT_RULE})")
    group.add_argument("--folds", type=_positive, default=5, metavar="K",
                       help="cross-validation folds (default 5, fewer for tiny classes)")
    group.add_argument("--repeats", type=_positive, default=3, metavar="R",
                       help="repeats of the k-fold with new shuffles (default 3)")
    group.add_argument("--seed", type=int, default=0, metavar="S",
                       help="seed of the splits (default 0)")
    group.add_argument("--jobs", type=int, default=-1, metavar="N",
                       help="parallel cross-validation workers (default -1: all cores)")
    group.add_argument("--verbose", "-v", action="store_true",
                       help="print what each stage does (screening, tuning) on stderr "
                            "(default: progress lines only)")


def selection_options(args: argparse.Namespace) -> dict:
    """:func:`classify.select_model`'s keyword arguments from :func:`add_selection_args`."""
    return {"heads": args.heads, "scoring": args.scoring, "rule": args.rule,
            "search": args.search, "n_finalists": args.finalists, "n_splits": args.folds,
            "n_repeats": args.repeats, "random_state": args.seed, "n_jobs": args.jobs}


def progress_logging(verbose: bool = False):
    """Progress lines on stderr (a bar on a terminal, else a log line every 10 s), and with
    ``verbose`` every stage of the selection."""
    from featurize.progress import log_to_stderr

    return log_to_stderr(["classify", "featurize"] if verbose else ["featurize.progress"])
