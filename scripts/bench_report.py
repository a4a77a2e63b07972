"""How long ``unroll-report`` takes over a large sweep (not a test).

Writes N run directories in the run contract (``metrics.json``, ``.hydra/overrides.yaml``,
``layers.csv``: 5 models x 4 learning rates x seeds, 16 layers, a few failed runs) into a temporary
directory, then times the report's steps: finding and reading the runs, the grouped table, the
per-layer table, and the whole command (tables written as CSV/LaTeX, Markdown printed).

    python scripts/bench_report.py [--runs 1000]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from unroll_cli.report.aggregate import main
from unroll_cli.report.runs import load_runs
from unroll_cli.report.tables import summarize, summarize_layers

MODELS = ["ista", "fista", "lista", "lista_cpss", "alista"]
LRS = ["1e-4", "3e-4", "1e-3", "3e-3"]


def write_runs(root: Path, count: int, layers: int = 16) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        model, lr = MODELS[index % len(MODELS)], LRS[(index // len(MODELS)) % len(LRS)]
        seed = index // (len(MODELS) * len(LRS))
        run = root / str(index)
        (run / ".hydra").mkdir(parents=True)
        overrides = [f"model={model}", f"optim.lr={lr}", f"seed={seed}", "data.m=250", "data.n=500"]
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        curve = np.cumsum(-rng.uniform(0.5, 3.0, layers + 1)) + 0.5
        curve[0] = 0.0
        status = "failed" if index % 97 == 0 else "completed"
        metrics = {"test/nmse_db": float(curve[-1]), "baseline/ista/test/nmse_db": float(curve[-1] / 3),
                   "test/support_f1": float(rng.uniform(0.5, 1))} if status == "completed" else {}
        record = {"status": status, "metrics": metrics, "wall_s": 60.0, "params": 32, "overrides": overrides,
                  "error": "NonFiniteLossError: training loss became nan" if status == "failed" else None}
        (run / "metrics.json").write_text(json.dumps(record))
        (run / "layers.csv").write_text("layer,test/nmse_db\n" + "".join(
            f"{layer},{value}\n" for layer, value in enumerate(curve)))


def timed(label: str, action):
    started = time.perf_counter()
    result = action()
    print(f"{label:<44} {time.perf_counter() - started:7.3f} s")
    return result


def bench(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sweep"
        timed(f"writing {count} run directories", lambda: write_runs(root, count))
        runs = timed("load_runs (metrics.json + overrides.yaml)", lambda: load_runs([str(root)]))
        table = timed("summarize (mean/std/count per group)", lambda: summarize(runs))
        timed("summarize_layers (every layers.csv)", lambda: summarize_layers(runs))
        def quiet_report() -> int:
            with contextlib.redirect_stdout(io.StringIO()):
                return main([str(root), "--layers"])

        code = timed("unroll-report DIR --layers (whole command)", quiet_report)
        print(f"{len(runs)} runs, {len(table)} groups, {int((runs['status'] != 'completed').sum())} failed "
              f"(exit code {code})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    bench(parser.parse_args().runs)
