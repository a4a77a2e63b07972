"""AMP, LAMP, LIHT, IHT and OMP for sparse coding: the models against slow float64 numpy transcriptions
of the authors' equations (VITA-Group/LISTA-CPSS ``models/LAMP.py``, ``models/LIHT.py``, ``utils/tf.py``)
under shared weights, OMP's exact recovery below the coherence bound, IHT on an easy problem, and the
baselines' columns of a run (with the paper's AMP and LAMP curves beside the chen2018_lista experiment)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from scipy.optimize import minimize_scalar
from scipy.stats import norm

from conftest import TINY_PROBLEM, compose_cfg, read_metrics
from unroll_cli.models.amp import AMP, AMP_ALPHA, LAMP
from unroll_cli.models.greedy import OMP
from unroll_cli.models.iht import IHT, LIHT
from unroll_cli.run import run


def problem(m=8, n=16, batch=5, p=0.3, seed=0):
    """A float64 Gaussian A with unit columns, Bernoulli-Gaussian codes x (batch, n) and y = A x."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(m, n)) / np.sqrt(m)
    A /= np.linalg.norm(A, axis=0)
    x = rng.normal(size=(batch, n)) * (rng.random((batch, n)) < p)
    return A, x, x @ A.T


def soft(r: float, theta: float) -> float:
    return float(np.sign(r) * max(abs(r) - theta, 0.0))


def lamp_by_hand(A, y, Bs, lams) -> list[np.ndarray]:
    """LAMP.py's inference, one sample (a column) and one entry at a time: yh = A x, b = (N/M) mean(|x| > 0),
    v = y - yh + b v, rvar = sum(v^2) / M, r = x + B v, x = shrink_lamp(r, rvar, lam)."""
    M, N = A.shape
    out = [np.zeros((len(y), N)) for _ in lams]
    for j, yj in enumerate(y):
        x, v = np.zeros(N), np.zeros(M)
        for t, (B, lam) in enumerate(zip(Bs, lams)):
            b = N / M * np.mean([abs(xi) > 0 for xi in x])
            v = yj - A @ x + b * v
            rvar = sum(vi * vi for vi in v) / M
            r = x + B @ v
            theta = max(np.sqrt(rvar) * lam, 0.0)
            x = np.array([soft(ri, theta) for ri in r])
            out[t][j] = x
    return out


def liht_by_hand(y, Ws, B, thetas) -> list[np.ndarray]:
    """LIHT.py's inference, one sample at a time: x = hard_shrink(W x + B y, theta), hard_shrink(r, tau) =
    relu(sign(|r| - tau)) r; layer 1's W multiplies x_0 = 0."""
    out = [np.zeros((len(y), B.shape[0])) for _ in thetas]
    for j, yj in enumerate(y):
        x = np.zeros(B.shape[0])
        for t, (W, theta) in enumerate(zip(Ws, thetas)):
            r = W @ x + B @ yj
            x = np.array([max(np.sign(abs(ri) - theta), 0.0) * ri for ri in r])
            out[t][j] = x
    return out


def assert_layers(estimates: list[torch.Tensor], expected: list[np.ndarray]) -> None:
    assert len(estimates) == len(expected)
    for got, want in zip(estimates, expected):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)


def randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every parameter off its initial value (the same weights then go to the transcription)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype) * p.abs().mean())


@pytest.mark.parametrize("tied", [True, False])
def test_lamp_equals_the_authors_equations_under_shared_weights(tied):
    A, _, y = problem()
    model = LAMP(torch.from_numpy(A), layers=4, lam=0.4, tied=tied)
    L = 1.001 * np.linalg.norm(A, 2) ** 2  # the authors' initialisation: B = A^T / L, lam_t = 0.4
    for t in range(4):
        np.testing.assert_allclose(model._weights(t)[0].detach().numpy(), A.T / L, rtol=1e-12)
    assert model.thresholds().tolist() == [0.4] * 4
    randomize(model)
    Bs = [model._weights(t)[0].detach().numpy() for t in range(4)]
    assert tied == all((B == Bs[0]).all() for B in Bs)
    assert_layers(model(torch.from_numpy(y)), lamp_by_hand(A, y, Bs, model.thresholds().numpy()))


def test_amp_is_lamp_with_the_transpose_and_a_fixed_lam():
    A, _, y = problem(seed=3)
    model = AMP(torch.from_numpy(A), layers=5, alpha=1.3)
    assert list(model.parameters()) == []
    assert_layers(model(torch.from_numpy(y)), lamp_by_hand(A, y, [A.T] * 5, [1.3] * 5))


@pytest.mark.parametrize("tied", [True, False])
def test_liht_equals_the_authors_equations_under_shared_weights(tied):
    A, _, y = problem(seed=4)
    model = LIHT(torch.from_numpy(A), layers=4, lam=0.09, tied=tied)
    np.testing.assert_allclose(model.B.detach().numpy(), A.T, rtol=1e-12)  # B = A^T, W = I - A^T A, sqrt(lam)
    np.testing.assert_allclose(model._W(1).detach().numpy(), np.eye(16) - A.T @ A, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(model.thresholds().numpy(), [0.3] * 4, rtol=1e-12)
    randomize(model)
    Ws = [np.zeros((16, 16))] + [model._W(t).detach().numpy() for t in range(1, 4)]
    assert tied == all((W == Ws[1]).all() for W in Ws[1:])
    assert_layers(model(torch.from_numpy(y)),
                  liht_by_hand(y, Ws, model.B.detach().numpy(), model.thresholds().numpy()))


@pytest.mark.parametrize("model", [LAMP, LIHT])
@pytest.mark.parametrize("tied", [True, False])
def test_each_parameter_belongs_to_one_layer_of_the_layerwise_schedule(model, tied):
    module = model(torch.from_numpy(problem()[0]), layers=3, lam=0.4, tied=tied)
    owned = [id(p) for t in range(3) for p in module.layer_parameters(t)]
    assert sorted(owned) == sorted(id(p) for p in module.parameters())


def coherence(A: np.ndarray) -> float:
    """max over i != j of |a_i^T a_j| / (||a_i|| ||a_j||), one pair at a time."""
    norms = np.linalg.norm(A, axis=0)
    return max(abs(A[:, i] @ A[:, j]) / norms[i] / norms[j] for i, j in itertools.permutations(range(A.shape[1]), 2))


def test_omp_recovers_every_sparse_code_below_the_coherence_bound():
    """Tropp 2004: s < (1 + 1/mu) / 2 -> OMP finds any s-sparse x from y = A x in s steps. The identity
    and the Hadamard basis side by side (64 x 128) have mu = 1/8, so s = 4 < 4.5."""
    hadamard = np.array([[1.0]])
    for _ in range(6):
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    A = np.hstack([np.eye(64), hadamard / 8])
    s = 4
    assert s < (1 + 1 / coherence(A)) / 2
    rng = np.random.default_rng(0)
    x = np.zeros((300, 128))
    for row in x:
        row[rng.choice(128, s, replace=False)] = rng.normal(size=s) + np.sign(rng.normal(size=s))
    estimates = OMP(torch.from_numpy(A), layers=s)(torch.from_numpy(x @ A.T))
    np.testing.assert_allclose(estimates[-1].numpy(), x, atol=1e-10)
    assert ((estimates[1].numpy() != 0).sum(axis=1) == 2).all()  # one atom per layer


def test_iht_recovers_a_sparse_code_of_an_easy_problem():
    """3-sparse codes with entries of magnitude 1 to 2, 100 x 120 Gaussian A, 300 steps of 1/L: IHT with
    s = 3 converges to x."""
    A, _, _ = problem(m=100, n=120, seed=5)
    rng = np.random.default_rng(6)
    x = np.zeros((20, 120))
    for row in x:
        row[rng.choice(120, 3, replace=False)] = rng.choice([-1, 1], 3) * (1 + rng.random(3))
    estimates = IHT(torch.from_numpy(A), layers=300, support=3 / 120)(torch.from_numpy(x @ A.T))
    np.testing.assert_allclose(estimates[-1].numpy(), x, atol=1e-6)
    assert ((estimates[0].numpy() != 0).sum(axis=1) == 3).all()  # H_s keeps s entries from the first step


def test_a_run_writes_every_baselines_column(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model=lista", "trainer.max_epochs=1", "tensorboard=false",
                   "data.baselines=[ista,fista,amp,iht,omp]")
    run(cfg, tmp_path)
    layers, metrics = pd.read_csv(tmp_path / "layers.csv"), read_metrics(tmp_path)["metrics"]
    for name in ("ista", "fista", "amp", "iht", "omp"):
        column = layers[f"baseline/{name}/test/nmse_db"]
        assert column.iloc[0] == 0 and np.isfinite(column).all() and column.iloc[-1] < 0
        assert metrics[f"baseline/{name}/test/nmse_db"] == pytest.approx(column.iloc[-1])
    A = np.load(tmp_path / "A.npy").astype(np.float64)  # AMP beside the model: its own alpha, not the model's lam
    y, x = (t.double().numpy() for t in run_task_test_set(cfg))
    amp = lamp_by_hand(A, y, [A.T] * 4, [AMP(torch.from_numpy(A), 1).alpha] * 4)
    nmse = [10 * np.log10(((e - x) ** 2).sum() / (x ** 2).sum()) for e in amp]
    np.testing.assert_allclose(layers["baseline/amp/test/nmse_db"].iloc[1:], nmse, atol=1e-4)


def run_task_test_set(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """The (y, x) test set the run's task draws, built again from its config."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg.data, resolve=True)
    return instantiate(data, seed=cfg.seed, device="cpu").test


def test_chen2018_shows_the_papers_lamp_and_amp_curves_beside_the_run(tmp_path):
    cfg = compose_cfg(["+experiment=chen2018_lista", "model=lamp", *TINY_PROBLEM, "model.layers=3",
                       "trainer.val_every_steps=2", "trainer.stage_patience_steps=2", "trainer.stage_max_steps=4",
                       "tensorboard=false"])
    run(cfg, tmp_path)
    layers = pd.read_csv(tmp_path / "layers.csv")
    assert list(layers["published/test/nmse_db"]) == list(cfg.paper.nmse_db.noiseless.lamp)[:4]
    assert list(layers["published/baseline/amp/test/nmse_db"]) == list(cfg.paper.nmse_db.noiseless.amp)[:4]
    assert "baseline/amp/test/nmse_db" in layers and "published/baseline/ista/test/nmse_db" in layers
    history = pd.read_csv(tmp_path / "history.csv")
    assert len(history) == 3 * 3  # three stages for each of LAMP's layers


def test_an_experiments_lam_leaves_amps_threshold_alone():
    """chen2018_lista sets model.lam (ISTA's threshold scale, LAMP's initial multiplier) for every model:
    AMP's multiplier is its own key, so model=amp there is still the AMP of the paper's curve."""
    cfg = compose_cfg(["+experiment=chen2018_lista", "model=amp"])
    assert cfg.model.lam == 0.4 and cfg.model.alpha == AMP_ALPHA


def test_amps_default_multiplier_is_the_minimax_soft_threshold_at_the_papers_sparsity():
    """Donoho, Maleki & Montanari 2009: the minimax threshold at sparsity eps minimises the worst-case
    MSE of soft thresholding, eps (1 + a^2) + (1 - eps) 2 ((1 + a^2) Phi(-a) - a phi(a)); at Chen et
    al.'s p = 0.1 it is AMP_ALPHA to the two decimals it is given with."""
    eps = 0.1
    risk = lambda a: eps * (1 + a * a) + (1 - eps) * 2 * ((1 + a * a) * norm.cdf(-a) - a * norm.pdf(a))
    minimax = minimize_scalar(risk, bounds=(0, 5), method="bounded", options={"xatol": 1e-8}).x
    assert abs(minimax - AMP_ALPHA) < 0.005
    assert compose_cfg(["+experiment=chen2018_lista", "model=lamp"]).model.lam == 0.4
