"""Old path of :mod:`featurize.networks.pooling` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.networks import pooling

sys.modules[__name__] = pooling
