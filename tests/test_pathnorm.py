"""+diagnostics=pathnorm (unroll_cli/evaluate/pathnorm.py): the one-pass path-norm against the explicit
path-lifting of a small MLP with biases, and against every path of small convolutional nets with
poolings enumerated one by one, in float64; model=cnn's declaration; runs of model=mlp with ENorm and
the path-norm, and unroll-eval's path-norm of finished mlp and cnn runs."""
from __future__ import annotations

import json
from itertools import product

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import run_cli
from test_classification_run import write_learnable_mnist
from test_enorm import mlp_run
from test_rescaling import random_scales, small_mlp

from unroll_cli.errors import ConfigError
from unroll_cli.evaluate.diagnostics import check_diagnostics
from unroll_cli.evaluate.pathnorm import PathNorm, path_activations, path_lifting, path_norm
from unroll_cli.models.feedforward import Affine, FeedForward, Pool
from unroll_cli.models.mlista import MLISTA, MLLISTA, AllFree
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
        enorm_cycle(ENorm().balanced(model), 1.2)
    for q in QS:
        assert path_norm(model.feedforward_layers(), q) == pytest.approx(before[q], rel=1e-12)


def test_a_model_without_feed_forward_layers_is_refused_saying_why():
    with pytest.raises(ConfigError, match="diagnostics.pathnorm does not apply to model=ml_ista: model.unfoldings=2: "
                                          "an unrolled model .*every edge's \\|weight\\| once"):
        check_diagnostics({"pathnorm": PathNorm()}, MLISTA(unfoldings=2), "ml_ista")
    with pytest.raises(ConfigError, match="model.operator=butterfly: a structured classifier"):
        check_diagnostics({"pathnorm": PathNorm()}, MLISTA(unfoldings=0, operator="butterfly"), "cnn")
    with pytest.raises(ConfigError, match="model=linear: it declares no feed-forward layers"):
        check_diagnostics({"pathnorm": PathNorm()}, nn.Linear(3, 2), "linear")
    check_diagnostics({"pathnorm": PathNorm()}, MLISTA(unfoldings=0), "cnn")  # the CNN pass has one


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


def measured_afterwards(tmp_path, capsys) -> tuple[dict, dict]:
    """``unroll-eval RUN +diagnostics=pathnorm`` of the run in tmp_path/run: its metrics, and the model's
    tensors in the run's last checkpoint."""
    from unroll_cli.reevaluate import main as eval_main

    run_dir = tmp_path / "run"
    assert eval_main([str(run_dir), "+diagnostics=pathnorm", f"hydra.run.dir={tmp_path / 'eval'}"]) == 0, \
        capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())["metrics"]
    return metrics, torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]


def test_unroll_eval_measures_the_path_norm_of_a_finished_run(tmp_path, capsys):
    """A run trained without the diagnostic is measured afterwards, from the weights it reported."""
    assert mlp_run(tmp_path, "optim=sgd", "optim.lr=0.05").returncode == 0
    # the run monitors test/acc (no validation split): it reports its last weights
    metrics, state = measured_afterwards(tmp_path, capsys)
    for q in QS:
        assert metrics[f"pathnorm/l{q}"] == pytest.approx(numpy_path_norm(state, q, 4), rel=1e-9)


# -- convolutional networks: every path of the dense DAG, one by one ----------------------------------

def declared_forward(net: FeedForward, x: torch.Tensor) -> torch.Tensor:
    """The declared network's function: its affine maps with a ReLU after each but the last, its pools."""
    last = max(i for i, layer in enumerate(net.layers) if isinstance(layer, Affine))
    h = x
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Pool):
            h = (F.avg_pool2d if layer.average else F.max_pool2d)(h, layer.kernel, layer.stride, layer.padding)
            continue
        if layer.weight.dim() == 2:
            h = F.linear(h.flatten(1), layer.weight, layer.bias)
        else:
            h = F.conv2d(h, layer.weight, layer.bias, layer.stride, layer.padding)
        h = torch.relu(h) if i < last else h
    return h


def dense_dag(net: FeedForward) -> list[dict]:
    """The network as a DAG, built by loops over positions and taps: per layer, each neuron's incoming
    edges (predecessor index, weight) and bias (None for an input or pooling neuron), and its kind."""
    shape = net.input_shape
    layers = [{"kind": "input", "edges": [[] for _ in range(int(np.prod(shape)))],
               "bias": [None] * int(np.prod(shape))}]
    for layer in net.layers:
        if isinstance(layer, Affine) and layer.weight.dim() == 2:
            W = layer.weight.tolist()
            edges = [[(j, W[o][j]) for j in range(len(W[o]))] for o in range(len(W))]
            bias, shape = (layer.bias.tolist() if layer.bias is not None else [0.0] * len(W)), (len(W),)
            layers.append({"kind": "affine", "edges": edges, "bias": bias})
            continue
        C, H, Wd = shape
        k = layer.kernel if isinstance(layer, Pool) else layer.weight.shape[-1]
        s, p = layer.stride, layer.padding
        Ho, Wo = (H + 2 * p - k) // s + 1, (Wd + 2 * p - k) // s + 1
        channels = C if isinstance(layer, Pool) else layer.weight.shape[0]
        edges, bias = [], []
        for o, y, x in product(range(channels), range(Ho), range(Wo)):
            into = []
            for dy, dx in product(range(k), range(k)):
                iy, ix = y * s + dy - p, x * s + dx - p
                if not (0 <= iy < H and 0 <= ix < Wd):
                    continue  # zero padding: no neuron there
                if isinstance(layer, Pool):
                    into.append(((o * H + iy) * Wd + ix, 1 / k ** 2 if layer.average else 1.0))
                else:
                    into.extend(((c * H + iy) * Wd + ix, layer.weight[o, c, dy, dx].item()) for c in range(C))
            edges.append(into)
            bias.append(None if isinstance(layer, Pool) else layer.bias[o].item())
        kind = "affine" if isinstance(layer, Affine) else "avg" if layer.average else "max"
        layers.append({"kind": kind, "edges": edges, "bias": bias})
        shape = (channels, Ho, Wo)
    return layers


def enumerate_paths(dag: list[dict]):
    """Every path to every output, one by one: (output, [(layer, neuron), ...] from its start, the
    product of its weights times the bias it starts at; its start is an input neuron or a bias)."""
    def into(layer: int, v: int):
        if layer == 0:
            yield [(0, v)], 1.0
            return
        if dag[layer]["bias"][v] is not None:
            yield [(layer, v)], dag[layer]["bias"][v]
        for u, w in dag[layer]["edges"][v]:
            for path, value in into(layer - 1, u):
                yield path + [(layer, v)], value * w

    last = len(dag) - 1
    for o in range(len(dag[last]["edges"])):
        for path, value in into(last, o):
            yield o, path, value


def dag_output(dag: list[dict], x: list[float]) -> list[float]:
    """f(x) = <a(theta, x), Phi(theta)> summed path by path: a path counts (times its input value, 1
    from a bias) when every ReLU neuron on it is active and every max-pooling neuron on it takes its
    maximum from the path's previous neuron."""
    values, active, chosen = [list(x)], [None], [None]
    last_affine = max(k for k, layer in enumerate(dag) if layer["kind"] == "affine")
    for k, layer in enumerate(dag[1:], 1):
        inputs = [[values[-1][u] * w for u, w in edges] for edges in layer["edges"]]
        if layer["kind"] == "max":
            chosen.append([edges[int(np.argmax(z))][0] for edges, z in zip(layer["edges"], inputs)])
            out = [max(z) for z in inputs]
        else:
            chosen.append(None)
            out = [sum(z) + (b or 0.0) for z, b in zip(inputs, layer["bias"])]
        relu = layer["kind"] == "affine" and k < last_affine
        active.append([z > 0 for z in out] if relu else None)
        values.append([max(z, 0.0) for z in out] if relu else out)
    f = [0.0] * len(dag[-1]["edges"])
    for o, path, value in enumerate_paths(dag):
        a = x[path[0][1]] if path[0][0] == 0 else 1.0
        for (_, u), (layer, v) in zip(path, path[1:]):
            if chosen[layer] is not None and chosen[layer][v] != u:
                a = 0.0
        for layer, v in path:
            if active[layer] is not None and not active[layer][v]:
                a = 0.0
        f[o] += a * value
    return f


def tiny_conv_net(pool: Pool, seed: int = 0) -> FeedForward:
    """1x6x6 -> conv 3x3 (2 channels, padding 1, bias) -> ReLU -> pool -> conv 2x2 (3 channels, stride 2
    if the pool leaves 4x4 or more) -> ReLU -> linear (4 outputs, bias)."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    side = (6 + 2 * pool.padding - pool.kernel) // pool.stride + 1
    stride = 2 if side >= 4 else 1
    second = (side - 2) // stride + 1
    return FeedForward((1, 6, 6), (Affine(randn(2, 1, 3, 3), randn(2), 1, 1), pool,
                                   Affine(randn(3, 2, 2, 2), randn(3), stride, 0),
                                   Affine(randn(4, 3 * second ** 2), randn(4))))


POOLS = [Pool(2, 2), Pool(3, 2, 1), Pool(2, 2, average=True)]


@pytest.mark.parametrize("pool", POOLS, ids=["max", "max-padded", "average"])
def test_the_one_pass_path_norm_of_a_conv_net_is_the_norm_of_its_enumerated_paths(pool):
    net = tiny_conv_net(pool)
    paths = [value for _, _, value in enumerate_paths(dense_dag(net))]
    assert len(paths) > 1000
    for q in QS:
        expected = sum(abs(v) ** q for v in paths) ** (1 / q)
        assert path_norm(net, q) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("pool", POOLS, ids=["max", "max-padded", "average"])
def test_a_conv_net_is_its_activations_against_the_same_path_lifting(pool):
    """The lifting the path-norm counts (a max-pooling neuron's paths through all its window) is the one
    of f(x) = <a(theta, x), Phi(theta)>, a selecting the window's maximum."""
    net, dag = tiny_conv_net(pool, seed=1), dense_dag(tiny_conv_net(pool, seed=1))
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    expected = declared_forward(net, x)
    for sample, row in zip(x, expected):
        f = torch.tensor(dag_output(dag, sample.flatten().tolist()), dtype=torch.float64)
        assert (f - row).abs().max() <= 1e-12 * row.abs().max()


def cnn(family=MLISTA, arch="cifar10", seed=0):
    """The multi-layer family's CNN pass in float64, biases and steps away from their start."""
    torch.manual_seed(seed)
    model = family(arch=arch, in_channels=3 if arch == "cifar10" else 1, unfoldings=0).double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.split(".")[0] in ("b", "tail_b"):
                parameter.normal_(0, 0.1)
            elif name.split(".")[0] == "c":
                parameter.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("family, arch", [(MLISTA, "mnist"), (MLISTA, "cifar10"), (MLLISTA, "mnist"),
                                          (AllFree, "cifar10")])
def test_the_cnn_declares_the_network_it_computes(family, arch):
    model = cnn(family, arch)
    net = model.feedforward_layers()
    side = 32 if arch == "cifar10" else 28
    assert net.input_shape == (model.in_channels, side, side)
    assert sum(isinstance(layer, Pool) for layer in net.layers) == (2 if arch == "cifar10" else 0)
    x = torch.rand(4, *net.input_shape, dtype=torch.float64)
    expected = model(x)
    got = torch.log_softmax(declared_forward(net, x), 1)
    assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()


@pytest.mark.parametrize("arch", ["mnist", "cifar10"])
def test_the_cnn_path_norm_is_invariant_under_a_rescaling_of_its_channels(arch):
    model = cnn(arch=arch, seed=3)
    before = {q: path_norm(model.feedforward_layers(), q) for q in QS}
    rescale(model, random_scales(model, seed=5))
    for q in QS:
        assert path_norm(model.feedforward_layers(), q) == pytest.approx(before[q], rel=1e-12, abs=0)


def numpy_conv_path_norm(state: dict, q: float) -> float:
    """The MNIST architecture's CNN pass (c_i W_i, strides 2, 2, 1, no padding; Linear(512, 10)) on
    |.|^q of the checkpoint's tensors, each convolution a loop over its output positions in numpy."""
    h = np.ones((1, 28, 28))
    for i, stride in enumerate((2, 2, 1)):
        W = np.abs(state[f"c.{i}"].double().numpy() * state[f"W.{i}"].double().numpy()) ** q
        b = np.abs(state[f"b.{i}"].double().numpy().reshape(-1)) ** q
        m, _, k, _ = W.shape
        side = (h.shape[1] - k) // stride + 1
        out = np.empty((m, side, side))
        for y, x in product(range(side), range(side)):
            window = h[:, y * stride:y * stride + k, x * stride:x * stride + k]
            out[:, y, x] = np.tensordot(W, window, axes=3) + b
        h = out
    W, b = (np.abs(state[f"classifier.{name}"].double().numpy()) ** q for name in ("weight", "bias"))
    return float((W @ h.reshape(-1) + b).sum() ** (1 / q))


def test_unroll_eval_measures_the_path_norm_of_a_finished_cnn_run(tmp_path, capsys):
    write_learnable_mnist(tmp_path / "data/MNIST/raw", np.random.default_rng(0), 100, 50)
    result = run_cli(["model=cnn", "data=mnist", f"data.root={tmp_path / 'data'}", "data.download=false",
                      "data.batch_size=50", "optim=sgd", "optim.lr=0.05", "trainer.max_epochs=1",
                      "trainer.progress=false", "tensorboard=false", f"hydra.run.dir={tmp_path / 'run'}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # the run monitors test/acc (no validation split): it reports its last weights
    metrics, state = measured_afterwards(tmp_path, capsys)
    for q in QS:
        assert metrics[f"pathnorm/l{q}"] == pytest.approx(numpy_conv_path_norm(state, q), rel=1e-9)
