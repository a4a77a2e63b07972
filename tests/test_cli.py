"""The CLI as a user runs it: the output contract, multirun, --help, --cfg, bad input, signals."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import TINY, read_metrics, run_cli, wait_for_history
from unroll_cli.data.synthetic import measure, sample_codes
from unroll_cli.run import resolve_device

CONTRACT = ["metrics.json", "history.csv", "layers.csv", "results.md", "A.npy",
            "figures/nmse_per_layer.png", "figures/thresholds.png", "figures/training_curve.png",
            "checkpoints/last.pt", "checkpoints/best.pt",
            ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "app.log", "dictionary.npy"]


def numpy_ista_nmse(A: np.ndarray, y: np.ndarray, x: np.ndarray, lam: float, layers: int) -> list[float]:
    """Plain ISTA written out in numpy (step 1/L, L = 1.001 ||A||_2^2) and pooled NMSE per layer."""
    L = 1.001 * np.linalg.norm(A, 2) ** 2
    x_hat = np.zeros_like(x)
    out = [0.0]
    for _ in range(layers):
        v = x_hat + (y - x_hat @ A.T) @ A / L
        x_hat = np.sign(v) * np.maximum(np.abs(v) - lam / L, 0)
        out.append(10 * np.log10(((x_hat - x) ** 2).sum() / (x ** 2).sum()))
    return out


def test_run_writes_every_file_of_the_contract(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path, process=True)  # the whole CLI, once
    assert result.returncode == 0, result.stderr
    assert f"results: {run_dir}" in result.stdout
    for name in CONTRACT:
        assert (run_dir / name).is_file(), name

    record = read_metrics(run_dir)
    assert record["status"] == "completed"
    metrics = record["metrics"]
    for key in ("test/nmse_db", "baseline/ista/test/nmse_db", "baseline/fista/test/nmse_db",
                "test/support_f1"):
        assert np.isfinite(metrics[key]), key
    assert record["params"] == 20 * 40 + 4  # lista_cpss, tied: W (m x n) + one threshold per layer
    assert record["device"] == str(resolve_device("auto"))
    assert record["wall_s"] > 0 and "torch" in record["versions"]

    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    layers = pd.read_csv(run_dir / "layers.csv")
    assert list(layers["layer"]) == [0, 1, 2, 3, 4]
    assert layers["test/nmse_db"].iloc[-1] == pytest.approx(metrics["test/nmse_db"])

    # The ISTA baseline, recomputed independently from the saved A and the test set's seed.
    A = np.load(run_dir / "A.npy").astype(np.float64)
    assert np.array_equal(np.load(run_dir / "dictionary.npy"), np.load(run_dir / "A.npy"))  # LISTA-CP's is A
    gen = torch.Generator().manual_seed(2)
    x = sample_codes(64, 40, 0.1, gen, "cpu")
    y = measure(x, torch.as_tensor(A, dtype=torch.float32), None, gen)
    expected = numpy_ista_nmse(A, y.double().numpy(), x.double().numpy(), 0.4, 4)
    np.testing.assert_allclose(layers["baseline/ista/test/nmse_db"], expected, atol=1e-3)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert {"train/loss", "val/nmse_db"} <= set(events.Tags()["scalars"])
    val = [e.value for e in events.Scalars("val/nmse_db")]
    np.testing.assert_allclose(val, history["val/nmse_db"], rtol=1e-5)

    checkpoint = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert re.search(r"^\|\s+4 \|\s+-?\d+\.\d\d \|", (run_dir / "results.md").read_text(), re.M)


def test_multirun_writes_one_directory_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *TINY, "model=ista,lista", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    models = [read_metrics(job)["model"] for job in jobs]
    assert models == ["ista", "lista"]
    assert all(read_metrics(job)["status"] == "completed" for job in jobs)


@pytest.mark.slow
def test_runs_started_together_never_share_a_directory(tmp_path):
    args = [sys.executable, "-m", "unroll_cli.cli", *TINY, "model=ista"]
    env = {"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    run_dirs = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(run_dirs) == 2
    assert all(read_metrics(d)["status"] == "completed" for d in run_dirs)


def test_help_lists_groups_and_cfg_prints_the_composed_config(tmp_path):
    help_text = run_cli(["--help"], cwd=tmp_path).stdout
    models = next(line for line in help_text.splitlines() if line.startswith("model: "))
    shipped = sorted(p.stem for p in (Path(__file__).parents[1] / "unroll_cli/conf/model").glob("*.yaml"))
    assert models == "model: " + ", ".join(shipped)
    for group in ("data:", "optim:", "sched:", "trainer:", "experiment:"):
        assert f"\n{group}" in help_text
    job = yaml.safe_load(run_cli(["--cfg", "job", "model=alista", "data.m=30"], cwd=tmp_path).stdout)
    assert job["model"]["_target_"] == "unroll_cli.models.lista.ALISTA"
    assert job["data"]["m"] == 30 and job["trainer"]["max_epochs"] >= 1


@pytest.mark.parametrize("override, named", [
    ("model.layerz=3", "model.layerz"),
    ("+model.layerz=3", "model.layerz"),
    ("+trainer.max_epoch=3", "trainer.max_epoch"),
    ("data.m=abc", "data.m"),
    ("data.m=0", "data.m"),
    ("data.p=1.5", "data.p"),
    ("data.p=0", "data.p"),
    ("model.layers=0", "model.layers"),
    ("model=foo", "lista_cpss"),  # the error lists the available models
    ("device=tpu", "device"),
    ("optim._target_=os.system", "optim._target_"),
    ("resume=no/such/run", "no/such/run"),
])
def test_bad_input_fails_before_training_naming_the_key(tmp_path, override, named):
    result = run_cli([*TINY, override, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode != 0
    assert named in result.stderr + result.stdout
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def interrupt_after_history(args: list[str], run_dir: Path, rows: int) -> str:
    """Run ``unroll-train ARGS``, send SIGTERM once history.csv has ``rows`` epochs; return the output."""
    env = {"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": "/usr/bin:/bin"}
    output = run_dir.parent / "output.log"  # a file, not a pipe: a full pipe would stall the run
    with output.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "unroll_cli.cli", *args], cwd=run_dir.parent, env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
        wait_for_history(run_dir, rows, proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 130, output.read_text()  # the shell's code for a run stopped by a signal
    return output.read_text()


@pytest.mark.slow
def test_sigterm_marks_the_run_interrupted_and_keeps_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    interrupt_after_history([*TINY, "trainer.max_epochs=100000", f"hydra.run.dir={run_dir}"], run_dir, rows=1)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and "resume=" in record["error"]
    checkpoint = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert checkpoint["epoch"] >= 1


@pytest.mark.parametrize("extra", [[], ["hydra.searchpath=[pkg://unroll_cli.conf]"]])
def test_a_command_line_is_composed_once_beforehand_and_validated_once(tmp_path, monkeypatch, extra):
    """The command line is composed once before Hydra runs (to refuse what Hydra cannot compose, and to
    check the hydra node whose targets Hydra builds before any job); a job validates its config once."""
    import hydra

    import unroll_cli.app
    import unroll_cli.run

    calls = {"compose": 0, "validate": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(hydra, "compose", counted("compose", hydra.compose))
    monkeypatch.setattr(unroll_cli.app, "validate", counted("validate", unroll_cli.app.validate))
    monkeypatch.setattr(unroll_cli.run, "validate", counted("validate", unroll_cli.run.validate))
    result = run_cli([*TINY, "tensorboard=false", *extra, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls == {"compose": 1, "validate": 1}


@pytest.mark.parametrize("named, multirun, hint", [
    (True, False, "run the same command again to resume"),
    (False, False, "run the same command again with resume="),
    (False, True, "run the same command again with hydra.sweep.dir="),
])
def test_the_interrupt_message_says_how_to_resume(tmp_path, monkeypatch, named, multirun, hint):
    """The default directories carry their time, so the same command alone reaches the same one only
    when the command line names it."""
    import unroll_cli.app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(unroll_cli.app, "run_job", interrupted)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    args = [*TINY, *(["-m"] if multirun else []), *([f"{key}={tmp_path / 'named'}"] if named else [])]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 130 and hint in result.stderr, result.stderr
    if not named:  # the hint names the directory that exists
        given = tmp_path / result.stderr.split(hint)[1].split()[0]  # relative to where the command ran
        assert given.is_dir() and tmp_path in given.resolve().parents
