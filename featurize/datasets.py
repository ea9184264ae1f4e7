"""Old path of :mod:`featurize.images.datasets` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.images import datasets

sys.modules[__name__] = datasets
