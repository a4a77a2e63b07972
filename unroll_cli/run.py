"""One run, start to end: validate, build data and model, train, evaluate, record.

``run(cfg)`` is the whole flow of one run (docs/architecture.md) and is callable from tests without the CLI.
It returns the optimized metric (``cfg.optimized_metric``) so Hydra sweepers can minimise it.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from unroll_cli.errors import ConfigError
from unroll_cli.evaluate.diagnostics import PerValidation, check_diagnostics, record_diagnostics
from unroll_cli.memory import require_memory
from unroll_cli.record.dictionaries import write_dictionaries
from unroll_cli.record.recorder import RunRecorder
from unroll_cli.record.report import write_report
from unroll_cli.report.formatting import number
from unroll_cli.tasks.base import check_model_protocol, check_task_protocol
from unroll_cli.train.callbacks import Callback, Callbacks, RunPruned, check_callbacks
from unroll_cli.train.checkpoints import (CHANGEABLE_ON_RESUME, CheckpointStore, best_beside, checkpoint_file,
                                          load_checkpoint, resume_conflicts)
from unroll_cli.train.cpu_memory import keep_freed_memory
from unroll_cli.validation import changeable_keys, retired_keys, schema_defaults, validate

log = logging.getLogger(__name__)

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible: use device=auto or device=cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def instantiate_checked(config, **kwargs):
    """``hydra.utils.instantiate``, with a bad value or missing file found by the class raised as
    itself (a one-line message) rather than wrapped in Hydra's InstantiationException."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, FileNotFoundError):
            raise cause from None
        if isinstance(cause, ValueError):
            raise ConfigError(str(cause)) from None
        raise


def build_task(cfg: DictConfig, device: torch.device):
    """Instantiate ``data._target_`` (the task); every task also gets the run's seed, device and
    trainer settings, and takes from them what it needs (e.g. batches per epoch).
    A task class's ``memory_estimate`` is checked against the device first."""
    estimate = getattr(get_class(cfg.data._target_), "memory_estimate", None)
    if estimate is not None:
        require_memory(estimate(cfg.data, cfg.trainer), cfg, device)
    task = instantiate_checked(cfg.data, seed=cfg.seed, device=device, trainer=cfg.trainer, _recursive_=False)
    check_task_protocol(task, cfg.data._target_)
    return task


def build_model(model_cfg: DictConfig, task, cfg: DictConfig | None = None) -> torch.nn.Module:
    """Instantiate ``model._target_`` with the sizes the task provides (e.g. the matrix A); with the
    run's ``cfg``, a model class's ``memory_estimate`` is checked against the device first."""
    kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    kwargs.pop("name")
    if kwargs.pop("task") != task.kind:
        raise ConfigError(f"model={model_cfg.name} is for {model_cfg.task} data, but the data is "
                          f"{task.kind}: choose a {model_cfg.task} dataset or another model")
    estimate = getattr(get_class(model_cfg._target_), "memory_estimate", None)
    if cfg is not None and estimate is not None:
        require_memory(estimate(kwargs, **task.model_kwargs(), train_batch=task.batch_size,
                                eval_batch=task.eval_batch_size), cfg, task.device)
    return instantiate_checked(kwargs, **task.model_kwargs())


@contextmanager
def refused_as(key: str):
    """Whatever a class raises for the values it was given becomes one ConfigError naming ``key``."""
    try:
        yield
    except Exception as error:
        cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        reason = str(cause).splitlines()[0] if str(cause) else ""
        raise ConfigError(f"{key}: {type(cause).__name__}: {reason} (check the {key}.* values)") from None


def check_optimizer(cfg: DictConfig) -> None:
    """Build the optimizer and scheduler on a dummy parameter and step them: a bad ``optim`` or
    ``sched`` value (betas out of range, ``sched.step_size=0``, ...) fails here, before any work."""
    parameter = torch.zeros(1, requires_grad=True)
    with refused_as("optim"):
        optimizer = instantiate(cfg.optim, _partial_=True)([parameter])
    with refused_as("sched"):
        scheduler = instantiate(cfg.sched, optimizer=optimizer)
        for _ in range(3):
            optimizer.step()
            scheduler.step()


def build_extensions(cfg: DictConfig, key: str) -> dict:
    """The named ``callbacks`` or ``diagnostics`` of the config, each built from its ``_target_``; a
    key its class does not take, or a value it refuses, fails naming ``key.NAME``."""
    built = {}
    for name, node in cfg[key].items():
        with refused_as(f"{key}.{name}"):
            built[name] = instantiate(node, _recursive_=False)
    return built


def check_optimized_metric(cfg: DictConfig, task) -> None:
    """``optimized_metric`` must be a metric this task reports."""
    names = task.metric_names()
    if cfg.optimized_metric is not None and cfg.optimized_metric not in names:
        raise ConfigError(f"optimized_metric={cfg.optimized_metric} is not a metric of this run; "
                          f"choose one of {', '.join(names)}")


def resume_point(cfg: DictConfig, device: torch.device) -> dict:
    """The checkpoint ``resume`` names, checked against this run's config and device; its best.pt
    comes along as ``best_checkpoint`` (a resume into a new directory keeps the best epoch)."""
    file = checkpoint_file(cfg.resume)
    state = load_checkpoint(file)
    if state.get("config") is None:
        log.warning("resume=%s: the checkpoint holds no config (an older version wrote it); "
                    "it is not checked against this run's", cfg.resume)
    else:
        changeable = changeable_keys(cfg)
        conflicts = resume_conflicts(state["config"], OmegaConf.to_container(cfg, resolve=True), changeable,
                                     added=schema_defaults(cfg), retired=retired_keys(cfg))
        if conflicts:
            raise ConfigError(f"resume={cfg.resume}: this run's config differs from the checkpoint's in "
                              f"{'; '.join(conflicts)}. A resume continues the same problem and model: only "
                              f"{', '.join([*CHANGEABLE_ON_RESUME, *changeable])} may change "
                              "(start a new run otherwise)")
    if state.get("device", device.type) != device.type:
        raise ConfigError(f"resume={cfg.resume}: the checkpoint was written on {state['device']}, this run "
                          f"is on {device.type} (set device={state['device']})")
    state["best_checkpoint"] = best_beside(file)
    return state


def start_afresh(run_dir: Path) -> None:
    """A run that does not resume starts without the checkpoints and event files of an earlier attempt."""
    CheckpointStore(run_dir).clear()
    shutil.rmtree(run_dir / "tb", ignore_errors=True)


def load_weights(model: torch.nn.Module, weights: dict, where: str) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise ConfigError(f"{where}: its weights do not fit the model its config builds "
                          f"({str(error).splitlines()[0]})") from None


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a cluster's pre-emption, ``kill``) is handled like Ctrl-C."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class SourceModel:
    """A finished run's trained model, evaluated instead of training one (``unroll-eval``): its
    directory and its last and best checkpoints (best None when it has none)."""

    run_dir: str
    last: dict
    best: dict | None

    def reported(self, trainer_class, task) -> tuple[str, dict]:
        """The checkpoint whose weights the run reported, by the trainer's rule: (file name, state)."""
        use_best = self.best is not None and trainer_class.reports_best(task)
        return ("best.pt", self.best) if use_best else ("last.pt", self.last)

    def describe(self, trainer_class, task) -> dict:
        name, state = self.reported(trainer_class, task)
        return {"run": self.run_dir, "checkpoint": name, "epoch": state.get("epoch")}


def run(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None,
        callbacks: dict[str, Callback] | None = None, source: SourceModel | None = None) -> float:
    """Train and evaluate the configured model; write the run directory; return the optimized metric.

    ``callbacks``: trainer callbacks the caller adds to the config's (a sweeper's pruner).
    ``source``: evaluate this trained model instead of training (``unroll-eval``).
    """
    validate(cfg)
    return run_validated(cfg, run_dir, overrides, callbacks, source)


def run_validated(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None,
                  callbacks: dict[str, Callback] | None = None, source: SourceModel | None = None) -> float:
    """:func:`run` of a config its caller has validated (the CLI validates before writing ``.hydra/``)."""
    device = resolve_device(cfg.device)
    resume_state = resume_point(cfg, device) if cfg.resume and source is None else None
    check_optimizer(cfg)
    extensions = {key: build_extensions(cfg, key) for key in ("callbacks", "diagnostics")}
    if device.type == "cpu":
        keep_freed_memory()
    seed_everything(cfg.seed, cfg.deterministic)
    task = build_task(cfg, device)
    check_optimized_metric(cfg, task)
    model = build_model(cfg.model, task, cfg).to(device)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer_class = get_class(cfg.trainer._target_)
    trainer_class.check_model(model, cfg.model.name)
    trainer_class.check_settings(cfg, task)
    check_model_protocol(task, model, cfg.model.name)
    check_callbacks(extensions["callbacks"], model, task, cfg)
    diagnostics = extensions["diagnostics"]
    check_diagnostics(diagnostics, model, cfg.model.name, task)
    per_epoch = {"diagnostics.per_epoch": PerValidation(diagnostics)} if any(d.per_epoch for d in diagnostics.values()) \
        else {}
    callbacks = Callbacks.for_model(model, {**extensions["callbacks"], **(callbacks or {}), **per_epoch})

    run_dir = Path(run_dir)
    if resume_state is None:
        start_afresh(run_dir)
    recorder = RunRecorder(run_dir, tensorboard=cfg.tensorboard,
                           resumed_at=resume_state["global_step"] if resume_state is not None else None)
    recorder.start(model=cfg.model.name, device=str(device), params=params, seed=cfg.seed,
                   overrides=overrides or [],
                   **({"source": source.describe(trainer_class, task)} if source is not None else {}))
    for name, array in task.artifacts().items():
        recorder.write_array(name, array)
    log.info("%s: %d parameters on %s; run directory %s", cfg.model.name, params, device, recorder.dir)
    log.info("data: %s", task.data_source)
    metrics: dict[str, float] = {}
    try:
        with sigterm_as_interrupt():
            if source is None:
                trainer = trainer_class(cfg.trainer, model, task, cfg.optim, cfg.sched, recorder,
                                        resume_state=resume_state, config=OmegaConf.to_container(cfg, resolve=True),
                                        callbacks=callbacks)
                trainer.fit()
            else:
                load_weights(model, source.reported(trainer_class, task)[1]["model"], source.run_dir)
                recorder.resume(source.last.get("history", []), 0.0)  # the training curve the report draws
            model.eval()
            report = task.report(model, cfg.model.name, cfg.paper, recorder.history)
            metrics = write_report(report, recorder, (cfg.paper or {}).get("note"))
            metrics.update(callbacks.metrics())
            metrics.update(record_diagnostics(diagnostics, model, recorder))
            write_dictionaries(model, recorder, cfg.model.name)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM, or a cluster's requeue (submitit exits)
        recorder.fail("interrupted", "interrupted (SIGINT/SIGTERM/requeue); continue with "
                      f"resume={recorder.dir}", metrics)
        log.error("interrupted: checkpoint in %s", recorder.dir / "checkpoints")
        raise
    except RunPruned as pruned:
        recorder.fail("pruned", str(pruned), metrics)
        log.info("%s", pruned)
        raise
    except Exception as error:
        recorder.fail("failed", f"{type(error).__name__}: {error}", metrics)
        raise
    optimized = cfg.optimized_metric or task.primary_metric
    value = float(metrics.get(optimized, float("nan")))
    if optimized not in metrics:
        log.error("optimized_metric=%s is not among this run's metrics: %s", optimized, ", ".join(metrics))
    recorder.finish(metrics, epochs=len(recorder.history), optimized={"name": optimized, "value": value})
    log.info("%s = %s", optimized, number(value))
    return value
