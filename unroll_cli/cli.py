"""The entrypoints: ``unroll-train`` (a thin ``@hydra.main`` around :func:`unroll_cli.run.run`)
and ``unroll-report`` (sweep tables, :mod:`unroll_cli.report.aggregate`)."""
from __future__ import annotations

import logging
import os
import secrets
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from unroll_cli.config import ConfigError, register_configs

log = logging.getLogger("unroll_cli")

# One value per process, so every use of ${run_uid:} in a run names the same directory, and two
# runs started in the same microsecond (or in two processes) never share one.
_RUN_UID = f"{os.getpid()}{secrets.token_hex(2)}"
OmegaConf.register_new_resolver("run_uid", lambda: _RUN_UID, replace=True)
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def train_main(cfg: DictConfig) -> float:
    from unroll_cli.run import completed_value, interrupted_checkpoint, run  # torch only when a job runs
    from unroll_cli.sweep.optuna_study import trial_reporter

    hydra_cfg = HydraConfig.get()
    run_dir, overrides = hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task)
    done = completed_value(run_dir, overrides)
    if done is not None:  # the same job of a re-run sweep: keep its results
        log.info("already completed in %s: skipped", run_dir)
        print(f"results: {run_dir} (already completed)")
        return done
    if cfg.resume is None and interrupted_checkpoint(run_dir, overrides):
        log.info("interrupted earlier in %s: resumed from its last checkpoint", run_dir)
        cfg.resume = run_dir  # the same job of a re-run sweep, or a requeued cluster job
    try:
        value = run(cfg, run_dir, overrides, pruning=trial_reporter(hydra_cfg))
    except (ConfigError, FileNotFoundError) as error:  # bad input found before any training
        log.error("%s", error)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run is marked interrupted; stop the sweep too
        print(f"interrupted: {run_dir} (run the same command again to resume)", file=sys.stderr)
        sys.exit(130)
    print(f"results: {run_dir}")
    return value


def report_main() -> None:
    from unroll_cli.report.aggregate import main

    sys.exit(main())


if __name__ == "__main__":
    train_main()
