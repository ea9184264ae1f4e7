"""Old path of :mod:`featurize.finetuning.finetune` (an alias: see ``featurize/__init__.py``)."""

import sys

from featurize.finetuning import finetune

sys.modules[__name__] = finetune
