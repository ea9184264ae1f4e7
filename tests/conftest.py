"""Shared fixtures: the real ants/bees data and small generated images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.support import DATA


def pytest_configure(config):
    # Keep torch from oversubscribing the 2-core CI machine while decode threads run too.
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    """Root of the ants/bees data set (train/ and val/, a folder per class)."""
    if not (DATA / "train").is_dir():
        pytest.fail(f"the ants/bees data is missing at {DATA}; set FEATURIZE_DATA")
    return DATA


@pytest.fixture(scope="session")
def some_jpegs(hymenoptera) -> list[str]:
    """Twelve real JPEG paths: six ants, six bees, sorted."""
    ants = sorted((hymenoptera / "train" / "ants").glob("*.jpg"))[:6]
    bees = sorted((hymenoptera / "train" / "bees").glob("*.jpg"))[:6]
    return [str(p) for p in ants + bees]


@pytest.fixture
def rgb_arrays() -> list[np.ndarray]:
    """Five random uint8 RGB images of different sizes."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            for h, w in [(64, 80), (100, 50), (32, 32), (240, 320), (77, 91)]]
