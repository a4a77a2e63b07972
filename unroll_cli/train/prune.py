"""``+callbacks=prune``: iterative magnitude pruning with rewinding (lottery tickets).

Frankle & Carbin 2019, as open_lth runs it: train; remove the smallest-magnitude remaining weights;
rewind the surviving weights (the whole model) to their values at the rewind point; train again.
Round 0 trains the dense model, round r (1 .. ``rounds``) keeps exactly ``ceil((1 - fraction)^r N)``
of the N prunable weights, the largest magnitudes of round r-1's trained weights, across all
prunable tensors (``scope=global``, open_lth's ``sparse_global``) or within each one (``layer``).
(open_lth prunes ``ceil(fraction * remaining)`` each level, which rounds down the kept count once per
level; the target of each round here is rounded once.) ``rewind_step=0`` rewinds to the initial
weights, ``k`` to the weights after the run's k-th optimizer step, saved when it is reached.

Which weights are prunable is the model's: ``model.prunable_parameters()`` (parameter names) when it
declares one; otherwise every trainable tensor with at least two dimensions larger than one (weight
matrices and filters, not biases, thresholds or per-channel scales) except the last such one in module
order, open_lth's default of leaving the output layer dense.

Each round is the trainer's whole schedule again (``trainer.restart_schedule()``, run from
``on_fit_end``): a fresh optimizer and learning-rate schedule, the same number of epochs. The
masks, the round, the rewind weights and the finished rounds' rows are this callback's state, which is
in every checkpoint; the first checkpoint of each round is written once the model is pruned and
rewound, so a run interrupted anywhere resumes inside the round it was in, to the same result. The
masks hold after every optimizer step (pruned weights are set to zero, whatever the optimizer's state
says). After each round's training ``rounds.csv`` gets a row (index ``round``, ``density``): the number
of remaining weights, the task's primary metric on its test data (the task's own evaluation of the
model the trainer reports), and every metric of the run's diagnostics (a ``pathnorm/*`` one among
them). History rows carry ``prune/round`` and ``prune/density``.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate

from unroll_cli.errors import ConfigError
from unroll_cli.evaluate.diagnostics import check_diagnostics, measure_all
from unroll_cli.train.callbacks import Callback

SCOPES = ("global", "layer")
ROUNDS = "rounds.csv"


def is_weight(parameter: torch.Tensor) -> bool:
    """A matrix or a filter bank: at least two dimensions larger than one."""
    return sum(size > 1 for size in parameter.shape) >= 2


def prunable_names(model: torch.nn.Module) -> list[str]:
    """The names of the model's prunable parameters (module docstring)."""
    declared = getattr(model, "prunable_parameters", None)
    if callable(declared):
        return list(declared())
    weights = [name for name, p in model.named_parameters() if p.requires_grad and is_weight(p)]
    return weights[:-1]


def kept_count(total: int, fraction: float, round_: int) -> int:
    """Weights of ``total`` that remain after ``round_`` rounds of pruning ``fraction``, in exact
    arithmetic on the decimal ``fraction`` (in floats, 0.8 ** 2 * 2400 is 1536.0000000000002)."""
    return math.ceil((1 - Fraction(str(fraction))) ** round_ * total)


def magnitude_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], fraction: float,
                    round_: int, scope: str) -> dict[str, torch.Tensor]:
    """The masks of round ``round_``: of the weights the current ``masks`` keep, the largest magnitudes,
    :func:`kept_count` of them over all tensors (``global``) or of each tensor (``layer``)."""
    def keep_largest(names: list[str]) -> dict[str, torch.Tensor]:
        # a pruned weight scores -1, below every magnitude: the kept set only shrinks
        scores = torch.cat([torch.where(masks[n], weights[n].detach().abs(), -1.0).flatten().double()
                            for n in names])
        keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        order = torch.argsort(scores, descending=True, stable=True)
        keep[order[:kept_count(scores.numel(), fraction, round_)]] = True
        sizes = [weights[n].numel() for n in names]
        return {n: part.view_as(weights[n]) for n, part in zip(names, torch.split(keep, sizes))}

    if scope == "global":
        return keep_largest(list(weights))
    return {name: keep_largest([name])[name] for name in weights}


class IterativeMagnitudePruning(Callback):
    def __init__(self, fraction: float = 0.2, rounds: int = 3, scope: str = "global", rewind_step: int = 0):
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ValueError(f"fraction must be a number in (0, 1), got {fraction!r}")
        for key, value in (("rounds", rounds), ("rewind_step", rewind_step)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.fraction, self.rounds, self.scope, self.rewind_step = float(fraction), rounds, scope, rewind_step
        self.round, self.rows = 0, []
        self.masks: dict[str, torch.Tensor] | None = None
        self.rewind: dict[str, torch.Tensor] | None = None  # the model's state at the rewind point

    def check(self, model, task, cfg) -> None:
        names = prunable_names(model)
        parameters = dict(model.named_parameters())
        unknown = [n for n in names if n not in parameters]
        if unknown:
            raise ConfigError(f"model={cfg.model.name} declares prunable parameters it does not have: "
                              f"{', '.join(unknown)}")
        if not names:
            raise ConfigError(f"model={cfg.model.name} has no prunable weights (a matrix or filter bank "
                              "other than the output layer, or a prunable_parameters() declaration)")
        epochs = cfg.trainer.get("max_epochs")
        if epochs is not None and self.rewind_step > epochs * task.steps_per_epoch:
            raise ConfigError(f"rewind_step={self.rewind_step} is past the end of training "
                              f"({epochs} epochs of {task.steps_per_epoch} steps)")
        self.names, self.model_name, self.paper = names, cfg.model.name, cfg.paper
        self.diagnostics = {name: instantiate(node, _recursive_=False) for name, node in cfg.diagnostics.items()}
        check_diagnostics(self.diagnostics, model, cfg.model.name, task)

    # ------------------------------------------------------------------ training
    def on_fit_start(self, trainer) -> None:
        # a resumed run's state replaces these (restore comes after)
        parameters = dict(trainer.model.named_parameters())
        self.masks = {n: torch.ones_like(parameters[n], dtype=torch.bool) for n in self.names}
        if self.rewind_step == 0:
            self.rewind = self.snapshot(trainer.model)

    def after_step(self, trainer, step: int) -> None:
        if self.rewind is None and step == self.rewind_step:
            self.rewind = self.snapshot(trainer.model)
        if self.round > 0:
            self.apply_masks(trainer.model)

    def on_validation(self, trainer, number: int, metrics: dict[str, Any]) -> None:
        metrics["prune/round"], metrics["prune/density"] = self.round, self.density()

    def on_fit_end(self, trainer) -> None:
        while True:
            if len(self.rows) == self.round:  # this round's row (again, after a resume before it was saved)
                self.rows.append(self.evaluate(trainer))
            trainer.recorder.write_table(ROUNDS, pd.DataFrame(self.rows), index=["round", "density"])
            if self.round == self.rounds:
                return
            if self.rewind is None:
                raise RuntimeError(f"rewind_step={self.rewind_step} was never reached in training")
            model = trainer.model
            parameters = dict(model.named_parameters())
            self.masks = magnitude_masks({n: parameters[n] for n in self.names}, self.masks, self.fraction,
                                         self.round + 1, self.scope)
            self.round += 1
            with torch.no_grad():
                model.load_state_dict(self.rewind)
                self.apply_masks(model)
            trainer.restart_schedule()

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def apply_masks(self, model: torch.nn.Module) -> None:
        parameters = dict(model.named_parameters())
        for name, mask in self.masks.items():
            parameters[name].masked_fill_(~mask, 0)

    def remaining(self) -> int:
        return int(sum(mask.sum().item() for mask in self.masks.values()))

    def density(self) -> float:
        return self.remaining() / sum(mask.numel() for mask in self.masks.values())

    def evaluate(self, trainer) -> dict[str, Any]:
        """The row of this round: the task's evaluation of the trained model on its test data."""
        import matplotlib.pyplot as plt

        model, task = trainer.model, trainer.task
        history = [row for row in trainer.recorder.history if row.get("prune/round") == self.round]
        was_training = model.training
        model.eval()
        try:
            report = task.report(model, self.model_name, self.paper, history)
            for figure in report.figures.values():
                plt.close(figure)
            measured = measure_all(self.diagnostics, model)
        finally:
            model.train(was_training)
        return {"round": self.round, "density": self.density(), "weights": self.remaining(),
                task.primary_metric: float(report.metrics[task.primary_metric]), **measured}

    def metrics(self) -> dict[str, float]:
        if not self.rows:
            return {}
        return {"prune/rounds": float(self.round), "prune/density": self.rows[-1]["density"]}

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "masks": self.masks, "rewind": self.rewind, "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round, self.masks, self.rewind = state["round"], state["masks"], state["rewind"]
        self.rows = [dict(row) for row in state["rows"]]
