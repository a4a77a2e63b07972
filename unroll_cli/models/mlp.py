"""A fully connected ReLU network for image classification (``model=mlp``): the flattened image
through ``depth`` hidden layers of ``width`` units (or one width per layer) (``Linear``, optional ``BatchNorm1d``, ``ReLU``)
and a linear output layer, ``log_softmax`` of its logits.

Its purpose is the rescaling symmetry of ReLU networks: ``ReLU(d z) = d ReLU(z)`` for ``d > 0``, so
scaling the incoming weights and the bias of a hidden unit by ``d`` and its outgoing weights by
``1 / d`` leaves the function unchanged. The model declares that structure
(:meth:`MLP.rescaling_pairs`, used by :mod:`unroll_cli.models.rescaling` and ENorm) and its affine
layers (:meth:`MLP.feedforward_layers`, used by the path-norm). The architecture and initialisation
follow the fully connected net of Stock et al., "Equi-normalization of Neural Networks" (ICLR 2019,
facebookresearch/enorm ``models/fully_connected.py``): Kaiming-normal weights, zero biases.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import MISSING, ListConfig
from torch import Tensor, nn

from unroll_cli.models.arguments import check_bool, check_int
from unroll_cli.models.feedforward import Affine, FeedForward, fold_batch_norm
from unroll_cli.models.rescaling import HiddenUnits
from unroll_cli.schema import constrained, register_schema


def widths_ok(value: Any) -> bool:
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)


@register_schema("model", "mlp")
class MLPModelConfig:
    """A fully connected ReLU classifier of the flattened image."""

    _target_: str = MISSING
    name: str = MISSING
    task: str = "classification"
    depth: int = constrained(2, "an integer >= 0 (hidden layers)", lambda v: v >= 0)
    # one width for every hidden layer, or a list of model.depth widths (LeNet-300-100: [300, 100])
    width: Any = constrained(256, "an integer >= 1, or a list of integers >= 1 (one per hidden layer)", widths_ok)
    bias: bool = True
    batch_norm: bool = False


class MLP(nn.Module):
    """``log_softmax(W_L ReLU(BN(W_{L-1} ... ReLU(BN(W_0 x + b_0)) ...) + b_L))`` on flattened images.

    ``unfoldings`` is 0 (a feed-forward net), the classification task's per-unfolding table has one row.
    """

    unfoldings = 0

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, depth: int = 2,
                 width: int | Sequence[int] = 256, bias: bool = True, batch_norm: bool = False,
                 arch: str | None = None):
        super().__init__()  # arch: the convolutional families' architecture, which a flat net ignores
        self.depth = check_int("depth", depth, 0)
        if isinstance(width, Sequence):
            if len(width) != self.depth:
                raise ValueError(f"model.width={list(width)} gives {len(width)} widths for model.depth={self.depth} "
                                 "hidden layers: one per layer")
            self.widths = [check_int("width", w, 1) for w in width]
        else:
            self.widths = [check_int("width", width, 1)] * self.depth
        self.bias, self.batch_norm = check_bool("bias", bias), check_bool("batch_norm", batch_norm)
        self.in_features = check_int("in_channels", in_channels, 1) * check_int("image_size", image_size, 1) ** 2
        sizes = [self.in_features, *self.widths, check_int("num_classes", num_classes, 1)]
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=self.bias) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(w) for w in (self.widths if batch_norm else []))
        for linear in self.linears:
            nn.init.kaiming_normal_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def logits(self, x: Tensor) -> Tensor:
        """The output layer's values (batch, classes) of images (batch, C, H, W) or flat rows."""
        h = x.flatten(1)
        if h.shape[1] != self.in_features:
            raise ValueError(f"x must hold {self.in_features} values per sample, got {tuple(x.shape)}")
        for k, linear in enumerate(self.linears[:-1]):
            h = linear(h)
            h = torch.relu(self.norms[k](h) if self.batch_norm else h)
        return self.linears[-1](h)

    def forward(self, x: Tensor, unfoldings: int | None = None) -> Tensor:
        """Log-probabilities (batch, classes); ``unfoldings`` may only be 0 (or None)."""
        if unfoldings not in (None, 0):
            raise ValueError(f"model=mlp has no unfoldings: unfoldings must be 0, got {unfoldings!r}")
        return F.log_softmax(self.logits(x), dim=1)

    def rescaling_pairs(self) -> list[HiddenUnits]:
        """Each hidden layer's units: the rows of the linear map into it (and its bias) and the columns
        of the one out of it. With batch normalisation between the layers a unit's scaling is not
        function-preserving (the normalisation undoes the incoming one): the units say so (``breaks``),
        and only ENorm's authors' mode balances them (the weights alone, as their code)."""
        breaks = ("model.batch_norm=true: batch normalisation after a layer undoes the scaling of its incoming "
                  "weights") if self.batch_norm else None
        return [HiddenUnits(incoming=((inner.weight, 0),), outgoing=((outer.weight, 1),),
                            biases=() if inner.bias is None else ((inner.bias, 0),), breaks=breaks)
                for inner, outer in zip(self.linears[:-1], self.linears[1:])]

    def feedforward_layers(self) -> FeedForward:
        """The flattened image through the linear maps, a ReLU between consecutive ones (detached); an
        eval-mode batch normalisation ``a z + c`` is folded into the map before it."""
        layers = []
        for k, linear in enumerate(self.linears):
            weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
            if self.batch_norm and k < self.depth:
                weight, bias = fold_batch_norm(weight, bias, self.norms[k])
            layers.append(Affine(weight, bias))
        return FeedForward((self.in_features,), tuple(layers))
