"""The runs table grouped over the seeds: mean, std and count of every metric per group.

Only completed runs are averaged in; the groups are by default every override that varies between
the runs but ``seed``, and a run's per-run tables (``layers.csv``, ``items.csv``, ...) are grouped
the same way per value of their declared index columns. Kept apart from the formatting
(:mod:`unroll_cli.report.formatting`) so that report.csv and the Python API keep the numbers.
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pandas as pd

from unroll_cli.record.recorder import TABLES
from unroll_cli.report.formatting import diff_key, reference_names
from unroll_cli.report.runs import RUN_COLUMNS, unreadable


def readable(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose files could be read (those of the others, overrides included, are unknown)."""
    return runs[runs["status"] != "unreadable"]


def completed(runs: pd.DataFrame) -> pd.DataFrame:
    """The completed runs, the only ones averaged in."""
    return runs[runs["status"] == "completed"]


def override_columns(runs: pd.DataFrame, varying: bool = False) -> list[str]:
    """The override keys of the runs; with ``varying``, only those whose value differs between the
    readable runs."""
    metrics = {c for c in runs.columns if "/" in c}
    columns = [c for c in runs.columns if c not in RUN_COLUMNS and c not in metrics]
    known = readable(runs)
    return [c for c in columns if known[c].nunique(dropna=False) > 1] if varying else columns


def check_overrides(option: str, keys: list[str], runs: pd.DataFrame) -> None:
    """ValueError, naming the overrides there are, when one of ``keys`` given to ``option`` is not one."""
    unknown = [key for key in keys if key not in override_columns(runs)]
    if unknown:
        raise ValueError(f"{option} {' '.join(unknown)}: not an override of these runs "
                         f"({', '.join(override_columns(runs))})")


def common_overrides(runs: pd.DataFrame) -> list[str]:
    """``key=value`` of the overrides every readable run shares (left out of the tables' columns)."""
    known, varying = readable(runs), set(override_columns(runs, varying=True))
    return [f"{c}={known[c].iloc[0]}" for c in override_columns(runs) if c not in varying]


def select_metrics(runs: pd.DataFrame, patterns: list[str] | None) -> pd.DataFrame:
    """Only the metric columns matching one of ``patterns`` (shell-style, e.g. ``baseline/*/test/nmse_db``),
    with their published values and statistics (``<metric> mean`` ...); all when ``patterns`` is None."""
    if patterns is None:
        return runs
    metric = lambda column: column.removeprefix("published/").split(" ")[0]  # noqa: E731
    keep = [c for c in runs.columns if "/" not in c or any(fnmatch.fnmatch(metric(c), p) for p in patterns)]
    return runs[keep]


def check_metric_patterns(runs: pd.DataFrame, patterns: list[str] | None) -> None:
    """Every ``--metrics`` pattern matches a metric of the runs: ValueError naming those it reports if not."""
    names = sorted({c for c in runs.columns if "/" in c and not c.startswith("published/")})
    for pattern in patterns or []:
        if not any(fnmatch.fnmatch(name, pattern) for name in names):
            raise ValueError(f"--metrics {pattern} matches no metric of these runs; they report: {', '.join(names)}")


def group_keys(runs: pd.DataFrame, group_by: list[str] | None) -> list[str]:
    """The given keys, or by default every override that varies between runs but ``seed``."""
    keys = group_by if group_by is not None else [c for c in override_columns(runs, varying=True) if c != "seed"]
    return [c for c in keys if c in runs.columns]


def mean_std_count(frame: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean, std and count of ``columns`` per group of ``keys``; reference values (``published/<metric>``,
    ``published/<metric> <name>``) are carried as they are (the same for every run of a group), with the
    difference beside (``<metric> diff``, ``<metric> diff <name>``; see reference_names)."""
    grouped = frame.groupby(keys, dropna=False) if keys else frame.groupby(lambda _: "all")
    measured = [c for c in columns if not c.startswith("published/")]
    if measured:
        table = grouped[measured].agg(["mean", "std", "count"])
    else:  # no metric to average (none chosen, or no run got that far): the groups' keys alone
        table = pd.DataFrame(index=grouped.size().index)
    table.columns = [f"{metric} {stat}" for metric, stat in table.columns]
    for metric in measured:
        for column, name in reference_names(columns, metric).items():
            table[column] = grouped[column].first()
            table[diff_key(metric, name)] = table[f"{metric} mean"] - table[column]
    for column in (c for c in columns if c.startswith("published/") and c not in table):  # of no metric
        table[column] = grouped[column].first()
    return table.reset_index()


def summarize(runs: pd.DataFrame, group_by: list[str] | None = None) -> pd.DataFrame:
    """Mean, std and count of every metric over the completed runs of each group (by default every
    override that varies, but ``seed``), with published values and the difference beside, and the
    model's parameter count after the keys (the largest in the group; e.g. dense against butterfly)."""
    done, keys = completed(runs), group_keys(runs, group_by)
    table = mean_std_count(done, keys, [c for c in runs.columns if "/" in c])
    if "params" in done and done["params"].notna().any():
        grouped = done.groupby(keys, dropna=False) if keys else done.groupby(lambda _: "all")
        table.insert(len(keys), "params", grouped["params"].max().astype("Int64").to_numpy())
    return table


def table_index(run_dir: Path, name: str, table: pd.DataFrame) -> list[str]:
    """The index columns a run declared for its table ``name`` (``tables.json``), else the first column."""
    try:
        declared = json.loads((run_dir / TABLES).read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        declared = None
    return [c for c in declared if c in table] if isinstance(declared, list) else [str(table.columns[0])]


def summarize_table(runs: pd.DataFrame, name: str, group_by: list[str] | None = None) -> pd.DataFrame:
    """A per-run table (``layers.csv``, ``items.csv``, ...) over the completed runs: mean, std and count
    of every column per group and per value of the table's declared index columns, published values
    and the difference beside. Unreadable naming a run's table that is not a CSV table."""
    keys = group_keys(runs, group_by)
    frames, index = [], []
    for _, run in completed(runs).iterrows():
        file = Path(run["run"]) / name
        if file.is_file():
            try:
                table = pd.read_csv(file)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
                raise unreadable(file, "not a CSV table", error) from None
            index = index or table_index(Path(run["run"]), name, table)
            frames.append(table.assign(**{key: run[key] for key in keys}))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    columns = [c for c in table.columns if c not in index and c not in keys and pd.api.types.is_numeric_dtype(table[c])]
    return mean_std_count(table, [*keys, *index], columns)


def summarize_layers(runs: pd.DataFrame, group_by: list[str] | None = None) -> pd.DataFrame:
    """The per-layer table (``layers.csv``; its index: the layer, or the number of unfoldings)."""
    return summarize_table(runs, "layers.csv", group_by)


def not_completed(runs: pd.DataFrame, missing: pd.DataFrame | None = None) -> pd.DataFrame:
    """Failed, interrupted, running, unreadable and pruned runs, and the ``missing`` jobs of a sweep
    (see missing_jobs), with their error and the overrides that vary."""
    every = pd.concat([runs, missing])
    bad = every[every["status"] != "completed"]
    return bad[["run", "status", "error", *override_columns(every, varying=True)]]
