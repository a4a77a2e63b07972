"""Path-norms of a feed-forward ReLU network (``+diagnostics=pathnorm``) and its path-lifting.

A path runs from an input neuron, or from the bias of a hidden or output neuron (a partial path),
through one neuron per later layer to an output; its coordinate of the path-lifting ``Phi(theta)`` is
the product of the weights along it (times the bias it starts at). ``Phi`` is invariant under the
rescalings of :mod:`unroll_cli.models.rescaling`, and ``f(x)_o = <a_o(theta, x), Phi_o(theta)>`` with
``a`` the path's input coordinate (1 for a partial path) times the 0/1 activations of the hidden
neurons on it (Stock & Gribonval, Constr. Approx. 2023). The L^q path-norm ``||Phi(theta)||_q`` is
one forward pass of the network with every weight and bias replaced by ``|.|^q`` on an all-ones
input, the sum of its outputs to the power ``1/q`` (Gonon, Brisebarre, Riccietti & Gribonval, ICLR
2024, Theorem A.1, as agonon/pathnorm-pytorch ``compute_path_norm`` computes it); an eval-mode batch
normalisation is an affine map, folded into the linear map before it first.

Convolutions are linear maps whose edges are the kernel's taps at every output position (zero padding
adds no edge). Pooling neurons, as the toolkit: a max-pooling neuron's paths go through every input
of its window, each edge of weight 1, so the pass replaces it by an all-ones depthwise convolution of
the pool's kernel and stride; an average pooling is the linear map of weights ``1 / kernel^2``, which
enter the pass as every weight does, at the power ``q`` (the toolkit's ``(1 / divisor) ** exponent``:
``Phi``'s coordinate is the product of the path's weights, ``1 / kernel^2`` among them). That is the same ``Phi`` as in
``f(x) = <a(theta, x), Phi(theta)>``: there, ``a`` keeps of a max-pooling neuron's paths those through
the input its window selects, so the path-norm and the function's lifting share one convention.

A model declares its layers with ``feedforward_layers()`` (:mod:`unroll_cli.models.feedforward`: the
affine maps, a ReLU after every one but the last, the poolings; ``model=mlp``, ``model=cnn``). Metrics
``pathnorm/l1``, ``pathnorm/l2``, ``pathnorm/l4`` (``q``) in float64; :func:`path_lifting` and
:func:`path_activations` enumerate every path of a fully connected network, for small ones (the tests).
"""
from __future__ import annotations

import itertools
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

from unroll_cli.errors import ConfigError
from unroll_cli.evaluate.diagnostics import Diagnostic
from unroll_cli.models.feedforward import Affine, FeedForward, Pool


def float64_layers(net: FeedForward) -> list[tuple[Tensor, Tensor]]:
    """The affine maps of a fully connected network in float64, a missing bias as zeros."""
    if any(not isinstance(layer, Affine) or layer.weight.dim() != 2 for layer in net.layers):
        raise ValueError("the explicit path-lifting takes fully connected networks (linear maps only)")
    return [(layer.weight.detach().double(), torch.zeros(layer.weight.shape[0], dtype=torch.float64,
                                                          device=layer.weight.device)
             if layer.bias is None else layer.bias.detach().double()) for layer in net.layers]


def lifted(layer: Affine | Pool, h: Tensor, q: float) -> Tensor:
    """One layer of the path-norm's pass on ``h`` (batch, ...) >= 0, float64: ``|weights|^q``,
    ``|bias|^q``; a pooling as the depthwise convolution of its edges' weights (1 for the maximum,
    ``kernel^-2`` for the mean) to the power ``q``."""
    if isinstance(layer, Pool):
        value = (1.0 / layer.kernel ** 2) ** q if layer.average else 1.0
        kernel = torch.full((h.shape[1], 1, layer.kernel, layer.kernel), value, dtype=h.dtype, device=h.device)
        return F.conv2d(h, kernel, None, layer.stride, layer.padding, groups=h.shape[1])
    weight = layer.weight.detach().to(h).abs().pow(q)
    bias = None if layer.bias is None else layer.bias.detach().to(h).abs().pow(q)
    if weight.dim() == 2:
        return F.linear(h.flatten(1), weight, bias)
    return F.conv2d(h, weight, bias, layer.stride, layer.padding)


def path_norm(net: FeedForward, q: float) -> float:
    """``||Phi(theta)||_q`` in one forward pass of :func:`lifted` layers on ones (the ReLUs are the
    identity there: every value is >= 0)."""
    first = next(layer for layer in net.layers if isinstance(layer, Affine))
    h = torch.ones((1, *net.input_shape), dtype=torch.float64, device=first.weight.device)
    for layer in net.layers:
        h = lifted(layer, h, q)
    return h.sum().pow(1.0 / q).item()


def paths(sizes: list[int]):
    """Every path as (start layer s, neurons v_s..v_L): s = 0 a full path from input neuron v_0,
    s >= 1 a partial one from the bias of neuron v_s of layer s; grouped by output, in a fixed order."""
    for o in range(sizes[-1]):
        for s in range(len(sizes) - 1):
            for inner in itertools.product(*(range(n) for n in sizes[s:-1])):
                yield s, (*inner, o)
        yield len(sizes) - 1, (o,)  # the output's own bias


def path_lifting(net: FeedForward) -> Tensor:
    """``Phi(theta)``, shape (outputs, paths per output): weights along each path times its start
    (1 at an input neuron, the bias of the neuron it starts at)."""
    layers = float64_layers(net)
    sizes = [layers[0][0].shape[1], *(W.shape[0] for W, _ in layers)]
    values = []
    for s, v in paths(sizes):
        value = torch.ones((), dtype=torch.float64) if s == 0 else layers[s - 1][1][v[0]]
        for k in range(s, len(layers)):
            value = value * layers[k][0][v[k - s + 1], v[k - s]]
        values.append(value)
    return torch.stack(values).reshape(sizes[-1], -1)


def path_activations(net: FeedForward, x: Tensor) -> Tensor:
    """``a(theta, x)`` of one input ``x`` (flat), in the order of :func:`path_lifting`: the path's input
    coordinate (1 for a partial path) times the activations (pre-activation > 0) of its hidden neurons."""
    layers = float64_layers(net)
    sizes = [layers[0][0].shape[1], *(W.shape[0] for W, _ in layers)]
    active, h = [None], x.double()
    for W, b in layers[:-1]:
        z = W @ h + b
        active.append((z > 0).double())
        h = torch.relu(z)
    values = []
    for s, v in paths(sizes):
        value = x.double()[v[0]] if s == 0 else torch.ones((), dtype=torch.float64)
        for j in range(max(s, 1), len(sizes) - 1):
            value = value * active[j][v[j - s]]
        values.append(value)
    return torch.stack(values).reshape(sizes[-1], -1)


class PathNorm(Diagnostic):
    def __init__(self, q=(1, 2, 4), per_epoch: bool = False):
        super().__init__(per_epoch)
        q = list(q) if not isinstance(q, (str, Real)) else q
        if not isinstance(q, list) or not q or any(isinstance(v, bool) or not isinstance(v, Real) or not v >= 1
                                                   for v in q):
            raise ValueError(f"q must be a list of numbers >= 1, got {q!r}")
        self.q = [float(v) for v in q]

    def refuse(self, model) -> str | None:
        """Why the model has no path-norm: it declares no layers, or its declaration refuses (saying why)."""
        declare = getattr(model, "feedforward_layers", None)
        if not callable(declare):
            return ("it declares no feed-forward layers (feedforward_layers()); the one-pass path-norm needs every "
                    "edge's |weight| once, which an unrolled model (T > 0: weights shared across layers, "
                    "subtractions) does not give")
        try:
            declare()
        except ConfigError as error:
            return str(error)
        return None

    def measure(self, model) -> dict[str, float]:
        net = model.feedforward_layers()
        return {f"l{q:g}": path_norm(net, q) for q in self.q}
