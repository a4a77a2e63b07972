"""Progress inside an epoch or a stage, so that a long one is not silent.

With ``trainer.progress`` (the default), a terminal shows a tqdm bar over the steps; without a
terminal (a log file, a sweep: tqdm's own check of stderr) a line is logged about every
:data:`LOG_EVERY_S` seconds instead: the step of the epoch or stage, the running mean training loss
and the steps per second. Both are fed at the trainer's loss read-backs (every ``CHECK_EVERY``
steps, each one a synchronisation with the device), never per step; there the mean loss of the
steps since the previous read-back also goes to TensorBoard as :data:`STEP_LOSS`, against the
run's global step.
"""
from __future__ import annotations

import logging
import time

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0  # seconds between progress lines when no bar is shown
STEP_LOSS = "train/loss_step"  # the TensorBoard tag of the loss between two read-backs


def progress_bar(enabled: bool, total: int | None, initial: int = 0, unit: str = "step") -> tqdm:
    """A tqdm bar: on a terminal when ``enabled`` (``disable=None``: none when stderr is not a terminal)."""
    return tqdm(total=total, initial=initial, unit=unit, disable=None if enabled else True,
                dynamic_ncols=True, leave=False)


class Span:
    """One epoch or stage as its progress is reported: ``name`` heads its lines, ``total`` is its
    number of steps (``at_most``: a bound, a stage may end before it); ``bar`` is the bar counting its
    steps, and lines are logged when progress is ``enabled`` and that bar is not shown. ``steps`` and
    ``loss_sum`` are the span's own when it starts (a stage resumed part-way)."""

    def __init__(self, name: str, total: int, bar: tqdm, recorder, enabled: bool, at_most: bool = False,
                 steps: int = 0, loss_sum: float = 0.0):
        self.name, self.bar, self.recorder = name, bar, recorder
        self.of = f" (at most {total})" if at_most else f"/{total}"
        self.lines = enabled and bar.disable
        self.started = self.logged = time.monotonic()
        self.first, self.last = steps, (steps, loss_sum)

    def read_back(self, mean: float, steps: int, global_step: int) -> None:
        """The span's running mean loss ``mean`` over its first ``steps`` steps, just read back."""
        total = mean * steps
        last_steps, last_total = self.last
        if steps > last_steps:
            self.recorder.scalar(STEP_LOSS, (total - last_total) / (steps - last_steps), global_step)
        self.last = (steps, total)
        self.bar.set_postfix_str(f"{self.name}, loss {mean:.4g}")
        now = time.monotonic()
        if self.lines and now - self.logged >= LOG_EVERY_S:
            rate = (steps - self.first) / max(now - self.started, 1e-9)
            log.info("%s: step %d%s, loss %.5g (mean so far), %.3g steps/s", self.name, steps, self.of, mean, rate)
            self.logged = now
