"""``--plot METRIC PARAM``: a metric's mean and std against a swept parameter, into report.png; the
y axis is named by the metric's label (:func:`unroll_cli.record.labels.metric_label`), each line by
the ``key=value`` of the other overrides that vary (the returned points' ``line``: their values).

matplotlib (Agg) is imported only when a plot is asked for, so that a report without one does not
pay for it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from unroll_cli.record.atomic import atomic_write
from unroll_cli.record.labels import metric_label
from unroll_cli.report.runs import numeric_values
from unroll_cli.report.tables import completed, override_columns


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
        done[x] = numeric_values(done[x])  # 1e-4 < 3e-4 < 1e-3, not string order; (default) unplaced
    except (ValueError, TypeError):
        pass
    others = [c for c in override_columns(runs, varying=True) if c not in (x, "seed")]
    points = (done.groupby([*others, x], dropna=False)[metric].agg(["mean", "std", "count"]).reset_index())
    points["line"] = points[others].astype(str).agg(", ".join, axis=1) if others else "all"
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, line in points.groupby("line", sort=False):
        label = ", ".join(f"{key}={line[key].iloc[0]}" for key in others) or "all"
        ax.errorbar(line[x], line["mean"], yerr=line["std"].fillna(0), marker="o", capsize=3, label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(metric_label(metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(file, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return points[["line", x, "mean", "std", "count"]]
