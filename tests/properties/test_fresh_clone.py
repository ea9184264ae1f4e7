"""A fresh clone runs its main job with nothing beside it.

The README's first command is read from the README itself and run, as written, in a copy of
this checkout in a temporary folder that has no ``shared/`` beside or above it, in a virtual
environment of its own (so the editable install it makes points at the copy and leaves this
checkout's installation alone). Packages already installed here are visible to that
environment and pip is kept offline, so the test needs no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featurize import load_image, load_image_folder
from featurize.images.datasets import sample_images

ROOT = Path(__file__).resolve().parents[2]
#: The README promises the main command finishes in about 30 s on 2 cores; the issue allows 2 min.
MAIN_COMMAND_BUDGET_S = 600  # generous: a failing test here means "broken", not "slow"


def readme_main_command() -> str:
    """The first command of the README's "Two commands for a new machine" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands for a new machine", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.DOTALL).group(1).strip()


def test_sample_images_are_a_small_licensed_folder_per_class_tree():
    sample = sample_images()
    train, test = load_image_folder(sample.train), load_image_folder(sample.test)
    assert train.target_names == test.target_names == sample.target_names
    assert len(sample.target_names) >= 3
    assert not train.skipped and not test.skipped
    counts = [train.target.tolist().count(k) for k in range(len(train.target_names))]
    assert min(counts) >= 20 and min(test.target.tolist().count(k)
                                     for k in range(len(test.target_names))) >= 10
    files = [Path(p) for p in train.paths + test.paths]
    assert sum(f.stat().st_size for f in files) < 3_500_000
    assert max(max(load_image(f).size) for f in files[::10]) <= 512
    assert "CC0" in sample.license.read_text() and "CC0" in sample.DESCR
    assert not set(map(os.path.basename, train.paths)) & set(map(os.path.basename, test.paths))


def test_readme_main_command_uses_no_data_outside_the_clone():
    command = readme_main_command()
    assert "shared" not in command and "featurize" in command


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """This checkout's files (tracked, and untracked but not ignored), alone in a temp folder."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("this test needs git and a git checkout of featurize")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout
    dest = tmp_path_factory.mktemp("fresh") / "featurize"
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    assert not any((folder / "shared").exists() for folder in dest.parents)
    return dest


def test_readme_main_command_runs_in_a_fresh_clone(clone, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("FEATURIZE_", "PYTHONPATH", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               # offline: every requirement is already installed; build with what is installed
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", readme_main_command()], cwd=clone, env=env, text=True,
                          check=False, capture_output=True, timeout=MAIN_COMMAND_BUDGET_S)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # the clone's own code and sample ran, not this checkout's
    assert f"Sample images: {clone / 'featurize' / 'sample_data'}" in out, out[:2000]
    found = re.search(r"balanced_accuracy\s+([0-9.]+)\n", out.split("$ featurize evaluate")[1])
    assert found and float(found.group(1)) >= 0.8, out[-3000:]
    assert "Saved the model to demo-model.joblib" in out
    assert "Next, on a folder of your own" in out
    assert (clone / "demo-model.joblib").is_file() and (clone / "demo-features.h5").is_file()
    print(f"README main command in a fresh clone: {seconds:.0f} s")
