"""The published set-ups: published curves beside the run, model choice, packaging of the configs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_PROBLEM, compose_cfg, read_metrics, run_cli
from test_classification_run import write_learnable_mnist
from test_pathnorm import numpy_conv_path_norm
from unroll_cli.run import run


@pytest.mark.parametrize("snr, setting", [(None, "noiseless"), (20, "snr20")])
def test_results_show_the_published_curve_beside_the_run(tmp_path, snr, setting):
    overrides = ["+experiment=chen2018_lista", "model=lista_cpss", *TINY_PROBLEM, "model.layers=3",
                 "trainer.val_every_steps=2", "trainer.stage_patience_steps=2", "trainer.stage_max_steps=4",
                 "tensorboard=false", f"data.snr_db={'null' if snr is None else snr}"]
    cfg = compose_cfg(overrides)
    run(cfg, tmp_path)
    layers = pd.read_csv(tmp_path / "layers.csv")
    published = list(cfg.paper.nmse_db[setting].lista_cpss)[:4]
    assert list(layers["published/test/nmse_db"]) == published
    assert read_metrics(tmp_path)["metrics"]["published/test/nmse_db"] == published[3]
    text = (tmp_path / "results.md").read_text()
    assert "difference" in text and "Chen et al., NeurIPS 2018" in text


@pytest.mark.slow
def test_configs_ship_with_a_non_editable_install(tmp_path):
    """pip install (not -e) into a folder, then compose from elsewhere: the configs come along."""
    target = tmp_path / "site"
    repo = Path(__file__).parents[1]
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                    "--target", str(target), str(repo)], check=True, capture_output=True, timeout=300)
    assert (target / "unroll_cli/conf/model/lista_cpss.yaml").is_file()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "unroll_cli.cli", "--cfg", "job", "+experiment=liu2019_alista"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "unroll_cli.models.lista.ALISTA" in result.stdout


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_sulam2020_keeps_a_chosen_models_own_unfoldings(dataset):
    """The experiment sets the unfolded models' depth without turning the CNN baseline into one."""
    cfg = compose_cfg([f"+experiment=sulam2020_{dataset}"])
    assert compose_cfg([f"+experiment=sulam2020_{dataset}", "model=cnn"]).model.unfoldings == 0
    assert compose_cfg([f"+experiment=sulam2020_{dataset}", "model=lbp"]).model.unfoldings == cfg.model.unfoldings > 0


def test_stock2019_enorm_conv_trains_the_cnn_with_enorm_and_measures_its_path_norm(tmp_path, monkeypatch):
    """The authors' convolutional command on model=cnn, one epoch on tiny Fashion-MNIST files: ENorm with
    c = 1.1 ran after the last step (the last balanced channels' outgoing norms are 1.1 times their
    incoming ones), and the trained CNN's path-norm is the one of its checkpoint."""
    monkeypatch.setattr("unroll_cli.data.images.FASHION_MNIST_SYSTEM_DIRS", ())
    cfg = compose_cfg(["+experiment=stock2019_enorm_conv"])
    assert (cfg.model.name, cfg.model.unfoldings, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay,
            cfg.data.batch_size, cfg.trainer.max_epochs, cfg.sched.end_factor, cfg.sched.total_iters,
            cfg.data.random_crop_padding, cfg.data.hflip, cfg.callbacks.enorm.c) == (
        "cnn", 0, 0.05, 0.9, 1e-3, 256, 128, 0.0, 128, 2, True, 1.1)
    write_learnable_mnist(tmp_path / "data/FashionMNIST/raw", np.random.default_rng(0), 300, 50)
    result = run_cli(["+experiment=stock2019_enorm_conv", f"data.root={tmp_path / 'data'}", "data.download=false",
                      "trainer.max_epochs=1", "+diagnostics=pathnorm", "trainer.progress=false", "tensorboard=false",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["model"]
    rows = state["W.1"].flatten(1).norm(dim=1)  # the second convolution's output channels: incoming
    cols = state["W.2"].transpose(0, 1).flatten(1).norm(dim=1)  # ... and outgoing, in the third's kernels
    torch.testing.assert_close(cols / rows, torch.full_like(rows, 1.1), rtol=1e-5, atol=0)
    metrics = read_metrics(tmp_path / "run")["metrics"]
    for q in (1, 2, 4):
        assert metrics[f"pathnorm/l{q}"] == pytest.approx(numpy_conv_path_norm(state, q), rel=1e-9)
