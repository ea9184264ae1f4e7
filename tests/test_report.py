"""featurize report: diagnostics, the HTML file, and the page in a real browser (#14)."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from classify import diagnostics
from pipelines.cli import main

CHROMIUM = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser",
                                                       "google-chrome"))), None)


# -- diagnostics, on numbers ----------------------------------------------------------------------

def test_mistakes_most_confident_first():
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1, -1])
    p_pred = np.array([0.9, 0.6, 0.8, 0.7, np.nan])
    assert diagnostics.mistakes(y, pred, p_pred).tolist() == [2, 1]
    assert diagnostics.mistakes(y, pred, p_pred, limit=1).tolist() == [2]


def test_label_issues_flag_confident_other_class_lowest_self_confidence_first():
    # class 0 self-confidence mean 0.8, class 1 mean 0.6
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p_true = np.array([0.9, 0.9, 0.9, 0.5, 0.9, 0.9, 0.1, 0.5])
    pred = np.array([0, 0, 0, 1, 1, 1, 0, 0])
    p_pred = np.array([0.9, 0.9, 0.9, 0.5, 0.9, 0.9, 0.9, 0.5])
    rows, thresholds = diagnostics.label_issues(y, pred, p_true, p_pred, 2)
    np.testing.assert_allclose(thresholds, [0.8, 0.6])
    # row 6: predicted 0 with 0.9 >= t0=0.8 -> flagged; row 3: predicted 1 with 0.5 < t1=0.6;
    # row 7: predicted 0 with 0.5 < 0.8
    assert rows.tolist() == [6]


def test_near_duplicates_within_and_across_in_blocks():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 20))
    X[7] = X[3] * 1.001 + 0.001  # a near copy
    other = rng.normal(size=(10, 20))
    other[4] = X[11]
    pairs, n = diagnostics.near_duplicates(X, block=16)
    assert n == 1 and pairs[0][:2] == (3, 7) and pairs[0][2] > 0.99
    pairs, n = diagnostics.near_duplicates(X, other, block=16)
    assert n == 1 and pairs[0][:2] == (11, 4)


def test_embedding_map_shapes():
    rng = np.random.default_rng(0)
    xy, xy2 = diagnostics.embedding_map(rng.normal(size=(30, 5)), rng.normal(size=(4, 5)))
    assert xy.shape == (30, 2) and xy2.shape == (4, 2)
    with pytest.raises(ValueError, match="pca"):
        diagnostics.embedding_map(rng.normal(size=(30, 5)), method="umap?")


# -- the command, on real images ----------------------------------------------------------------

@pytest.fixture(scope="module")
def report(hymenoptera, tmp_path_factory):
    """A model trained on ants/bees files (the ants' folder named ``<script>``, one ant filed
    under bees), reported on a test folder that shares a file with the training data; one
    training file deleted after training."""
    root = tmp_path_factory.mktemp("report")
    ants = sorted((hymenoptera / "train" / "ants").glob("*.jpg"))
    bees = sorted((hymenoptera / "train" / "bees").glob("*.jpg"))
    train, test = root / "train", root / "test"
    for folder, files in (("<script>", ants[:16]), ("bees", bees[:16])):
        (train / folder).mkdir(parents=True)
        for f in files:
            shutil.copy(f, train / folder / f.name)
    mislabelled = train / "bees" / ants[17].name
    shutil.copy(ants[17], mislabelled)
    for folder, files in (("<script>", ants[20:24]), ("bees", bees[20:24])):
        (test / folder).mkdir(parents=True)
        for f in files:
            shutil.copy(f, test / folder / f.name)
    leak = test / "<script>" / ants[0].name  # the same file in train and test
    shutil.copy(ants[0], leak)
    model, cache, out = root / "m.joblib", root / "f.h5", root / "report.html"
    assert main(["train", str(train), "--out", str(model), "--cache", str(cache),
                 "--backbone", "efficientnet_lite0", "--layers", "penultimate",
                 "--device", "cpu", "--num-workers", "0"]) == 0
    gone = train / "<script>" / ants[5].name
    gone.unlink()
    assert main(["report", str(model), str(train), "--test", str(test), "--out", str(out),
                 "--cache", str(cache), "--device", "cpu", "--num-workers", "0"]) == 3  # gone
    return out, out.read_text(encoding="utf-8"), {"mislabelled": mislabelled, "leak": leak,
                                                   "gone": gone, "root": root}


def test_near_duplicates_memory_does_not_grow_with_the_number_of_pairs():
    """2,000 copies of one placeholder among 3,000 images: two million pairs, counted, and the
    best kept as they come (a list of every pair of a block took about 600 MiB)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 8))
    X[:2000] = X[0]
    tracemalloc.start()
    try:
        pairs, n = diagnostics.near_duplicates(X, limit=40)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n >= 2000 * 1999 // 2
    assert len(pairs) == 40 and all(s > 0.999 and i < j for i, j, s in pairs)
    assert peak < 200 * 2**20, peak / 2**20


def test_rows_without_features_are_never_duplicates():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 6))
    X[[4, 9, 17]] = np.nan  # three images that could not be read
    pairs, n = diagnostics.near_duplicates(X)
    assert n == 0 and pairs == []
    pairs, n = diagnostics.near_duplicates(X, X[[2, 9]])
    assert [p[:2] for p in pairs] == [(2, 0)]


def test_vanished_training_files_are_neither_exact_nor_near_duplicates(report, tmp_path):
    """Training files deleted after training: no content key, no features; they are failures,
    not duplicates of each other."""
    from classify import load_model

    root = report[2]["root"]
    train = tmp_path / "train"
    shutil.copytree(root / "train", train)
    model = load_model(root / "m.joblib")
    paths = [str(train / p) for p in model.reports["train_paths"]]  # relative to the folder
    kept = [p for p in paths if Path(p).exists()]
    gone = kept[1:4] + kept[20:22]
    for path in gone:
        Path(path).unlink()
    result = model.report(train, cache=str(root / "f.h5"), device="cpu", num_workers=0)
    assert result.summary["exact duplicates in training data"] == 0
    duplicates = result.sections["duplicates"]
    assert not any(f'data-path="{html.escape(p)}"' in duplicates for p in gone)
    failed = result.sections["failures"]
    assert all(html.escape(p) in failed for p in gone)


def test_the_cv_score_in_the_report_says_it_is_optimistic(report):
    _, text, _ = report
    row = re.search(r"<th>CV balanced_accuracy</th><td>([^<]*)</td>", text).group(1)
    assert "optimistic: the best of" in row and "--nested" in row


def test_a_fine_tuned_checkpoint_is_refused_by_the_report_for_what_it_is(hymenoptera, tmp_path,
                                                                        capsys):
    import torch

    from featurize.finetune import FORMAT

    checkpoint = tmp_path / "finetuned.pt"
    torch.save({"format": FORMAT, "backbone": "efficientnet_lite0",
                "head_weight": torch.zeros(2, 1280), "head_bias": torch.zeros(2),
                "classes": ["ants", "bees"], "best_epoch": 1, "seed": 0,
                "val_balanced_accuracy": 0.9, "history": [], "val_paths": []}, checkpoint)
    code = main(["report", str(checkpoint), str(hymenoptera / "train"), "--out",
                 str(tmp_path / "r.html"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "fine-tuned" in err and str(checkpoint) in err and "older" not in err
    assert not (tmp_path / "r.html").exists()


def test_report_is_self_contained_and_escaped(report):
    out, text, _ = report
    assert text.startswith("<!DOCTYPE html>")
    # no external resource: every image is inline, no link, no script file
    page = text.rsplit("<script>", 1)[0]  # without the page script (it builds <img> tags)
    images = re.findall(r'<img src="([^"]*)"', page)
    assert images and all(src.startswith("data:image/jpeg;base64,") for src in images)
    assert "href=" not in text and "<link" not in text and "<script src" not in text
    assert "http://" not in text and "https://" not in text
    # the class named <script> stays text
    assert "&lt;script&gt;" in text
    assert text.count("<script") == 2  # ours: the map thumbnails (JSON) and the page script
    assert out.stat().st_size < 3_000_000


def test_report_shows_what_it_found(report):
    _, text, files = report
    # the ant filed under bees is among the likely label errors
    gallery = text.split("id='gallery-label-issues'")[1].split("</div>\n")[0]
    assert str(files["mislabelled"]) in text and f'data-path="{files["mislabelled"]}"' in gallery
    # the shared file is counted as an identical train/test file and shown as a leak
    assert re.search(r"train/test leaks \(identical files\)</th><td>1<", text)
    leaks = text.split("id='leaks'")[1]
    assert f'data-path="{html.escape(str(files["leak"]))}"' in leaks
    # the deleted file: listed with its reason, no crash
    failed = text.split("<h2>Failed files</h2>")[1]
    assert f"{html.escape(str(files['gone']))}</td><td>not readable any more: file not found" \
        in failed


def test_a_missing_image_is_a_placeholder_with_the_reason(tmp_path):
    from classify.html_report import _figure

    figure = _figure(tmp_path / "<b>gone.jpg", ["given: x"])
    assert "image unavailable: file not found" in figure and "<img" not in figure
    assert "&lt;b&gt;gone.jpg" in figure and "<b>" not in figure


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_a_real_browser(report, tmp_path):
    out, _, files = report
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=5000", "--dump-dom", out.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    # the page script ran to its end, with no uncaught error on the console
    assert 'data-ready="yes"' in dom
    assert not re.search(r"Uncaught|CONSOLE.*(Error|error)", proc.stderr), proc.stderr[-2000:]
    # the galleries hold the expected images, as decoded <img> elements
    label_issues = dom.split('id="gallery-label-issues"')[1].split("</div>")[0]
    assert f'data-path="{files["mislabelled"]}"><img src="data:image/jpeg;base64,' in label_issues
    assert dom.count("<circle") > 20 and dom.count("<rect") >= 9
