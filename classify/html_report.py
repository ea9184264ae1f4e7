"""A self-contained HTML report of a model on its data, with the images in it.

Data -> sections -> templates: :func:`build_report` takes what is already computed (the
model's out-of-fold predictions and confidences, the features, the content keys of the files:
one :class:`~classify.report_data.Split` per data split, gathered by
:func:`classify.folders.report_folder`), turns it into the data of each section
(:mod:`classify.report_sections`), and renders each section with its Jinja2 template
(``classify/templates/sections``, autoescaped: every name and path is text) into one page
(``classify/templates/report.html.j2``). The page leads with the answer (the headline score,
its number of images, whether it is out of fold or on a test folder), then the confusion
matrix as a heat map with the per-class table, the most confused pairs with example images, the
summary of the model and the data, galleries of mistakes and likely label errors,
near-duplicates and train/test leaks, a 2-D map of the embeddings and the failed files.

The file opens offline and can be shared: thumbnails are small JPEG data URIs, the style sheet
and the script (``classify/static``) are inlined at render time, and paths are shown relative to
the folder holding the data folders (no absolute path of the machine that wrote it). Galleries
are capped (:data:`~classify.report_sections.LIMITS`, stated in the report), so a 10,000-image
data set still gives a file a browser opens quickly.
"""

from __future__ import annotations

import functools
import html
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from classify import report_sections
from classify.report_data import Figures, PathNames, Split
from classify.report_sections import LIMITS
from classify.reports import plural

__all__ = ["LIMITS", "Report", "Split", "build_report", "extra_blocks", "render_report"]

#: The sections of the page, in order: (name, title); ``"extra"`` stands for the caller's
#: sections. ``"headline"`` has no title: it is the top of the page.
SECTIONS = (("extra", None), ("scores", "Scores"), ("confused_pairs", "Most confused pairs"),
            ("summary", "Summary"), ("mistakes", "Mistakes"),
            ("label_issues", "Likely label errors"), ("duplicates", "Near-duplicates and leaks"),
            ("map", "Map of the embeddings"), ("failures", "Failed files"))


def _number(value, digits: int = 3) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return str(value)


@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report's templates: autoescaped, strict about undefined
    names, with the ``plural`` and ``number`` filters."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("classify", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["plural"] = plural
    env.filters["number"] = _number
    return env


@functools.cache
def static_text(name: str) -> str:
    """A package file of ``classify/static`` (the style sheet, the script), as text."""
    return resources.files("classify").joinpath("static", name).read_text(encoding="utf-8")


@dataclass
class Report:
    """A rendered report: ``html`` (a string), :meth:`save`, and inline display in Jupyter.

    ``sections`` holds the HTML of each section (``"headline"``, ``"summary"``, ``"scores"``,
    ``"confused_pairs"``, ``"mistakes"``, ``"label_issues"``, ``"duplicates"``, ``"map"``,
    ``"failures"``, and the title of each extra section); :meth:`show` displays some of them
    inline. ``data`` holds what they were rendered from. ``failed_now`` lists ``(path,
    reason)`` of the files that could not be read while the report was built (test files,
    training files gone since training).
    """

    html: str
    summary: dict
    sections: dict = field(default_factory=dict)
    failed_now: list = field(default_factory=list)
    data: dict = field(default_factory=dict)

    @property
    def headline(self) -> str:
        """The answer in one line, as the top of the page gives it (empty without scores)."""
        h = self.data.get("headline") or {}
        if not h:
            return ""
        where = ("on the test folder" if h["kind"] == "test"
                 else "out of fold on the training data")
        return (f"{h['score'][:1].upper()}{h['score'][1:]} {h['value']:.4f} {where}: "
                f"{plural(h['n_images'], 'image')}")

    def show(self, *names):
        """An object that Jupyter displays as the named sections (all when none is named)."""
        chosen = names or tuple(self.sections)
        unknown = sorted(set(chosen) - set(self.sections))
        if unknown:
            raise ValueError(f"Unknown sections {unknown}; the report has {list(self.sections)}.")
        return _Inline(f"<style>{static_text('report.css')}</style>"
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


def extra_blocks(content) -> list:
    """An extra section's content as blocks the template renders: a string is a paragraph, a
    :class:`pandas.DataFrame` a table (its index as row headers); a list holds several.

    Raises
    ------
    TypeError
        Anything else (HTML is not accepted: every string is shown as text).
    """
    items = content if isinstance(content, (list, tuple)) else [content]
    blocks = []
    for item in items:
        if isinstance(item, str):
            blocks.append({"kind": "text", "text": item})
        elif isinstance(item, pd.DataFrame):
            blocks.append({"kind": "table", "columns": [item.index.name or ""] + list(
                map(str, item.columns)), "rows": [(name, list(row)) for name, row
                                                  in item.astype(object).iterrows()],
                "footer": []})
        else:
            raise TypeError(f"An extra section holds strings (paragraphs) and pandas "
                            f"DataFrames (tables), or a list of them; got "
                            f"{type(item).__name__}.")
    return blocks


def build_report(model, train: Split, test: Split | None = None, *, seconds: float | None = None,
                 map_method: str = "pca", extra: Mapping | None = None) -> Report:
    """Compute the diagnostics of ``model`` on ``train`` (and ``test``) and render them.

    Parameters
    ----------
    model : FittedModel
    train, test : Split
        ``test`` may be None.
    seconds : float, default=None
        Time already spent gathering the data (added to the time shown).
    map_method : {"pca", "tsne"}, default="pca"
    extra : mapping of str to content, default=None
        More sections shown after the headline, title -> content: a string (a paragraph), a
        DataFrame (a table) or a list of them (see :func:`extra_blocks`), e.g. the comparison
        with fine-tuning.

    Returns
    -------
    Report
    """
    start = time.perf_counter()
    classes = [str(c) for c in model.classes_]
    names = PathNames([train.folder, None if test is None else test.folder])
    figures = Figures(names)
    sections = report_sections
    summary = sections.summary(model, train, test, classes)
    splits = [(train, "Training data, out of fold", "train", "given")]
    if test is not None:
        splits.append((test, "Test data", "test", "true"))
    labelled = [(s, title, key) for s, title, key, _ in splits if (s.y >= 0).any()]
    data = {
        "headline": sections.headline(model, train, test, classes),
        "summary": summary,
        "extra": {title: extra_blocks(content) for title, content in (extra or {}).items()},
        "scores": [sections.scores(s, classes, title) for s, title, _ in labelled],
        "confused_pairs": [sections.confused_pairs(s, classes, figures, title, f"confused-{key}")
                           for s, title, key in labelled],
        "mistakes": [sections.mistakes(s, classes, figures, title, f"gallery-{key}-mistakes",
                                       given) for s, title, key, given in splits],
        "label_issues": sections.label_issues(train, classes, figures),
    }
    if data["label_issues"]["available"]:
        summary["suspected label errors"] = data["label_issues"]["n"]
    data["duplicates"], counts = sections.duplicates(train, test, classes, figures)
    summary.update(counts)
    data["map"] = sections.embedding_map(train, test, classes, figures, map_method)
    data["failures"] = sections.failures(train, test, names)
    summary["report built in"] = f"{time.perf_counter() - start + (seconds or 0):.1f} s"
    folders = [names.show(s.folder) for s, *_ in splits if s.folder is not None]
    text, rendered = render_report(data, folders=folders, linked=names.linked)
    return Report(text, summary, rendered, data=data)


def render_report(data: dict, *, folders=(), linked: bool = False) -> tuple[str, dict]:
    """The HTML text of a report from its sections' data, and the HTML of each section.

    Every value is escaped by the templates; the page fetches no external resource.
    """
    env = environment()
    rendered = {"headline": Markup(env.get_template("sections/headline.html.j2").render(
        s=data["headline"]))}
    page = []
    for name, title in SECTIONS:
        if name == "extra":
            for extra_title, blocks in data["extra"].items():
                rendered[extra_title] = Markup(env.get_template("sections/extra.html.j2")
                                               .render(s=blocks))
                page.append({"id": f"extra-{len(page)}", "title": extra_title,
                             "html": rendered[extra_title]})
            continue
        rendered[name] = Markup(env.get_template(f"sections/{name}.html.j2").render(
            s=data[name]))
        page.append({"id": name.replace("_", "-"), "title": title, "html": rendered[name]})
    caps = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in LIMITS.items())
    text = env.get_template("report.html.j2").render(
        headline=rendered["headline"], sections=page, caps=caps, folders=list(folders),
        linked=linked, css=static_text("report.css"), js=static_text("report.js"))
    return text, {name: str(value) for name, value in rendered.items()}
