"""Fine-tuning: the probe leaves the network alone, validation from training data only, Ctrl-C
keeps the best checkpoint, the checkpoint is a featurize backbone and a model, same seed same
numbers, bad training folders refused or cleaned as ``train`` does, no worker process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from featurize.finetuning.finetune import finetune

BACKBONE = "efficientnet_lite0"  # real embedded weights


def _copy(hymenoptera, dest, sl, classes=("ants", "bees"), source=None):
    for name in classes:
        (dest / name).mkdir(parents=True)
        for f in sorted((hymenoptera / "train" / (source or name)).glob("*.jpg"))[sl]:
            shutil.copy(f, dest / name / f.name)
    return dest


@pytest.fixture(scope="module")
def trees(hymenoptera, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    _copy(hymenoptera, root / "train", slice(0, 10))
    _copy(hymenoptera, root / "test", slice(30, 34))
    return root


def _truncate(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _run(root, out, **kw):
    base = {"backbone": BACKBONE, "batch_size": 8, "num_workers": 0, "device": "cpu",
            "verbose": 0, "val_fraction": 0.2, "seed": 0, "unfreeze": 1}
    return finetune(root, out, **(base | kw))


def test_the_probe_changes_only_the_classifier(trees, tmp_path):
    from featurize import load_backbone

    result = _run(trees / "train", tmp_path / "m.pt", epochs=0)
    saved = torch.load(result.checkpoint, weights_only=True)
    pristine = load_backbone(BACKBONE).model.state_dict()
    assert set(saved["state_dict"]) == set(pristine)
    for key, value in pristine.items():  # every weight and batch-norm statistic unchanged
        assert torch.equal(saved["state_dict"][key], value), key
    assert saved["head_weight"].shape == (2, 1280)
    assert saved["best_epoch"] == 0 and [r["epoch"] for r in result.history] == [0]


def test_validation_comes_from_the_training_folder_only(trees, tmp_path):
    result = _run(trees / "train", tmp_path / "m.pt", epochs=0)
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
    result = _run(trees / "train", out, epochs=4, on_epoch=interrupt)
    assert result.interrupted and len(result.history) == 3
    saved = torch.load(out, weights_only=True)
    assert [r["epoch"] for r in saved["history"]] == [0, 1, 2]  # the whole run is recorded
    assert saved["best_epoch"] == result.best_epoch in (0, 1, 2)
    assert list(tmp_path.iterdir()) == [out]  # no partial file left


def test_the_checkpoint_is_a_backbone_and_a_model(trees, tmp_path):
    from classify import load_model
    from featurize import extract_features
    from featurize.extraction import Extractor
    from pipelines.cli import main

    out = tmp_path / "m.pt"
    result = _run(trees / "train", out, epochs=1, unfreeze=2, keep="last")
    assert result.best_epoch == 1  # the kept network is a fine-tuned one
    paths = sorted(str(p) for p in (trees / "test").rglob("*.jpg"))
    tuned = extract_features(paths, backbone=BACKBONE, weights=str(out), device="cpu",
                             num_workers=0)
    base = extract_features(paths, backbone=BACKBONE, device="cpu", num_workers=0)
    assert not np.allclose(tuned, base)  # fine-tuning changed the last stages
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


@pytest.mark.parametrize("threads", [0, 2])
def test_same_seed_same_weights_even_when_the_first_call_builds_the_network(trees, tmp_path,
                                                                            threads):
    from featurize.networks import backbones

    backbones._MEMO.clear()  # the first call builds the network, the second is served a copy
    torch.manual_seed(123)
    caller_state = torch.get_rng_state()
    runs = [torch.load(_run(trees / "train", tmp_path / f"{i}.pt", epochs=1, keep="last",
                            num_workers=threads).checkpoint, weights_only=True)
            for i in range(2)]
    a, b = runs
    assert a["best_epoch"] == b["best_epoch"] and a["history"][-1]["loss"] > 0
    assert torch.equal(a["head_weight"], b["head_weight"])
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert [r["loss"] for r in a["history"]][1:] == [r["loss"] for r in b["history"]][1:]
    assert torch.equal(torch.get_rng_state(), caller_state)  # the caller's RNG is untouched


def test_training_autocasts_to_bf16_exactly_where_the_cpu_computes_it(monkeypatch):
    from featurize.finetuning import finetune as module
    from featurize.networks import hardware

    cpu = torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda native=native: native)
        assert module.autocast_dtype("auto", cpu) is expected
    assert module.autocast_dtype("fp32", cpu) is None


def test_finetune_leaves_out_an_unreadable_image(trees, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(trees / "train", train)
    bad = sorted((train / "bees").glob("*.jpg"))[3]
    _truncate(bad)  # the header still reads: the folder listing keeps it
    result = _run(train, tmp_path / "m.pt", epochs=1, num_workers=2)
    assert [(result.paths[row], why[:20]) for row, why in result.failures.items()] == [
        (str(bad), "truncated image data")]
    assert result.failed == [(str(bad), result.failures[result.paths.index(str(bad))])]


def test_an_unreadable_training_image_is_left_out_and_reported(hymenoptera, tmp_path, capsys):
    import io

    from pipelines.cli import main

    train = _copy(hymenoptera, tmp_path / "train", slice(0, 8))
    bad = min((train / "ants").glob("*.jpg"))
    _truncate(bad)  # the header still reads: the folder listing keeps it
    out = tmp_path / "m.pt"
    code = main(["finetune", str(train), "--out", str(out), "--epochs", "1", "--unfreeze", "1",
                 "--backbone", BACKBONE, "--device", "cpu", "--num-workers", "2",
                 "--batch-size", "8"])
    err = capsys.readouterr().err
    from pipelines.arguments import report_failed

    saved = torch.load(out, weights_only=True)
    assert code == 3  # done, some input left out: as `featurize train`
    assert [path for path, _ in saved["failures"]] == [str(bad)]
    assert saved["failures"][0][1].startswith("truncated image data")
    listing = io.StringIO()  # listed as `featurize train` lists its failures
    report_failed([tuple(f) for f in saved["failures"]], 16, file=listing)
    assert listing.getvalue() in err
    assert str(bad) not in saved["val_paths"] and saved["classes"] == ["ants", "bees"]


def _error(capsys, argv) -> str:
    from pipelines.cli import main

    assert main(argv) == 1
    return capsys.readouterr().err.strip().splitlines()[-1].partition(": error: ")[2]


@pytest.mark.parametrize("layout", ["one class", "a class of one image", "text files"])
def test_refuses_what_train_refuses_in_the_same_words(layout, hymenoptera, tmp_path, capsys):
    root = tmp_path / "data"
    if layout == "one class":
        _copy(hymenoptera, root, slice(0, 4), classes=("ants",))
    elif layout == "a class of one image":
        _copy(hymenoptera, root, slice(0, 4))
        _copy(hymenoptera, root, slice(0, 1), classes=("wasps",), source="ants")
    else:
        for name in ("ants", "bees"):
            (root / name).mkdir(parents=True)
            (root / name / "notes.txt").write_text("not an image")
    train = _error(capsys, ["train", str(root), "--out", str(tmp_path / "m.joblib"),
                            "--backbone", BACKBONE, "--device", "cpu", "--num-workers", "0"])
    tuned = _error(capsys, ["finetune", str(root), "--out", str(tmp_path / "m.pt"),
                            "--backbone", BACKBONE, "--device", "cpu", "--num-workers", "0"])
    assert train and tuned == train
    assert not (tmp_path / "m.pt").exists()


def test_an_empty_class_folder_is_no_class(hymenoptera, tmp_path):
    root = _copy(hymenoptera, tmp_path / "data", slice(0, 6))
    (root / "wasps").mkdir()
    with pytest.warns(UserWarning, match="Class folders with no usable image: 'wasps'"):
        result = _run(root, tmp_path / "m.pt", epochs=0)
    saved = torch.load(result.checkpoint, weights_only=True)
    assert result.classes == saved["classes"] == ["ants", "bees"]
    assert saved["head_weight"].shape[0] == 2


def test_a_class_of_one_image_is_trained_on_and_never_validated(hymenoptera, tmp_path):
    root = _copy(hymenoptera, tmp_path / "data", slice(0, 6))
    _copy(hymenoptera, root, slice(-1, None), classes=("wasps",), source="ants")  # one
    (only,) = (root / "wasps").iterdir()
    with pytest.warns(UserWarning, match="trained on and never validated: 'wasps'"):
        result = _run(root, tmp_path / "m.pt", epochs=0)
    saved = torch.load(result.checkpoint, weights_only=True)
    assert saved["classes"] == ["ants", "bees", "wasps"]
    assert str(only) not in saved["val_paths"] and len(saved["val_paths"]) == 2


def test_finetune_starts_no_process(trees, tmp_path):
    import psutil

    def pids():
        return {child.pid for child in psutil.Process().children(recursive=True)}

    before = pids()  # e.g. the loky workers earlier tests of this session left running
    new = []
    _run(trees / "train", tmp_path / "m.pt", epochs=1, num_workers=2,
         on_epoch=lambda row: new.append(pids() - before))
    assert new and not any(new), new


def test_featurize_finetune_on_the_sample_under_spawn_without_a_main_guard(tmp_path):
    out = tmp_path / "m.pt"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing
        import sys

        multiprocessing.set_start_method("spawn", force=True)
        from featurize.images.datasets import sample_images
        from pipelines.cli import main

        sys.exit(main(["finetune", str(sample_images().train), "--out", {str(out)!r},
                       "--backbone", "efficientnet_lite0", "--epochs", "1", "--unfreeze", "1",
                       "--device", "cpu"]))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Saved the best checkpoint" in proc.stdout
    assert torch.load(out, weights_only=True)["classes"] == ["hat", "pants", "shoes", "t-shirt"]


def test_compare_gives_the_images_that_differ_and_a_paired_test(trees, tmp_path, capsys):
    from pipelines.cli import main

    train = tmp_path / "train"
    shutil.copytree(trees / "train", train)
    _truncate(max((train / "bees").glob("*.jpg")))  # left out by both, not fatal
    code = main(["compare", str(train), "--test", str(trees / "test"), "--out-dir",
                 str(tmp_path / "cmp"), "--device", "cpu", "--num-workers", "0", "--report",
                 str(tmp_path / "r.html")])
    assert code == 3
    out = capsys.readouterr().out
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Features + heads or fine-tuning?" in page and "fine-tuning</th>" in page
    assert "features + heads" in out and "fine-tuning" in out
    assert "predict differently on " in out and " of 8 test images" in out
    assert "McNemar exact test p = " in out
    assert (tmp_path / "cmp" / "features.joblib").is_file()
    assert (tmp_path / "cmp" / "finetuned.pt").is_file()


def test_paired_comparison_counts_the_images_only_one_model_gets_right():
    from classify.metrics import paired_comparison
    from pipelines.cmd_compare import verdict

    y = np.array(["a"] * 10 + ["b"] * 10)
    pred_a = y.copy()
    pred_b = y.copy()
    pred_b[:3] = "b"  # only a is right on 3 images
    pred_a[10] = pred_b[10] = "a"  # both wrong, the same way
    result = paired_comparison(y, pred_a, pred_b)
    assert result == {"n": 20, "disagree": 3, "only_a": 3, "only_b": 0,
                      "p_value": pytest.approx(2 * 0.5 ** 3)}  # two-sided exact binomial
    rows = [("features + heads", 0.95, 0.95, 10.0), ("fine-tuning", 0.80, 0.80, 60.0)]
    text = verdict(rows, result)
    assert text.startswith("No significant difference") and "p = 0.25" in text
    many = paired_comparison(np.zeros(40), np.zeros(40), np.r_[np.ones(12), np.zeros(28)])
    assert many["only_a"] == 12 and many["p_value"] < 0.001
    assert verdict(rows, many).startswith("Use features + heads: +15.0 points")


@pytest.mark.slow
def test_default_finetune_reaches_094_balanced_accuracy_on_ants_bees_val(hymenoptera, tmp_path):
    from sklearn.metrics import balanced_accuracy_score

    from classify import load_model
    from featurize.images.folder import load_image_folder

    out = tmp_path / "m.pt"
    finetune(hymenoptera / "train", out, verbose=0)
    val = load_image_folder(hymenoptera / "val")
    pred = load_model(out).predict(val.paths)
    assert balanced_accuracy_score(np.asarray(val.target_names)[val.target], pred) >= 0.94
