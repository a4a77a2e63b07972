"""data=synthetic_dl (dictionary learning with a known D*) and the autoencoders' gradients on it, against
independent computations: the ISTA recursion and the decoder and NOODL gradients written out in
numpy, the lasso optimality conditions, a brute-force search over atom orders and signs, D* as a
fixed point of every gradient, the committed ordering of the gradient study through the CLI, and bad
keys refused naming the key."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import read_metrics, run_cli
from unroll_cli.data.dictionary_learning import sample_codes, seeded
from unroll_cli.evaluate.dictionary import matched_distance
from unroll_cli.models.autoencoders import GroupSparseAutoencoder, SparseAutoencoder
from unroll_cli.tasks.dictionary_learning import SyntheticDictionaryLearning

LAW = dict(code="uniform", c_min=1.0, c_max=2.0, z_mean=5.0, z_std=1.0, group_size=2, active_groups=1)


@pytest.fixture
def float64():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def make_task(m=12, p=20, s=3, n=40, dict_init=0.1, **options) -> SyntheticDictionaryLearning:
    keys = dict(m=m, p=p, s=s, n=n, online=False, n_val=16, n_test=16, batch_size=n, dict_init=dict_init,
                dictionary_seed=0, val_seed=1, test_seed=2, **LAW)
    keys.update(options)
    return SyntheticDictionaryLearning(**keys)


def make_model(task, cls=SparseAutoencoder, **options):
    settings = dict(conv=False, atoms=task.D_true.shape[1], layers=6, lam=0.2, step=0.2)
    settings.update(options)
    kwargs = {k: (v.double() if torch.is_tensor(v) else v) for k, v in task.model_kwargs().items()}
    return cls(**settings, **kwargs)


def soft(v, b):
    return np.sign(v) * np.maximum(np.abs(v) - b, 0.0)


def ista_by_hand(D, X, steps, lam, step, beta=1.0, shrink=soft):
    """z_{t+1} = S_{b beta^t}(z_t - step D^T (D z_t - x)) from z_0 = 0, one sample per column."""
    Z = np.zeros((D.shape[1], X.shape[1]))
    for t in range(steps):
        Z = shrink(Z - step * D.T @ (D @ Z - X), lam * step * beta ** t)
    return Z


@pytest.mark.parametrize("grad, beta", [("g_dec", 1.0), ("g_dec", 0.9), ("noodl", 1.0)])
def test_decoder_and_noodl_gradients_equal_the_formulas_written_out(grad, beta, float64, one_thread):
    """With z_T detached, a training step's gradient of D is (D z_T - x) z_T^T / n (g_dec), or
    (D z_T - x) sign(z_T)^T / n (NOODL), z_T from the ISTA recursion in numpy; the encoder's code is
    that recursion, with layer t's threshold lam * step * beta^(t-1)."""
    task = make_task()
    threshold = "hard" if grad == "noodl" else "soft"
    model = make_model(task, grad=grad, threshold=threshold, threshold_decay=beta).train()
    x = task.train_set[0].double()
    D, X = model.weight.detach().numpy().copy(), x.flatten(1).numpy().T
    hard = lambda v, b: v * (np.abs(v) > b)  # noqa: E731
    Z = ista_by_hand(D, X, model.layers, model.lam, model.step, beta, hard if grad == "noodl" else soft)
    np.testing.assert_allclose(model.encode(x).numpy().T, Z, rtol=0, atol=1e-12)
    loss = 0.5 * (model(x)[-1] - x).pow(2).flatten(1).sum(dim=1).mean() + model.loss_penalty()
    loss.backward()
    expected = (D @ Z - X) @ (np.sign(Z) if grad == "noodl" else Z).T / X.shape[1]
    assert np.abs(Z).sum() > 0 and np.abs(expected).max() > 1e-3  # a code and a gradient to compare
    np.testing.assert_allclose(model.weight.grad.numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.dictionary_gradient(x).numpy(), expected, rtol=0, atol=1e-12)
    z_star = task.train_set[1].double()
    np.testing.assert_allclose(model.dictionary_gradient(x, z_star).numpy(),
                               (D @ z_star.numpy().T - X) @ z_star.numpy() / X.shape[1], rtol=0, atol=1e-12)


def test_the_network_unrolled_1000_times_solves_the_lasso(float64, one_thread):
    """z_hat (model.encode with 1000 steps) meets the lasso's optimality conditions on a small
    well-conditioned problem: D^T (x - D z) = lam sign(z) on the support, |.| <= lam off it."""
    task = make_task(m=30, p=8, s=3)
    model = make_model(task, lam=0.1, step=0.5 / torch.linalg.matrix_norm(task.D_true.double(), 2).item() ** 2)
    x = task.test[0].double()
    z = model.encode(x, 1000)
    D = model.weight.detach()
    correlation = (x.flatten(1) - z @ D.T) @ D
    on = z != 0
    assert on.sum() > len(x)  # codes with a support
    torch.testing.assert_close(correlation[on], model.lam * torch.sign(z[on]), rtol=0, atol=1e-6)
    assert correlation[~on].abs().max() <= model.lam + 1e-6


def test_the_distance_ignores_the_order_and_signs_of_the_atoms():
    """matched_distance equals a brute-force minimum over every order and every sign of the atoms, and
    does not change when the learned atoms are permuted and flipped."""
    gen = torch.Generator().manual_seed(0)
    true, learned = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    unit = lambda a: a / a.norm(dim=0)  # noqa: E731
    t, h = unit(true.double()), unit(learned.double())
    brute = min(torch.linalg.matrix_norm(t - h[:, list(order)] * torch.tensor(signs, dtype=t.dtype)).item()
                for order in itertools.permutations(range(5)) for signs in itertools.product((1, -1), repeat=5))
    assert matched_distance(learned, true) == pytest.approx(brute, abs=1e-12)
    shuffled = learned[:, torch.randperm(5, generator=gen)] * torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0])
    assert matched_distance(shuffled, true) == pytest.approx(matched_distance(learned, true), abs=1e-12)
    assert matched_distance(true.double()[:, [2, 0, 1, 4, 3]] * -3.0, true.double()) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("cls, options", [
    (SparseAutoencoder, {"grad": "g_dec"}), (SparseAutoencoder, {"grad": "g_ae_ls"}),
    (SparseAutoencoder, {"grad": "g_ae_lasso"}), (SparseAutoencoder, {"grad": "noodl", "threshold": "hard"}),
    (GroupSparseAutoencoder, {"grad": "g_ae_ls", "group_size": 2})])
def test_the_true_dictionary_is_a_fixed_point_of_every_gradient(cls, options, float64, one_thread):
    """Started at D* (dict_init 0) with lam 0 on exactly generated data, a few training steps leave D
    at D*; started 0.1 away, the same steps move it (the check has teeth)."""
    moved = {}
    for dict_init in (0.0, 0.1):
        task = make_task(m=30, p=6, s=2, n=32, dict_init=dict_init, code="group_sparse" if cls is
                         GroupSparseAutoencoder else "uniform")
        step = 1.0 / torch.linalg.matrix_norm(task.D_true.double(), 2).item() ** 2
        model = make_model(task, cls, lam=0.0, step=step, layers=200, **options).train()
        model.after_step()  # unit columns in float64
        start = model.weight.detach().clone()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(3):
            for batch in task.train_batches():  # x = D* z* in float64, D* the model's start at dict_init 0
                z = batch[1].double()
                x = (z @ (task.D_true.double() if dict_init else start).T).view_as(batch[0])
                optimizer.zero_grad()
                task.loss(model(x), (x, z), model).backward()
                optimizer.step()
                model.after_step()
        moved[dict_init] = torch.linalg.matrix_norm(model.weight.detach() - start).item()
        if dict_init == 0.0:
            assert matched_distance(model.weight.detach(), task.D_true) < 1e-6
    assert moved[0.0] < 1e-8 < 1e-3 < moved[0.1]


def test_the_codes_follow_their_law():
    """s non-zeros with magnitudes in [c_min, c_max] and one sign per sample (uniform); whole groups
    (group_sparse); both signs within a sample (subgaussian)."""
    z = sample_codes(500, 30, 4, "uniform", seeded(0, 0), c_min=1.0, c_max=2.0)
    assert ((z != 0).sum(dim=1) == 4).all()
    assert z[z != 0].abs().min() >= 1.0 and z.abs().max() <= 2.0
    assert ((z >= 0).all(dim=1) | (z <= 0).all(dim=1)).all() and (z < 0).any() and (z > 0).any()
    groups = sample_codes(200, 30, 4, "group_sparse", seeded(0, 1), group_size=3, active_groups=2)
    active = (groups != 0).view(200, 10, 3)
    assert (active.all(dim=2) == active.any(dim=2)).all() and (active.all(dim=2).sum(dim=1) == 2).all()
    mixed = sample_codes(200, 30, 4, "subgaussian", seeded(0, 2), z_mean=5.0, z_std=1.0)
    assert ((mixed > 0).any(dim=1) & (mixed < 0).any(dim=1)).any()


@pytest.mark.slow  # four CLI runs, each with 300 unrolled steps on 500 samples
def test_the_gradient_study_orders_the_gradients_as_the_committed_curves(tmp_path):
    """+experiment=tolooshams2022_gradients (500 samples, z_hat from 300 steps): at T >= 10 g_ae-lasso's gradient is closer to the
    lasso gradient g_hat than g_dec's (the authors' curves: .104 < .113 at T=10, .0365 < .0512 at
    T=25), and the codes' distance to z_hat is the same for both (one encoder)."""
    found = {}
    for grad, layers in itertools.product(("g_dec", "g_ae_lasso"), (10, 25)):
        run_dir = tmp_path / f"{grad}_{layers}"
        result = run_cli(["+experiment=tolooshams2022_gradients", f"model.grad={grad}", f"model.layers={layers}",
                          "data.n=500", "data.batch_size=500", "data.n_val=50", "data.n_test=50", "data.lasso_steps=300",
                          "device=cpu", "tensorboard=false", "trainer.progress=false", f"hydra.run.dir={run_dir}"],
                         cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
        found[grad, layers] = read_metrics(run_dir)["metrics"]
    for layers in (10, 25):
        dec, lasso = found["g_dec", layers], found["g_ae_lasso", layers]
        assert lasso["gradient/g_hat_error"] < dec["gradient/g_hat_error"]
        assert lasso["gradient/z_hat_error"] == pytest.approx(dec["gradient/z_hat_error"], rel=1e-6)
        assert "published/gradient/g_hat_error" in dec  # the committed value beside it


@pytest.mark.parametrize("override, named", [
    ("data.s=150", "data.s=150"), ("data.n=-5", "data.n"), ("data.code=laplace", "data.code"),
    ("data.batch_size=20000", "data.batch_size=20000")])
def test_bad_keys_are_refused_naming_the_key(tmp_path, override, named):
    result = run_cli(["data=synthetic_dl", "model=sparse_ae", "model.conv=false", "model.atoms=100", override,
                      "tensorboard=false", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert named in output and "Traceback" not in output
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_a_convolutional_model_is_refused_naming_the_key(tmp_path):
    """The task's initial dictionary is a dense m x p matrix: model.conv=true is refused."""
    result = run_cli(["data=synthetic_dl", "model=sparse_ae", "tensorboard=false",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "conv=false" in output and "Traceback" not in output, output


def test_the_threshold_decay_follows_the_authors_schedule():
    """beta as the authors' training loop lowers it (``if (ctr + 1) % 100 == 0: net.beta -= 0.005``
    before step ctr), step by step; the count is in the state dict (an exact resume), and a model without
    the schedule keeps the state dict it had."""
    task = make_task()
    model = make_model(task, threshold_decay=1.0, threshold_decay_drop=0.005, threshold_decay_every=100)
    beta = 1.0
    for ctr in range(450):
        if (ctr + 1) % 100 == 0:
            beta -= 0.005
        assert model.decay() == pytest.approx(beta, abs=1e-12)
        model.after_step()
    resumed = make_model(task, threshold_decay=1.0, threshold_decay_drop=0.005, threshold_decay_every=100)
    resumed.load_state_dict(model.state_dict())
    assert resumed.decay() == pytest.approx(0.98, abs=1e-12)
    assert list(make_model(task).state_dict()) == ["weight"]
