"""Old path of :mod:`featurize.networks.runtimes` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.networks import runtimes

sys.modules[__name__] = runtimes
