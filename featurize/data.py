"""Old path of :mod:`featurize.images.data` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.images import data

sys.modules[__name__] = data
