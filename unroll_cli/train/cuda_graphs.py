"""The training loss's forward and backward replayed as CUDA graphs (``trainer.cuda_graphs``).

On a GPU the LISTA family's layers are small GEMMs and elementwise kernels, and an eager step
spends its time launching them: LISTA-CPSS (250x500, 16 layers, batch 64) took 11 ms per step on an
H100, of which the GPU was busy for about 1. ``torch.cuda.make_graphed_callables`` records the
loss's forward and backward once per depth and batch shape and replays them (1.3 ms per step);
the optimizer step, the data and the validation stay eager. The model must not synchronise with
the host inside its forward (none of the project's models does on a GPU).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


class _Loss(nn.Module):
    """The task's training loss of ``model`` at ``depth``, as a module (so its parameters are known)."""

    def __init__(self, model: nn.Module, loss: Callable, depth: int | None):
        super().__init__()
        self.model, self.loss, self.depth = model, loss, depth

    def forward(self, *batch: Tensor) -> Tensor:
        return self.loss(self.model(batch[0], self.depth), batch, self.model)


class GraphedLoss:
    """``loss(batch, depth)``: the training loss with autograd, from graphs captured on first use."""

    def __init__(self, model: nn.Module, loss: Callable):
        self.model, self.loss = model, loss
        self.graphs: dict[tuple, Callable] = {}

    def __call__(self, batch: tuple[Tensor, ...], depth: int | None) -> Tensor:
        key = (depth, *((t.shape, t.dtype) for t in batch))
        if key not in self.graphs:
            # layers beyond ``depth`` (the stage-wise schedule) take no part: their gradients stay None
            step = _Loss(self.model, self.loss, depth)
            self.graphs[key] = torch.cuda.make_graphed_callables(step, tuple(batch), allow_unused_input=True)
        return self.graphs[key](*batch)
