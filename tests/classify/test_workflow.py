"""The whole workflow from Python (train, evaluate, predict, report on folders), and models
that travel: trained in one folder, used from any other, with their data moved."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from classify import FittedModel, load_model
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]
#: a small random-weight network, fast on 2 cores (the real embedded backbones are exercised by
#: the README test below and by tests/cli/test_train_evaluate_predict.py)
def _tiny(weights: str = "none") -> list[str]:
    return ["--backbone", "mobilenet_v3_small", "--weights", weights, "--layers", "penultimate",
            "--precision", "fp32", "--device", "cpu", "--num-workers", "0", "--folds", "2",
            "--repeats", "1", "--jobs", "1", "--heads", "logreg"]


def _copy(files, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / Path(f).name)


@pytest.fixture(scope="module")
def jpegs(hymenoptera):
    ants = sorted((hymenoptera / "train" / "ants").glob("*.jpg"))
    bees = sorted((hymenoptera / "train" / "bees").glob("*.jpg"))
    return ants, bees


@pytest.fixture
def nested_tree(tmp_path, jpegs):
    """``data/train`` with sub-folders inside a class: ``ants/batch1/`` and ``ants/bees/``
    (a folder named like another class): every image below ``ants/`` is an ant."""
    ants, bees = jpegs
    train = tmp_path / "project" / "data" / "train"
    _copy(ants[:3], train / "ants")
    _copy(ants[3:5], train / "ants" / "batch1")
    _copy(ants[5:7], train / "ants" / "bees")
    _copy(bees[:7], train / "bees")
    return tmp_path / "project"


def _labels_in_map(html: str) -> dict:
    """``path -> class`` of the training points of the report's map."""
    return {path: label for label, path in re.findall(
        r'data-label="train: ([^",]*)[^"]*" data-path="([^"]*)"', html)}


def test_train_then_report_work_from_three_working_folders_on_a_nested_tree(
        nested_tree, tmp_path, monkeypatch):
    """Trained from the project folder with relative paths; reported on from a sub-folder,
    then, with the data moved, from a third folder: the training images are found and labelled
    as train labelled them (images in ants/bees/ are ants)."""
    monkeypatch.chdir(nested_tree)
    assert main(["train", "data/train", "--out", "m.joblib", "--cache", "f.h5", *_tiny()]) == 0
    sub = nested_tree / "data"
    monkeypatch.chdir(sub)
    assert main(["report", "../m.joblib", "train", "--out", "r1.html", "--cache", "../f.h5",
                 "--device", "cpu", "--num-workers", "0"]) == 0
    moved = tmp_path / "elsewhere" / "images"
    shutil.move(str(nested_tree / "data" / "train"), str(moved))
    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)
    assert main(["report", str(nested_tree / "m.joblib"), "../elsewhere/images", "--out",
                 "r2.html", "--device", "cpu", "--num-workers", "0"]) == 0
    for html in ((sub / "r1.html").read_text(), (third / "r2.html").read_text()):
        labels = _labels_in_map(html)
        assert len(labels) == 14
        nested = {p: c for p, c in labels.items() if "/ants/" in p.replace(os.sep, "/")}
        assert len(nested) == 7 and set(nested.values()) == {"ants"}
        assert sum(c == "bees" for c in labels.values()) == 7


def test_the_command_line_takes_the_choice_rule_and_the_model_records_it(tmp_path, jpegs):
    ants, bees = jpegs
    _copy(ants[:4], tmp_path / "train" / "ants")
    _copy(bees[:4], tmp_path / "train" / "bees")
    out = tmp_path / "m.joblib"
    assert main(["train", str(tmp_path / "train"), "--out", str(out), *_tiny(),
                 "--rule", "one_se_log_loss"]) == 0
    assert load_model(out).provenance["rule"] == "one_se_log_loss"
    with pytest.raises(SystemExit):  # argparse names the choices
        main(["train", str(tmp_path / "train"), "--out", str(out), "--rule", "smallest"])


def test_a_relative_checkpoint_is_stored_absolute_so_the_model_predicts_from_any_folder(
        tmp_path, jpegs, monkeypatch, capsys):
    import torch
    import torchvision

    ants, bees = jpegs
    _copy(ants[:4], tmp_path / "train" / "ants")
    _copy(bees[:4], tmp_path / "train" / "bees")
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "ft.pt")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "train", "--out", "m.joblib", *_tiny("ft.pt")]) == 0
    assert load_model("m.joblib").featurizer_config["weights"] == str(tmp_path / "ft.pt")
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    capsys.readouterr()
    assert main(["predict", "../m.joblib", str(ants[10]), "--device", "cpu",
                 "--num-workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split(",")[1] in ("ants", "bees")


def test_a_pickled_featurizer_keeps_its_cache_file_wherever_it_is_loaded(tmp_path, jpegs,
                                                                          monkeypatch):
    from featurize import CNNFeaturizer

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    featurizer = CNNFeaturizer(backbone="mobilenet_v3_small", weights=None, device="cpu",
                               num_workers=0, cache="f.h5").fit()
    X = featurizer.transform([str(jpegs[0][0])])
    monkeypatch.chdir(second)
    loaded = pickle.loads(pickle.dumps(featurizer))
    np.testing.assert_array_equal(loaded.transform([str(jpegs[0][0])]), X)
    assert os.listdir(second) == [] and os.listdir(first) == ["f.h5"]


def test_a_fitted_pipeline_becomes_a_model_the_command_line_reads_and_back(
        tmp_path, jpegs, capsys):
    """Pipeline -> FittedModel -> file -> `featurize predict` / `evaluate` and
    featurize.load_model; FittedModel -> Pipeline: the same predictions all along."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import featurize
    from featurize import CNNFeaturizer

    ants, bees = jpegs
    paths = [str(p) for p in ants[:4] + bees[:4]]
    y = np.repeat(["ants", "bees"], 4)
    pipeline = make_pipeline(CNNFeaturizer(backbone="mobilenet_v3_small", weights=None,
                                           precision="fp32", device="cpu", num_workers=0),
                             StandardScaler(), LogisticRegression(C=0.1)).fit(paths, y)
    expected = pipeline.predict(paths)
    model = FittedModel.from_pipeline(pipeline)
    path = tmp_path / "m.joblib"
    model.save(path)
    loaded = featurize.load_model(path)
    np.testing.assert_array_equal(loaded.predict(paths), expected)
    capsys.readouterr()
    assert main(["predict", str(path), *paths, "--device", "cpu", "--workers", "0"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == list(expected)
    _copy(ants[:4], tmp_path / "test" / "ants")
    _copy(bees[:4], tmp_path / "test" / "bees")
    assert main(["evaluate", str(path), str(tmp_path / "test"), "--device", "cpu",
                 "--workers", "0"]) == 0
    np.testing.assert_array_equal(loaded.to_pipeline().predict(paths), expected)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, jpegs):
    from classify import train_folder

    ants, bees = jpegs
    root = tmp_path_factory.mktemp("small")
    _copy(ants[:5], root / "train" / "ants")
    _copy(bees[:5], root / "train" / "bees")
    _copy(ants[20:23], root / "test" / "ants")
    _copy(bees[20:23], root / "test" / "bees")
    photo = bees[9].read_bytes()  # a truncated photo: its header reads, its pixels do not
    (root / "test" / "bees" / "broken.jpg").write_bytes(photo[:len(photo) // 3])
    model = train_folder(root / "train", backbones=["mobilenet_v3_small"], weights=None,
                         layers=["penultimate"], precision="fp32", device="cpu", num_workers=0,
                         n_splits=2, n_repeats=1, heads=["logreg"], cache=root / "f.h5")
    return root, model


def test_evaluate_folder_gives_scores_per_class_confusion_failures_and_misclassified(
        small_model):
    from classify import evaluate_folder

    root, model = small_model
    result = model.evaluate(root / "test", cache=root / "f.h5", device="cpu", num_workers=0)
    same = evaluate_folder(model, root / "test", cache=root / "f.h5", device="cpu",
                           num_workers=0)
    assert result.scores == same.scores
    assert result.n_images == 7 and result.n_scored == 6
    assert [Path(p).name for p, _ in result.failed] == ["broken.jpg"]
    assert set(result.per_class.index) >= {"ants", "bees", "macro avg"}
    assert result.confusion.to_numpy().sum() == 6
    wrong = result.misclassified
    assert len(wrong) == int(np.sum(result.predicted != result.y_true))
    assert (wrong["true"] != wrong["predicted"]).all()
    assert result.to_dict()["n_scored"] == 6 and "Confusion matrix" in result.to_text()


def test_a_trained_model_records_its_training_images_relative_to_the_folder(small_model):
    root, model = small_model
    assert model.provenance["data_dir"] == str(root / "train")
    assert model.provenance["rule"] == "best"  # the default choice rule
    assert sorted(model.reports["train_paths"])[0] == "ants/" + sorted(
        os.listdir(root / "train" / "ants"))[0]
    assert model.reports["train_labels"] == ["ants"] * 5 + ["bees"] * 5


def test_predict_table_has_a_row_per_image_with_the_reason_of_failures(small_model):
    root, model = small_model
    table = model.predict_table([root / "test"], device="cpu", num_workers=0)
    assert len(table) == 7 and list(table.columns[:2]) == ["path", "predicted"]
    broken = table[table["path"].str.endswith("broken.jpg")]
    assert broken["predicted"].isna().all() and broken["error"].str.len().gt(0).all()
    assert table.loc[table["error"] == "", "predicted"].isin(["ants", "bees"]).all()


def _readme_python() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_from_python_section_runs_from_another_folder(tmp_path, jpegs):
    """The README's code, as written, with its data folder pointed at a tree elsewhere and run
    from an empty folder (real embedded backbones, real images)."""
    ants, bees = jpegs
    data = tmp_path / "somewhere" / "photos"
    _copy(ants[:6], data / "train" / "ants")
    _copy(bees[:6], data / "train" / "bees")
    _copy(ants[30:33], data / "test" / "ants")
    _copy(bees[30:33], data / "test" / "bees")
    code = _readme_python()
    assert 'data = "photos"' in code
    code = code.replace('data = "photos"', f"data = {str(data)!r}")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=work, env=env,
                          capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "balanced_accuracy" in done.stdout and "Confusion matrix" in done.stdout
    assert {p.name for p in work.iterdir()} >= {"model.joblib", "feats.h5", "report.html"}
    assert "featurize report" in (work / "report.html").read_text()
