"""featurize report: diagnostics, the sections' data, the HTML file, and the page in a real
browser."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classify import diagnostics
from classify.html_report import extra_blocks
from classify.report_data import Figures, PathNames
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
    # without a test folder, the answer is the out-of-fold score, on every training image
    assert re.fullmatch(r"Balanced accuracy [01]\.\d{4} out of fold on the training data: "
                        r"33 images", result.headline)
    shown = ["train/" + Path(p).relative_to(train).as_posix() for p in gone]
    duplicates = result.sections["duplicates"]
    assert not any(f'data-path="{html.escape(p)}"' in duplicates for p in shown)
    failed = result.sections["failures"]
    assert all(f"<td>{html.escape(p)}</td><td>not readable any more: file not found" in failed
               for p in shown)


def test_the_cv_score_in_the_report_says_it_is_optimistic(report):
    _, text, _ = report
    row = re.search(r"<th>CV balanced_accuracy</th><td>([^<]*)</td>", text).group(1)
    assert "optimistic: the best of" in row and "--nested" in row


def test_a_fine_tuned_checkpoint_is_refused_by_the_report_for_what_it_is(hymenoptera, tmp_path,
                                                                        capsys):
    import torch

    from featurize.finetuning.finetune import FORMAT

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


def _without_images(text: str) -> str:
    return re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]*", "data:", text)


def _absolute_paths_of_this_machine(extra=()) -> list[str]:
    """Folders of the machine that writes a report: none may appear in it."""
    here = Path(__file__).resolve().parents[2]
    return [str(p) for p in (tempfile.gettempdir(), Path.home(), os.getcwd(), here,
                             here.parent, *extra)]


def test_report_is_self_contained_and_escaped(report):
    out, text, files = report
    assert text.startswith("<!DOCTYPE html>")
    # no external resource: every image is inline, no style sheet or script file
    page = text.rsplit("<script>", 1)[0]  # without the page script (it builds <img> tags)
    images = re.findall(r'<img src="([^"]*)"', page)
    assert images and all(src.startswith("data:image/jpeg;base64,") for src in images)
    assert "<link" not in text and "<script src" not in text
    assert "http://" not in text and "https://" not in text and "file:" not in text
    # links point to the files relative to the report's folder, beside the data folders
    links = re.findall(r'href="([^"]*)"', text)
    assert links and all(link.startswith(("train/", "test/")) for link in links)
    assert all((out.parent / html.unescape(link).replace("%3C", "<").replace("%3E", ">"))
               .is_file() for link in links if "gone" not in link)
    # no absolute path of the machine that wrote it: the report can be shared
    plain = _without_images(text)
    for folder in _absolute_paths_of_this_machine([files["root"]]):
        assert folder not in plain, folder
    # the class named <script> stays text
    assert "&lt;script&gt;" in text
    assert text.count("<script") == 2  # ours: the map thumbnails (JSON) and the page script
    assert out.stat().st_size < 3_000_000


def test_report_shows_what_it_found(report):
    _, text, files = report
    root = files["root"]

    def shown(path):
        return html.escape(Path(path).relative_to(root).as_posix())

    # the ant filed under bees is among the likely label errors
    gallery = text.split('id="gallery-label-issues"')[1].split("</div>\n")[0]
    assert f'data-path="{shown(files["mislabelled"])}"' in gallery
    # the shared file is counted as an identical train/test file and shown as a leak
    assert re.search(r"train/test leaks \(identical files\)</th><td>1<", text)
    leaks = text.split('id="leaks"')[1]
    assert f'data-path="{shown(files["leak"])}"' in leaks
    assert "1 pair with cosine" in text and "1 identical file<" in text  # singular, not "1 pairs"
    # the deleted file: listed with its reason, no crash
    failed = text.split("<h2>Failed files</h2>")[1]
    assert f"<td>{shown(files['gone'])}</td><td>not readable any more: file not found" in failed


def test_report_leads_with_the_answer(report):
    """The test score, with its number of images, before every section; the out-of-fold
    score under it."""
    _, text, _ = report
    head = text.split("<h2>")[0]
    box = head.split('<div class="headline" id="headline">')[1].split('<p class="caps">')[0]
    assert re.search(r"Balanced accuracy <span class=\"value\">[01]\.\d{4}</span>", box)
    assert "on the test folder: 9 images" in box
    assert "Cross-validated (out of fold) on 33 training images" in box


def test_per_class_averages_stay_out_of_the_sortable_rows(report):
    _, text, _ = report
    table = text.split("<b>Per class</b>")[1].split("</table>")[0]
    body, foot = table.split("<tbody>")[1].split("</tbody>")[0], table.split("<tfoot>")[1]
    assert 'class="sortable"' in table
    assert "avg" not in body and body.count("<tr>") == 2  # the two classes
    assert "<th>macro avg</th>" in foot and "<th>weighted avg</th>" in foot


def test_a_missing_image_is_a_placeholder_with_the_reason(tmp_path):
    from classify.html_report import environment

    figures = Figures(PathNames([tmp_path]))
    figure = figures(tmp_path / "<b>gone.jpg", ["given: x"])
    assert figure.src is None and figure.reason == "file not found"
    text = environment().get_template("macros.html.j2").module.figure(figure)
    assert "image unavailable: file not found" in text and "<img" not in text
    assert f"{tmp_path.name}/&lt;b&gt;gone.jpg" in text and "<b>" not in text
    assert str(tmp_path) not in text


def test_paths_are_shown_inside_the_data_folders(tmp_path):
    train, test = tmp_path / "train", tmp_path / "test"
    names = PathNames([train, test])
    assert names.show(train / "ants" / "1.jpg") == "train/ants/1.jpg"
    assert names.href(test / "a b" / "<x>.jpg") == "test/a%20b/%3Cx%3E.jpg"
    assert names.linked
    assert names.show("/elsewhere/y.jpg") == "y.jpg" and names.href("/elsewhere/y.jpg") is None
    assert names.scrub(f"cannot read {train / 'ants' / '1.jpg'}") == "cannot read train/ants/1.jpg"
    assert names.scrub(f"see {tmp_path / 'model.joblib'}") == "see model.joblib"
    # data folders that are not siblings: shown by their names, not linked
    apart = PathNames([tmp_path / "a" / "images", tmp_path / "b" / "test"])
    assert apart.show(tmp_path / "b" / "test" / "c" / "1.jpg") == "test/c/1.jpg"
    assert not apart.linked and apart.href(tmp_path / "b" / "test" / "c" / "1.jpg") is None


def test_every_template_and_static_file_is_package_data():
    """A wheel carries what the report reads: each file of classify/templates and
    classify/static matches a pattern of pyproject's package data (checked by listing a built
    wheel: `pip wheel . --no-deps`)."""
    import glob

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    packaged = {path for pattern in config["tool"]["setuptools"]["package-data"]["classify"]
                for path in glob.glob(pattern, root_dir=root / "classify")}  # as setuptools
    files = {p.relative_to(root / "classify").as_posix()
             for folder in ("templates", "static") for p in (root / "classify" / folder).rglob("*")
             if p.is_file()}
    assert "templates/sections/scores.html.j2" in files and "static/report.css" in files
    assert files <= packaged, sorted(files - packaged)


def test_confused_pairs_most_frequent_first():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -1, 0])
    pred = np.array([1, 1, 0, 0, 1, 0, 1, 1, 2, 1, -1])
    assert diagnostics.confused_pairs(y, pred, 3) == [(0, 1, 2), (2, 1, 2), (1, 0, 1),
                                                      (2, 0, 1)]
    assert diagnostics.confused_pairs(y, pred, 3, limit=1) == [(0, 1, 2)]
    assert diagnostics.confused_pairs(y, y, 3) == []


def test_extra_sections_are_data_shown_as_text():
    table = pd.DataFrame({"accuracy": [0.91234, 0.8]},
                         index=pd.Index(["<b>a</b>", "b"], name="method"))
    blocks = extra_blocks(["use <b>a</b>", table])
    assert [b["kind"] for b in blocks] == ["text", "table"]
    with pytest.raises(TypeError, match="DataFrame"):
        extra_blocks(object())
    from classify.html_report import environment

    text = environment().get_template("sections/extra.html.j2").render(s=blocks)
    assert "<p>use &lt;b&gt;a&lt;/b&gt;</p>" in text and "<b>" not in text
    assert "<th>&lt;b&gt;a&lt;/b&gt;</th><td>0.9123</td>" in text
    assert "<th>method</th><th>accuracy</th>" in text


def test_the_comparison_with_fine_tuning_is_a_section_of_data(tmp_path):
    from classify.html_report import environment
    from pipelines.cmd_compare import report_section

    rows = [("features + heads", 0.91, 0.92, 30.4, "a.joblib"),
            ("fine-tuning", 0.89, 0.9, 300.0, "b.pt")]
    section = report_section(rows, "Use <features + heads>", tmp_path / "test")
    (content,) = section.values()
    text = environment().get_template("sections/extra.html.j2").render(s=extra_blocks(content))
    assert "<p>Use &lt;features + heads&gt; (test folder test)</p>" in text
    assert "<tr><th>fine-tuning</th><td>0.8900</td><td>0.9000</td><td>300 s</td></tr>" in text
    assert str(tmp_path) not in text


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_a_real_browser(report, tmp_path):
    out, text, files = report
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=5000", "--dump-dom", out.as_uri()],
        check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    # the page script ran to its end, with no uncaught error on the console
    assert 'data-ready="yes"' in dom
    assert not re.search(r"Uncaught|CONSOLE.*(Error|error)", proc.stderr), proc.stderr[-2000:]
    # the headline comes first
    assert dom.index('id="headline"') < dom.index("<h2>")
    # the confusion matrices are heat maps: every cell shaded, right in blue, wrong in red
    for heat in re.findall(r'<table class="heat" id="heat-\d">(.*?)</table>', dom, re.DOTALL):
        shades = re.findall(r'<td style="background: ?rgba\((\d+), ?(\d+), ?(\d+), ?([\d.]+)\)',
                            heat)
        assert len(shades) == 4  # 2 classes x 2
        assert {s[:3] for s in shades} <= {("31", "119", "180"), ("214", "39", "40")}
        assert any(float(s[3]) > 0.5 for s in shades)
    # the most confused pairs, with their thumbnails decoded as <img> elements
    confused = dom.split('id="confused-train"')[1].split("</ol>")[0]
    assert re.search(r"predicted as \w+</span>: \d+ images? \(\d+% of", confused)
    assert re.search(r'<a href="train/[^"]+"><img src="data:image/jpeg;base64,', confused)
    # the galleries hold the expected images
    label_issues = dom.split('id="gallery-label-issues"')[1].split("</div>")[0]
    mislabelled = Path(files["mislabelled"]).relative_to(files["root"]).as_posix()
    assert (f'data-path="{mislabelled}"><a href="{mislabelled}"><img src="data:image/jpeg;'
            f'base64,') in label_issues
    assert dom.count("<circle") > 20 and dom.count("<rect") >= 9
    # neither the file nor the page as the browser built it names a folder of this machine
    for page in (text, dom):
        plain = _without_images(page)
        for folder in _absolute_paths_of_this_machine([files["root"]]):
            assert folder not in plain, folder
