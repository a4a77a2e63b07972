"""Rescaling symmetries of ReLU networks, as models declare them.

``ReLU(d z) = d ReLU(z)`` for ``d > 0``: scaling a hidden unit's incoming weights and bias by ``d``
and its outgoing weights by ``1 / d`` leaves the network's function unchanged (Neyshabur et al. 2015;
Stock et al., ICLR 2019). A model that has this symmetry declares it with ``rescaling_pairs()``: its
consecutive (incoming, outgoing) parameter groups, one :class:`HiddenUnits` per layer of hidden
units, each parameter with the axis that indexes the units; nothing here knows a model family. A
model without the declaration is refused by name. A model whose layers break the symmetry says why
in its units (``breaks``: batch normalisation between them undoes the incoming scaling); they are
refused where the function must be kept, and balanced as weights alone by ENorm's authors' mode
(``rescale_bias: false``); a model with no such pairs at all raises
:class:`~unroll_cli.errors.ConfigError` itself, saying why.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unroll_cli.errors import ConfigError

#: a parameter with the axis along which it indexes the hidden units
Slice = tuple[Tensor, int]


@dataclass(frozen=True)
class HiddenUnits:
    """One layer of hidden units: scaling unit ``i`` by ``d_i`` multiplies the ``incoming`` weights and the
    ``biases`` along their axis by ``d`` and the ``outgoing`` weights along theirs by ``1 / d``."""

    incoming: tuple[Slice, ...]
    outgoing: tuple[Slice, ...]
    biases: tuple[Slice, ...] = ()
    breaks: str | None = None  # why scaling these units changes the network's function (None: it does not)

    @property
    def size(self) -> int:
        tensor, axis = self.incoming[0]
        return tensor.shape[axis]


def rescaling_pairs(model: nn.Module, exact: bool = True) -> list[HiddenUnits]:
    """The model's declared hidden layers, in order from the input; refused for a model without them, and,
    when the scalings must keep the function (``exact``), for one whose layers say they break it."""
    declare = getattr(model, "rescaling_pairs", None)
    if not callable(declare):
        raise ConfigError(f"{type(model).__name__} declares no rescaling symmetry (rescaling_pairs()): "
                          "only a model that declares its hidden units can be rescaled")
    pairs = declare()
    broken = next((units.breaks for units in pairs if units.breaks), None)
    if exact and broken:
        raise ConfigError(f"{broken}, so rescaling a unit does not preserve the function")
    return pairs


def along(d: Tensor, tensor: Tensor, axis: int) -> Tensor:
    """``d`` shaped to broadcast along ``axis`` of ``tensor``, in its dtype."""
    shape = [1] * tensor.dim()
    shape[axis] = -1
    return d.to(tensor.dtype).view(shape)


def unit_norms(slices: tuple[Slice, ...]) -> Tensor:
    """The 2-norm of each unit's entries over all the tensors (float64)."""
    squares = [tensor.detach().double().movedim(axis, 0).flatten(1).square().sum(1) for tensor, axis in slices]
    return torch.stack(squares).sum(0).sqrt()


def scale_units(units: HiddenUnits, d: Tensor, biases: bool = True) -> None:
    """Unit ``i`` of ``units`` scaled by ``d_i > 0`` in place (its biases too, unless ``biases=False``,
    which no longer preserves the function of a network with biases)."""
    if d.shape != (units.size,) or not bool((d > 0).all()):
        raise ValueError(f"a rescaling needs {units.size} positive factors, got shape {tuple(d.shape)}")
    with torch.no_grad():
        for tensor, axis in units.incoming + (units.biases if biases else ()):
            tensor.mul_(along(d, tensor, axis))
        for tensor, axis in units.outgoing:
            tensor.div_(along(d, tensor, axis))


def rescale(model: nn.Module, scales: list[Tensor]) -> None:
    """Apply positive per-unit scalings, one vector per declared hidden layer, exactly (in place)."""
    pairs = rescaling_pairs(model)
    if len(scales) != len(pairs):
        raise ValueError(f"{type(model).__name__} has {len(pairs)} hidden layers, got {len(scales)} scalings")
    for units, d in zip(pairs, scales):
        scale_units(units, d)
