"""Transitional: the helpers ``cmd_finetune`` and ``cmd_compare`` still import.

The shared options, exit codes and failure listing are in :mod:`pipelines.arguments`; the
workflow (candidates, training, evaluation) is in :mod:`classify.training` and
:mod:`classify.folders`. This module goes once those two commands use them.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from pipelines.arguments import LIST_LIMIT, report_failed


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """``--cache``, ``--device``, ``--batch-size``, ``--workers`` (dest ``num_workers``)."""
    group = parser.add_argument_group("feature extraction")
    group.add_argument("--cache", metavar="FILE", default=None,
                       help="HDF5 feature cache: features are computed once and reused "
                            "(default: none)")
    group.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    group.add_argument("--batch-size", type=int, default=32, metavar="N",
                       help="images per forward pass (default 32)")
    group.add_argument("--workers", "--num-workers", dest="num_workers", type=int, default=None,
                       metavar="N", help="threads decoding images (default: one per core, at "
                                         "most 8)")


def load_folder(root):
    """``featurize.load_image_folder``; its skip summary goes to stderr as one note."""
    from featurize.folder import load_image_folder

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        data = load_image_folder(root)
    for warning in caught:
        print(f"note: {' '.join(str(warning.message).split())}", file=sys.stderr)
    return data


def report_failures(paths, failures, file=sys.stderr, limit: int = LIST_LIMIT) -> None:
    """One line per unreadable image (up to ``limit``): :func:`report_failed`."""
    report_failed([(paths[row], failures[row]) for row in sorted(failures)], len(paths),
                  file=file, limit=limit)
