"""The Hydra task function of ``unroll-train``: one job, from its run directory to its result.

Each job (a single run, or one job of a multirun on any launcher) locks and claims its directory
(:mod:`unroll_cli.record.run_dir`), writes ``.hydra/`` there (Hydra's own writing is off, so a
refused job never overwrites another run's files), and calls :func:`unroll_cli.run.run`.

Errors: bad input (config, files, a busy or foreign run directory) is one logged line, exit code 2;
a run that fails while training (a non-finite loss) is recorded as failed, exit code 1. In a
multirun neither stops the sweep: the job raises :class:`JobFailed`, which Hydra records for that
job while the others run, and the sweep exits non-zero at the end. A job whose config is refused
is recorded as ``failed`` with the error in its ``metrics.json``, so ``unroll-report`` lists it.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from unroll_cli.interrupts import interrupted
from unroll_cli.errors import ConfigError, TrainingFailure
from unroll_cli.registry import register_configs
from unroll_cli.validation import validate
from unroll_cli.record.run_dir import claim, locked, write_hydra_files
from unroll_cli.targets import check_hydra_node, refuse_trust_from_overrides

log = logging.getLogger("unroll_cli")
register_configs()


class JobFailed(CompactHydraException):
    """One job of a multirun failed (its error is in its metrics.json); the others still run."""


def run_job(cfg: DictConfig, hydra_cfg: DictConfig, run_dir: Path, overrides: list[str]) -> float:
    """Claim ``run_dir`` (skip, resume or start), then run; input errors raise ConfigError."""
    refuse_trust_from_overrides(o.partition("=")[0] for o in overrides)
    check_hydra_node(hydra_cfg, trusted=list(cfg.trusted_packages), trusted_env=list(cfg.trusted_env))
    decision = claim(run_dir, overrides, cfg.resume)
    if decision.note:
        log.info("%s", decision.note)
    if decision.action == "skip":  # the same job of a re-run sweep: keep its results
        print(f"results: {run_dir} (already completed)")
        return decision.value
    try:
        validate(cfg)  # before the data and the model are built
        write_hydra_files(run_dir, cfg, hydra_cfg, overrides)
        if decision.action == "resume" and cfg.resume is None:
            cfg.resume = str(run_dir)  # the same job of a re-run sweep, a requeued or a killed job
        from unroll_cli.run import run_validated
        from unroll_cli.sweep.optuna_study import trial_callbacks

        return run_validated(cfg, run_dir, overrides, callbacks=trial_callbacks(hydra_cfg))
    except (ConfigError, FileNotFoundError) as error:  # a sweep's job is recorded as failed
        # (an earlier resumable state is kept)
        if hydra_cfg.mode == RunMode.MULTIRUN and decision.action == "fresh":
            from unroll_cli.record.recorder import RunRecorder

            write_hydra_files(run_dir, cfg, hydra_cfg, overrides)
            recorder = RunRecorder(run_dir, tensorboard=False)
            recorder.start(model=cfg.model.get("name"), overrides=overrides)
            recorder.fail("failed", f"{type(error).__name__}: {error}")
        raise


def resume_hint(hydra_cfg: DictConfig, run_dir: Path) -> str:
    """How to continue an interrupted job: the same command only reaches the same directory when the
    command line names it (the default directories carry the time they were made)."""
    key = "hydra.sweep.dir" if hydra_cfg.mode == RunMode.MULTIRUN else "hydra.run.dir"
    if any(o.lstrip("+").partition("=")[0] == key for o in hydra_cfg.overrides.hydra):
        return "run the same command again to resume"
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"run the same command again with {key}={hydra_cfg.sweep.dir} to resume the sweep"
    return f"run the same command again with resume={run_dir} to resume"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def train_job(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir, overrides = Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        with locked(run_dir):
            value = run_job(cfg, hydra_cfg, run_dir, overrides)
    except (ConfigError, FileNotFoundError, TrainingFailure) as error:
        if interrupted():  # Ctrl-C inside a library's import can surface as another error
            print("unroll-train: interrupted", file=sys.stderr)
            sys.exit(130)
        log.error("%s", error)
        if multirun:
            raise JobFailed(f"{run_dir}: {error}") from None
        sys.exit(1 if isinstance(error, TrainingFailure) else 2)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run is marked interrupted; stop the sweep too
        print(f"interrupted: {run_dir} ({resume_hint(hydra_cfg, run_dir)})", file=sys.stderr)
        sys.exit(130)
    print(f"results: {run_dir}")
    return value

