"""The checks of a composed config before any work: keys the schemas lack, NaN and infinity, each
schema's allowed values (:func:`unroll_cli.schema.constrained`), callbacks and diagnostics, and every
``_target_`` (:mod:`unroll_cli.targets`); and what the schemas mark: the keys a resumed run may
change and those that change only an evaluation (``unroll-eval``).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from unroll_cli.errors import ConfigError
from unroll_cli.schema import PaperConfig, TrainConfig
from unroll_cli.targets import check_targets

GROUPS = ("data", "model", "optim", "sched", "trainer")
EXTENSIONS = ("callbacks", "diagnostics")  # name -> _target_ node; each class checks its own keys


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def unknown_key(key: str, schema: type) -> str:
    """The message for ``key``, which ``schema`` (its node's type) lacks: the closest keys it has, or
    all of them; and, in a group, the group's other schemas that have it (the option chosen decides)."""
    from unroll_cli.registry import group_schemas

    parent, _, name = key.rpartition(".")
    known = sorted(f.name for f in fields(schema)) if is_dataclass(schema) else []
    message = f"{key} is not a key of {parent or 'the config'} ({schema.__name__})"
    others = [other.__name__ for group, _, other in group_schemas()
              if group == parent and other is not schema and name in {f.name for f in fields(other)}]
    if others:
        message += f": it is a key of {', '.join(others)}, another {parent} option, not of the one chosen"
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        message += f"; did you mean {' or '.join('.'.join(filter(None, (parent, c))) for c in close)}?"
    elif not others:
        message += f"; its keys: {', '.join(known)}"
    return message


def _check_keys(cfg: DictConfig) -> None:
    """Keys added with ``+key=value`` bypass Hydra's schema check: refuse those the schema lacks."""
    nodes = [("", cfg, TrainConfig)] + [(f"{key}.", cfg[key], OmegaConf.get_type(cfg[key])) for key in GROUPS]
    for prefix, node, schema in nodes:
        if is_dataclass(schema):
            known = {f.name for f in fields(schema)}
            for extra in sorted(set(node.keys()) - known):
                raise ConfigError(unknown_key(f"{prefix}{extra}", schema))
    if cfg.paper is not None:
        try:
            OmegaConf.merge(OmegaConf.structured(PaperConfig), cfg.paper)
        except OmegaConfBaseException as error:
            key = getattr(error, "full_key", None) or "paper"
            raise ConfigError(f"paper.{key.removeprefix('paper.')}: {str(error).splitlines()[0]} "
                              f"(a paper config has {', '.join(f.name for f in fields(PaperConfig))})") from None


def _check_finite(node: Any, key: str) -> None:
    """No NaN or infinity anywhere in the run's settings: each one fails later, far from its cause."""
    if isinstance(node, dict):
        for child, value in node.items():
            _check_finite(value, f"{key}.{child}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _check_finite(item, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node} is not allowed: a finite number")


def _check_constraints(node: DictConfig, key: str, schema: type | None = None) -> None:
    """The allowed values a schema declares for its fields (:func:`constrained`); ``schema``: the
    node's own type when not given."""
    schema = schema or OmegaConf.get_type(node)
    if not is_dataclass(schema):
        return
    for f in fields(schema):
        if "ok" in f.metadata and f.name in node and not f.metadata["ok"](node[f.name]):
            value = node[f.name]
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise ConfigError(f"{key}{'.' if key else ''}{f.name}={value!r} is not allowed: {f.metadata['allowed']}")


def changeable_keys(cfg: DictConfig) -> list[str]:
    """The keys the schemas mark as changeable on resume (:func:`constrained`)."""
    return _marked_keys(cfg, ("changeable",))


def evaluation_keys(cfg: DictConfig) -> list[str]:
    """The keys the schemas mark as changing only the evaluation (:func:`evaluation_only`), the
    changeable ones among them."""
    return _marked_keys(cfg, ("changeable", "evaluation"))


def _marked_keys(cfg: DictConfig, marks: tuple[str, ...]) -> list[str]:
    keys = []
    for group in GROUPS:
        schema = OmegaConf.get_type(cfg[group]) if cfg.get(group) is not None else None
        if is_dataclass(schema):
            keys += [f"{group}.{f.name}" for f in fields(schema) if any(f.metadata.get(m) for m in marks)]
    return keys


def schema_defaults(cfg: DictConfig) -> dict[str, Any]:
    """``group.key: default`` of every field of the groups' schemas; no callbacks or diagnostics."""
    defaults = {}
    for group in GROUPS:
        schema = OmegaConf.get_type(cfg[group]) if cfg.get(group) is not None else None
        if is_dataclass(schema):
            for f in fields(schema):
                if f.default is not MISSING_FIELD:
                    defaults[f"{group}.{f.name}"] = f.default
                elif f.default_factory is not MISSING_FIELD:
                    defaults[f"{group}.{f.name}"] = f.default_factory()
    for key in EXTENSIONS:  # none, flattened as a checkpoint's config is (checkpoints.flatten)
        defaults[key] = None
    return defaults


def retired_keys(cfg: DictConfig) -> list[str]:
    """``group.key`` of the keys the groups' schemas retired (``RETIRED``): a stored config of an
    older version that has them is read without them."""
    keys = []
    for group in GROUPS:
        schema = OmegaConf.get_type(cfg[group]) if cfg.get(group) is not None else None
        keys += [f"{group}.{key}" for key in getattr(schema, "RETIRED", ())]
    return keys


def validate(cfg: DictConfig) -> None:
    """Check keys, NaN/infinity, the values each schema allows, then the targets.

    Raises :class:`ConfigError` naming the key and the allowed values.
    """
    for key in GROUPS:
        if cfg.get(key) is None:
            raise ConfigError(f"{key} is missing (removed with ~{key}?): choose one of the {key} options "
                              "(unroll-train --help lists them)")
    _check_keys(cfg)
    _check_constraints(cfg, "", TrainConfig)
    if cfg.paper is not None:
        _check_constraints(cfg.paper, "paper", PaperConfig)
    for key in GROUPS:
        try:
            resolved = OmegaConf.to_container(cfg[key], resolve=True)
        except InterpolationResolutionError as error:  # ${...} naming a key this config lacks
            raise ConfigError(f"{error.full_key}: {str(error).splitlines()[0]} in this config") from None
        _check_finite(resolved, key)
        _check_constraints(cfg[key], key)
    for key in EXTENSIONS:
        named = cfg.get(key)  # a run directory's config from before the key existed has none
        for name, node in (named.items() if named is not None else []):
            if not (OmegaConf.is_dict(node) and "_target_" in node):
                raise ConfigError(f"{key}.{name} is not allowed: a node with a _target_ (the class of the {key[:-1]})")
        if named is not None:
            _check_finite(OmegaConf.to_container(named, resolve=True), key)
    _require(cfg.device in ("auto", "cpu", "cuda"), "device", cfg.device, "auto, cpu or cuda")
    _require(cfg.optim.get("lr", 1) > 0, "optim.lr", cfg.optim.get("lr"), "a number > 0")
    trainer = cfg.trainer
    _require(not (trainer.get("cuda_graphs") and trainer.get("compile")), "trainer.cuda_graphs",
             trainer.get("cuda_graphs"), "false with trainer.compile=true (choose one)")
    check_targets(cfg, trusted=list(cfg.trusted_packages))  # last: it imports the targets' packages
