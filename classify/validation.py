"""Parameter checks of :mod:`classify`, written once: one message style, one exception type.

Every invalid parameter of a classify function or estimator raises
:class:`featurize.exceptions.ConfigError` (a :class:`ValueError`, the exception type of
:mod:`featurize.options` too) with scikit-learn's wording: "The 'rule' parameter of select_model
must be one of [...]. Got 'median' instead." Errors in the data (shapes, NaN, labels) stay plain
:class:`ValueError`, as in scikit-learn.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from featurize.exceptions import ConfigError

__all__ = ["ConfigError", "check_int", "check_option"]


def check_option(name: str, value: Any, choices: Sequence[str], *, owner: str,
                 hint: str = "") -> str:
    """Return ``value`` if it is one of ``choices``, else raise :class:`ConfigError`.

    Parameters
    ----------
    name : str
        The parameter's name.
    value : object
        What was given.
    choices : sequence of str
        The valid values.
    owner : str
        The function or class the parameter belongs to, for the message.
    hint : str, default=""
        One more sentence for the message (how to fix it).
    """
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"The {name!r} parameter of {owner} must be one of {list(choices)}. "
                          f"Got {value!r} instead.{(' ' + hint) if hint else ''}")
    return value


def check_int(name: str, value: Any, minimum: int, *, owner: str) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``minimum``, else raise
    :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"The {name!r} parameter of {owner} must be an int in the range "
                          f"[{minimum}, inf). Got {value!r} instead.")
    return int(value)
