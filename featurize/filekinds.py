"""Old path of :mod:`featurize.storage.filekinds` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.storage import filekinds

sys.modules[__name__] = filekinds
