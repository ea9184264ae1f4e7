"""Old path of :mod:`featurize.storage.cache` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.storage import cache

sys.modules[__name__] = cache
