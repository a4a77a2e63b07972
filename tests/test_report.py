"""unroll-report over a real multirun: rows, means and counts against the per-run files."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd

from conftest import TINY, run_cli
from unroll_cli.report.aggregate import load_runs, summarize


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
