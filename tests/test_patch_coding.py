"""Gregor & LeCun 2010 (data=image_patches, models cod / lcod / the baseline encoders): the lasso optimum
against FISTA and the KKT conditions, LISTA at its initial values against ISTA written out in numpy, (L)CoD
against Algorithm 2 written out sample by sample, the patch preprocessing against numpy, and a tiny run of
the experiment writing Table 1 with the paper's values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.conftest import random_image_folders, read_metrics, run_cli
from unroll_cli.data.lasso import lasso_objective, learn_dictionary, solve_lasso_fista
from unroll_cli.data.patches import draw_patches, load_images, normalize_patches
from unroll_cli.models.coordinate_descent import LCoD, CoordinateDescent, solve_lasso_cod
from unroll_cli.models.encoders import BaselineEncoder
from unroll_cli.models.lista import LISTA

ALPHA = 0.5


def unit_dictionary(dim: int, atoms: int, seed: int) -> np.ndarray:
    W = np.random.default_rng(seed).standard_normal((dim, atoms))
    return W / np.linalg.norm(W, axis=0)


def soft(v: np.ndarray, t) -> np.ndarray:
    return np.sign(v) * np.maximum(np.abs(v) - t, 0)


@pytest.mark.parametrize("atoms", [16, 32])  # complete and 2x overcomplete
def test_cod_optimum_equals_fista_and_satisfies_kkt(atoms):
    W = unit_dictionary(16, atoms, 0)
    x = 2 * np.random.default_rng(1).standard_normal((8, 16))
    Wt, xt = torch.from_numpy(W), torch.from_numpy(x)
    z_cod, _ = solve_lasso_cod(xt, Wt, ALPHA, tol=1e-12)
    z_fista = solve_lasso_fista(xt, Wt, ALPHA, tol=1e-9, max_steps=5000)
    f_cod, f_fista = lasso_objective(xt, Wt, z_cod, ALPHA), lasso_objective(xt, Wt, z_fista, ALPHA)
    assert torch.allclose(f_cod, f_fista, rtol=1e-8, atol=0)
    # KKT, in numpy: |W^T (x - W z)|_i <= alpha everywhere, = alpha sign(z_i) on the support
    z = z_cod.numpy()
    gradient = (x - z @ W.T) @ W
    assert np.all(np.abs(gradient) <= ALPHA + 1e-9)
    support = z != 0
    assert support.any() and not support.all()
    np.testing.assert_allclose(gradient[support], ALPHA * np.sign(z[support]), atol=1e-9)


def test_lista_at_its_initial_values_is_ista():
    W = unit_dictionary(16, 32, 2)
    x = np.random.default_rng(3).standard_normal((5, 16))
    model = LISTA(A=torch.from_numpy(W), layers=6, lam=ALPHA)
    estimates = model(torch.from_numpy(x))
    L = 1.001 * np.linalg.norm(W, 2) ** 2  # the project's Lipschitz constant (models/lista.py)
    W_e, S, theta = W.T / L, np.eye(32) - W.T @ W / L, ALPHA / L
    z = np.zeros((5, 32))
    for estimate in estimates:  # ISTA: z <- h_{alpha/L}(z + W^T (x - W z) / L), written with W_e, S
        z = soft(z @ S.T + x @ W_e.T, theta)
        np.testing.assert_allclose(estimate.detach().numpy(), z, rtol=0, atol=1e-13)


def cod_by_sample(W: np.ndarray, x: np.ndarray, steps: int, alpha: float) -> list[np.ndarray]:
    """Algorithm 2 for one sample at a time: the outputs h(B) after 0..steps coordinate steps."""
    S = np.eye(W.shape[1]) - W.T @ W
    outputs = []
    for sample in x:
        B, Z, row = W.T @ sample, np.zeros(W.shape[1]), [soft(W.T @ sample, alpha)]
        for _ in range(steps):
            Zbar = soft(B, alpha)
            k = int(np.argmax(np.abs(Z - Zbar)))
            B = B + S[:, k] * (Zbar[k] - Z[k])
            Z[k] = Zbar[k]
            row.append(soft(B, alpha))
        outputs.append(row)
    return [np.stack([row[t] for row in outputs]) for t in range(steps + 1)]


def test_lcod_at_its_initial_values_is_cod():
    W = unit_dictionary(12, 24, 4)
    x = np.random.default_rng(5).standard_normal((6, 12))
    expected = cod_by_sample(W, x, 9, ALPHA)
    for cls in (CoordinateDescent, LCoD):
        estimates = cls(A=torch.from_numpy(W), layers=10, lam=ALPHA)(torch.from_numpy(x))
        assert len(estimates) == 10
        for estimate, want in zip(estimates, expected):
            np.testing.assert_allclose(estimate.detach().numpy(), want, rtol=0, atol=1e-12)


def test_lcod_learns_through_the_selected_coordinates_and_cod_does_not_learn():
    W = torch.from_numpy(unit_dictionary(12, 24, 6)).float()
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))
    lcod = LCoD(A=W, layers=4, lam=ALPHA)
    lcod(x)[-1].pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (lcod.W_e, lcod.S, lcod.theta))
    assert not list(CoordinateDescent(A=W, layers=4, lam=ALPHA).parameters())
    with pytest.raises(ValueError, match="unit-norm columns"):
        CoordinateDescent(A=2 * W, layers=4, lam=ALPHA)


def test_baseline_encoders_are_eq_7():
    W = torch.from_numpy(unit_dictionary(8, 10, 7))
    x = torch.from_numpy(np.random.default_rng(8).standard_normal((3, 8)))
    tanh, double = BaselineEncoder(W, "tanh"), BaselineEncoder(W, "double_tanh", lam=0.3)
    with torch.no_grad():
        tanh.D.copy_(torch.linspace(0.5, 2, 10, dtype=torch.float64))
        double.D.copy_(torch.linspace(1, 3, 10, dtype=torch.float64))
    pre = x.numpy() @ W.numpy()  # W_e = W^T at the start
    np.testing.assert_allclose(tanh(x)[0].detach().numpy(), np.linspace(0.5, 2, 10) * np.tanh(pre), atol=1e-14)
    np.testing.assert_allclose(double(x)[0].detach().numpy(),
                               np.linspace(1, 3, 10) * (np.tanh(pre + 0.3) + np.tanh(pre - 0.3)), atol=1e-14)


def test_patches_are_normalised_windows_of_the_image_and_flat_ones_are_dropped(tmp_path):
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, (12, 14), dtype=np.uint8)
    image[:6, :6] = 77  # a flat corner: its 4x4 windows have std 0
    Image.fromarray(image).save(tmp_path / "a.png")
    gray = image.astype(np.float64) / 255
    windows = {(r, c): gray[r:r + 4, c:c + 4].ravel() for r in range(9) for c in range(11)}

    def normalised(w):
        return (w - w.mean()) / w.std()  # numpy's std: ddof 0

    raw = np.stack([windows[0, 0], windows[5, 7], windows[6, 3]])
    kept = normalize_patches(torch.from_numpy(raw), min_std=0.01).numpy()
    assert len(kept) == 2  # the flat window (0, 0) is discarded
    np.testing.assert_allclose(kept, np.stack([normalised(windows[5, 7]), normalised(windows[6, 3])]), atol=1e-6)

    images = load_images(str(tmp_path), "data.train_dir", None, 4)
    patches = draw_patches(images, 50, 4, 0.01, torch.Generator().manual_seed(0)).double().numpy()
    allowed = np.stack([normalised(w) for w in windows.values() if w.std() > 0.01])
    for patch in patches:  # each drawn patch is one of the image's windows, normalised
        assert np.abs(allowed - patch).max(axis=1).min() < 1e-5
    np.testing.assert_allclose(patches.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(patches.var(axis=1), 1, atol=1e-5)


def test_experiment_writes_table_1_with_the_papers_values(tmp_path):
    root = random_image_folders(tmp_path, {"train": {f"{i}.png": (24, 20) for i in range(3)},
                                           "test": {"t.png": (20, 24)}})
    args = ["+experiment=gregor2010_lista", f"data.train_dir={root / 'train'}", f"data.test_dir={root / 'test'}",
            "data.patch_size=4", "data.atoms=100", "data.dictionary_steps=2", "data.dictionary_batch=16",
            "data.n_train=64", "data.n_val=32", "data.n_test=32", "data.baseline_iterations=20", "model.layers=2",
            "trainer.max_epochs=1", "trainer.steps_per_epoch=3", "trainer.progress=false"]
    result = run_cli([*args, "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "run"
    metrics = read_metrics(run)["metrics"]
    assert metrics["published/test/code_sq_error"] == 1.50
    assert metrics["published/baseline/fista/test/iterations_to_match"] == 18
    table = pd.read_csv(run / "table1.csv").set_index("row")
    assert table.loc["lista@2", "published m=100"] == 1.50 and table.loc["lista@2", "published m=400"] == 2.45
    assert table.loc["tanh_encoder@1", "published m=400"] == 10.7
    assert table.loc["lista@2", "this run"] == pytest.approx(metrics["test/code_sq_error"], rel=1e-6)
    layers = pd.read_csv(run / "layers.csv").set_index("layer")
    assert table.loc["fista@1", "this run"] == pytest.approx(layers.loc[1, "baseline/fista/test/code_sq_error"])
    # iterations as the paper counts them: FISTA's from Z = 0 (its layer), CoD's after h(W_e X) (layer - 1)
    for name, before_first in (("fista", 0), ("cod", 1)):
        reached = layers.index[(layers.index > 0) & (layers[f"baseline/{name}/test/code_sq_error"]
                                                      <= metrics["test/code_sq_error"])]
        expected = reached[0] - before_first if len(reached) else None
        assert metrics.get(f"baseline/{name}/test/iterations_to_match") == expected
    assert np.load(run / "dictionary.npy").shape == (16, 100)
    assert "1.5" in (run / "results.md").read_text()

    # the saved dictionary, read back, gives the same problem: the same targets, so the same baseline errors
    again = run_cli(["+experiment=gregor2010_lista", "model=fista", *args[1:], "data.dictionary_steps=0",
                     f"data.dictionary_path={run / 'dictionary.npy'}", "hydra.run.dir=again"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    reread = read_metrics(tmp_path / "again")["metrics"]
    for name in ("fista", "cod"):
        key = f"baseline/{name}/test/code_sq_error"
        assert reread[key] == pytest.approx(layers.loc[2, key], rel=1e-6)
    wrong = run_cli([*args, "data.atoms=50", f"data.dictionary_path={run / 'dictionary.npy'}", "hydra.run.dir=wrong"],
                    tmp_path)
    message = wrong.stdout + wrong.stderr
    assert wrong.returncode == 2 and "data.dictionary_path" in message and "Traceback" not in message


def test_online_dictionary_learning_lowers_the_lasso_objective_of_new_samples():
    """The paper's procedure (CoD codes, an SGD step, unit columns) on x = D* z* with sparse z*: the optimal
    lasso objective of held-out samples under the learned W is below that under its random start."""
    true = torch.from_numpy(unit_dictionary(12, 16, 10))

    def draw(count, gen=torch.Generator().manual_seed(11)):
        codes = 3 * torch.randn(count, 16, generator=gen, dtype=torch.float64)
        return (codes * (torch.rand(count, 16, generator=gen, dtype=torch.float64) < 0.2)) @ true.T

    held_out = draw(100)
    start = learn_dictionary(draw, 12, 16, ALPHA, 0, 32, 0.1, 100, torch.Generator().manual_seed(0), 1e-8)
    learned = learn_dictionary(draw, 12, 16, ALPHA, 20, 32, 0.1, 100, torch.Generator().manual_seed(0), 1e-6)
    torch.testing.assert_close(torch.linalg.vector_norm(learned, dim=0), torch.ones(16, dtype=torch.float64))

    def objective(W):
        return lasso_objective(held_out, W, solve_lasso_cod(held_out, W, ALPHA, 1e-8)[0], ALPHA).mean().item()

    assert objective(learned) < 0.8 * objective(start)


def test_inverse_time_schedule_is_lr_over_one_plus_t_over_decay():
    from unroll_cli.train.schedules import InverseTimeLR

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    scheduler = InverseTimeLR(optimizer, decay=4)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(rates, [0.3 / (1 + t / 4) for t in range(6)], rtol=1e-12)
