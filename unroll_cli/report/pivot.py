"""``--pivot ROW COL``: a metric laid out with a row per value of override ROW and a column per value
of COL, seeds pooled.

A paper's table (learning rate by model, noise level by unfoldings) in one step; refused when another
override but the seed varies between the runs a cell would pool, so that no cell mixes settings.
"""
from __future__ import annotations

import pandas as pd

from unroll_cli.report.formatting import diff_key, reference_names
from unroll_cli.report.runs import numeric_values
from unroll_cli.report.tables import check_overrides, completed, mean_std_count, override_columns, select_metrics

PIVOT_STATS = ["metric", "mean", "std", "count", "published", "diff"]



def axis_order(values: pd.Series) -> list:
    """The distinct ``values``, sorted as numbers when they all are (1e-4 < 3e-4 < 1e-3, not string order;
    ``(default)`` and ``(deleted)`` last), else in order of first appearance."""
    distinct = pd.Series(values.unique())
    try:
        return list(distinct.sort_values(key=numeric_values, kind="stable"))
    except (ValueError, TypeError):
        return list(distinct)


def check_pivot(runs: pd.DataFrame, row: str, col: str) -> None:
    """ValueError, on one line, when ``row`` or ``col`` is not an override of the runs, or when another
    override but the seed varies between the completed runs: a cell would pool different settings."""
    check_overrides("--pivot", [row, col], runs)
    if row == col:
        raise ValueError(f"--pivot {row} {col}: ROW and COL must be two different overrides")
    done = completed(runs)
    others = [c for c in override_columns(runs) if c not in (row, col, "seed")]
    pooled = [c for c in others if done[c].nunique(dropna=False) > 1]
    if pooled:
        raise ValueError(f"--pivot {row} {col}: the completed runs also differ in {', '.join(pooled)}, which "
                         "would be pooled into one cell; select the runs with a glob, or use --group-by")


def pivot_metrics(runs: pd.DataFrame, patterns: list[str] | None) -> list[str]:
    """The metrics to pivot: those ``patterns`` keep (see select_metrics), by default the optimized one
    (``optimized.name`` of metrics.json) of the completed runs; ValueError when they do not record the same
    one among their metrics."""
    if patterns is not None:
        kept = select_metrics(runs, patterns).columns
        return [c for c in kept if "/" in c and not c.startswith("published/")]
    done = completed(runs)
    names = pd.Series(done.get("optimized", [None] * len(done)), dtype=object)
    metrics = list(names.unique())
    if names.isna().any() or len(metrics) > 1 or not set(metrics) <= set(runs.columns):
        raise ValueError(f"--pivot: the completed runs do not all record the same optimized metric among "
                         f"their metrics ({', '.join(map(str, metrics))}); choose the metrics with --metrics")
    return metrics


def pivot_axes(runs: pd.DataFrame, row: str, col: str) -> dict[str, pd.Index]:
    """The values of the overrides ``row`` and ``col`` over the completed runs, each in axis_order."""
    return {key: pd.Index(axis_order(completed(runs)[key])) for key in (row, col)}


def summarize_pivot(runs: pd.DataFrame, row: str, col: str, metrics: list[str]) -> pd.DataFrame:
    """The pivot in long format: mean, std and count of each of ``metrics`` over the completed runs per
    value of the overrides ``row`` and ``col`` (seeds pooled; see check_pivot), with each reference value
    and the mean's difference to it (``published``, ``diff``; a further reference ``published <name>``,
    ``diff <name>``: see reference_names); one row per ``(row, col, metric)``, in the order of pivot_axes."""
    axes = pivot_axes(runs, row, col)
    parts, columns = [], [row, col, *PIVOT_STATS]
    for metric in metrics:
        references = reference_names(runs.columns, metric)
        table = mean_std_count(completed(runs), [row, col], [metric, *references])
        names = {f"{metric} {stat}": stat for stat in ("mean", "std", "count")}
        for column, name in references.items():
            names[column], names[diff_key(metric, name)] = f"published {name}".strip(), f"diff {name}".strip()
        table = table.rename(columns=names).assign(metric=metric)
        columns += [c for c in names.values() if c not in columns]
        parts.append(table.sort_values([row, col], key=lambda keys: axes[keys.name].get_indexer(keys)))
    return pd.concat(parts, ignore_index=True).reindex(columns=columns) if parts else pd.DataFrame(columns=columns)


def pivot_grid(part: pd.DataFrame, runs: pd.DataFrame, row: str, col: str, cells: list[str]) -> pd.DataFrame:
    """``cells``, one per row of ``part`` (the long pivot of one metric of ``runs``, see summarize_pivot),
    laid out with a row per value of ``row`` and a column per value of ``col`` (see pivot_axes); empty where
    no run completed."""
    axes = pivot_axes(runs, row, col)
    grid = part.assign(cell=cells).pivot(index=row, columns=col, values="cell")
    grid = grid.reindex(index=axes[row], columns=axes[col]).fillna("")
    return grid.rename_axis(index=row, columns=None).reset_index()
