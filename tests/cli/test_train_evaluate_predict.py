"""The classify sub-commands: train, evaluate, predict, sweep (on a tiny generated image tree)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

pytest.importorskip("torch")

from featurize.networks.layers import default_layers
from pipelines.cli import main

FAST = ["--layers", "blocks.10,penultimate", "--folds", "3", "--repeats", "1", "--jobs", "1",
        "--device", "cpu", "--num-workers", "0"]
RUNTIME = ["--device", "cpu", "--num-workers", "0"]


def _write_tree(root, n_per_class, rng):
    """Reddish and bluish noise images: easy to tell apart from CNN features."""
    from PIL import Image

    for name, channel in (("blue", 2), ("red", 0)):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 90, (48, 48, 3)).astype(np.uint8)
            pixels[..., channel] = rng.integers(150, 256, (48, 48))
            Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    _write_tree(root / "train", 6, rng)
    _write_tree(root / "test", 3, rng)
    (root / "test" / "red" / "broken.png").write_bytes(b"not a png at all")
    return root


@pytest.fixture(scope="module")
def trained(trees, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "model.joblib"
    cache = out.parent / "features.h5"
    code = main(["train", str(trees / "train"), "--out", str(out), "--cache", str(cache),
                 "--json", *FAST])
    assert code == 0
    return out, cache


def test_train_saves_a_model(trained, capsys):
    from classify import load_model
    from classify.model import featurizer_parts
    from classify.training import DEFAULT_BACKBONES

    out, cache = trained
    model = load_model(out)
    p = model.provenance
    # the default candidates: each embedded backbone's layers, and their concatenation
    assert p["candidate_layers"] == {name: ["blocks.10", "penultimate"]
                                     for name in DEFAULT_BACKBONES}
    parts = featurizer_parts(model.featurizer_config)
    assert {part["backbone"] for part in parts} <= set(DEFAULT_BACKBONES)
    assert all(part["layer"] in ("blocks.10", "penultimate", ["blocks.10", "penultimate"])
               for part in parts)
    assert p["backbone"] == " + ".join(part["backbone"] for part in parts)
    assert p["classes"] == ["blue", "red"]
    assert p["cv_scores"]["balanced_accuracy"] > 0.8
    assert model.has_proba  # SVM heads are calibrated by default
    assert cache.exists()


def test_evaluate_json(trained, trees, capsys):
    out, cache = trained
    capsys.readouterr()
    code = main(["evaluate", str(out), str(trees / "test"), "--json", "--cache", str(cache),
                 *RUNTIME])
    assert code == 3  # done, but broken.png could not be read
    report = json.loads(capsys.readouterr().out)  # one JSON object, nothing else on stdout
    assert report["accuracy"] == 1.0 and report["balanced_accuracy"] == 1.0
    assert report["n_scored"] == 6
    assert [f["path"].endswith("broken.png") for f in report["failures"]] == [True]
    assert report["confusion_matrix"] == [[3, 0], [0, 3]]
    assert set(report["per_class"]) >= {"blue", "red", "macro avg"}


def test_evaluate_text(trained, trees, capsys):
    out, _ = trained
    capsys.readouterr()
    assert main(["evaluate", str(out), str(trees / "test"), *RUNTIME]) == 3
    text = capsys.readouterr().out
    assert "balanced_accuracy" in text and "Confusion matrix" in text and "macro avg" in text


def test_predict_writes_a_row_per_file(trained, trees, tmp_path, capsys):
    out, _ = trained
    preds = tmp_path / "preds.csv"
    code = main(["predict", str(out), str(trees / "test"), "--out", str(preds), *RUNTIME])
    assert code == 3  # finished, but one file could not be read
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 7
    broken = [r for r in rows if r["path"].endswith("broken.png")]
    assert len(broken) == 1 and broken[0]["predicted"] == "" and broken[0]["error"]
    good = [r for r in rows if not r["error"]]
    for row in good:
        assert row["predicted"] == ("red" if "/red/" in row["path"] else "blue")
        assert float(row["proba_blue"]) + float(row["proba_red"]) == pytest.approx(1.0)


def test_predict_to_stdout(trained, trees, capsys):
    out, _ = trained
    image = trees / "test" / "blue" / "0.png"
    capsys.readouterr()
    assert main(["predict", str(out), str(image), *RUNTIME]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and rows[0]["predicted"] == "blue"


def test_sweep_table(trained, trees, capsys):
    _, cache = trained
    capsys.readouterr()
    code = main(["sweep", str(trees / "train"), "--cache", str(cache), "--poolings", "avg",
                 "--heads", "logreg,linear_svm", "--format", "json", *FAST])
    assert code == 0
    table = json.loads(capsys.readouterr().out)
    # each layer, and their concatenation
    assert {(r["layer"], r["pooling"], r["head"]) for r in table} == {
        (layer, "avg", head) for layer in ("blocks.10", "penultimate", "blocks.10+penultimate")
        for head in ("logreg", "linear_svm")}
    for row in table:
        assert 0 <= row["balanced_accuracy_mean"] <= 1 and row["balanced_accuracy_std"] >= 0


def test_errors_are_reported_not_raised(trained, tmp_path, capsys):
    out, _ = trained
    with pytest.raises(SystemExit) as info:  # a missing input folder is a usage error
        main(["evaluate", str(out), str(tmp_path / "missing"), *RUNTIME])
    assert info.value.code == 2 and "no such folder" in capsys.readouterr().err
    not_a_model = tmp_path / "x.joblib"
    not_a_model.write_bytes(b"nope")
    assert main(["predict", str(not_a_model), str(tmp_path), *RUNTIME]) == 1
    assert "not a readable featurize model" in capsys.readouterr().err


def test_default_layers():
    from featurize.networks.layers import LayerInfo

    def info(name, shape):
        return LayerInfo(name, shape, "Module")

    resnet = [info("conv1", (64, 112, 112)), info("relu", (64, 112, 112)),
              info("maxpool", (64, 56, 56)), info("layer1.0", (64, 56, 56)),
              info("layer1", (64, 56, 56)), info("layer2.0.conv1", (128, 28, 28)),
              info("layer2", (128, 28, 28)), info("layer3", (256, 14, 14)),
              info("layer4", (512, 7, 7)), info("avgpool", (512, 1, 1)),
              info("penultimate", (512,))]
    assert default_layers(resnet, 3) == ["layer1", "layer2", "layer3", "penultimate"]
    assert default_layers(resnet, 0) == ["penultimate"]
    vit = [info("conv_proj", (768, 14, 14)), info("encoder", (197, 768)),
           info("penultimate", (768,))]
    assert default_layers(vit) == ["penultimate"]


def test_sweep_skips_poolings_of_vector_layers(trained, trees, capsys):
    """Pooling a vector (penultimate) is the identity: it is one candidate, not one per pooling."""
    _, cache = trained
    capsys.readouterr()
    code = main(["sweep", str(trees / "train"), "--cache", str(cache), "--poolings", "avg,max",
                 "--heads", "logreg", "--format", "json", *FAST])
    assert code == 0
    cells = {(r["layer"], r["pooling"]) for r in json.loads(capsys.readouterr().out)}
    assert cells == {("blocks.10", "avg"), ("blocks.10", "max"), ("penultimate", "avg"),
                     ("blocks.10+penultimate", "avg")}


def test_train_is_never_silent_during_selection(trees, tmp_path, capsys):
    out = tmp_path / "m.joblib"
    code = main(["train", str(trees / "train"), "--out", str(out), "--verbose", *FAST])
    assert code == 0
    err = capsys.readouterr().err
    # progress lines (stderr is not a terminal here) and the stages; 3 backbones x 2 layers,
    # and their concatenation
    assert "screen feature sets: 7/7 set" in err
    # the extraction too, naming the backbones (one pass: 12 images x 3 backbones; a line at
    # least every 10 s, and one at the end)
    assert ("featurize efficientnet_lite0+efficientnet_lite1+efficientnet_lite2: 36/36 img"
            " (100.0%)") in err and "cross-validate:" in err
    assert "fast search" in err or "cross-validating" in err


def test_ctrl_c_during_selection_exits_130_and_writes_no_model(trees, tmp_path, monkeypatch,
                                                               capsys):
    from classify import _evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises in the middle of the cross-validation

    monkeypatch.setattr(_evaluation, "evaluate", interrupted)
    out = tmp_path / "m.joblib"
    assert main(["train", str(trees / "train"), "--out", str(out), *FAST]) == 130
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_saving_leaves_no_partial_model(trees, tmp_path, monkeypatch):
    import joblib

    real_dump = joblib.dump

    def dump_then_interrupt(value, filename, **kwargs):
        real_dump(value, filename, **kwargs)
        with open(filename, "r+b") as fh:
            fh.truncate(100)  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(joblib, "dump", dump_then_interrupt)
    out = tmp_path / "m.joblib"
    assert main(["train", str(trees / "train"), "--out", str(out), *FAST]) == 130
    assert list(tmp_path.iterdir()) == []


# -- bad files and paths: one clear line, before any work ----------------------------------------


def _one_line(text):
    text = text.strip()
    assert "\n" not in text and "Traceback" not in text, text
    return text


def test_a_damaged_model_file_is_a_one_line_error_naming_it(trained, trees, tmp_path, capsys):
    """30 random 8-byte scribbles on a compressed model file: never a traceback."""
    out, _ = trained
    data = out.read_bytes()
    rng = np.random.default_rng(0)
    damaged = tmp_path / "damaged.joblib"
    for _ in range(30):
        scribbled = bytearray(data)
        at = int(rng.integers(16, len(data) - 8))
        scribbled[at:at + 8] = rng.bytes(8)
        damaged.write_bytes(bytes(scribbled))
        capsys.readouterr()
        assert main(["evaluate", str(damaged), str(trees / "test"), *RUNTIME]) == 1
        err = _one_line(capsys.readouterr().err)
        assert str(damaged) in err and "joblib" in err


def test_a_feature_cache_given_as_a_model_says_what_it_is(trained, trees, capsys):
    _, cache = trained
    capsys.readouterr()
    assert main(["predict", str(cache), str(trees / "test" / "blue" / "0.png"), *RUNTIME]) == 1
    err = _one_line(capsys.readouterr().err)
    assert str(cache) in err and "HDF5" in err and "feature cache" in err


def test_a_model_file_given_as_cache_is_named_and_left_alone(trained, trees, tmp_path, capsys):
    out, _ = trained
    before = out.read_bytes()
    capsys.readouterr()
    code = main(["train", str(trees / "train"), "--out", str(tmp_path / "m.joblib"),
                 "--cache", str(out), *FAST])
    assert code == 1
    err = capsys.readouterr().err
    assert str(out) in err and "joblib" in err and "Delete it" not in err
    assert out.read_bytes() == before


def test_evaluate_ignores_an_empty_class_folder(trained, trees, tmp_path, capsys):
    import shutil

    out, cache = trained
    test = tmp_path / "test"
    shutil.copytree(trees / "test", test)
    (test / "green").mkdir()  # no image: not a class of this test set, as for `train`
    capsys.readouterr()
    assert main(["evaluate", str(out), str(test), "--json", "--cache", str(cache),
                 *RUNTIME]) == 3  # broken.png
    assert json.loads(capsys.readouterr().out)["n_scored"] == 6


def test_output_paths_are_checked_before_any_work(trained, trees, tmp_path, capsys):
    out, _ = trained
    cache = tmp_path / "features.h5"
    with pytest.raises(SystemExit) as info:  # argparse: a usage error, exit code 2
        main(["train", str(trees / "train"), "--out", str(tmp_path / "missing" / "m.joblib"),
              "--cache", str(cache), *FAST])
    assert info.value.code == 2
    assert "missing" in capsys.readouterr().err and not cache.exists()  # nothing extracted
    with pytest.raises(SystemExit) as info:
        main(["report", str(out), str(trees / "train"), "--out", str(tmp_path), *RUNTIME])
    assert info.value.code == 2 and "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["predict", str(out), str(trees / "test"), "--out",
              str(tmp_path / "missing" / "p.csv"), *RUNTIME])
    assert info.value.code == 2


def test_a_class_of_one_image_is_refused_by_name_before_extraction(trees, tmp_path, capsys):
    import shutil

    train = tmp_path / "train"
    shutil.copytree(trees / "train", train)
    (train / "green").mkdir()
    shutil.copy(trees / "train" / "red" / "0.png", train / "green" / "0.png")
    cache = tmp_path / "features.h5"
    code = main(["train", str(train), "--out", str(tmp_path / "m.joblib"), "--cache", str(cache),
                 *FAST])
    assert code == 1
    err = capsys.readouterr().err
    assert "['green'] have a single sample" in err and not cache.exists()


def test_train_says_its_cv_score_is_optimistic_and_points_to_nested(trained, trees, tmp_path,
                                                                   capsys):
    _, cache = trained
    capsys.readouterr()
    assert main(["train", str(trees / "train"), "--out", str(tmp_path / "m.joblib"),
                 "--cache", str(cache), *FAST]) == 0
    shown = capsys.readouterr().out.split("Chosen:")[1]
    assert "optimistic: the best of" in shown and "--nested" in shown
    from classify import load_model

    text = load_model(tmp_path / "m.joblib").to_text()
    assert "optimistic" in text and "--nested" in text
