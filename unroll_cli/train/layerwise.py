"""Stage-wise training of Chen et al. 2018 (Supp. E; the LISTA-CPSS code's ``utils/train.py``).

For each layer t = 1..T, three stages on the network truncated to its first t layers:
(a) the variables new to layer t at lr0 (times the first of ``stage_lr_factors``, 1); (b), (c) every variable of layers <= t at lr0*0.2 and
lr0*0.02. A variable of layer s < t is decayed by ``layer_decay`` (0.3) once per layer trained since
its own, c = 0.3^(t-s), in one of two ways (``decay_mode``):

- ``lr``: its learning rate is lr0 * factor * c (HyperLISTA's param groups; what the authors' comments
  say they intended).
- ``gradient``: its gradient is multiplied by c before the optimizer, at lr0 * factor (the authors'
  TF code as it ran: ``get_train_op`` in VITA-Group/ALISTA and LISTA-CPSS ``utils/train.py`` scales
  the gradients given to ``tf.train.AdamOptimizer(lr)``). Adam's step lr * m / (sqrt(v) + eps) is
  unchanged by a constant c except through eps (c acts as eps -> eps / c), so earlier layers keep
  close to the full stage rate until their scaled gradients approach eps; the loss's scale
  (``data.loss_reduction``) sets where that happens.

Each stage starts a fresh optimizer and ends after ``stage_max_steps`` steps or by its patience:
validation every ``val_every_steps`` steps, the stage ending at the first validation
``stage_patience_steps`` after its best; or, with ``stop_check_validations`` = k, the authors' rule
(``do_training``): validations after steps 1, 1 + v, 1 + 2v, ..., and every k-th one ends the stage
when its best is more than ``stage_patience_steps`` old (ALISTA: k = 10, v = 10, 2000 steps, so a
stage ends 2010-2100 steps after its best). A checkpoint after every stage, and inside a stage every
``checkpoint_every_s`` seconds (its optimizer, step and best so far, and the data stream's place),
makes the schedule resumable, to the same result as a run never stopped.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from unroll_cli.errors import ConfigError
from unroll_cli.report import formatting
from unroll_cli.schema import ConstantSchedConfig
from unroll_cli.train.trainer import CHECK_EVERY, Trainer

log = logging.getLogger(__name__)


class LayerwiseTrainer(Trainer):
    trains_truncated = True

    @classmethod
    def check_model(cls, model: torch.nn.Module, name: str) -> None:
        """The schedule needs the model's per-layer parameter groups (``layer_parameters(t)``, ``layers``)."""
        if not (callable(getattr(model, "layer_parameters", None)) and isinstance(getattr(model, "layers", None), int)):
            raise ConfigError(f"trainer=layerwise needs a model with per-layer parameter groups "
                              f"(layer_parameters and layers); model={name} has none: use trainer=default")

    @classmethod
    def check_settings(cls, cfg: DictConfig, task) -> None:
        """Every stage runs at a constant rate (``stage_lr_factors``): a scheduler would be ignored."""
        if OmegaConf.to_container(cfg.sched) != OmegaConf.to_container(OmegaConf.structured(ConstantSchedConfig)):
            raise ConfigError(f"sched ({cfg.sched._target_}) is not used by trainer=layerwise: each stage runs at "
                              "a constant rate, optim.lr times trainer.stage_lr_factors; use sched=none")

    @classmethod
    def reports_best(cls, task) -> bool:
        """The weights the last stage ends with are reported (the schedule keeps no best weights)."""
        return False

    def stage_groups(self, layer: int, stage: int, lr0: float) -> list[dict]:
        """Optimizer param groups of ``stage`` (0-based) while training ``layer`` (0-based); with
        ``decay_mode=gradient`` each carries its ``gradient_factor`` (:meth:`stage_optimizer`)."""
        if stage == 0:
            groups = [{"params": self.trainable(self.model.layer_parameters(layer)),
                       "lr": lr0 * self.s.stage_lr_factors[0]}]
        else:
            lr, groups = lr0 * self.s.stage_lr_factors[stage], []
            for s in range(layer + 1):
                decay = self.s.layer_decay ** (layer - s)
                group = {"params": self.trainable(self.model.layer_parameters(s))}
                if self.s.decay_mode == "gradient":
                    group.update(lr=lr, gradient_factor=decay)
                else:
                    group.update(lr=lr * decay)
                groups.append(group)
        return [g for g in groups if g["params"]]

    def stage_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        """A fresh optimizer over ``groups``; a group's ``gradient_factor`` multiplies its gradients
        before every step (after any clipping), as the authors' ``get_train_op``."""
        optimizer = self.make_optimizer(groups)
        if any(g.get("gradient_factor", 1.0) != 1.0 for g in optimizer.param_groups):
            optimizer.register_step_pre_hook(scale_gradients)
        return optimizer

    def run_schedule(self) -> None:
        if not self.trainable(self.model.parameters()):
            log.info("nothing to train: the model has no trainable parameters")
            return
        done = (-1, len(self.s.stage_lr_factors) - 1)  # (layer, stage) last completed
        state = self.resume_state or {}
        progress = state.get("stage_progress")  # a checkpoint written inside the next stage
        if state:
            self.restore(state)
            done = tuple(state["position"])
            log.info("resumed after layer %d stage %d%s", done[0] + 1, done[1],
                     f", {progress['step']} steps into the next stage" if progress else "")
        lr0, layers, n_stages = self.optim_cfg.lr, self.model.layers, len(self.s.stage_lr_factors)
        schedule = [(t, k) for t in range(layers) for k in range(n_stages) if (t, k) > done]
        stream = BatchStream(self.task, state.get("stream"))
        self.save(position=list(done), stream=stream.state_dict(), stage_progress=progress)
        if not schedule:  # resumed after its last stage (into a new directory: the checkpoint pair there)
            return
        with self.progress(len(schedule), unit="stage") as bar:
            for number, (layer, stage) in enumerate(schedule, start=len(self.recorder.history) + 1):
                groups = self.stage_groups(layer, stage, lr0)
                stop = None
                if groups:
                    row = self.run_stage(layer, stage, groups, stream, done, progress)
                    stop = self.callbacks.on_validation(self, number, row)
                    self.recorder.add_row(row)
                    bar.set_postfix(layer=layer + 1, stage=stage, val=f"{row[self.task.monitor]:.4g}")
                done, progress = (layer, stage), None
                self.save(position=list(done), stream=stream.state_dict())
                bar.update(1)
                if groups:
                    self.recorder.write_history(step=self.global_step)
                if stop is not None:
                    raise stop

    def run_stage(self, layer: int, stage: int, groups: list[dict], stream: BatchStream,
                  done: tuple[int, int] | None = None, progress: dict | None = None) -> dict:
        """Train one stage; with ``done`` (the last completed stage), checkpoint inside it every
        ``checkpoint_every_s`` seconds; ``progress`` is such a checkpoint's state of this stage."""
        depth, started = layer + 1, time.time()
        optimizer = self.stage_optimizer(groups)
        best, best_step, step, count, earlier_s = self.worst(), 0, 0, 0, 0.0
        loss_sum = torch.zeros((), device=self.device)
        if progress is not None:
            optimizer.load_state_dict(progress["optimizer"])
            best, best_step, step, count, earlier_s = (progress[k] for k in PROGRESS_SCALARS)
            loss_sum = progress["loss_sum"].to(self.device)
        every, check, interval = self.s.val_every_steps, self.s.stop_check_validations, self.s.checkpoint_every_s
        first = 1 if check else 0  # the authors' rule validates after the first step
        saved_at = time.time()
        with self.progress(None, step) as bar:  # nested under the stages' bar
            span = self.span(f"layer {depth} stage {stage}", self.s.stage_max_steps, bar, at_most=True,
                             steps=count, loss_sum=loss_sum.item() if count else 0.0)
            while step < self.s.stage_max_steps:
                loss_sum += self.train_step(optimizer, next(stream), depth)
                count += 1
                step += 1
                bar.update(1)
                if count % CHECK_EVERY == 0:
                    span.read_back(self.check_finite(loss_sum, count), count, self.global_step)
                if (step - first) % every == 0:
                    self.check_finite(loss_sum, count)
                    value = self.task.validate(self.model, depth)[self.task.monitor]
                    if self.better(value, best):
                        best, best_step = value, step
                    if check is None:
                        if step - best_step >= self.s.stage_patience_steps:
                            break
                    elif (step - 1) % (check * every) == 0 and step - best_step > self.s.stage_patience_steps:
                        break
                    if done is not None and interval is not None and time.time() - saved_at >= interval:
                        seconds = earlier_s + time.time() - started
                        self.save(position=list(done), stream=stream.state_dict(), stage_progress=dict(
                            zip(PROGRESS_SCALARS, (best, best_step, step, count, seconds)),
                            loss_sum=loss_sum.clone(), optimizer=optimizer.state_dict()))
                        saved_at = time.time()
        train_loss = self.check_finite(loss_sum, count)
        if not math.isfinite(best):  # fewer steps than one validation interval
            best = self.task.validate(self.model, depth)[self.task.monitor]
        log.info("layer %d stage %d: %d steps, loss %.5g, %s %s", depth, stage, step, train_loss,
                 self.task.monitor, formatting.number(best))
        return {"layer": depth, "stage": stage, "step": self.global_step, "stage_steps": step,
                "lr": groups[-1]["lr"], "train/loss": train_loss, self.task.monitor: best,
                "seconds": round(earlier_s + time.time() - started, 3)}


#: the numbers a checkpoint inside a stage holds besides its optimizer and summed loss
PROGRESS_SCALARS = ("best", "best_step", "step", "count", "seconds")


class BatchStream:
    """The task's training batches, epoch after epoch, resumable mid-epoch. Its state is the task's
    data-stream state at the start of the current epoch and the number of batches drawn since: a
    resume draws that epoch again (its shuffle included) and skips the batches already used."""

    def __init__(self, task, state: dict | None = None):
        self.task = task
        if state is not None:
            task.load_state_dict(state["epoch_start"])
        self.new_epoch()
        for _ in range(state["drawn"] if state is not None else 0):
            next(self)

    def new_epoch(self) -> None:
        self.epoch_start, self.drawn = self.task.state_dict(), 0
        self.batches = iter(self.task.train_batches())

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        try:
            batch = next(self.batches)
        except StopIteration:
            self.new_epoch()
            batch = next(self.batches)
        self.drawn += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch_start": self.epoch_start, "drawn": self.drawn}


def scale_gradients(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Optimizer step pre-hook: multiply each group's gradients by its ``gradient_factor``."""
    for group in optimizer.param_groups:
        factor = group.get("gradient_factor", 1.0)
        if factor != 1.0:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(factor)
