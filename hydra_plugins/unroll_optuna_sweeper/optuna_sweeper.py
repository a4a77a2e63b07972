"""``hydra/sweeper=unroll_optuna``: an Optuna study driven by Hydra, with pruning and resume.

Hydra only instantiates sweepers defined under ``hydra_plugins``, so the plugin class lives here;
the work is in :mod:`unroll_cli.sweep.optuna_study`, imported when a sweep starts (every Hydra
application imports this module while scanning plugins, so it stays light).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

TARGET = "hydra_plugins.unroll_optuna_sweeper.optuna_sweeper.OptunaSweeper"


@dataclass
class OptunaSweeperConf:
    """Settings of ``hydra.sweeper`` (the same names as hydra-optuna-sweeper where they overlap)."""

    _target_: str = TARGET
    direction: str = "minimize"  # minimize | maximize: the task function's return value
    n_trials: int = 20  # finished trials (completed or pruned) the study should hold at the end
    n_jobs: int = 1  # trials launched together, as one launcher batch
    study_name: str = "unroll"
    storage: Optional[str] = None  # default: sqlite:///<hydra.sweep.dir>/optuna.db
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner",
                                                 "n_startup_trials": 5, "n_warmup_steps": 2})
    params: Dict[str, str] = field(default_factory=dict)  # key: Hydra sweep, e.g. interval(0.1, 1)


ConfigStore.instance().store(group="hydra/sweeper", name="unroll_optuna", node=OptunaSweeperConf,
                             provider="unroll-train")


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from unroll_cli.sweep.optuna_study import run_study

        return run_study(self, arguments, **self.settings)
