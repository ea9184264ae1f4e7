"""A self-contained HTML report of a model on its data, with the images in it.

:func:`build_report` computes the diagnostics of what is already computed (the model's out-of-fold
predictions and confidences, the features, the content keys of the files: one :class:`Split`
per data split, gathered by :func:`classify.folders.report_folder`) and :func:`render_report`
writes one HTML file: summary, confusion matrix and per-class table, galleries of mistakes and
likely label errors, near-duplicates and train/test leaks, a 2-D map of the embeddings and the
failed files. Thumbnails are inlined as small JPEG data URIs, scripts and styles are inline: the
file opens offline. Galleries are capped (the caps are stated in the report), so a 10,000-image
data set still gives a file a browser opens quickly.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from classify import diagnostics
from classify.features import describe_featurizer
from classify.metrics import compute_scores
from classify.reports import confusion_frame, optimism_note, per_class_report

__all__ = ["Report", "build_report", "render_report"]

#: Caps on what the report shows (stated in the report itself).
LIMITS = {"mistakes": 60, "label_issues": 40, "duplicates": 40, "map_thumbnails": 1000}
THUMB_PX, MAP_THUMB_PX = 128, 64
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
            "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]


def thumbnail(path, px: int = THUMB_PX) -> tuple[str | None, str]:
    """``(data URI of a JPEG at most px x px, "")``, or ``(None, reason)`` for a bad file."""
    from featurize.decoding import load_image
    from featurize.exceptions import ImageDecodeError

    try:
        image = load_image(path, draft_size=(2 * px, 2 * px))
    except ImageDecodeError as exc:
        return None, exc.reason
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc.strerror or exc}"
    image.thumbnail((px, px))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(), ""


@dataclass
class Split:
    """One data split as the report sees it. ``pred``/``p_pred``/``p_true`` are out-of-fold on
    the training data and plain predictions on a test folder. A row of ``X`` that is NaN is an
    image with no features (it could not be read): it is part of no duplicate and sits in the
    middle of the map. ``keys`` are content keys, None for a file that could not be read."""

    paths: list
    X: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    p_pred: np.ndarray
    p_true: np.ndarray
    keys: list
    failures: list = field(default_factory=list)


@dataclass
class Report:
    """A rendered report: ``html`` (a string), :meth:`save`, and inline display in Jupyter.

    ``sections`` holds the HTML of each section (``"mistakes"``, ``"label_issues"``,
    ``"duplicates"``, ``"map"``, ``"failures"``); :meth:`show` displays some of them inline.
    ``failed_now`` lists ``(path, reason)`` of the files that could not be read while the
    report was built (test files, training files gone since training).
    """

    html: str
    summary: dict
    sections: dict = field(default_factory=dict)
    failed_now: list = field(default_factory=list)

    def show(self, *names):
        """An object that Jupyter displays as the named sections (all when none is named)."""
        chosen = names or tuple(self.sections)
        unknown = sorted(set(chosen) - set(self.sections))
        if unknown:
            raise ValueError(f"Unknown sections {unknown}; the report has {list(self.sections)}.")
        return _Inline(f"<style>{_STYLE}</style>"
                       + "".join(f"<div>{self.sections[name]}</div>" for name in chosen))

    def save(self, path) -> None:
        """Write the HTML file."""
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.html)

    def _repr_html_(self) -> str:
        # an iframe keeps the report's styles and scripts out of the notebook's page
        return (f'<iframe srcdoc="{html.escape(self.html)}" style="width:100%;height:800px;'
                'border:1px solid #ccc"></iframe>')


@dataclass
class _Inline:
    html: str

    def _repr_html_(self) -> str:
        return self.html


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _table(frame: pd.DataFrame, fmt="{:.3f}", sortable=True) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in [frame.index.name or ""] + list(frame.columns))
    rows = []
    for index, row in frame.iterrows():
        cells = "".join(
            f"<td>{_e(_number(v, fmt))}</td>"
            for v in row)
        rows.append(f"<tr><th>{_e(index)}</th>{cells}</tr>")
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _number(value, fmt) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.0f}" if float(value).is_integer() else fmt.format(value)
    return str(value)


def _figure(path, caption_lines, px=THUMB_PX) -> str:
    uri, reason = thumbnail(path, px)
    body = (f'<img src="{uri}" alt="{_e(path)}">' if uri else
            f'<div class="missing">image unavailable: {_e(reason)}</div>')
    caption = "<br>".join(_e(line) for line in caption_lines)
    return (f'<figure data-path="{_e(path)}">{body}<figcaption>{caption}'
            f'<br><span class="path">{_e(path)}</span></figcaption></figure>')


def _pct(p) -> str:
    return "n/a" if p is None or not np.isfinite(p) else f"{p:.2f}"


def build_report(model, train: Split, test: Split | None = None, *, seconds: float | None = None,
                 map_method: str = "pca", extra: dict | None = None) -> Report:
    """Compute the diagnostics of ``model`` on ``train`` (and ``test``) and render them.
    ``extra``: more sections, title -> HTML (e.g. the comparison with fine-tuning)."""
    start = time.perf_counter()
    classes = [str(c) for c in model.classes_]
    sections = {}
    notes = []
    summary = _summary(model, train, test, classes)
    # mistakes
    oof_wrong = diagnostics.mistakes(train.y, train.pred, train.p_pred, LIMITS["mistakes"])
    gallery = [_figure(train.paths[i], [f"given: {classes[train.y[i]]}",
                                        f"predicted: {classes[train.pred[i]]} "
                                        f"(p={_pct(train.p_pred[i])})"])
               for i in oof_wrong]
    n_wrong = int(((train.pred >= 0) & (train.pred != train.y)).sum())
    sections["mistakes"] = (f"<h3>Training data, out of fold: {n_wrong} mistakes "
                            f"(showing {len(gallery)}, most confident first)</h3>"
                            f"<div class='gallery' id='gallery-train-mistakes'>{''.join(gallery)}"
                            "</div>")
    if test is not None:
        known = test.y >= 0
        wrong = diagnostics.mistakes(np.where(known, test.y, test.pred), test.pred, test.p_pred,
                                     LIMITS["mistakes"])
        gallery = [_figure(test.paths[i], [f"true: {classes[test.y[i]]}",
                                           f"predicted: {classes[test.pred[i]]} "
                                           f"(p={_pct(test.p_pred[i])})"]) for i in wrong]
        n_wrong = int((known & (test.pred >= 0) & (test.pred != test.y)).sum())
        sections["mistakes"] += (f"<h3>Test data: {n_wrong} mistakes (showing {len(gallery)})"
                                 f"</h3><div class='gallery' id='gallery-test-mistakes'>"
                                 f"{''.join(gallery)}</div>")
    # likely label errors
    if np.isfinite(train.p_true).any():
        rows, _ = diagnostics.label_issues(train.y, train.pred, train.p_true,
                                                    train.p_pred, len(classes))
        summary["suspected label errors"] = len(rows)
        gallery = [_figure(train.paths[i], [f"given: {classes[train.y[i]]} "
                                            f"(p={_pct(train.p_true[i])})",
                                            f"suggested: {classes[train.pred[i]]} "
                                            f"(p={_pct(train.p_pred[i])})"])
                   for i in rows[:LIMITS["label_issues"]]]
        sections["label_issues"] = (
            f"<p>{len(rows)} training images whose out-of-fold prediction is another class with "
            "at least that class's mean self-confidence (confident learning), lowest probability "
            f"of the given label first; showing {len(gallery)}.</p><div class='gallery' "
            f"id='gallery-label-issues'>{''.join(gallery)}</div>")
    else:
        sections["label_issues"] = ("<p>The head gives no probabilities (an SVM trained "
                                    "without calibration): no label-error ranking.</p>")
    # duplicates and leaks
    sections["duplicates"], dup_summary = _duplicates(train, test, classes)
    summary.update(dup_summary)
    # map
    sections["map"] = _map(train, test, classes, map_method)
    # failures
    failed = list(train.failures) + (list(test.failures) if test is not None else [])
    sections["failures"] = ("<p>None.</p>" if not failed else
                            "<table><thead><tr><th>file</th><th>reason</th></tr></thead><tbody>"
                            + "".join(f"<tr><td>{_e(p)}</td><td>{_e(r)}</td></tr>"
                                      for p, r in failed) + "</tbody></table>")
    summary["report built in"] = f"{time.perf_counter() - start + (seconds or 0):.1f} s"
    scores = {"train (out of fold)": _split_tables(train, classes)}
    if test is not None and (test.y >= 0).any():
        scores["test"] = _split_tables(test, classes)
    return Report(render_report(summary, scores, sections, notes, extra), summary,
                  {**sections, **(extra or {})})


def _summary(model, train, test, classes) -> dict:
    p = model.provenance
    d = describe_featurizer(model.featurizer_config)
    counts = pd.Series(np.asarray(classes)[train.y]).value_counts().reindex(classes)
    summary = {
        "classes": ", ".join(f"{c} ({n})" for c, n in counts.items()),
        "training images": len(train.paths), "failed files": len(train.failures),
        "backbone": d["backbone"], "layer": d["layer"], "pooling": d["pooling"],
        "head": f"{p.get('head')} {p.get('params')}",
    }
    cv, std = p.get("cv_scores") or {}, p.get("cv_std") or {}
    scoring = p.get("scoring")
    nested, nested_std = p.get("nested_scores") or {}, p.get("nested_std") or {}
    if cv.get(scoring) is not None:
        summary[f"CV {scoring}"] = (f"{cv[scoring]:.4f} +/- {std.get(scoring) or 0:.4f} "
                                    f"({optimism_note(p.get('n_candidates'), bool(nested))})")
    if nested.get(scoring) is not None:
        summary[f"nested CV {scoring}"] = (f"{nested[scoring]:.4f} +/- "
                                           f"{nested_std.get(scoring) or 0:.4f} (unbiased "
                                           "estimate of the whole selection)")
    if test is not None:
        summary["test images"] = len(test.paths)
        known = (test.y >= 0) & (test.pred >= 0)
        if known.any():
            s = compute_scores(test.y[known], test.pred[known], None, np.arange(len(classes)))
            summary["test accuracy"] = f"{s['accuracy']:.4f}"
            summary["test balanced accuracy"] = f"{s['balanced_accuracy']:.4f}"
    summary["featurize version"] = p.get("featurize_version")
    summary["trained"] = p.get("created")
    return summary


def _split_tables(split: Split, classes) -> tuple[str, str]:
    ok = (split.y >= 0) & (split.pred >= 0)
    per_class = per_class_report(split.y[ok], split.pred[ok], classes)
    confusion = confusion_frame(split.y[ok], split.pred[ok], classes)
    return _table(per_class), _table(confusion, "{:.0f}", sortable=False)


def _duplicates(train, test, classes):
    parts, summary = [], {}
    exact = {}
    for i, key in enumerate(train.keys):
        exact.setdefault(key, []).append(i)
    groups = [rows for key, rows in exact.items() if len(rows) > 1 and key is not None]
    pairs, n_pairs = diagnostics.near_duplicates(train.X, limit=LIMITS["duplicates"])
    summary["exact duplicates in training data"] = sum(len(g) - 1 for g in groups)
    summary["near-duplicate pairs in training data"] = n_pairs

    def pair_html(a_path, a_label, b_path, b_label, sim):
        return (f"<div class='pair'>{_figure(a_path, [a_label])}"
                f"{_figure(b_path, [b_label])}<div>cosine {sim:.3f}</div></div>")

    items = [pair_html(train.paths[i], classes[train.y[i]], train.paths[j], classes[train.y[j]],
                       s) for i, j, s in pairs]
    parts.append(f"<h3>Within the training data: {n_pairs} pairs with cosine >= "
                 f"{diagnostics.DUPLICATE_COSINE} (showing {len(items)}), "
                 f"{summary['exact duplicates in training data']} exact duplicates</h3>"
                 f"<div class='pairs' id='train-duplicates'>{''.join(items)}</div>")
    if test is not None:
        leaks, n_leaks = diagnostics.near_duplicates(train.X, test.X, limit=LIMITS["duplicates"])
        train_keys = {k for k in train.keys if k is not None}
        exact_leaks = sum(1 for k in test.keys if k is not None and k in train_keys)
        summary["train/test leaks (near-duplicate pairs)"] = n_leaks
        summary["train/test leaks (identical files)"] = exact_leaks
        items = [pair_html(train.paths[i], f"train: {classes[train.y[i]]}", test.paths[j],
                           f"test: {classes[test.y[j]] if test.y[j] >= 0 else '?'}", s)
                 for i, j, s in leaks]
        parts.append(f"<h3>Between training and test data: {n_leaks} pairs (showing "
                     f"{len(items)}), {exact_leaks} identical files</h3>"
                     f"<div class='pairs' id='leaks'>{''.join(items)}</div>")
    return "".join(parts), summary


def _map(train, test, classes, method):
    # images with no features (NaN rows) are placed at the mean of the training features
    finite = np.isfinite(train.X).all(axis=1)
    centre = train.X[finite].mean(axis=0) if finite.any() else np.zeros(train.X.shape[1])
    xy, xy_test = diagnostics.embedding_map(
        _filled(train.X, centre), None if test is None else _filled(test.X, centre), method)
    points = [(x, y, int(c), int(p), "train", path)
              for (x, y), c, p, path in zip(xy, train.y, train.pred, train.paths)]
    if test is not None:
        points += [(x, y, int(c), int(p), "test", path)
                   for (x, y), c, p, path in zip(xy_test, test.y, test.pred, test.paths)]
    allxy = np.array([(p[0], p[1]) for p in points])
    lo, hi = allxy.min(axis=0), allxy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1)
    W, H, pad = 720, 520, 12
    rng = np.random.default_rng(0)
    with_thumb = set(rng.choice(len(points), min(len(points), LIMITS["map_thumbnails"]),
                                replace=False).tolist())
    thumbs, circles = {}, []
    for k, (x, y, c, p, split, path) in enumerate(points):
        cx = pad + (x - lo[0]) / span[0] * (W - 2 * pad)
        cy = H - pad - (y - lo[1]) / span[1] * (H - 2 * pad)
        wrong = c >= 0 and p >= 0 and p != c
        colour = _PALETTE[c % len(_PALETTE)] if c >= 0 else "#000"
        label = f"{split}: {classes[c] if c >= 0 else '?'}" + (
            f", predicted {classes[p]}" if wrong else "")
        shape = (f'<rect x="{cx - 3:.1f}" y="{cy - 3:.1f}" width="6" height="6"' if split == "test"
                 else f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3"')
        stroke = ' stroke="#000" stroke-width="1.5"' if wrong else ""
        circles.append(f'{shape} fill="{colour}"{stroke} class="pt{" wrong" if wrong else ""}" '
                       f'data-k="{k}" data-label="{_e(label)}" data-path="{_e(path)}"/>')
        if k in with_thumb:
            uri, _ = thumbnail(path, MAP_THUMB_PX)
            if uri:
                thumbs[k] = uri
    legend = "".join(f'<span class="key"><i style="background:{_PALETTE[i % len(_PALETTE)]}">'
                     f'</i>{_e(name)}</span>' for i, name in enumerate(classes))
    data = json.dumps(thumbs).replace("</", "<\\/")
    return (f"<p>{'PCA' if method == 'pca' else 't-SNE'} of the standardized features; circles: "
            "training images, squares: test images, black outline: mistakes. Hover for the "
            f"image ({len(thumbs)} of {len(points)} points have a thumbnail).</p>"
            f"<div class='legend'>{legend}</div><div id='map-wrap'>"
            f"<svg id='map' width='{W}' height='{H}' viewBox='0 0 {W} {H}'>{''.join(circles)}"
            "</svg><div id='tip'></div></div>"
            f"<script type='application/json' id='map-thumbs'>{data}</script>")


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}thead th{background:#f4f4f4;cursor:pointer}tbody th{text-align:left}
table.summary td{text-align:left}.gallery,.pairs{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:140px;font-size:11px}figure img{max-width:128px;max-height:128px;
display:block}.missing{width:128px;height:96px;background:#eee;color:#a00;font-size:11px;
padding:4px;box-sizing:border-box}.path{color:#777;word-break:break-all}
.pair{display:flex;gap:4px;align-items:center;border:1px solid #eee;padding:4px}
#map-wrap{position:relative;display:inline-block}#map{border:1px solid #ddd;background:#fff}
#tip{position:absolute;display:none;background:#fff;border:1px solid #999;padding:4px;
font-size:11px;pointer-events:none}.legend .key{margin-right:12px}.legend i{display:inline-block;
width:10px;height:10px;margin-right:4px}.pt.wrong{opacity:1}.caps{color:#555}
"""

_SCRIPT = """
document.querySelectorAll('table.sortable thead th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var d = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? d : -d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
(function () {
  var svg = document.getElementById('map'), tip = document.getElementById('tip');
  if (!svg) return;
  var thumbs = JSON.parse(document.getElementById('map-thumbs').textContent);
  svg.addEventListener('mousemove', function (ev) {
    var t = ev.target;
    if (!t.dataset || t.dataset.k === undefined) { tip.style.display = 'none'; return; }
    var img = thumbs[t.dataset.k];
    tip.innerHTML = (img ? '<img src="' + img + '"><br>' : '');
    tip.appendChild(document.createTextNode(t.dataset.label));
    tip.style.left = (ev.offsetX + 12) + 'px'; tip.style.top = (ev.offsetY + 12) + 'px';
    tip.style.display = 'block';
  });
  svg.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
})();
document.body.dataset.ready = 'yes';
"""


def render_report(summary: dict, scores: dict, sections: dict, notes=(), extra=None) -> str:
    """The HTML text of a report (every value escaped; no external resource)."""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary.items())
    score_html = "".join(
        f"<h3>{_e(name)}</h3><div style='display:flex;gap:32px;flex-wrap:wrap'><div>"
        f"<b>Per class</b> (click a column to sort){per_class}</div><div><b>Confusion matrix"
        f"</b> (rows: true class, columns: predicted){confusion}</div></div>"
        for name, (per_class, confusion) in scores.items())
    caps = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in LIMITS.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>featurize report</title>
<style>{_STYLE}</style></head><body>
<h1>featurize report</h1>
<p class="caps">Galleries are capped to keep the file small ({_e(caps)}).</p>
<h2>Summary</h2><table class="summary">{rows}</table>
{"".join(f"<h2>{_e(title)}</h2>{body}" for title, body in (extra or {}).items())}
<h2>Scores</h2>{score_html}
<h2>Mistakes</h2>{sections['mistakes']}
<h2>Likely label errors</h2>{sections['label_issues']}
<h2>Near-duplicates and leaks</h2>{sections['duplicates']}
<h2>Map of the embeddings</h2>{sections['map']}
<h2>Failed files</h2>{sections['failures']}
<script>{_SCRIPT}</script>
</body></html>
"""


def _filled(X, fill):
    """``X`` with its non-finite rows replaced by ``fill``."""
    X = np.array(X, dtype=np.float64)
    X[~np.isfinite(X).all(axis=1)] = fill
    return X
