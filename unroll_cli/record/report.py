"""One report writer for every kind of problem: a task's evaluation returns a :class:`Report`, and
:func:`write_report` writes it into the run directory.

A task says what it measured (flat metrics, tables with their index columns, figures, paragraphs of
conventions) and which published number compares with which metric; this module writes the tables
(and ``tables.json``, so that ``unroll-report`` groups each table by its own indices), the figures,
the training-curve figure from the run's history, and ``results.md``: the title, the headline
metrics, the published value with this run's and the difference, the paper's note, each table
under its heading, then the task's paragraphs. The published value is also a metric
(``published/<metric>``), so sweep tables show it beside the group's mean; so is each further
reference value of the paper config's ``references`` (``published/<metric> <name>``: the authors'
committed logs beside the paper's table).

results.md is for people: its metrics and its tables' columns are shown by their labels
(:func:`unroll_cli.record.labels.metric_label`; the headline table gives each metric's key beside),
its numbers by :func:`unroll_cli.report.formatting.number`, and a metric that is not finite as
``null``, as metrics.json holds it. The CSV tables keep the keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from unroll_cli.record import figures
from unroll_cli.record.labels import metric_label
from unroll_cli.report.formatting import number, readable, reference_key


@dataclass
class Table:
    """A CSV table of the run, its ``index`` columns declared in tables.json (no index: a table of
    results.md alone); with a ``heading`` it is a section of results.md, as ``shown`` when that
    differs from the CSV (a difference column beside a published one)."""

    frame: pd.DataFrame
    index: list[str] | None
    heading: str | None = None
    shown: pd.DataFrame | None = None


@dataclass
class Published:
    """A published number and the run metric it is compared with; ``setting``: where in the paper
    (a noise level, a variant); ``source``: the paper and the place in it; ``others``: further
    reference values of the same setting, name -> (value, source) (see references). ``value`` is None
    where the paper has no number but a further reference has one."""

    metric: str
    value: float | None
    source: str
    setting: str = ""
    others: dict[str, tuple[float, str]] = field(default_factory=dict)


def references(paper, lookup: Callable[[Any], float | None]) -> dict[str, tuple[float, str]]:
    """The further reference values of a paper config: ``paper.references`` maps a name (``authors_log``)
    to a node laid out as the paper config itself (its ``source`` and its tables), and ``lookup(node)``
    finds this run's value there as the task finds the paper's own; name -> (value, source), those found."""
    found = {}
    for name, node in (((paper or {}).get("references")) or {}).items():
        value = lookup(node)
        if value is not None:
            found[str(name)] = (float(value), node.get("source"))
    return found


@dataclass
class Report:
    """What a task's ``report`` returns (``title``: results.md's and the training curve's); ``curve``: the
    history column of the training curve's x axis and whether its y axis is logarithmic;
    ``curve_names``: history columns renamed in that figure."""

    title: str
    metrics: dict[str, float]
    tables: dict[str, Table] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    published: Published | None = None
    curve: tuple[str, bool] = ("epoch", False)
    curve_names: dict[str, str] = field(default_factory=dict)
    protocol: str | None = None  # what the test metrics are measured on, said above the headline table


def write_report(report: Report, recorder, paper_note: str | None = None) -> dict[str, float]:
    """Write ``report`` through ``recorder`` (module docstring); returns the run's flat metrics."""
    metrics = dict(report.metrics)
    published = report.published
    if published is not None:
        if published.value is not None:
            metrics[reference_key(published.metric)] = published.value
        for name, (value, _) in published.others.items():
            metrics[reference_key(published.metric, name)] = value
    for name, table in report.tables.items():
        if table.index is not None:
            recorder.write_table(name, table.frame, index=table.index)
    for name, figure in report.figures.items():
        recorder.write_figure(name, figure)
    if recorder.history:
        x, log = report.curve
        history = pd.DataFrame(recorder.history).rename(columns=report.curve_names)
        recorder.write_figure("training_curve.png", figures.training_curves(history, x, report.title, log=log))
    recorder.write_text("results.md", results_markdown(report, metrics, paper_note))
    return metrics


def results_markdown(report: Report, metrics: dict[str, float], paper_note: str | None) -> str:
    headline = pd.DataFrame({"metric": [metric_label(key) for key in metrics], "key": list(metrics),
                             "value": [number(v) if math.isfinite(v) else "null" for v in metrics.values()]})
    lines = [f"# {report.title}", "", *([f"Protocol: {report.protocol}.", ""] if report.protocol else []),
             headline.to_markdown(index=False, disable_numparse=True, colalign=("left", "left", "right")), ""]
    published = report.published
    if published is not None:
        run = metrics[published.metric]
        where = f" ({published.setting})" if published.setting else ""
        compared = [("Published", published.value, published.source)] * (published.value is not None)
        compared += [(f"Reference {name}", value, source) for name, (value, source) in published.others.items()]
        for what, value, source in compared:
            difference = number(run - value, like=max(run, value, key=abs))  # at the larger one's decimals
            lines += [f"{what} {published.metric}{where}: {number(value)} ({source}); this run: "
                      f"{number(run)}, difference {'' if difference.startswith('-') else '+'}{difference}.", ""]
    if paper_note:
        lines += [f"Note: {paper_note}", ""]
    for table in report.tables.values():
        if table.heading is not None:
            shown = table.frame if table.shown is None else table.shown
            lines += [f"## {table.heading}", "", readable(shown.rename(columns=metric_label)), ""]
    for note in report.notes:
        lines += [note, ""]
    return "\n".join(lines)
