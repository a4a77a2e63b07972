"""No key is accepted and ignored, and what Hydra itself refuses is one message with exit code 2.

A command line Hydra cannot parse or compose (a key typo, an option a group lacks, a value of the
wrong type) is refused before Hydra starts, naming the override and the closest valid keys or
options; a key the chosen trainer or data does not read is refused naming it and what decides.
Each case asserts the message, exit code 2, no traceback, and that no run directory was made.
"""
from __future__ import annotations

import pytest
import torch

from conftest import TINY, TINY_PROBLEM, read_metrics, run_cli, tiny
from unroll_cli.reevaluate import main as eval_main
from unroll_cli.train.checkpoints import LINK

FAST = ["tensorboard=false"]


def assert_refused_before_hydra(tmp_path, overrides: list[str], *named: str) -> str:
    """Run ``unroll-train OVERRIDES``; its refusal (one line), with nothing written."""
    run_dir = tmp_path / "run"
    flags = [o for o in overrides if o.startswith("-")]
    result = run_cli([*flags, *[o for o in overrides if not o.startswith("-")], *FAST,
                      f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and len(result.stderr.strip().splitlines()) == 1, output
    for text in named:
        assert text in result.stderr, output
    assert not run_dir.exists() and not (tmp_path / "sweep").exists()
    return result.stderr


@pytest.mark.parametrize("overrides, named", [
    (["model.layerz=3"], ["model.layerz is not a key of model", "did you mean model.layers?"]),
    (["modle=lista"], ["modle is not a key of the config", "did you mean model?"]),
    (["trainer.max_epoch=3"], ["trainer.max_epoch is not a key", "did you mean trainer.max_epochs?"]),
    (["data.nn=3"], ["data.nn is not a key of data", "did you mean data.n"]),
    (["hydra.job.chdr=true"], ["hydra.job.chdr is not a key", "did you mean hydra.job.chdir?"]),
    (["model=listaa"], ["model=listaa is not an option of model", "did you mean model=lista"]),
    (["optim=adamm"], ["optim=adamm is not an option of optim", "did you mean optim=adam"]),
    (["+experiment=chen2018"], ["experiment=chen2018 is not an option of experiment", "chen2018_lista"]),
    (["hydra/launcher=jobib"], ["hydra/launcher=jobib is not an option", "did you mean hydra/launcher=joblib?"]),
    (["data.n=abc"], ["data.n=abc", "could not be converted to Integer"]),
    (["model.layers=["], ["model.layers=[", "no viable alternative"]),
    (["~modle"], ["'modle' does not exist"]),
    (["+model.layers=3"], ["An item is already at 'model.layers'"]),
    (["-m", "model.layerz=1,2"], ["model.layerz is not a key of model", "did you mean model.layers?"]),
    (["-m", "model=lista,alista,listaa"], ["model=listaa is not an option of model"]),
    (["-m", "data.m=20", "sched=step,cosin"], ["sched=cosin is not an option of sched", "sched=cosine"]),
    (["-m", "data.n=40,abc"], ["data.n=abc: Value 'abc' of type 'str' could not be converted to Integer"]),
    (["-m", "seed=0,1", "trainer.progress=maybe,false"], ["trainer.progress=maybe"]),
    (["-m", "--cfg", "job", "model.layers=2,3"], ["--multirun and --cfg: give one of"]),
])
def test_what_hydra_cannot_compose_is_one_message_with_the_closest_keys(tmp_path, overrides, named):
    assert_refused_before_hydra(tmp_path, overrides, *named)


@pytest.mark.parametrize("key", ["trainer.max_epochs=3", "trainer.patience=2", "trainer.stop_at=-20",
                                 "trainer.steps_per_epoch=10", "trainer.scheduler_step_at_start=true"])
def test_the_end_to_end_trainers_keys_are_not_keys_of_the_layerwise_trainer(tmp_path, key):
    """Six stages once ran under trainer.max_epochs=1: the stage-wise schedule has no epochs."""
    name = key.partition("=")[0]
    assert_refused_before_hydra(tmp_path, [*TINY_PROBLEM, "trainer=layerwise", key],
                                f"{name} is not a key of trainer (LayerwiseTrainerConfig)",
                                "it is a key of TrainerConfig")


def test_a_key_added_with_plus_to_a_trainer_that_does_not_read_it_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*TINY_PROBLEM, "trainer=layerwise", "+trainer.max_epochs=1", *FAST,
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trainer.max_epochs is not a key of trainer (LayerwiseTrainerConfig)" in result.stdout + result.stderr
    assert not (run_dir / "metrics.json").exists() and not (run_dir / LINK).exists()


@pytest.mark.parametrize("sched, named", [
    ("step", "sched (torch.optim.lr_scheduler.StepLR) is not used by trainer=layerwise"),
    ("cosine", "sched.T_max: Interpolation key 'trainer.max_epochs' not found"),  # its T_max is the epochs
])
def test_a_scheduler_is_refused_with_the_layerwise_trainer(tmp_path, sched, named):
    run_dir = tmp_path / "run"
    result = run_cli([*tiny("trainer=layerwise", f"sched={sched}"), *FAST, f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output
    assert named in output
    assert not (run_dir / "metrics.json").exists() and not (run_dir / LINK).exists()


def test_steps_per_epoch_is_refused_where_the_data_sets_its_own_epoch(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*TINY, "data.online=false", "data.n_train=96", *FAST, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output
    assert "trainer.steps_per_epoch=5 is not used with sparse_coding data" in output
    assert "its epoch is 3 batches" in output  # a fixed set of 96, batches of 32
    assert not (run_dir / "metrics.json").exists() and not (run_dir / LINK).exists()


def test_a_layerwise_run_written_before_the_trainer_split_is_resumed_and_reevaluated(tmp_path, capsys):
    """Its checkpoints' config has the end-to-end keys the stage-wise schedule never read: they are
    dropped when it is read (resume and unroll-eval), and nothing else may differ."""
    run_dir = tmp_path / "old"
    stages = ["model=lista_cp", "model.layers=2", "trainer.val_every_steps=2", "trainer.stage_patience_steps=2",
              "trainer.stage_max_steps=4"]
    result = run_cli([*tiny("trainer=layerwise", *stages), *FAST, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    file = run_dir / LINK / "last.pt"
    state = torch.load(file, weights_only=True)
    state["config"]["trainer"].update(max_epochs=20, steps_per_epoch=100, patience=None, stop_at=None,
                                      scheduler_step_at_start=False)
    file.unlink()
    torch.save(state, file)
    again = tmp_path / "again"
    result = run_cli([*tiny("trainer=layerwise", *stages), *FAST, f"resume={run_dir}",
                      f"hydra.run.dir={again}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_metrics(again)["metrics"] == read_metrics(run_dir)["metrics"]
    assert eval_main([str(run_dir), f"hydra.run.dir={tmp_path / 'eval'}"]) == 0, capsys.readouterr().err
    assert read_metrics(tmp_path / "eval")["metrics"]["test/nmse_db"] == read_metrics(run_dir)["metrics"]["test/nmse_db"]
