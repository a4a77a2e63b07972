"""Structured-config schemas: every YAML file under ``conf/`` extends one of these.

Hydra checks keys and types against them while composing, so ``model.layerz=3`` or
``data.m=abc`` fails before anything runs, with a message naming the key. Tasks and models declare
their own schemas beside their classes with :func:`register_schema`; the shared ones (optimizers,
schedulers, trainers, ``paper``, the top level) are here. Value ranges (:func:`constrained`) are
checked by :func:`unroll_cli.validation.validate`; :mod:`unroll_cli.registry` stores every schema
in Hydra's ConfigStore.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional

from omegaconf import MISSING

# ----------------------------------------------------------------------------- the schema registry
SCHEMAS: list[tuple[str, str, type]] = []  # (group, name, schema) of every register_schema


def register_schema(group: str, name: str) -> Callable[[type], type]:
    """Class decorator: the dataclass schema of a config group option, stored in Hydra's ConfigStore
    as ``schema/<group>/<name>`` for the YAML files' defaults lists. Tasks and models declare
    theirs beside their class (a new family is one module and one YAML file)."""
    def store(cls: type) -> type:
        schema = dataclass(cls)
        SCHEMAS.append((group, name, schema))
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
def positive(v) -> bool:
    return v > 0


def non_negative(v) -> bool:
    return v >= 0


def any_number(v) -> bool:  # NaN and infinity are refused for every field (validation.py)
    return True


#: seeds numpy's legacy generator and torch's take
SEED_RANGE = ("an integer in [0, 2^32)", lambda v: 0 <= v < 2 ** 32)


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    lr: float = constrained(5e-4, "a number > 0", positive)
    betas: List[float] = constrained([0.9, 0.999], "two numbers in [0, 1)",
                                     lambda v: len(v) == 2 and all(0 <= b < 1 for b in v))
    eps: float = constrained(1e-8, "a number > 0", positive)
    weight_decay: float = constrained(0.0, "a number >= 0", non_negative)


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    lr: float = constrained(0.01, "a number > 0", positive)
    momentum: float = constrained(0.9, "a number in [0, 1)", lambda v: 0 <= v < 1)
    weight_decay: float = constrained(0.0, "a number >= 0", non_negative)
    nesterov: bool = False


@dataclass
class ConstantSchedConfig:
    _target_: str = "torch.optim.lr_scheduler.ConstantLR"
    factor: float = constrained(1.0, "a number in (0, 1]", lambda v: 0 < v <= 1)
    total_iters: int = constrained(0, "an integer >= 0", non_negative)


@dataclass
class StepSchedConfig:
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    step_size: int = constrained(30, "an integer >= 1", positive)
    gamma: float = constrained(0.1, "a number > 0 (the learning rate's factor)", positive)


@dataclass
class MultiStepSchedConfig:
    _target_: str = "torch.optim.lr_scheduler.MultiStepLR"
    milestones: List[int] = constrained([30, 60], "increasing epochs >= 1",
                                        lambda v: all(m >= 1 for m in v) and list(v) == sorted(set(v)))
    gamma: float = constrained(0.1, "a number > 0 (the learning rate's factor)", positive)


@dataclass
class CosineSchedConfig:
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    T_max: int = constrained(100, "an integer >= 1", positive)
    eta_min: float = constrained(0.0, "a number >= 0 (the smallest learning rate)", non_negative)


@dataclass
class LinearSchedConfig:
    _target_: str = "torch.optim.lr_scheduler.LinearLR"
    start_factor: float = constrained(1.0, "a number in (0, 1]", lambda v: 0 < v <= 1)
    end_factor: float = constrained(0.0, "a number in [0, 1]", lambda v: 0 <= v <= 1)
    total_iters: int = constrained(100, "an integer >= 1", positive)


@dataclass
class InverseTimeSchedConfig:
    _target_: str = "unroll_cli.train.schedules.InverseTimeLR"
    decay: float = constrained(10.0, "a number > 0 (epochs)", positive)


# ----------------------------------------------------------------------------- trainer / eval
@dataclass
class TrainerOptions:
    """What every trainer takes: how a step is computed and what a run writes. Each trainer's schema
    adds the keys of its own schedule, so that a key a trainer does not read cannot be set."""

    grad_clip: Optional[float] = constrained(None, "null (no clipping) or a norm > 0", lambda v: v is None or v > 0)
    precision: str = constrained("fp32", "fp32 or bf16 (autocast)", lambda v: v in ("fp32", "bf16"))
    compile: bool = False
    cuda_graphs: bool = False  # on CUDA: replay each step's forward and backward as CUDA graphs
    checkpoint: bool = True
    progress: bool = True


@dataclass
class TrainerConfig(TrainerOptions):
    """End-to-end training: every parameter, the loss on the last layer's estimate, epoch after epoch."""

    _target_: str = "unroll_cli.train.trainer.Trainer"
    max_epochs: int = constrained(20, "an integer >= 0", lambda v: v >= 0)
    # batches per epoch of online data (data drawn afresh for every batch); null: the data's own epoch
    # (ONLINE_STEPS_PER_EPOCH batches of online data). A task with a fixed training set makes one pass
    # per epoch, and a task whose data group sets its epoch refuses a value here (run.check_epoch)
    steps_per_epoch: Optional[int] = constrained(None, "null (the data's own epoch) or an integer >= 1",
                                                 lambda v: v is None or v >= 1)
    # early stopping: epochs without validation improvement
    patience: Optional[int] = constrained(None, "null (no early stopping) or an integer >= 1",
                                          lambda v: v is None or v >= 1)
    # stop once the monitored validation metric reaches this value (<= for a "min" metric, >= for "max"),
    # e.g. an RMSE of 1e-4 for Dao et al. 2019's "loss < 1e-8" stop
    stop_at: Optional[float] = constrained(None, "null or a number", any_number)
    # step the scheduler at the start of each epoch, as pre-1.1 PyTorch code did (one epoch earlier)
    scheduler_step_at_start: bool = False


@dataclass
class LayerwiseTrainerConfig(TrainerOptions):
    """Stage-wise schedule of Chen et al. 2018 (Supp. E): 3 stages per layer, each at a constant rate
    with its own stopping rule (no epochs, no scheduler)."""

    # keys that versions before the trainer schemas were split wrote into a layer-wise run's config,
    # which the schedule never read: a stored config that has them is read without them
    RETIRED: ClassVar[tuple[str, ...]] = ("max_epochs", "steps_per_epoch", "patience", "stop_at",
                                          "scheduler_step_at_start")
    _target_: str = "unroll_cli.train.layerwise.LayerwiseTrainer"
    # the learning rate of each stage of a layer, as factors of optim.lr: the first for the new layer's
    # variables alone, the others for every layer so far
    stage_lr_factors: List[float] = constrained([1.0, 0.2, 0.02], "a non-empty list of numbers > 0",
                                                lambda v: len(v) > 0 and all(f > 0 for f in v))
    layer_decay: float = constrained(0.3, "a number > 0", positive)
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
    tolerance_db: Optional[float] = constrained(None, "null or a number >= 0", lambda v: v is None or v >= 0)  # reading error
    nmse_db: Optional[Dict[str, Any]] = None  # setting -> model -> per-layer values
    acc: Optional[Dict[str, Any]] = None  # setting -> model -> accuracy (%)
    psnr: Optional[Dict[str, Any]] = None  # setting -> variant -> PSNR (dB)
    rmse: Optional[Dict[str, Any]] = None  # transform -> N -> RMSE of the learned matrix
    targets: Optional[Dict[str, Any]] = None  # setting -> variant -> {metric: value} (synthetic dictionary learning)
    variant: Optional[str] = None  # this run's key among a setting's values (null: the model's name)
    references: Optional[Dict[str, Any]] = None  # further reference values (the authors' logs): name -> {source, tables as above}
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
    seed: int = constrained(0, "an integer in [0, 2^63)", lambda v: 0 <= v < 2 ** 63)
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
    # variables hydra.job.env_set may set besides unroll_cli.targets.ALLOWED_ENV; in a config file only
    trusted_env: List[str] = field(default_factory=list)
