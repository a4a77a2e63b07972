"""One run, start to end: validate, build data and model, train, evaluate, record.

``run(cfg)`` is the whole flow of DESIGN.md section 1 and is callable from tests without the CLI.
It returns the optimized metric (``cfg.optimized_metric``) so Hydra sweepers can minimise it.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from unroll_cli.config import ConfigError, validate
from unroll_cli.record.recorder import RunRecorder
from unroll_cli.record.results import evaluate_classification, evaluate_sparse_coding
from unroll_cli.sweep.optuna_study import RunPruned
from unroll_cli.train.cpu_memory import keep_freed_memory
from unroll_cli.train.trainer import checkpoint_path

log = logging.getLogger(__name__)

PRIMARY_METRIC = {"sparse_coding": "test/nmse_db", "classification": "test/acc"}


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
    """Instantiate ``data._target_``; every task also gets the run's seed, device, trainer and eval
    settings, and takes from them what it needs (batches per epoch, loss, metric conventions)."""
    return instantiate_checked(cfg.data, seed=cfg.seed, device=device, trainer=cfg.trainer,
                               eval=cfg.eval, _recursive_=False)


def build_model(model_cfg: DictConfig, task) -> torch.nn.Module:
    """Instantiate ``model._target_`` with the sizes the task provides (e.g. the matrix A)."""
    kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    kwargs.pop("name")
    if kwargs.pop("task") != task.kind:
        raise ConfigError(f"model={model_cfg.name} is for {model_cfg.task} data, but the data is "
                          f"{task.kind}: choose a {model_cfg.task} dataset or another model")
    return instantiate_checked(kwargs, **task.model_kwargs())


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


def run(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None,
        pruning: Callable[[str], Callable[[int, float], None] | None] | None = None) -> float:
    """Train and evaluate the configured model; write the run directory; return the optimized metric.

    ``pruning``, given the task's monitor mode ("min"/"max"), returns the callback the trainer calls
    after every validation (a sweeper's pruner), or None.
    """
    validate(cfg)
    if cfg.resume:
        checkpoint_path(cfg.resume)  # a wrong path is an input error, found before any work
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()
    seed_everything(cfg.seed, cfg.deterministic)
    task = build_task(cfg, device)
    model = build_model(cfg.model, task).to(device)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer_class = get_class(cfg.trainer._target_)

    recorder = RunRecorder(run_dir, tensorboard=cfg.tensorboard)
    recorder.start(model=cfg.model.name, device=str(device), params=params, seed=cfg.seed,
                   overrides=overrides or [])
    for name, array in task.artifacts().items():
        recorder.write_array(name, array)
    log.info("%s: %d parameters on %s; run directory %s", cfg.model.name, params, device, recorder.dir)
    metrics: dict[str, float] = {}
    try:
        with sigterm_as_interrupt():
            trainer = trainer_class(cfg.trainer, model, task, cfg.optim, cfg.sched, recorder, resume=cfg.resume,
                                    on_validation=pruning(task.monitor_mode) if pruning else None)
            trainer.fit()
            model.eval()
            evaluate = {"sparse_coding": evaluate_sparse_coding,
                        "classification": evaluate_classification}[task.kind]
            metrics = evaluate(cfg, model, task, recorder)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM, or a cluster's requeue (submitit exits)
        recorder.fail("interrupted", "interrupted (SIGINT/SIGTERM/requeue); continue with "
                      f"resume={recorder.dir}", metrics)
        log.error("interrupted: checkpoint in %s", recorder.checkpoints)
        raise
    except RunPruned as pruned:
        recorder.fail("pruned", str(pruned), metrics)
        log.info("%s", pruned)
        raise
    except Exception as error:
        recorder.fail("failed", f"{type(error).__name__}: {error}", metrics)
        raise
    optimized = cfg.optimized_metric or PRIMARY_METRIC[task.kind]
    value = float(metrics.get(optimized, float("nan")))
    if optimized not in metrics:
        log.error("optimized_metric=%s is not among this run's metrics: %s", optimized, ", ".join(metrics))
    recorder.finish(metrics, epochs=len(recorder.history), optimized={"name": optimized, "value": value})
    log.info("%s = %.4f", optimized, value)
    return value


def earlier_record(run_dir: str | Path, overrides: list[str]) -> dict:
    """``metrics.json`` of an earlier run of the same job (same overrides) in ``run_dir``, or {}."""
    file = Path(run_dir) / "metrics.json"
    if not file.is_file():
        return {}
    record = json.loads(file.read_text())
    return record if record.get("overrides") == overrides else {}


def completed_value(run_dir: str | Path, overrides: list[str]) -> float | None:
    """The optimized metric of a run already completed in ``run_dir`` with the same overrides
    (a re-run sweep skips it), else None."""
    record = earlier_record(run_dir, overrides)
    if record.get("status") != "completed":
        return None
    value = record.get("optimized", {}).get("value")
    return float("nan") if value is None else float(value)


def interrupted_checkpoint(run_dir: str | Path, overrides: list[str]) -> bool:
    """Whether the same job was interrupted in ``run_dir`` and left a checkpoint to resume from
    (a failed run starts again from scratch: resuming would repeat its failure)."""
    return (earlier_record(run_dir, overrides).get("status") == "interrupted"
            and (Path(run_dir) / "checkpoints" / "last.pt").is_file())
