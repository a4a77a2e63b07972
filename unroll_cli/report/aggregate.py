"""Sweep tables from run directories: ``unroll-report DIR...``.

Reads only the run contract (``metrics.json``, ``.hydra/overrides.yaml`` and, for the per-layer
table, ``layers.csv``) of every run found under the given directories, makes one row per run with
its overrides as columns, and groups the completed runs over everything but the seed into mean, std
and count. Failed and interrupted runs are listed with their error and never averaged in (nor are
trials an Optuna pruner stopped, which are listed but are not failures). Published numbers recorded
by a run (``published/...`` metrics and columns) are shown beside the group's mean, with the
difference.
"""
from __future__ import annotations

import argparse
import fnmatch
import glob
import json
from pathlib import Path

import pandas as pd
import yaml

from unroll_cli.record.recorder import atomic_write

RUN_COLUMNS = ["run", "status", "error", "params", "wall_s"]


def find_runs(paths: list[str]) -> list[Path]:
    """Every directory holding a metrics.json under the given paths (globs allowed)."""
    runs: set[Path] = set()
    for pattern in paths:
        for path in map(Path, glob.glob(pattern) or [pattern]):
            if (path / "metrics.json").is_file():
                runs.add(path)
            elif path.is_dir():
                runs.update(p.parent for p in path.rglob("metrics.json"))
            else:
                raise FileNotFoundError(f"{pattern}: no such run or sweep directory")
    return sorted(runs)


def read_overrides(run: Path) -> dict[str, str]:
    file = run / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return {}
    overrides = {}
    for item in yaml.safe_load(file.read_text()) or []:
        key, _, value = item.partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def load_runs(paths: list[str]) -> pd.DataFrame:
    """One row per run: run directory, status, error, overrides, then the final metrics."""
    rows = []
    for run in find_runs(paths):
        record = json.loads((run / "metrics.json").read_text())
        rows.append({"run": str(run), "status": record.get("status"), "error": record.get("error"),
                     "params": record.get("params"), "wall_s": record.get("wall_s"),
                     **read_overrides(run), **record.get("metrics", {})})
    return pd.DataFrame(rows)


def override_columns(runs: pd.DataFrame, varying: bool = False) -> list[str]:
    """The override keys of the runs; with ``varying``, only those whose value differs between runs."""
    metrics = {c for c in runs.columns if "/" in c}
    columns = [c for c in runs.columns if c not in RUN_COLUMNS and c not in metrics]
    return [c for c in columns if runs[c].nunique(dropna=False) > 1] if varying else columns


def common_overrides(runs: pd.DataFrame) -> list[str]:
    """``key=value`` of the overrides every run shares (left out of the tables' columns)."""
    varying = set(override_columns(runs, varying=True))
    return [f"{c}={runs[c].iloc[0]}" for c in override_columns(runs) if c not in varying]


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
    table = grouped[measured].agg(["mean", "std", "count"])
    table.columns = [f"{metric} {stat}" for metric, stat in table.columns]
    for column in (c for c in columns if c.startswith("published/")):
        table[column] = grouped[column].first()
        metric = column.removeprefix("published/")
        if f"{metric} mean" in table:
            table[f"{metric} diff"] = table[f"{metric} mean"] - table[column]
    return table.reset_index()


def summarize(runs: pd.DataFrame, group_by: list[str] | None = None) -> pd.DataFrame:
    """Mean, std and count of every metric over the completed runs of each group (by default every
    override that varies, but ``seed``), with published values and the difference beside."""
    done = runs[runs["status"] == "completed"]
    return mean_std_count(done, group_keys(runs, group_by), [c for c in runs.columns if "/" in c])


def summarize_layers(runs: pd.DataFrame, group_by: list[str] | None = None) -> pd.DataFrame:
    """The per-layer table: each completed run's ``layers.csv`` (first column: the layer or number
    of unfoldings), mean, std and count per group and layer, published curve and difference beside."""
    done = runs[runs["status"] == "completed"]
    keys = group_keys(runs, group_by)
    frames = []
    for _, run in done.iterrows():
        file = Path(run["run"]) / "layers.csv"
        if file.is_file():
            layers = pd.read_csv(file)
            frames.append(layers.assign(**{key: run[key] for key in keys}))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    depth = table.columns[0]
    columns = [c for c in table.columns if c != depth and c not in keys]
    return mean_std_count(table, [*keys, depth], columns)


def not_completed(runs: pd.DataFrame) -> pd.DataFrame:
    """Failed, interrupted and pruned runs, with their error and overrides."""
    bad = runs[runs["status"] != "completed"]
    return bad[["run", "status", "error", *override_columns(runs, varying=True)]]


def plot_metric(runs: pd.DataFrame, metric: str, x: str, file: Path) -> pd.DataFrame:
    """Mean and std of ``metric`` over the completed runs against the swept parameter ``x``, one
    line per group of the other varying overrides (seeds averaged); returns the plotted points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, kind in ((metric, "metric"), (x, "override")):
        if name not in runs.columns:
            raise KeyError(f"--plot: no {kind} {name!r} in these runs")
    done = runs[runs["status"] == "completed"].copy()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unroll-report", description=__doc__.split("\n\n")[0])
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
    args = parser.parse_args(argv)
    runs = load_runs(args.paths)
    if runs.empty:
        parser.error("no run directories (with metrics.json) under " + " ".join(args.paths))
    unknown = [key for key in args.group_by or [] if key not in override_columns(runs)]
    if unknown:
        parser.error(f"--group-by {' '.join(unknown)}: not an override of these runs "
                     f"({', '.join(override_columns(runs))})")
    table = summarize(select_metrics(runs, args.metrics), args.group_by)
    out = args.out or Path(glob.glob(args.paths[0])[0] if glob.glob(args.paths[0]) else args.paths[0])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "runs.csv", lambda tmp: runs.to_csv(tmp, index=False))
    atomic_write(out / "report.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(out / "report.tex", lambda tmp: table.to_latex(tmp, index=False, float_format="%.3f"))
    common = common_overrides(runs)
    if common:
        print("Every run: " + " ".join(common) + "\n")
    print(table.to_markdown(index=False, floatfmt=".4g"))
    written = [out / "report.csv", out / "report.tex", out / "runs.csv"]
    if args.layers:
        layers = select_metrics(summarize_layers(runs, args.group_by), args.metrics)
        atomic_write(out / "report_layers.csv", lambda tmp: layers.to_csv(tmp, index=False))
        written.append(out / "report_layers.csv")
        print("\nPer layer:\n\n" + layers.to_markdown(index=False, floatfmt=".4g"))
    bad = not_completed(runs)
    if not bad.empty:
        print(f"\n{len(bad)} run(s) not completed:\n")
        print(bad.to_markdown(index=False))
    if args.plot:
        try:
            plot_metric(runs, args.plot[0], args.plot[1], out / "report.png")
        except KeyError as error:
            parser.error(error.args[0])
        written.append(out / "report.png")
    print("\nwritten: " + ", ".join(map(str, written)))
    return 1 if (bad["status"] != "pruned").any() else 0  # a pruned trial is not a failure
