"""``+callbacks=enorm``: Equi-normalization (Stock, Graham, Gribonval & Jégou, ICLR 2019).

After every ``every`` optimizer steps, one cycle over the model's declared hidden layers
(:mod:`unroll_cli.models.rescaling`), from the input on, each with the norms as they are then: unit
``i`` between ``W_{k-1}`` (its row, the incoming weights) and ``W_k`` (its column, the outgoing ones)
is scaled by ``d_i = sqrt(||col_i(W_k)|| / (c ||row_i(W_{k-1})||))``, rows times ``d``, columns over
``d``. Each step minimises ``sum_k c^{-2k} ||W_k||_F^2`` exactly over that layer's scalings (the
weights only, biases excluded), so the cost never increases over a cycle; ``c = 1`` balances the
layers' norms, ``c > 1`` moves weight towards the deeper layers. As in the authors' code
(facebookresearch/enorm ``ENorm._step_fc``): the units feeding the output layer are not balanced
(the output layer never changes), and SGD's momentum buffers are scaled inversely to their
parameters (the gradient of a weight scaled by ``d`` is scaled by ``1 / d``), which Adam's moments
could not be. Two differences by default, each an option: each layer's norms are read after the
previous layer's step (``order: sequential``, a Gauss-Seidel sweep with the guarantee above); the
authors' loop reads every layer's incoming norms before the previous layer's step changes them, so
that all the factors of a cycle come from the weights as the cycle found them (``order:
simultaneous``, a Jacobi sweep without the guarantee); and the biases are scaled with their units
(``rescale_bias: true``), which keeps the network's function exact; ``rescale_bias: false`` is the
authors' choice, the weights alone (biases and batch normalisations left alone, a model with batch
normalisation between its layers accepted), and changes the function of a network with either. ``order: simultaneous
rescale_bias: false`` is one ``ENorm(..., 'linear', c).step()`` of the authors' code on a bias-free
fully connected network (their FC path leaves the momentum buffers alone; their FC command has no
momentum). A rescaling keeps the model's output only (an unrolled model's earlier estimates are
scaled with their units): a trainer that also fits the model truncated to its first layers
(``trains_truncated``, ``trainer=layerwise``) is refused.
"""
from __future__ import annotations

from numbers import Real

import torch
from hydra.utils import get_class

from unroll_cli.errors import ConfigError
from unroll_cli.models.rescaling import HiddenUnits, along, rescaling_pairs, scale_units, unit_norms
from unroll_cli.train.callbacks import Callback


ORDERS = ("sequential", "simultaneous")


def factors(units: HiddenUnits, c: float) -> torch.Tensor:
    """The ENorm factors ``d`` of a layer of hidden units from its weights now (1 for a unit with a zero
    row or column)."""
    incoming, outgoing = unit_norms(units.incoming), unit_norms(units.outgoing)
    alive = (incoming > 0) & (outgoing > 0)
    return torch.where(alive, outgoing / (c * incoming).clamp_min(torch.finfo(torch.float64).tiny), 1.0).sqrt()


def balance(units: HiddenUnits, c: float, biases: bool = True, optimizer: torch.optim.Optimizer | None = None,
            d: torch.Tensor | None = None) -> None:
    """One ENorm step on a layer of hidden units, in place, by ``d`` (default: its factors now)."""
    d = factors(units, c) if d is None else d
    scale_units(units, d, biases)
    if optimizer is None:
        return
    for tensors, factor in ((units.incoming + (units.biases if biases else ()), 1 / d), (units.outgoing, d)):
        for tensor, axis in tensors:
            buffer = optimizer.state.get(tensor, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.mul_(along(factor, buffer, axis))


def enorm_cycle(pairs: list[HiddenUnits], c: float, biases: bool = True,
                optimizer: torch.optim.Optimizer | None = None, order: str = "sequential") -> None:
    """One cycle of :func:`balance` over ``pairs`` in order from the input, each layer's factors from the
    weights the previous step left (``sequential``) or all from the weights before the cycle
    (``simultaneous``, the authors' code)."""
    ds = [factors(units, c) for units in pairs] if order == "simultaneous" else [None] * len(pairs)
    for units, d in zip(pairs, ds):
        balance(units, c, biases, optimizer, d)


class ENorm(Callback):
    def __init__(self, c: float = 1.2, every: int = 1, rescale_bias: bool = True, order: str = "sequential"):
        if isinstance(c, bool) or not isinstance(c, Real) or not c > 0:
            raise ValueError(f"c must be a number > 0, got {c!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if not isinstance(rescale_bias, bool):
            raise ValueError(f"rescale_bias must be true or false, got {rescale_bias!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be {' or '.join(ORDERS)}, got {order!r}")
        self.c, self.every, self.rescale_bias, self.order = float(c), every, rescale_bias, order
        self.pairs: list[HiddenUnits] = []

    def balanced(self, model: torch.nn.Module) -> list[HiddenUnits]:
        """The declared hidden layers but the last (whose units feed the output layer); with
        ``rescale_bias: false`` (the authors' mode) also those whose scaling changes the function (batch
        normalisation between the layers: the weights alone are balanced, as their code)."""
        return rescaling_pairs(model, exact=self.rescale_bias)[:-1]

    def check(self, model, task, cfg) -> None:
        target = cfg.optim._target_
        if target != "torch.optim.SGD":
            raise ConfigError(f"ENorm rescales the weights and SGD's momentum buffers with them; optim._target_="
                              f"{target} keeps a state that is not scale-covariant: use optim=sgd")
        if getattr(get_class(cfg.trainer._target_), "trains_truncated", False):
            raise ConfigError(f"trainer._target_={cfg.trainer._target_} fits the model truncated to its first layers, "
                              "whose last estimates a rescaling of the hidden units changes (it keeps only the full "
                              "model's output): use trainer=default")
        if not self.balanced(model):
            raise ConfigError(f"{type(model).__name__} has one hidden layer, whose units feed the output layer and "
                              "are not balanced: ENorm would do nothing (give the model two hidden layers or more)")

    def on_fit_start(self, trainer) -> None:
        self.pairs = self.balanced(trainer.model)

    def after_step(self, trainer, step: int) -> None:
        if step % self.every == 0:
            enorm_cycle(self.pairs, self.c, self.rescale_bias, trainer.optimizer, self.order)
