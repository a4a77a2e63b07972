"""Every YAML file under conf/ composes, validates, and builds what it names (discovered, not listed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import get_class
from PIL import Image

from conftest import compose_cfg
from test_image_data import make_cifar, make_idx_set, make_svhn
from unroll_cli.config import validate
from unroll_cli.run import build_model, build_task, check_optimizer

CONF = Path(__file__).parents[1] / "unroll_cli" / "conf"
SMALL = {"synthetic_sc": lambda root: ["data.m=20", "data.n=40", "data.n_val=16", "data.n_test=16"],
         "bsd_denoise": lambda root: [f"data.train_dir={root / 'gray/train'}", f"data.test_dir={root / 'gray/test'}",
                                      "data.crop=16"],
         "transform": lambda root: ["data.N=8"]}
IMAGE_FILES = lambda root: [f"data.root={root}", "data.download=false"]  # noqa: E731


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """Tiny files of every image dataset, in the real formats."""
    root, rng = tmp_path_factory.mktemp("data"), np.random.default_rng(0)
    make_idx_set(root / "MNIST" / "raw", rng, gz=True)
    make_idx_set(root / "FashionMNIST" / "raw", rng, gz=False)
    make_cifar(root, rng)
    make_svhn(root, rng)
    for split, count in (("train", 3), ("test", 2)):
        (root / "gray" / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (20 + i, 24), dtype=np.uint8)).save(root / "gray" / split / f"{i}.png")
    return root


def task_of(data: str, image_root: Path, *extra: str):
    overrides = [f"data={data}", *SMALL.get(data, IMAGE_FILES)(image_root), *extra]
    if data not in SMALL:  # a classification set: a model that fits it
        overrides.append("model=ml_ista")
    cfg = compose_cfg(overrides)
    validate(cfg)
    return cfg, build_task(cfg, torch.device("cpu"))


def test_the_groups_hold_what_the_package_ships():
    assert {"data", "model", "optim", "sched", "trainer", "experiment", "paper", "hparams_search"} <= {
        p.name for p in CONF.iterdir() if p.is_dir()}


@pytest.mark.parametrize("data", options("data"))
def test_every_data_config_builds_its_task(data, image_root, monkeypatch):
    monkeypatch.setattr("unroll_cli.data.images.FASHION_MNIST_SYSTEM_DIRS", ())
    cfg, task = task_of(data, image_root)
    assert task.primary_metric in task.metric_names() and task.monitor
    batch = next(iter(task.train_batches()))
    assert batch[0].shape[0] == min(cfg.data.batch_size, batch[0].shape[0]) > 0


@pytest.mark.parametrize("model", options("model"))
def test_every_model_config_builds_its_model_on_a_fitting_task(model, image_root):
    kind = compose_cfg([f"model={model}"]).model.task
    data = {"sparse_coding": "synthetic_sc", "classification": "mnist", "denoising": "bsd_denoise",
            "transform": "transform"}[kind]
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


@pytest.mark.parametrize("group", ["experiment", "hparams_search", "paper"])
def test_every_experiment_search_and_paper_config_composes_and_validates(group):
    for option in options(group):
        prefix = "+" if group == "experiment" else ""
        validate(compose_cfg([f"{prefix}{group}={option}"]))


def test_hydra_configs_of_the_package_compose():
    for option in options("hydra/launcher"):
        cfg = compose_cfg([f"hydra/launcher={option}"])
        validate(cfg)
