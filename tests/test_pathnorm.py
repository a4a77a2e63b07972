"""+diagnostics=pathnorm (unroll_cli/evaluate/pathnorm.py): the one-pass path-norm against the explicit
path-lifting of a small MLP with biases, in float64; and a run of model=mlp with ENorm and the path-norm."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from test_enorm import mlp_run
from test_rescaling import random_scales, small_mlp

from unroll_cli.errors import ConfigError
from unroll_cli.evaluate.diagnostics import check_diagnostics
from unroll_cli.evaluate.pathnorm import PathNorm, path_activations, path_lifting, path_norm
from unroll_cli.models.mlista import MLISTA
from unroll_cli.models.rescaling import rescale
from unroll_cli.train.enorm import ENorm, enorm_cycle

QS = (1, 2, 4)


def with_batch_norm(seed=0):
    """An MLP with batch normalisation in eval mode, its statistics and affine parameters random."""
    model = small_mlp(depth=2, batch_norm=True, seed=seed)
    with torch.no_grad():
        for norm in model.norms:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.normal_()
            norm.bias.normal_()
    return model.eval()


@pytest.mark.parametrize("model", [small_mlp(depth=2), small_mlp(depth=2, bias=False), with_batch_norm()],
                         ids=["biases", "bias-free", "batch-norm"])
def test_the_one_pass_path_norm_is_the_norm_of_the_enumerated_paths(model):
    layers = model.feedforward_layers()
    phi = path_lifting(layers)
    # widths 4 -> 5 -> 5 -> 3: per output 4*5*5 full paths, 5*5 + 5 + 1 partial ones
    assert phi.shape == (3, 100 + 25 + 5 + 1)
    for q in QS:
        assert path_norm(layers, q) == pytest.approx(phi.abs().pow(q).sum().pow(1 / q).item(), rel=1e-12)


@pytest.mark.parametrize("model", [small_mlp(depth=2), with_batch_norm()], ids=["biases", "batch-norm"])
def test_the_output_is_the_activations_against_the_path_lifting(model):
    layers = model.feedforward_layers()
    phi = path_lifting(layers)
    x = torch.randn(10, 1, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        logits = model.logits(x)
    for sample, expected in zip(x, logits):
        f = (path_activations(layers, sample.flatten()) * phi).sum(1)
        assert (f - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_the_path_norm_is_invariant_under_rescaling_and_enorm():
    model = small_mlp(depth=3, seed=2)
    before = {q: path_norm(model.feedforward_layers(), q) for q in QS}
    rescale(model, random_scales(model, seed=4))
    for _ in range(10):
        enorm_cycle(ENorm.balanced(model), 1.2)
    for q in QS:
        assert path_norm(model.feedforward_layers(), q) == pytest.approx(before[q], rel=1e-12)


@pytest.mark.parametrize("unfoldings", [0, 2])
def test_a_model_without_feed_forward_layers_is_refused_saying_why(unfoldings):
    with pytest.raises(ConfigError, match="diagnostics.pathnorm does not apply to model=ml_ista: .*unrolled model"):
        check_diagnostics({"pathnorm": PathNorm()}, MLISTA(unfoldings=unfoldings), "ml_ista")


@pytest.mark.parametrize("q", [[], [0.5], 2, [True]])
def test_bad_exponents_are_refused(q):
    with pytest.raises(ValueError, match="q must be a list of numbers >= 1"):
        PathNorm(q=q)


def numpy_path_norm(state: dict, q: float, layers: int) -> float:
    h = np.ones(state["linears.0.weight"].shape[1])
    for k in range(layers):
        h = np.abs(state[f"linears.{k}.weight"].double().numpy()) ** q @ h + np.abs(
            state[f"linears.{k}.bias"].double().numpy()) ** q
    return float(h.sum() ** (1 / q))


def test_a_run_with_enorm_and_the_path_norm_writes_them(tmp_path):
    result = mlp_run(tmp_path, "optim=sgd", "optim.lr=0.05", "+callbacks=enorm", "+diagnostics=pathnorm",
                     "diagnostics.pathnorm.per_epoch=true")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    for q in QS:
        assert metrics[f"pathnorm/l{q}"] == pytest.approx(numpy_path_norm(state, q, 4), rel=1e-9)
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["pathnorm/l2"].notna()) == [True, True]
    assert history["pathnorm/l2"].iloc[-1] == pytest.approx(metrics["pathnorm/l2"], rel=1e-12)
    # ENorm ran after the last step: the last layer it balances has outgoing norms c times the incoming
    rows, cols = state["linears.1.weight"].norm(dim=1), state["linears.2.weight"].norm(dim=0)
    torch.testing.assert_close(cols / rows, torch.full_like(rows, 1.2), rtol=1e-5, atol=0)
    assert metrics["test/acc"] > 20.0  # chance is 10 %


def test_unroll_eval_measures_the_path_norm_of_a_finished_run(tmp_path, capsys):
    """A run trained without the diagnostic is measured afterwards, from the weights it reported."""
    from unroll_cli.reevaluate import main as eval_main

    assert mlp_run(tmp_path, "optim=sgd", "optim.lr=0.05").returncode == 0
    run_dir = tmp_path / "run"
    assert eval_main([str(run_dir), "+diagnostics=pathnorm", f"hydra.run.dir={tmp_path / 'eval'}"]) == 0, \
        capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())["metrics"]
    # the run monitors test/acc (no validation split): it reports its last weights
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    for q in QS:
        assert metrics[f"pathnorm/l{q}"] == pytest.approx(numpy_path_norm(state, q, 4), rel=1e-9)
