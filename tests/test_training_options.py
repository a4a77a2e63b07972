"""Training options checked against independent computations: early stopping, reloading the best
model before the test metrics, the scheduler's step order, gradient clipping, the fixed training
set, the LASSO loss and the per-sample NMSE convention."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import read_metrics
from unroll_cli.record.recorder import RunRecorder
from unroll_cli.run import build_model, build_task, run
from unroll_cli.train.trainer import Trainer

CPU = torch.device("cpu")
# On TINY this learning rate makes the validation NMSE best after epoch 1 (each test checks it).
DIVERGING = ("model=lista_cp", "optim.lr=0.1")


# ---------------------------------------------------------------------------- helpers
def run_tiny(tiny_cfg, run_dir: Path, *overrides: str):
    """Run TINY + ``overrides`` in-process; return (cfg, history.csv, metrics.json)."""
    cfg = tiny_cfg("tensorboard=false", *overrides)
    run(cfg, run_dir)
    return cfg, pd.read_csv(run_dir / "history.csv"), read_metrics(run_dir)


def task_and_model(cfg, checkpoint: Path | None = None):
    """The task and model of ``cfg`` rebuilt here, the model loaded from ``checkpoint`` if given."""
    task = build_task(cfg, CPU)
    model = build_model(cfg.model, task)
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return task, model.eval()


def rebuilt(cfg, run_dir: Path, name: str):
    """Task and model of a finished run, with checkpoint ``name`` (best.pt, last.pt) loaded."""
    task, model = task_and_model(cfg, run_dir / "checkpoints" / name)
    assert np.array_equal(task.A.numpy(), np.load(run_dir / "A.npy"))  # the same problem as the run's
    return task, model


def last_layer(model, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(y)[-1].double().numpy()


def as_numpy(*tensors: torch.Tensor) -> list[np.ndarray]:
    return [t.double().numpy() for t in tensors]


def pooled_nmse_db(x_hat: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(((x_hat - x) ** 2).sum() / (x ** 2).sum()))


def per_sample_nmse_db(x_hat: np.ndarray, x: np.ndarray) -> float:
    return float(np.mean(10 * np.log10(((x_hat - x) ** 2).sum(axis=1) / (x ** 2).sum(axis=1))))


def lasso_objective(y: np.ndarray, x_hat: np.ndarray, A: np.ndarray, lam: float) -> float:
    """Mean over samples of 0.5 ||y - A x_hat||^2 + lam ||x_hat||_1."""
    return float(np.mean(0.5 * ((y - x_hat @ A.T) ** 2).sum(axis=1) + lam * np.abs(x_hat).sum(axis=1)))


def expected_stop(val: list[float], patience: int) -> int | None:
    """The first epoch after which val has not improved (lower) for ``patience`` epochs; None: never."""
    best, stale = math.inf, 0
    for epoch, value in enumerate(val, start=1):
        best, stale = (value, 0) if value < best else (best, stale + 1)
        if stale >= patience:
            return epoch
    return None


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def row_indices(rows: torch.Tensor, table: torch.Tensor) -> list[int]:
    """The row of ``table`` equal to each row of ``rows`` (each must occur exactly once)."""
    match = (rows[:, None, :] == table[None, :, :]).all(dim=-1)
    assert (match.sum(dim=1) == 1).all()
    return match.int().argmax(dim=1).tolist()


# ---------------------------------------------------------------------------- early stopping, best model
def test_patience_stops_after_that_many_epochs_without_improvement(tiny_cfg, tmp_path, one_thread):
    """Without patience every epoch runs; with it, the run stops where the rule says."""
    _, full, record = run_tiny(tiny_cfg, tmp_path / "full", *DIVERGING, "trainer.max_epochs=4")
    assert len(full) == record["epochs"] == 4
    val = full["val/nmse_db"].tolist()
    assert expected_stop(val, 1) == 2  # premise: validation gets worse after epoch 1
    for patience in (1, 2):
        stop = expected_stop(val, patience)
        assert stop is not None and stop < 4
        _, history, record = run_tiny(tiny_cfg, tmp_path / f"p{patience}", *DIVERGING,
                                      "trainer.max_epochs=4", f"trainer.patience={patience}")
        assert len(history) == record["epochs"] == stop
        assert history["val/nmse_db"].tolist() == pytest.approx(val[:stop])  # the same trajectory


def test_test_metrics_are_those_of_the_best_validation_epoch(tiny_cfg, tmp_path, one_thread):
    """The best epoch's model is reloaded: its val NMSE is reported and its test NMSE too."""
    cfg, history, record = run_tiny(tiny_cfg, tmp_path, *DIVERGING, "trainer.max_epochs=3")
    val = history["val/nmse_db"]
    best_epoch = int(history["epoch"][val.idxmin()])
    assert best_epoch < len(history)  # premise: the last epoch is not the best
    metrics = record["metrics"]
    assert metrics["val/nmse_db"] == pytest.approx(val.min(), abs=1e-9)
    assert torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)["epoch"] == best_epoch

    task, best = rebuilt(cfg, tmp_path, "best.pt")
    _, last = rebuilt(cfg, tmp_path, "last.pt")
    y, x = task.test
    best_nmse = pooled_nmse_db(last_layer(best, y), *as_numpy(x))
    assert metrics["test/nmse_db"] == pytest.approx(best_nmse, abs=1e-6)
    assert abs(pooled_nmse_db(last_layer(last, y), *as_numpy(x)) - best_nmse) > 1e-3  # reloading mattered


# ---------------------------------------------------------------------------- scheduler, gradient clipping
@pytest.mark.parametrize("at_start, offset", [(False, 1), (True, 0)])
def test_step_scheduler_halves_the_learning_rate_each_epoch(tiny_cfg, tmp_path, one_thread, at_start, offset):
    """history.csv's lr: lr0 * 0.5^(epoch-1); one epoch earlier with scheduler_step_at_start."""
    cfg, history, _ = run_tiny(tiny_cfg, tmp_path, "sched=step", "sched.step_size=1", "sched.gamma=0.5",
                               "trainer.max_epochs=3", f"trainer.scheduler_step_at_start={at_start}")
    expected = [cfg.optim.lr * 0.5 ** (epoch - offset) for epoch in (1, 2, 3)]
    assert history["lr"].tolist() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("clip, clipped", [(1e-3, True), (1e6, False)])
def test_grad_clip_bounds_the_sgd_update(tiny_cfg, tmp_path, one_thread, clip, clipped):
    """One plain SGD step moves the parameters by -lr * g * min(1, clip / ||g||)."""
    cfg = tiny_cfg("model=lista_cp", "optim=sgd", "optim.momentum=0", "optim.lr=0.5",
                   f"trainer.grad_clip={clip}")
    task, model = task_and_model(cfg)
    model.double().train()  # float64: the update's norm is compared to ~1e-10
    recorder = RunRecorder(tmp_path, tensorboard=False)
    trainer = Trainer(cfg.trainer, model, task, cfg.optim, cfg.sched, recorder)
    params = trainer.trainable(model.parameters())
    y, x = (t.double() for t in next(task.train_batches()))
    supervised = ((model(y)[-1] - x) ** 2).sum(dim=1).mean()  # data.loss=supervised
    grad = flat(torch.autograd.grad(supervised, params))
    assert (grad.norm().item() > clip) == clipped  # premise
    before = flat(params)
    trainer.train_step(trainer.make_optimizer(params), (y, x))
    update = flat(params) - before
    lr = cfg.optim.lr
    assert update.norm().item() == pytest.approx(lr * (clip if clipped else grad.norm().item()), rel=1e-5)
    expected = -lr * grad * min(1.0, clip / grad.norm().item())
    assert torch.allclose(update, expected, rtol=1e-5, atol=1e-12)


# ---------------------------------------------------------------------------- fixed training set
def test_fixed_training_set_epochs_are_permutations_of_it(tiny_cfg):
    """data.online=false: n_train // batch_size batches of distinct rows of the set, reshuffled each epoch."""
    cfg = tiny_cfg("data.online=false", "data.n_train=100")
    n_train, batch_size = cfg.data.n_train, cfg.data.batch_size
    task = build_task(cfg, CPU)
    y_all, x_all = task.train_set
    assert len(y_all) == len(x_all) == n_train
    orders = []
    for _ in range(2):
        batches = list(task.train_batches())
        assert len(batches) == n_train // batch_size
        order = []
        for y, x in batches:
            rows = row_indices(y, y_all)
            assert len(rows) == batch_size and torch.equal(x, x_all[rows])
            order += rows
        assert len(set(order)) == len(order) == (n_train // batch_size) * batch_size
        orders.append(order)
    assert orders[0] != orders[1]


def test_a_run_on_a_fixed_training_set_completes_with_one_pass_per_epoch(tiny_cfg, tmp_path, one_thread):
    cfg, history, record = run_tiny(tiny_cfg, tmp_path, "model=lista_cp", "data.online=false",
                                    "data.n_train=100", "trainer.steps_per_epoch=null")
    assert record["status"] == "completed"
    assert record["epochs"] == cfg.trainer.max_epochs
    per_epoch = cfg.data.n_train // cfg.data.batch_size  # not trainer.steps_per_epoch
    assert history["step"].tolist() == [per_epoch * e for e in range(1, cfg.trainer.max_epochs + 1)]


# ---------------------------------------------------------------------------- LASSO loss, per-sample NMSE
def test_lasso_loss_is_the_lasso_objective_of_the_last_layer(tiny_cfg):
    cfg = tiny_cfg("model=lista_cp", "data.loss=lasso")
    task, model = task_and_model(cfg)
    y, x = next(task.train_batches())
    with torch.no_grad():
        loss = task.loss(model(y), (y, x), model).item()
    expected = lasso_objective(*as_numpy(y), last_layer(model, y), *as_numpy(task.A), cfg.model.lam)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_a_lasso_run_lowers_the_validation_lasso_objective(tiny_cfg, tmp_path, one_thread):
    cfg, _, record = run_tiny(tiny_cfg, tmp_path, "model=lista_cp", "data.loss=lasso", "optim.lr=1e-2")
    assert record["status"] == "completed"
    task, untrained = task_and_model(cfg)
    _, trained = rebuilt(cfg, tmp_path, "last.pt")
    y, A = as_numpy(task.val[0], task.A)
    before = lasso_objective(y, last_layer(untrained, task.val[0]), A, cfg.model.lam)
    after = lasso_objective(y, last_layer(trained, task.val[0]), A, cfg.model.lam)
    assert after < before - 1e-3


def test_per_sample_nmse_is_the_mean_of_per_sample_db(tiny_cfg, tmp_path, one_thread):
    """data.nmse=per_sample: test and val NMSE of the best model (val monitored), differing from pooled."""
    cfg, _, record = run_tiny(tiny_cfg, tmp_path, "model=lista_cp", "data.nmse=per_sample")
    task, model = rebuilt(cfg, tmp_path, "best.pt")
    y, x = task.test
    x_hat, (x,) = last_layer(model, y), as_numpy(x)
    assert ((x ** 2).sum(axis=1) > 0).all()  # premise: every sample's relative error is defined
    per_sample = per_sample_nmse_db(x_hat, x)
    assert record["metrics"]["test/nmse_db"] == pytest.approx(per_sample, abs=1e-6)
    y_val, (x_val,) = task.val[0], as_numpy(task.val[1])
    assert record["metrics"]["val/nmse_db"] == pytest.approx(per_sample_nmse_db(last_layer(model, y_val), x_val),
                                                             abs=1e-6)
    assert abs(per_sample - pooled_nmse_db(x_hat, x)) > 0.01  # well above the 1e-6 agreement


def test_the_linear_schedule_decays_the_rate_to_zero_over_the_run(tiny_cfg, tmp_path, one_thread):
    """sched=linear: epoch e (1-based) trains at optim.lr x (1 - (e - 1) / max_epochs)."""
    cfg, history, record = run_tiny(tiny_cfg, tmp_path, "model=lista_cp", "sched=linear", "trainer.max_epochs=4",
                                    "optim.lr=0.01")
    assert history["lr"].tolist() == pytest.approx([0.01 * (1 - e / 4) for e in range(4)])
