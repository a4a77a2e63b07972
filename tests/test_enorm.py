"""+callbacks=enorm (unroll_cli/train/enorm.py): Equi-normalization's cycle on model=mlp, in float64."""
from __future__ import annotations

import copy
import numpy as np
import pytest
import torch

from conftest import run_cli
from test_classification_run import write_learnable_mnist
from test_rescaling import small_mlp

from unroll_cli.errors import ConfigError
from unroll_cli.models.mlista import MLISTA
from unroll_cli.models.rescaling import rescale, rescaling_pairs
from unroll_cli.train.enorm import ENorm, enorm_cycle


def cost(model, c: float) -> float:
    """``sum_k c^{-2k} ||W_k||_F^2`` over every linear map, the sum one ENorm step minimises."""
    return sum(c ** (-2 * k) * lin.weight.detach().square().sum().item() for k, lin in enumerate(model.linears))


def balanced(model):
    return ENorm().balanced(model)


def test_cycles_keep_the_function_with_the_biases_scaled():
    model = small_mlp(depth=4)
    x = torch.randn(40, 1, 2, 2, dtype=torch.float64)
    before = model.logits(x)
    for _ in range(25):
        enorm_cycle(balanced(model), c=1.2)
    after = model.logits(x)
    assert (after - before).abs().max() <= 1e-12 * before.abs().max()
    assert torch.equal(model.linears[-1].weight, small_mlp(depth=4).linears[-1].weight)  # never balanced


def test_biases_left_alone_change_the_function():
    model = small_mlp(depth=4)
    x = torch.randn(40, 1, 2, 2, dtype=torch.float64)
    before = model.logits(x)
    enorm_cycle(balanced(model), c=1.2, biases=False)
    assert (model.logits(x) - before).abs().max() > 1e-3 * before.abs().max()


@pytest.mark.parametrize("c", [1.0, 1.2])
def test_each_step_balances_its_layer_and_the_cost_never_increases(c):
    model = small_mlp(depth=5, width=5, seed=3)
    costs = [cost(model, c)]
    for _ in range(30):
        for k, units in enumerate(balanced(model)):
            enorm_cycle([units], c)
            costs.append(cost(model, c))
            # the step's optimum: every unit's outgoing norm is c times its incoming norm
            rows = model.linears[k].weight.detach().norm(dim=1)
            cols = model.linears[k + 1].weight.detach().norm(dim=0)
            torch.testing.assert_close(cols / rows, torch.full_like(rows, c), rtol=1e-12, atol=0)
    assert all(later <= earlier * (1 + 1e-14) for earlier, later in zip(costs, costs[1:]))
    assert costs[-1] < costs[0] and abs(costs[-1] - costs[-2]) <= 1e-12 * costs[-1]  # converged


def authors_cycle(weights: list[np.ndarray], c: float) -> list[np.ndarray]:
    """Stock et al.'s FC cycle written out (their loop over the hidden layers but the last, every factor
    d_i = sqrt(||col_i(W_k)|| / (c ||row_i(W_{k-1})||)) from the weights before the cycle)."""
    out = [w.copy() for w in weights]
    for k in range(1, len(weights) - 1):
        d = np.sqrt(np.linalg.norm(weights[k], axis=0) / (c * np.linalg.norm(weights[k - 1], axis=1)))
        out[k - 1] *= d[:, None]
        out[k] /= d[None, :]
    return out


def test_the_simultaneous_order_is_the_authors_cycle_on_a_bias_free_network():
    model = small_mlp(bias=False, depth=5, width=6, seed=4)
    weights = [lin.weight.detach().numpy().copy() for lin in model.linears]
    for _ in range(3):
        weights = authors_cycle(weights, 1.2)
        enorm_cycle(balanced(model), c=1.2, biases=False, order="simultaneous")
    for lin, expected in zip(model.linears, weights):
        np.testing.assert_allclose(lin.weight.detach().numpy(), expected, rtol=1e-13, atol=0)
    sequential = small_mlp(bias=False, depth=5, width=6, seed=4)
    enorm_cycle(balanced(sequential), c=1.2, biases=False)  # the default reads the norms as it goes
    assert not np.allclose(sequential.linears[1].weight.detach().numpy(),
                           authors_cycle([lin.weight.detach().numpy() for lin in small_mlp(
                               bias=False, depth=5, width=6, seed=4).linears], 1.2)[1], rtol=1e-6)


def test_from_a_rescaled_copy_it_reaches_the_same_point():
    """The canonical representer is unique (Stock et al., Theorem 1): any rescaling of the balanced units
    (the last hidden layer's is never undone, as in the authors' code: it stays the identity) is forgotten."""
    model, copy = small_mlp(depth=4, seed=5), small_mlp(depth=4, seed=5)
    g = torch.Generator().manual_seed(7)
    scales = [torch.exp(2 * torch.randn(u.size, generator=g, dtype=torch.float64)) for u in rescaling_pairs(copy)]
    rescale(copy, [*scales[:-1], torch.ones_like(scales[-1])])
    assert (copy.linears[0].weight - model.linears[0].weight).abs().max() > 0.1
    for _ in range(200):
        enorm_cycle(balanced(model), 1.2)
        enorm_cycle(balanced(copy), 1.2)
    for a, b in zip(model.parameters(), copy.parameters()):
        assert (a - b).abs().max() <= 1e-8 * a.abs().max()


def test_momentum_buffers_are_scaled_inversely():
    """A weight times its momentum buffer is what ENorm leaves unchanged, entry by entry."""
    model = small_mlp(depth=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.logits(torch.randn(8, 1, 2, 2, dtype=torch.float64)).square().sum().backward()
    optimizer.step()
    products = [(p * optimizer.state[p]["momentum_buffer"]).clone() for p in model.parameters()]
    enorm_cycle(balanced(model), 1.2, optimizer=optimizer)
    assert (model.linears[0].weight - small_mlp(depth=3).linears[0].weight).abs().max() > 1e-3  # it did rescale
    for p, product in zip(model.parameters(), products):
        torch.testing.assert_close(p * optimizer.state[p]["momentum_buffer"], product, rtol=1e-12, atol=1e-15)


def test_a_model_it_cannot_balance_is_refused(tiny_cfg):
    cfg = tiny_cfg("optim=sgd")
    with pytest.raises(ConfigError, match="model.unfoldings=2"):
        ENorm().check(MLISTA(unfoldings=2), None, cfg)
    with pytest.raises(ConfigError, match="one hidden layer"):
        ENorm().check(small_mlp(depth=1), None, cfg)
    with pytest.raises(ConfigError, match="model.batch_norm=true.*does not preserve the function"):
        ENorm().check(small_mlp(depth=4, batch_norm=True), None, cfg)  # the exact mode keeps the function
    ENorm(rescale_bias=False).check(small_mlp(depth=4, batch_norm=True), None, cfg)  # the authors' mode


def test_the_authors_mode_balances_the_weights_between_batch_normalisations_as_their_code():
    """Their FC net: bias-free linear maps, each hidden one followed by batch normalisation, which their
    ENorm leaves alone (skipped by name); one cycle on the weights as the written-out loop."""
    model = small_mlp(bias=False, batch_norm=True, depth=5, width=6, seed=2)
    norms = [copy.deepcopy(norm.state_dict()) for norm in model.norms]
    weights = [lin.weight.detach().numpy().copy() for lin in model.linears]
    for _ in range(3):
        weights = authors_cycle(weights, 1.2)
        enorm_cycle(ENorm(rescale_bias=False).balanced(model), c=1.2, biases=False, order="simultaneous")
    for lin, expected in zip(model.linears, weights):
        np.testing.assert_allclose(lin.weight.detach().numpy(), expected, rtol=1e-13, atol=0)
    for norm, before in zip(model.norms, norms):
        assert all(torch.equal(value, before[key]) for key, value in norm.state_dict().items())


@pytest.mark.parametrize("value", ["c=0", "every=0", "rescale_bias=1", "order=jacobi"])
def test_bad_values_are_refused(value):
    key, given = value.split("=")
    with pytest.raises(ValueError, match=key):
        ENorm(**{key: int(given) if given.isdigit() else given})


def mlp_run(tmp_path, *extra):
    write_learnable_mnist(tmp_path / "data/MNIST/raw", np.random.default_rng(0), 200, 50)
    return run_cli(["model=mlp", "data=mnist", f"data.root={tmp_path / 'data'}", "data.download=false",
                    "data.batch_size=50", "model.depth=3", "model.width=16", "trainer.max_epochs=2",
                    "trainer.progress=false", "tensorboard=false", f"hydra.run.dir={tmp_path / 'run'}", *extra],
                   cwd=tmp_path)


def test_enorm_with_adam_is_refused_naming_both_keys(tmp_path):
    result = mlp_run(tmp_path, "+callbacks=enorm", "optim=adam")
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output
    assert "callbacks.enorm" in output and "optim._target_=torch.optim.Adam" in output and "optim=sgd" in output
    assert not (tmp_path / "run" / "metrics.json").exists()
