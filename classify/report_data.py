"""What the HTML report is made of: the data splits it shows, the paths as it shows them, and
the thumbnails.

A report is shared: it must not carry the absolute paths of the machine that wrote it. Every
path it shows goes through :class:`PathNames`, which writes it relative to the folder that
holds the data folders (``train/ants/1.jpg``), and every text that could hold a path (a decoding
error) through :meth:`PathNames.scrub`. Opened from that folder (the report saved beside the
data folders), the thumbnails link to the files.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from featurize.exceptions import ImageDecodeError
from featurize.images.decoding import load_image

__all__ = ["THUMB_PX", "Figure", "Figures", "PathNames", "Split", "thumbnail"]

#: Size of the thumbnails in galleries, on the map (pixels, longest side).
THUMB_PX, MAP_THUMB_PX = 128, 64


@dataclass
class Split:
    """One data split as the report sees it. ``pred``/``p_pred``/``p_true`` are out-of-fold on
    the training data and plain predictions on a test folder. A row of ``X`` that is NaN is an
    image with no features (it could not be read): it is part of no duplicate and sits in the
    middle of the map. ``keys`` are content keys, None for a file that could not be read.
    ``folder`` is the folder of the split: the report shows paths relative to it."""

    paths: list
    X: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    p_pred: np.ndarray
    p_true: np.ndarray
    keys: list
    failures: list = field(default_factory=list)
    folder: str | os.PathLike | None = None


class PathNames:
    """Paths as a shared report shows them: ``<data folder name>/<path inside it>``.

    Parameters
    ----------
    folders : sequence of path or None
        The data folders (training, test); None entries are ignored.

    Attributes
    ----------
    linked : bool
        Whether links to the files work from the folder that holds the data folders: they are
        siblings with distinct names (or there is one).
    """

    def __init__(self, folders):
        roots = [os.path.abspath(os.fspath(f)) for f in folders if f is not None]
        self.roots = sorted(dict.fromkeys(roots), key=len, reverse=True)  # innermost first
        names = [os.path.basename(r) or r for r in self.roots]
        self.linked = (len({os.path.dirname(r) for r in self.roots}) <= 1
                       and len(set(names)) == len(names))

    def _inside(self, path) -> tuple[str, str] | None:
        full = os.path.abspath(os.fspath(path))
        for root in self.roots:
            if full == root or full.startswith(root.rstrip(os.sep) + os.sep):
                rel = Path(os.path.relpath(full, root)).as_posix()
                return os.path.basename(root), rel
        return None

    def show(self, path) -> str:
        """``path`` relative to the folder holding its data folder (``/``-separated); a path
        outside every data folder is shown by its file name only."""
        inside = self._inside(path)
        if inside is None:
            return os.path.basename(os.fspath(path))
        name, rel = inside
        return name if rel == "." else f"{name}/{rel}"

    def href(self, path) -> str | None:
        """A relative link to ``path`` from the folder holding the data folders, or None."""
        if not self.linked or self._inside(path) is None:
            return None
        return quote(self.show(path))

    def scrub(self, text) -> str:
        """``text`` with every data folder's absolute path (and its parent's) written as the
        report shows it."""
        text = str(text)
        for root in self.roots:
            text = text.replace(root, os.path.basename(root))
        for parent in {os.path.dirname(r) for r in self.roots}:
            if len(parent) > 1:
                text = text.replace(parent + os.sep, "")
        return text


def thumbnail(path, px: int = THUMB_PX) -> tuple[str | None, str]:
    """``(data URI of a JPEG at most px x px, "")``, or ``(None, reason)`` for a bad file."""
    try:
        image = load_image(path, draft_size=(2 * px, 2 * px))
    except ImageDecodeError as exc:
        return None, exc.reason
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc.strerror or exc}"
    image.thumbnail((px, px))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(), ""


@dataclass
class Figure:
    """An image as a gallery shows it: ``path`` as shown, ``href`` (a relative link, or
    None), ``src`` (a data URI, or None with the ``reason``), caption lines."""

    path: str
    href: str | None
    src: str | None
    reason: str
    caption: list


class Figures:
    """Makes :class:`Figure` objects, each image's thumbnail encoded once per size."""

    def __init__(self, names: PathNames):
        self.names = names
        self._cache = {}

    def thumbnail(self, path, px: int = THUMB_PX) -> tuple[str | None, str]:
        key = (os.fspath(path), px)
        if key not in self._cache:
            uri, reason = thumbnail(path, px)
            self._cache[key] = (uri, self.names.scrub(reason))
        return self._cache[key]

    def __call__(self, path, caption, px: int = THUMB_PX) -> Figure:
        uri, reason = self.thumbnail(path, px)
        return Figure(path=self.names.show(path), href=self.names.href(path), src=uri,
                      reason=reason, caption=[self.names.scrub(line) for line in caption])
