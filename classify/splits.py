"""Stratified cross-validation splits that adapt to tiny classes.

Small image collections often have a class with only a handful of images. A plain
``StratifiedKFold(5)`` then warns or fails, and a fold whose training part lacks a class breaks
probability outputs and log loss. :class:`AdaptiveStratifiedKFold` fixes the rules once:

* the number of folds is ``min(max_splits, size of the smallest class)``, but at least 2;
* a class with a single sample cannot be both trained on and tested. With
  ``small_classes="train"`` (default) its sample is put in the training part of every fold and
  never tested, and a :class:`SmallClassWarning` says so: the cross-validation scores then cover
  the other classes only. With ``small_classes="error"`` a :class:`ValueError` is raised instead
  (needed where the splits must form a partition, e.g. probability calibration).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import BaseCrossValidator, RepeatedStratifiedKFold
from sklearn.utils.validation import column_or_1d

from classify.validation import check_int, check_option

logger = logging.getLogger(__name__)

__all__ = ["AdaptiveStratifiedKFold", "FoldPlan", "SmallClassWarning", "plan_folds"]

#: What :func:`plan_folds` may do with a class of a single sample.
SMALL_CLASSES = ("train", "error")


class SmallClassWarning(UserWarning):
    """A class is too small for the requested cross-validation; what was done instead is said."""


@dataclass(frozen=True)
class FoldPlan:
    """How :class:`AdaptiveStratifiedKFold` splits a given target.

    Attributes
    ----------
    n_splits : int
        Number of folds actually used (per repeat).
    singleton_classes : tuple
        Labels of the classes with a single sample (always in the training part, never tested).
    notes : tuple of str
        Human-readable notes on every adaptation made (empty when none was needed).
    """

    n_splits: int
    singleton_classes: tuple
    notes: tuple


def plan_folds(y, max_splits: int = 5, small_classes: str = "train") -> FoldPlan:
    """Decide the number of folds for ``y`` and what to do with classes of one sample.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    max_splits : int, default=5
        Number of folds wanted; reduced to the size of the smallest class (at least 2).
    small_classes : {"train", "error"}, default="train"
        What to do with a class of a single sample: keep it in every training part (and warn
        once the splits are made), or raise :class:`ValueError`.

    Returns
    -------
    FoldPlan

    Raises
    ------
    ValueError
        Fewer than 2 classes, no class with 2 samples or more, an invalid ``max_splits`` or
        ``small_classes``, or a single-sample class with ``small_classes="error"``.
    """
    check_int("max_splits", max_splits, 2, owner="AdaptiveStratifiedKFold")
    check_option("small_classes", small_classes, SMALL_CLASSES, owner="AdaptiveStratifiedKFold")
    y = column_or_1d(y)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(
            f"Cross-validation of a classifier needs at least 2 classes; got {len(classes)} class "
            f"({classes.tolist()!r}). Add images of another class."
        )
    single = classes[counts < 2]
    multi_counts = counts[counts >= 2]
    if len(single) and small_classes == "error":
        raise ValueError(
            f"Classes {single.tolist()!r} have a single sample, so they cannot appear in both the "
            "training and the test part of a split. Add images to those classes or remove them."
        )
    if len(multi_counts) == 0:
        raise ValueError(
            "Cross-validation needs at least one class with 2 samples or more; every class has a "
            f"single sample ({len(classes)} classes, {len(y)} samples)."
        )
    n_splits = int(max(2, min(max_splits, multi_counts.min())))
    notes = []
    if n_splits < max_splits:
        notes.append(
            f"the smallest class has {int(multi_counts.min())} samples: using {n_splits}-fold "
            f"instead of {max_splits}-fold cross-validation"
        )
    if len(single):
        notes.append(
            f"classes {single.tolist()!r} have a single sample: it is kept in the training part of "
            "every fold and never tested, so the scores cover the other classes only"
        )
    return FoldPlan(n_splits=n_splits, singleton_classes=tuple(single.tolist()), notes=tuple(notes))


class AdaptiveStratifiedKFold(BaseCrossValidator):
    """Repeated stratified k-fold whose number of folds adapts to the smallest class.

    Parameters
    ----------
    max_splits : int, default=5
        Folds wanted per repeat; reduced to the size of the smallest class (at least 2).
    n_repeats : int, default=1
        Number of times the k-fold is repeated with a different shuffle.
    random_state : int, default=0
        Seed of the shuffles; fixed by default so that results are reproducible.
    small_classes : {"train", "error"}, default="train"
        What to do with a class of a single sample: keep it in the training part of every fold,
        never tested (with a :class:`SmallClassWarning`), or raise :class:`ValueError`.

    Notes
    -----
    The parameter is called ``max_splits`` (not ``n_splits``) because it is an upper bound;
    :meth:`get_n_splits` with ``y`` gives the number actually used. Splits are those of
    :class:`~sklearn.model_selection.RepeatedStratifiedKFold` on the samples of the classes that
    have 2 samples or more.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0] * 10 + [1] * 3)
    >>> cv = AdaptiveStratifiedKFold(max_splits=5, n_repeats=2)
    >>> cv.get_n_splits(y=y)
    6
    """

    def __init__(self, max_splits: int = 5, *, n_repeats: int = 1, random_state: int = 0,
                 small_classes: str = "train"):
        self.max_splits = max_splits
        self.n_repeats = n_repeats
        self.random_state = random_state
        self.small_classes = small_classes

    def _check_repeats(self) -> None:
        check_int("n_repeats", self.n_repeats, 1, owner="AdaptiveStratifiedKFold")

    def plan(self, y) -> FoldPlan:
        """Return the :class:`FoldPlan` for ``y`` (number of folds, single-sample classes)."""
        return plan_folds(y, self.max_splits, self.small_classes)

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of (train, test) pairs: folds actually used times ``n_repeats``.

        Without ``y`` the upper bound ``max_splits * n_repeats`` is returned.
        """
        self._check_repeats()
        if y is None:
            return int(self.max_splits) * int(self.n_repeats)
        return self.plan(y).n_splits * int(self.n_repeats)

    def split(self, X=None, y=None, groups=None):
        """Generate (train, test) index arrays, repeat after repeat.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), default=None
            Ignored except for its length when ``y`` is given.
        y : array-like of shape (n_samples,)
            Class labels (required).
        groups : None
            Ignored.

        Yields
        ------
        train : ndarray of int
            Sorted training indices (single-sample classes included in every one).
        test : ndarray of int
            Sorted test indices.
        """
        if y is None:
            raise ValueError("AdaptiveStratifiedKFold.split needs y (the class labels).")
        self._check_repeats()
        y = column_or_1d(y)
        plan = self.plan(y)
        if plan.singleton_classes:
            warnings.warn(plan.notes[-1], SmallClassWarning, stacklevel=2)
        for note in plan.notes:
            logger.info("cross-validation: %s", note)
        single = np.isin(y, np.asarray(plan.singleton_classes, dtype=y.dtype))
        kept = np.flatnonzero(~single)
        always_train = np.flatnonzero(single)
        rskf = RepeatedStratifiedKFold(
            n_splits=plan.n_splits, n_repeats=int(self.n_repeats), random_state=self.random_state
        )
        for train, test in rskf.split(np.zeros((len(kept), 1)), y[kept]):
            yield np.sort(np.concatenate([kept[train], always_train])), np.sort(kept[test])
