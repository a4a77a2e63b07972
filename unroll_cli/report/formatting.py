"""Numbers for people, and tables as printed and in report.tex: a paper's ``mean ± std (n)`` cells,
Markdown and LaTeX.

:func:`number` is the one way a number is written for a person: the console's result line, results.md,
the printed and LaTeX tables of ``unroll-report``. Only those are formatted; metrics.json, the CSV
tables, report.csv and the Python API keep the numbers (report.csv separate mean, std and count
columns, :mod:`unroll_cli.report.tables`).
"""
from __future__ import annotations

import math

import pandas as pd


def decimals(value: float) -> int:
    """How many decimals a paper's cell gives ``value``: 2 when its magnitude is 1 or more (or it is 0 or
    not finite), else as many as give it 4 significant digits (0.9123, 0.001234)."""
    if not math.isfinite(value) or value == 0 or abs(value) >= 1:
        return 2
    return 3 - math.floor(math.log10(abs(value)))


LARGE = 1e6  # from here on, numbers are printed in scientific notation


def number(value: float, like: float | None = None) -> str:
    """``value`` with the decimals (see decimals) of ``like``, by default its own; empty when missing. A
    std or difference is printed at its mean's decimals, as in a paper. Magnitudes below 1e-3 (an RMSE
    of 3.1e-06) or from 1e6 on (an L1 path-norm of 2.5e+21) are printed with 3 significant digits in
    scientific notation."""
    if pd.isna(value):
        return ""
    scale = abs(value if like is None else like)
    if 0 < scale < 1e-3 or scale >= LARGE:
        return f"{value:.2e}"
    return f"{value:.{decimals(value if like is None else like)}f}"


def readable(table: pd.DataFrame) -> str:
    """``table`` in Markdown for people (results.md): whole numbers as integers (a layer, a noise level
    of 25), other numbers by :func:`number`, both right-aligned; other cells as they are."""
    def shown(column: pd.Series) -> tuple[pd.Series, str]:
        if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            return column.astype(str), "left"
        values = column.astype(float)
        finite = values[values.map(math.isfinite)]
        if (finite == finite.round()).all():
            return values.map(lambda v: "" if pd.isna(v) else f"{v:.0f}"), "right"
        return values.map(number), "right"

    columns = {name: shown(table[name]) for name in table.columns}
    text = pd.DataFrame({name: cells for name, (cells, _) in columns.items()})
    return text.to_markdown(index=False, disable_numparse=True, colalign=[align for _, align in columns.values()])


def cell(mean: float, std: float, count: int) -> str:
    """A paper's cell, ``mean ± std (n)``: ``-30.41 ± 0.12 (3)``; ``-30.41 (1)`` for one run; empty for
    none."""
    if not count:
        return ""
    return f"{number(mean)}{f' ± {number(std, mean)}' if count > 1 else ''} ({int(count)})"


def reference_key(metric: str, name: str = "") -> str:
    """The metric key of a reference value of ``metric``: ``published/<metric>`` (the paper's), or
    ``published/<metric> <name>`` (a further one: unroll_cli.record.report.references)."""
    return f"published/{metric}" + (f" {name}" if name else "")


def reference_names(columns, metric: str) -> dict[str, str]:
    """The reference values of ``metric`` among ``columns``: column -> name, ``""`` for the paper's
    (``published/<metric>``), the name for a further one (``published/<metric> <name>``, e.g. the
    authors' logs; see unroll_cli.record.report.references)."""
    paper = reference_key(metric)
    return {c: c.removeprefix(paper).strip() for c in columns if c == paper or c.startswith(paper + " ")}


def diff_key(metric: str, name: str = "") -> str:
    """The column of a group's mean minus a reference value of ``metric`` (see reference_names)."""
    return f"{metric} diff" + (f" {name}" if name else "")


def paper_cells(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (of summarize or summarize_layers) as printed and in report.tex: the keys as they are, then
    per metric one ``mean ± std (n)`` cell (see cell) named by the metric, with each reference value
    (published, and further ones) and the difference beside as numbers (see number)."""
    metrics = [c.removesuffix(" mean") for c in table.columns if c.endswith(" mean")]
    stats = {f"{metric} {stat}" for metric in metrics for stat in ("mean", "std", "count")}
    stats |= {diff_key(m, name) for m in metrics for name in reference_names(table.columns, m).values()}
    keys = [c for c in table.columns if c not in stats and not c.startswith("published/")]
    cells = {}
    for metric in metrics:
        mean, std, count = (table[f"{metric} {stat}"] for stat in ("mean", "std", "count"))
        cells[metric] = [cell(*values) for values in zip(mean, std, count)]
        for column, name in reference_names(table.columns, metric).items():
            if diff_key(metric, name) in table:
                cells[column] = [number(value) for value in table[column]]
                cells[diff_key(metric, name)] = [number(diff, of) for diff, of in
                                                 zip(table[diff_key(metric, name)], mean)]
    published = [c for c in table.columns if c.startswith("published/") and c not in cells]  # of no metric
    return table[keys].apply(key_cells).assign(**cells, **{c: [number(value) for value in table[c]] for c in published})


def key_cells(column: pd.Series) -> pd.Series:
    """A key column as printed: fractional numbers (a density of 0.5120018...) by :func:`number`, other
    columns (whole numbers, override values) as they are."""
    values = column.dropna()
    if pd.api.types.is_float_dtype(column) and not (values == values.round()).all():
        return column.map(number)
    return column


def markdown(table: pd.DataFrame, empty: str) -> str:
    """``table`` in Markdown, its cells as they are (see paper_cells), or ``empty`` (in parentheses) when it
    has no row."""
    return table.to_markdown(index=False, disable_numparse=True) if len(table) else f"({empty})"


def latex(table: pd.DataFrame) -> str:
    """``table`` in LaTeX, with its special characters escaped (``g_dec``) and ``±`` as ``$\\pm$``."""
    return table.to_latex(index=False, escape=True).replace("±", r"$\pm$")
