"""``+callbacks=polish``: L-BFGS polishing after training, as a phase the trainer runs.

Dao et al. 2019's last step (``learning_transforms``): once gradient training is over, every submodule
with a ``freeze()`` is frozen (a learned permutation becomes its rounded, hard one), then ``steps``
L-BFGS steps (PyTorch's defaults, as the authors': each at most 20 iterations with a unit step;
``line_search=strong_wolfe`` searches the step) fit the task's whole training data
(``task.full_batch()``); the best state by the task's validation metric is kept, the one before
polishing included. As a phase of training it has the trainer's NaN check (a non-finite loss fails
the run, the last good checkpoint kept) and a checkpoint after it, the polished model as ``best.pt``:
a run stopped after polishing resumes without polishing again, to the same model. Its metrics:
``polish/before`` (the monitored validation value once frozen, before the L-BFGS steps),
``polish/after`` and ``polish/seconds``.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from unroll_cli.errors import ConfigError
from unroll_cli.train.callbacks import Callback


def freeze(model: torch.nn.Module) -> None:
    """Freeze every submodule that can be (``freeze()``: e.g. a learned permutation rounded)."""
    for module in model.modules():
        if callable(getattr(module, "freeze", None)):
            module.freeze()


LINE_SEARCHES = (None, "strong_wolfe")


class LBFGSPolish(Callback):
    def __init__(self, steps: int = 20, line_search: str | None = None):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        if line_search not in LINE_SEARCHES:
            raise ValueError(f"line_search must be null (a unit step, PyTorch's default) or strong_wolfe, "
                             f"got {line_search!r}")
        self.steps, self.line_search, self.done, self.results = steps, line_search, False, {}

    def check(self, model, task, cfg) -> None:
        if not callable(getattr(task, "full_batch", None)):
            raise ConfigError(f"polishing fits the whole training data at once, which data={cfg.data._target_} "
                              "does not provide (no full_batch())")

    def on_fit_end(self, trainer) -> None:
        model, task = trainer.model, trainer.task
        freeze(model)  # again after a resume: freezing is not in the weights
        if self.done:
            return
        started = time.perf_counter()
        before = best = task.validate(model)[task.monitor]
        params = [p for p in model.parameters() if p.requires_grad]
        if params and self.steps:
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
            optimizer = torch.optim.LBFGS(params, line_search_fn=self.line_search)
            batch = task.full_batch()

            def closure() -> torch.Tensor:
                optimizer.zero_grad()
                loss = task.loss(model(batch[0]), batch, model)
                loss.backward()
                return loss

            for _ in range(self.steps):
                trainer.check_finite(optimizer.step(closure).detach(), 1)
                value = task.validate(model)[task.monitor]
                if trainer.better(value, best):
                    best, best_state = value, {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best_state)
        self.done = True
        self.results = {"polish/before": before, "polish/after": best, "polish/seconds": time.perf_counter() - started}
        trainer.save_phase()

    def metrics(self) -> dict[str, float]:
        return dict(self.results)

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "results": self.results}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done, self.results = state["done"], dict(state["results"])
