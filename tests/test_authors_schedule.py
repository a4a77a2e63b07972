"""The authors' stage-wise schedule as their code ran (VITA-Group/ALISTA and LISTA-CPSS ``utils/train.py``):
the per-layer decay applied to the gradient before Adam with their loss scale, their stopping rule,
and their own problem (``data.A_path``, ``data.test_path``)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.io import loadmat

from conftest import TINY, TINY_PROBLEM, compose_cfg, tiny
from unroll_cli.errors import ConfigError
from unroll_cli.validation import changeable_keys, schema_defaults, validate
from unroll_cli.run import build_model, build_task, run
from unroll_cli.train.checkpoints import resume_conflicts
from unroll_cli.record.recorder import RunRecorder
from unroll_cli.train.layerwise import BatchStream, LayerwiseTrainer
from unroll_cli.train.tf_adam import TFAdam

CPU = torch.device("cpu")
ALISTA_DATA = Path(__file__).parents[2] / "shared" / "data" / "alista"


def layerwise(*extra: str, recorder: RunRecorder | None = None):
    """A tiny stage-wise set-up: its config, task, model (untied LISTA, 4 layers) and trainer (with
    ``recorder``, which a stage needs for its progress)."""
    cfg = compose_cfg(tiny("model=lista", "model.tied=false", "trainer=layerwise", *extra))
    task = build_task(cfg, CPU)
    model = build_model(cfg.model, task)
    return cfg, task, model, LayerwiseTrainer(cfg.trainer, model, task, cfg.optim, cfg.sched, recorder=recorder)


def train_stage(trainer: LayerwiseTrainer, model, batch, layer: int, stage: int, steps: int) -> None:
    trainer.model = trainer.forward = model
    optimizer = trainer.stage_optimizer(trainer.stage_groups(layer, stage, trainer.optim_cfg.lr))
    for _ in range(steps):
        trainer.train_step(optimizer, batch, layer + 1)


def adam_step(p, m, v, g, k: int, lr: float, betas, eps: float, tf_eps: bool):
    """Adam's k-th step (1-based) written out, in place on ``p``; returns the new moments. eps after
    the bias correction (PyTorch) or, with ``tf_eps``, before it (TensorFlow 1)."""
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    if tf_eps:
        p -= lr * (1 - beta2 ** k) ** 0.5 / (1 - beta1 ** k) * m / (v.sqrt() + eps)
    else:
        p -= lr * (m / (1 - beta1 ** k)) / ((v / (1 - beta2 ** k)).sqrt() + eps)
    return m, v


def reference_adam(model, task, batch, layer: int, stage: int, trainer: LayerwiseTrainer, steps: int,
                   tf_eps: bool = False) -> None:
    """Adam written out: the gradient of a layer-s variable times decay^(t-s) goes into both moments
    (tf.train.AdamOptimizer on get_train_op's scaled gradients), at the stage's learning rate."""
    cfg = trainer.optim_cfg
    lr = cfg.lr * trainer.s.stage_lr_factors[stage]
    scaled = [(p, trainer.s.layer_decay ** (layer - s)) for s in range(layer + 1) for p in model.layer_parameters(s)]
    m = [torch.zeros_like(p) for p, _ in scaled]
    v = [torch.zeros_like(p) for p, _ in scaled]
    for k in range(1, steps + 1):
        loss = task.loss(model(batch[0], layer + 1), batch, model)
        grads = torch.autograd.grad(loss, [p for p, _ in scaled])
        with torch.no_grad():
            for i, ((p, c), g) in enumerate(zip(scaled, grads)):
                m[i], v[i] = adam_step(p, m[i], v[i], c * g, k, lr, cfg.betas, cfg.eps, tf_eps)


@pytest.mark.parametrize("optim", ["adam", "adam_tf"])
@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_gradient_mode_is_adam_on_the_scaled_gradient_and_not_the_lr_multiplier(eps, optim):
    cfg, task, model, trainer = layerwise("trainer.decay_mode=gradient", f"optim={optim}", "optim.lr=0.01",
                                          f"optim.eps={eps}", "data.loss_reduction=tf_l2_loss")
    model = model.double()
    batch = tuple(t.double() for t in next(task.train_batches()))
    start = copy.deepcopy(model)
    layer, stage, steps = 2, 1, 3  # stage (b) of layer 3: layer 1's gradient x0.3^2

    train_stage(trainer, model, batch, layer, stage, steps)
    reference = copy.deepcopy(start)
    reference_adam(reference, task, batch, layer, stage, trainer, steps, tf_eps=optim == "adam_tf")
    other = copy.deepcopy(start)
    reference_adam(other, task, batch, layer, stage, trainer, steps, tf_eps=optim != "adam_tf")
    by_lr = copy.deepcopy(start)
    lr_cfg = compose_cfg([*TINY_PROBLEM, "model=lista", "model.tied=false", "trainer=layerwise", "optim.lr=0.01",
                          f"optim.eps={eps}"])
    train_stage(LayerwiseTrainer(lr_cfg.trainer, by_lr, task, lr_cfg.optim, lr_cfg.sched, recorder=None),
                by_lr, batch, layer, stage, steps)

    for p, ref, other_p, lr_p, p0 in zip(model.layer_parameters(0), reference.layer_parameters(0),
                                         other.layer_parameters(0), by_lr.layer_parameters(0),
                                         start.layer_parameters(0)):
        torch.testing.assert_close(p, ref, rtol=1e-12, atol=1e-15)
        if eps == 1e-3:  # eps near sqrt(v): where it sits (before or after the bias correction) shows
            assert not torch.allclose(p, other_p, rtol=1e-6, atol=0)
        assert not torch.allclose(p, lr_p, rtol=1e-6, atol=0)
        if eps == 1e-8:  # eps far below sqrt(v): Adam undoes the 0.09, the lr multiplier keeps it
            assert (p - p0).norm() > 5 * (lr_p - p0).norm()


def test_with_a_decay_of_one_both_modes_are_identical():
    _, task, model, by_gradient = layerwise("trainer.decay_mode=gradient", "trainer.layer_decay=1.0")
    _, _, _, by_lr = layerwise("trainer.decay_mode=lr", "trainer.layer_decay=1.0")
    batch = next(task.train_batches())
    twin = copy.deepcopy(model)
    train_stage(by_gradient, model, batch, 2, 1, 3)
    train_stage(by_lr, twin, batch, 2, 1, 3)
    after, twin_after = model.state_dict(), twin.state_dict()
    assert all(torch.equal(after[k], twin_after[k]) for k in after)


def test_tf_adam_counts_its_steps_across_a_saved_and_loaded_state():
    """t, which sets TF's eps, goes on from a loaded state_dict (a resumed run), as TF's beta2_power:
    two steps, save, load into a new optimizer, two more equal TF's Adam written out for k = 1..4."""
    torch.manual_seed(0)
    grads = [torch.randn(5, dtype=torch.float64) * 1e-3 for _ in range(4)]  # eps 1e-3 matters at this scale
    lr, betas, eps = 0.1, (0.9, 0.999), 1e-3

    def steps(weight, opt, gs):
        for g in gs:
            weight.grad = g.clone()
            opt.step()

    resumed = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    first = TFAdam([resumed], lr=lr, betas=betas, eps=eps)
    steps(resumed, first, grads[:2])
    second = TFAdam([resumed], lr=lr, betas=betas, eps=eps)
    second.load_state_dict(first.state_dict())
    steps(resumed, second, grads[2:])

    reference, torch_form = torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    moments, torch_moments = (torch.zeros(5, dtype=torch.float64),) * 2, (torch.zeros(5, dtype=torch.float64),) * 2
    for k, g in enumerate(grads, start=1):
        moments = adam_step(reference, *moments, g, k, lr, betas, eps, tf_eps=True)
        torch_moments = adam_step(torch_form, *torch_moments, g, k, lr, betas, eps, tf_eps=False)
    torch.testing.assert_close(resumed.detach(), reference, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(reference, torch_form, rtol=1e-6, atol=0)  # the two eps forms differ here


def test_the_authors_loss_scale_is_half_the_sum_over_the_batch():
    _, task, model, _ = layerwise()
    _, tf_task, _, _ = layerwise("data.loss_reduction=tf_l2_loss")
    batch = next(task.train_batches())
    estimates = model(batch[0])
    mean = task.loss(estimates, batch, model)
    torch.testing.assert_close(tf_task.loss(estimates, batch, model), 0.5 * len(batch[0]) * mean)


@pytest.mark.parametrize("check, every, patience, best, end", [
    (10, 10, 2000, 291, 2301),   # ALISTA: the best 2010 steps before the check that ends the stage
    (10, 10, 2000, 301, 2401),   # ... or 2100 steps
    (10, 10, 2000, 351, 2401),
    (3, 2, 10, 5, 19),           # checks after steps 1, 7, 13, 19: the first more than 10 after 5
    (None, 10, 2000, 350, 2350),  # the project's rule: the first validation 2000 steps after the best
])
def test_the_stopping_rule_ends_a_stage_where_it_predicts(tmp_path, check, every, patience, best, end):
    _, task, model, trainer = layerwise(f"trainer.val_every_steps={every}",
                                        f"trainer.stage_patience_steps={patience}",
                                        f"trainer.stop_check_validations={'null' if check is None else check}",
                                        recorder=RunRecorder(tmp_path, tensorboard=False))
    validated = []

    def scripted_curve(model, depth):  # improves until step `best`, worse ever after
        step = trainer.global_step
        validated.append(step)
        return {task.monitor: -float(step) if step <= best else -float(best) + 1.0}

    task.validate = scripted_curve
    row = trainer.run_stage(0, 0, trainer.stage_groups(0, 0, 1e-3), BatchStream(task))
    assert row["stage_steps"] == end and validated[-1] == end
    assert best in validated and validated[0] == (1 if check else every)
    if (check, every) == (10, 10):
        assert 2010 <= end - best <= 2100


def test_new_keys_fail_by_name_and_default_to_what_runs_did_before():
    for bad, key in [("trainer.decay_mode=adam", "trainer.decay_mode"),
                     ("trainer.stop_check_validations=0", "trainer.stop_check_validations"),
                     ("data.loss_reduction=sum", "data.loss_reduction"),
                     ("trainer.checkpoint_every_s=-1", "trainer.checkpoint_every_s")]:
        with pytest.raises(ConfigError, match=key):
            validate(compose_cfg(tiny("trainer=layerwise", bad)))
    plain = compose_cfg(tiny("trainer=layerwise"))
    assert (plain.trainer.decay_mode, plain.trainer.stop_check_validations, plain.data.loss_reduction,
            plain.data.test_path) == ("lr", None, "mean", None)
    # a checkpoint written before these keys existed resumes when the run keeps the defaults
    before = OmegaConf.to_container(plain, resolve=True)
    for group, key in [("trainer", "decay_mode"), ("trainer", "stop_check_validations"),
                       ("data", "loss_reduction"), ("data", "test_path"), ("trainer", "checkpoint_every_s")]:
        del before[group][key]
    assert resume_conflicts(before, OmegaConf.to_container(plain, resolve=True), added=schema_defaults(plain)) == []
    # how often a stage checkpoints does not change the result: a resume may set it
    other = compose_cfg(tiny("trainer=layerwise", "trainer.checkpoint_every_s=5"))
    assert resume_conflicts(OmegaConf.to_container(plain, resolve=True), OmegaConf.to_container(other, resolve=True),
                            changeable_keys(other)) == []
    authors = compose_cfg(tiny("trainer=layerwise", "trainer.decay_mode=gradient"))
    assert resume_conflicts(before, OmegaConf.to_container(authors, resolve=True), added=schema_defaults(authors))


def test_the_experiments_default_to_the_authors_code_on_drawn_data():
    chen, liu = compose_cfg(["+experiment=chen2018_lista"]), compose_cfg(["+experiment=liu2019_alista"])
    for cfg, check, patience in [(chen, 100, 4000), (liu, 10, 2000)]:
        assert (cfg.trainer.decay_mode, cfg.data.loss_reduction) == ("gradient", "tf_l2_loss")
        assert cfg.optim._target_ == "unroll_cli.train.tf_adam.TFAdam"
        assert (cfg.trainer.stop_check_validations, cfg.trainer.stage_patience_steps) == (check, patience)
        assert cfg.data.A_path is None and cfg.data.test_path is None


def write_problem(folder: Path, m: int, n: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """A float64 A (m x n, in A.npy) and float32 codes one per column (n x count, in x.npy)."""
    rng = np.random.default_rng(7)
    A = rng.standard_normal((m, n)) / np.sqrt(m)
    x = (rng.standard_normal((n, count)) * (rng.random((n, count)) < 0.5)).astype(np.float32)
    np.save(folder / "A.npy", A)
    np.save(folder / "x.npy", x)
    return A, x


def test_test_codes_load_one_sample_per_column_with_y_from_the_float64_matrix(tmp_path):
    A, x = write_problem(tmp_path, 2, 3, 4)
    x[:, 1] = [1.0, 0.0, -2.0]  # sample 1 is the file's column 1
    np.save(tmp_path / "x.npy", x)
    common = [*TINY, "data.m=2", "data.n=3", "data.n_val=8", f"data.A_path={tmp_path / 'A.npy'}",
              f"data.test_path={tmp_path / 'x.npy'}"]
    task = build_task(compose_cfg([*common, "data.n_test=4"]), CPU)
    y, codes = task.test
    assert codes.shape == (4, 3) and torch.equal(codes[1], torch.tensor([1.0, 0.0, -2.0]))
    assert torch.equal(codes, torch.from_numpy(x.T))
    torch.testing.assert_close(y, torch.from_numpy((A @ x.astype(np.float64)).T.astype(np.float32)),
                               rtol=1e-7, atol=0)
    with pytest.raises(ValueError, match="data.test_path: .* holds 4 codes but data.n_test=5"):
        build_task(compose_cfg([*common, "data.n_test=5"]), CPU)
    np.save(tmp_path / "x.npy", x.T)  # one sample per row: the wrong orientation
    with pytest.raises(ValueError, match="data.test_path: .* codes of length 4 .* but data.n=3"):
        build_task(compose_cfg([*common, "data.n_test=4"]), CPU)


@pytest.mark.skipif(not ALISTA_DATA.is_dir(), reason="the authors' files (shared/data/alista) are not here")
def test_the_authors_matrix_and_test_codes():
    cfg = compose_cfg(["+experiment=liu2019_alista", "data.n_val=16", f"data.A_path={ALISTA_DATA / 'D.mat'}",
                       f"data.test_path={ALISTA_DATA / 'xtest_n500_p10.npy'}"])
    task = build_task(cfg, CPU)
    D, x = loadmat(ALISTA_DATA / "D.mat")["D"], np.load(ALISTA_DATA / "xtest_n500_p10.npy")
    y, codes = task.test
    assert codes.shape == (1000, 500) and torch.equal(codes, torch.from_numpy(x.T))
    assert 0.09 < (codes != 0).float().mean() < 0.11
    torch.testing.assert_close(y, torch.from_numpy((D @ x).T.astype(np.float32)), rtol=1e-6, atol=1e-6)


def test_a_run_on_given_files_states_the_decay_mode_in_results(tmp_path):
    write_problem(tmp_path, 20, 40, 64)
    run(compose_cfg(["+experiment=chen2018_lista", "model=lista_cp", *TINY_PROBLEM, "model.layers=2",
                     f"data.A_path={tmp_path / 'A.npy'}", f"data.test_path={tmp_path / 'x.npy'}",
                     "trainer.val_every_steps=2", "trainer.stop_check_validations=2",
                     "trainer.stage_patience_steps=2", "trainer.stage_max_steps=6", "tensorboard=false"]),
        tmp_path / "run")
    text = (tmp_path / "run/results.md").read_text()
    assert "gradient of earlier layers scaled before Adam" in text
    assert "A from A.npy, test codes from x.npy; training loss scale: tf_l2_loss" in text
