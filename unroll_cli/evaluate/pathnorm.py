"""Path-norms of a feed-forward ReLU network (``+diagnostics=pathnorm``) and its path-lifting.

A path runs from an input neuron, or from the bias of a hidden or output neuron (a partial path),
through one neuron per later layer to an output; its coordinate of the path-lifting ``Phi(theta)`` is
the product of the weights along it (times the bias it starts at). ``Phi`` is invariant under the
rescalings of :mod:`unroll_cli.models.rescaling`, and ``f(x)_o = <a_o(theta, x), Phi_o(theta)>`` with
``a`` the path's input coordinate (1 for a partial path) times the 0/1 activations of the hidden
neurons on it (Stock & Gribonval, Constr. Approx. 2023). The L^q path-norm ``||Phi(theta)||_q`` is
one forward pass of the network with every weight and bias replaced by ``|.|^q`` on an all-ones
input, the sum of its outputs to the power ``1/q`` (Gonon, Brisebarre, Riccietti & Gribonval, ICLR
2024, Theorem A.1, as agonon/pathnorm-pytorch computes it); an eval-mode batch normalisation is an
affine map, folded into the linear map before it first.

A model declares its layers with ``feedforward_layers()``: the affine maps ``(weight (out, in), bias
or None)`` with a ReLU between consecutive ones (``model=mlp``). Metrics ``pathnorm/l1``,
``pathnorm/l2``, ``pathnorm/l4`` (``q``) in float64; :func:`path_lifting` and
:func:`path_activations` enumerate every path, for small networks (the tests).
"""
from __future__ import annotations

import itertools
from numbers import Real

import torch
from torch import Tensor

from unroll_cli.evaluate.diagnostics import Diagnostic

Layers = list[tuple[Tensor, Tensor | None]]


def float64_layers(layers: Layers) -> list[tuple[Tensor, Tensor]]:
    """The layers in float64, a missing bias as zeros."""
    return [(W.detach().double(), torch.zeros(W.shape[0], dtype=torch.float64, device=W.device) if b is None
             else b.detach().double()) for W, b in layers]


def path_norm(layers: Layers, q: float) -> float:
    """``||Phi(theta)||_q`` in one forward pass of ``|W|^q``, ``|b|^q`` on ones (the ReLUs are the
    identity there: every value is >= 0)."""
    layers = float64_layers(layers)
    h = torch.ones(layers[0][0].shape[1], dtype=torch.float64, device=layers[0][0].device)
    for W, b in layers:
        h = W.abs().pow(q) @ h + b.abs().pow(q)
    return h.sum().pow(1.0 / q).item()


def paths(sizes: list[int]):
    """Every path as (start layer s, neurons v_s..v_L): s = 0 a full path from input neuron v_0,
    s >= 1 a partial one from the bias of neuron v_s of layer s; grouped by output, in a fixed order."""
    for o in range(sizes[-1]):
        for s in range(len(sizes) - 1):
            for inner in itertools.product(*(range(n) for n in sizes[s:-1])):
                yield s, (*inner, o)
        yield len(sizes) - 1, (o,)  # the output's own bias


def path_lifting(layers: Layers) -> Tensor:
    """``Phi(theta)``, shape (outputs, paths per output): weights along each path times its start
    (1 at an input neuron, the bias of the neuron it starts at)."""
    layers = float64_layers(layers)
    sizes = [layers[0][0].shape[1], *(W.shape[0] for W, _ in layers)]
    values = []
    for s, v in paths(sizes):
        value = torch.ones((), dtype=torch.float64) if s == 0 else layers[s - 1][1][v[0]]
        for k in range(s, len(layers)):
            value = value * layers[k][0][v[k - s + 1], v[k - s]]
        values.append(value)
    return torch.stack(values).reshape(sizes[-1], -1)


def path_activations(layers: Layers, x: Tensor) -> Tensor:
    """``a(theta, x)`` of one input ``x`` (flat), in the order of :func:`path_lifting`: the path's input
    coordinate (1 for a partial path) times the activations (pre-activation > 0) of its hidden neurons."""
    layers = float64_layers(layers)
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
        if callable(getattr(model, "feedforward_layers", None)):
            return None
        return ("it declares no feed-forward layers (feedforward_layers()); the one-pass path-norm needs every "
                "edge's |weight| once, which an unrolled model (T > 0: weights shared across layers, "
                "subtractions) does not give")

    def measure(self, model) -> dict[str, float]:
        layers = model.feedforward_layers()
        return {f"l{q:g}": path_norm(layers, q) for q in self.q}
