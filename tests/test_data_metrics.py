"""Synthetic sparse-coding data and the metric conventions, against closed forms and loops."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.io import savemat

from unroll_cli.data.synthetic import gaussian_matrix, measure, sample_codes
from unroll_cli.tasks.sparse_coding import SyntheticSparseCoding
from unroll_cli.evaluate.metrics import nmse_db, support_recovery


def make_task(**overrides) -> SyntheticSparseCoding:
    settings = dict(m=30, n=60, p=0.1, snr_db=None, kappa=None, col_normalized=True, online=True,
                    n_train=256, n_val=100, n_test=100, batch_size=32, matrix_seed=0, val_seed=1,
                    test_seed=2, A_path=None, seed=0,
                    trainer=OmegaConf.create({"steps_per_epoch": 3}))
    settings.update(overrides)
    return SyntheticSparseCoding(**settings)


def test_matrix_has_unit_columns_and_gaussian_entries():
    A = gaussian_matrix(250, 500, seed=0, col_normalized=False).double()
    assert A.var().item() == pytest.approx(1 / 250, rel=0.02)
    A = gaussian_matrix(250, 500, seed=0).double()
    np.testing.assert_allclose(A.norm(dim=0), 1.0, rtol=1e-6)


def test_condition_number_is_set_through_the_singular_values():
    A = gaussian_matrix(50, 100, seed=3, kappa=30.0, col_normalized=False).double()
    s = torch.linalg.svdvals(A)
    assert (s[0] / s[-1]).item() == pytest.approx(30.0, rel=1e-5)


def test_codes_are_bernoulli_gaussian_and_noise_has_the_requested_snr():
    gen = torch.Generator().manual_seed(0)
    x = sample_codes(4000, 500, 0.1, gen, "cpu")
    nonzero = x[x != 0]
    assert (x != 0).double().mean().item() == pytest.approx(0.1, abs=0.003)
    assert nonzero.std().item() == pytest.approx(1.0, abs=0.01)
    A = gaussian_matrix(250, 500, seed=0)
    clean = x @ A.T
    noisy = measure(x, A, 20.0, gen)
    snr = 10 * torch.log10(clean.var(dim=1) / (noisy - clean).var(dim=1)).mean().item()
    assert snr == pytest.approx(20.0, abs=0.1)


def test_fixed_sets_do_not_depend_on_the_run_seed_and_training_streams_do():
    a, b = make_task(seed=0), make_task(seed=1)
    assert torch.equal(a.test[1], b.test[1]) and torch.equal(a.val[0], b.val[0])
    assert not torch.equal(a.test[1], a.val[1])
    batch_a, batch_b = next(a.train_batches()), next(b.train_batches())
    assert not torch.equal(batch_a[1], batch_b[1])
    np.testing.assert_allclose(batch_a[0], batch_a[1] @ a.A.T, rtol=1e-6)


def test_fixed_training_set_is_one_pass_per_epoch():
    task = make_task(online=False, n_train=96, batch_size=32)
    xs = torch.cat([x for _, x in task.train_batches()])
    assert xs.shape[0] == 96
    reference = torch.cat([x for _, x in task.train_batches()])
    assert sorted(map(tuple, xs.tolist())) == sorted(map(tuple, reference.tolist()))  # the same set
    assert not torch.equal(xs, reference)  # reshuffled


def test_user_matrix_from_npy_and_mat(tmp_path):
    A = np.random.default_rng(0).standard_normal((30, 60)).astype(np.float32)
    np.save(tmp_path / "A.npy", A)
    savemat(tmp_path / "D.mat", {"D": A})
    for name in ("A.npy", "D.mat"):
        task = make_task(A_path=str(tmp_path / name))
        np.testing.assert_array_equal(task.A.numpy(), A)
    with pytest.raises(ValueError, match="data.m=20"):
        make_task(A_path=str(tmp_path / "A.npy"), m=20)
    with pytest.raises(FileNotFoundError, match="data.A_path"):
        make_task(A_path=str(tmp_path / "missing.npy"))


def test_nmse_conventions_against_explicit_loops():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 20, generator=gen)
    x_hat = x + 0.3 * torch.randn(50, 20, generator=gen) * torch.linspace(0.1, 2, 50)[:, None]
    err = sum(float(((x_hat[i] - x[i]) ** 2).sum()) for i in range(50))
    ref = sum(float((x[i] ** 2).sum()) for i in range(50))
    assert nmse_db(x_hat, x, "pooled") == pytest.approx(10 * math.log10(err / ref))
    per_sample = [10 * math.log10(float(((x_hat[i] - x[i]) ** 2).sum() / (x[i] ** 2).sum())) for i in range(50)]
    assert nmse_db(x_hat, x, "per_sample") == pytest.approx(sum(per_sample) / 50)
    assert nmse_db(torch.zeros_like(x), x) == 0.0


def test_support_recovery_counts():
    x = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    x_hat = torch.tensor([[0.5, 0.1, 0.0, 0.0], [0.0, 0.0, 0.2, 2.0]])
    scores = support_recovery(x_hat, x, tol=0.0)
    # detected: (0,0) (0,1) (1,2) (1,3); true: (0,0) (0,2) (1,3); hits 2
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert support_recovery(x_hat, x, tol=0.15)["precision"] == pytest.approx(2 / 3)


def test_losses_match_their_formulas():
    task = make_task()
    y, x = next(task.train_batches())
    x_hat = x + 0.1
    model = SimpleNamespace(lam=0.4)
    supervised = task.loss([x_hat], (y, x), model)
    assert supervised.item() == pytest.approx(0.01 * 60, rel=1e-5)
    task.loss_kind = "lasso"
    lasso = task.loss([x_hat], (y, x), model)
    r = (y - x_hat @ task.A.T).double()
    expected = (0.5 * (r ** 2).sum(1) + 0.4 * x_hat.double().abs().sum(1)).mean()
    assert lasso.item() == pytest.approx(expected.item(), rel=1e-5)
