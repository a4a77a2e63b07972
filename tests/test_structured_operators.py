"""Structured maps in the unrolled models (``model.operator``): butterfly / Monarch LISTA at its ISTA
initialisation reproduces ISTA when ISTA's matrices are exactly representable (a Hadamard-based A),
the dense default is the explicit LISTA computation, bad values are refused naming the key, parameter
counts, the ML-ISTA structured classifier, and a CLI run."""

import math

import pytest
import torch
from torch import nn

from conftest import TINY, compose_cfg, read_metrics, run_cli
from unroll_cli.errors import ConfigError
from unroll_cli.validation import validate
from unroll_cli.models.butterfly import Butterfly, Monarch
from unroll_cli.models.lista import LISTA, LISTACP, lipschitz_constant
from unroll_cli.models.mlista import MLISTA, MLLISTA
from unroll_cli.models.operators import structured_map
from unroll_cli.models.prox import soft_threshold
from unroll_cli.run import build_model, build_task

D = torch.float64
LAM = 0.4
STRUCTURED = {"butterfly": Butterfly, "monarch": Monarch}

pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: see conftest


def hadamard(n: int) -> torch.Tensor:
    """Sylvester's H_n = H_2 (x) H_{n/2}, entries +-1."""
    H = torch.ones(1, 1, dtype=D)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)])
    return H


def hadamard_problem(m=8, n=16, batch=5, seed=0):
    """A = the first m rows of H_n / sqrt(m) (unit columns). With m = n/2, A^T A = J_2 (x) I_{n/2}
    (J_2 the 2x2 all-ones matrix), so ISTA's W = I - A^T A / L and B = A^T / L (padded: [[1, 0], [1, 0]] (x) H_{n/2})
    are Kronecker products: butterfly products and, for n = 16 = 4^2, Monarch matrices."""
    g = torch.Generator().manual_seed(seed)
    A = hadamard(n)[:m] / math.sqrt(m)
    x = torch.randn(batch, n, dtype=D, generator=g) * (torch.rand(batch, n, dtype=D, generator=g) < 0.25)
    return A, x @ A.t()


def gaussian_problem(m=12, n=24, batch=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, dtype=D, generator=g)
    A = A / A.norm(dim=0)
    x = torch.randn(batch, n, dtype=D, generator=g) * (torch.rand(batch, n, dtype=D, generator=g) < 0.2)
    return A, x @ A.t()


def ista_loop(A, y, lam, layers):
    """Plain column-vector ISTA, x <- soft(x + A^T (y - A x) / L, lam / L), L = 1.001 ||A||^2."""
    L = 1.001 * torch.linalg.svdvals(A)[0].item() ** 2
    x, xs = torch.zeros(A.shape[1], y.shape[0], dtype=A.dtype), []
    for _ in range(layers):
        x = soft_threshold(x + A.t() @ (y.t() - A @ x) / L, lam / L)
        xs.append(x.t())
    return xs


@pytest.mark.parametrize("operator", ["butterfly", "monarch"])
@pytest.mark.parametrize("make", [
    lambda A, op: LISTA(A, 6, LAM, operator=op),
    lambda A, op: LISTA(A, 6, LAM, tied=False, operator=op),
    lambda A, op: LISTACP(A, 6, LAM, operator=op),
    lambda A, op: LISTACP(A, 6, LAM, tied=False, operator=op),
], ids=["lista", "lista_untied", "lista_cp", "lista_cp_untied"])
def test_structured_lista_at_ista_init_reproduces_ista(make, operator):
    A, y = hadamard_problem()
    model = make(A, operator)
    assert any(isinstance(module, STRUCTURED[operator]) for module in model.modules())
    with torch.no_grad():
        estimates = model(y)
    reference = ista_loop(A, y, LAM, 6)
    assert reference[-1].count_nonzero() > 0
    for ours, theirs in zip(estimates, reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("operator", ["butterfly", "monarch"])
def test_padded_maps_keep_exactly_representable_matrices(operator):
    """Sizes that are not powers of two / squares are zero-padded; a diagonal stays exact."""
    diag = torch.diag(torch.arange(1.0, 13.0, dtype=D))
    layer = structured_map(diag, operator)
    torch.testing.assert_close(layer.dense_matrix(), diag, rtol=1e-12, atol=1e-12)
    tall = torch.cat([diag, 2 * diag])[:20, :]  # 20 x 12: output padded too
    assert structured_map(tall, operator).dense_matrix().shape == (20, 12)


def test_dense_default_is_the_explicit_fused_lista():
    """The default builds plain parameters (the fused GEMM path) and computes
    x <- soft(W x + B y) with ISTA's W, B, also after the weights move."""
    A, y = gaussian_problem()
    torch.manual_seed(0)
    model = LISTA(A, 5, LAM, tied=False)
    L = lipschitz_constant(A)
    assert model.operator == "dense" and isinstance(model.B, nn.Parameter)
    torch.testing.assert_close(model.B.data, A.t() / L, rtol=0, atol=0)
    for W in model.W:
        assert isinstance(W, nn.Parameter)
        torch.testing.assert_close(W.data, torch.eye(A.shape[1], dtype=D) - A.t() @ A / L, rtol=1e-15, atol=1e-15)
    with torch.no_grad():
        for W in model.W:
            W.add_(0.01 * torch.randn_like(W))
        model.B.add_(0.01 * torch.randn_like(model.B))
        x, theta = torch.zeros(A.shape[1], y.shape[0], dtype=D), LAM / L
        By = model.B @ y.t()
        for t, estimate in enumerate(model(y)):
            x = soft_threshold(By if t == 0 else model.W[t - 1] @ x + By, theta)
            torch.testing.assert_close(estimate, x.t(), rtol=1e-12, atol=1e-12)
    cp = LISTACP(A, 3, LAM)
    assert cp.operator == "dense" and isinstance(cp.W, nn.Parameter) and cp.W.shape == A.shape
    with torch.no_grad():
        for ours, theirs in zip(cp(y), ista_loop(A, y, LAM, 3), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model, extra", [("lista", []), ("lista_cpss", []), ("ml_ista", ["data=mnist"])])
def test_unknown_operator_is_refused_naming_the_key(model, extra):
    cfg = compose_cfg([f"model={model}", "model.operator=foo", *extra])
    with pytest.raises(ConfigError, match=r"model\.operator"):
        validate(cfg)
    A, _ = gaussian_problem()
    with pytest.raises(ValueError, match="operator"):
        LISTA(A, 2, LAM, operator="foo")
    with pytest.raises(ValueError, match="operator"):
        MLISTA(operator="foo")


def butterfly_count(in_features, out_features):
    p = 1 << (in_features - 1).bit_length()
    return -(-out_features // p) * 2 * p * (p.bit_length() - 1)


def monarch_count(in_features, out_features):
    b = math.isqrt(max(in_features, out_features) - 1) + 1
    return 2 * b ** 3


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("operator, count", [("butterfly", butterfly_count), ("monarch", monarch_count)])
def test_structured_parameter_counts(operator, count, tied):
    m, n, layers = 64, 128, 4
    A = torch.randn(m, n, dtype=D)
    maps = 1 if tied else layers - 1
    for cls, expected in ((LISTA, count(m, n) + maps * count(n, n)),
                          (LISTACP, (1 if tied else layers) * count(m, n))):
        model, dense = cls(A, layers, LAM, tied=tied, operator=operator), cls(A, layers, LAM, tied=tied)
        params = list(model.parameters())
        total = sum(p.numel() for p in params if p.requires_grad)  # what run.py records as `params`
        assert total == expected + layers
        assert total < sum(p.numel() for p in dense.parameters())
        owned = [p for t in range(layers) for p in model.layer_parameters(t)]  # a partition, for trainer=layerwise
        assert len(owned) == len(params) and {id(p) for p in owned} == {id(p) for p in params}


@pytest.mark.parametrize("operator", ["butterfly", "monarch"])
@pytest.mark.parametrize("cls", [MLISTA, MLLISTA])
def test_mlista_structured_classifier(cls, operator):
    torch.manual_seed(0)
    model, dense = cls("mnist", 1, 10, 1, operator=operator), cls("mnist", 1, 10, 1)
    assert isinstance(model.classifier, STRUCTURED[operator]) and isinstance(dense.classifier, nn.Linear)
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    head = (butterfly_count if operator == "butterfly" else monarch_count)(512, 10) + 10
    assert count(model) == count(dense) - 512 * 10 - 10 + head
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(3))
    out[:, 0].sum().backward()
    assert all(p.grad is not None for p in model.classifier.parameters())


@pytest.mark.parametrize("operator", ["butterfly", "monarch"])
def test_configs_build_structured_models(operator):
    cfg = compose_cfg([*TINY, "model=lista_cp", f"model.operator={operator}"])
    validate(cfg)
    model = build_model(cfg.model, build_task(cfg, torch.device("cpu")))
    assert isinstance(model.W, STRUCTURED[operator])


def test_cli_run_with_a_butterfly_lista(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*TINY, "model=lista", "model.operator=butterfly", "data.m=16", "data.n=32",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = read_metrics(run_dir)
    assert record["status"] == "completed"
    assert record["params"] == butterfly_count(16, 32) + butterfly_count(32, 32) + 4  # B, tied W, 4 thresholds
