"""The run flow in-process: learning beats ISTA, NaN handling, resume, the stage-wise schedule."""
from __future__ import annotations

import time

import pytest
import torch

from conftest import read_metrics
from unroll_cli.errors import ConfigError
from unroll_cli.validation import validate
from unroll_cli.record.run_dir import RunDirError, claim
from unroll_cli.run import build_model, build_task, run
from unroll_cli.train.callbacks import Callback, RunPruned
from unroll_cli.train.layerwise import LayerwiseTrainer
from unroll_cli.train.trainer import NonFiniteLossError


def test_short_training_of_lista_cpss_beats_ista_at_the_same_depth(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model=lista_cpss", "data.m=64", "data.n=128", "data.n_test=500", "data.batch_size=64",
                   "model.layers=6", "trainer.max_epochs=4", "trainer.steps_per_epoch=50", "optim.lr=2e-3",
                   "tensorboard=false")
    value = run(cfg, tmp_path)
    metrics = read_metrics(tmp_path)["metrics"]
    assert value == metrics["test/nmse_db"]
    assert metrics["test/nmse_db"] < metrics["baseline/ista/test/nmse_db"] - 3.0
    assert metrics["test/nmse_db"] < metrics["baseline/fista/test/nmse_db"] - 3.0


def test_non_finite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model=lista", "optim.lr=1e30", "tensorboard=false")
    with pytest.raises(NonFiniteLossError):
        run(cfg, tmp_path)
    record = read_metrics(tmp_path)
    assert record["status"] == "failed" and "loss" in record["error"]
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values())


# a pruner's stop comes after the epoch's checkpoint; an exit (submitit's requeue) inside a callback leaves
# the checkpoint before that epoch, from which a resume redoes it
@pytest.mark.parametrize("stop, status, saved_epoch", [(SystemExit(-1), "interrupted", 0),
                                                       (RunPruned("pruned at step 1"), "pruned", 1)])
def test_a_run_stopped_after_an_epoch_is_recorded_with_its_checkpoint(tiny_cfg, tmp_path, stop, status, saved_epoch):
    class StopAfterFirstEpoch(Callback):
        def on_validation(self, trainer, number, metrics):
            assert trainer.task.monitor_mode == "min"  # NMSE in dB: lower is better
            raise stop

    overrides = ["trainer.max_epochs=5", "tensorboard=false"]
    with pytest.raises(type(stop)):
        run(tiny_cfg(*overrides), tmp_path, overrides, callbacks={"stop": StopAfterFirstEpoch()})
    record = read_metrics(tmp_path)
    assert record["status"] == status
    assert torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["epoch"] == saved_epoch
    # the same job run again resumes an interrupted run and starts a pruned one again; another job is refused
    assert claim(tmp_path, overrides).action == ("resume" if status == "interrupted" else "fresh")
    with pytest.raises(RunDirError, match="holds another run"):
        claim(tmp_path, ["trainer.max_epochs=6", "tensorboard=false"])


def test_resume_continues_to_the_same_result(tiny_cfg, tmp_path):
    common = ("model=lista_cp", "model.tied=false", "trainer.steps_per_epoch=10", "tensorboard=false")
    straight = run(tiny_cfg(*common, "trainer.max_epochs=4"), tmp_path / "straight")
    run(tiny_cfg(*common, "trainer.max_epochs=2"), tmp_path / "first")
    resumed = run(tiny_cfg(*common, "trainer.max_epochs=4", f"resume={tmp_path / 'first'}"),
                  tmp_path / "resumed")
    assert resumed == straight
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(tmp_path / "resumed")["epochs"] == 4  # the history carries over


def test_layerwise_learning_rates_follow_the_stage_schedule(tiny_cfg):
    cfg = tiny_cfg("model=lista", "model.tied=false", "trainer=layerwise", "optim.lr=1.0")
    task = build_task(cfg, torch.device("cpu"))
    model = build_model(cfg.model, task)
    trainer = LayerwiseTrainer(cfg.trainer, model, task, cfg.optim, cfg.sched, recorder=None)
    # Stage (a) of layer 3: only the new layer's variables, at lr0.
    (group,) = trainer.stage_groups(2, 0, 1.0)
    assert {id(p) for p in group["params"]} == {id(p) for p in model.layer_parameters(2)}
    assert group["lr"] == 1.0
    # Stage (b) of layer 3: every layer <= 3, at lr0 * 0.2 * 0.3^(3 - s) for layer s.
    lrs = [g["lr"] for g in trainer.stage_groups(2, 1, 1.0)]
    assert lrs == pytest.approx([0.2 * 0.3 ** 2, 0.2 * 0.3, 0.2])


def test_layerwise_run_trains_every_stage_and_resumes_after_the_last_one(tiny_cfg, tmp_path):
    common = ("model=lista_cpss", "model.layers=2", "trainer=layerwise", "trainer.val_every_steps=2",
              "trainer.stage_patience_steps=4", "trainer.stage_max_steps=12", "tensorboard=false")
    run(tiny_cfg(*common), tmp_path / "full")
    history = read_metrics(tmp_path / "full")["epochs"]
    assert history == 2 * 3  # layers x stages
    # A checkpoint after stage (a) of layer 2 resumes with the two remaining stages.
    state = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)
    state["position"] = [1, 0]
    state["history"] = state["history"][:4]
    state["wall_s"] = 1000.0  # seconds the first attempt had taken by that checkpoint
    (tmp_path / "part/checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "part/checkpoints/last.pt")
    started = time.time()
    run(tiny_cfg(*common, f"resume={tmp_path / 'part'}"), tmp_path / "resumed")
    assert read_metrics(tmp_path / "resumed")["epochs"] == 6
    # wall_s: the first attempt's 1000 s and this one's
    assert 1000.0 < read_metrics(tmp_path / "resumed")["wall_s"] <= 1000.0 + time.time() - started


def test_a_layerwise_run_stopped_inside_a_stage_resumes_there_to_the_same_result(tiny_cfg, tmp_path, one_thread,
                                                                                 monkeypatch):
    """Offline data, 3 batches an epoch: the stop falls inside a stage and inside an epoch, so the resume
    must restore the stage's optimizer, step and best, and redraw the epoch's shuffle and skip into it."""
    common = ("model=lista_cpss", "model.layers=2", "trainer=layerwise", "data.online=false", "data.n_train=96",
              "trainer.val_every_steps=2", "trainer.stage_patience_steps=6", "trainer.stage_max_steps=15",
              "trainer.checkpoint_every_s=0", "optim.lr=0.01", "tensorboard=false",
              "+callbacks=grad_norm")  # a callback's state inside the stage (its running sum) resumes too
    run(tiny_cfg(*common), tmp_path / "straight")
    straight = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    assert straight["history"][1]["stage_steps"] > 9  # the premise: the second stage runs past the stop
    stop_at = straight["history"][0]["step"] + 9  # step 9 of the second stage; its last validation: step 8
    original = LayerwiseTrainer.train_step

    def interrupted_step(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        if self.global_step == stop_at:
            raise KeyboardInterrupt
        return loss

    monkeypatch.setattr(LayerwiseTrainer, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(*common), tmp_path / "stopped")
    monkeypatch.setattr(LayerwiseTrainer, "train_step", original)
    saved = torch.load(tmp_path / "stopped/checkpoints/last.pt", weights_only=True)
    assert (saved["position"], saved["stage_progress"]["step"]) == ([0, 0], 8)
    assert saved["stream"]["drawn"] in (1, 2)  # inside an epoch
    run(tiny_cfg(*common, f"resume={tmp_path / 'stopped'}"), tmp_path / "resumed")
    resumed = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    assert without_seconds(resumed["history"]) == without_seconds(straight["history"])
    assert resumed["history"][1]["seconds"] >= saved["stage_progress"]["seconds"]  # the stage's earlier seconds
    assert read_metrics(tmp_path / "resumed")["metrics"] == read_metrics(tmp_path / "straight")["metrics"]


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize("option", ["trainer.precision=bf16",
                                    pytest.param("trainer.compile=true", marks=pytest.mark.slow)])
def test_bf16_autocast_and_compile_train_and_improve_on_the_initialisation(tiny_cfg, tmp_path, option):
    cfg = tiny_cfg("model=lista_cp", option, "trainer.max_epochs=3", "trainer.steps_per_epoch=30",
                   "optim.lr=2e-3", "tensorboard=false")
    run(cfg, tmp_path)
    metrics = read_metrics(tmp_path)["metrics"]
    # at its ISTA initialisation the model equals ISTA; training must have moved it below
    assert metrics["test/nmse_db"] < metrics["baseline/ista/test/nmse_db"] - 0.5


def test_cuda_graphs_exclude_compile_and_fall_back_to_eager_steps_off_cuda(tiny_cfg, tmp_path, caplog):
    with pytest.raises(ConfigError, match="trainer.cuda_graphs=True is not allowed"):
        validate(tiny_cfg("trainer.cuda_graphs=true", "trainer.compile=true"))
    with caplog.at_level("INFO"):
        run(tiny_cfg("device=cpu", "trainer.cuda_graphs=true", "tensorboard=false"), tmp_path)
    assert read_metrics(tmp_path)["status"] == "completed"
    assert "not CUDA: training eagerly" in caplog.text


@pytest.mark.parametrize("trainer", [[], ["trainer=layerwise", "model.layers=2", "trainer.val_every_steps=2",
                                          "trainer.stage_patience_steps=2", "trainer.stage_max_steps=4"]])
def test_a_finished_run_resumed_into_a_new_directory_has_its_history_and_checkpoints(tiny_cfg, tmp_path, trainer):
    """Nothing is left to train, yet the new directory holds what a run directory holds."""
    common = ("model=lista_cp", *trainer, "tensorboard=false")
    run(tiny_cfg(*common), tmp_path / "first")
    run(tiny_cfg(*common, f"resume={tmp_path / 'first'}"), tmp_path / "again")
    assert (tmp_path / "again/history.csv").read_text() == (tmp_path / "first/history.csv").read_text()
    assert (tmp_path / "again/checkpoints/last.pt").is_file()
    assert read_metrics(tmp_path / "again")["metrics"] == read_metrics(tmp_path / "first")["metrics"]
