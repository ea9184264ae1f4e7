"""Old path of :mod:`featurize.networks.downloads` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.networks import downloads

sys.modules[__name__] = downloads
