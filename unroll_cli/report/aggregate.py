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
from pathlib import Path

import pandas as pd

from unroll_cli.cli import output_folder
from unroll_cli.record.atomic import atomic_write, atomic_write_text
from unroll_cli.report.formatting import cell, latex, markdown, number, paper_cells, reference_key
from unroll_cli.report.pivot import check_pivot, pivot_grid, pivot_metrics, summarize_pivot
from unroll_cli.report.plots import plot_metric
from unroll_cli.report.runs import Unreadable, dirs_holding, existing_dirs, read_runs
from unroll_cli.report.sweeps import missing_jobs
from unroll_cli.report.tables import (check_metric_patterns, check_overrides, common_overrides, completed,
                                      not_completed, select_metrics, summarize, summarize_table)


def make_parser() -> argparse.ArgumentParser:
    """The command line; its description is the module docstring's summary and exit-code rule."""
    paragraphs = __doc__.strip().split("\n\n")
    parser = argparse.ArgumentParser(prog="unroll-report", description=f"{paragraphs[0]}\n\n{paragraphs[-1]}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run or sweep directories (globs allowed)")
    parser.add_argument("--group-by", nargs="*", default=None,
                        help="override keys to group by (default: every override but seed)")
    parser.add_argument("--out", type=output_folder, default=None,
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


def report_pivot(runs: pd.DataFrame, row: str, col: str, metrics: list[str], out: Path) -> Path:
    """Writes the pivot (see summarize_pivot) to report_pivot.csv and prints, per metric, its cells and,
    when the runs carry them, each reference value and the mean's difference to it; returns the file."""
    long = summarize_pivot(runs, row, col, metrics)
    atomic_write(out / "report_pivot.csv", lambda tmp: long.to_csv(tmp, index=False))
    for metric, part in long.groupby("metric", sort=False):
        cells = [cell(*values) for values in zip(part["mean"], part["std"], part["count"])]
        print(f"\n{metric}, mean ± std (n) of the completed runs, {row} by {col}:\n")
        print(markdown(pivot_grid(part, runs, row, col, cells), "no completed run"))
        for reference in (c for c in long.columns if c.startswith("published") and part[c].notna().any()):
            name = reference.removeprefix("published").strip()
            for title, column in ((reference_key(metric, name), reference),
                                  (f"{metric} mean - {reference_key(metric, name)}", f"diff {name}".strip())):
                print(f"\n{title}:\n")
                print(markdown(pivot_grid(part, runs, row, col, [number(v) if pd.notna(v) else ""
                                                                 for v in part[column]]), ""))
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
        check_metric_patterns(runs, args.metrics)
        if args.pivot:
            check_pivot(runs, *args.pivot)
        pivoted = pivot_metrics(runs, args.metrics) if args.pivot else []
    except ValueError as error:
        parser.error(str(error))
    try:  # before anything is written
        tables = {name: select_metrics(summarize_table(runs, name, args.group_by), args.metrics)
                  for name in ["layers.csv"] * args.layers + args.table}
    except Unreadable as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
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
    for name, summary in tables.items():
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
