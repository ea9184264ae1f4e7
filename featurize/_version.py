"""Version information."""

__version__ = "0.1.0"

#: Version of the feature computation itself. Bump it whenever a change in featurize alters the
#: numbers produced for the same image and configuration (decoding, resizing, pooling...): it is
#: part of every cache key, so stale features are never served after such a change.
#: 2: images are resized by torch's anti-aliased uint8 kernels (featurize.images.data.resize_crop).
FEATURE_VERSION = 2
