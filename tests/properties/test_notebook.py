"""notebooks/ants_vs_bees.ipynb runs top to bottom in a fresh kernel and tells its story.

The notebook is executed in memory (the committed file, with its rendered outputs, is never
rewritten), with cwd notebooks/ and a fresh feature cache in a temporary folder, so this is the
cold run a new user gets: about 2-3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "ants_vs_bees.ipynb"
CELL_TIMEOUT_S = 900  # the feature extraction cell, on a slow machine
MIN_VAL_ACCURACY = 0.94


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    return output.get("data", {}).get("text/plain", "")


def _execute(notebook: Path, env: dict) -> nbformat.NotebookNode:
    """Run ``notebook`` in memory, with cwd its folder and ``env`` set (None: unset)."""
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("no 'python3' Jupyter kernel installed (pip install ipykernel)")
    nb = nbformat.read(notebook, as_version=4)
    env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline",
           # the kernel imports featurize/classify from this checkout, installed or not
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
           } | env
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        if value is None:
            mp.delenv(key, raising=False)
        else:
            mp.setenv(key, value)  # inherited by the kernel process
    try:
        client = nbclient.NotebookClient(
            nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
            resources={"metadata": {"path": str(notebook.parent)}},
        )
        client.execute()  # raises CellExecutionError on the first failing cell
    finally:
        mp.undo()
    return nb


@pytest.fixture(scope="module")
def executed(tmp_path_factory, hymenoptera):
    """The notebook after a full run, and the committed file's digest before and after."""
    before = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    nb = _execute(NOTEBOOK, {
        "FEATURIZE_DATA": str(hymenoptera),
        "FEATURIZE_CACHE": str(tmp_path_factory.mktemp("notebook") / "feats.h5"),
    })
    after = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    return nb, before, after


def test_the_committed_notebook_is_not_rewritten(executed):
    _, before, after = executed
    assert before == after


def test_no_cell_errored(executed):
    nb, _, _ = executed
    errors = [(i, out.get("ename"), out.get("evalue"))
              for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert errors == []
    assert all(cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code")


def test_every_figure_cell_draws_a_figure(executed):
    nb, _, _ = executed
    figure_cells = [cell for cell in nb.cells if cell.cell_type == "code"
                    and "figure" in cell.metadata.get("tags", [])]
    assert len(figure_cells) >= 5  # samples, layer scores, confusion, mistakes, learning curve
    for cell in figure_cells:
        pngs = [out for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
        assert pngs, f"no image/png output from the figure cell:\n{cell.source[:300]}"
    all_pngs = sum("image/png" in out.get("data", {})
                   for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert all_pngs >= len(figure_cells)


def test_final_val_accuracy(executed):
    nb, _, _ = executed
    text = "\n".join(_text(out) for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []))
    found = re.findall(r"final val accuracy: ([0-9.]+)", text)
    assert found, "the notebook did not print 'final val accuracy: ...'"
    assert float(found[-1]) >= MIN_VAL_ACCURACY


def test_committed_notebook_has_its_outputs():
    """The file is committed executed (figures visible on GitHub) and stays small."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code), "commit the notebook executed"
    assert any("image/png" in out.get("data", {}) for cell in code for out in cell.outputs)
    assert NOTEBOOK.stat().st_size < 3_000_000


def test_without_the_ants_bees_data_it_runs_on_the_bundled_sample(tmp_path):
    """From a fresh clone with nothing beside it, the notebook falls back to the sample images."""
    copy = tmp_path / "notebooks" / NOTEBOOK.name
    copy.parent.mkdir()
    shutil.copy(NOTEBOOK, copy)
    assert not any((folder / "shared").exists() for folder in copy.parents)
    nb = _execute(copy, {"FEATURIZE_DATA": None, "FEATURIZE_CACHE": str(tmp_path / "feats.h5")})
    text = "\n".join(_text(out) for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []))
    assert "using the sample images bundled with featurize" in text
    assert float(re.findall(r"final val accuracy: ([0-9.]+)", text)[-1]) >= 0.8
