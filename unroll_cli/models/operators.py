"""The linear maps of the unrolled models as dense, butterfly or Monarch matrices (``model.operator``).

* ``dense``: the models' own parameters and fused GEMMs, unchanged.
* ``butterfly``: a :class:`~unroll_cli.models.butterfly.Butterfly` layer, ``log2 p`` sparse factors
  (Dao, Gu, Eichhorn, Rudra & Ré, ICML 2019), ``2 p log2 p`` parameters per ``p x p`` stack.
* ``monarch``: a :class:`~unroll_cli.models.butterfly.Monarch` layer ``P^T L P R`` with ``b`` blocks
  ``b x b`` (Dao et al., ICML 2022), ``2 b^3`` parameters.

A map with a dense initial matrix (LISTA's ``W = I - A^T A / L`` and ``B = A^T / L``, LISTA-CP's
``W^T = A^T / L``) starts as that matrix projected onto the structure (:func:`structured_map`), so
an exactly representable initial matrix (e.g. one built from a Hadamard matrix) starts the
structured model exactly where the dense one starts; a randomly initialised map (the ML-ISTA
classifier) is a fresh layer with the structure's own initialisation (:func:`linear_layer`).

Sizes that are not a power of two (butterfly) or a square (Monarch) are zero-padded, as the layers
pad them: an ``out x in`` butterfly pads its input to ``p = 2**ceil(log2 in)`` and its output to
``nstacks = ceil(out / p)`` stacked ``p x p`` butterflies, each projected on its own (m=250, n=500:
``W`` 500x500 pads to 512x512, ``B`` 500x250 to two 256x256 stacks); a Monarch pads both sides to
``n = b^2``, ``b = ceil(sqrt(max(in, out)))`` (n=500: b=23, n=529).

Compression (``unroll-compress``, :mod:`unroll_cli.compress`): a model that can be compressed declares
``dense_maps()`` (its learned dense maps as ``(out, in)`` matrices, by the name of the layer that
replaces each) and ``structured(operator)`` (the same model with ``operator``, each of those maps a
structured layer at the projection of its trained matrix, built with :func:`structured_copy`).
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import Tensor, nn

from unroll_cli.models.butterfly import Butterfly, Monarch
from unroll_cli.models.butterfly_factorize import butterfly_twiddle, monarch_projection

OPERATORS = ("dense", "butterfly", "monarch")
STRUCTURED = {"butterfly": Butterfly, "monarch": Monarch}


def check_operator(operator) -> str:
    """``operator`` if it is one of :data:`OPERATORS`; ValueError naming ``operator`` otherwise."""
    if operator not in OPERATORS:
        raise ValueError(f"operator must be one of {', '.join(OPERATORS)}, got {operator!r}")
    return operator


def linear_layer(in_features: int, out_features: int, operator: str) -> nn.Module:
    """A fresh ``nn.Linear``-like layer with bias: ``nn.Linear`` (dense, its default initialisation),
    ``Butterfly`` (``init="randn"``, Dao et al. 2019) or ``Monarch`` (nn.Linear-style uniform blocks)."""
    if check_operator(operator) == "dense":
        return nn.Linear(in_features, out_features)
    return STRUCTURED[operator](in_features, out_features, bias=True)


def structured_map(matrix: Tensor, operator: str, bias: Tensor | None = None) -> nn.Module:
    """A butterfly or Monarch layer ``x -> M x`` (rows: ``(batch, in) -> (batch, out)``) whose ``M``
    is ``matrix`` (out, in) projected onto the structure, after zero-padding (module doc); bias-free,
    or with a copy of ``bias`` (out,) (a trained ``nn.Linear``'s, kept as it is).

    Butterfly: the hierarchical SVD factorization of each padded ``p x p`` stack (Le, Zheng,
    Riccietti & Gribonval, ICASSP 2022), exact on butterfly products (the normalised Hadamard, a
    diagonal). Monarch: the exact Frobenius projection (the projection theorem of Dao et al. 2022), exact on
    Monarch matrices (a Kronecker product of two ``b x b`` matrices, a diagonal). Computed in float64
    on the CPU; the layer takes ``matrix``'s dtype and device.
    """
    if check_operator(operator) == "dense":
        raise ValueError("a dense map is the model's own parameter; structured_map builds butterfly or monarch")
    if matrix.dim() != 2 or not matrix.is_floating_point():
        raise ValueError(f"matrix must be a real 2-D tensor (out, in), got shape {tuple(matrix.shape)}")
    out_features, in_features = matrix.shape
    dense = matrix.detach().to("cpu", torch.float64)
    if operator == "butterfly":
        if in_features < 2:
            raise ValueError(f"a butterfly map needs at least 2 inputs, got {in_features}")
        layer = Butterfly(in_features, out_features, bias=bias is not None, init="identity")
        p, stacks = layer.n, layer.nstacks
        padded = dense.new_zeros(stacks * p, p)
        padded[:out_features, :in_features] = dense
        twiddle = torch.stack([butterfly_twiddle(block) for block in padded.reshape(stacks, p, p)])
        factors = {"twiddle": twiddle.unsqueeze(1)}
    else:
        layer = Monarch(in_features, out_features, bias=bias is not None)
        padded = dense.new_zeros(layer.n, layer.n)
        padded[:out_features, :in_features] = dense
        left, right = monarch_projection(padded, layer.nblocks)
        factors = {"left": left, "right": right}
    if bias is not None:
        if bias.shape != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        factors["bias"] = bias.detach()
    layer.to(device=matrix.device, dtype=matrix.dtype)
    with torch.no_grad():
        for name, value in factors.items():
            getattr(layer, name).copy_(value)
    return layer


def structured_copy(model: nn.Module, operator: str, **layers: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with ``operator`` and each attribute named in ``layers`` replaced by
    that layer (the rest, e.g. learned thresholds, copied as trained): a dense model's
    ``structured(operator)`` (module doc)."""
    if check_operator(operator) == "dense":
        raise ValueError("a structured copy needs operator=butterfly or monarch")
    copy = deepcopy(model)
    copy.operator = operator
    for name, layer in layers.items():
        delattr(copy, name)  # a dense parameter or module: nn.Module refuses to overwrite one with the other
        setattr(copy, name, layer)
    return copy
