"""ISTA/FISTA/LISTA-family models vs Lasso optimality, explicit ISTA loops and the
ALISTA analytic-weight problem solved by projected gradient descent."""

import math

import pytest
import torch

from unroll_cli.models.analytic import analytic_weight, mutual_coherence
from unroll_cli.models.lista import ALISTA, FISTA, ISTA, LISTA, LISTACP, TiLISTA, lipschitz_constant
from unroll_cli.models.prox import soft_threshold

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: see conftest
LAM = 0.4


def problem(m=25, n=50, batch=6, seed=0):
    """Gaussian A with unit columns, Bernoulli(0.1)-Gaussian x, y = A x (float64)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, dtype=D, generator=g)
    A = A / A.norm(dim=0)
    x = torch.randn(batch, n, dtype=D, generator=g) * (torch.rand(batch, n, dtype=D, generator=g) < 0.1)
    return A, x @ A.t() + 0.01 * torch.randn(batch, m, dtype=D, generator=g)


def shrink_ss_rows(z, theta, percent):
    """Per-row loop: sort |z| descending; of the first k entries, those above theta pass."""
    out = soft_threshold(z, theta).clone()
    k = int(percent * z.shape[1] / 100 + 0.5)
    for i in range(z.shape[0]):
        top = torch.sort(z[i].abs(), descending=True).indices[:k]
        keep = top[z[i, top].abs() > theta]
        out[i, keep] = z[i, keep]
    return out


def ista_reference(A, y, lam, layers, shrink=None):
    """Plain column-vector ISTA, x <- shrink_t(x + A^T (y - A x) / L)."""
    L = 1.001 * torch.linalg.svdvals(A)[0].item() ** 2
    shrink = shrink or (lambda t, z: soft_threshold(z, lam / L))
    x, xs = torch.zeros(A.shape[1], y.shape[0], dtype=A.dtype), []
    for t in range(layers):
        x = shrink(t, x + A.t() @ (y.t() - A @ x) / L)
        xs.append(x.t())
    return xs


def assert_lasso_kkt(A, y, x, lam, tol):
    """0.5||y - A x||^2 + lam ||x||_1: A^T(y - A x) = lam sign(x) on the support, |.| <= lam off it."""
    g = (y - x @ A.t()) @ A
    on = x != 0
    assert on.any()
    assert (g[on] - lam * torch.sign(x[on])).abs().max() < tol
    assert g[~on].abs().max() < lam + tol


MODEL_NAMES = ["ista", "fista", "lista_tied", "lista_untied", "lista_ss", "lista_cp_tied",
               "lista_cp_untied", "lista_cpss", "tilista", "alista", "alista_ss"]


def all_models(A, layers=5, lam=LAM):
    return {
        "ista": ISTA(A, layers, lam),
        "fista": FISTA(A, layers, lam),
        "lista_tied": LISTA(A, layers, lam),
        "lista_untied": LISTA(A, layers, lam, tied=False),
        "lista_ss": LISTA(A, layers, lam, ss_p_per_layer=1.2, ss_p_max=12),
        "lista_cp_tied": LISTACP(A, layers, lam),
        "lista_cp_untied": LISTACP(A, layers, lam, tied=False),
        "lista_cpss": LISTACP(A, layers, lam, ss_p_per_layer=1.2, ss_p_max=13),
        "tilista": TiLISTA(A, layers, lam, ss_p_per_layer=1.2, ss_p_max=13),
        "alista": ALISTA(A, layers, lam),
        "alista_ss": ALISTA(A, layers, lam, ss_p_per_layer=1.2, ss_p_max=13),
    }


def test_lipschitz_convention():
    A, _ = problem()
    expected = 1.001 * torch.linalg.svdvals(A)[0].item() ** 2
    assert lipschitz_constant(A) == pytest.approx(expected, rel=1e-14)
    assert LISTA(A, 3, LAM).L == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("cls", [ISTA, FISTA])
def test_ista_fista_reach_the_lasso_minimiser(cls):
    A, y = problem(m=20, n=40, batch=3, seed=1)
    lam = 0.05
    x = cls(A, 3000, lam)(y)[-1]
    assert_lasso_kkt(A, y, x, lam, tol=1e-12)


def test_fista_matches_explicit_momentum_loop():
    A, y = problem(seed=2)
    L = lipschitz_constant(A)
    x_prev = v = torch.zeros(A.shape[1], y.shape[0], dtype=D)
    tk, xs = 1.0, []
    for _ in range(30):
        x = soft_threshold(v + A.t() @ (y.t() - A @ v) / L, LAM / L)
        tk_next = (1 + math.sqrt(1 + 4 * tk * tk)) / 2
        v = x + (tk - 1) / tk_next * (x - x_prev)
        x_prev, tk = x, tk_next
        xs.append(x.t())
    for got, ref in zip(FISTA(A, 30, LAM)(y), xs, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("make", [
    lambda A: LISTA(A, 12, LAM),
    lambda A: LISTA(A, 12, LAM, tied=False),
    lambda A: LISTACP(A, 12, LAM),
    lambda A: LISTACP(A, 12, LAM, tied=False),
    lambda A: TiLISTA(A, 12, LAM),
    lambda A: ISTA(A, 12, LAM),
    # support-selection options given, but the selected percentage is 0
    lambda A: LISTA(A, 12, LAM, tied=False, ss_p_per_layer=1.2, ss_p_max=0.0),
    lambda A: LISTA(A, 12, LAM, ss_p_per_layer=0.0, ss_p_max=12.0),
    lambda A: LISTACP(A, 12, LAM, tied=False, ss_p_per_layer=1.2, ss_p_max=0.0),
    lambda A: LISTACP(A, 12, LAM, ss_p_per_layer=0.0, ss_p_max=13.0),
])
def test_learned_models_start_as_ista(make):
    A, y = problem(seed=3)
    model = make(A)
    got = model(y)
    ref = ista_reference(A, y, LAM, 12)
    assert len(got) == 12
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(model.thresholds(), torch.full((12,), LAM / model.L, dtype=D))


@pytest.mark.parametrize("make", [
    lambda A: LISTA(A, 8, LAM, ss_p_per_layer=4.0, ss_p_max=20.0),
    lambda A: LISTACP(A, 8, LAM, tied=False, ss_p_per_layer=4.0, ss_p_max=20.0),
    lambda A: TiLISTA(A, 8, LAM, ss_p_per_layer=4.0, ss_p_max=20.0),
])
def test_support_selection_models_start_as_ista_with_shrink_ss(make):
    A, y = problem(seed=4)
    L = lipschitz_constant(A)
    percents = [min(4.0 * (t + 1), 20.0) for t in range(8)]

    def shrink(t, z):  # column vectors -> rows for the per-row reference
        return shrink_ss_rows(z.t(), LAM / L, percents[t]).t()

    for a, b in zip(make(A)(y), ista_reference(A, y, LAM, 8, shrink), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_alista_matches_explicit_loop_and_has_2t_parameters():
    A, y = problem(seed=5)
    model = ALISTA(A, 7, LAM)
    assert sum(p.numel() for p in model.parameters()) == 14
    assert len(list(model.parameters())) == 14
    torch.testing.assert_close(model.step_sizes(), torch.ones(7, dtype=D))
    with torch.no_grad():
        model.gamma[3].fill_(0.7)
        model.theta[5].fill_(0.02)
    W = analytic_weight(A)
    x, L = torch.zeros(A.shape[1], y.shape[0], dtype=D), lipschitz_constant(A)
    for t, got in enumerate(model(y)):
        gamma = 0.7 if t == 3 else 1.0
        theta = 0.02 if t == 5 else LAM / L
        x = soft_threshold(x + gamma * W.t() @ (y.t() - A @ x), theta)
        torch.testing.assert_close(got, x.t(), rtol=1e-11, atol=1e-13)


def test_tilista_steps_and_thresholds():
    A, _ = problem()
    model = TiLISTA(A, 4, LAM)
    torch.testing.assert_close(model.step_sizes(), torch.full((4,), 1 / model.L, dtype=D))
    models = all_models(A)
    assert list(models) == MODEL_NAMES
    for name, m in models.items():
        if name not in ("tilista", "alista", "alista_ss"):
            assert m.step_sizes() is None, name
        assert m.dictionaries()["A"] is m.A and torch.equal(m.A, A)
        assert m.layers == 5 and m.lam == LAM
        assert m.thresholds().shape == (5,) and not m.thresholds().requires_grad


def test_analytic_weight_is_feasible_and_optimal():
    """Closed form vs projected gradient descent on ||W^T A||_F^2 s.t. diag(W^T A) = 1
    (the method of ALISTA's CalculateW.m); the closed form must be no worse."""
    g = torch.Generator().manual_seed(6)
    A = torch.randn(30, 60, dtype=D, generator=g)
    A = A / A.norm(dim=0)
    W = analytic_weight(A)
    torch.testing.assert_close((W * A).sum(0), torch.ones(60, dtype=D), rtol=0, atol=1e-12)

    def project(V):  # columnwise onto {w : a_j^T w = 1}
        return V + A * (1 - (V * A).sum(0)) / (A * A).sum(0)

    eta = 1 / (2 * torch.linalg.matrix_norm(A, 2).item() ** 2)
    V = project(A.clone())
    for _ in range(3000):
        V = project(V - eta * 2 * A @ (A.t() @ V))

    def objective(M):
        return (M.t() @ A).square().sum().item()

    assert objective(W) <= objective(V) * (1 + 1e-12)
    assert objective(V) <= objective(W) * (1 + 1e-8)  # PGD converged to the same value
    torch.testing.assert_close(V, W, rtol=0, atol=1e-6)


def test_analytic_weight_lowers_mutual_coherence():
    g = torch.Generator().manual_seed(7)
    A = torch.randn(250, 500, generator=g) / 250 ** 0.5
    A = A / A.norm(dim=0)
    W = analytic_weight(A)
    assert W.dtype == torch.float32 and W.shape == A.shape
    mu_A, mu_W = mutual_coherence(A, A), mutual_coherence(W, A)
    assert 0.24 < mu_A < 0.32
    assert 0.17 < mu_W < 0.23 and mu_W < mu_A - 0.04


def test_analytic_weight_rejects_zero_column():
    A = torch.randn(4, 6, dtype=D)
    A[:, 2] = 0
    with pytest.raises(ValueError, match="zero column"):
        analytic_weight(A)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layer_parameters_partition_and_depth(name):
    A, y = problem(seed=8)
    model = all_models(A)[name]
    per_layer = [model.layer_parameters(t) for t in range(model.layers)]
    ids = [id(p) for ps in per_layer for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    if name in ("ista", "fista"):
        assert ids == [] and len(list(model.buffers())) == 1
    with pytest.raises(ValueError, match="t must"):
        model.layer_parameters(model.layers)

    full = model(y)
    for depth in (1, 3, model.layers):
        part = model(y, depth=depth)
        assert len(part) == depth
        for a, b in zip(part, full[:depth]):
            assert torch.equal(a, b)


def test_stagewise_gradients_reach_exactly_the_trained_layers():
    A, y = problem(seed=9)
    model = LISTACP(A, 5, LAM, tied=False, ss_p_per_layer=1.2, ss_p_max=13)
    model(y, depth=3)[-1].square().sum().backward()
    for t in range(5):
        for p in model.layer_parameters(t):
            assert (p.grad is not None) == (t < 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=0), "layers"),
    (dict(layers=2.0), "layers"),
    (dict(lam=-0.1), "lam"),
    (dict(ss_p_per_layer=-1.0), "ss_p_per_layer"),
    (dict(ss_p_max=101.0), "ss_p_max"),
    (dict(tied="yes"), "tied"),
    (dict(A=torch.zeros(3)), "A"),
])
def test_argument_validation(kwargs, match):
    args = dict(A=torch.randn(4, 6, dtype=D), layers=3, lam=0.1) | kwargs
    with pytest.raises(ValueError, match=match):
        LISTA(**args)


def test_forward_validation():
    A, y = problem()
    model = LISTACP(A, 3, LAM)
    for depth in (0, 4, 1.5):
        with pytest.raises(ValueError, match="depth"):
            model(y, depth=depth)
    with pytest.raises(ValueError, match="y must"):
        model(y[:, :-1])
