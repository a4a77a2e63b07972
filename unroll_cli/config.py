"""Structured-config schemas: every YAML file under ``conf/`` extends one of these.

Hydra checks keys and types against them while composing, so ``model.layerz=3`` or
``data.m=abc`` fails before anything runs, with a message naming the key.  Value ranges
(m > 0, p in (0, 1], ...) and the ``_target_`` allow-list are checked by :func:`validate`.
"""
from __future__ import annotations

import math
import os
import secrets
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any training."""


class TrainingFailure(RuntimeError):
    """A run that failed while training for a reason the user can act on (not a bug): recorded as
    failed and reported in one line."""


# ----------------------------------------------------------------------------- the schema registry
_SCHEMAS: list[tuple[str, str, type]] = []


def register_schema(group: str, name: str) -> Callable[[type], type]:
    """Class decorator: the dataclass schema of a config group option, stored in Hydra's ConfigStore
    as ``schema/<group>/<name>`` for the YAML files' defaults lists. Tasks and models declare
    theirs beside their class (a new family is one module and one YAML file)."""
    def store(cls: type) -> type:
        schema = dataclass(cls)
        _SCHEMAS.append((group, name, schema))
        return schema

    return store


def constrained(default: Any, allowed: str, ok: Callable[[Any], bool], changeable: bool = False,
                evaluation: bool = False) -> Any:
    """A schema field with its allowed values: :func:`validate` checks ``ok(value)`` before any work
    and names the key and ``allowed`` when it fails. ``changeable``: a resumed run may set another
    value (it changes only the report, not the problem or the training); such a key is also
    ``evaluation``: it changes only what a finished model is evaluated on (the test data, its noise,
    a metric's convention), so ``unroll-eval`` may set it."""
    metadata = {"allowed": allowed, "ok": ok, "changeable": changeable, "evaluation": evaluation or changeable}
    return _field(default, metadata)


def evaluation_only(default: Any) -> Any:
    """A schema field without a value check that ``unroll-eval`` may set (see :func:`constrained`)."""
    return _field(default, {"evaluation": True})


def _field(default: Any, metadata: dict) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------- optim / sched
@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    lr: float = 5e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclass
class ConstantSchedConfig:
    _target_: str = "torch.optim.lr_scheduler.ConstantLR"
    factor: float = 1.0
    total_iters: int = 0


@dataclass
class StepSchedConfig:
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    step_size: int = 30
    gamma: float = 0.1


@dataclass
class CosineSchedConfig:
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    T_max: int = 100
    eta_min: float = 0.0


# ----------------------------------------------------------------------------- trainer / eval
@dataclass
class TrainerConfig:
    """End-to-end training: every parameter, the loss on the last layer's estimate."""

    _target_: str = "unroll_cli.train.trainer.Trainer"
    max_epochs: int = constrained(20, "an integer >= 0", lambda v: v >= 0)
    # batches per epoch of online data (a fixed set: one pass per epoch)
    steps_per_epoch: int = constrained(100, "an integer >= 1", lambda v: v >= 1)
    # early stopping: epochs without validation improvement
    patience: Optional[int] = constrained(None, "null (no early stopping) or an integer >= 1",
                                          lambda v: v is None or v >= 1)
    # stop once the monitored validation metric reaches this value (<= for a "min" metric, >= for "max"),
    # e.g. an RMSE of 1e-4 for Dao et al. 2019's "loss < 1e-8" stop; end-to-end trainer, as patience
    stop_at: Optional[float] = None
    grad_clip: Optional[float] = constrained(None, "null (no clipping) or a norm > 0", lambda v: v is None or v > 0)
    precision: str = constrained("fp32", "fp32 or bf16 (autocast)", lambda v: v in ("fp32", "bf16"))
    compile: bool = False
    cuda_graphs: bool = False  # on CUDA: replay each step's forward and backward as CUDA graphs
    checkpoint: bool = True
    progress: bool = True
    # step the scheduler at the start of each epoch, as pre-1.1 PyTorch code did (one epoch earlier)
    scheduler_step_at_start: bool = False


@dataclass
class LayerwiseTrainerConfig(TrainerConfig):
    """Stage-wise schedule of Chen et al. 2018 (Supp. E): 3 stages per layer."""

    _target_: str = "unroll_cli.train.layerwise.LayerwiseTrainer"
    stage_lr_factors: List[float] = field(default_factory=lambda: [1.0, 0.2, 0.02])
    layer_decay: float = 0.3
    # how layer_decay^(t-s) reaches layer s < t: lr (its learning rate, HyperLISTA) or gradient (its
    # gradient scaled before the optimizer, the authors' TF code; with Adam only eps sees the scale)
    decay_mode: str = constrained("lr", "lr (learning-rate multiplier) or gradient (the authors' code)",
                                  lambda v: v in ("lr", "gradient"))
    val_every_steps: int = constrained(10, "an integer >= 1", lambda v: v >= 1)
    stage_patience_steps: int = constrained(4000, "an integer >= 1", lambda v: v >= 1)
    # null: a stage ends at the first validation stage_patience_steps after its best; k: the authors'
    # rule, validations from step 1 and every k-th one ends the stage if its best is more than
    # stage_patience_steps old (k=10 in ALISTA's code, 100 in LISTA-CPSS's, at val_every_steps=10)
    stop_check_validations: Optional[int] = constrained(None, "null (check at every validation) or an integer >= 1",
                                                        lambda v: v is None or v >= 1)
    stage_max_steps: int = constrained(200000, "an integer >= 1", lambda v: v >= 1)
    # a checkpoint inside a stage at the first validation this many seconds after the last one
    # (null: at stage ends only); a resume continues the stage from it to the same result
    checkpoint_every_s: Optional[float] = constrained(600.0, "null (at stage ends only) or seconds >= 0",
                                                      lambda v: v is None or v >= 0, changeable=True)


# ----------------------------------------------------------------------------- published numbers
@dataclass
class PaperConfig:
    """Published numbers of an experiment, shown beside the run's own (``conf/paper/``)."""

    source: str = MISSING  # the paper and where in it the numbers come from
    metric: str = MISSING  # the run metric the numbers are compared with
    tolerance_db: Optional[float] = None  # reading error of values taken from a figure
    nmse_db: Optional[Dict[str, Any]] = None  # setting -> model -> per-layer values
    acc: Optional[Dict[str, Any]] = None  # setting -> model -> accuracy (%)
    psnr: Optional[Dict[str, Any]] = None  # setting -> variant -> PSNR (dB)
    rmse: Optional[Dict[str, Any]] = None  # transform -> N -> RMSE of the learned matrix
    variant: Optional[str] = None  # this run's key among a setting's values (null: the model's name)
    note: Optional[str] = None  # said in results.md (e.g. a shortened recipe)


# ----------------------------------------------------------------------------- top level
@dataclass
class TrainConfig:
    data: Any = MISSING
    model: Any = MISSING
    optim: Any = MISSING
    sched: Any = MISSING
    trainer: Any = MISSING
    paper: Optional[Any] = None  # published numbers of the experiment, with their source
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    deterministic: bool = False
    resume: Optional[str] = None  # a run directory or a checkpoint file to continue from
    optimized_metric: Optional[str] = None  # null: the task's primary metric
    tensorboard: bool = True
    # trainer callbacks (unroll_cli.train.callbacks) and run diagnostics (unroll_cli.evaluate.diagnostics):
    # name -> a _target_ node each; +callbacks=NAME / +diagnostics=NAME add conf/<group>/NAME.yaml
    callbacks: Dict[str, Any] = field(default_factory=dict)
    diagnostics: Dict[str, Any] = field(default_factory=dict)
    # packages whose classes a config file may name in _target_ besides the built-in allow-list
    # (unroll_cli.targets); set in a config file, never on the command line
    trusted_packages: List[str] = field(default_factory=list)


# One value per process, so every use of ${run_uid:} in a run names the same directory, and two
# runs started in the same microsecond (or in two processes) never share one.
_RUN_UID = f"{os.getpid()}{secrets.token_hex(2)}"


def run_uid() -> str:
    """This process's part of a run directory's name (the ``run_uid`` resolver)."""
    return _RUN_UID



def register_configs() -> None:
    """Store the schemas as ``schema/<group>/<name>`` for the YAML files' defaults lists: the shared
    ones here, and those the task and model modules declare (:func:`register_schema`), which are
    imported for that; and the ``run_uid`` resolver of the run directory names."""
    import importlib
    import pkgutil

    import unroll_cli.models
    import unroll_cli.tasks

    OmegaConf.register_new_resolver("run_uid", run_uid, replace=True)
    for package in (unroll_cli.tasks, unroll_cli.models):
        for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node=TrainConfig)
    for group, name, node in [
        ("optim", "adam", AdamConfig),
        ("optim", "sgd", SGDConfig),
        ("sched", "constant", ConstantSchedConfig),
        ("sched", "step", StepSchedConfig),
        ("sched", "cosine", CosineSchedConfig),
        ("trainer", "end_to_end", TrainerConfig),
        ("trainer", "layerwise", LayerwiseTrainerConfig),
        *_SCHEMAS,
    ]:
        cs.store(group=f"schema/{group}", name=name, node=node)


# ----------------------------------------------------------------------------- value checks
GROUPS = ("data", "model", "optim", "sched", "trainer")
EXTENSIONS = ("callbacks", "diagnostics")  # name -> _target_ node; each class checks its own keys


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _check_keys(cfg: DictConfig) -> None:
    """Keys added with ``+key=value`` bypass Hydra's schema check: refuse those the schema lacks."""
    nodes = [("", cfg, TrainConfig)] + [(f"{key}.", cfg[key], OmegaConf.get_type(cfg[key])) for key in GROUPS]
    for prefix, node, schema in nodes:
        if is_dataclass(schema):
            known = {f.name for f in fields(schema)}
            for extra in sorted(set(node.keys()) - known):
                raise ConfigError(f"{prefix}{extra} is not a key of {prefix.rstrip('.') or 'the config'} "
                                  f"({schema.__name__}); allowed: {', '.join(sorted(known))}")
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


def _check_constraints(node: DictConfig, key: str) -> None:
    """The allowed values a schema declares for its fields (:func:`constrained`)."""
    schema = OmegaConf.get_type(node)
    if not is_dataclass(schema):
        return
    for f in fields(schema):
        if "ok" in f.metadata and not f.metadata["ok"](node[f.name]):
            value = node[f.name]
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise ConfigError(f"{key}.{f.name}={value!r} is not allowed: {f.metadata['allowed']}")


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


def validate(cfg: DictConfig) -> None:
    """Check keys, NaN/infinity, the values each schema allows, then the targets.

    Raises :class:`ConfigError` naming the key and the allowed values.
    """
    from unroll_cli.targets import check_targets

    for key in GROUPS:
        if cfg.get(key) is None:
            raise ConfigError(f"{key} is missing (removed with ~{key}?): choose one of the {key} options "
                              "(unroll-train --help lists them)")
    _check_keys(cfg)
    for key in GROUPS:
        _check_finite(OmegaConf.to_container(cfg[key], resolve=True), key)
        _check_constraints(cfg[key], key)
    for key in EXTENSIONS:
        for name, node in cfg[key].items():
            if not (OmegaConf.is_dict(node) and "_target_" in node):
                raise ConfigError(f"{key}.{name} is not allowed: a node with a _target_ (the class of the {key[:-1]})")
        _check_finite(OmegaConf.to_container(cfg[key], resolve=True), key)
    _require(cfg.device in ("auto", "cpu", "cuda"), "device", cfg.device, "auto, cpu or cuda")
    _require(cfg.optim.get("lr", 1) > 0, "optim.lr", cfg.optim.get("lr"), "a number > 0")
    trainer = cfg.trainer
    _require(not (trainer.get("cuda_graphs") and trainer.get("compile")), "trainer.cuda_graphs",
             trainer.get("cuda_graphs"), "false with trainer.compile=true (choose one)")
    check_targets(cfg, trusted=list(cfg.trusted_packages))  # last: it imports the targets' packages
