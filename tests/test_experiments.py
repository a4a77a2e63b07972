"""The published set-ups: exact settings, published curves beside the run, packaging of the configs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, compose_cfg, read_metrics
from unroll_cli.run import run


def test_chen2018_sets_the_papers_settings():
    cfg = compose_cfg(["+experiment=chen2018_lista", "model=lista_cpss"])
    assert (cfg.data.m, cfg.data.n, cfg.data.p, cfg.data.snr_db) == (250, 500, 0.1, None)
    assert cfg.data.online and cfg.data.batch_size == 64 and cfg.data.n_test == 1000
    assert (cfg.model.layers, cfg.model.lam, cfg.model.tied) == (16, 0.4, True)
    assert (cfg.model.ss_p_per_layer, cfg.model.ss_p_max) == (1.2, 13.0)
    assert cfg.optim._target_ == "torch.optim.Adam" and cfg.optim.lr == 5e-4
    assert cfg.trainer._target_ == "unroll_cli.train.layerwise.LayerwiseTrainer"
    assert list(cfg.trainer.stage_lr_factors) == [1.0, 0.2, 0.02] and cfg.trainer.layer_decay == 0.3
    assert (cfg.trainer.val_every_steps, cfg.trainer.stage_patience_steps) == (10, 4000)
    # Chen et al. 2018, Fig. 5(a): LISTA-CPSS reaches -64.8 dB at layer 16, LISTA-SS -54.1 dB.
    assert cfg.paper.nmse_db.noiseless.lista_cpss[16] == -64.8
    assert cfg.paper.nmse_db.noiseless.lista_ss[16] == -54.1
    assert cfg.paper.nmse_db.snr20.lista_cpss[16] == -22.7
    assert compose_cfg(["+experiment=chen2018_lista", "model=lista_ss"]).model.ss_p_max == 12.0


def test_liu2019_defaults_to_alista_with_its_patience():
    cfg = compose_cfg(["+experiment=liu2019_alista"])
    assert cfg.model.name == "alista" and cfg.trainer.stage_patience_steps == 2000
    assert cfg.data.m == 250 and cfg.model.layers == 16
    # Liu et al. 2019, Fig. 1(a): ALISTA -69.9 dB, TiLISTA -70.1 dB at layer 16.
    assert cfg.paper.nmse_db.noiseless.alista[16] == -69.9
    assert cfg.paper.nmse_db.noiseless.tilista[16] == -70.1
    assert compose_cfg(["+experiment=liu2019_alista", "model=tilista"]).model.name == "tilista"


@pytest.mark.parametrize("snr, setting", [(None, "noiseless"), (20, "snr20")])
def test_results_show_the_published_curve_beside_the_run(tmp_path, snr, setting):
    overrides = ["+experiment=chen2018_lista", "model=lista_cpss", *TINY, "model.layers=3",
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


@pytest.mark.parametrize("dataset, lr, epochs, window", [("mnist", 0.002, 100, [81, 99]),
                                                         ("cifar10", 0.005, 150, [141, 149])])
def test_sulam2020_sets_the_notebooks_settings(dataset, lr, epochs, window):
    cfg = compose_cfg([f"+experiment=sulam2020_{dataset}"])
    assert cfg.data.name == dataset and cfg.data.batch_size == 128 and cfg.data.arch == dataset
    assert cfg.model.name == "ml_ista" and cfg.model.unfoldings == 6
    assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim.lr == lr and cfg.optim.momentum == 0.9
    assert cfg.sched._target_ == "torch.optim.lr_scheduler.StepLR" and cfg.sched.gamma == 0.2
    assert cfg.trainer.max_epochs == epochs and list(cfg.data.acc_mean_epochs) == window
    # the experiment must not turn the CNN baseline into an unfolded model
    assert compose_cfg([f"+experiment=sulam2020_{dataset}", "model=cnn"]).model.unfoldings == 0
    assert compose_cfg([f"+experiment=sulam2020_{dataset}", "model=lbp"]).model.unfoldings == 6
    # Sulam et al.'s notebooks: ML-ISTA 99.11 % (MNIST) and 82.93 % (CIFAR-10)
    assert cfg.paper.acc[dataset].ml_ista == {"mnist": 99.11, "cifar10": 82.93}[dataset]
