"""LISTA's untied form (model.tied_b=false, model.unit_thresholds=true) and its exact rescaling symmetry
(unroll_cli/models/rescaling.py, +callbacks=enorm), in float64 against written-out recursions."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli, tiny
from test_refused_keys import assert_refused_before_hydra
from unroll_cli.errors import ConfigError
from unroll_cli.models.lista import LISTA, LISTACP, TiLISTA
from unroll_cli.models.operators import structured_map
from unroll_cli.models.rescaling import rescale, rescaling_pairs
from unroll_cli.train.enorm import ENorm, enorm_cycle

D = torch.float64
LAM = 0.1
UNTIED = dict(tied=False, tied_b=False, unit_thresholds=True)

pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: see conftest


def problem(m=6, n=9, batch=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, dtype=D, generator=g), torch.randn(batch, m, dtype=D, generator=g)


def untied_lista(A, layers=4, seed=1) -> LISTA:
    """An untied per-unit LISTA moved away from ISTA (every matrix and threshold its own)."""
    model = LISTA(A, layers, LAM, **UNTIED)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, dtype=D, generator=g))
            if p.dim() == 1:
                p.abs_()
    return model


def shrink(z, theta):
    return torch.sign(z) * torch.clamp(z.abs() - theta, min=0)


def recursion(y, B, W, theta):
    """x_1 = eta_{theta_0}(B_0 y), x_{t+1} = eta_{theta_t}(W_{t-1} x_t + B_t y): every estimate."""
    x, estimates = None, []
    for t in range(len(B)):
        z = y @ B[t].T if x is None else x @ W[t - 1].T + y @ B[t].T
        x = shrink(z, theta[t])
        estimates.append(x)
    return estimates


def weights(model):
    return ([b.detach().clone() for b in model.B], [w.detach().clone() for w in model.W],
            [th.detach().clone() for th in model.theta])


def random_scales(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.exp(2 * torch.randn(u.size, dtype=D, generator=g)) for u in rescaling_pairs(model)]


def test_the_untied_model_is_the_stated_recursion():
    A, y = problem()
    model = untied_lista(A)
    assert [tuple(b.shape) for b in model.B] == [(9, 6)] * 4 and [tuple(w.shape) for w in model.W] == [(9, 9)] * 3
    assert [tuple(th.shape) for th in model.theta] == [(9,)] * 4
    for mine, reference in zip(model(y), recursion(y, *weights(model))):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-13)


def test_a_random_positive_rescaling_keeps_the_last_estimate_and_scales_the_others():
    A, y = problem()
    model = untied_lista(A)
    before = model(y)
    scales = random_scales(model)
    rescale(model, scales)
    after = model(y)
    assert (after[-1] - before[-1]).abs().max() <= 1e-12 * before[-1].abs().max()
    for t, d in enumerate(scales):  # x_{t+1} -> D_{t+1} x_{t+1}
        assert (after[t] - d * before[t]).abs().max() <= 1e-12 * (d * before[t]).abs().max()
    assert max((a - b).abs().max() for a, b in zip(after[:-1], before[:-1])) > 0.1  # it did rescale


def test_a_rescaling_is_the_diagonal_products_and_the_written_out_loop_agrees():
    """W_{t-1} -> D_{t+1} W_{t-1} D_t^-1, B_t -> D_{t+1} B_t, theta_t -> D_{t+1} theta_t, D_T = I, as
    matrices here; the recursion with those weights gives the rescaled model's estimates."""
    A, y = problem()
    model = untied_lista(A)
    B, W, theta = weights(model)
    scales = random_scales(model)
    rescale(model, scales)
    Dm = [torch.diag(d) for d in scales] + [torch.eye(9, dtype=D)]  # Dm[t] = D_{t+1}
    B2 = [Dm[t] @ B[t] for t in range(4)]
    W2 = [Dm[t + 1] @ W[t] @ torch.linalg.inv(Dm[t]) for t in range(3)]
    theta2 = [Dm[t] @ theta[t] for t in range(4)]
    for mine, reference in zip(weights(model), (B2, W2, theta2)):
        for a, b in zip(mine, reference):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=0)
    for mine, reference in zip(model(y), recursion(y, B2, W2, theta2)):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-12 * reference.abs().max().item())
    last = recursion(y, B, W, theta)[-1]
    assert (recursion(y, B2, W2, theta2)[-1] - last).abs().max() <= 1e-12 * last.abs().max()


def cost(model, c: float) -> float:
    """``sum_t c^{-2t} (||W_{t-1}||_F^2 + ||B_t||_F^2)``: the rows into layer t's units weighted as ENorm's
    sum weights a network's t-th map (the thresholds, like biases, not counted)."""
    total = 0.0
    for t in range(model.layers):
        rows = model.B[t].detach().square().sum() + (model.W[t - 1].detach().square().sum() if t else 0)
        total += c ** (-2 * t) * rows.item()
    return total


@pytest.mark.parametrize("c", [1.0, 1.2])
def test_enorm_cycles_keep_the_last_estimate_and_never_increase_the_cost(c):
    A, y = problem()
    model = untied_lista(A, layers=5)
    before = model(y)[-1]
    costs = [cost(model, c)]
    for _ in range(30):
        for units in ENorm().balanced(model):
            enorm_cycle([units], c)
            costs.append(cost(model, c))
    after = model(y)[-1]
    assert (after - before).abs().max() <= 1e-12 * before.abs().max()
    assert all(later <= earlier * (1 + 1e-14) for earlier, later in zip(costs, costs[1:]))
    assert costs[-1] < 0.99 * costs[0]
    assert len(ENorm().balanced(model)) == 3  # x_1, x_2, x_3; x_4 feeds the output layer


KEYS = ("model.tied=true", "model.tied_b=true", "model.unit_thresholds=false")


@pytest.mark.parametrize("options, named", [
    ({}, KEYS),
    ({"tied": False}, KEYS[1:]),
    ({"tied": False, "unit_thresholds": True}, ["model.tied_b=true (one B for all layers: D_t B = B"]),
    ({"tied_b": False, "unit_thresholds": True}, ["model.tied=true (one W for all layers"]),
    ({"tied": False, "tied_b": False}, ["model.unit_thresholds=false (a scalar threshold per layer"]),
    ({**UNTIED, "ss_p_per_layer": 1.2, "ss_p_max": 12}, ["model.ss_p_per_layer>0 (support selection"]),
    ({**UNTIED, "operator": "monarch"}, ["model.operator=monarch"]),
])
def test_a_parametrisation_without_the_symmetry_is_refused_in_one_message_naming_the_keys(options, named):
    A, _ = problem()
    with pytest.raises(ConfigError) as refusal:
        rescaling_pairs(LISTA(A, 3, LAM, **options))
    message = str(refusal.value)
    assert len(message.splitlines()) == 1 and message.startswith("LISTA has no per-unit rescaling symmetry")
    assert message.endswith("model.tied=false model.tied_b=false model.unit_thresholds=true (dense, without "
                            "support selection) has it")
    for text in named:
        assert text in message
    for key in KEYS:  # the keys that do not break it are not named as if they did
        assert (key in message) == any(text.startswith(key) for text in named)


@pytest.mark.parametrize("family", [LISTACP, TiLISTA])
def test_the_coupled_update_is_refused_saying_why(family):
    A, _ = problem()
    with pytest.raises(ConfigError, match=rf"{family.__name__} has no rescaling symmetry: the coupled update"):
        rescaling_pairs(family(A, 3, LAM))


def reference_lista(A, y, layers):
    """The default LISTA at its start, written out: B = A^T / L, W = I - A^T A / L, theta = lam / L."""
    L = 1.001 * torch.linalg.matrix_norm(A, ord=2).item() ** 2
    B, W = A.T / L, torch.eye(A.shape[1], dtype=D) - A.T @ A / L
    return recursion(y, [B] * layers, [W] * (layers - 1), [LAM / L] * layers)


def test_the_defaults_are_the_model_as_before_and_the_untied_start_is_the_same_function():
    A, y = problem()
    default = LISTA(A, 4, LAM)
    assert {name: tuple(p.shape) for name, p in default.named_parameters()} == {
        "B": (9, 6), "W": (9, 9), **{f"theta.{t}": () for t in range(4)}}
    for mine, reference in zip(default(y), reference_lista(A, y, 4)):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-14)
    explicit = LISTA(A, 4, LAM, tied_b=True, unit_thresholds=False)
    assert all(torch.equal(a, b) for a, b in zip(default(y), explicit(y)))
    untied = LISTA(A, 4, LAM, **UNTIED)  # every B_t at A^T / L, every threshold at lam / L
    for mine, reference in zip(untied(y), default(y)):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-14)
    torch.testing.assert_close(untied.thresholds(), default.thresholds(), rtol=0, atol=0)


def test_per_unit_thresholds_at_their_start_are_lista_ss_as_before():
    """Support selection with a threshold vector (a top-k of each row) against the scalar's own kernel."""
    A, y = problem(m=20, n=40)
    options = dict(ss_p_per_layer=5.0, ss_p_max=20.0)
    for mine, reference in zip(LISTA(A, 5, LAM, unit_thresholds=True, **options)(y), LISTA(A, 5, LAM, **options)(y)):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-14)


def test_thresholds_report_each_layers_mean_and_the_layer_groups_partition_the_parameters():
    A, _ = problem()
    model = untied_lista(A)
    torch.testing.assert_close(model.thresholds(), torch.stack([th.detach().mean() for th in model.theta]))
    groups = [model.layer_parameters(t) for t in range(4)]
    assert [len(g) for g in groups] == [2, 3, 3, 3]
    assert groups[2][0] is model.W[1] and groups[2][1] is model.B[2] and groups[2][2] is model.theta[2]
    ids = [id(p) for g in groups for p in g]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert model.prunable_parameters() == [f"B.{t}" for t in range(4)] + [f"W.{t}" for t in range(3)]
    shared_b = LISTA(A, 4, LAM, tied=False, unit_thresholds=True)
    assert [len(shared_b.layer_parameters(t)) for t in range(4)] == [2, 2, 2, 2]
    config = {"layers": 4, "tied": False}
    grow = LISTA.memory_estimate({**config, "tied_b": False}, A, 8, 8)["model.layers"]
    assert grow - LISTA.memory_estimate(config, A, 8, 8)["model.layers"] == 4 * 4 * 4 * 9 * 6


def test_a_per_layer_b_is_compressed_map_by_map():
    A, y = problem(m=8, n=8)
    model = untied_lista(A)
    maps = model.dense_maps()
    assert list(maps) == [f"W.{t}" for t in range(3)] + [f"B.{t}" for t in range(4)]
    compressed = model.structured("monarch")
    for name, matrix in maps.items():
        torch.testing.assert_close(compressed.get_submodule(name).dense_matrix(),
                                   structured_map(matrix, "monarch").dense_matrix(), rtol=0, atol=1e-14)
    assert compressed(y)[-1].shape == (30, 8)


@pytest.mark.parametrize("overrides, named", [
    (["model=lista", "model.tied_b=maybe"], ["model.tied_b=maybe"]),
    (["model=lista", "model.unit_threshold=true"], ["model.unit_threshold is not a key of model",
                                                    "did you mean model.unit_thresholds?"]),
    (["model=lista_cp", "model.tied_b=false"], ["model.tied_b is not a key of model (LISTACPModelConfig)"]),
])
def test_a_typo_or_a_wrong_type_is_refused_naming_the_key(tmp_path, overrides, named):
    assert_refused_before_hydra(tmp_path, overrides, *named)


def lista_run(tmp_path, *extra):
    run_dir = tmp_path / "run"
    result = run_cli(tiny("model=lista", "optim=sgd", "optim.lr=0.001", "+callbacks=enorm", "tensorboard=false",
                          f"hydra.run.dir={run_dir}", *extra), cwd=tmp_path)
    return result, run_dir


def test_enorm_trains_an_untied_lista_from_the_command_line(tmp_path):
    result, run_dir = lista_run(tmp_path, "model.tied=false", "model.tied_b=false", "model.unit_thresholds=true")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    # the last step's cycle ended on x_2's units (x_3 feeds the output layer): each unit's outgoing
    # column of W.1 is c = 1.2 times its incoming rows of W.0 and B.1, as no later step touched them
    weights = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    incoming = (weights["W.0"].double().square().sum(1) + weights["B.1"].double().square().sum(1)).sqrt()
    ratio = weights["W.1"].double().norm(dim=0) / incoming
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1.2), rtol=1e-5, atol=0)


@pytest.mark.parametrize("extra, named", [
    ([], ["callbacks.enorm: LISTA has no per-unit rescaling symmetry", "model.tied=true"]),
    (["model.tied=false", "model.tied_b=false", "model.unit_thresholds=true", "trainer=layerwise"],
     ["callbacks.enorm: trainer._target_=unroll_cli.train.layerwise.LayerwiseTrainer fits the model truncated"]),
])
def test_enorm_on_a_lista_it_cannot_balance_is_refused_before_any_work(tmp_path, extra, named):
    result, run_dir = lista_run(tmp_path, *extra)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output
    for text in named:
        assert text in output, output
    assert not (run_dir / "metrics.json").exists()
