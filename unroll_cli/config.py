"""Structured-config schemas: every YAML file under ``conf/`` extends one of these.

Hydra checks keys and types against them while composing, so ``model.layerz=3`` or
``data.m=abc`` fails before anything runs, with a message naming the key.  Value ranges
(m > 0, p in (0, 1], ...) and the ``_target_`` allow-list are checked by :func:`validate`.
"""
from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any training."""


class TrainingFailure(RuntimeError):
    """A run that failed while training for a reason the user can act on (not a bug): recorded as
    failed and reported in one line."""


# ----------------------------------------------------------------------------- data
@dataclass
class SyntheticSparseCodingConfig:
    """y = A x + noise with Bernoulli(p) x N(0,1) codes (Chen et al. 2018, Sec. 4.1)."""

    _target_: str = "unroll_cli.data.synthetic.SyntheticSparseCoding"
    m: int = 250
    n: int = 500
    p: float = 0.1
    snr_db: Optional[float] = None  # null: noiseless
    kappa: Optional[float] = None  # condition number of A; null: plain Gaussian A
    col_normalized: bool = True
    online: bool = True  # fresh batches every step (TF code) or a fixed set (HyperLISTA)
    n_train: int = 51200  # size of the fixed training set when online is false
    n_val: int = 1000
    n_test: int = 1000
    batch_size: int = 64
    matrix_seed: int = 0
    val_seed: int = 1
    test_seed: int = 2
    A_path: Optional[str] = None  # .npy or .mat file holding the user's own A


@dataclass
class ImageDataConfig:
    """Image classification through torchvision's dataset classes, held as tensors on the device."""

    _target_: str = "unroll_cli.data.images.ImageClassification"
    name: str = MISSING  # mnist | fashion_mnist | cifar10 | svhn
    root: str = "./data"
    download: bool = True
    batch_size: int = 128
    eval_batch_size: int = 1000
    arch: str = "mnist"  # the model architecture this data calls for: mnist | cifar10
    normalize_mean: Optional[List[float]] = None
    normalize_std: Optional[List[float]] = None
    random_crop_padding: int = 0
    hflip: bool = False
    val_size: int = 0  # 0: evaluate on the test set every epoch, as the paper's notebooks
    n_train: Optional[int] = None  # a random subset of the training set, for quick runs


# ----------------------------------------------------------------------------- models
@dataclass
class ClassicalModelConfig:
    """ISTA / FISTA: no learning; the baselines at the same depth."""

    _target_: str = MISSING
    name: str = MISSING
    task: str = "sparse_coding"  # the kind of data the model fits
    layers: int = 16
    lam: float = 0.4


@dataclass
class LearnedModelConfig(ClassicalModelConfig):
    """Step/threshold-learning models with optional support selection (TiLISTA, ALISTA)."""

    ss_p_per_layer: float = 0.0  # percent of entries added to the selected support per layer
    ss_p_max: float = 0.0  # cap on that percent


@dataclass
class LISTAModelConfig(LearnedModelConfig):
    """LISTA / LISTA-CP (and their support-selection variants): weights tied or per layer."""

    tied: bool = True


@dataclass
class MultiLayerModelConfig:
    """Multi-layer ISTA family (Sulam et al. 2020): architecture from the data, T unfoldings."""

    _target_: str = MISSING
    name: str = MISSING
    task: str = "classification"
    unfoldings: int = 6


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
    max_epochs: int = 20
    steps_per_epoch: int = 100  # batches per epoch of online data (a fixed set: one pass per epoch)
    patience: Optional[int] = None  # early stopping: epochs without validation improvement
    loss: str = "supervised"  # supervised (MSE to the true code) | lasso (unsupervised)
    grad_clip: Optional[float] = None
    precision: str = "fp32"  # fp32 | bf16 (autocast)
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
    val_every_steps: int = 10
    stage_patience_steps: int = 4000
    stage_max_steps: int = 200000


@dataclass
class EvalConfig:
    nmse: str = "pooled"  # pooled (LISTA-CPSS/ALISTA code) | per_sample (Open-L2O)
    support_tol: float = 0.0  # |x_hat_i| > tol counts as a detected nonzero
    baselines: List[str] = field(default_factory=lambda: ["ista", "fista"])
    # classification: first and last epoch (1-based, inclusive) of the reported mean accuracy;
    # null: the last 10 epochs
    acc_mean_epochs: Optional[List[int]] = None


# ----------------------------------------------------------------------------- published numbers
@dataclass
class PaperConfig:
    """Published numbers of an experiment, shown beside the run's own (``conf/paper/``)."""

    source: str = MISSING  # the paper and where in it the numbers come from
    metric: str = MISSING  # the run metric the numbers are compared with
    tolerance_db: Optional[float] = None  # reading error of values taken from a figure
    nmse_db: Optional[Dict[str, Any]] = None  # setting -> model -> per-layer values
    acc: Optional[Dict[str, Any]] = None  # setting -> model -> accuracy (%)


# ----------------------------------------------------------------------------- top level
@dataclass
class TrainConfig:
    data: Any = MISSING
    model: Any = MISSING
    optim: Any = MISSING
    sched: Any = MISSING
    trainer: Any = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    paper: Optional[Any] = None  # published numbers of the experiment, with their source
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    deterministic: bool = False
    resume: Optional[str] = None  # a run directory or a checkpoint file to continue from
    optimized_metric: Optional[str] = None  # null: test/nmse_db (sparse coding), test/acc (classification)
    tensorboard: bool = True
    # packages whose classes a config file may name in _target_ besides the built-in allow-list
    # (unroll_cli.targets); set in a config file, never on the command line
    trusted_packages: List[str] = field(default_factory=list)


# One value per process, so every use of ${run_uid:} in a run names the same directory, and two
# runs started in the same microsecond (or in two processes) never share one.
_RUN_UID = f"{os.getpid()}{secrets.token_hex(2)}"


def register_configs() -> None:
    """Store the schemas as ``schema/<group>/<name>`` for the YAML files' defaults lists, and the
    ``run_uid`` resolver of the run directory names."""
    OmegaConf.register_new_resolver("run_uid", lambda: _RUN_UID, replace=True)
    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node=TrainConfig)
    for group, name, node in [
        ("data", "synthetic_sc", SyntheticSparseCodingConfig),
        ("data", "image", ImageDataConfig),
        ("model", "multilayer", MultiLayerModelConfig),
        ("model", "classical", ClassicalModelConfig),
        ("model", "learned", LearnedModelConfig),
        ("model", "lista", LISTAModelConfig),
        ("optim", "adam", AdamConfig),
        ("optim", "sgd", SGDConfig),
        ("sched", "constant", ConstantSchedConfig),
        ("sched", "step", StepSchedConfig),
        ("sched", "cosine", CosineSchedConfig),
        ("trainer", "end_to_end", TrainerConfig),
        ("trainer", "layerwise", LayerwiseTrainerConfig),
    ]:
        cs.store(group=f"schema/{group}", name=name, node=node)


# ----------------------------------------------------------------------------- value checks
def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _check_keys(cfg: DictConfig) -> None:
    """Keys added with ``+key=value`` bypass Hydra's schema check: refuse those the schema lacks."""
    nodes = [("", cfg, TrainConfig)] + [(f"{key}.", cfg[key], OmegaConf.get_type(cfg[key]))
                                         for key in ("data", "model", "optim", "sched", "trainer", "eval")]
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


def validate(cfg: DictConfig) -> None:
    """Check keys, value ranges and choices that a type alone cannot express, then the targets.

    Raises :class:`ConfigError` naming the key and the allowed values.
    """
    from unroll_cli.targets import check_targets

    for key in ("data", "model", "optim", "sched", "trainer", "eval"):
        if cfg.get(key) is None:
            raise ConfigError(f"{key} is missing (removed with ~{key}?): choose one of the {key} options "
                              "(unroll-train --help lists them)")
    _check_keys(cfg)
    for key in ("data", "model", "optim", "sched", "trainer", "eval"):
        _check_finite(OmegaConf.to_container(cfg[key], resolve=True), key)
    _require(cfg.device in ("auto", "cpu", "cuda"), "device", cfg.device, "auto, cpu or cuda")
    data, model, trainer = cfg.data, cfg.model, cfg.trainer
    if "m" in data:
        _require(data.m > 0, "data.m", data.m, "an integer > 0")
        _require(data.n > 0, "data.n", data.n, "an integer > 0")
        _require(0 < data.p <= 1, "data.p", data.p, "a probability in (0, 1]")
        _require(data.kappa is None or data.kappa >= 1, "data.kappa", data.kappa, "null or >= 1")
        for k in ("n_val", "n_test", "batch_size", "n_train"):
            _require(data[k] > 0, f"data.{k}", data[k], "an integer > 0")
    if "layers" in model:
        _require(model.layers >= 1, "model.layers", model.layers, "an integer >= 1")
        _require(model.lam >= 0, "model.lam", model.lam, "a number >= 0")
    if "unfoldings" in model:
        _require(model.unfoldings >= 0, "model.unfoldings", model.unfoldings, "an integer >= 0")
    if "arch" in data:
        _require(data.arch in ("mnist", "cifar10"), "data.arch", data.arch, "mnist or cifar10")
        _require(data.batch_size > 0, "data.batch_size", data.batch_size, "an integer > 0")
    acc_epochs = cfg.eval.acc_mean_epochs
    if acc_epochs is not None:
        _require(len(acc_epochs) == 2 and 1 <= acc_epochs[0] <= acc_epochs[1] <= trainer.max_epochs,
                 "eval.acc_mean_epochs", list(acc_epochs),
                 f"[first, last] with 1 <= first <= last <= trainer.max_epochs ({trainer.max_epochs})")
    for k in ("ss_p_per_layer", "ss_p_max"):
        if k in model:
            _require(0 <= model[k] <= 100, f"model.{k}", model[k], "a percentage in [0, 100]")
    _require(cfg.optim.lr > 0, "optim.lr", cfg.optim.lr, "a number > 0")
    _require(trainer.max_epochs >= 0, "trainer.max_epochs", trainer.max_epochs, "an integer >= 0")
    _require(trainer.steps_per_epoch >= 1, "trainer.steps_per_epoch", trainer.steps_per_epoch,
             "an integer >= 1")
    _require(trainer.patience is None or trainer.patience >= 1, "trainer.patience", trainer.patience,
             "null (no early stopping) or an integer >= 1")
    _require(trainer.grad_clip is None or trainer.grad_clip > 0, "trainer.grad_clip", trainer.grad_clip,
             "null (no clipping) or a norm > 0")
    _require(trainer.loss in ("supervised", "lasso"), "trainer.loss", trainer.loss,
             "supervised or lasso")
    _require(trainer.precision in ("fp32", "bf16"), "trainer.precision", trainer.precision,
             "fp32 or bf16")
    _require(not (trainer.cuda_graphs and trainer.compile), "trainer.cuda_graphs", trainer.cuda_graphs,
             "false with trainer.compile=true (choose one)")
    for k in ("val_every_steps", "stage_patience_steps", "stage_max_steps"):
        if k in trainer:
            _require(trainer[k] >= 1, f"trainer.{k}", trainer[k], "an integer >= 1")
    _require(cfg.eval.nmse in ("pooled", "per_sample"), "eval.nmse", cfg.eval.nmse,
             "pooled or per_sample")
    _require(cfg.eval.support_tol >= 0, "eval.support_tol", cfg.eval.support_tol, "a number >= 0")
    for name in cfg.eval.baselines:
        _require(name in ("ista", "fista"), "eval.baselines", name, "ista and/or fista")
    check_targets(cfg, trusted=list(cfg.trusted_packages))  # last: it imports the targets' packages
