"""Files written whole or not at all (models, checkpoints, ONNX files, exported features)."""

from __future__ import annotations

import pytest

from featurize.storage.atomic import atomic_path


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "model.joblib"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        with open(tmp, "w") as fh:
            fh.write("half a new fi")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.joblib"]


def test_a_finished_write_replaces_the_file(tmp_path):
    target = tmp_path / "features.npy"
    target.write_text("old")
    with atomic_path(target, suffix=".npy") as tmp:
        assert tmp.endswith(".npy") and tmp != str(target)
        with open(tmp, "w") as fh:
            fh.write("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy"]
