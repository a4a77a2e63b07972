"""Every numeric field of every schema declares its allowed values, so that a negative rate, factor,
decay or size is refused before any work, naming the key (issue 21)."""
from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from conftest import TINY, compose_cfg, run_cli
from unroll_cli import schema
from unroll_cli.errors import ConfigError
from unroll_cli.registry import register_configs
from unroll_cli.run import run
from unroll_cli.validation import validate

register_configs()
SHARED = [schema.TrainConfig, schema.AdamConfig, schema.SGDConfig, schema.ConstantSchedConfig, schema.StepSchedConfig,
          schema.MultiStepSchedConfig,
          schema.CosineSchedConfig, schema.TrainerConfig, schema.LayerwiseTrainerConfig, schema.PaperConfig]


def numeric(annotation) -> bool:
    """An int or float field, also inside Optional[...] and List[...] (bools are not numbers here)."""
    if annotation in (int, float):
        return True
    return any(numeric(arg) for arg in typing.get_args(annotation))


def test_every_numeric_field_of_every_schema_declares_its_allowed_values():
    schemas = {*SHARED, *(cls for _, _, cls in schema.SCHEMAS)}
    undeclared = [f"{cls.__name__}.{f.name}" for cls in schemas for f in dataclasses.fields(cls)
                  if numeric(typing.get_type_hints(cls)[f.name]) and "ok" not in f.metadata]
    assert not undeclared, f"numeric fields without allowed values: {', '.join(sorted(undeclared))}"


@pytest.mark.parametrize("overrides, named", [
    (["sched=step", "sched.gamma=-0.5"], "sched.gamma=-0.5"),
    (["sched=cosine", "sched.eta_min=-1e-3"], "sched.eta_min=-0.001"),
    (["sched=cosine", "sched.T_max=0"], "sched.T_max=0"),
    (["trainer=layerwise", "trainer.layer_decay=-0.3"], "trainer.layer_decay=-0.3"),
    (["trainer=layerwise", "trainer.stage_lr_factors=[]"], "trainer.stage_lr_factors=[]"),
    (["trainer=layerwise", "trainer.stage_lr_factors=[1.0,-0.2]"], "trainer.stage_lr_factors=[1.0, -0.2]"),
    (["optim.eps=0"], "optim.eps=0.0"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1.0"),
    (["optim=sgd", "optim.momentum=1.5"], "optim.momentum=1.5"),
    (["seed=18446744073709551616"], "seed=18446744073709551616"),
    (["seed=-1"], "seed=-1"),
    (["data.matrix_seed=4294967296"], "data.matrix_seed=4294967296"),
    (["data.snr_db=-500"], "data.snr_db=-500.0"),
    (["data=transform", "model=bp", "data.target_seed=-3"], "data.target_seed=-3"),
    (["paper=chen2018", "paper.tolerance_db=-1"], "paper.tolerance_db=-1"),
])
def test_an_out_of_range_number_is_refused_naming_the_key(overrides, named):
    with pytest.raises(ConfigError) as refused:
        validate(compose_cfg(overrides))
    assert str(refused.value).startswith(f"{named} is not allowed: ")


def test_the_first_stage_factor_sets_the_new_layers_learning_rate(tiny_cfg, tmp_path, one_thread):
    """It was never used: stage (a) ran at optim.lr whatever the factor."""
    run(tiny_cfg("model=lista_cp", "trainer=layerwise", "model.layers=1", "trainer.stage_lr_factors=[0.5,0.1]",
                 "optim.lr=0.01", "trainer.val_every_steps=2", "trainer.stage_patience_steps=2",
                 "trainer.stage_max_steps=2", "tensorboard=false"), tmp_path)
    history = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["history"]
    assert [row["lr"] for row in history] == pytest.approx([0.01 * 0.5, 0.01 * 0.1])


def test_the_cli_refuses_a_negative_rate_with_exit_code_2(tmp_path):
    result = run_cli([*TINY, "sched=step", "sched.gamma=-0.5", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2 and "sched.gamma=-0.5 is not allowed" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_codes_without_a_nonzero_entry_are_refused_naming_data_p(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.p=1e-09 draws no nonzero entry in the validation codes .* "
                                          r"raise data\.p or data\.n_val$"):
        run(tiny_cfg("data.p=1e-9"), tmp_path)
    assert not (tmp_path / "history.csv").exists()


@pytest.mark.parametrize("arch", ["mnist", "cifar10"])
@pytest.mark.parametrize("side", [20, 28, 32, 40])
def test_an_architecture_that_does_not_fit_the_images_is_refused_when_built(arch, side):
    """Against a forward pass of a model built without the check: refused exactly when that fails."""
    from unroll_cli.models.mlista import MLISTA

    try:
        MLISTA(arch=arch, in_channels=1, unfoldings=1)(torch.zeros(2, 1, side, side))
        fits = True
    except RuntimeError:
        fits = False
    if fits:
        MLISTA(arch=arch, in_channels=1, unfoldings=1, image_size=side)
    else:
        with pytest.raises(ValueError, match=rf"^arch \(data.arch={arch}\) does not fit the data's {side}x{side} images"):
            MLISTA(arch=arch, in_channels=1, unfoldings=1, image_size=side)


def test_the_cifar10_architecture_on_28x28_images_is_one_message(tmp_path):
    import numpy as np

    from test_classification_run import write_learnable_mnist

    write_learnable_mnist(tmp_path / "data/MNIST/raw", np.random.default_rng(0), 20, 10)
    result = run_cli(["model=ml_ista", "data=mnist", f"data.root={tmp_path / 'data'}", "data.download=false",
                      "data.arch=cifar10", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output
    assert "arch (data.arch=cifar10) does not fit the data's 28x28 images" in output
    assert not (tmp_path / "run/history.csv").exists()


def test_two_test_sigmas_that_print_alike_are_refused():
    """Their metrics are named test/psnr_s25 both: one would overwrite the other."""
    with pytest.raises(ConfigError, match=r"^data\.test_sigmas=\[25\.0, 25\.0000001\] is not allowed"):
        validate(compose_cfg(["data=bsd_denoise", "data.test_sigmas=[25.0,25.0000001]"]))


def test_an_all_black_test_image_is_refused_naming_it(tmp_path):
    import numpy as np
    from PIL import Image

    from unroll_cli.tasks.denoising import ImageDenoising

    for split, value in (("train", 120), ("test", 0)):
        (tmp_path / split).mkdir()
        Image.fromarray(np.full((20, 20), value, dtype=np.uint8)).save(tmp_path / split / "a.png")
    with pytest.raises(ConfigError, match=r"^test image a\.png is all black: .* data\.psnr_peak=1\.0"):
        ImageDenoising(str(tmp_path / "train"), str(tmp_path / "test"), crop=8)
    ImageDenoising(str(tmp_path / "train"), str(tmp_path / "test"), crop=8, psnr_peak=1.0)  # a fixed peak is fine
