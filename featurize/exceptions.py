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
    """

    def __init__(self, source: str, reason: str):
        self.source = str(source)
        self.reason = str(reason)
        super().__init__(f"cannot read image {self.source!r}: {self.reason}")

    def __reduce__(self):  # picklable across DataLoader / Dask workers
        return (type(self), (self.source, self.reason))


class BackboneError(FeaturizeError, ValueError):
    """An unknown backbone, layer or pooling, or an invalid combination of them."""


class WeightsNotFoundError(FeaturizeError, FileNotFoundError):
    """Pretrained weights are not on this machine and featurize never downloads at run time."""


class CacheError(FeaturizeError, OSError):
    """The feature cache file is unreadable, corrupted, locked or of an incompatible layout."""


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
