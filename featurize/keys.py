"""Old path of :mod:`featurize.storage.keys` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.storage import keys

sys.modules[__name__] = keys
