"""Feed-forward ReLU networks as models declare them (``feedforward_layers()``), for the path-norm.

A declaration is the input's shape and the layers in order: :class:`Affine` maps, a ReLU after every
one but the last, and :class:`Pool` layers where they stand (a max-pooling commutes with the ReLU
before it). Nothing here knows a model family; :mod:`unroll_cli.evaluate.pathnorm` reads it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Affine:
    """``weight`` (out, in): a linear map of the flattened input; (out, in, k, k): a 2-d convolution with
    ``stride`` and zero ``padding``. ``bias`` (out,) or None. Detached tensors."""

    weight: Tensor
    bias: Tensor | None = None
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True)
class Pool:
    """A pooling of each channel over ``kernel`` x ``kernel`` windows (``stride``, ``padding``): the
    maximum, or with ``average`` the mean (``count_include_pad``: every window divides by kernel^2)."""

    kernel: int
    stride: int
    padding: int = 0
    average: bool = False


@dataclass(frozen=True)
class FeedForward:
    """One sample's ``input_shape``, (features,) or (C, H, W), and the ``layers`` from the input on."""

    input_shape: tuple[int, ...]
    layers: tuple[Affine | Pool, ...]


def fold_batch_norm(weight: Tensor, bias: Tensor | None, norm: nn.Module) -> tuple[Tensor, Tensor]:
    """``norm(weight h + bias)``, ``weight`` (out, in), with an eval-mode batch normalisation ``a z + c`` of
    the output units, as one affine map ``(a weight, a bias + c)``, in float64 (unrounded)."""
    scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
    shift = norm.bias.detach().double() - scale * norm.running_mean.double()
    return scale[:, None] * weight.double(), shift if bias is None else scale * bias.double() + shift
