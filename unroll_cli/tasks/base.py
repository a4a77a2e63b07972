"""The task protocol: everything a kind of problem owns, so that the run flow, the trainers, the
recorder and the report never branch on the kind of problem or the model family.

A task is the class a ``data`` config instantiates (``data._target_``); its schema is declared beside
it with :func:`unroll_cli.schema.register_schema`, its options (loss, metric conventions, ...) are
``data.*`` keys. :func:`unroll_cli.run.run` builds it with the config's own keys plus ``seed``,
``device`` and ``trainer`` (the shared trainer settings, e.g. ``steps_per_epoch``), and then uses
only what :class:`Task` lists. See ``docs/architecture.md`` for the whole flow.
"""
from __future__ import annotations

from typing import Any, Iterator, Protocol

import torch
from omegaconf import DictConfig

from unroll_cli.errors import ConfigError
from unroll_cli.record.report import Report


class Task(Protocol):
    """What :func:`unroll_cli.run.run` and the trainers use of a task."""

    kind: str  # the kind of problem; a model's config names the kind it fits (``model.task``)
    device: torch.device
    monitor: str  # the validation metric after every epoch or stage ("val/nmse_db", "test/acc", ...)
    monitor_mode: str  # "min" or "max": which way is better for ``monitor``
    primary_metric: str  # the run's result when ``optimized_metric`` is null
    steps_per_epoch: int
    batch_size: int  # training batch, for the memory estimate
    eval_batch_size: int  # evaluation batch, for the memory estimate
    # what the task uses of a model beyond forward(): member names with what each is for, checked
    # before training (:func:`check_model_protocol`)
    model_protocol: dict[str, str]
    # where the data was read from (folders, files) or how it was drawn (seeds): a line of the run's log
    data_source: str

    def model_kwargs(self) -> dict[str, Any]:
        """What a model needs from the data to be built (a matrix A, an architecture, ...)."""

    def train_batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch of batches on the device; ``batch[0]`` is the model's input."""

    def loss(self, outputs: Any, batch: tuple[torch.Tensor, ...], model: torch.nn.Module) -> torch.Tensor:
        """The training loss of the model's outputs (the choice of loss or gradient is the task's)."""

    def validate(self, model: torch.nn.Module, depth: int | None = None) -> dict[str, float]:
        """``{monitor: value, ...}`` on the validation data, with the first ``depth`` layers."""

    def metric_names(self) -> list[str]:
        """Every metric :meth:`report` returns (``optimized_metric`` must be one of them)."""

    def report(self, model: torch.nn.Module, model_name: str, paper: DictConfig | None,
               history: list[dict]) -> Report:
        """Evaluate the trained model on the test data (``history``: the run's rows, read only): its
        flat metrics, tables, figures, paragraphs and published number, which
        :func:`unroll_cli.record.report.write_report` writes."""

    def artifacts(self) -> dict[str, Any]:
        """Arrays that define the problem, saved in the run directory before training (``A.npy``)."""

    def state_dict(self) -> dict[str, Any]:
        """The data stream's state (random generators), stored in checkpoints for an exact resume."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


#: batches in an epoch of online data (drawn afresh for every batch) when trainer.steps_per_epoch is null
ONLINE_STEPS_PER_EPOCH = 100


class SeededStream:
    """A task whose training batches come from its generator ``gen``: the generator's state is the
    task's state in a checkpoint (``state_dict`` / ``load_state_dict``), so a resumed run draws the
    batches an uninterrupted one would."""

    gen: torch.Generator

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


def online_epoch(trainer: DictConfig | None) -> int:
    """Batches in an epoch of online data: ``trainer.steps_per_epoch``, or :data:`ONLINE_STEPS_PER_EPOCH`
    when it is null or the trainer has no epochs (the layer-wise schedule draws batch after batch)."""
    steps = trainer.get("steps_per_epoch") if trainer is not None else None
    return steps or ONLINE_STEPS_PER_EPOCH


def check_task_protocol(task: Any, target: str) -> None:
    """Refuse, before any work, a task (a user's own ``data._target_``) without a member of :class:`Task`."""
    members = [*Task.__annotations__, *(name for name, value in vars(Task).items()
                                         if callable(value) and not name.startswith("_"))]
    missing = [name for name in members if not hasattr(task, name)]
    if missing:
        raise ConfigError(f"data._target_={target} lacks what a task provides: {', '.join(missing)} "
                          "(the Task protocol, unroll_cli/tasks/base.py)")


def check_model_protocol(task: Task, model: torch.nn.Module, model_name: str) -> None:
    """Refuse, before training, a model without a member the task needs (one message naming them)."""
    missing = [f"{name} ({use})" for name, use in task.model_protocol.items() if not hasattr(model, name)]
    if missing:
        raise ConfigError(f"model={model_name} lacks what {task.kind} data needs of a model: {', '.join(missing)}")
