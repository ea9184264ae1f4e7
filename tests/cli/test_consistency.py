"""One command line: the same exit codes, flags, help, progress and notes in every command, and
commands that are thin shells over the library (no command imports another)."""

from __future__ import annotations

import argparse
import ast
import json
import shutil
from pathlib import Path

import grimp
import numpy as np
import pytest

from pipelines.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ["--device", "cpu", "--num-workers", "0"]
TINY = ["--backbone", "mobilenet_v3_small", "--weights", "none", "--layers", "penultimate",
        "--precision", "fp32", "--folds", "2", "--repeats", "1", "--jobs", "1", "--heads",
        "logreg", *RUNTIME]


def _subcommands() -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# -- thin commands -----------------------------------------------------------------------------
# (the layers and the absence of import cycles are import-linter contracts: pyproject.toml,
# tests/properties/test_layers.py)

def test_commands_never_import_commands_nor_parse_the_command_line_again():
    graph = grimp.build_graph("pipelines")  # import-linter's graph: every import statement
    commands = {m for m in graph.modules if m.startswith("pipelines.cmd_")}
    assert [(m, t) for m in sorted(commands) for t in graph.find_modules_directly_imported_by(m)
            if t in commands or t == "pipelines.cli"] == []
    for path in sorted((ROOT / "pipelines").glob("cmd_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        called = {node.func.attr if isinstance(node.func, ast.Attribute) else
                  getattr(node.func, "id", None)
                  for node in ast.walk(tree) if isinstance(node, ast.Call)}
        assert not called & {"build_parser", "parse_args", "main"}, path.name


# -- help, defaults and one vocabulary ---------------------------------------------------------

def test_every_option_has_help_that_states_its_default():
    for name, parser in _subcommands().items():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = f"featurize {name} {action.option_strings[0]}"
            assert action.help, f"{flag} has no help"
            flag_only = action.nargs == 0
            if not (flag_only or action.required):
                assert "default" in action.help, f"{flag}: the help does not state the default"


@pytest.mark.parametrize("command, old, new", [
    ("train", ["--num-workers", "3"], ["--workers", "3"]),
    ("train", ["--layers", "a,b"], ["--layer", "a", "--layer", "b"]),
    ("train", ["--poolings", "avg,max"], ["--pooling", "avg", "--pooling", "max"]),
    ("train", ["--json"], ["--format", "json"]),
    ("sweep", ["--poolings", "avg,gem"], ["--pooling", "avg", "--pooling", "gem"]),
    ("evaluate", ["--json"], ["--format", "json"]),
    ("predict", ["--num-workers", "2"], ["--workers", "2"]),
    ("report", ["--num-workers", "2"], ["--workers", "2"]),
    ("extract", ["--layers", "a,b", "--num-workers", "1"],
     ["--layer", "a", "--layer", "b", "--workers", "1"]),
    ("extract", ["--json"], ["--format", "json"]),
    ("info", ["--json"], ["--format", "json"]),
])
def test_old_flag_spellings_are_aliases_of_the_new_ones(command, old, new, tmp_path):
    folder = tmp_path / "data"
    (folder / "a").mkdir(parents=True)
    model = tmp_path / "m.joblib"
    model.write_bytes(b"x")
    positional = {"train": [str(folder), "--out", str(tmp_path / "o.joblib")],
                  "sweep": [str(folder)], "evaluate": [str(model), str(folder)],
                  "predict": [str(model), str(folder)],
                  "report": [str(model), str(folder), "--out", str(tmp_path / "r.html")],
                  "extract": [str(folder)], "info": [str(model)]}[command]
    parser = build_parser()
    assert (vars(parser.parse_args([command, *positional, *old]))
            == vars(parser.parse_args([command, *positional, *new])))


# -- exit codes ---------------------------------------------------------------------------------

def _code(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: usage errors
        return int(exc.code)


def test_a_missing_input_folder_is_the_same_usage_error_in_every_command(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    model = tmp_path / "m.joblib"
    model.write_bytes(b"not read: the folder is checked first")
    out = tmp_path / "out"
    for argv in (["train", missing, "--out", out],
                 ["sweep", missing],
                 ["evaluate", model, missing],
                 ["predict", model, missing, "--out", tmp_path / "p.csv"],
                 ["report", model, missing, "--out", out],
                 ["extract", missing, "--cache", tmp_path / "c.h5"]):
        capsys.readouterr()
        assert _code(argv) == 2, argv[0]
        assert str(missing) in capsys.readouterr().err, argv[0]
    assert not (tmp_path / "p.csv").exists()


@pytest.fixture(scope="module")
def messy(tmp_path_factory, hymenoptera):
    """Two classes of real photos, with a text file and a truncated JPEG among them."""
    root = tmp_path_factory.mktemp("messy")
    for name in ("ants", "bees"):
        (root / name).mkdir()
        for src in sorted((hymenoptera / "train" / name).glob("*.jpg"))[:5]:
            shutil.copy(src, root / name / src.name)
    (root / "ants" / "notes.txt").write_text("not an image")
    photo = sorted((hymenoptera / "train" / "bees").glob("*.jpg"))[9].read_bytes()
    (root / "bees" / "cut.jpg").write_bytes(photo[:len(photo) // 3])
    return root


def test_skipped_and_unreadable_files_are_listed_and_the_exit_code_says_so(messy, tmp_path,
                                                                          capsys):
    capsys.readouterr()
    code = main(["train", str(messy), "--out", str(tmp_path / "m.joblib"), "--json", *TINY])
    assert code == 3
    captured = capsys.readouterr()
    listed = [line.strip() for line in captured.err.splitlines() if line.startswith("  ")]
    assert any(line.startswith(str(messy / "ants" / "notes.txt") + ": not an image extension")
               for line in listed)
    assert any(line.startswith(str(messy / "bees" / "cut.jpg") + ": truncated")
               for line in listed)
    failures = json.loads(captured.out)["failures"]
    assert {Path(f["path"]).name for f in failures} == {"notes.txt", "cut.jpg"}
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "m.joblib"), str(messy), *RUNTIME]) == 3
    assert str(messy / "bees" / "cut.jpg") in capsys.readouterr().err


def test_warnings_are_one_line_notes_that_name_classes(messy, tmp_path, capsys):
    """Nested cross-validation on a class of two images leaves it one image in each outer
    training part: the inner selection's warning names the class, on one line, without a
    source path."""
    tree = tmp_path / "tree"
    shutil.copytree(messy, tree)
    (tree / "wasps").mkdir()
    for src in sorted((messy / "ants").glob("*.jpg"))[:2]:
        shutil.copy(src, tree / "wasps" / src.name)
    capsys.readouterr()
    assert main(["train", str(tree), "--out", str(tmp_path / "m.joblib"), "--nested",
                 *TINY]) == 3
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "single sample" in line]
    assert notes and all(line.startswith("note: ") for line in notes)
    assert all("'wasps'" in line and "[2]" not in line for line in notes)
    assert "Warning:" not in err and ".py:" not in err


# -- progress -----------------------------------------------------------------------------------

def test_progress_names_the_backbone_in_extract_and_report(messy, tmp_path, capsys):
    capsys.readouterr()
    cache = tmp_path / "c.h5"
    assert main(["extract", str(messy / "ants"), "--cache", str(cache), "--backbone",
                 "mobilenet_v3_small", "--weights", "none", "--precision", "fp32",
                 "--progress", "log", *RUNTIME]) == 0
    assert "extract mobilenet_v3_small:" in capsys.readouterr().err
    model = tmp_path / "m.joblib"
    assert main(["train", str(messy), "--out", str(model), *TINY]) == 3
    capsys.readouterr()
    assert main(["report", str(model), str(messy), "--out", str(tmp_path / "r.html"),
                 *RUNTIME]) == 0
    err = capsys.readouterr().err
    assert "featurize mobilenet_v3_small:" in err and "100.0%" in err


def test_cross_validation_notes_name_classes_not_codes():
    from classify import SmallClassWarning, cross_validate_head

    X = np.random.default_rng(0).normal(size=(13, 4))
    y = np.array(["ants"] * 6 + ["bees"] * 6 + ["wasps"])
    with pytest.warns(SmallClassWarning, match="'wasps'"):
        result = cross_validate_head("logreg", X, y, n_splits=3, n_repeats=1)
    notes = " ".join(result.notes)
    assert "'wasps'" in notes and "[2]" not in notes
