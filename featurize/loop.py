"""Old path of :mod:`featurize.extraction.loop` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.extraction import loop

sys.modules[__name__] = loop
