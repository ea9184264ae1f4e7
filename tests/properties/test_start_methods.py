"""featurize runs where its users run it: under every start method, inside scikit-learn's
parallel searches, from a plain script without a ``__main__`` guard.

featurize starts no process of its own (images are decoded in threads), so none of these can
trip over multiprocessing's bootstrapping, pickling or daemonic-process rules.
"""

from __future__ import annotations

import multiprocessing
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featurize import CNNFeaturizer, load_image_folder

ROOT = Path(__file__).resolve().parents[2]
METHODS = [m for m in ("fork", "spawn", "forkserver")
           if m in multiprocessing.get_all_start_methods()]
#: what torch's DataLoader and multiprocessing print when worker processes go wrong
WORKER_TROUBLE = re.compile(r"DataLoader|worker|bootstrapping|freeze_support|pickl",
                            re.IGNORECASE)
#: torch's own warnings about worker processes and pickled modules
TORCH_TROUBLE = re.compile(r"DataLoader|pickl|torch", re.IGNORECASE)


@pytest.fixture(scope="module")
def hundred_images(hymenoptera, tmp_path_factory) -> Path:
    """120 real JPEGs in class folders, one of them nested a level deeper."""
    root = tmp_path_factory.mktemp("images")
    for cls in ("ants", "bees"):
        files = sorted((hymenoptera / "train" / cls).glob("*.jpg"))[:60]
        for i, src in enumerate(files):
            dest = root / cls / ("batch1" if i % 7 == 0 else "") / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest)
    return root


def run_script(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` as a plain script file (as a user would: no ``__main__`` guard)."""
    script = cwd / "user_script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], cwd=cwd, check=False, capture_output=True,
                          text=True, timeout=timeout,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("method", METHODS)
def test_every_entry_point_runs_under_each_start_method(method, hundred_images, tmp_path):
    """The function, the estimator and ``featurize extract``, on 120 images, in a script that
    sets the start method and has no ``__main__`` guard (macOS/Windows: spawn; Linux from
    Python 3.14: forkserver)."""
    result = run_script(f"""
        import multiprocessing
        multiprocessing.set_start_method({method!r}, force=True)
        import numpy as np
        from featurize import CNNFeaturizer, extract_features, load_image_folder
        from pipelines import cli

        data = load_image_folder({str(hundred_images)!r})
        assert len(data.paths) >= 100, len(data.paths)
        X = extract_features(data.paths)
        Z = CNNFeaturizer().fit(data.paths).transform(data.paths)
        assert X.shape == Z.shape == (len(data.paths), 1280), (X.shape, Z.shape)
        assert np.isfinite(X).all()
        np.testing.assert_allclose(X, Z, rtol=1e-5, atol=1e-5)
        code = cli.main(["extract", {str(hundred_images)!r}, "--cache", "feats.h5"])
        assert code == 0, code
        print("ran", len(data.paths), "images")
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ran {120} images" in result.stdout
    assert not WORKER_TROUBLE.search(result.stderr), result.stderr[-3000:]
    from featurize.storage.cache import FeatureCache

    (config,) = FeatureCache(tmp_path / "feats.h5").configurations()
    assert config["count"] == 120


@pytest.mark.parametrize("shared_cache", [False, True], ids=["no-cache", "shared-cache"])
def test_grid_search_and_cross_val_score_with_two_jobs(shared_cache, hundred_images, tmp_path):
    """``n_jobs=2`` runs each fit in a loky worker process: the featurizer works there with 80
    images per fit; warnings are recorded, not filtered, and none comes from torch."""
    data = load_image_folder(hundred_images)
    cache = str(tmp_path / "shared.h5") if shared_cache else None
    pipe = make_pipeline(CNNFeaturizer(backbone="resnet18", weights=None, device="cpu",
                                       layer="layer2", cache=cache),
                         StandardScaler(), LogisticRegression(max_iter=300))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = cross_val_score(pipe, data.paths, data.target, cv=3, n_jobs=2)
        grid = GridSearchCV(pipe, {"logisticregression__C": [0.01, 1.0]}, cv=3, n_jobs=2)
        grid.fit(data.paths, data.target)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert len(grid.cv_results_["mean_test_score"]) == 2
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()
    assert grid.predict(data.paths[:5]).shape == (5,)
    # not filtered: none of torch's warnings (worker processes, pickling of modules) was raised
    from_torch = [f"{w.filename}: {w.message}" for w in caught
                  if "torch" in str(w.filename) or TORCH_TROUBLE.search(str(w.message))]
    assert not from_torch, from_torch
    if shared_cache:
        from featurize.storage.cache import FeatureCache

        (config,) = FeatureCache(cache).configurations()
        assert config["count"] == len(data.paths)


def readme_quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart (Python)"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.parametrize("method", [m for m in ("spawn", "forkserver") if m in METHODS])
def test_readme_quickstart_runs_as_a_script_without_main_guard(method, tmp_path):
    code = (f"import multiprocessing\nmultiprocessing.set_start_method({method!r}, force=True)\n"
            + readme_quickstart())
    result = run_script(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    score = float(result.stdout.strip().splitlines()[-1])
    assert 0.9 <= score <= 1.0
    assert not WORKER_TROUBLE.search(result.stderr), result.stderr[-3000:]



def test_featurize_starts_no_process(some_jpegs, tmp_path):
    """Not even one of a dependency's (OpenVINO's import sends telemetry from a new process)."""
    result = run_script(f"""
        import multiprocessing.process
        started = []
        multiprocessing.process.BaseProcess.start = lambda self: started.append(self.name)
        from featurize import CNNFeaturizer, extract_features

        X = extract_features({some_jpegs!r})
        CNNFeaturizer().fit().transform({some_jpegs!r})
        assert not started, started
        print("no process started")
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no process started" in result.stdout
