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
    from unroll_cli.run import completed_value, run  # torch is imported only when a job really runs

    hydra_cfg = HydraConfig.get()
    run_dir, overrides = hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task)
    done = completed_value(run_dir, overrides)
    if done is not None:  # the same job of a re-run sweep: keep its results
        log.info("already completed in %s: skipped", run_dir)
        print(f"results: {run_dir} (already completed)")
        return done
    try:
        value = run(cfg, run_dir, overrides)
    except (ConfigError, FileNotFoundError) as error:  # bad input found before any training
        log.error("%s", error)
        sys.exit(2)
    print(f"results: {run_dir}")
    return value


def report_main() -> None:
    from unroll_cli.report.aggregate import main

    sys.exit(main())


if __name__ == "__main__":
    train_main()
