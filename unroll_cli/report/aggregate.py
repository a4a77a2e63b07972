"""Sweep tables from run directories: ``unroll-report DIR...``.

Reads only the run contract (``metrics.json``, ``.hydra/overrides.yaml`` and, for the per-layer
table, ``layers.csv``) of every run found under the given directories, makes one row per run with
its overrides as columns, and groups the completed runs over everything but the seed into mean, std
and count. Failed, interrupted and still running runs, and runs whose files cannot be read
(``unreadable``), are listed with their error and never averaged in (nor are trials an Optuna pruner
stopped, which are listed but are not failures). In a Hydra grid sweep (a directory whose
``multirun.yaml`` names the basic sweeper) every planned job that left no readable run is listed as
``missing``. Published numbers recorded by a run (``published/...`` metrics and columns) are shown
beside the group's mean, with the difference.

The printed tables and report.tex show a paper's cells, ``mean ± std (n)`` per metric (see paper_cells);
report.csv, report_layers.csv and the Python API keep separate mean, std and count columns. ``--pivot ROW
COL`` lays a metric out with a row per value of override ROW and a column per value of COL (see
summarize_pivot), refusing when another override but the seed varies between the runs it would pool.

Exit code: 0 when every run completed (or was pruned) and no planned job is missing; 1 when some run
did not complete, is unreadable or is missing; 2 for bad arguments or paths.
"""
from __future__ import annotations

import argparse
import fnmatch
import glob
import itertools
import json
import math
from pathlib import Path

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from unroll_cli.record.atomic import atomic_write, atomic_write_text
from unroll_cli.record.recorder import TABLES

RUN_COLUMNS = ["run", "status", "error", "params", "wall_s", "optimized"]
PIVOT_STATS = ["metric", "mean", "std", "count", "published"]


class Unreadable(Exception):
    """A run or sweep file that does not hold what the run contract says; the message names it."""


def unreadable(file: Path, what: str, error: Exception) -> Unreadable:
    """An Unreadable naming ``file``, with ``error`` on one line (it goes into a table cell)."""
    return Unreadable(f"{file}: {what} ({' '.join(str(error).split())})")


def existing_dirs(paths: list[str]) -> list[Path]:
    """The directories the given paths (globs allowed) name; FileNotFoundError for one naming none."""
    found = []
    for pattern in paths:
        dirs = [Path(p) for p in glob.glob(pattern) or [pattern] if Path(p).is_dir()]
        if not dirs:
            raise FileNotFoundError(f"{pattern}: no such run or sweep directory")
        found += dirs
    return found


def natural_key(path: Path) -> tuple:
    """Sort key of a path with its numbers compared as numbers: a sweep's jobs 0, 1, 2, ..., 10 in the
    order they were launched, not 0, 1, 10, 11, ..., 2."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def dirs_holding(name: str, paths: list[str]) -> list[Path]:
    """Every directory holding a file ``name`` under the given paths (globs allowed), in natural order."""
    return sorted({file.parent for path in existing_dirs(paths) for file in path.rglob(name)}, key=natural_key)


def find_runs(paths: list[str]) -> list[Path]:
    """Every directory holding a metrics.json under the given paths (globs allowed)."""
    return dirs_holding("metrics.json", paths)


def read_json_object(file: Path) -> dict:
    """The JSON object in ``file``; Unreadable if it cannot be read or holds anything else."""
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise unreadable(file, "not valid JSON", error) from None
    if not isinstance(record, dict):
        raise Unreadable(f"{file}: not a JSON object but a {type(record).__name__}")
    return record


def read_yaml(file: Path):
    """The YAML document in ``file`` (None if empty); Unreadable if it cannot be read or parsed."""
    try:
        return yaml.safe_load(file.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise unreadable(file, "not valid YAML", error) from None


def override_list(value, file: Path) -> list[str]:
    """``value`` if it is a list of ``key=value`` strings; Unreadable, naming ``file``, if not."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Unreadable(f"{file}: the overrides are not a list of key=value strings")
    return value


def read_record(run: Path) -> tuple[dict, list[str]]:
    """The run's metrics.json and its job's overrides (those of metrics.json, else those of
    ``.hydra/overrides.yaml``, else none); Unreadable if a file is not what the contract says."""
    file = run / "metrics.json"
    record = read_json_object(file)
    if not isinstance(record.get("metrics", {}), dict):
        raise Unreadable(f"{file}: the metrics are not a JSON object")
    if record.get("overrides") is not None:
        return record, override_list(record["overrides"], file)
    file = run / ".hydra" / "overrides.yaml"
    return record, (override_list(read_yaml(file) or [], file) if file.is_file() else [])


def as_columns(overrides: list[str]) -> dict[str, str]:
    """``{key: value}`` of ``key=value`` overrides, without the ``+``/``~`` prefixes."""
    return {key.lstrip("+~"): value for key, _, value in (item.partition("=") for item in overrides)}


def read_run(run: Path) -> tuple[dict, list[str] | None]:
    """The run's row (run, status, error, params, wall_s, the optimized metric's name, overrides, final
    metrics) and its overrides; an unreadable file gives an ``unreadable`` row with the file named in its
    error, and None."""
    try:
        record, overrides = read_record(run)
    except Unreadable as error:
        return {"run": str(run), "status": "unreadable", "error": str(error)}, None
    optimized = record.get("optimized")
    return {"run": str(run), "status": record.get("status"), "error": record.get("error"),
            "params": record.get("params"), "wall_s": record.get("wall_s"),
            "optimized": optimized.get("name") if isinstance(optimized, dict) else None,
            **as_columns(overrides), **record.get("metrics", {})}, overrides


def read_runs(paths: list[str]) -> tuple[pd.DataFrame, dict[Path, frozenset[str]]]:
    """The runs table and the set of overrides of every readable run (to find a sweep's missing jobs)."""
    rows, jobs = [], {}
    for run in find_runs(paths):
        row, overrides = read_run(run)
        rows.append(row)
        if overrides is not None:
            jobs[run] = frozenset(overrides)
    return pd.DataFrame(rows), jobs


def load_runs(paths: list[str]) -> pd.DataFrame:
    """One row per run: run directory, status, error, overrides, then the final metrics."""
    return read_runs(paths)[0]


def sweep_overrides(sweep: Path) -> list[str] | None:
    """The overrides a grid sweep was launched with, from its multirun.yaml: ``hydra.sweeper.params``
    as ``key=value``, then the command line's (``hydra.overrides.task``). None when the sweeper is
    not Hydra's basic one: an Optuna study samples its trials, it plans no grid to check against."""
    file = sweep / "multirun.yaml"
    config = read_yaml(file)
    try:
        sweeper = config["hydra"]["sweeper"]
        if not str(sweeper["_target_"]).endswith("BasicSweeper"):
            return None
        params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
        return params + override_list(config["hydra"]["overrides"]["task"], file)
    except (KeyError, TypeError, AttributeError) as error:
        raise unreadable(file, "not a Hydra multirun config", error) from None


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``overrides``, as ``key=value`` lists: the cartesian
    product of every key's values, a later override of a key replacing an earlier one (the command
    line wins over ``hydra.sweeper.params``)."""
    values = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        swept = (override.sweep_string_iterator() if override.is_sweep_override()
                 else [override.get_value_element_as_str()])
        values[key] = [f"{key}={value}" for value in swept]
    return [list(job) for job in itertools.product(*values.values())]


def planned_jobs(sweep: Path) -> list[list[str]]:
    """The jobs of the grid sweep in ``sweep`` (none for another sweeper, see sweep_overrides);
    Unreadable when its multirun.yaml is not readable or its sweep cannot be expanded here (e.g.
    ``glob(...)``, which needs the application's configs)."""
    overrides = sweep_overrides(sweep)
    try:
        return expand_sweep(overrides) if overrides is not None else []
    except HydraException as error:
        raise unreadable(sweep / "multirun.yaml", "cannot expand the sweep", error) from None


def missing_jobs(sweeps: list[Path], jobs: dict[Path, frozenset[str]]) -> pd.DataFrame:
    """One ``missing`` row (the sweep, the job's overrides) per planned job of the grid sweeps that no
    readable run under its sweep has the overrides of; an ``unreadable`` row per unreadable sweep."""
    rows = []
    for sweep in sweeps:
        try:
            planned = planned_jobs(sweep)
        except Unreadable as error:
            rows.append({"run": str(sweep), "status": "unreadable", "error": str(error)})
            continue
        ran = {overrides for run, overrides in jobs.items() if run.is_relative_to(sweep)}
        rows += [{"run": str(sweep), "status": "missing", "error": "no run with these overrides",
                  **as_columns(job)} for job in planned if frozenset(job) not in ran]
    return pd.DataFrame(rows)


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


def group_keys(runs: pd.DataFrame, group_by: list[str] | None) -> list[str]:
    """The given keys, or by default every override that varies between runs but ``seed``."""
    keys = group_by if group_by is not None else [c for c in override_columns(runs, varying=True) if c != "seed"]
    return [c for c in keys if c in runs.columns]


def mean_std_count(frame: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean, std and count of ``columns`` per group of ``keys``; ``published/<metric>`` columns
    are carried as they are (the same for every run of a group), with ``<metric> diff`` beside."""
    grouped = frame.groupby(keys, dropna=False) if keys else frame.groupby(lambda _: "all")
    measured = [c for c in columns if not c.startswith("published/")]
    if measured:
        table = grouped[measured].agg(["mean", "std", "count"])
    else:  # no metric to average (none chosen, or no run got that far): the groups' keys alone
        table = pd.DataFrame(index=grouped.size().index)
    table.columns = [f"{metric} {stat}" for metric, stat in table.columns]
    for column in (c for c in columns if c.startswith("published/")):
        table[column] = grouped[column].first()
        metric = column.removeprefix("published/")
        if f"{metric} mean" in table:
            table[f"{metric} diff"] = table[f"{metric} mean"] - table[column]
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
    and the difference beside."""
    keys = group_keys(runs, group_by)
    frames, index = [], []
    for _, run in completed(runs).iterrows():
        file = Path(run["run"]) / name
        if file.is_file():
            table = pd.read_csv(file)
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


def axis_order(values: pd.Series) -> list:
    """The distinct ``values``, sorted as numbers when they all are (1e-4 < 3e-4 < 1e-3, not string order),
    else in order of first appearance."""
    distinct = pd.Series(values.unique())
    try:
        return list(distinct.sort_values(key=pd.to_numeric, kind="stable"))
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
    value of the overrides ``row`` and ``col`` (seeds pooled; see check_pivot), with the published value;
    one row per ``(row, col, metric)``, in the order of pivot_axes."""
    axes = pivot_axes(runs, row, col)
    parts = []
    for metric in metrics:
        published = [f"published/{metric}"] if f"published/{metric}" in runs else []
        table = mean_std_count(completed(runs), [row, col], [metric, *published])
        names = {f"{metric} {stat}": stat for stat in ("mean", "std", "count")}
        names[f"published/{metric}"] = "published"
        table = table.rename(columns=names).assign(metric=metric).reindex(columns=[row, col, *PIVOT_STATS])
        parts.append(table.sort_values([row, col], key=lambda keys: axes[keys.name].get_indexer(keys)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[row, col, *PIVOT_STATS])


def pivot_grid(part: pd.DataFrame, runs: pd.DataFrame, row: str, col: str, cells: list[str]) -> pd.DataFrame:
    """``cells``, one per row of ``part`` (the long pivot of one metric of ``runs``, see summarize_pivot),
    laid out with a row per value of ``row`` and a column per value of ``col`` (see pivot_axes); empty where
    no run completed."""
    axes = pivot_axes(runs, row, col)
    grid = part.assign(cell=cells).pivot(index=row, columns=col, values="cell")
    grid = grid.reindex(index=axes[row], columns=axes[col]).fillna("")
    return grid.rename_axis(index=row, columns=None).reset_index()


def decimals(value: float) -> int:
    """How many decimals a paper's cell gives ``value``: 2 when its magnitude is 1 or more (or it is 0 or
    not finite), else as many as give it 4 significant digits (0.9123, 0.001234)."""
    if not math.isfinite(value) or value == 0 or abs(value) >= 1:
        return 2
    return 3 - math.floor(math.log10(abs(value)))


def number(value: float, like: float | None = None) -> str:
    """``value`` with the decimals (see decimals) of ``like``, by default its own; empty when missing. A
    std or difference is printed at its mean's decimals, as in a paper. Magnitudes below 1e-3 (an RMSE
    of 3.1e-06) are printed with 3 significant digits in scientific notation."""
    if pd.isna(value):
        return ""
    scale = abs(value if like is None else like)
    if 0 < scale < 1e-3:
        return f"{value:.2e}"
    return f"{value:.{decimals(value if like is None else like)}f}"


def cell(mean: float, std: float, count: int) -> str:
    """A paper's cell, ``mean ± std (n)``: ``-30.41 ± 0.12 (3)``; ``-30.41 (1)`` for one run; empty for
    none."""
    if not count:
        return ""
    return f"{number(mean)}{f' ± {number(std, mean)}' if count > 1 else ''} ({int(count)})"


def paper_cells(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (of summarize or summarize_layers) as printed and in report.tex: the keys as they are, then
    per metric one ``mean ± std (n)`` cell (see cell) named by the metric, with its published value and
    difference beside as numbers (see number)."""
    metrics = [c.removesuffix(" mean") for c in table.columns if c.endswith(" mean")]
    stats = {f"{metric} {stat}" for metric in metrics for stat in ("mean", "std", "count", "diff")}
    keys = [c for c in table.columns if c not in stats and not c.startswith("published/")]
    cells = {}
    for metric in metrics:
        mean, std, count = (table[f"{metric} {stat}"] for stat in ("mean", "std", "count"))
        cells[metric] = [cell(*values) for values in zip(mean, std, count)]
        if f"{metric} diff" in table:
            cells[f"published/{metric}"] = [number(value) for value in table[f"published/{metric}"]]
            cells[f"{metric} diff"] = [number(diff, of) for diff, of in zip(table[f"{metric} diff"], mean)]
    published = [c for c in table.columns if c.startswith("published/") and c not in cells]  # of no metric
    return table[keys].assign(**cells, **{c: [number(value) for value in table[c]] for c in published})


def not_completed(runs: pd.DataFrame, missing: pd.DataFrame | None = None) -> pd.DataFrame:
    """Failed, interrupted, running, unreadable and pruned runs, and the ``missing`` jobs of a sweep
    (see missing_jobs), with their error and the overrides that vary."""
    every = pd.concat([runs, missing])
    bad = every[every["status"] != "completed"]
    return bad[["run", "status", "error", *override_columns(every, varying=True)]]


def plot_metric(runs: pd.DataFrame, metric: str, x: str, file: Path) -> pd.DataFrame:
    """Mean and std of ``metric`` over the completed runs against the swept parameter ``x``, one
    line per group of the other varying overrides (seeds averaged); returns the plotted points (none,
    and no file, when no run completed). KeyError for a name none of the runs has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = completed(runs).copy()
    if done.empty:
        return pd.DataFrame(columns=["line", x, "mean", "std", "count"])
    for name, kind in ((metric, "metric"), (x, "override")):
        if name not in runs.columns:
            raise KeyError(f"--plot: no {kind} {name!r} in these runs")
    try:
        done[x] = pd.to_numeric(done[x])  # 1e-4 < 3e-4 < 1e-3, not string order
    except (ValueError, TypeError):
        pass
    others = [c for c in override_columns(runs, varying=True) if c not in (x, "seed")]
    points = (done.groupby([*others, x], dropna=False)[metric].agg(["mean", "std", "count"]).reset_index())
    points["line"] = points[others].astype(str).agg(", ".join, axis=1) if others else "all"
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, line in points.groupby("line", sort=False):
        ax.errorbar(line[x], line["mean"], yerr=line["std"].fillna(0), marker="o", capsize=3, label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(file, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return points[["line", x, "mean", "std", "count"]]


def make_parser() -> argparse.ArgumentParser:
    """The command line; its description is the module docstring's summary and exit-code rule."""
    paragraphs = __doc__.strip().split("\n\n")
    parser = argparse.ArgumentParser(prog="unroll-report", description=f"{paragraphs[0]}\n\n{paragraphs[-1]}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run or sweep directories (globs allowed)")
    parser.add_argument("--group-by", nargs="*", default=None,
                        help="override keys to group by (default: every override but seed)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where report.csv, report.tex and runs.csv go (default: the first path)")
    parser.add_argument("--plot", nargs=2, metavar=("METRIC", "PARAM"),
                        help="also plot METRIC against the swept PARAM into report.png")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="PATTERN",
                        help="only these metrics, shell-style patterns (default: every metric)")
    parser.add_argument("--layers", action="store_true",
                        help="also the per-layer table from every run's layers.csv (report_layers.csv)")
    parser.add_argument("--table", nargs="+", default=[], metavar="NAME",
                        help="also these per-run tables (e.g. items.csv), grouped by their declared index "
                             "columns (report_<name>)")
    parser.add_argument("--pivot", nargs=2, metavar=("ROW", "COL"),
                        help="also a table per metric (default: the runs' optimized one), a row per value "
                             "of override ROW, a column per value of COL, seeds pooled (report_pivot.csv)")
    return parser


def markdown(table: pd.DataFrame, empty: str) -> str:
    """``table`` in Markdown, its cells as they are (see paper_cells), or ``empty`` (in parentheses) when it
    has no row."""
    return table.to_markdown(index=False, disable_numparse=True) if len(table) else f"({empty})"


def latex(table: pd.DataFrame) -> str:
    """``table`` in LaTeX, with its special characters escaped (``g_dec``) and ``±`` as ``$\\pm$``."""
    return table.to_latex(index=False, escape=True).replace("±", r"$\pm$")


def report_pivot(runs: pd.DataFrame, row: str, col: str, metrics: list[str], out: Path) -> Path:
    """Writes the pivot (see summarize_pivot) to report_pivot.csv and prints, per metric, its cells and,
    when the runs carry them, its published values; returns the file."""
    long = summarize_pivot(runs, row, col, metrics)
    atomic_write(out / "report_pivot.csv", lambda tmp: long.to_csv(tmp, index=False))
    for metric, part in long.groupby("metric", sort=False):
        cells = [cell(*values) for values in zip(part["mean"], part["std"], part["count"])]
        print(f"\n{metric}, mean ± std (n) of the completed runs, {row} by {col}:\n")
        print(markdown(pivot_grid(part, runs, row, col, cells), "no completed run"))
        if part["published"].notna().any():
            print(f"\npublished/{metric}:\n")
            print(markdown(pivot_grid(part, runs, row, col, [number(v) for v in part["published"]]), ""))
    if long.empty:
        print(f"\n--pivot {row} {col}: " + ("no completed run" if completed(runs).empty else "no metric chosen"))
    return out / "report_pivot.csv"


def main(argv: list[str] | None = None) -> int:
    """``unroll-report``: writes and prints the tables, lists what did not complete; returns the exit
    code (module docstring)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        runs, jobs = read_runs(args.paths)
        missing = missing_jobs(dirs_holding("multirun.yaml", args.paths), jobs)
        out = args.out or existing_dirs(args.paths[:1])[0]
    except FileNotFoundError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if runs.empty:
        parser.error("no run directories (with metrics.json) under " + " ".join(args.paths))
    try:
        check_overrides("--group-by", args.group_by or [], runs)
        if args.pivot:
            check_pivot(runs, *args.pivot)
        pivoted = pivot_metrics(runs, args.metrics) if args.pivot else []
    except ValueError as error:
        parser.error(str(error))
    table = summarize(select_metrics(runs, args.metrics), args.group_by)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "runs.csv", lambda tmp: runs.to_csv(tmp, index=False))
    atomic_write(out / "report.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write_text(out / "report.tex", latex(paper_cells(table)))
    common = common_overrides(runs)
    if common:
        print("Every run: " + " ".join(common) + "\n")
    print(markdown(paper_cells(table), "no completed run"))
    written = [out / "report.csv", out / "report.tex", out / "runs.csv"]
    for name in ["layers.csv"] * args.layers + args.table:
        summary = select_metrics(summarize_table(runs, name, args.group_by), args.metrics)
        report_file = out / f"report_{Path(name).stem}.csv"
        atomic_write(report_file, lambda tmp: summary.to_csv(tmp, index=False))
        written.append(report_file)
        print(f"\n{name}:\n\n" + markdown(paper_cells(summary), f"no completed run with a {name}"))
    if args.pivot:
        written.append(report_pivot(runs, *args.pivot, pivoted, out))
    bad = not_completed(runs, missing)
    if not bad.empty:
        print(f"\n{len(bad)} run(s) not completed:\n")
        print(bad.to_markdown(index=False))
    if args.plot:
        try:
            points = plot_metric(runs, args.plot[0], args.plot[1], out / "report.png")
        except KeyError as error:
            parser.error(error.args[0])
        if len(points):
            written.append(out / "report.png")
        else:
            print("\n--plot: no completed run, no plot")
    print("\nwritten: " + ", ".join(map(str, written)))
    return 1 if (bad["status"] != "pruned").any() else 0  # a pruned trial is not a failure
