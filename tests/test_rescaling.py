"""model=mlp and the rescaling symmetry it declares (unroll_cli/models/rescaling.py), in float64."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import compose_cfg
from unroll_cli.errors import ConfigError
from unroll_cli.models.mlista import MLISTA, MLLISTA, AllFree
from unroll_cli.models.mlp import MLP
from unroll_cli.models.rescaling import rescale, rescaling_pairs
from unroll_cli.validation import validate


def small_mlp(bias=True, batch_norm=False, depth=3, width=5, seed=0) -> MLP:
    torch.manual_seed(seed)
    model = MLP(in_channels=1, num_classes=3, image_size=2, depth=depth, width=width, bias=bias,
                batch_norm=batch_norm).double()
    with torch.no_grad():  # biases away from their zero start, so that they matter
        for linear in model.linears:
            if linear.bias is not None:
                linear.bias.normal_()
    return model


def random_scales(model, seed=1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.exp(2 * torch.randn(u.size, generator=g, dtype=torch.float64)) for u in rescaling_pairs(model)]


def test_mlp_is_the_stated_network():
    model = small_mlp()
    x = torch.randn(6, 1, 2, 2, dtype=torch.float64)
    h = x.reshape(6, 4)
    for linear in model.linears[:-1]:
        h = torch.clamp(h @ linear.weight.T + linear.bias, min=0)
    logits = h @ model.linears[-1].weight.T + model.linears[-1].bias
    torch.testing.assert_close(model(x), torch.log_softmax(logits, 1), rtol=0, atol=1e-12)
    assert [tuple(lin.weight.shape) for lin in model.linears] == [(5, 4), (5, 5), (5, 5), (3, 5)]
    with pytest.raises(ValueError, match="unfoldings must be 0"):
        model(x, 1)


def test_bias_free_and_batch_norm_options():
    model = MLP(in_channels=3, num_classes=10, image_size=32, depth=14, width=500, bias=False, batch_norm=True)
    assert all(lin.bias is None for lin in model.linears) and len(model.linears) == 15 and len(model.norms) == 14
    assert model.linears[0].in_features == 3072
    assert sum(p.numel() for p in model.parameters()) == 3072 * 500 + 13 * 500 * 500 + 500 * 10 + 14 * 2 * 500


@pytest.mark.parametrize("bias", [True, False])
def test_any_rescaling_keeps_the_function(bias):
    model = small_mlp(bias=bias)
    x = torch.randn(50, 1, 2, 2, dtype=torch.float64)
    before = model.logits(x)
    rescale(model, random_scales(model))
    after = model.logits(x)
    assert (after - before).abs().max() <= 1e-12 * before.abs().max()


def test_a_rescaling_is_the_diagonal_products():
    """W_k -> D_k W_k D_{k-1}^-1 and b_k -> D_k b_k with D_0 = D_L = I, computed here as matrices."""
    model = small_mlp()
    weights = [lin.weight.detach().clone() for lin in model.linears]
    biases = [lin.bias.detach().clone() for lin in model.linears]
    scales = random_scales(model)
    rescale(model, scales)
    D = [torch.eye(4, dtype=torch.float64), *[torch.diag(d) for d in scales], torch.eye(3, dtype=torch.float64)]
    for k, linear in enumerate(model.linears):
        torch.testing.assert_close(linear.weight.detach(), D[k + 1] @ weights[k] @ torch.linalg.inv(D[k]),
                                   rtol=1e-13, atol=0)
        torch.testing.assert_close(linear.bias.detach(), D[k + 1] @ biases[k], rtol=1e-13, atol=0)


def test_scales_must_be_positive_and_one_per_unit():
    model = small_mlp()
    scales = random_scales(model)
    with pytest.raises(ValueError, match="positive"):
        rescale(model, [scales[0], -scales[1], scales[2]])
    with pytest.raises(ValueError, match="3 hidden layers"):
        rescale(model, scales[:2])


def test_a_model_without_the_declaration_is_refused_by_name():
    with pytest.raises(ConfigError, match="Linear declares no rescaling symmetry"):
        rescaling_pairs(nn.Linear(3, 2))


@pytest.mark.parametrize("family, arch", [(MLISTA, "mnist"), (MLISTA, "cifar10"), (MLLISTA, "mnist"),
                                          (AllFree, "mnist")])
def test_the_cnn_keeps_its_function_under_a_rescaling_of_its_channels(family, arch):
    """model=cnn (the multi-layer family with unfoldings=0): channels of the convolutions (and CIFAR's
    max-pooled plain layers) scaled, the next kernel's input channels and the classifier's columns unscaled."""
    torch.manual_seed(0)
    channels = 3 if arch == "cifar10" else 1
    model = family(arch=arch, in_channels=channels, unfoldings=0).double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "b" in name.split(".")[0]:  # the biases b, tail_b
                parameter.normal_(0, 0.1)
    x = torch.rand(3, channels, 32 if arch == "cifar10" else 28, 32 if arch == "cifar10" else 28,
                   dtype=torch.float64)
    before = model(x)
    rescale(model, random_scales(model))
    after = model(x)
    assert (after - before).abs().max() <= 1e-12 * before.abs().max()
    assert len(rescaling_pairs(model)) == (6 if arch == "cifar10" else 3)


def test_an_unfolded_model_is_refused_saying_why():
    with pytest.raises(ConfigError, match="model.unfoldings=2: an unfolding applies W_i and W_i\\^T"):
        rescaling_pairs(MLISTA(unfoldings=2))


def test_batch_norm_between_layers_is_refused_saying_why():
    with pytest.raises(ConfigError, match="model.batch_norm=true.*does not preserve the function"):
        rescaling_pairs(small_mlp(batch_norm=True))


def test_a_width_per_hidden_layer_builds_lenet_300_100_and_a_wrong_count_is_refused():
    """model.width=[300, 100]: LeNet-300-100's maps 784 -> 300 -> 100 -> 10; rescaling still exact."""
    model = MLP(in_channels=1, num_classes=10, image_size=28, depth=2, width=[300, 100]).double()
    assert [tuple(linear.weight.shape) for linear in model.linears] == [(300, 784), (100, 300), (10, 100)]
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    before = model.logits(x)
    rescale(model, [torch.rand(300, dtype=torch.float64) + 0.5, torch.rand(100, dtype=torch.float64) + 0.5])
    assert (model.logits(x) - before).abs().max() <= 1e-12 * before.abs().max()
    with pytest.raises(ValueError, match=r"model.width=\[300, 100\] gives 2 widths for model.depth=3"):
        MLP(depth=3, width=[300, 100])
    cfg = compose_cfg(["data=mnist", "model=mlp", "model.width=[300,0]"])
    with pytest.raises(ConfigError, match=r"model.width=\[300, 0\] is not allowed"):
        validate(cfg)
