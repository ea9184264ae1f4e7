"""Old path of :mod:`featurize.extraction.estimator` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.extraction import estimator

sys.modules[__name__] = estimator
