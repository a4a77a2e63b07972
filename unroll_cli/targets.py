"""What a config may make Python run: every ``_target_``, judged by the object it resolves to.

Hydra instantiates whatever a ``_target_`` names, anywhere in the config: the run's data, model,
optimizer and scheduler, and in its own ``hydra`` node the sweeper, the launcher, the callbacks and
the Optuna sampler and pruner; ``logging.config`` also builds the ``class`` (and ``()``) of every
handler and formatter in ``hydra.job_logging`` / ``hydra.hydra_logging``. A target is allowed only
when its dotted path lies in an allowed package (so nothing else is even imported) **and** the object
it resolves to is a class defined there: ``unroll_cli.run.os.system`` is spelled inside the project
but resolves to ``os.system`` and is refused.

Allowed: :data:`ALLOWED_PACKAGES`, plus the packages a config file lists in ``trusted_packages``
(never from the command line: an override cannot widen what overrides may run). Logging classes:
:data:`LOGGING_PACKAGES`. ``hydra.job.env_set`` may set only :data:`ALLOWED_ENV` (thread counts, the
visible GPUs, the data folder), plus the variables a config file lists in ``trusted_env``: an
allow-list, since many variables make other programs run code (``LD_PRELOAD``, ``PYTHONPATH``, but
also ``CC``, ``CXX`` and ``PATH`` for ``torch.compile``). A sweeper's ``params`` may not sweep
``hydra`` keys, whose per-job values Hydra applies (its logging, its environment) before a job can
check them.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Iterable

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig

from unroll_cli.errors import ConfigError

ALLOWED_PACKAGES = (
    "unroll_cli",  # the project's tasks, models and trainers
    "torch.optim",  # optimizers and learning-rate schedulers
    "optuna.samplers", "optuna.pruners",  # the Optuna sweeper's sampler and pruner
    "hydra_plugins",  # installed Hydra plugins: launchers (joblib, submitit) and this project's sweeper
    "hydra._internal.core_plugins",  # Hydra's own basic sweeper and launcher
)
LOGGING_PACKAGES = ("logging", "colorlog")
ALLOWED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "NUMBA_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "PYTORCH_CUDA_ALLOC_CONF",
               "UNROLL_DATA")
TRUST_KEYS = ("trusted_packages", "trusted_env")


def _inside(name: str, packages: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def check_class(path: Any, key: str, packages: Iterable[str]) -> None:
    """Raise :class:`ConfigError` unless ``path`` names a class inside ``packages``."""
    packages = tuple(packages)
    allowed = f"a class of {', '.join(packages)} (see trusted_packages in the README)"
    if not isinstance(path, str) or not _inside(path, packages):
        raise ConfigError(f"{key}={path!r} is not allowed: {allowed}")
    quiet = logging.getLogger("hydra.utils")  # get_object logs its failure too; the error says it once
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        target = get_object(path)
    except Exception as error:  # what an import or attribute lookup raises
        reason = str(error).strip().splitlines()[-1]
        raise ConfigError(f"{key}={path!r} cannot be imported ({reason})") from None
    finally:
        quiet.setLevel(level)
    where = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"
    if not inspect.isclass(target) or not _inside(target.__module__ or "", packages):
        raise ConfigError(f"{key}={path!r} resolves to {where}, which is not allowed: {allowed}")


LOGGING_NODES = ("hydra.job_logging", "hydra.hydra_logging")


def _walk(node: DictConfig | ListConfig, key: str, packages: tuple[str, ...], logging_node: bool) -> None:
    children = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for child in children:
        path = f"{key}.{child}" if isinstance(child, str) else f"{key}[{child}]"
        path = path.lstrip(".")
        try:
            value = node[child]  # interpolations resolved, as instantiate will see them
        except Exception:  # an interpolation that cannot be resolved before the run
            value = "<unresolved interpolation>"
        if child == "_target_":
            check_class(value, path, packages)
        elif logging_node and child in ("class", "()"):
            check_class(value, path, LOGGING_PACKAGES)
        elif logging_node and isinstance(value, str) and value.startswith("ext://") \
                and not value.startswith("ext://sys."):
            raise ConfigError(f"{path}={value!r} is not allowed: only ext://sys.* streams")
        elif isinstance(value, (DictConfig, ListConfig)):
            _walk(value, path, packages, logging_node or path in LOGGING_NODES)


def check_targets(cfg: DictConfig, trusted: Iterable[str] = (), prefix: str = "") -> None:
    """Check every ``_target_`` (and logging class) in ``cfg``; ``prefix`` names its place ("hydra")."""
    _walk(cfg, prefix, ALLOWED_PACKAGES + tuple(trusted), logging_node=False)


def check_hydra_node(hydra: DictConfig, trusted: Iterable[str] = (), trusted_env: Iterable[str] = ()) -> None:
    """The ``hydra`` node: its targets and logging classes, ``job.env_set`` and the sweeper's params."""
    check_targets(hydra, trusted, prefix="hydra")
    allowed = (*ALLOWED_ENV, *trusted_env)
    for name in (hydra.get("job", {}) or {}).get("env_set", {}) or {}:
        if str(name) not in allowed:
            raise ConfigError(f"hydra.job.env_set.{name} is not allowed: a run may set {', '.join(ALLOWED_ENV)} "
                              "(list others in trusted_env in a config file)")
    for key in (hydra.get("sweeper", {}) or {}).get("params", {}) or {}:
        if str(key).lstrip("+~").startswith("hydra"):
            raise ConfigError(f"hydra.sweeper.params.{key} is not allowed: a sweep may not vary Hydra's own "
                              "settings (Hydra applies them to each job before it is checked)")


def refuse_trust_from_overrides(keys: Iterable[str]) -> None:
    """``trusted_packages`` and ``trusted_env`` widen what may run: only a config file may set them."""
    for key in keys:
        name = key.lstrip("+~").split(".")[0]
        if name in TRUST_KEYS:
            raise ConfigError(f"{name} cannot be set from the command line or a sweep: list them in a config "
                              "file (see docs/reliability_and_security.md)")
