"""``featurize export-model``: the whole model as one ONNX graph that onnxruntime runs alone.

The README's inference snippet runs in a process that never imports torch, featurize or
scikit-learn, on the bundled sample's test images, and gives ``featurize predict``'s
probabilities; a concatenation of backbones at two resolutions (one input each) and a
fine-tuned checkpoint export too; heads that cannot be expressed are refused by name.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classify import FittedModel, load_model, make_head, train_folder
from classify.features import build_extractors, config_features
from classify.onnx_export import _check_head, _head_module, export_onnx
from featurize._version import __version__
from featurize.images.datasets import sample_images
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "featurize", "sklearn", "classify")


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Deploy without featurize (ONNX)"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def run_snippet(onnx_path, paths, tmp_path) -> tuple[list, np.ndarray]:
    """The README's code in a fresh process, with the probabilities printed in full; asserts
    that it imported none of FORBIDDEN. Returns (labels, probabilities)."""
    code = readme_snippet()
    assert code.count('print(f"{path},{classes[row.argmax()]},{row.max():.4f}")') == 1
    code += (
        "\nprobs = session.run(None, feeds)[0]\n"
        "print(json.dumps(probs.astype(float).tolist()))\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))\n"
        "assert not loaded, loaded\n")
    script = tmp_path / "predict.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run([sys.executable, "-I", str(script), str(onnx_path), *map(str, paths)],
                            check=False, capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    labels = [line.rsplit(",", 2)[1] for line in lines[:-1]]
    return labels, np.asarray(json.loads(lines[-1]))


def predicted(model, paths) -> tuple[list, np.ndarray]:
    """What `featurize predict` prints: labels and the proba_<class> columns."""
    table = model.predict_table([str(p) for p in paths], device="cpu", num_workers=0)
    assert (table["error"] == "").all()
    columns = [f"proba_{c}" for c in model.classes_]
    return list(table["predicted"]), table[columns].to_numpy(dtype=np.float64)


@pytest.fixture(scope="module")
def sample():
    return sample_images()


@pytest.fixture(scope="module")
def trained(sample, tmp_path_factory):
    """A model of the real embedded efficientnet_lite0 on 10 images per class of the sample
    (fp32 features: the model computes the same function on every machine)."""
    folder = tmp_path_factory.mktemp("export")
    _subset(sample.train, folder / "train", 10)
    model = train_folder(folder / "train", backbones=["efficientnet_lite0"],
                         layers=["blocks.15", "penultimate"], precision="fp32", device="cpu",
                         n_splits=3, n_repeats=1, num_workers=0)
    path = folder / "model.joblib"
    model.save(path)
    return path


def test_the_exported_model_runs_without_featurize_and_gives_predicts_probabilities(
        trained, sample, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export-model", str(trained), str(out)]) == 0
    assert "Wrote" in capsys.readouterr().out
    paths = sorted(sample.test.rglob("*.jpg"))
    labels, probabilities = run_snippet(out, paths, tmp_path)
    model = load_model(trained)
    expected_labels, expected = predicted(model, paths)
    assert probabilities.shape == (len(paths), len(model.classes_))
    assert np.abs(probabilities - expected).max() <= 1e-3
    assert labels == expected_labels
    assert np.mean([str(p.parent.name) == label for p, label in zip(paths, labels)]) > 0.8

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False)
            .metadata_props}
    assert json.loads(meta["classes"]) == sample.target_names
    assert meta["featurize_version"] == __version__
    (entry,) = json.loads(meta["inputs"])
    from featurize import load_backbone

    assert {k: entry[k] for k in ("resize_size", "crop_size", "mean", "std", "interpolation")
            } == load_backbone("efficientnet_lite0").preprocessing.to_dict()


def _subset(folder, dest, per_class):
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        (dest / class_dir.name).mkdir(parents=True)
        for f in sorted(class_dir.glob("*.jpg"))[:per_class]:
            shutil.copy(f, dest / class_dir.name / f.name)
    return sorted(dest.rglob("*.jpg"))


def test_a_concatenation_at_two_resolutions_has_one_input_each(sample, tmp_path):
    """lite0 (224 px) + lite1 (240 px) with a calibrated linear SVM: the head reads both."""
    train = _subset(sample.train, tmp_path / "train", 5)
    test = _subset(sample.test, tmp_path / "test", 2)
    config = {"parts": [{"backbone": b, "weights": "DEFAULT", "layer": "penultimate",
                         "pooling": "avg", "precision": "fp32"}
                        for b in ("efficientnet_lite0", "efficientnet_lite1")]}
    X = config_features(build_extractors(config, "cpu"), [str(p) for p in train],
                        num_workers=0).X
    y = [p.parent.name for p in train]
    head = make_head("linear_svm", probability=True, C=0.01).fit(X, y)
    model = FittedModel(head, featurizer_config=config, provenance={"head": "linear_svm"})
    exported = export_onnx(model, tmp_path / "concat.onnx")
    assert [(e["name"], e["backbones"], e["crop_size"]) for e in exported.inputs] == [
        ("images_0", ["efficientnet_lite0"], 224), ("images_1", ["efficientnet_lite1"], 240)]
    labels, probabilities = run_snippet(exported.path, test, tmp_path)
    expected_labels, expected = predicted(model, test)
    assert np.abs(probabilities - expected).max() <= 1e-3
    assert labels == expected_labels
    # lite1 resizes the sample's 256 px side to 272 (the snippet's resize is featurize's); fed
    # featurize's own preprocessing, the graph computes the model up to float rounding
    import onnxruntime as ort
    import torch

    from featurize.images.data import resize_crop
    from featurize.images.decoding import load_image
    from featurize.networks.backbones import load_backbone

    feeds = {}
    for entry in exported.inputs:
        prep = load_backbone(entry["backbones"][0]).preprocessing
        feeds[entry["name"]] = prep.normalize(torch.stack([
            resize_crop(load_image(path, draft_size=prep.draft_size), prep) for path in test
        ])).numpy()
    session = ort.InferenceSession(exported.path, providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, feeds)[0] - expected).max() <= 1e-5


def test_a_finetuned_checkpoint_exports(sample, tmp_path):
    from featurize.finetuning.finetune import finetune

    _subset(sample.train, tmp_path / "train", 5)
    test = _subset(sample.test, tmp_path / "test", 2)
    checkpoint = tmp_path / "ft.pt"
    finetune(tmp_path / "train", checkpoint, backbone="efficientnet_lite0", epochs=1,
             unfreeze=1, batch_size=8, num_workers=0, device="cpu", verbose=0, seed=0,
             val_fraction=0.25)
    out = tmp_path / "ft.onnx"
    assert main(["export-model", str(checkpoint), str(out)]) == 0
    model = load_model(checkpoint)
    # the graph computes fp32; compare with the model's fp32 features (precision "auto" is
    # bf16 on a CPU that computes it natively)
    model.featurizer_config["precision"] = "fp32"
    labels, probabilities = run_snippet(out, test, tmp_path)
    expected_labels, expected = predicted(model, test)
    assert np.abs(probabilities - expected).max() <= 1e-3
    assert labels == expected_labels


def _features(n_classes, n=60, width=12, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    X = rng.normal(size=(n, width)) * 3 + 5 + y[:, None] * rng.normal(size=width)
    return X, np.asarray([f"c{k}" for k in y])


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name, options", [
    ("logreg", {}),
    ("linear_svm", {"probability": True}),
    ("linear_svm", {"probability": True, "calibration": "temperature"}),
])
def test_the_exported_head_is_the_estimators_predict_proba(name, options, n_classes):
    X, y = _features(n_classes)
    head = make_head(name, **options).fit(X, y)
    module = _head_module(head, X.shape[1])
    assert _check_head(module, head, X.shape[1]) <= 1e-5


def test_an_ensemble_of_calibrations_is_averaged():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    X, y = _features(3)
    head = make_pipeline(StandardScaler(), CalibratedClassifierCV(LinearSVC(), cv=3)).fit(X, y)
    assert len(head[-1].calibrated_classifiers_) == 3
    assert _check_head(_head_module(head, X.shape[1]), head, X.shape[1]) <= 1e-5


@pytest.mark.parametrize("name, options, named", [
    ("rbf_svm", {"probability": True}, "SVC(kernel='rbf')"),
    ("linear_svm", {}, "LinearSVC (it gives no probabilities)"),
    ("linear_svm", {"probability": True, "calibration": "isotonic"}, "method='isotonic'"),
])
def test_a_head_that_cannot_be_expressed_is_refused_by_name(name, options, named, tmp_path,
                                                            capsys):
    X, y = _features(3)
    model = FittedModel(make_head(name, **options).fit(X, y),
                        featurizer_config={"backbone": "efficientnet_lite0"})
    with pytest.raises(ValueError, match="Supported heads") as error:
        export_onnx(model, tmp_path / "m.onnx")
    assert named in str(error.value)
    assert not (tmp_path / "m.onnx").exists()
    model.save(tmp_path / "m.joblib")
    assert main(["export-model", str(tmp_path / "m.joblib"), str(tmp_path / "m.onnx")]) == 1
    assert named in capsys.readouterr().err


# -- features out of the cache: `featurize export`, `featurize info --brief` -------------------

CONFIGS = [{"backbone": "efficientnet_lite0", "layer": layer, "pooling": "avg",
            "precision": "fp32", "feature_version": 2} for layer in ("blocks.15", "penultimate")]


@pytest.fixture
def cache_file(tmp_path):
    """A real cache file with two configurations; paths with a comma and a non-ASCII letter."""
    from featurize import FeatureCache

    path = tmp_path / "feats.h5"
    cache = FeatureCache(path)
    rng = np.random.default_rng(0)
    for width, config in zip((3, 5), CONFIGS):
        keys = [f"{i:032x}" for i in range(4)]
        cache.write(config, keys, rng.normal(size=(4, width)).astype(np.float32),
                    [f"/data/a,b/é{i}.jpg" for i in range(4)])
    return path


def _entries(path):
    from featurize import FeatureCache

    return {e["config"]["layer"]: e for e in FeatureCache(path).configurations()}


def test_info_brief_gives_one_line_per_configuration(cache_file, capsys):
    assert main(["info", "--brief", str(cache_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted(
        f"{e['id']}  efficientnet_lite0  {layer}  avg  fp32  4 x {e['width']}  0 failures"
        for layer, e in _entries(cache_file).items())


@pytest.mark.parametrize("fmt", ["csv", "npy"])
def test_export_writes_the_rows_with_their_paths_and_keys(cache_file, tmp_path, fmt):
    import pandas as pd

    from featurize import FeatureCache

    entry = _entries(cache_file)["penultimate"]
    keys, paths, features = FeatureCache(cache_file).export(entry["id"])
    out = tmp_path / f"out.{fmt}"
    assert main(["export", str(cache_file), "--out", str(out), "--config",
                 entry["id"][:6]]) == 0
    if fmt == "csv":
        table = pd.read_csv(out, dtype={"key": str})
        got = table[[f"f{i}" for i in range(5)]].to_numpy(np.float32)
    else:
        table = pd.read_csv(tmp_path / "out.rows.csv", dtype={"key": str})
        got = np.load(out)
        assert got.dtype == np.float32
    assert list(table["key"]) == list(keys) and list(table["path"]) == list(paths)
    assert "/data/a,b/é0.jpg" in list(table["path"])
    np.testing.assert_array_equal(got, features)


def test_export_asks_which_configuration_when_there_are_several(cache_file, tmp_path,
                                                                capsys):
    out = tmp_path / "out.csv"
    assert main(["export", str(cache_file), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--config" in err and all(e["id"] in err for e in _entries(cache_file).values())
    assert not out.exists()


def test_parquet_without_pyarrow_names_the_extra(cache_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    out = tmp_path / "out.parquet"
    assert main(["export", str(cache_file), "--out", str(out), "--config",
                 _entries(cache_file)["penultimate"]["id"]]) == 1
    assert "pip install 'featurize[parquet]'" in capsys.readouterr().err
    assert not out.exists()


def test_parquet_export(cache_file, tmp_path):
    pytest.importorskip("pyarrow")  # the parquet extra
    import pandas as pd

    out = tmp_path / "out.parquet"
    entry = _entries(cache_file)["blocks.15"]
    assert main(["export", str(cache_file), "--out", str(out), "--config", entry["id"]]) == 0
    table = pd.read_parquet(out)
    assert list(table.columns) == ["key", "path", "f0", "f1", "f2"] and len(table) == 4
