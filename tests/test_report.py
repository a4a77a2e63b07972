"""unroll-report over a real multirun: rows, means and counts against the per-run files."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, run_cli
from unroll_cli.report.aggregate import load_runs, plot_metric, summarize
from unroll_cli.report.aggregate import main as report_main


def test_report_of_a_2x2_sweep_with_one_failing_job(tmp_path):
    sweep = tmp_path / "sweep"
    # lista at lr 1e30 diverges: its two jobs fail, the ista jobs complete, the sweep goes on.
    result = run_cli(["-m", *TINY, "model=ista,lista", "seed=0,1", "optim.lr=1e30", "tensorboard=false",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode != 0  # the sweep's exit code says some jobs failed
    records = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert len(records) == 4, result.stderr
    assert sorted(r["status"] for r in records.values()) == ["completed", "completed", "failed", "failed"]

    report = subprocess.run([sys.executable, "-m", "unroll_cli.report", str(sweep), "--layers",
                             "--metrics", "test/nmse_db"], capture_output=True, text=True, cwd=tmp_path)
    assert report.returncode == 1  # some runs did not complete
    assert "2 run(s) not completed" in report.stdout and "NonFiniteLossError" in report.stdout
    runs = load_runs([str(sweep)])  # the Python API: one row per run, overrides as columns
    assert len(runs) == 4 and sorted(runs["model"]) == ["ista", "ista", "lista", "lista"]
    table = pd.read_csv(sweep / "report.csv")
    assert list(table["model"]) == ["ista"]  # failed runs are never averaged in
    # the columns: what varies (seed is averaged over), then the chosen metric; shared overrides apart
    assert list(table) == ["model", "test/nmse_db mean", "test/nmse_db std", "test/nmse_db count"]
    assert "Every run: " in report.stdout and "optim.lr=1e+30" in report.stdout
    ista = [r["metrics"]["test/nmse_db"] for r in records.values() if r["model"] == "ista"]
    row = table.iloc[0]
    assert row["test/nmse_db count"] == 2
    assert abs(row["test/nmse_db mean"] - np.mean(ista)) < 1e-9
    assert abs(row["test/nmse_db std"] - np.std(ista, ddof=1)) < 1e-9
    assert (sweep / "report.tex").read_text().startswith("\\begin{tabular}")

    # The per-layer table: each layer's mean over the two ista runs' own layers.csv.
    per_layer = pd.read_csv(sweep / "report_layers.csv")
    ista_layers = [pd.read_csv(sweep / name / "layers.csv") for name, r in records.items() if r["model"] == "ista"]
    expected = (ista_layers[0]["test/nmse_db"] + ista_layers[1]["test/nmse_db"]) / 2
    assert list(per_layer["layer"]) == list(range(len(expected)))
    assert np.allclose(per_layer["test/nmse_db mean"], expected) and set(per_layer["test/nmse_db count"]) == {2}

    # Re-running the same command skips the completed jobs and runs the failed ones again.
    stamps = {name: (sweep / name / "metrics.json").stat().st_mtime_ns for name in records}
    again = run_cli(["-m", *TINY, "model=ista,lista", "seed=0,1", "optim.lr=1e30", "tensorboard=false",
                     f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert again.stdout.count("(already completed)") == 2
    for name, record in records.items():
        rerun = (sweep / name / "metrics.json").stat().st_mtime_ns != stamps[name]
        assert rerun == (record["status"] == "failed"), name
    assert again.returncode != 0


def test_grouping_is_over_everything_but_the_seed(tmp_path):
    runs = pd.DataFrame({"run": list("abcd"), "status": ["completed"] * 4, "error": None,
                         "model": ["x", "x", "y", "y"], "seed": ["0", "1", "0", "1"],
                         "test/acc": [1.0, 3.0, 5.0, 9.0], "published/test/acc": [2.5, 2.5, 7.0, 7.0]})
    table = summarize(runs).set_index("model")
    assert table.loc["x", "test/acc mean"] == 2.0 and table.loc["y", "test/acc mean"] == 7.0
    assert table.loc["y", "test/acc count"] == 2
    assert table.loc["x", "test/acc diff"] == -0.5 and table.loc["y", "test/acc diff"] == 0.0
    by_seed = summarize(runs, group_by=["seed"]).set_index("seed")
    assert by_seed.loc["0", "test/acc mean"] == 3.0


def write_run(root, name, overrides, metrics, status="completed"):
    """A run directory in the contract, written by hand (no training)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / "metrics.json").write_text(json.dumps({"status": status, "metrics": metrics, "overrides": overrides}))


def test_plot_of_a_metric_against_a_swept_parameter_and_wrong_names(tmp_path, capsys):
    # model x lr x seed; lr as Hydra writes it, so string order (1e-3 < 1e-4) would be wrong
    values = {}
    for i, (model, lr, seed) in enumerate((m, lr, s) for m in ("lista", "alista")
                                           for lr in ("1e-4", "3e-4", "1e-3") for s in (0, 1)):
        values[model, lr, seed] = -10.0 * (i + 1) - seed
        write_run(tmp_path, str(i), [f"model={model}", f"optim.lr={lr}", f"seed={seed}"],
                  {"test/nmse_db": values[model, lr, seed]})
    write_run(tmp_path, "failed", ["model=lista", "optim.lr=1e-4", "seed=2"], {}, status="failed")
    points = plot_metric(load_runs([str(tmp_path)]), "test/nmse_db", "optim.lr", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert list(points["line"].unique()) == ["alista", "lista"]
    for _, point in points.iterrows():
        lr = next(k for k in ("1e-4", "3e-4", "1e-3") if float(k) == point["optim.lr"])
        seeds = [values[point["line"], lr, s] for s in (0, 1)]
        assert point["mean"] == np.mean(seeds) and point["count"] == 2  # the failed run is left out
    assert list(points[points["line"] == "lista"]["optim.lr"]) == [1e-4, 3e-4, 1e-3]

    with pytest.raises(SystemExit):
        report_main([str(tmp_path), "--plot", "test/nmse_dB", "optim.lr"])
    assert "no metric 'test/nmse_dB'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report_main([str(tmp_path), "--group-by", "optim.lrr"])
    assert "--group-by optim.lrr: not an override" in capsys.readouterr().err
