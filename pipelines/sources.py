"""The reader of a job: folders, files, globs and list files -> one sorted list of paths."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sys
from collections.abc import Iterable

from pipelines.spec import JobConfigError

__all__ = ["read_list_file", "resolve_inputs"]

logger = logging.getLogger("pipelines.jobs")


def read_list_file(path: str, column: str | None = None) -> list[str]:
    """Read the paths listed in a text or CSV file.

    Parameters
    ----------
    path : str
        A text file with one path per line (blank lines and lines starting with ``#`` are
        skipped; surrounding whitespace is stripped), or a CSV (``.csv``) / TSV (``.tsv``)
        file with a header row. ``"-"`` reads standard input.
    column : str or None, default=None
        The CSV column holding the paths (None: ``"path"``). Giving it reads the file as
        CSV whatever its extension.

    Returns
    -------
    paths : list of str
        Absolute paths. Relative entries are taken relative to the list file's folder (the
        current folder for ``"-"``), so a list file can travel with its images. Entries are
        literal paths: no glob expansion, no folder listing.

    Raises
    ------
    JobConfigError
        The file does not exist, or the CSV has no such column.
    """
    base = os.getcwd() if path == "-" else os.path.dirname(os.path.abspath(path))
    lower = path.lower()
    as_csv = column is not None or lower.endswith((".csv", ".tsv"))
    try:
        handle = (contextlib.nullcontext(sys.stdin) if path == "-" else
                  open(path, encoding="utf-8", errors="surrogateescape", newline=""))
    except FileNotFoundError:
        raise JobConfigError(f"list file {path!r} does not exist.") from None
    except OSError as exc:
        raise JobConfigError(f"cannot read list file {path!r}: {exc}.") from exc
    entries: list[str] = []
    with handle as fh:
        if as_csv:
            reader = csv.DictReader(fh, delimiter="\t" if lower.endswith(".tsv") else ",")
            name = column or "path"
            if not reader.fieldnames or name not in reader.fieldnames:
                raise JobConfigError(
                    f"list file {path!r} has no column {name!r}; its columns are "
                    f"{reader.fieldnames or []}. Pick one with --column.")
            entries = [row[name].strip() for row in reader if (row.get(name) or "").strip()]
        else:
            for line in fh:
                text = line.strip()
                if text and not text.startswith("#"):
                    entries.append(text)
    return [os.path.abspath(os.path.join(base, os.path.expanduser(e))) for e in entries]


def resolve_inputs(sources: Iterable[str] = (), lists: Iterable[str] = (),
                   column: str | None = None) -> list[str]:
    """The job's input files, in a deterministic order, each once.

    Parameters
    ----------
    sources : iterable of str
        Folders (listed recursively, sorted, image extensions only, hidden files skipped), files
        (kept whatever their extension) and glob patterns (``**`` crosses folders); see
        :func:`featurize.images.folder.list_images`.
    lists : iterable of str
        List files (see :func:`read_list_file`).
    column : str or None, default=None
        CSV column of the paths in the list files.

    Returns
    -------
    paths : list of str
        Absolute paths: the sources' files in the order given, then the list files' entries;
        a path reached twice is kept at its first place.

    Raises
    ------
    JobConfigError
        A source does not exist, or a glob pattern matches nothing.
    """
    from featurize.images.folder import list_images

    out: dict[str, None] = {}
    for source in sources:
        try:
            found = list_images(source)
        except FileNotFoundError as exc:
            raise JobConfigError(f"source {source!r}: {exc.strerror or exc}.") from None
        if not found:
            logger.warning("source %s holds no image files.", source)
        out.update((os.path.abspath(p), None) for p in found)
    for list_file in lists:
        out.update((p, None) for p in read_list_file(list_file, column))
    return list(out)
