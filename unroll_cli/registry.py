"""The registry: every schema stored in Hydra's ConfigStore as ``schema/<group>/<name>`` for the YAML
files' defaults lists, the ``run_uid`` resolver of the run directory names, and ``lookup``.

It imports every task and model module (so that their :func:`~unroll_cli.schema.register_schema`
declarations run): it sits above them, and only the entrypoints and tests call it.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import secrets

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from unroll_cli.schema import (SCHEMAS, AdamConfig, ConstantSchedConfig, CosineSchedConfig, InverseTimeSchedConfig,
                               LayerwiseTrainerConfig, LinearSchedConfig, MultiStepSchedConfig, SGDConfig,
                               StepSchedConfig, TrainConfig,
                               TrainerConfig)

# One value per process, so every use of ${run_uid:} in a run names the same directory, and two
# runs started in the same microsecond (or in two processes) never share one.
_RUN_UID = f"{os.getpid()}{secrets.token_hex(2)}"


def run_uid() -> str:
    """This process's part of a run directory's name (the ``run_uid`` resolver)."""
    return _RUN_UID


def lookup(key, mapping: dict):
    """``${lookup:KEY,{k1: v1, k2: v2}}``: the mapping's value at KEY, numbers compared as numbers
    (``data.sigma`` 25.0 finds 25): a value that follows another key (DenSaE's lam per noise level)."""
    for k, value in mapping.items():
        if k == key or (_is_number(k) and _is_number(key) and float(k) == float(key)):
            return value
    given = ", ".join(map(str, mapping))
    raise ValueError(f"{key!r} is not one of the values it is given for ({given}); set the key's value")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: the schemas shared by every task and model, as (group, name, schema)
SHARED_SCHEMAS = [
    ("optim", "adam", AdamConfig),
    ("optim", "sgd", SGDConfig),
    ("sched", "constant", ConstantSchedConfig),
    ("sched", "step", StepSchedConfig),
    ("sched", "multistep", MultiStepSchedConfig),
    ("sched", "cosine", CosineSchedConfig),
    ("sched", "linear", LinearSchedConfig),
    ("sched", "inverse_time", InverseTimeSchedConfig),
    ("trainer", "end_to_end", TrainerConfig),
    ("trainer", "layerwise", LayerwiseTrainerConfig),
]


def group_schemas() -> list[tuple[str, str, type]]:
    """(group, name, schema) of every group's schemas: the shared ones, and those the task and model
    modules declare (:func:`~unroll_cli.schema.register_schema`), which are imported for that."""
    import unroll_cli.models
    import unroll_cli.tasks

    for package in (unroll_cli.tasks, unroll_cli.models):
        for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
    return [*SHARED_SCHEMAS, *SCHEMAS]


def register_configs() -> None:
    """Store the schemas as ``schema/<group>/<name>`` for the YAML files' defaults lists
    (:func:`group_schemas`), the ``run_uid`` resolver of the run directory names and ``lookup``."""
    OmegaConf.register_new_resolver("run_uid", run_uid, replace=True)
    OmegaConf.register_new_resolver("lookup", lookup, replace=True)
    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node=TrainConfig)
    for group, name, node in group_schemas():
        cs.store(group=f"schema/{group}", name=name, node=node)
