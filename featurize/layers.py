"""Old path of :mod:`featurize.networks.layers` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.networks import layers

sys.modules[__name__] = layers
