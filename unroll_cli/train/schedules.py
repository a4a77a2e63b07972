"""Learning-rate schedules torch does not ship: :class:`InverseTimeLR`, the 1/t decay of online SGD
(Gregor & LeCun, ICML 2010, eq. 6: eta(j) decaying as 1/j)."""
from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class InverseTimeLR(LRScheduler):
    """``lr_t = lr / (1 + t / decay)`` after ``t`` scheduler steps (one per epoch in the trainer, so
    ``decay`` counts epochs: with ``trainer.steps_per_epoch`` small the decay is nearly per step)."""

    def __init__(self, optimizer: Optimizer, decay: float, last_epoch: int = -1):
        if not decay > 0:
            raise ValueError(f"decay must be > 0, got {decay!r}")
        self.decay = float(decay)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base / (1 + self.last_epoch / self.decay) for base in self.base_lrs]
