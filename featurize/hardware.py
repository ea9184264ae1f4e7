"""Old path of :mod:`featurize.networks.hardware` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.networks import hardware

sys.modules[__name__] = hardware
