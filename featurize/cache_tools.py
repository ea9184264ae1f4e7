"""Old path of :mod:`featurize.storage.cache_tools` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.storage import cache_tools

sys.modules[__name__] = cache_tools
