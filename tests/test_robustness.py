"""+diagnostics=robustness (l2 PGD on the input, Jaccard of the codes' active groups) and the test noise
levels of data=synthetic_dl: the ball and the loss's increase checked directly, the Jaccard index against
Python sets, eps = 0 against the task's own test metric (dictionary learning and image denoising, PSNR
by hand), the per-sigma metric at the training sigma against the ordinary one, determinism, and bad
keys refused naming the key."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg, read_metrics, run_cli
from unroll_cli.evaluate.robustness import Robustness, active_groups, jaccard, pgd, project
from unroll_cli.models.autoencoders import GroupSparseAutoencoder, SparseAutoencoder
from unroll_cli.tasks.denoising import ImageDenoising
from unroll_cli.tasks.dictionary_learning import SyntheticDictionaryLearning
from unroll_cli.validation import validate

GROUP_LAW = dict(code="group_sparse", c_min=1.0, c_max=2.0, z_mean=0.0, z_std=1.0, group_size=2,
                 active_groups=2)
SYNTHETIC = ["data=synthetic_dl", "data.m=12", "data.p=8", "data.code=group_sparse", "data.group_size=2",
             "data.active_groups=1", "data.n=40", "data.batch_size=20", "data.n_val=16", "data.n_test=16",
             "model.conv=false", "model.atoms=8", "model.layers=4", "model.step=0.2", "model.lam=0.1",
             "trainer.max_epochs=2", "trainer.progress=false", "tensorboard=false"]


def dl_task(**options) -> SyntheticDictionaryLearning:
    keys = dict(m=12, p=8, s=2, n=40, online=False, n_val=16, n_test=16, batch_size=40, dict_init=0.1,
                dictionary_seed=0, val_seed=1, test_seed=2, **GROUP_LAW)
    keys.update(options)
    return SyntheticDictionaryLearning(**keys)


def dl_model(task, cls=SparseAutoencoder, **options):
    settings = dict(conv=False, atoms=task.D_true.shape[1], layers=5, lam=0.1, step=0.2, **options)
    return cls(**settings, **task.model_kwargs()).eval()


def half_squared_error(model, inputs, target) -> np.ndarray:
    """0.5 ||f(x) - t||^2 per sample, in numpy."""
    with torch.no_grad():
        out = model(inputs)[-1].double().flatten(1).numpy()
    return 0.5 * ((out - target.double().flatten(1).numpy()) ** 2).sum(axis=1)


# ----------------------------------------------------------------------------- PGD
def test_the_projection_scales_only_what_lies_outside_the_ball():
    delta = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    projected = project(delta, torch.tensor([[2.0], [2.0]]))
    assert projected[0].tolist() == pytest.approx([1.2, 1.6])  # norm 5 -> 2, same direction
    assert projected[1].tolist() == pytest.approx([0.3, 0.4])  # inside: unchanged


@pytest.mark.parametrize("cls, options", [(SparseAutoencoder, {}), (GroupSparseAutoencoder, {"group_size": 2})])
@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_pgd_stays_in_the_ball_and_raises_the_loss(cls, options, eps, one_thread):
    task = dl_task(sigma=0.1)
    model = dl_model(task, cls, **options)
    (x, target), = task.test_pairs()
    worst = pgd(model, x, target, eps, steps=10, step_size=0.25, gen=torch.Generator().manual_seed(0))
    moved = (worst - x).double().flatten(1).numpy()
    norms = x.double().flatten(1).numpy()
    assert (np.linalg.norm(moved, axis=1) <= eps * np.linalg.norm(norms, axis=1) + 1e-6).all()
    clean, attacked = half_squared_error(model, x, target), half_squared_error(model, worst, target)
    assert (attacked >= clean - 1e-9).all() and attacked.sum() > clean.sum() * (1 + eps / 10)


def test_pgd_stays_in_the_ball_in_float64(one_thread):
    """The ball's bound to 1e-12 where the arithmetic allows it."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        task = dl_task(sigma=0.1)
        kwargs = {k: (v.double() if torch.is_tensor(v) else v) for k, v in task.model_kwargs().items()}
        model = SparseAutoencoder(conv=False, atoms=8, layers=5, lam=0.1, step=0.2, **kwargs).eval()
        x, target = (t.double() for t in task.test_pairs()[0])
        worst = pgd(model, x, target, 0.2, steps=5, step_size=0.5, gen=torch.Generator().manual_seed(1))
        assert ((worst - x).flatten(1).norm(dim=1) <= 0.2 * x.flatten(1).norm(dim=1) + 1e-12).all()
    finally:
        torch.set_default_dtype(dtype)


def test_the_sweep_is_deterministic_with_its_seed(one_thread):
    task = dl_task(sigma=0.1)
    model = dl_model(task, GroupSparseAutoencoder, group_size=2)
    first, second, other = Robustness([0.1], seed=3), Robustness([0.1], seed=3), Robustness([0.1], seed=4)
    for diagnostic in (first, second, other):
        diagnostic.bind(task)
    assert first.measure(model) == second.measure(model)
    assert other.measure(model)["nmse_db_eps0.1"] != first.measure(model)["nmse_db_eps0.1"]


# ----------------------------------------------------------------------------- Jaccard
def sets_jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def test_the_jaccard_index_of_groups_and_of_atoms_equals_python_sets():
    clean = torch.tensor([[1.0, 0, 0, 2, 0, 0], [0, 0, 0, 0, 0, 0], [0, 3, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    perturbed = torch.tensor([[1.0, 5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 4], [7, 0, 0, 0, 0, 0]])
    for size in (1, 2, 3):
        expected = []
        for c, p in zip(clean.tolist(), perturbed.tolist()):
            groups = lambda code: {i // size for i, v in enumerate(code) if v != 0}  # noqa: E731
            expected.append(sets_jaccard(groups(c), groups(p)))
        got = jaccard(active_groups(clean, size), active_groups(perturbed, size))
        assert got.tolist() == pytest.approx(expected)
    # by hand: atoms {0, 3} vs {0, 1}: 1/3; none vs none: 1; {1} vs {5}: 0; none vs {0}: 0;
    # groups of 2: {0, 1} vs {0}: 1/2; {0} vs {2}: 0
    assert jaccard(active_groups(clean, 1), active_groups(perturbed, 1)).tolist() == pytest.approx([1 / 3, 1, 0, 0])
    assert jaccard(active_groups(clean, 2), active_groups(perturbed, 2)).tolist() == pytest.approx([0.5, 1, 0, 0])


def test_a_convolutional_code_groups_channels_at_each_position():
    code = torch.zeros(1, 4, 2, 1)  # 4 channels (2 groups of 2) at 2 positions
    code[0, 1, 0, 0] = 1.0  # group 0 at position 0
    code[0, 3, 1, 0] = 1.0  # group 1 at position 1
    other = torch.zeros_like(code)
    other[0, 0, 0, 0] = 2.0  # group 0 at position 0
    other[0, 2, 0, 0] = 2.0  # group 1 at position 0
    # sets of (group, position): {(0, 0), (1, 1)} vs {(0, 0), (1, 0)}
    assert jaccard(active_groups(code, 2), active_groups(other, 2)).tolist() == pytest.approx([1 / 3])


@pytest.mark.parametrize("group_size", [None, 2])
def test_the_diagnostics_jaccard_equals_python_sets_of_the_codes_groups(group_size, one_thread):
    """The sweep's Jaccard against sets of (sample's) non-zero groups of the clean and worst codes,
    the worst inputs found again by the same PGD and seed; a plain model's own groups are its atoms."""
    task = dl_task(sigma=0.1)
    model = dl_model(task)
    diagnostic = Robustness([0.3], steps=4, seed=5, group_size=group_size)
    diagnostic.bind(task)
    assert diagnostic.refuse(model) is None
    got = diagnostic.measure(model)["jaccard_eps0.3"]
    (x, target), = task.test_pairs()
    worst = pgd(model, x, target, 0.3, 4, 0.25, torch.Generator().manual_seed(5))
    size = group_size or 1
    codes = [model.encode(v).tolist() for v in (x, worst)]
    groups = lambda code: {i // size for i, v in enumerate(code) if v != 0}  # noqa: E731
    expected = [sets_jaccard(groups(c), groups(p))
                for c, p in zip(*codes)]
    assert got == pytest.approx(np.mean(expected), abs=1e-6) and min(expected) < 1


def test_groups_that_do_not_divide_the_code_are_refused():
    task = dl_task()
    diagnostic = Robustness([0.1], group_size=3)
    diagnostic.bind(task)
    assert "group_size=3 does not divide its 8 code entries" in diagnostic.refuse(dl_model(task))


# ----------------------------------------------------------------------------- through the CLI
def test_eps_zero_and_the_training_sigma_give_the_ordinary_test_metrics(tmp_path, one_thread):
    result = run_cli([*SYNTHETIC, "model=group_sparse_ae", "model.group_size=2", "data.sigma=0.1",
                      "data.test_sigmas=[0.05,0.1,0.3]", "+diagnostics=robustness",
                      "diagnostics.robustness.epsilons=[0,0.2]", "diagnostics.robustness.steps=3",
                      f"hydra.run.dir={tmp_path}"], tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(tmp_path)["metrics"]
    assert metrics["test/nmse_db_s0.1"] == metrics["test/nmse_db"]
    assert metrics["test/code_error_s0.1"] == metrics["test/code_error"]
    assert metrics["test/nmse_db_s0.05"] < metrics["test/nmse_db_s0.3"]  # more noise, a worse estimate
    assert metrics["robustness/nmse_db_eps0"] == pytest.approx(metrics["test/nmse_db"], abs=1e-9)
    assert metrics["robustness/jaccard_eps0"] == 1.0
    assert metrics["robustness/nmse_db_eps0.2"] > metrics["test/nmse_db"]
    assert 0 <= metrics["robustness/jaccard_eps0.2"] <= 1


def test_the_test_nmse_equals_a_hand_computation_on_the_clean_signals(one_thread):
    """test/nmse_db: 10 log10 of the summed squared error of the reconstruction of the noisy test inputs
    against the clean signals over their summed energy."""
    task = dl_task(sigma=0.2, test_sigmas=[0.0, 0.2])
    model = dl_model(task)
    x = task.test[0].double().flatten(1).numpy()
    noisy = task.test_inputs[0.2]
    assert not torch.equal(noisy, task.test[0]) and torch.equal(task.test_inputs[0.0], task.test[0])
    with torch.no_grad():
        estimate = model(noisy)[-1].double().flatten(1).numpy()
    expected = 10 * math.log10(((estimate - x) ** 2).sum() / (x ** 2).sum())
    assert task.validate(model)["test/nmse_db"] == pytest.approx(expected, abs=1e-6)
    # the noise of a level is fixed by the test seed and the level alone, whatever the training sigma
    assert torch.equal(dl_task(sigma=0.0, test_sigmas=[0.2]).test_inputs[0.2], noisy)


@pytest.mark.parametrize("override, named", [
    ("diagnostics.robustness.epsilons=[-0.1]", "epsilons"),
    ("diagnostics.robustness.steps=0", "steps"),
    ("diagnostics.robustness.step_size=0", "step_size"),
    ("diagnostics.robustness.group_size=3", "group_size=3"),
    ("data.test_sigmas=[-1]", "data.test_sigmas"),
    ("data.sigma=-0.5", "data.sigma"),
])
def test_bad_keys_are_refused_naming_the_key(tmp_path, override, named):
    result = run_cli([*SYNTHETIC, "model=sparse_ae", "+diagnostics=robustness", override,
                      f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert len(output.splitlines()) == 1 and named in output and "Traceback" not in output, output
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_a_model_without_a_code_is_refused(tmp_path):
    result = run_cli(["model=lista", "+diagnostics=robustness", "trainer.max_epochs=1", "trainer.progress=false",
                      f"hydra.run.dir={tmp_path}"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "diagnostics.robustness" in output and "encode" in output and "Traceback" not in output


# ----------------------------------------------------------------------------- image denoising
def test_eps_zero_gives_the_mean_test_psnr_on_images(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    for folder, shapes in (("train", [(20, 20)]), ("test", [(16, 18), (16, 18), (14, 12)])):
        (tmp_path / folder).mkdir()
        for i, shape in enumerate(shapes):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
    task = ImageDenoising(str(tmp_path / "train"), str(tmp_path / "test"), crop=12, sigma=25.0,
                          test_sigmas=[25.0], batch_size=1)
    torch.manual_seed(0)
    model = SparseAutoencoder(conv=True, filters=4, kernel_size=3, stride=1, layers=3, lam=0.05, step=0.1,
                              **task.model_kwargs()).eval()
    diagnostic = Robustness([0.0, 0.1], steps=3)
    diagnostic.bind(task)
    assert diagnostic.refuse(model) is None
    metrics = diagnostic.measure(model)
    psnrs = []
    with torch.no_grad():
        for noisy, clean in zip(task.test_noisy[25.0], task.test_clean):
            estimate = model(noisy[None, None])[-1][0, 0].double().clamp(0, 1).numpy()
            reference = clean.double().numpy()
            psnrs.append(20 * math.log10(reference.max()) - 10 * math.log10(((reference - estimate) ** 2).mean()))
    assert metrics["psnr_eps0"] == pytest.approx(np.mean(psnrs), abs=1e-6)
    assert metrics["jaccard_eps0"] == 1.0 and metrics["psnr_eps0.1"] < metrics["psnr_eps0"]


# ----------------------------------------------------------------------------- the experiment
def test_the_experiment_compares_the_true_group_size_with_single_atoms_at_equal_atoms():
    group, plain = (compose_cfg(["+experiment=theodosis2023_robustness", f"model={name}"])
                    for name in ("group_sparse_ae", "sparse_ae"))
    for cfg in (group, plain):
        validate(cfg)
        assert cfg.data.code == "group_sparse" and cfg.model.atoms == cfg.data.p and cfg.data.sigma > 0
        assert cfg.data.sigma in cfg.data.test_sigmas and "robustness" in cfg.diagnostics
    assert group.model.group_size == group.data.group_size > 1 and "group_size" not in plain.model
    shared = ("layers", "lam", "step", "encoder", "grad", "two_sided", "normalize")
    assert all(group.model[key] == plain.model[key] for key in shared)
