"""Fine-tuning (#16): frozen stays frozen, validation from training data only, Ctrl-C keeps the
best checkpoint, the checkpoint is a featurize backbone and a model, same seed same numbers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from featurize.finetune import finetune

BACKBONE = "efficientnet_lite0"  # real embedded weights


@pytest.fixture(scope="module")
def trees(hymenoptera, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    for split, sl in (("train", slice(0, 10)), ("test", slice(30, 34))):
        for name in ("ants", "bees"):
            (root / split / name).mkdir(parents=True)
            for f in sorted((hymenoptera / "train" / name).glob("*.jpg"))[sl]:
                shutil.copy(f, root / split / name / f.name)
    return root


def _run(trees, out, **kw):
    base = dict(backbone=BACKBONE, batch_size=8, num_workers=0, device="cpu", verbose=0,
                val_fraction=0.2, seed=0)
    return finetune(trees / "train", out, **(base | kw))


def test_stage_one_trains_the_classifier_only(trees, tmp_path):
    from featurize import load_backbone

    result = _run(trees, tmp_path / "m.pt", head_epochs=2, epochs=0)
    saved = torch.load(result.checkpoint, weights_only=True)
    pristine = load_backbone(BACKBONE).model.state_dict()
    assert set(saved["state_dict"]) == set(pristine)
    for key, value in pristine.items():  # every weight and batch-norm statistic unchanged
        assert torch.equal(saved["state_dict"][key], value), key
    assert saved["head_weight"].shape == (2, 1280)
    assert saved["best_epoch"] in (1, 2) and [r["stage"] for r in result.history] == ["head"] * 2


def test_validation_comes_from_the_training_folder_only(trees, tmp_path):
    result = _run(trees, tmp_path / "m.pt", head_epochs=1, epochs=0)
    val = torch.load(result.checkpoint, weights_only=True)["val_paths"]
    train_files = {str(p) for p in (trees / "train").rglob("*.jpg")}
    test_files = {str(p) for p in (trees / "test").rglob("*.jpg")}
    assert val and set(val) <= train_files and not set(val) & test_files
    assert len(val) == 4  # 20% of 20, stratified


def test_ctrl_c_keeps_the_best_checkpoint_so_far(trees, tmp_path):
    def interrupt(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    out = tmp_path / "m.pt"
    result = _run(trees, out, head_epochs=1, epochs=4, on_epoch=interrupt)
    assert result.interrupted and len(result.history) == 2
    saved = torch.load(out, weights_only=True)
    assert [r["epoch"] for r in saved["history"]] == [1, 2]  # the whole run is recorded
    assert saved["best_epoch"] == result.best_epoch in (1, 2)
    assert list(tmp_path.iterdir()) == [out]  # no partial file left


def test_the_checkpoint_is_a_backbone_and_a_model(trees, tmp_path):
    from classify import load_model
    from featurize import extract_features
    from featurize.extraction import Extractor
    from pipelines.cli import main

    out = tmp_path / "m.pt"
    _run(trees, out, head_epochs=0, epochs=1)  # the saved epoch is one of stage two
    paths = sorted(str(p) for p in (trees / "test").rglob("*.jpg"))
    tuned = extract_features(paths, backbone=BACKBONE, weights=str(out), device="cpu",
                             num_workers=0)
    base = extract_features(paths, backbone=BACKBONE, device="cpu", num_workers=0)
    assert not np.allclose(tuned, base)  # stage two changed the last stages
    key = Extractor(BACKBONE, str(out), None, "avg", "cpu", "fp32").layer_config("penultimate")
    assert key["weights_sha256"] and key["weights_sha256"] != Extractor(
        BACKBONE, "DEFAULT", None, "avg", "cpu", "fp32").layer_config("penultimate")[
        "weights_sha256"]
    saved = torch.load(out, weights_only=True)
    logits = tuned @ saved["head_weight"].numpy().T + saved["head_bias"].numpy()
    model = load_model(out)
    expected = np.asarray(saved["classes"])[logits.argmax(1)]
    assert (model.predict(paths, num_workers=0, device="cpu") == expected).all()
    assert main(["evaluate", str(out), str(trees / "test"), "--device", "cpu",
                 "--num-workers", "0"]) == 0


def test_same_seed_same_numbers(trees, tmp_path):
    a = torch.load(_run(trees, tmp_path / "a.pt", head_epochs=1, epochs=1).checkpoint,
                   weights_only=True)
    b = torch.load(_run(trees, tmp_path / "b.pt", head_epochs=1, epochs=1).checkpoint,
                   weights_only=True)
    assert torch.equal(a["head_weight"], b["head_weight"])
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_compare_trains_both_and_says_which_to_use(trees, tmp_path, capsys):
    from pipelines.cli import main

    code = main(["compare", str(trees / "train"), "--test", str(trees / "test"), "--out-dir",
                 str(tmp_path / "cmp"), "--device", "cpu", "--num-workers", "0", "--report",
                 str(tmp_path / "r.html")])
    assert code == 0
    out = capsys.readouterr().out
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Features + heads or fine-tuning?" in page and "fine-tuning</th>" in page
    assert "features + heads" in out and "fine-tuning" in out
    assert "Use " in out or "Both score the same" in out
    assert (tmp_path / "cmp" / "features.joblib").is_file()
    assert (tmp_path / "cmp" / "finetuned.pt").is_file()
