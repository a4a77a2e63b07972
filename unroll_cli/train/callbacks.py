"""Trainer callbacks: code that runs at fixed points of training, with state that resumes.

A callback is a class named by a ``_target_`` under the ``callbacks`` config node (one named entry
each; ``+callbacks=NAME`` selects ``conf/callbacks/NAME.yaml``, a user's own lives in their config
folder). Every trainer calls, on every path (end to end, layer-wise, CUDA graphs):

- ``check(model, task, cfg)`` before any work: raise :class:`ConfigError` to refuse a model, a
  task or an optimizer it cannot serve (the run names the callback's key before the message);
- ``on_fit_start(trainer)`` before the first step, also of a resumed run (before its state returns);
- ``after_step(trainer, step)`` after every optimizer step, under ``no_grad`` (``step``: the run's
  count of optimizer steps so far);
- ``on_validation(trainer, number, metrics)`` after every validation (an epoch, or a stage of the
  layer-wise trainer), before the checkpoint; ``metrics`` is the history row, and a callback may
  add its own columns to it;
- ``on_fit_end(trainer)`` once training is over: a further phase of training may run here
  (``trainer.save_phase()`` checkpoints after it);
- ``metrics()``: flat metrics of its own, written to ``metrics.json`` (``polish/seconds``, ...);
- ``state_dict()`` / ``load_state_dict(state)``: saved in every checkpoint (tensors and plain values,
  read back with ``weights_only=True``) so that a resumed run equals one never stopped.

A callback stops a run early by raising :class:`RunPruned` in ``on_validation`` (an Optuna pruner
does): the trainer first saves the checkpoint and history of that validation, then re-raises.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from unroll_cli.errors import ConfigError


class RunPruned(Exception):
    """A callback (a sweeper's pruner) stopped this run early: an unpromising trial, not a failure."""


class Callback:
    """The protocol, every hook a no-op: a callback overrides what it needs."""

    def check(self, model: torch.nn.Module, task, cfg: DictConfig) -> None:
        """Raise :class:`ConfigError` for a model, a task or a config this callback cannot serve."""

    def on_fit_start(self, trainer) -> None:
        pass

    def after_step(self, trainer, step: int) -> None:
        pass

    def on_validation(self, trainer, number: int, metrics: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, trainer) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ModelAfterStep(Callback):
    """The model's own projection after every optimizer step (``model.after_step()``: unit-norm
    atoms of PUDLE's dictionary, ...), which every trainer runs for a model that declares one."""

    def __init__(self, model: torch.nn.Module):
        self.project = model.after_step

    def after_step(self, trainer, step: int) -> None:
        self.project()


class Callbacks:
    """The run's callbacks by name, called in order; their states saved and restored by name."""

    def __init__(self, callbacks: dict[str, Callback] | None = None):
        self.named = dict(callbacks or {})
        # those with a step hook of their own: the training loop calls no one else after each step
        self.stepping = [c for c in self.named.values() if type(c).after_step is not Callback.after_step]

    @classmethod
    def for_model(cls, model: torch.nn.Module, callbacks: dict[str, Callback] | None = None) -> Callbacks:
        """``callbacks``, after the model's own step hook when it declares one."""
        own = {"model.after_step": ModelAfterStep(model)} if callable(getattr(model, "after_step", None)) else {}
        return cls({**own, **(callbacks or {})})

    def on_fit_start(self, trainer) -> None:
        for callback in self.named.values():
            callback.on_fit_start(trainer)

    def after_step(self, trainer, step: int) -> None:
        if not self.stepping:
            return
        with torch.no_grad():
            for callback in self.stepping:
                callback.after_step(trainer, step)

    def on_validation(self, trainer, number: int, metrics: dict[str, Any]) -> RunPruned | None:
        """Call every callback; a :class:`RunPruned` one raises is returned, for the trainer to raise
        once this validation's checkpoint is saved."""
        stop = None
        for callback in self.named.values():
            try:
                callback.on_validation(trainer, number, metrics)
            except RunPruned as pruned:
                stop = stop or pruned
        return stop

    def on_fit_end(self, trainer) -> None:
        for callback in self.named.values():
            callback.on_fit_end(trainer)

    def metrics(self) -> dict[str, float]:
        return {key: value for callback in self.named.values() for key, value in callback.metrics().items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: callback.state_dict() for name, callback in self.named.items()}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for name, callback in self.named.items():
            if name in states:
                callback.load_state_dict(states[name])


def check_callbacks(callbacks: dict[str, Callback], model: torch.nn.Module, task, cfg: DictConfig) -> None:
    """Each callback's ``check``, its refusal prefixed with its key (``callbacks.NAME``)."""
    for name, callback in callbacks.items():
        try:
            callback.check(model, task, cfg)
        except ConfigError as error:
            raise ConfigError(f"callbacks.{name}: {error}") from None
