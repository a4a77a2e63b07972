"""ML-ISTA family through the runner: tiny MNIST files in the real format, errors for bad input."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import read_metrics, run_cli
from test_image_data import write_idx


def write_learnable_mnist(raw, rng, n_train=300, n_test=100):
    """IDX files whose class k is a bright 6x6 block at a class-specific place, plus noise."""
    raw.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, k in enumerate(labels):
            r, c = 2 + 8 * (k // 4), 2 + 8 * (k % 4)
            images[i, r:r + 6, c:c + 6] = 255
        write_idx(raw / f"{split}-images-idx3-ubyte", images.astype(np.uint8), gz=True)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels.astype(np.uint8), gz=True)


def tiny_ml_ista_run(tmp_path, unfoldings: int, epochs: int):
    """An ML-ISTA run on the learnable tiny MNIST files, in ``tmp_path / "run"``."""
    write_learnable_mnist(tmp_path / "data/MNIST/raw", np.random.default_rng(0))
    run_dir = tmp_path / "run"
    result = run_cli(["model=ml_ista", "data=mnist", f"data.root={tmp_path / 'data'}", "data.download=false",
                      "data.batch_size=32", f"model.unfoldings={unfoldings}", "optim=sgd", "optim.lr=0.05",
                      f"trainer.max_epochs={epochs}", "trainer.progress=false", "tensorboard=false",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.slow
def test_tiny_ml_ista_run_learns_and_reports_per_unfolding_accuracy(tmp_path):
    run_dir = tiny_ml_ista_run(tmp_path, unfoldings=2, epochs=4)
    record = read_metrics(run_dir)
    assert record["status"] == "completed" and record["params"] == 604_909
    metrics = record["metrics"]
    assert metrics["test/acc"] > 30.0  # chance is 10 %
    history = pd.read_csv(run_dir / "history.csv")
    assert metrics["test/acc_best"] == pytest.approx(history["test/acc"].max())
    assert metrics["test/acc_last_k_mean"] == pytest.approx(history["test/acc"].mean())  # < 10 epochs
    layers = pd.read_csv(run_dir / "layers.csv")
    assert list(layers["unfoldings"]) == [0, 1, 2]
    assert layers["test/acc"].iloc[-1] == pytest.approx(metrics["test/acc"])
    for name in ("acc_per_unfolding.png", "atoms.png", "training_curve.png"):
        assert (run_dir / "figures" / name).is_file()
    # unroll-eval on the test set again: the last epoch's model (validated on test data, no best is
    # selected), the same accuracies, and where the model came from
    again = subprocess.run([sys.executable, "-c", "from unroll_cli.cli import eval_main; eval_main()", str(run_dir),
                            f"hydra.run.dir={tmp_path / 'again'}"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    evaluated = read_metrics(tmp_path / "again")
    assert evaluated["metrics"] == metrics
    assert evaluated["source"]["checkpoint"] == "last.pt" and evaluated["source"]["epoch"] == 4


def test_missing_dataset_is_one_clear_error(tmp_path):
    result = run_cli(["model=cnn", "data=mnist", f"data.root={tmp_path / 'nowhere'}", "data.download=false",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "MNIST/raw" in output and "train-images-idx3-ubyte" in output
    assert "Traceback" not in output
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("images", [False, True])
def test_a_model_that_does_not_fit_the_data_is_refused(tmp_path, images):
    write_learnable_mnist(tmp_path / "data/MNIST/raw", np.random.default_rng(0), 20, 10)
    args = (["model=lista", "data=mnist", f"data.root={tmp_path / 'data'}", "data.download=false"]
            if images else ["model=ml_ista"])
    result = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2 and "data is" in result.stdout + result.stderr
