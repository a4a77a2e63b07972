"""One source for each default. A model or task option has three places a default could live: its
schema's field (the source), its YAML file, and its class's constructor keyword. Discovered from the
registry and the files (no value retyped here): every constructor default equals the schema default
of the same key, and no YAML file under conf/model/ or conf/data/ sets a key to exactly its schema's
default (a second source that could drift; a different value is a deliberate setting of the option)."""
from __future__ import annotations

import inspect
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from conftest import compose_cfg
from unroll_cli.registry import register_configs
from unroll_cli.schema import SCHEMAS

CONF = Path(__file__).parents[1] / "unroll_cli" / "conf"
GROUPS = ("model", "data")
# keys a model file names itself by (which class, which option, which kind of data), not options
IDENTITY = {"model": {"_target_", "name", "task"}, "data": {"_target_"}}
UNSET = object()  # no concrete default: MISSING, an interpolation, or no such key

register_configs()
REGISTERED = {(group, name): schema for group, name, schema in SCHEMAS if group in GROUPS}


def option_files(group: str) -> list[Path]:
    return sorted((CONF / group).glob("*.yaml"))


def option_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def is_global(path: Path) -> bool:
    """A ``# @package _global_`` file: its option's keys are under its group's node."""
    return any(line.strip().replace(" ", "") == "#@package_global_"
               for line in path.read_text(encoding="utf-8").splitlines()[:5])


def own_keys(path: Path) -> dict[str, Any]:
    """The keys the YAML file itself sets for its option (as ``yaml.safe_load`` reads them), without its
    defaults list and identity keys (a ``_global_`` file: those under its group's node only)."""
    group, text = path.parent.name, yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    node = (text.get(group) or {}) if is_global(path) else text
    return {key: value for key, value in node.items() if key != "defaults" and key not in IDENTITY[group]}


def schema_of(path: Path) -> tuple[str, type]:
    """``schema/<group>/<name>`` and its dataclass: the one schema the file's defaults list extends."""
    group, text = path.parent.name, yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    prefix = f"/schema/{group}/"
    named = [entry.split("@")[0][len(prefix):] for entry in text.get("defaults", [])
             if isinstance(entry, str) and entry.startswith(prefix)]
    assert len(named) == 1, (f"{option_id(path)}.yaml: its defaults list names {len(named)} {prefix}<name> "
                             "schemas, not one")
    assert (group, named[0]) in REGISTERED, (f"{option_id(path)}.yaml extends {prefix}{named[0]}, which no "
                                             "register_schema declares")
    return f"schema/{group}/{named[0]}", REGISTERED[group, named[0]]


@lru_cache(maxsize=None)
def composed(path: Path) -> DictConfig:
    """The option's node of ``unroll-train <group>=<option>`` (a task's files are needed only to build it)."""
    group = path.parent.name
    return compose_cfg([f"{group}={path.stem}"])[group]


@lru_cache(maxsize=None)
def structured(schema: type) -> DictConfig:
    return OmegaConf.structured(schema)


def schema_text(schema: type, key: str) -> Any:
    """The schema's default of ``key`` as written: an interpolation as its ``${...}`` text."""
    return structured(schema)._get_node(key)._value()


def schema_default(schema: type, key: str) -> Any:
    """The schema's concrete default of ``key`` as Hydra composes it (25 in a float field is 25.0), or
    UNSET: no such field, MISSING, or an interpolation (its value depends on the config around it)."""
    node = structured(schema)
    if key not in set(node.keys()) or OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
        return UNSET
    value = node[key]
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def keyword_defaults(cls: type) -> dict[str, Any]:
    """``{parameter: default}`` of the keyword parameters with a default of ``cls(...)``; a constructor
    that passes ``**options`` on to its base's adds the base's (those it names itself come first)."""
    defaults: dict[str, Any] = {}
    seen: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]  # without self
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in seen:
                seen.add(p.name)
                if p.default is not p.empty:
                    defaults[p.name] = p.default
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return defaults


def same(a: Any, b: Any) -> bool:
    """Equal as config values: numbers by value (25 is 25.0) but not booleans, sequences item by item
    (a tuple default is a list in YAML), mappings key by key."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def classes_of(group: str, name: str) -> dict[str, str]:
    """``{where: class path}`` of every class built from ``schema/<group>/<name>``: its own ``_target_``
    and the composed ``_target_`` of each option file extending it."""
    schema = REGISTERED[group, name]
    targets = {}
    if (own := schema_default(schema, "_target_")) is not UNSET:
        targets[f"schema/{group}/{name}"] = own
    for path in option_files(group):
        if schema_of(path)[0] == f"schema/{group}/{name}":
            targets[f"{option_id(path)}.yaml"] = composed(path)._target_
    return targets


def test_the_registry_and_the_files_are_discovered():
    """Not vacuous: both groups have registered schemas and option files, each file extends one."""
    for group in GROUPS:
        assert any(g == group for g, _ in REGISTERED), f"no {group} schema registered"
        assert option_files(group), f"no YAML file under conf/{group}/"
        for path in option_files(group):
            schema_of(path)


@pytest.mark.parametrize("group,name", sorted(REGISTERED), ids=lambda v: v)
def test_constructor_defaults_equal_the_schema(group, name):
    """Where a schema field and a keyword parameter of a class its ``_target_`` names both have a
    concrete default, they are the same value (else a class built in Python and one built from the
    config would differ)."""
    schema, targets = REGISTERED[group, name], classes_of(group, name)
    assert targets, f"schema/{group}/{name}: no _target_ of its own and no option file extends it"
    drift = []
    for target in sorted(set(targets.values())):
        where = ", ".join(w for w, t in sorted(targets.items()) if t == target)
        for key, default in keyword_defaults(get_class(target)).items():
            expected = schema_default(schema, key)
            if expected is not UNSET and not same(default, expected):
                drift.append(f"{target}({key}={default!r}) but schema/{group}/{name} has {key}: {expected!r} "
                             f"(the class of {where})")
    assert not drift, ("constructor defaults differ from the schema, the one source of a default (make the "
                       "keyword default equal to the schema's):\n  " + "\n  ".join(drift))


@pytest.mark.parametrize("path", [p for group in GROUPS for p in option_files(group)], ids=option_id)
def test_no_yaml_file_repeats_its_schema_default(path):
    """The option composes; a key whose value differs from its schema's default is a deliberate
    setting of the option, but one the file sets to exactly the schema's default is a second source."""
    node = composed(path)
    where, schema = schema_of(path)
    own = own_keys(path)
    redundant = []
    for key, value in own.items():
        assert key in node.keys(), f"{option_id(path)}.yaml sets {key}, which its composed config lacks"
        if key not in structured(schema).keys():
            continue
        default = schema_default(schema, key)
        if default is UNSET and OmegaConf.is_interpolation(structured(schema), key):
            default = schema_text(schema, key)  # the same ${...} text is the same default
        if default is not UNSET and same(value, default):
            redundant.append(f"{key}: {value!r}")
    assert not redundant, (f"{option_id(path)}.yaml sets keys to the default of {where} (a second source of "
                           f"the default; delete these lines, the schema is the one source):\n  "
                           + "\n  ".join(redundant))
