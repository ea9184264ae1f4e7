"""Files written whole or not at all: write beside the target, then rename over it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(target, suffix: str = "") -> Iterator[str]:
    """A temporary path beside ``target``, renamed to ``target`` when the block succeeds.

    A kill or an exception never leaves a partial ``target`` (nor the temporary file, on an
    exception): a reader sees the old file or the new one. ``suffix`` ends the temporary name,
    for writers that add an extension of their own (``numpy.save`` adds ``.npy``).

    Examples
    --------
    >>> import json, os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out.json")
    >>> with atomic_path(target) as tmp:
    ...     with open(tmp, "w") as fh:
    ...         json.dump({"a": 1}, fh)
    >>> os.listdir(os.path.dirname(target))
    ['out.json']
    """
    target = os.fspath(target)
    tmp = f"{target}.tmp-{os.getpid()}{suffix}"
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
