"""Exceptions and warnings raised by featurize.

Every error says what was expected, what came, and how to fix it.
"""

from __future__ import annotations


class FeaturizeError(Exception):
    """Base class of all featurize errors."""


class ImageDecodeError(FeaturizeError, ValueError):
    """An input could not be turned into an RGB image.

    Parameters
    ----------
    source : str
        The file path (or a short description of an in-memory input, such as ``"<array #3>"``).
    reason : str
        Why it failed, in a few words (``"empty file (0 bytes)"``, ``"truncated image data"``...).
    transient : bool, default=False
        True when the failure says nothing about the file's content (an I/O error, not enough
        memory, the file changing while it was read): it is reported, never remembered in a
        cache, and a re-run tries the file again.
    """

    def __init__(self, source: str, reason: str, transient: bool = False):
        self.source = str(source)
        self.reason = str(reason)
        self.transient = bool(transient)
        super().__init__(f"cannot read image {self.source!r}: {self.reason}")

    def __reduce__(self):  # picklable across DataLoader / Dask workers
        return (type(self), (self.source, self.reason, self.transient))


class BackboneError(FeaturizeError, ValueError):
    """An unknown backbone, layer or pooling, or an invalid combination of them."""


class WeightsNotFoundError(FeaturizeError, FileNotFoundError):
    """Pretrained weights are not on this machine and featurize never downloads at run time."""


class CacheError(FeaturizeError, OSError):
    """The feature cache file is unreadable, corrupted, locked or of an incompatible layout."""


class CacheCorruptedError(CacheError):
    """The cache file is truncated, damaged, not HDF5 or internally inconsistent.

    Raised only for what the file itself shows (it does not open, a checksum fails, a group
    contradicts its name); a bug in the calling code raises its own exception.
    """


class CacheLockedError(CacheError):
    """Another process held the cache file for longer than ``lock_timeout``."""


class CacheLockingError(CacheError):
    """The file system cannot lock the cache file, so concurrent writers are not safe."""


class ConfigNotFoundError(CacheError, KeyError):
    """The requested configuration has no group in the cache file."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class ConfigError(FeaturizeError, ValueError):
    """An invalid option value (a usage error: the command line exits with 2)."""


class ModelVersionError(FeaturizeError, ValueError):
    """A saved model was made by an incompatible featurize version."""


class FeatureExtractionWarning(UserWarning):
    """Some inputs could not be featurized and got rows of NaN (``on_error="nan"``).

    Attributes
    ----------
    failures : list of dict
        One ``{"row": int, "source": str, "reason": str}`` per failed input, in row order.
    """

    def __init__(self, message: str, failures: list | None = None):
        super().__init__(message)
        self.failures = list(failures or [])
