"""The group-sparsity experiments (Theodosis et al.): the options they added, each against a hand
computation (atoms started from training images divided by the matrix's spectral norm; images minus the
mean training image), the three experiments composed with their stated values and run on tiny data, bad
values refused naming the key, and scripts/history_curves.py on written-out histories."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import compose_cfg, read_metrics, run_cli
from test_image_data import make_idx_set
from unroll_cli.models.autoencoders import GroupSparseAutoencoder
from unroll_cli.tasks.dataset_denoising import DatasetDenoising

SCRIPT = Path(__file__).parents[1] / "scripts" / "history_curves.py"
TINY_DL = ["data.n=200", "data.n_val=40", "data.n_test=40", "model.layers=3",
           "trainer.max_epochs=2", "trainer.progress=false", "tensorboard=false"]


@pytest.fixture
def fashion_root(tmp_path, monkeypatch):
    """Tiny Fashion-MNIST IDX files under ``tmp_path/FashionMNIST/raw`` (the system copy not looked at)."""
    monkeypatch.setattr("unroll_cli.data.images.FASHION_MNIST_SYSTEM_DIRS", ())
    data = make_idx_set(tmp_path / "FashionMNIST" / "raw", np.random.default_rng(5), gz=True, n_train=80, n_test=12)
    return tmp_path, data


# ----------------------------------------------------------------------------- the options
def test_spectral_init_is_the_chosen_training_images_over_their_spectral_norm():
    """Every initial atom is one of the training images divided by sigma, the largest singular value of
    the matrix of the chosen images (numpy's, in float64); the atoms are distinct images."""
    torch.manual_seed(0)
    images = torch.rand(30, 1, 6, 5, dtype=torch.float64)
    model = GroupSparseAutoencoder(1, conv=False, atoms=12, group_size=3, init="data", init_norm="spectral",
                                   init_images=images, step=0.01)
    W = model.weight.detach().double().numpy()  # (30 pixels, 12 atoms)
    flat = images.flatten(1).numpy()
    # which image each atom is: the largest cosine
    cosine = (flat / np.linalg.norm(flat, axis=1, keepdims=True)) @ (W / np.linalg.norm(W, axis=0))
    picked = cosine.argmax(axis=0)
    assert len(set(picked.tolist())) == 12
    chosen = flat[picked].T  # (30, 12)
    sigma = np.linalg.svd(chosen, compute_uv=False)[0]
    np.testing.assert_allclose(W, chosen / sigma, rtol=1e-6, atol=1e-7)
    assert np.linalg.norm(W, 2) == pytest.approx(1.0, rel=1e-6)


def test_unit_init_is_the_chosen_training_images_each_normalised():
    torch.manual_seed(1)
    images = torch.rand(20, 1, 4, 4, dtype=torch.float64)
    model = GroupSparseAutoencoder(1, conv=False, atoms=8, group_size=2, init="data", init_images=images, step=0.01)
    W = model.weight.detach().double().numpy()
    flat = images.flatten(1).numpy()
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    picked = (unit @ W).argmax(axis=0)
    np.testing.assert_allclose(W, unit[picked].T, rtol=1e-6, atol=1e-7)


def test_spectral_init_of_a_convolutional_dictionary_is_refused():
    with pytest.raises(ValueError, match="model.init_norm=spectral"):
        GroupSparseAutoencoder(1, conv=True, filters=4, kernel_size=3, stride=1, group_size=2,
                               init_norm="spectral", init_images=torch.rand(3, 1, 8, 8))


def test_centred_images_are_the_images_minus_the_mean_training_image(fashion_root):
    root, data = fashion_root
    task = DatasetDenoising("fashion_mnist", str(root), download=False, center=True, clamp=False, psnr_peak=1.0,
                            n_test=12)
    (train_x, _), (test_x, _) = data["train"], data["t10k"]
    mean = train_x.astype(np.float64).mean(axis=0) / 255.0
    expected_train = np.sort(train_x.reshape(len(train_x), -1) / 255.0 - mean.reshape(1, -1), axis=0)
    got_train = np.sort(task.train_images.flatten(1).double().numpy(), axis=0)
    np.testing.assert_allclose(got_train, expected_train, atol=1e-6)
    np.testing.assert_allclose(torch.stack(task.test_clean).double().numpy(), test_x / 255.0 - mean, atol=1e-6)
    init = task.model_kwargs()["init_images"].flatten(1).double().numpy()  # drawn from the centred images
    assert np.isin(np.round(init, 5), np.round(got_train, 5)).all()


@pytest.mark.parametrize("override, key", [("data.clamp=true", "data.clamp"),
                                           ("data.psnr_peak=max", "data.psnr_peak")])
def test_centred_images_with_a_unit_range_convention_are_refused_naming_the_key(fashion_root, override, key):
    root, _ = fashion_root
    result = run_cli(["+experiment=theodosis2023_silhouettes", f"data.root={root}", "data.download=false",
                      override, "tensorboard=false", f"hydra.run.dir={root / 'run'}"], cwd=root)
    said = result.stdout + result.stderr
    assert result.returncode == 2
    assert key in said and "data.center=true" in said
    assert "Traceback" not in said and not (root / "run" / "metrics.json").exists()


def test_a_bad_init_norm_is_refused_naming_the_key(tmp_path):
    result = run_cli(["+experiment=theodosis2023_gsae_convergence", "model.init_norm=orthogonal", *TINY_DL,
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    said = result.stdout + result.stderr
    assert result.returncode == 2 and "model.init_norm" in said
    assert "Traceback" not in said


# ----------------------------------------------------------------------------- the experiments
def test_silhouettes_is_the_authors_committed_configuration():
    cfg = compose_cfg(["+experiment=theodosis2023_silhouettes"])
    m, d = cfg.model, cfg.data
    assert (m.name, m.conv, m.atoms, m.group_size, m.layers, m.step, m.lam, m.encoder, m.two_sided, m.normalize,
            m.init, m.init_norm, m.grad) == ("group_sparse_ae", False, 320, 1, 15, 0.01, 0.5, "fista", False, True,
                                             "data", "spectral", "g_ae_ls")
    assert (d.name, d.sigma, d.center, d.batch_size, d.loss_reduction) == ("fashion_mnist", 0, True, 64, "pixel_mean")
    assert (cfg.optim.lr, cfg.optim.eps, cfg.trainer.max_epochs) == (1e-3, 1e-8, 200)


@pytest.mark.parametrize("group_size", [1, 4])
def test_silhouettes_runs_on_tiny_fashion_mnist_and_draws_the_atoms(fashion_root, group_size):
    root, _ = fashion_root
    run_dir = root / f"run{group_size}"
    result = run_cli(["+experiment=theodosis2023_silhouettes", f"data.root={root}", "data.download=false",
                      "model.atoms=16", f"model.group_size={group_size}", "trainer.max_epochs=1",
                      "trainer.progress=false", "tensorboard=false", f"hydra.run.dir={run_dir}"], cwd=root)
    assert result.returncode == 0, result.stderr
    assert read_metrics(run_dir)["status"] == "completed"
    atoms = np.load(run_dir / "dictionary.npy")
    assert atoms.shape == (16, 1, 28, 28)
    np.testing.assert_allclose(np.linalg.norm(atoms.reshape(16, -1), axis=1), 1.0, rtol=1e-5)  # unit after a step
    assert (run_dir / "figures" / "atoms.png").stat().st_size > 0


def test_convergence_and_sample_complexity_compose_as_stated():
    conv = compose_cfg(["+experiment=theodosis2023_gsae_convergence"])
    assert (conv.data.code, conv.data.group_size, conv.model.group_size, conv.model.atoms, conv.data.p) == (
        "group_sparse", 4, 4, 80, 80)
    plain = compose_cfg(["+experiment=theodosis2023_gsae_convergence", "model.group_size=1"])
    assert (plain.model.atoms, plain.data.group_size) == (80, 4)  # equal atoms, the data's groups unchanged
    sample = compose_cfg(["+experiment=theodosis2023_sample_complexity", "data.n=3200"])
    assert sample.data.batch_size == 3200  # one full batch an epoch: the same steps for every n
    assert sample.trainer.max_epochs == 150 and sample.model.grad == conv.model.grad


@pytest.mark.parametrize("experiment", ["theodosis2023_gsae_convergence", "theodosis2023_sample_complexity"])
def test_the_synthetic_experiments_run_and_record_the_distance_every_epoch(tmp_path, experiment):
    run_dir = tmp_path / "run"
    steps = 1 if experiment.endswith("complexity") else 2  # full batch: one step an epoch; else n / 100
    result = run_cli([f"+experiment={experiment}", *TINY_DL, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert list(history["step"]) == [steps, 2 * steps]
    final = read_metrics(run_dir)["metrics"]
    assert final["dictionary/error"] == pytest.approx(history["dictionary/error"].iloc[-1])


# ----------------------------------------------------------------------------- scripts/history_curves.py
def write_run(folder: Path, group_size: int, errors: list[float]) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"group_size": group_size}}))
    pd.DataFrame({"epoch": range(1, len(errors) + 1), "dictionary/error": errors}).to_csv(folder / "history.csv",
                                                                                       index=False)


def test_history_curves_averages_each_groups_runs_per_epoch(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", 1, [3.0, 2.0, 2.5])
    write_run(sweep / "1", 1, [3.0, 1.0, 1.5])
    write_run(sweep / "2", 4, [3.0, 2.0, 1.0])
    argv = sys.argv
    sys.argv = ["history_curves.py", str(sweep), "--metric", "dictionary/error", "--by", "model.group_size",
                "--epochs", "2", "3", "--out", str(tmp_path / "c.png")]
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|") and line.split("|")[1].strip() in "23"]
    # epoch 2: group 1 mean 1.5, std 0.7071 (two runs); group 4: 2.0; epoch 3: 2.0, std 0.7071; 1.0
    assert [float(v) for v in table[0].split("|")[2:4]] == [1.5, 2.0]
    assert [float(v) for v in table[1].split("|")[2:4]] == [2.0, 1.0]
    assert float(table[0].split("|")[4]) == pytest.approx(np.std([2.0, 1.0], ddof=1), abs=1e-4)
    assert "model.group_size=1: lowest mean 1.5000 at epoch 2, last (epoch 3) 2.0000" in out
    assert "model.group_size=4: lowest mean 1.0000 at epoch 3" in out
    assert (tmp_path / "c.png").stat().st_size > 0
