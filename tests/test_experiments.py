"""The published set-ups: published curves beside the run, model choice, packaging of the configs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_PROBLEM, compose_cfg, read_metrics
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
