"""The layer contract of the three packages (``[tool.importlinter]`` in pyproject.toml).

``featurize`` imports neither ``classify`` nor ``pipelines`` (but for the lazy
``featurize.load_model``), ``classify`` does not import ``pipelines``, featurize's
sub-packages import only those below them, and no package has an import cycle, not even
through an import inside a function. Checked by import-linter on the real tree, and on a
copy with a deliberately added import, which must fail it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("featurize", "classify", "pipelines")
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True, no_logo=True))")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(root), "PATH": ""},
                          check=False)


def test_the_tree_keeps_every_contract():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and "BROKEN" not in done.stdout


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the three packages and their contract."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "sample_data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_import(module: Path, line: str) -> None:
    module.write_text(module.read_text() + f"\n\ndef _added():\n    {line}  # noqa\n")


@pytest.mark.parametrize("module,line,contract", [
    # a circle inside a sub-package: keys <- cache <- cache_tools
    ("featurize/storage/keys.py", "from featurize.storage import cache_tools",
     "no import cycle"),
    # a circle between sub-packages: storage imported by extraction, which it now imports
    ("featurize/storage/keys.py", "from featurize.extraction import loop",
     "featurize's sub-packages"),
    # classify under pipelines, which imports it
    ("classify/metrics.py", "import pipelines.cli", "pipelines sits on classify"),
])
def test_a_deliberately_added_circle_breaks_the_contract(tree, module, line, contract):
    assert _lint(tree).returncode == 0  # the copy keeps the contract, as the tree does
    _add_import(tree / module, line)
    done = _lint(tree)
    assert done.returncode == 1, done.stdout + done.stderr
    broken = [row for row in done.stdout.splitlines() if " BROKEN" in row]
    assert any(row.startswith(contract) for row in broken), done.stdout
    assert Path(module).stem in done.stdout  # the module that imports
