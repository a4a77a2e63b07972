"""Every YAML file under conf/ composes, validates, and builds what it names (discovered, not listed):
tasks whose training epoch is the data written, models, optimizers and schedulers that step,
experiments and searches whose metrics their task reports, launchers and sweepers that are plugin
classes the project's own checks accept."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.utils import get_class
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_cfg
from test_image_data import make_cifar, make_idx_set, make_svhn
from unroll_cli.data.rotated import rotated_split
from unroll_cli.validation import validate
from unroll_cli.run import build_model, build_task, check_optimizer
from unroll_cli.sweep.optuna_study import search_space
from unroll_cli.targets import check_hydra_node

CONF = Path(__file__).parents[1] / "unroll_cli" / "conf"
SMALL = {"synthetic_sc": lambda root: ["data.m=20", "data.n=40", "data.n_val=16", "data.n_test=16"],
         "bsd_denoise": lambda root: [f"data.train_dir={root / 'gray/train'}", f"data.test_dir={root / 'gray/test'}",
                                      "data.crop=16"],
         "transform": lambda root: ["data.N=8"],
         "fixed_support": lambda root: ["data.N=8"],
         "image_patches": lambda root: [f"data.train_dir={root / 'gray/train'}", f"data.test_dir={root / 'gray/test'}",
                                        "data.patch_size=4", "data.atoms=24", "data.dictionary_steps=2",
                                        "data.n_val=16", "data.n_test=16", "data.batch_size=8",
                                        "trainer.steps_per_epoch=2"],
         "synthetic_dl": lambda root: ["data.m=10", "data.p=20", "data.s=3", "data.n=40", "data.n_val=16",
                                       "data.n_test=16", "data.batch_size=20", "data.lasso_steps=5"]}
IMAGE_FILES = lambda root: [f"data.root={root}", "data.download=false"]  # noqa: E731
ROTATED_SPLIT = (30, 25)  # data=fashion_mnist_rot on the tiny files (40 training and 20 test images)
SMALL["fashion_mnist_rot"] = lambda root: [*IMAGE_FILES(root),  # noqa: E731
                                           "data.rotated_split=[{},{}]".format(*ROTATED_SPLIT)]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(overrides: list[str]):
    """The composed config of ``unroll-train <overrides>`` with its hydra node (launcher, sweeper,
    the group choices), as ``unroll-train`` composes it to check the command line."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="unroll_cli.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


# what each tiny training set holds, written by ``image_root``: {data option: labels (classification) or
# images (uint8, N x H x W; mnist_denoise) or the number of training images (bsd_denoise)}
TRAINING_SETS: dict[str, object] = {}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """Tiny files of every image dataset, in the real formats."""
    root, rng = tmp_path_factory.mktemp("data"), np.random.default_rng(0)
    mnist = make_idx_set(root / "MNIST" / "raw", rng, gz=True)
    fashion = make_idx_set(root / "FashionMNIST" / "raw", rng, gz=False)
    cifar = make_cifar(root, rng)
    svhn = make_svhn(root, rng)
    for split, count in (("train", 3), ("test", 2)):
        (root / "gray" / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (20 + i, 24), dtype=np.uint8)).save(root / "gray" / split / f"{i}.png")
    TRAINING_SETS.update({
        "mnist": mnist["train"][1], "fashion_mnist": fashion["train"][1], "mnist_denoise": mnist["train"][0],
        "cifar10": np.concatenate([cifar[f"data_batch_{i}"][1] for i in range(1, 6)]),
        "svhn": svhn["train"][1].ravel() % 10,  # SVHN's 10 is the digit 0
        "fashion_mnist_rot": np.concatenate([fashion["train"][1], fashion["t10k"][1]])[
            rotated_split(*[(torch.from_numpy(fashion[s][0])[:, None], torch.from_numpy(fashion[s][1]))
                            for s in ("train", "t10k")], ROTATED_SPLIT, seed=0).index[0].numpy()],
        "bsd_denoise": 3})
    return root


def task_of(data: str, image_root: Path, *extra: str):
    overrides = [f"data={data}", *SMALL.get(data, IMAGE_FILES)(image_root), *extra]
    if data not in SMALL or data == "fashion_mnist_rot":  # a classification set: a model that fits it
        overrides.append("model=ml_ista")
    cfg = compose_cfg(overrides)
    validate(cfg)
    return cfg, build_task(cfg, torch.device("cpu"))


def test_the_groups_hold_what_the_package_ships():
    assert {"data", "model", "optim", "sched", "trainer", "experiment", "paper", "hparams_search"} <= {
        p.name for p in CONF.iterdir() if p.is_dir()}


@pytest.mark.parametrize("data", options("data"))
def test_every_data_config_builds_its_task(data, image_root, monkeypatch, one_thread):
    """Each task builds from its file, reports its primary metric, and one epoch of its training
    batches is what the data says: the tiny files' training set once over (classification: their
    labels; mnist_denoise: their images; bsd_denoise: one crop per image), y = A x for synthetic codes."""
    monkeypatch.setattr("unroll_cli.data.images.FASHION_MNIST_SYSTEM_DIRS", ())
    cfg, task = task_of(data, image_root)
    assert task.primary_metric in task.metric_names() and task.monitor
    epoch = list(task.train_batches())
    assert len(epoch) == task.steps_per_epoch > 0  # the trainers' count of steps per epoch
    assert all(0 < len(batch[0]) <= cfg.data.get("batch_size", task.batch_size) for batch in epoch)
    written = TRAINING_SETS.get(data)
    if task.kind == "classification":
        labels = torch.cat([batch[1] for batch in epoch]).numpy()
        np.testing.assert_array_equal(np.sort(labels), np.sort(written))
    elif data == "mnist_denoise":  # whole clean images, scaled to [0, 1]
        clean = np.rint(torch.cat([batch[1] for batch in epoch]).flatten(1).double().numpy() * 255)
        assert sorted(map(bytes, clean.astype(np.uint8))) == sorted(map(bytes, written.reshape(len(written), -1)))
    elif data == "bsd_denoise":
        assert sum(len(batch[1]) for batch in epoch) == written
    elif data == "synthetic_dl":  # each batch's x is D* times its codes, the training set once over
        for x, z in epoch:
            torch.testing.assert_close(x.flatten(1).double(), z.double() @ task.D_true.double().T, rtol=1e-5, atol=1e-5)
        assert sum(len(batch[1]) for batch in epoch) == cfg.data.n
    elif data == "image_patches":  # each batch's codes are the lasso optimum of its patches (KKT, float64)
        W = task.W.double()
        for x, z in epoch:
            gradient = (x.double() - z.double() @ W.T) @ W
            assert gradient.abs().max() <= cfg.data.alpha + 1e-4
            torch.testing.assert_close(gradient[z != 0], cfg.data.alpha * z[z != 0].sign().double(), atol=1e-4, rtol=0)
    elif task.kind == "sparse_coding":  # noiseless by default: each batch's y is A times its codes
        for y, x in epoch[:3]:
            torch.testing.assert_close(y.double(), x.double() @ task.A.double().T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", options("model"))
def test_every_model_config_builds_its_model_on_a_fitting_task(model, image_root):
    kind = compose_cfg([f"model={model}"]).model.task
    data = {"sparse_coding": "synthetic_sc", "classification": "mnist", "denoising": "bsd_denoise",
            "transform": "transform", "factorization": "fixed_support"}[kind]
    cfg, task = task_of(data, image_root, f"model={model}")
    module = build_model(cfg.model, task, cfg)
    assert isinstance(module, torch.nn.Module)
    get_class(cfg.trainer._target_).check_model(module, cfg.model.name)


@pytest.mark.parametrize("group", ["optim", "sched"])
def test_every_optimizer_and_scheduler_config_builds_and_steps(group):
    for option in options(group):
        check_optimizer(compose_cfg([f"{group}={option}"]))


@pytest.mark.parametrize("trainer", options("trainer"))
def test_every_trainer_config_validates_and_names_a_trainer(trainer):
    cfg = compose_cfg([f"trainer={trainer}"])
    validate(cfg)
    assert callable(getattr(get_class(cfg.trainer._target_), "fit"))


# sizes the tiny files allow; the metrics a task reports do not depend on them
FITS = {"tolooshams2022_denoise_cpu_short": ["data.n_train=null", "data.n_test=null"],
        "tasissa2024_densae_denoise_cpu_short": ["data.n_train=null", "data.n_test=null"],
        "gregor2010_lista_cpu_short": ["data.n_images=null", "data.n_test_images=null", "data.n_train=16"],
        "ml_ista_optuna": ["data.val_size=10"],  # still a validation split: the monitor stays val/*
        "theodosis2022_cyclic_cpu_short": ["data.n_train=null", "data.n_test=null"]}


def built(group: str, option: str, image_root: Path):
    """The config of ``[+]group=option``, its hydra node and its task, on the tiny files."""
    selection = f"{'+' if group == 'experiment' else ''}{group}={option}"
    hydra = composed([selection]).hydra
    cfg = compose_cfg([selection, *SMALL.get(hydra.runtime.choices.data, IMAGE_FILES)(image_root),
                       *FITS.get(option, [])])
    validate(cfg)
    return cfg, hydra, build_task(cfg, torch.device("cpu"))


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_reports_its_paper_metric_and_its_optimized_metric(experiment, image_root, monkeypatch):
    """An experiment's published number (``paper.metric``) and its ``optimized_metric`` must be among
    the metrics its task reports (with a validation split, a classification run would report val/*,
    not the paper's test/acc_last_k_mean, and the published number would never be shown)."""
    monkeypatch.setattr("unroll_cli.data.images.FASHION_MNIST_SYSTEM_DIRS", ())
    cfg, hydra, task = built("experiment", experiment, image_root)
    names = task.metric_names()
    assert cfg.optimized_metric is None or cfg.optimized_metric in names
    if cfg.paper is not None:
        assert cfg.paper.metric in names


def test_every_paper_config_is_the_published_numbers_of_an_experiment():
    """A paper config is read through the experiment that selects it (the test above): none is left
    without one."""
    used = {composed([f"+experiment={e}"]).hydra.runtime.choices.get("paper") for e in options("experiment")}
    assert set(options("paper")) <= used


@pytest.mark.parametrize("search", options("hparams_search"))
def test_every_search_selects_on_a_reported_metric_over_keys_the_run_has(search, image_root, monkeypatch):
    """An Optuna search's ``optimized_metric`` is reported by its task, it is run by the project's
    sweeper, and each searched key exists in the composed config (a misspelt key would fail every
    trial) and is a distribution the sweeper understands."""
    monkeypatch.setattr("unroll_cli.data.images.FASHION_MNIST_SYSTEM_DIRS", ())
    cfg, hydra, task = built("hparams_search", search, image_root)
    assert cfg.optimized_metric in task.metric_names()
    assert issubclass(get_class(hydra.sweeper._target_), Sweeper)
    params = OmegaConf.to_container(hydra.sweeper.params)
    space, fixed = search_space(params, [])
    assert sorted(space) == sorted(params) and not fixed
    for key in params:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key


# the launchers and sweepers the README lists: the package's own config files and the installed plugins
LAUNCHERS = ["basic", "joblib", "submitit_local", "submitit_slurm", *options("hydra/launcher")]


@pytest.mark.parametrize("group, option", [("hydra/launcher", name) for name in LAUNCHERS]
                         + [("hydra/sweeper", name) for name in ("basic", "unroll_optuna")])
def test_every_launcher_and_sweeper_resolves_to_a_plugin_class_the_checks_accept(group, option):
    """``hydra/launcher=NAME`` and ``hydra/sweeper=NAME`` compose to a ``_target_`` that is a Hydra
    Launcher / Sweeper class, and the project's own check of the hydra node lets it run."""
    cfg = composed([f"{group}={option}"])
    node = cfg.hydra.launcher if group == "hydra/launcher" else cfg.hydra.sweeper
    assert issubclass(get_class(node._target_), Launcher if group == "hydra/launcher" else Sweeper)
    check_hydra_node(cfg.hydra)
