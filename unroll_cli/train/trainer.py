"""End-to-end training: every parameter at once, the loss on the last layer's estimate.

The same class holds what the stage-wise trainer shares with it: the optimizer built from the
``optim`` config, one guarded training step (autocast, CUDA graphs, NaN/Inf check, gradient
clipping), and checkpoints (:mod:`unroll_cli.train.checkpoints`) that hold model, optimizer,
scheduler, RNG and data-stream state and the run's config, so that ``resume`` continues to the same
result. A non-finite loss raises :class:`NonFiniteLossError` before anything is saved, so
``checkpoints/last.pt`` stays the last good state. The best model (on the monitored validation
metric) is kept in memory too, and reloaded from there before the test metrics.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any, Iterable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from unroll_cli.errors import ConfigError, TrainingFailure
from unroll_cli.record.recorder import RunRecorder
from unroll_cli.report import formatting
from unroll_cli.train.callbacks import Callbacks
from unroll_cli.train.checkpoints import CheckpointStore
from unroll_cli.train.cuda_graphs import GraphedLoss
from unroll_cli.train.progress import Span, progress_bar

log = logging.getLogger(__name__)

CHECK_EVERY = 20  # steps between loss read-backs (each one synchronises with the device)


class NonFiniteLossError(TrainingFailure):
    """The training loss became NaN or infinite."""


class Trainer:
    """Fits ``model`` on ``task`` for ``settings.max_epochs`` epochs (the ``trainer`` config)."""

    #: whether the model is also fitted truncated to its first layers, on their own last estimate (a
    #: callback that keeps only the full model's output, ENorm, refuses such a trainer)
    trains_truncated = False

    def __init__(self, settings: DictConfig, model: torch.nn.Module, task, optim_cfg: DictConfig,
                 sched_cfg: DictConfig, recorder: RunRecorder, resume_state: dict[str, Any] | None = None,
                 callbacks: Callbacks | None = None, config: dict | None = None):
        self.s, self.model, self.task, self.recorder = settings, model, task, recorder
        # the run's callbacks (unroll_cli.train.callbacks), the model's own step hook among them
        self.callbacks = callbacks if callbacks is not None else Callbacks.for_model(model)
        self.optim_cfg, self.sched_cfg = optim_cfg, sched_cfg
        self.device = task.device
        # the checkpoint to continue from (its best.pt as "best_checkpoint"), and the run's config,
        # stored in every checkpoint so that a resume can be checked against it
        self.resume_state, self.config = resume_state, config
        self.best_state: dict[str, torch.Tensor] | None = None  # the best model's weights
        self.carried_best: dict[str, Any] | None = None  # a resumed best.pt, written with the next save
        self.forward = torch.compile(model) if settings.compile else model
        self.autocast_dtype = torch.bfloat16 if settings.precision == "bf16" else None
        self.graphed_loss = None
        if settings.cuda_graphs and self.device.type == "cuda":
            self.graphed_loss = GraphedLoss(model, task.loss)
        elif settings.cuda_graphs:
            log.info("trainer.cuda_graphs: the device is %s, not CUDA: training eagerly", self.device)
        self.global_step = 0
        self.optimizer: torch.optim.Optimizer | None = None  # that of the last step, for callbacks (ENorm)
        self.schedule_state: dict[str, Any] | None = None  # the schedule's part of its last save (save_phase)

    @classmethod
    def check_model(cls, model: torch.nn.Module, name: str) -> None:
        """Refuse, before any work, a model this trainer cannot train (end to end: any model)."""

    @classmethod
    def check_settings(cls, cfg: DictConfig, task) -> None:
        """Refuse, before any work, a setting the run would ignore: ``trainer.steps_per_epoch`` where
        the data sets its own epoch (a fixed training set, or the data group's own key)."""
        steps = cfg.trainer.steps_per_epoch
        if steps is not None and steps != task.steps_per_epoch:
            raise ConfigError(f"trainer.steps_per_epoch={steps} is not used with {task.kind} data: its epoch is "
                              f"{task.steps_per_epoch} batches, set by the data group (a fixed training set, "
                              "or the group's own data.steps_per_epoch); leave trainer.steps_per_epoch null")

    @classmethod
    def reports_best(cls, task) -> bool:
        """Whether a finished run reports its best validation epoch's weights (never selected on test
        data) rather than its last ones: ``best.pt`` against ``last.pt`` for ``unroll-eval``."""
        return task.monitor.startswith("val/")

    # ------------------------------------------------------------------ shared pieces
    def trainable(self, params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        return [p for p in params if p.requires_grad]

    def make_optimizer(self, param_groups) -> torch.optim.Optimizer:
        # partial: a call-site list of param-group dicts would otherwise be turned into a config
        return instantiate(self.optim_cfg, _partial_=True)(param_groups)

    def train_step(self, optimizer: torch.optim.Optimizer, batch, depth: int | None = None) -> torch.Tensor:
        """One optimizer step; returns the detached loss (not read back, to keep the device busy)."""
        # a graph replays the casts it recorded: autocast's cast cache must stay off around it
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None, cache_enabled=self.graphed_loss is None):
            if self.graphed_loss is not None:
                loss = self.graphed_loss(batch, depth)
            else:
                loss = self.task.loss(self.forward(batch[0], depth), batch, self.model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.s.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
        optimizer.step()
        self.optimizer = optimizer
        self.global_step += 1
        self.callbacks.after_step(self, self.global_step)
        return loss.detach()

    @staticmethod
    def check_finite(loss_sum: torch.Tensor, count: int) -> float:
        """Read back the mean loss; raise if it is NaN or infinite."""
        mean = loss_sum.item() / max(count, 1)
        if not math.isfinite(mean):
            raise NonFiniteLossError(
                f"training loss became {mean}: stopped; the last good checkpoint is kept "
                "(try a smaller optim.lr or trainer.grad_clip)")
        return mean

    def better(self, value: float, best: float) -> bool:
        """Whether ``value`` improves on ``best`` for the task's monitored metric."""
        return value < best if self.task.monitor_mode == "min" else value > best

    def reached(self, value: float) -> bool:
        """Whether ``value`` of the monitored metric reaches ``trainer.stop_at`` (null: never)."""
        target = self.s.stop_at
        if target is None:
            return False
        return value <= target if self.task.monitor_mode == "min" else value >= target

    def worst(self) -> float:
        return math.inf if self.task.monitor_mode == "min" else -math.inf

    def rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "task": self.task.state_dict()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        self.task.load_state_dict(state["task"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def save(self, improved: bool = False, **state: Any) -> None:
        """Write ``last.pt`` (and ``best.pt`` when ``improved``) as one pair; remember the best model."""
        self.schedule_state = state
        if improved:
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if not self.s.checkpoint:
            return
        full = {"model": self.model.state_dict(), "rng": self.rng_state(), "config": self.config,
                "history": self.recorder.history, "global_step": self.global_step,
                "wall_s": self.recorder.elapsed(), "device": self.device.type,
                "callbacks": self.callbacks.state_dict(), **state}
        CheckpointStore(self.recorder.dir).save(full, best=full if improved else self.carried_best)
        self.carried_best = None

    def save_phase(self) -> None:
        """A checkpoint after a phase that follows the schedule (a callback's, e.g. L-BFGS polishing):
        the schedule's last saved position with the model as it is now, which becomes the best one."""
        if self.schedule_state is not None:
            self.save(improved=True, **self.schedule_state)

    def restart_schedule(self) -> None:
        """Train the whole schedule again from the model as it is now: a phase of a callback that
        repeats training (a pruning round). The optimizer, scheduler, epoch count and best model start
        afresh; the step count, history and data stream go on, and the first save of the new schedule
        holds the callbacks' state of the new phase, so an interrupted phase resumes inside itself."""
        self.resume_state, self.best_state, self.carried_best = None, None, None
        self.run_schedule()
        if self.recorder.history:
            self.recorder.write_history_file()

    def restore(self, state: dict[str, Any]) -> None:
        """Model, RNG, history, step count, seconds so far and best model of a checkpoint."""
        self.model.load_state_dict(state["model"])
        self.set_rng_state(state["rng"])
        self.recorder.resume(state["history"], state.get("wall_s", 0.0))  # older checkpoints held no wall_s
        self.global_step = state["global_step"]
        self.callbacks.load_state_dict(state.get("callbacks", {}))  # older checkpoints held none
        self.carried_best = state.get("best_checkpoint")
        self.best_state = self.carried_best["model"] if self.carried_best is not None else None

    def progress(self, total: int | None, initial: int = 0, unit: str = "step") -> tqdm:
        """A bar on a terminal (``trainer.progress``); none in a log file, where :meth:`span` logs lines."""
        return progress_bar(self.s.progress, total, initial, unit)

    def span(self, name: str, total: int, bar: tqdm, **start) -> Span:
        """The progress of one epoch or stage (:class:`unroll_cli.train.progress.Span`)."""
        return Span(name, total, bar, self.recorder, self.s.progress, **start)

    def fit(self) -> None:
        """Train, with the callbacks' ``on_fit_start`` before and ``on_fit_end`` after."""
        self.callbacks.on_fit_start(self)
        self.run_schedule()
        if self.recorder.history:  # also when a resume found nothing left to train (a new directory)
            self.recorder.write_history_file()
        self.callbacks.on_fit_end(self)

    # ------------------------------------------------------------------ end-to-end schedule
    def run_schedule(self) -> None:
        params = self.trainable(self.model.parameters())
        if not params or self.s.max_epochs == 0:
            log.info("nothing to train (%d trainable parameters, %d epochs)", sum(p.numel() for p in params),
                     self.s.max_epochs)
            return
        optimizer = self.make_optimizer(params)
        scheduler = instantiate(self.sched_cfg, optimizer=optimizer)
        epoch, best, stale = 0, self.worst(), 0
        if self.resume_state is not None:
            state = self.resume_state
            self.restore(state)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            epoch, best, stale = state["epoch"], state["best"], state["stale"]
            log.info("resumed at epoch %d", epoch)

        def save(improved: bool = False) -> None:
            self.save(improved, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                      epoch=epoch, best=best, stale=stale)

        if epoch == 0 or self.resume_state is not None:
            save()  # an interruption in the first epoch leaves a checkpoint; a resumed run its pair
        steps = self.task.steps_per_epoch
        bar = self.progress(self.s.max_epochs * steps, epoch * steps)
        with bar:
            while epoch < self.s.max_epochs:
                started, loss_sum, count = time.time(), torch.zeros((), device=self.device), 0
                if self.s.scheduler_step_at_start:
                    with warnings.catch_warnings():  # the order is deliberate here
                        warnings.simplefilter("ignore", UserWarning)
                        scheduler.step()
                lr = optimizer.param_groups[0]["lr"]
                span = self.span(f"epoch {epoch + 1}/{self.s.max_epochs}", steps, bar)
                for batch in self.task.train_batches():
                    loss_sum += self.train_step(optimizer, batch)
                    count += 1
                    bar.update(1)
                    if count % CHECK_EVERY == 0:
                        span.read_back(self.check_finite(loss_sum, count), count, self.global_step)
                train_loss = self.check_finite(loss_sum, count)
                if not self.s.scheduler_step_at_start:
                    scheduler.step()
                val = self.task.validate(self.model)
                epoch += 1
                monitored = val[self.task.monitor]
                improved = self.better(monitored, best)
                best, stale = (monitored, 0) if improved else (best, stale + 1)
                row = {"epoch": epoch, "step": self.global_step, "lr": lr, "train/loss": train_loss,
                       **val, "seconds": round(time.time() - started, 3)}
                stop = self.callbacks.on_validation(self, epoch, row)
                self.recorder.add_row(row)
                bar.set_postfix_str(f"epoch {epoch}/{self.s.max_epochs}, loss {train_loss:.4g}, "
                                    f"{self.task.monitor} {monitored:.4g}")
                log.info("epoch %d/%d  loss %.5g  %s %s", epoch, self.s.max_epochs, train_loss,
                         self.task.monitor, formatting.number(monitored))
                save(improved)  # before history.csv, which is then never ahead of the checkpoint
                self.recorder.write_history(step=self.global_step)
                if stop is not None:
                    raise stop
                if self.s.patience is not None and stale >= self.s.patience:
                    log.info("early stop: %s has not improved for %d epochs", self.task.monitor, stale)
                    break
                if self.reached(monitored):
                    log.info("stop: %s reached trainer.stop_at=%g", self.task.monitor, self.s.stop_at)
                    break
        if self.best_state is not None and self.reports_best(self.task):
            self.model.load_state_dict(self.best_state)
