"""Run diagnostics: measurements of a trained model beside the task's metric.

A diagnostic is a class named by a ``_target_`` under the ``diagnostics`` config node
(``+diagnostics=NAME`` selects ``conf/diagnostics/NAME.yaml``). The run flow, for each one:

- ``bind(task)`` then ``refuse(model)`` after the model is built, before any training: the run's task
  (what a diagnostic that measures on the task's data uses of it, e.g. ``+diagnostics=robustness``),
  then a reason why it does not apply to this model and task (a run with it is refused, naming
  ``diagnostics.NAME``), or None;
- ``measure(model)`` after training: flat metrics, written to ``metrics.json`` as ``NAME/key``, and
  with ``per_epoch=true`` also after every validation as columns of ``history.csv``;
- ``tables(model)`` and ``figures(model)``: what it draws or tabulates of the trained model
  (``{file name: (table, index columns)}``, ``{file name: matplotlib figure}``), written beside the
  task's own.

A diagnostic changes nothing in training, so a resumed run may add or drop one.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from unroll_cli.errors import ConfigError
from unroll_cli.train.callbacks import Callback


class Diagnostic:
    """The protocol; ``per_epoch`` is the constructor's argument of every diagnostic."""

    def __init__(self, per_epoch: bool = False):
        if not isinstance(per_epoch, bool):
            raise ValueError(f"per_epoch must be true or false, got {per_epoch!r}")
        self.per_epoch = per_epoch
        self.task = None

    def bind(self, task) -> None:
        """The run's task, before :meth:`refuse`."""
        self.task = task

    def refuse(self, model: torch.nn.Module) -> str | None:
        return None

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def tables(self, model: torch.nn.Module) -> dict[str, tuple[pd.DataFrame, list[str]]]:
        return {}

    def figures(self, model: torch.nn.Module) -> dict[str, Any]:
        return {}


def check_diagnostics(diagnostics: dict[str, Diagnostic], model: torch.nn.Module, model_name: str,
                      task=None) -> None:
    """Give each diagnostic the run's ``task``; refuse, before training, one that does not apply to the model."""
    for name, diagnostic in diagnostics.items():
        diagnostic.bind(task)
        reason = diagnostic.refuse(model)
        if reason:
            raise ConfigError(f"diagnostics.{name} does not apply to model={model_name}: {reason}")


def measure_all(diagnostics: dict[str, Diagnostic], model: torch.nn.Module) -> dict[str, float]:
    """Every diagnostic's metrics, each under its name as prefix."""
    with torch.no_grad():
        return {f"{name}/{key}": float(value) for name, diagnostic in diagnostics.items()
                for key, value in diagnostic.measure(model).items()}


def record_diagnostics(diagnostics: dict[str, Diagnostic], model: torch.nn.Module, recorder) -> dict[str, float]:
    """The trained model's diagnostics: their tables and figures written; their metrics returned."""
    with torch.no_grad():
        for diagnostic in diagnostics.values():
            for file, (table, index) in diagnostic.tables(model).items():
                recorder.write_table(file, table, index=index)
            for file, figure in diagnostic.figures(model).items():
                recorder.write_figure(file, figure)
    return measure_all(diagnostics, model)


class PerValidation(Callback):
    """The diagnostics marked ``per_epoch``, measured after every validation into the history row."""

    def __init__(self, diagnostics: dict[str, Diagnostic]):
        self.diagnostics = {name: d for name, d in diagnostics.items() if d.per_epoch}

    def on_validation(self, trainer, number: int, metrics: dict[str, Any]) -> None:
        metrics.update(measure_all(self.diagnostics, trainer.model))
