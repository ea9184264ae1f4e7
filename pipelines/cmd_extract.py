"""``featurize extract SOURCES... --cache FILE``: a resumable batch extraction job.

Options can also come from a TOML job file (``--config job.toml``, keys in
:mod:`pipelines.config`); the command line overrides the file. See ``docs/jobs.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator

from featurize.options import CACHE_DTYPES, CACHED_POOLINGS, ENGINES, PRECISIONS
from featurize.progress import PROGRESS_MODES, log_to_stderr, make_progress
from pipelines.arguments import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Items,
    add_format_arg,
    exit_code,
)
from pipelines.config import build_spec, load_job_file, parse_resources
from pipelines.jobs import run_job
from pipelines.spec import JobConfigError, parse_shard

NAME = "extract"

_EPILOG = """\
resume: re-running the same command extracts only what the cache lacks; an interrupted run
  (Ctrl-C, SIGTERM, even SIGKILL) loses at most the batch in flight. The first Ctrl-C or
  SIGTERM stops after the batch being written; a second Ctrl-C aborts at once.

exit codes:
  0    every input is in the cache
  1    an error (message on stderr)
  2    a usage error (bad option, missing source, invalid job file)
  3    the job finished, but some files could not be featurized (see --failures)
  130  interrupted (Ctrl-C or SIGTERM); run the same command again to resume

examples:
  featurize extract photos/ --cache feats.h5 --failures failures.csv
  featurize extract --list images.csv --column path --cache feats.h5 --json
  featurize extract photos/ --cache feats.h5 --shard 3/16     # writes feats.shard-3-of-16.h5
  featurize merge feats.shard-*-of-16.h5 --out feats.h5
  featurize extract photos/ --cache feats.h5 --scheduler local:4
  featurize extract --config job.toml --batch-size 64
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``extract`` sub-command.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers()`` returned.
    """
    parser = subparsers.add_parser(
        NAME, help="extract the features of many images into a cache (resumable, sharded, Dask)",
        description=textwrap.fill(
            "Featurize every image of SOURCES into the HDF5 cache --cache, computing only what "
            "the cache does not hold yet. SOURCES are folders (searched recursively for image "
            "files), files, or glob patterns ('**' crosses folders; quote them). Options can "
            "also come from a TOML job file (--config); see docs/jobs.md.", 79),
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("sources", nargs="*", metavar="SOURCE",
                        help="folders, files or glob patterns (replace the job file's)")
    inputs.add_argument("--list", action="append", dest="lists", metavar="FILE",
                        help="a file listing image paths: one per line, or CSV/TSV with a "
                             "header (see --column); relative paths are relative to the list "
                             "file's folder; '-' reads standard input (repeatable; default: "
                             "none)")
    inputs.add_argument("--column", metavar="NAME",
                        help="CSV column holding the paths (default 'path'; implies CSV)")
    inputs.add_argument("--config", metavar="TOML",
                        help="read the job from a TOML file; command-line options override it "
                             "(default: none)")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", metavar="NAME",
                       help="backbone (default efficientnet_lite0; see `featurize backbones`)")
    model.add_argument("--weights", metavar="W",
                       help="DEFAULT, a weights name, a checkpoint path, or 'none' (random "
                            "init); default DEFAULT")
    model.add_argument("--layer", "--layers", action=Items, dest="layers", metavar="NAME",
                       help="layer to read (repeat the option or separate names with commas; "
                            "default the penultimate embedding; see `featurize layers "
                            "BACKBONE`)")
    model.add_argument("--pooling", "--poolings", action=Items, max_items=1,
                       choices=CACHED_POOLINGS, metavar="P",
                       help=f"pooling of every layer (default avg; one of "
                            f"{', '.join(CACHED_POOLINGS)})")
    model.add_argument("--precision", choices=PRECISIONS,
                       help="forward-pass precision (default auto: mixed on CUDA, fp32 on CPU)")
    model.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    model.add_argument("--engine", choices=ENGINES,
                       help="how the forward pass runs (default auto: ONNX Runtime or "
                            "TorchScript on CPU for jobs of 128 images or more, else eager)")
    run = parser.add_argument_group("job")
    run.add_argument("--cache", metavar="FILE",
                     help="the HDF5 feature cache to fill (required, on the command line or in "
                          "the job file; no default)")
    run.add_argument("--dtype", choices=CACHE_DTYPES,
                     help="storage type of the features (default float32)")
    run.add_argument("--batch-size", type=int, metavar="N", help="images per forward pass "
                                                                  "(default 32)")
    run.add_argument("--workers", "--num-workers", dest="workers", type=int, metavar="N",
                     help="threads decoding images (default: one per core, at most 8)")
    run.add_argument("--chunk-size", type=int, metavar="N",
                     help="files hashed and looked up in the cache at a time (default 1024)")
    run.add_argument("--shard", type=_shard, metavar="I/N",
                     help="process only shard I of N (a stable hash of each path); writes "
                          "CACHE_STEM.shard-I-of-N.h5 beside --cache (default: every input)")
    run.add_argument("--failures", metavar="CSV",
                     help="write the files that could not be featurized (path,reason) (default: "
                          "the first are listed on stderr only)")
    run.add_argument("--single-writer", action=argparse.BooleanOptionalAction, default=None,
                     help="no other process writes the cache: needed on a file system that "
                     "cannot lock files (some network mounts)")
    run.add_argument("--retry-failed", action=argparse.BooleanOptionalAction, default=None,
                     help="re-read files the cache recorded as failed (default: report them "
                          "again without reading)")
    dask = parser.add_argument_group("Dask")
    dask.add_argument("--scheduler", metavar="ADDRESS",
                      help="run on Dask: local[:N] (a local cluster of N processes), "
                           "tcp://HOST:PORT, or a scheduler JSON file (default: no Dask, this "
                           "process)")
    dask.add_argument("--partition-size", type=int, metavar="N",
                      help="images per Dask task (default 128)")
    dask.add_argument("--resources", type=_resources, metavar="NAME=N",
                      help="worker resources each task needs, e.g. GPU=1 (default: none)")
    dask.add_argument("--parts-dir", metavar="DIR",
                      help="folder of the workers' part files (default CACHE.parts)")
    out = parser.add_argument_group("output")
    out.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                     help="auto (default): a progress bar on a terminal, else a log line every "
                          "--log-interval seconds; the progress names the backbone")
    out.add_argument("--log-interval", type=float, default=30.0, metavar="S",
                     help="seconds between progress log lines (default 30)")
    add_format_arg(out, help_text="output format (default text; json: the summary as one JSON "
                                  "line on stdout, the text summary on stderr)")
    parser.set_defaults(func=run_command)


def _shard(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except JobConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _resources(text: str) -> dict[str, float]:
    try:
        return parse_resources(text)
    except JobConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_CLI_FIELDS = ("sources", "lists", "column", "cache", "backbone", "weights", "layers", "pooling",
               "precision", "device", "engine", "dtype", "batch_size", "workers", "chunk_size",
               "shard", "failures", "retry_failed", "scheduler", "partition_size", "resources",
               "parts_dir", "single_writer")


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop after the current batch. Second SIGINT: abort now."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        sys.stderr.write(f"\nfeaturize {NAME}: {signal.Signals(signum).name} received; stopping "
                         "after the batch being written (Ctrl-C again aborts at once)\n")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _usage_error(message: str) -> int:
    sys.stderr.write(f"featurize {NAME}: error: {message}\n")
    return EXIT_USAGE


def run_command(args: argparse.Namespace) -> int:
    """Run the job described by the command line (and ``--config``).

    Returns
    -------
    exit_code : int
        0 all done, 2 usage error, 3 some files failed, 130 interrupted (errors raise and
        ``pipelines.cli.main`` turns them into 1).
    """
    try:
        file_values = load_job_file(args.config) if args.config else {}
        values = {name: getattr(args, name) for name in _CLI_FIELDS}
        values["pooling"] = values["pooling"][0] if values["pooling"] else None
        spec = build_spec(file_values, values)
        spec.validate()
    except JobConfigError as exc:
        return _usage_error(str(exc))
    if args.log_interval <= 0:
        return _usage_error(f"--log-interval must be positive; got {args.log_interval}.")

    stop = threading.Event()
    with log_to_stderr(("pipelines", "featurize")), _stop_on_signals(stop):
        try:
            summary = run_job(spec, progress=make_progress(args.progress,
                                                           interval=args.log_interval,
                                                           desc=f"extract {spec.backbone}"),
                              stop=stop)
        except JobConfigError as exc:
            return _usage_error(str(exc))
    text = summary.text()
    if summary.failed and not summary.failures_file:
        listed = "\n".join(f"    {path}: {reason}" for path, reason in summary.first_failures)
        more = " (and more; --failures FILE lists them all)" if summary.failed > len(
            summary.first_failures) else ""
        text += f"\n  failures{more}:\n{listed}"
    json_out = args.format == "json"
    print(text, file=sys.stderr if json_out else sys.stdout)
    if json_out:
        print(json.dumps(summary.to_dict(), sort_keys=True))
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return exit_code(summary.failed)


run = run_command  # the name the dispatcher's convention uses
