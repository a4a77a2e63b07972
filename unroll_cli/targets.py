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
:data:`LOGGING_PACKAGES`. ``hydra.job.env_set`` may not set variables that make other programs load
code (:data:`REFUSED_ENV_PREFIXES`).
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
REFUSED_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON", "BASH_ENV", "ENV", "PERL5", "NODE_OPTIONS")
TRUST_KEY = "trusted_packages"


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


def check_hydra_node(hydra: DictConfig, trusted: Iterable[str] = ()) -> None:
    """The ``hydra`` node: its targets and logging classes, and ``job.env_set``."""
    check_targets(hydra, trusted, prefix="hydra")
    for name in (hydra.get("job", {}) or {}).get("env_set", {}) or {}:
        if str(name).upper().startswith(REFUSED_ENV_PREFIXES):
            raise ConfigError(f"hydra.job.env_set.{name} is not allowed: variables that make programs "
                              f"load code ({', '.join(REFUSED_ENV_PREFIXES)}...) cannot be set")


def refuse_trust_from_overrides(keys: Iterable[str]) -> None:
    """``trusted_packages`` widens what may run: only a config file may set it."""
    for key in keys:
        if key.lstrip("+~") == TRUST_KEY:
            raise ConfigError(f"{TRUST_KEY} cannot be set from the command line or a sweep: list trusted "
                              "packages in a config file (see the README)")
