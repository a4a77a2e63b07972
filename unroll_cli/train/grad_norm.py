"""``+callbacks=grad_norm``: the gradient norm the optimizer used, averaged per epoch or stage.

After every optimizer step the global 2-norm of the trainable parameters' gradients (as the
optimizer saw them: after ``trainer.grad_clip``, and after the layer-wise trainer's gradient decay)
is added to a running sum; every validation writes the mean since the last one as
``train/grad_norm`` to ``history.csv`` (and TensorBoard) and starts a new sum. The sum is the
callback's state, so a run resumed from a checkpoint inside a stage reports the same means.
"""
from __future__ import annotations

from typing import Any

import torch

from unroll_cli.train.callbacks import Callback


class GradientNorm(Callback):
    def __init__(self):
        self.total, self.count = None, 0

    def after_step(self, trainer, step: int) -> None:
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]))
            self.total = norm if self.total is None else self.total + norm
            self.count += 1

    def on_validation(self, trainer, number: int, metrics: dict[str, Any]) -> None:
        metrics["train/grad_norm"] = self.total.item() / self.count if self.count else float("nan")
        self.total, self.count = None, 0

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.count = state["total"], state["count"]
