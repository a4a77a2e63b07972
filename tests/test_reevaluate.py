"""``unroll-eval RUN_DIR [overrides]``: a finished run's model evaluated again on other test data, into a
new run directory that unroll-report reads; overrides that would change the model or its training refused."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from conftest import TINY, compose_cfg, read_metrics
from test_denoising_task import folders  # noqa: F401  (the fixture: tiny train and test folders)
from test_denoising_experiment import TINY_RECIPE
from unroll_cli.record.run_dir import write_hydra_files
from unroll_cli.reevaluate import main as eval_main
from unroll_cli.report.aggregate import main as report_main
from unroll_cli.run import build_model, build_task, run


def train(run_dir, overrides: list[str]) -> None:
    """A run as unroll-train writes it (``.hydra/`` beside the run's files)."""
    cfg = compose_cfg(overrides)
    write_hydra_files(run_dir, cfg, None, overrides)
    run(cfg, run_dir, overrides)


@pytest.fixture(scope="module")
def lista_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lista") / "run"
    train(run_dir, [*TINY, "model=lista_cpss", "trainer.max_epochs=3", "optim.lr=0.01", "tensorboard=false"])
    return run_dir


def test_a_lista_run_at_another_snr_is_its_best_model_on_new_noisy_test_data(lista_run, tmp_path, one_thread):
    out = tmp_path / "snr30"
    assert eval_main([str(lista_run), "data.snr_db=30", "tensorboard=false", f"hydra.run.dir={out}"]) == 0
    record = read_metrics(out)
    assert record["status"] == "completed"
    assert record["source"] == {"run": str(lista_run.resolve()), "checkpoint": "best.pt",
                                "epoch": torch.load(lista_run / "checkpoints/best.pt", weights_only=True)["epoch"]}
    # independently: the best weights on the task's test set at 30 dB, the NMSE pooled by hand
    cfg = compose_cfg([*TINY, "model=lista_cpss", "data.snr_db=30"])
    task = build_task(cfg, torch.device("cpu"))
    model = build_model(cfg.model, task)
    model.load_state_dict(torch.load(lista_run / "checkpoints/best.pt", weights_only=True)["model"])
    y, x = (t.double() for t in task.test)
    clean = x @ task.A.double().t()
    assert ((y - clean).norm() / clean.norm()).item() == pytest.approx(10 ** (-30 / 20), rel=0.15)
    with torch.no_grad():
        estimate = model(task.test[0])[-1].double()
    nmse_db = 10 * math.log10(((estimate - x) ** 2).sum().item() / (x ** 2).sum().item())
    assert record["metrics"]["test/nmse_db"] == pytest.approx(nmse_db, abs=1e-4)
    assert record["metrics"]["test/nmse_db"] != read_metrics(lista_run)["metrics"]["test/nmse_db"]
    assert yaml_list(out / ".hydra/overrides.yaml")[-2:] == ["data.snr_db=30", "tensorboard=false"]


def test_without_overrides_the_evaluation_is_the_runs_own(lista_run, tmp_path, one_thread):
    out = tmp_path / "again"
    assert eval_main([str(lista_run), f"hydra.run.dir={out}"]) == 0
    assert read_metrics(out)["metrics"] == read_metrics(lista_run)["metrics"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "layers.csv"), pd.read_csv(lista_run / "layers.csv"))
    assert not (lista_run / "metrics.json.unreadable").exists()


@pytest.mark.parametrize("override, named", [
    ("model.layers=3", "model.layers would change the model or its training"),
    ("optim.lr=0.5", "optim.lr would change"),
    ("data.m=30", "data.m would change"),
    ("seed=3", "seed would change"),
    ("data.snr_db=10,20", "no sweeps"),
    ("hydra.sweep.dir=x", "hydra.run.dir=DIR only")])
def test_an_override_that_changes_the_model_or_training_is_refused_naming_it(lista_run, tmp_path, capsys,
                                                                             override, named):
    assert eval_main([str(lista_run), override, f"hydra.run.dir={tmp_path / 'out'}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("unroll-eval: ") and named in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_the_run_itself_and_a_non_run_are_refused(lista_run, tmp_path, capsys):
    before = (lista_run / "metrics.json").read_text()
    assert eval_main([str(lista_run), f"hydra.run.dir={lista_run}"]) == 2
    assert eval_main([str(tmp_path), f"hydra.run.dir={tmp_path / 'out'}"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert "is the run itself" in errors[0] and "overrides.yaml cannot be read" in errors[1]
    assert (lista_run / "metrics.json").read_text() == before


def test_a_pudle_run_at_three_noise_levels_reads_in_unroll_report(folders, tmp_path, one_thread):  # noqa: F811
    run_overrides = ["+experiment=tolooshams2022_denoise", f"data.train_dir={folders[0]}",
                     f"data.test_dir={folders[1]}", *TINY_RECIPE, "model.grad=g_ae_ls"]
    train(tmp_path / "run", run_overrides)
    assert eval_main([str(tmp_path / "run"), "data.test_sigmas=[15,25,50]",
                      f"hydra.run.dir={tmp_path / 'evals/sigmas'}"]) == 0
    metrics = read_metrics(tmp_path / "evals/sigmas")["metrics"]
    trained = read_metrics(tmp_path / "run")["metrics"]
    assert metrics["test/psnr_s25"] == trained["test/psnr_s25"]  # the same noise, the same model
    assert metrics["test/psnr"] == trained["test/psnr"]  # the headline stays at the training sigma
    inputs = pd.read_csv(tmp_path / "evals/sigmas/items.csv").groupby("sigma")["psnr_input"].mean()
    assert inputs[15.0] > inputs[25.0] > inputs[50.0]  # each level's own noise
    assert len({metrics["test/psnr_s15"], metrics["test/psnr_s25"], metrics["test/psnr_s50"]}) == 3
    assert yaml_list(tmp_path / "run/.hydra/overrides.yaml") == run_overrides  # the run is left as it was
    assert report_main([str(tmp_path / "evals")]) == 0
    runs = pd.read_csv(tmp_path / "evals/runs.csv")
    assert runs["data.test_sigmas"].tolist() == ["[15,25,50]"]


def yaml_list(path) -> list[str]:
    import yaml

    return yaml.safe_load(path.read_text())
