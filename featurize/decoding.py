"""Old path of :mod:`featurize.images.decoding` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.images import decoding

sys.modules[__name__] = decoding
