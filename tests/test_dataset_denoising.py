"""Denoising / reconstruction of a gray image dataset (data=mnist_denoise) and the representer view:
tiny IDX files in the real format, PSNR against a hand computation, the view against a slow explicit
ISTA loop and numpy's least squares, and a whole run of +experiment=tolooshams2022_mnist."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import read_metrics, run_cli
from test_classification_run import write_learnable_mnist
from test_image_data import make_idx_set
from unroll_cli.evaluate.representer import representer_view
from unroll_cli.models.autoencoders import SparseAutoencoder
from unroll_cli.tasks.dataset_denoising import DatasetDenoising


@pytest.fixture
def idx_root(tmp_path):
    data = make_idx_set(tmp_path / "MNIST" / "raw", np.random.default_rng(3), gz=True, n_train=60, n_test=30)
    return tmp_path, data


def test_classes_keep_their_images_and_batches_add_the_noise(idx_root):
    root, data = idx_root
    task = DatasetDenoising("mnist", str(root), download=False, classes=[1, 4, 7], sigma=20, test_sigmas=[20],
                            batch_size=4)
    (train_x, train_y), (test_x, test_y) = data["train"], data["t10k"]
    keep = np.isin(train_y, [1, 4, 7])
    expected = np.sort(train_x[keep].reshape(keep.sum(), -1) / 255.0, axis=0)
    got = np.sort(task.train_images.flatten(1).double().numpy(), axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    wanted = test_x[np.isin(test_y, [1, 4, 7])] / 255.0
    np.testing.assert_allclose(torch.stack(task.test_clean).double().numpy(), wanted, atol=1e-6)
    noise = []
    for noisy, clean in task.train_batches():
        assert clean.shape[1:] == (1, 28, 28)
        noise.append((noisy - clean).flatten())
    noise = torch.cat(noise)
    assert len(noise) == keep.sum() * 28 * 28  # every training image once per epoch
    assert noise.std().item() == pytest.approx(20 / 255, rel=0.05)


def test_sigma_zero_trains_on_the_clean_images(idx_root):
    root, _ = idx_root
    task = DatasetDenoising("mnist", str(root), download=False, batch_size=8)
    for noisy, clean in task.train_batches():
        assert torch.equal(noisy, clean)


class HalfThenClamp(torch.nn.Module):
    """Two 'layers': y / 2, then y unchanged."""

    def forward(self, y, depth=None):
        return [y / 2, y][:depth or 2]


@pytest.mark.parametrize("eval_batch_size", [1, 7, 1000])
def test_psnr_per_layer_equals_a_hand_computation(idx_root, eval_batch_size):
    root, _ = idx_root
    task = DatasetDenoising("mnist", str(root), download=False, sigma=30, test_sigmas=[30],
                            eval_batch_size=eval_batch_size)
    scores, kept = task._scores(HalfThenClamp(), task.test_clean, task.test_noisy[30.0], keep=3)
    for i, (clean, noisy) in enumerate(zip(task.test_clean, task.test_noisy[30.0])):
        x, y = clean.double().numpy(), noisy.double().numpy()
        for layer, estimate in enumerate((y, y / 2, y)):
            mse = np.mean((x - np.clip(estimate, 0, 1)) ** 2)
            assert scores[i, layer].item() == pytest.approx(20 * np.log10(x.max()) - 10 * np.log10(mse), abs=1e-9)
    assert len(kept) == 3 and torch.equal(kept[2], task.test_noisy[30.0][2])


def test_bad_subsets_are_named(idx_root):
    root, _ = idx_root
    with pytest.raises(ValueError, match="data.n_test=500"):
        DatasetDenoising("mnist", str(root), download=False, n_test=500)
    with pytest.raises(ValueError, match="data.val_size=60"):
        DatasetDenoising("mnist", str(root), download=False, val_size=60)


# ----------------------------------------------------------------------------- the representer view
def explicit_codes(D: np.ndarray, X: np.ndarray, lam: float, step: float, layers: int) -> np.ndarray:
    """(p, n) ISTA codes, one image at a time, written out: z <- S(z - step D^T (D z - x), lam step)."""
    codes = []
    for x in X.T:
        z = np.zeros(D.shape[1])
        for _ in range(layers):
            v = z - step * D.T @ (D @ z - x)
            z = np.sign(v) * np.maximum(np.abs(v) - lam * step, 0)
        codes.append(z)
    return np.stack(codes, axis=1)


def test_the_representer_view_equals_least_squares_on_explicit_codes():
    gen = torch.Generator().manual_seed(5)
    train, test = torch.rand(30, 1, 4, 4, generator=gen), torch.rand(1, 1, 4, 4, generator=gen)
    model = SparseAutoencoder(1, conv=False, atoms=6, layers=5, lam=0.05, step=0.2, init_images=train).double()
    rho = 0.01
    view = representer_view(model, train.double(), test.double(), rho)
    D = model.weight.detach().numpy()
    X, x_test = train.flatten(1).double().numpy().T, test.flatten().double().numpy()
    Z, z_test = explicit_codes(D, X, 0.05, 0.2, 5), explicit_codes(D, x_test[:, None], 0.05, 0.2, 5)[:, 0]
    gram = Z.T @ Z + rho * np.eye(Z.shape[1])
    ls = X @ np.linalg.solve(gram, Z.T)  # (m, p)
    np.testing.assert_allclose(view.ls_atoms.flatten(1).numpy().T, ls, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(view.atom_weights.numpy(), np.linalg.solve(gram, Z.T).T, rtol=1e-4, atol=1e-5)
    beta = np.linalg.solve(gram, Z.T @ z_test)
    np.testing.assert_allclose(view.test_weights.numpy(), beta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(view.reconstruction.flatten().numpy(), D @ z_test, rtol=1e-5, atol=1e-6)
    assert view.dictionary_error == pytest.approx(np.linalg.norm(D - ls) / np.linalg.norm(D), rel=1e-4)
    np.testing.assert_allclose(view.atom_errors.numpy(),
                               np.linalg.norm(D - ls, axis=0) / np.linalg.norm(D, axis=0), rtol=1e-4)
    recon = D @ z_test
    assert view.reconstruction_error == pytest.approx(np.linalg.norm(recon - X @ beta) / np.linalg.norm(recon),
                                                      rel=1e-4)
    np.testing.assert_allclose(view.usage.numpy(), np.abs(Z).sum(axis=1), rtol=1e-5)


def test_the_representer_view_says_why_it_does_not_apply():
    images = torch.rand(4, 1, 12, 12)
    conv = SparseAutoencoder(1, conv=True, filters=4, kernel_size=3, stride=1, step=0.05)
    assert "conv=false" in representer_view(conv, images, images[:1], 1e-3)
    assert "encode()" in representer_view(HalfThenClamp(), images, images[:1], 1e-3)


# ----------------------------------------------------------------------------- a whole run
@pytest.mark.slow
def test_tolooshams2022_mnist_run_learns_and_draws_the_representer_view(tmp_path):
    write_learnable_mnist(tmp_path / "data/MNIST/raw", np.random.default_rng(0), n_train=400, n_test=60)
    common = ["+experiment=tolooshams2022_mnist", f"data.root={tmp_path / 'data'}", "data.download=false",
              "model.atoms=40", "optim.lr=3e-3", "data.representer_images=100", "trainer.progress=false",
              "tensorboard=false"]
    runs = {}
    for epochs in (0, 3):
        runs[epochs] = tmp_path / f"run{epochs}"
        result = run_cli([*common, f"trainer.max_epochs={epochs}", f"hydra.run.dir={runs[epochs]}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    untrained, trained = (read_metrics(runs[e])["metrics"] for e in (0, 3))
    assert trained["test/psnr"] > untrained["test/psnr"] + 1.0  # the same initial dictionary, then 3 epochs
    assert 0 <= trained["representer/reconstruction_rel_error"] < 1
    assert {"representer/atom_rel_error_median", "representer/shown_atoms_rel_error_max"} <= trained.keys()
    layers = pd.read_csv(runs[3] / "layers.csv")
    assert list(layers["layer"]) == list(range(16))
    for name in ("atoms.png", "denoised.png", "representer_atoms.png", "representer_reconstruction.png"):
        assert (runs[3] / "figures" / name).stat().st_size > 0
    assert "## Representer view" in (runs[3] / "results.md").read_text()
