"""Old path of :mod:`featurize.images.inputs` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.images import inputs

sys.modules[__name__] = inputs
