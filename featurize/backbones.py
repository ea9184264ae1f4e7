"""Old path of :mod:`featurize.networks.backbones` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.networks import backbones

sys.modules[__name__] = backbones
