"""The engines this process built, and what ``engine="auto"`` learnt about them.

Building an engine (a trace, an ONNX export, an OpenVINO compilation) costs seconds, so every
:class:`~featurize.extraction.extractor.Extractor` of a process shares the engines built for a
configuration, and the verdict of the check of an ``"auto"`` engine against eager fp32 (passed,
or rejected with its reason). This module owns that process-global state: one
:class:`EngineTable`, :data:`TABLE`, which only :meth:`Extractor.prepare_engine` reads and
writes (tests give it a fresh one with ``monkeypatch.setattr(engine_table, "TABLE", ...)``).
"""

from __future__ import annotations

import os

__all__ = ["TABLE", "EngineTable"]

#: Built engines kept per process (the oldest dropped first).
MAX_ENGINES = 8


class EngineTable:
    """Built engines by configuration key, with the checked and rejected configurations.

    Parameters
    ----------
    max_engines : int, default=MAX_ENGINES
        Built engines kept; the least recently remembered one is dropped first.
    """

    def __init__(self, max_engines: int = MAX_ENGINES) -> None:
        self.max_engines = max_engines
        self._built: dict[tuple, object] = {}
        self._checked: set[tuple] = set()
        self._rejected: dict[tuple, str] = {}
        #: Engines of a parent process, kept (never run, never destroyed) in a forked child.
        self._forked_away: list[dict] = []

    def get(self, key: tuple):
        """The engine built for ``key``, or None."""
        return self._built.get(key)

    def remember(self, key: tuple, engine) -> None:
        """Keep ``engine`` for ``key`` (as the most recent one)."""
        self._built.pop(key, None)
        self._built[key] = engine
        while len(self._built) > self.max_engines:
            self._built.pop(next(iter(self._built)))

    def is_checked(self, key: tuple) -> bool:
        """Whether the ``"auto"`` engine of ``key`` passed its check against eager."""
        return key in self._checked

    def mark_checked(self, key: tuple) -> None:
        self._checked.add(key)

    def rejection(self, key: tuple) -> str | None:
        """Why the ``"auto"`` engine of ``key`` is not used, or None."""
        return self._rejected.get(key)

    def is_rejected(self, key: tuple) -> bool:
        return key in self._rejected

    def reject(self, key: tuple, reason: str) -> None:
        self._rejected[key] = reason

    def forget_built(self) -> None:
        """A forked child must not run its parent's engines: their thread pools did not follow.

        featurize starts no process itself, but a user's ``multiprocessing`` pool under the
        ``fork`` start method (the default on Linux before Python 3.14) calls it in children
        of a process that featurized already. The parent's engines are set aside, never
        destroyed here: OpenVINO's destructors wait for threads that do not exist in the child
        and would hang it.
        """
        self._forked_away.append(self._built)
        self._built = {}


#: The table of this process.
TABLE = EngineTable()


def _after_fork_in_child() -> None:
    TABLE.forget_built()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
