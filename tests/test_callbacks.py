"""Trainer callbacks: every hook on every trainer, state resumed exactly, refusals before any work,
a user's own callback from their own folder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, read_metrics, run_cli, wait_for_history
from unroll_cli.errors import ConfigError
from unroll_cli.run import run
from unroll_cli.train.callbacks import Callback


class Recording(Callback):
    """Writes down every call it gets."""

    def __init__(self):
        self.calls, self.steps, self.validations = [], [], []

    def on_fit_start(self, trainer):
        self.calls.append("start")

    def after_step(self, trainer, step):
        assert not torch.is_grad_enabled()
        self.steps.append(step)

    def on_validation(self, trainer, number, metrics):
        self.validations.append((number, metrics[trainer.task.monitor]))

    def on_fit_end(self, trainer):
        self.calls.append("end")


class SGDOnly(Callback):
    """A callback valid only with SGD (ENorm's kind of restriction)."""

    def check(self, model, task, cfg):
        if cfg.optim._target_ != "torch.optim.SGD":
            raise ConfigError(f"needs optim=sgd, not optim._target_={cfg.optim._target_}")


class NormOfConcatenatedGradients(Callback):
    """The gradient norm of every step, computed another way than GradientNorm does."""

    def __init__(self):
        self.norms = []

    def after_step(self, trainer, step):
        grads = [p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]
        self.norms.append(torch.cat(grads).double().norm().item())


@pytest.mark.parametrize("trainer", [
    ["trainer.max_epochs=3"],
    ["trainer=layerwise", "model.layers=2", "trainer.val_every_steps=2", "trainer.stage_patience_steps=4",
     "trainer.stage_max_steps=6"]])
def test_every_trainer_calls_every_hook_after_every_step_and_validation(tiny_cfg, tmp_path, one_thread, trainer):
    recording = Recording()
    run(tiny_cfg("model=lista_cp", *trainer, "tensorboard=false"), tmp_path, callbacks={"rec": recording})
    history = pd.read_csv(tmp_path / "history.csv")
    assert recording.calls == ["start", "end"]
    assert recording.steps == list(range(1, history["step"].iloc[-1] + 1))
    assert recording.validations == list(zip(range(1, len(history) + 1), history["val/nmse_db"]))


def test_grad_norm_is_each_epochs_mean_gradient_norm(tiny_cfg, tmp_path, one_thread):
    independent = NormOfConcatenatedGradients()
    run(tiny_cfg("model=lista_cp", "+callbacks=grad_norm", "tensorboard=false"), tmp_path,
        callbacks={"check": independent})
    history = pd.read_csv(tmp_path / "history.csv")
    per_epoch = torch.tensor(independent.norms, dtype=torch.float64).reshape(len(history), -1).mean(dim=1)
    assert history["train/grad_norm"].tolist() == pytest.approx(per_epoch.tolist(), rel=1e-9)


def test_a_callback_refuses_an_optimizer_before_any_work_naming_both_keys(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    cfg.trusted_packages = ["test_callbacks"]
    cfg.callbacks = {"sgd_only": {"_target_": "test_callbacks.SGDOnly"}}
    with pytest.raises(ConfigError, match=r"callbacks\.sgd_only: needs optim=sgd, not optim\._target_=torch"):
        run(cfg, tmp_path)
    assert not (tmp_path / "history.csv").exists() and not (tmp_path / "checkpoints").exists()
    cfg.optim = OmegaConf.merge(tiny_cfg("optim=sgd").optim)
    run(cfg, tmp_path)
    assert read_metrics(tmp_path)["status"] == "completed"


@pytest.mark.parametrize("overrides, named", [
    (["+callbacks=grad_norm", "+callbacks.grad_norm.every=3"], "callbacks.grad_norm: TypeError"),
    (["+callbacks.oops=3"], "callbacks.oops is not allowed: a node with a _target_"),
    (["+callbacks.shell._target_=os.system"], "callbacks.shell._target_='os.system' is not allowed")])
def test_a_bad_callback_is_refused_naming_its_key(tiny_cfg, tmp_path, overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("(", r"\(")):
        run(tiny_cfg(*overrides), tmp_path)


USER_CALLBACK = '''
import torch
from unroll_cli.train.callbacks import Callback


class ParameterTrace(Callback):
    """The sum over steps of every parameter's sum: any step redone or lost on resume changes it."""

    def __init__(self, scale):
        self.scale, self.trace, self.steps = scale, torch.zeros((), dtype=torch.float64), 0

    def after_step(self, trainer, step):
        self.trace += self.scale * sum(p.double().sum() for p in trainer.model.parameters())
        self.steps += 1

    def on_fit_end(self, trainer):
        trainer.recorder.write_text("trace.txt", f"{self.steps} {self.trace.item()!r}")

    def state_dict(self):
        return {"trace": self.trace, "steps": self.steps}

    def load_state_dict(self, state):
        self.trace, self.steps = state["trace"], state["steps"]
'''


@pytest.mark.slow
def test_a_users_callback_from_their_own_folder_resumes_exactly_after_a_kill(tmp_path):
    """docs/architecture.md's example as a user types it: a module in their folder, a YAML file in their
    config folder found through hydra.searchpath, selected with a built-in one; SIGKILL after three
    epochs, then the same command again."""
    (tmp_path / "my_callbacks.py").write_text(USER_CALLBACK)
    (tmp_path / "my_conf/callbacks").mkdir(parents=True)
    (tmp_path / "my_conf/callbacks/trace.yaml").write_text(
        "# @package _global_\n"
        "trusted_packages: [my_callbacks]\n"
        "callbacks:\n"
        "  trace:\n"
        "    _target_: my_callbacks.ParameterTrace\n"
        "    scale: 0.5\n")
    args = [*TINY, "model=lista_cp", "trainer.max_epochs=30", "tensorboard=false",
            f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "+callbacks=[grad_norm,trace]"]
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": f"{tmp_path}{os.pathsep}{Path(__file__).parents[1]}"}
    straight = run_cli([*args, f"hydra.run.dir={tmp_path / 'straight'}"], cwd=tmp_path, env=env, process=True)
    assert straight.returncode == 0, straight.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "unroll_cli.cli", *args, f"hydra.run.dir={killed}"],
                            cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_history(killed, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert read_metrics(killed)["status"] == "running"
    again = run_cli([*args, f"hydra.run.dir={killed}"], cwd=tmp_path, env=env, process=True)
    assert again.returncode == 0, again.stderr
    assert "resumed from its last checkpoint" in again.stdout + again.stderr
    steps, trace = (tmp_path / "straight/trace.txt").read_text().split()
    assert int(steps) == 30 * 5  # every step of the 30 epochs, once
    assert (killed / "trace.txt").read_text() == (tmp_path / "straight/trace.txt").read_text()
    assert read_metrics(killed)["metrics"] == read_metrics(tmp_path / "straight")["metrics"]
    histories = [pd.read_csv(folder / "history.csv").drop(columns="seconds") for folder in (killed, tmp_path / "straight")]
    pd.testing.assert_frame_equal(*histories)  # train/grad_norm of the built-in callback beside it
    assert histories[0]["train/grad_norm"].notna().all()
