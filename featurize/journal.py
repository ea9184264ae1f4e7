"""Old path of :mod:`featurize.storage.journal` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.storage import journal

sys.modules[__name__] = journal
