"""DenSaE and the CSCNet baselines (model=densae, cscnet_tied_hyp, cscnet_tied_ls) and their experiment:
the forward pass against the authors' recursion written out here with explicit conv2d /
conv_transpose2d calls for each of the shifted copies (float64), the shift averaging against a loop
over the shifts, the refusals (split strings, sizes against images, a noise level without a lam), and
a tiny CLI run's files. Tiny image folders written with PIL."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import compose_cfg, random_image_folders, read_metrics, run_cli
from test_sizes import refused
from unroll_cli.models.densae import DenSaE
from unroll_cli.models.shifts import average_shifts, shift_pads, split_shifts
from unroll_cli.validation import validate

FOLDERS = {"train": {"a.png": (30, 30), "b.png": (26, 34)}, "test": {"t1.png": (20, 24), "t2.png": (22, 22)},
           "small_test": {"t1.png": (20, 24), "tiny.png": (10, 10)}}
SMALL = ["model.layers=3", "trainer.max_epochs=1", "trainer.progress=false", "tensorboard=false",
         "data.crop=16", "data.n_figures=2"]
LAM = {15: 0.085, 25: 0.16, 50: 0.36, 75: 0.56}  # the paper's lam per sigma (btolooshams/densae src/conf.py)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return random_image_folders(tmp_path_factory.mktemp("densae"), FOLDERS)


def bsd(images: Path, model: str = "densae", test: str = "test") -> list[str]:
    return ["data=bsd_denoise", f"model={model}", f"data.train_dir={images / 'train'}",
            f"data.test_dir={images / test}", *SMALL]


# ----------------------------------------------------------------------------- the reference
def authors_pads(h: int, w: int, k: int, s: int) -> tuple[int, int, int, int]:
    """btolooshams/densae src/utils.py calc_pad_sizes, as written there: (left, right, top, bottom)."""
    right = 0 if (w + s - k) % s == 0 else s - ((w + s - k) % s)
    bottom = 0 if (h + s - k) % s == 0 else s - ((h + s - k) % s)
    return s, right + s, s, bottom + s


def reference(y: torch.Tensor, A: torch.Tensor | None, B: torch.Tensor, lam: float, L: float, rho: float,
              T: int, s: int, two_sided: bool = True, b: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' forward, one shifted copy at a time: T FISTA steps from zero with one momentum,
    r = y - ((1 + 1/rho) A x~ + B u~), x = x~ + A^T r / L, u = S(u~ + B^T r / L) (threshold lam/L, or
    b), output A x_T + B u_T cut to the image; the mean over the s^2 shifts. A None: CSCNet (B only)."""
    h, w, k = *y.shape[-2:], B.shape[-1]
    left, right, top, bottom = authors_pads(h, w, k, s)
    estimates = []
    for i in range(s):
        for j in range(s):
            yp = F.pad(y, (left - j, right + j, top - i, bottom + i), mode="reflect")
            code = F.conv2d(yp, B, stride=s)
            u_old = u_tmp = torch.zeros_like(code)
            x_old = x_tmp = torch.zeros(code.shape[0], 0 if A is None else len(A), *code.shape[2:], dtype=y.dtype)
            t_old = 1.0
            for _ in range(T):
                synthesis = F.conv_transpose2d(u_tmp, B, stride=s)
                if A is not None:
                    synthesis = synthesis + F.conv_transpose2d((1 + 1 / rho) * x_tmp, A, stride=s)
                res = yp - synthesis
                x_new = x_tmp + (F.conv2d(res, A, stride=s) / L if A is not None else 0)
                u_new = u_tmp + F.conv2d(res, B, stride=s) / L
                bound = lam / L if b is None else b
                u_new = (torch.relu(u_new.abs() - bound) * u_new.sign() if two_sided else torch.relu(u_new - bound))
                t_new = (1 + math.sqrt(1 + 4 * t_old * t_old)) / 2
                x_tmp = x_new + (t_old - 1) / t_new * (x_new - x_old)
                u_tmp = u_new + (t_old - 1) / t_new * (u_new - u_old)
                x_old, u_old, t_old = x_new, u_new, t_new
            estimate = F.conv_transpose2d(u_new, B, stride=s)
            if A is not None:
                estimate = estimate + F.conv_transpose2d(x_new, A, stride=s)
            assert estimate.shape == yp.shape  # the pads make the synthesis the copy's size
            estimates.append(estimate[..., top - i:top - i + h, left - j:left - j + w])
    return torch.stack(estimates).mean(dim=0)


def float64_model(**options) -> DenSaE:
    torch.manual_seed(0)
    return DenSaE(1, **{"layers": 6, "lam": 0.4, "step": 0.125, "rho": 2.0, "kernel_size": 4, "stride": 3,
                        **options}).double()


Y = torch.rand(2, 1, 17, 19, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# ----------------------------------------------------------------------------- the forward pass
@pytest.mark.parametrize("two_sided", [True, False])
def test_the_forward_pass_is_the_authors_recursion_per_shift_at_every_layer(two_sided):
    """rho = 2: the (1 + 1/rho) of the residual is 1.5 and absent from the output, both visible."""
    model = float64_model(split="2A5B", two_sided=two_sided)
    with torch.no_grad():
        outputs = model(Y)
        for t in (1, 2, 6):
            expected = reference(Y, model.A, model.B, 0.4, 8.0, 2.0, t, 3, two_sided)
            torch.testing.assert_close(outputs[t - 1], expected, rtol=0, atol=1e-10)
        u = reference(Y, None, model.B, 0.4, 8.0, 2.0, 6, 3, two_sided)  # the sparse part alone differs
        assert (outputs[-1] - u).abs().max() > 1e-3


def test_without_dense_filters_it_is_cscnet_with_a_fixed_or_learned_threshold():
    hyp = float64_model(split="0A5B")
    ls = float64_model(split="0A5B", learn_threshold=True, threshold_init=0.01)
    assert ls.b.shape == (1, 5, 1, 1) and torch.all((ls.b - 0.01).abs() < 1e-8)  # float32 0.01
    with torch.no_grad():
        ls.b.copy_(torch.tensor([0.05, -0.01, 0.0, 0.2, 0.03]).view(1, 5, 1, 1))
        torch.testing.assert_close(hyp(Y)[-1], reference(Y, None, hyp.B, 0.4, 8.0, 2.0, 6, 3), rtol=0, atol=1e-10)
        torch.testing.assert_close(ls(Y)[-1], reference(Y, None, ls.B, 0.4, 8.0, 2.0, 6, 3, b=ls.b),
                                   rtol=0, atol=1e-10)
    assert set(hyp.dictionaries()) == {"B"} and hyp.components(Y) == {}


def test_the_components_are_the_dense_and_sparse_parts_of_the_estimate():
    model = float64_model(split="2A5B")
    parts = model.components(Y)
    with torch.no_grad():
        torch.testing.assert_close(parts["A x"] + parts["B u"], model(Y)[-1], rtol=0, atol=1e-12)
        zero_a = float64_model(split="2A5B")
        zero_a.A.zero_()
        torch.testing.assert_close(zero_a.components(Y)["B u"],
                                   reference(Y, None, zero_a.B, 0.4, 8.0, 2.0, 6, 3), rtol=0, atol=1e-10)
    assert set(model.dictionaries()) == {"A", "B"} and model.dictionaries()["A"].shape == (2, 1, 4, 4)


def test_full_size_filters_at_stride_1_are_dense_dictionaries():
    """The paper's MNIST set-up (28x28 filters at stride 1, no shifts) is FISTA with the matrices whose
    columns are the flattened filters: here 6x6 images, one-sided, against a loop with matrices."""
    model = float64_model(split="3A8B", kernel_size=6, stride=1, two_sided=False, lam=0.05)
    y = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    A, B, Y = model.A.detach().flatten(1).T, model.B.detach().flatten(1).T, y.flatten(1).T  # (36, 3), (36, 8)
    x_old = x_tmp = torch.zeros(3, 4, dtype=torch.float64)
    u_old = u_tmp = torch.zeros(8, 4, dtype=torch.float64)
    t_old = 1.0
    for _ in range(6):
        r = Y - (1.5 * A @ x_tmp + B @ u_tmp)
        x_new, u_new = x_tmp + A.T @ r / 8, torch.relu(u_tmp + B.T @ r / 8 - 0.05 / 8)
        t_new = (1 + math.sqrt(1 + 4 * t_old ** 2)) / 2
        x_tmp, u_tmp = x_new + (t_old - 1) / t_new * (x_new - x_old), u_new + (t_old - 1) / t_new * (u_new - u_old)
        x_old, u_old, t_old = x_new, u_new, t_new
    with torch.no_grad():
        torch.testing.assert_close(model(y)[-1].flatten(1).T, A @ x_new + B @ u_new, rtol=0, atol=1e-10)
    assert (u_new == 0).any() and (u_new > 0).any()


# ----------------------------------------------------------------------------- shift averaging
def test_pads_are_the_authors():
    for h, w in ((14, 14), (17, 31), (128, 128), (321, 481)):
        for k, s in ((7, 5), (4, 3), (9, 4), (3, 2)):
            assert shift_pads(h, w, k, s) == authors_pads(h, w, k, s), (h, w, k, s)


def test_shift_averaging_is_a_loop_over_the_shifted_copies():
    """Copies in (image, row shift, column shift) order; the average of per-copy reconstructions (here
    each copy squared times its shift's number + 1, so that an order or a crop error shows) is the
    mean over the shifts of each cut to the image."""
    y = torch.rand(2, 3, 16, 23, dtype=torch.float64)
    copies, windows = split_shifts(y, 7, 5)
    left, right, top, bottom = authors_pads(16, 23, 7, 5)
    weights = torch.arange(1, 26, dtype=torch.float64).repeat(2).view(-1, 1, 1, 1)
    expected = []
    for n in range(2):
        crops = []
        for i in range(5):
            for j in range(5):
                padded = F.pad(y[n:n + 1], (left - j, right + j, top - i, bottom + i), mode="reflect")[0]
                assert torch.equal(copies[25 * n + 5 * i + j], padded)
                crops.append((padded ** 2 * (5 * i + j + 1))[:, top - i:top - i + 16, left - j:left - j + 23])
        expected.append(torch.stack(crops).mean(dim=0))
    torch.testing.assert_close(average_shifts(copies ** 2 * weights, windows), torch.stack(expected),
                               rtol=0, atol=1e-12)
    same, none = split_shifts(y, 7, 1)  # stride 1: the image itself
    assert same is y and none is None and average_shifts(y, None) is y


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("split", ["4a60b", "4A0B", "A60B", "4A60", "-1A60B"])
def test_a_split_that_is_not_nAmB_is_refused_naming_the_key(images, tmp_path, split):
    refused(tmp_path, [*bsd(images), f"model.split={split}"], "model.split")


def test_an_image_too_small_for_the_shifted_copies_is_refused_naming_it(images, tmp_path):
    """10x10 at kernel 7, stride 5: the widest reflect pad is 11 (F.pad refuses pads >= the side)."""
    with pytest.raises(RuntimeError):
        F.pad(torch.zeros(1, 1, 10, 10), (0, 11, 0, 11), mode="reflect")
    refused(tmp_path, bsd(images, test="small_test"), "model.kernel_size=7", "model.stride=5", "tiny.png")


@pytest.mark.parametrize("extra, named", [
    (["data.crop=6"], ["model.kernel_size=7", "data.crop=6"]),
    (["model.stride=8"], ["model.stride=8", "model.kernel_size=7"])])
def test_a_crop_smaller_than_the_filters_and_a_stride_past_them_are_refused(images, tmp_path, extra, named):
    refused(tmp_path, [*bsd(images), *extra], *named)


# ----------------------------------------------------------------------------- runs
@pytest.mark.parametrize("model, split, figures", [
    ("densae", "2A6B", {"atoms_A.png", "atoms_B.png", "components.png"}),
    ("cscnet_tied_ls", "0A6B", {"atoms.png"})])
def test_a_tiny_run_writes_its_metrics_atoms_and_components(images, tmp_path, one_thread, model, split, figures):
    run_dir = tmp_path / "run"
    result = run_cli([*bsd(images, model), f"model.split={split}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed" and math.isfinite(metrics["metrics"]["test/psnr"])
    drawn = {p.name for p in (run_dir / "figures").iterdir()}
    assert figures <= drawn and ("components.png" in drawn) == ("components.png" in figures)
    for name, count in (("A", 2), ("B", 6)) if model == "densae" else (("", 6),):
        assert np.load(run_dir / f"dictionary{'_' + name if name else ''}.npy").shape == (count, 1, 7, 7)
    assert json.loads((run_dir / "tables.json").read_text())["layers.csv"] == ["layer"]
    trained = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    if model == "cscnet_tied_ls":  # its thresholds are trained: they moved from 0.01
        assert trained["b"].shape == (1, 6, 1, 1) and (trained["b"] - 0.01).abs().min() > 0
    else:
        assert "b" not in trained and trained["A"].shape == (2, 1, 7, 7)


# ----------------------------------------------------------------------------- the experiment
@pytest.mark.parametrize("sigma", sorted(LAM))
def test_the_experiments_lam_and_test_noise_follow_data_sigma(sigma):
    cfg = compose_cfg(["+experiment=tasissa2024_densae_denoise", f"data.sigma={sigma}"])
    validate(cfg)
    assert cfg.model.lam == LAM[sigma] and list(cfg.data.test_sigmas) == [sigma]
    assert (cfg.model.kernel_size, cfg.model.stride, cfg.model.layers, cfg.model.step) == (7, 5, 15, 0.1)
    assert (cfg.data.crop, cfg.optim.eps, cfg.sched.step_size, cfg.sched.gamma) == (128, 5e-4, 50, 0.8)
    ls = compose_cfg(["+experiment=tasissa2024_densae_denoise", "model=cscnet_tied_ls", f"data.sigma={sigma}",
                      "model.lam=0.3"])
    assert (ls.model.split, ls.model.learn_threshold, ls.model.lam) == ("0A64B", True, 0.3)


def test_a_noise_level_without_a_lam_is_refused_naming_model_lam(images, tmp_path):
    refused(tmp_path, ["+experiment=tasissa2024_densae_denoise", "data.sigma=30",
                       f"data.train_dir={images / 'train'}", f"data.test_dir={images / 'test'}"], "model.lam", "30")


def test_adam_on_half_the_loss_with_half_eps_takes_the_authors_steps():
    """The experiment's eps 5e-4 on the task's 0.5 * sum (y - y_hat)^2 equals eps 1e-3 on the sum."""
    target = torch.randn(50, dtype=torch.float64)
    trajectories = []
    for scale, eps in ((1.0, 1e-3), (0.5, 5e-4)):
        w = torch.zeros(50, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.Adam([w], lr=1e-2, eps=eps)
        for _ in range(20):
            optimizer.zero_grad()
            (scale * (target - w.sin()).pow(2).sum()).backward()
            optimizer.step()
        trajectories.append(w.detach())
    torch.testing.assert_close(*trajectories, rtol=0, atol=1e-12)
