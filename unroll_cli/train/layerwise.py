"""Stage-wise training of Chen et al. 2018 (Supp. E; the LISTA-CPSS code's ``utils/train.py``).

For each layer t = 1..T, three stages on the network truncated to its first t layers:
(a) the variables new to layer t at lr0; (b), (c) every variable of layers <= t at lr0*0.2 and
lr0*0.02. A variable of layer s < t has its learning rate multiplied by ``layer_decay`` (0.3) once
per layer trained since its own: lr0 * factor * 0.3^(t-s) (as HyperLISTA's param groups; the TF
code scales gradients, which Adam would undo). Each stage starts a fresh optimizer, validates every
``val_every_steps`` steps and ends when validation has not improved for ``stage_patience_steps``
steps, or after ``stage_max_steps``. A checkpoint after every stage makes the schedule resumable.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Iterator

import torch

from unroll_cli.config import ConfigError
from unroll_cli.train.trainer import Trainer

log = logging.getLogger(__name__)


class LayerwiseTrainer(Trainer):
    @classmethod
    def check_model(cls, model: torch.nn.Module, name: str) -> None:
        """The schedule needs the model's per-layer parameter groups (``layer_parameters(t)``, ``layers``)."""
        if not (callable(getattr(model, "layer_parameters", None)) and isinstance(getattr(model, "layers", None), int)):
            raise ConfigError(f"trainer=layerwise needs a model with per-layer parameter groups "
                              f"(layer_parameters and layers); model={name} has none: use trainer=default")

    def batches(self) -> Iterator:
        while True:
            yield from self.task.train_batches()

    def stage_groups(self, layer: int, stage: int, lr0: float) -> list[dict]:
        """Optimizer param groups of ``stage`` (0-based) while training ``layer`` (0-based)."""
        if stage == 0:
            groups = [{"params": self.trainable(self.model.layer_parameters(layer)), "lr": lr0}]
        else:
            factor = self.s.stage_lr_factors[stage]
            groups = [{"params": self.trainable(self.model.layer_parameters(s)),
                       "lr": lr0 * factor * self.s.layer_decay ** (layer - s)} for s in range(layer + 1)]
        return [g for g in groups if g["params"]]

    def fit(self) -> None:
        if not self.trainable(self.model.parameters()):
            log.info("nothing to train: the model has no trainable parameters")
            return
        done = (-1, len(self.s.stage_lr_factors) - 1)  # (layer, stage) last completed
        if self.resume_state is not None:
            state = self.resume_state
            self.restore(state)
            done = tuple(state["position"])
            log.info("resumed after layer %d stage %d", done[0] + 1, done[1])
        lr0, layers, n_stages = self.optim_cfg.lr, self.model.layers, len(self.s.stage_lr_factors)
        schedule = [(t, k) for t in range(layers) for k in range(n_stages) if (t, k) > done]
        if not schedule:
            return
        self.save(position=list(done))
        batches = self.batches()
        with self.progress(len(schedule), unit="stage") as bar:
            for number, (layer, stage) in enumerate(schedule, start=len(self.recorder.history) + 1):
                groups = self.stage_groups(layer, stage, lr0)
                if groups:
                    row = self.run_stage(layer, stage, groups, batches)
                    self.recorder.add_row(row)
                    bar.set_postfix(layer=layer + 1, stage=stage, val=f"{row[self.task.monitor]:.4g}")
                self.save(position=[layer, stage])
                bar.update(1)
                if groups:
                    self.recorder.write_history(step=self.global_step)
                    self.on_validation(number, row[self.task.monitor])

    def run_stage(self, layer: int, stage: int, groups: list[dict], batches: Iterator) -> dict:
        depth, started = layer + 1, time.time()
        optimizer = self.make_optimizer(groups)
        best, best_step, step = self.worst(), 0, 0
        loss_sum, count = torch.zeros((), device=self.device), 0
        while step < self.s.stage_max_steps:
            loss_sum += self.train_step(optimizer, next(batches), depth)
            count += 1
            step += 1
            if step % self.s.val_every_steps == 0:
                self.check_finite(loss_sum, count)
                value = self.task.validate(self.model, depth)[self.task.monitor]
                if self.better(value, best):
                    best, best_step = value, step
                elif step - best_step >= self.s.stage_patience_steps:
                    break
        train_loss = self.check_finite(loss_sum, count)
        if not math.isfinite(best):  # fewer steps than one validation interval
            best = self.task.validate(self.model, depth)[self.task.monitor]
        log.info("layer %d stage %d: %d steps, loss %.5g, %s %.4f", depth, stage, step, train_loss,
                 self.task.monitor, best)
        return {"layer": depth, "stage": stage, "step": self.global_step, "stage_steps": step,
                "lr": groups[-1]["lr"], "train/loss": train_loss, self.task.monitor: best,
                "seconds": round(time.time() - started, 3)}
