"""Progress of long work (extraction, selection): a tqdm bar with an ETA, or log lines.

:func:`make_progress` gives a :class:`Progress`: ``start(total)``, ``advance(n)``, ``close()``.
A bar goes to standard error; where that is not a terminal, one INFO log line every
``interval`` seconds says how far the work is and when it should end.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from tqdm.auto import tqdm

from featurize.exceptions import ConfigError

__all__ = ["PROGRESS_MODES", "Progress", "duration", "log_to_stderr", "make_progress"]

logger = logging.getLogger("featurize.progress")

#: ``auto``: a bar on a terminal, else log lines.
PROGRESS_MODES = ("auto", "bar", "log", "none")


class Progress:
    """Receives the progress of a job; this base class ignores it.

    ``start(total)`` once, ``advance(n)`` for every ``n`` inputs dealt with (extracted, served
    from the cache, or failed), ``close()`` at the end.
    """

    def start(self, total: int) -> None:
        """The job has ``total`` inputs."""

    def advance(self, n: int) -> None:
        """``n`` more inputs were dealt with."""

    def close(self) -> None:
        """The job ended (or stopped)."""


class _BarProgress(Progress):
    """A tqdm bar with images/s and ETA (for terminals)."""

    def __init__(self, desc: str = "extract", unit: str = "img") -> None:
        self.desc = desc
        self.unit = unit
        self._bar = None

    def start(self, total: int) -> None:
        self._bar = tqdm(total=total, unit=self.unit, desc=self.desc, smoothing=0.05,
                         dynamic_ncols=True)
        self._heartbeat = _Heartbeat(1.0, self._refresh)

    def _refresh(self) -> None:
        bar = self._bar
        if bar is not None:
            bar.refresh()  # elapsed time keeps moving during a long step

    def advance(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def close(self) -> None:
        heartbeat = getattr(self, "_heartbeat", None)
        if heartbeat is not None:
            heartbeat.stop()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _LogProgress(Progress):
    """One INFO log line every ``interval`` seconds (for logs and batch schedulers)."""

    def __init__(self, interval: float = 30.0, desc: str = "extract", unit: str = "img") -> None:
        self.interval = interval
        self.desc = desc
        self.unit = unit
        self.total = self.done = 0
        self._t0 = self._last = 0.0

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self._t0 = self._last = time.monotonic()
        self._heartbeat = _Heartbeat(min(self.interval, 10.0), self._tick)

    def _tick(self) -> None:
        """Called by the heartbeat: a line even while a long step reports nothing."""
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._log(now)

    def advance(self, n: int) -> None:
        self.done += n
        self._tick()

    def _log(self, now: float) -> None:
        elapsed = max(now - self._t0, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        logger.info("%s: %s/%s %s (%.1f%%), %.1f %s/s, elapsed %s, ETA %s", self.desc,
                    f"{self.done:,}", f"{self.total:,}", self.unit,
                    100 * self.done / max(self.total, 1), rate, self.unit, duration(elapsed),
                    duration(left))

    def close(self) -> None:
        heartbeat = getattr(self, "_heartbeat", None)
        if heartbeat is not None:
            heartbeat.stop()
        if self.total:
            self._log(time.monotonic())


class _Heartbeat:
    """A daemon thread calling ``beat()`` every ``period`` seconds until :meth:`stop`, so that
    a long step (one fit of minutes) never leaves the output silent."""

    def __init__(self, period: float, beat) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period, beat), daemon=True,
                                        name="featurize-progress")
        self._thread.start()

    def _run(self, period: float, beat) -> None:
        while not self._stop.wait(period):
            beat()

    def stop(self) -> None:
        self._stop.set()


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def make_progress(mode: str = "auto", *, interval: float = 30.0, desc: str = "extract",
                  unit: str = "img") -> Progress:
    """A progress reporter.

    Parameters
    ----------
    mode : {"auto", "bar", "log", "none"}, default="auto"
        ``"auto"``: a tqdm bar when standard error is a terminal, else periodic log lines.
    interval : float, default=30.0
        Seconds between two log lines (``"log"``).
    """
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "log"
    if mode == "bar":
        return _BarProgress(desc, unit)
    if mode == "log":
        return _LogProgress(interval, desc, unit)
    if mode == "none":
        return Progress()
    raise ConfigError(f"progress must be one of {list(PROGRESS_MODES)}; got {mode!r}.")


@contextlib.contextmanager
def log_to_stderr(names: Sequence[str] = ("featurize",)) -> Iterator[None]:
    """Show these loggers' INFO lines on stderr while a command runs (progress lines when
    stderr is not a terminal, stages with ``--verbose``), then put them back as they were."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
