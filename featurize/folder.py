"""Old path of :mod:`featurize.images.folder` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.images import folder

sys.modules[__name__] = folder
