"""Sweep tables from run directories: ``unroll-report DIR...``.

Reads only the run contract (``metrics.json`` and ``.hydra/overrides.yaml``) of every run found
under the given directories, makes one row per run with its overrides as columns, and groups the
completed runs over everything but the seed into mean, std and count. Failed and interrupted runs
are listed with their error and never averaged in. Published numbers recorded by a run
(``published/...`` metrics) are shown beside the group's mean, with the difference.
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import pandas as pd
import yaml

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


def override_columns(runs: pd.DataFrame) -> list[str]:
    metrics = {c for c in runs.columns if "/" in c}
    return [c for c in runs.columns if c not in RUN_COLUMNS and c not in metrics]


def summarize(runs: pd.DataFrame, group_by: list[str] | None = None) -> pd.DataFrame:
    """Mean, std and count of every metric over the completed runs of each group.

    By default the groups are all override columns but ``seed``. ``published/<metric>`` columns
    are carried as they are (the same for every run of a group), with ``<metric> diff`` beside.
    """
    done = runs[runs["status"] == "completed"]
    if group_by is None:
        group_by = [c for c in override_columns(runs) if c != "seed"]
    metrics = [c for c in runs.columns if "/" in c and not c.startswith("published/")]
    published = [c for c in runs.columns if c.startswith("published/")]
    keys = [c for c in group_by if c in done.columns]
    grouped = done.groupby(keys, dropna=False) if keys else done.groupby(lambda _: "all")
    table = grouped[metrics].agg(["mean", "std", "count"])
    table.columns = [f"{metric} {stat}" for metric, stat in table.columns]
    for column in published:
        table[column] = grouped[column].first()
        metric = column.removeprefix("published/")
        if f"{metric} mean" in table:
            table[f"{metric} diff"] = table[f"{metric} mean"] - table[column]
    return table.reset_index()


def failures(runs: pd.DataFrame) -> pd.DataFrame:
    bad = runs[runs["status"] != "completed"]
    return bad[["run", "status", "error", *override_columns(runs)]]


def plot_metric(runs: pd.DataFrame, metric: str, x: str, file: Path) -> None:
    """Mean and std of ``metric`` against the swept parameter ``x``, one line per other group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = runs[runs["status"] == "completed"].copy()
    done[x] = pd.to_numeric(done[x], errors="ignore")
    others = [c for c in override_columns(runs) if c not in (x, "seed")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, group in (done.groupby(others) if others else [("all", done)]):
        stats = group.groupby(x)[metric].agg(["mean", "std"]).reset_index()
        ax.errorbar(stats[x], stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                    label=str(label))
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unroll-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories (globs allowed)")
    parser.add_argument("--group-by", nargs="*", default=None,
                        help="override keys to group by (default: every override but seed)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where report.csv, report.tex and runs.csv go (default: the first path)")
    parser.add_argument("--plot", nargs=2, metavar=("METRIC", "PARAM"),
                        help="also plot METRIC against the swept PARAM into report.png")
    args = parser.parse_args(argv)
    runs = load_runs(args.paths)
    if runs.empty:
        parser.error("no run directories (with metrics.json) under " + " ".join(args.paths))
    table = summarize(runs, args.group_by)
    out = args.out or Path(glob.glob(args.paths[0])[0] if glob.glob(args.paths[0]) else args.paths[0])
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "runs.csv", index=False)
    table.to_csv(out / "report.csv", index=False)
    table.to_latex(out / "report.tex", index=False, float_format="%.3f")
    print(table.to_markdown(index=False, floatfmt=".4g"))
    bad = failures(runs)
    if not bad.empty:
        print(f"\n{len(bad)} run(s) not completed:\n")
        print(bad.to_markdown(index=False))
    if args.plot:
        plot_metric(runs, args.plot[0], args.plot[1], out / "report.png")
    print(f"\nwritten: {out / 'report.csv'}, {out / 'report.tex'}, {out / 'runs.csv'}")
    return 1 if not bad.empty else 0
