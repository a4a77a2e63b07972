"""A metric of every run's history.csv against the epoch, runs grouped by a config key: a table and a figure.

    python scripts/history_curves.py RUN_OR_SWEEP [...] --metric dictionary/error --by model.group_size
        [--epochs 1 5 10 20 40] [--out history_curves.png]

Each directory given is a run (it holds ``history.csv``) or a sweep (its subdirectories that do). A run's
group is the value of ``--by`` in its ``.hydra/config.yaml`` (a dotted key, e.g. ``model.group_size``).
Printed: the metric's mean, std and count over each group's runs (the seeds) at the epochs asked for
(default: the first, the last, and every tenth), and each group's best mean and its epoch; the figure
draws each group's mean with its std as a band. (``unroll-report --plot`` draws a final metric against a
swept key; this draws the training curve.)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402


def run_dirs(paths: list[Path]) -> list[Path]:
    """The runs among ``paths``: each a run directory, or a sweep of them (sorted)."""
    found = []
    for path in paths:
        if (path / "history.csv").is_file():
            found.append(path)
        else:
            found += sorted(p.parent for p in path.glob("*/history.csv"))
    if not found:
        raise SystemExit(f"no history.csv in {', '.join(map(str, paths))} or their subdirectories")
    return found


def config_value(run: Path, key: str):
    """The value of the dotted ``key`` in the run's composed config."""
    value = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise SystemExit(f"--by {key}: {run / '.hydra' / 'config.yaml'} has no such key")
        value = value[part]
    return value


def curves(runs: list[Path], metric: str, by: str) -> pd.DataFrame:
    """Mean, std and count of ``metric`` per group of ``by`` and epoch."""
    frames = []
    for run in runs:
        history = pd.read_csv(run / "history.csv")
        if metric not in history.columns:
            raise SystemExit(f"--metric {metric}: {run / 'history.csv'} has no such column")
        frames.append(history[["epoch", metric]].assign(**{by: config_value(run, by)}))
    rows = pd.concat(frames).groupby([by, "epoch"])[metric].agg(["mean", "std", "count"])
    return rows.reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--metric", required=True)
    parser.add_argument("--by", required=True)
    parser.add_argument("--epochs", type=int, nargs="*")
    parser.add_argument("--out", type=Path, default=Path("history_curves.png"))
    args = parser.parse_args(argv)
    table = curves(run_dirs(args.runs), args.metric, args.by)
    last = int(table["epoch"].max())
    epochs = args.epochs or sorted({int(table["epoch"].min()), *range(10, last + 1, 10), last})
    shown = table[table["epoch"].isin(epochs)].pivot(index="epoch", columns=args.by, values=["mean", "std", "count"])
    print(f"{args.metric} by {args.by} (mean, std and count over the runs):\n")
    print(shown.round(4).to_markdown())
    figure, ax = plt.subplots(figsize=(6.5, 4.2))
    for value, group in table.groupby(args.by):
        best = group.loc[group["mean"].idxmin()]
        print(f"\n{args.by}={value}: lowest mean {best['mean']:.4f} at epoch {int(best['epoch'])}, "
              f"last (epoch {int(group['epoch'].iloc[-1])}) {group['mean'].iloc[-1]:.4f}")
        line, = ax.plot(group["epoch"], group["mean"], label=f"{args.by}={value} ({int(group['count'].max())} runs)")
        std = group["std"].fillna(0)
        ax.fill_between(group["epoch"], group["mean"] - std, group["mean"] + std, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="epoch", ylabel=args.metric, title=f"{args.metric} per epoch, mean and std over the runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
