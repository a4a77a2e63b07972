"""The cyclic-group unfolded network (model=cyclic_unfolded, Theodosis & Ba 2022), the rotated
Fashion-MNIST split and ZCA whitening: equivariance, parameter counts and rotations against
independent computations (torch.rot90, torchvision's rotate, numpy's SVD)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import rotate

from unroll_cli.data import images as im
from unroll_cli.data.rotated import rotate_images, rotated_split
from unroll_cli.data.whitening import ZCA
from unroll_cli.models.cyclic import CyclicUnfolded
from unroll_cli.tasks.classification import ImageClassification

from conftest import compose_cfg
from test_image_data import make_cifar, make_idx_set


def shift_copies(u: torch.Tensor, groups: int) -> torch.Tensor:
    """Copy g -> copy g + 1 (cyclically), each rotated by 90 degrees: what a 90-degree rotation of the
    input does to a code (N, G*S, H, W) of an equivariant network."""
    n, c, h, w = u.shape
    v = torch.roll(u.reshape(n, groups, c // groups, h, w), shifts=1, dims=1)
    return torch.rot90(v, 1, dims=(-2, -1)).reshape(n, c, h, w)


def randomised(model: CyclicUnfolded) -> CyclicUnfolded:
    """Thresholds and batch-norm affine maps away from their initial values, batch-norm running
    statistics from a few training-mode forwards: nothing trivially symmetric."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for lam in model.lam:
            lam.copy_(torch.rand(lam.shape, generator=gen, dtype=lam.dtype) * 3)
        for norm in model.norms:
            norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=gen, dtype=norm.weight.dtype))
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen, dtype=norm.bias.dtype) * 0.1)
        model.train()
        for norm in model.norms:
            norm.momentum = None  # running statistics: the average of the batches'
        for _ in range(3):
            model(torch.randn(6, model.in_channels, 14, 14, generator=gen, dtype=torch.float64))
    return model.eval()


def equivariant_net(tied: bool = True) -> CyclicUnfolded:
    torch.manual_seed(0)
    model = CyclicUnfolded(in_channels=2, image_size=14, layers=4, group_size=3, num_groups=4, angle=90.0,
                           kernel_size=5, tie_group_params=tied).double()
    return randomised(model)


def test_rotating_the_input_shifts_and_rotates_the_codes_of_every_layer():
    model = equivariant_net()
    assert all(norm.running_var.sub(1).abs().min() > 0.1 for norm in model.norms)  # statistics not trivial
    y = torch.randn(5, 2, 14, 14, dtype=torch.float64)
    with torch.no_grad():
        codes, rotated = model.codes(y), model.codes(torch.rot90(y, 1, dims=(-2, -1)))
    assert len(codes) == 4
    for u, u_rot in zip(codes, rotated):
        assert u.abs().max() > 1e-3  # codes that are not all zero
        torch.testing.assert_close(u_rot, shift_copies(u, 4), rtol=0, atol=1e-12)


def test_untied_batch_norm_and_thresholds_break_the_equivariance():
    """The authors' per-channel batch normalisation and thresholds: the same check fails."""
    model = equivariant_net(tied=False)
    y = torch.randn(5, 2, 14, 14, dtype=torch.float64)
    with torch.no_grad():
        u, u_rot = model.codes(y)[-1], model.codes(torch.rot90(y, 1, dims=(-2, -1)))[-1]
    assert (u_rot - shift_copies(u, 4)).abs().max() > 1e-3


def test_the_head_is_invariant_only_when_its_weight_is_symmetric():
    """The pooled features (23 -> 4 bins of 6, 7, 7, 6: symmetric) move like the codes, so the logits of a
    rotated image are those of the image under the head whose weight rows are moved back; the head is
    invariant when its weight is averaged over the four moves, not in general."""
    model = equivariant_net()
    y = torch.randn(5, 2, 14, 14, dtype=torch.float64)
    y_rot = torch.rot90(y, 1, dims=(-2, -1))
    with torch.no_grad():
        torch.testing.assert_close(model.features(model.codes(y_rot)[-1]),
                                   shift_copies(model.features(model.codes(y)[-1]), 4), rtol=0, atol=1e-12)
        assert (model(y_rot) - model(y)).abs().max() > 1e-3
        rows = model.head.weight.view(-1, model.channels, 4, 4)
        orbit = [rows]
        for _ in range(3):
            orbit.append(shift_copies(orbit[-1], 4))
        model.head.weight.copy_(torch.stack(orbit).mean(0).flatten(1))
        torch.testing.assert_close(model(y_rot), model(y), rtol=0, atol=1e-12)


def test_default_parameter_count_is_17890():
    cfg = compose_cfg(["model=cyclic_unfolded"]).model
    keys = {k: cfg[k] for k in ("layers", "group_size", "num_groups", "angle", "kernel_size", "step",
                                 "tie_group_params", "rotate")}
    model = CyclicUnfolded(in_channels=3, num_classes=10, image_size=32, **keys)
    filters, channels = 10, 60  # 10 basis filters of 3 x 8 x 8, 6 copies
    expected = (4 * filters * 3 * 8 * 8  # bases: 7,680
                + 4 * channels  # thresholds: 240
                + 3 * 2 * channels  # batch norm between the 4 layers: 360
                + channels * 4 * 4 * 10 + 10)  # head: 9,610
    assert expected == 17_890
    assert sum(p.numel() for p in model.parameters()) == expected
    tied = CyclicUnfolded(in_channels=3, image_size=32, tie_group_params=True)
    assert sum(p.numel() for p in tied.parameters()) == 7680 + 4 * 10 + 3 * 2 * 10 + 9610


def test_the_baseline_without_rotations_has_about_the_same_parameters():
    """rotate=false: free filters, as many as bring the count nearest the rotated network's (1 channel:
    12,770 parameters; 30 free filters give 4*30*64 + 4*30 + 3*60 + 480*10 + 10 = 12,790)."""
    rotated = CyclicUnfolded(in_channels=1, image_size=28)
    free = CyclicUnfolded(in_channels=1, image_size=28, rotate=False)
    assert sum(p.numel() for p in rotated.parameters()) == 4 * 640 + 240 + 360 + 9610 == 12_770
    assert free.channels == 30 and sum(p.numel() for p in free.parameters()) == 12_790
    assert torch.equal(free.dictionary(2), free.B[2])


def test_copies_are_torchvision_rotations_of_the_base():
    torch.manual_seed(1)
    model = CyclicUnfolded(in_channels=3, image_size=32)
    B = model.B[1].detach()
    W = model.dictionary(1).detach()
    for g in range(6):
        assert torch.equal(W[10 * g:10 * (g + 1)], rotate(B, 60.0 * g))
    # each copy is rotated from the base, not from the previous copy (nearest rotations do not compose)
    assert not torch.equal(W[20:30], rotate(rotate(B, 60.0), 60.0))
    square = CyclicUnfolded(in_channels=3, image_size=32, num_groups=4, angle=90.0).dictionary(0).detach()
    base = square[:10]
    for k in range(4):
        assert torch.equal(square[10 * k:10 * (k + 1)], torch.rot90(base, k, dims=(-2, -1)))
        assert torch.equal(rotate(base, 90.0 * k), torch.rot90(base, k, dims=(-2, -1)))


def test_after_step_renormalises_every_channel_of_every_basis_filter():
    model = CyclicUnfolded(in_channels=3, image_size=32)
    with torch.no_grad():
        for B in model.B:
            B.mul_(torch.rand(B.shape[:2])[..., None, None] * 5)
    model.after_step()
    for B in model.B:
        norms = B.detach().pow(2).sum(dim=(-2, -1)).sqrt()
        torch.testing.assert_close(norms, torch.ones_like(norms))


def test_forward_with_fewer_unfoldings_runs_the_first_layers():
    model = equivariant_net()
    y = torch.randn(3, 2, 14, 14, dtype=torch.float64)
    with torch.no_grad():
        codes = model.codes(y)
        for t in range(4):
            expected = torch.log_softmax(model.head(model.features(codes[t]).flatten(1)), dim=1)
            torch.testing.assert_close(model(y, t), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="unfoldings=4 exceeds"):
        model(y, 4)


# ----------------------------------------------------------------------------- rotated data
def test_batched_rotation_equals_torchvision_rotate():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (100, 2, 28, 28), generator=gen, dtype=torch.uint8)
    angles = torch.rand(100, generator=gen, dtype=torch.float64) * 360
    angles[:4] = torch.tensor([0.0, 90.0, 180.0, 45.0], dtype=torch.float64)
    expected = torch.stack([rotate(x, float(a)) for x, a in zip(images, angles)])
    assert torch.equal(rotate_images(images, angles), expected)
    floats = images[:20].double() / 255
    torch.testing.assert_close(rotate_images(floats, angles[:20]),
                               torch.stack([rotate(x, float(a)) for x, a in zip(floats, angles[:20])]),
                               rtol=0, atol=0)


@pytest.fixture
def idx_root(tmp_path, monkeypatch):
    monkeypatch.setattr(im, "FASHION_MNIST_SYSTEM_DIRS", (str(tmp_path / "no-system-dir"),))
    make_idx_set(tmp_path / "FashionMNIST" / "raw", np.random.default_rng(0), gz=True, n_train=40, n_test=20)
    return tmp_path


def test_rotated_split_sizes_images_and_seed(idx_root):
    task = ImageClassification("fashion_mnist", root=str(idx_root), download=False, rotated_split=[30, 25],
                               rotation_seed=7)
    assert (len(task.train_images), len(task.test_images)) == (30, 25)
    assert task.setting() == "fashion_mnist_rot"
    plain = ImageClassification("fashion_mnist", root=str(idx_root), download=False)
    pool_x = torch.cat([plain.train_images, plain.test_images])
    pool_y = torch.cat([plain.train_labels, plain.test_labels])
    drawn = rotated_split((plain.train_images, plain.train_labels), (plain.test_images, plain.test_labels),
                          (30, 25), seed=7)
    assert torch.equal(drawn.train[0], task.train_images) and torch.equal(drawn.test[0], task.test_images)
    index = torch.cat(drawn.index)
    assert len(set(index.tolist())) == 55  # without replacement, from all 60
    assert torch.equal(torch.cat([task.train_labels, task.test_labels]), pool_y[index])
    angles = torch.cat(drawn.angle)
    assert 0 <= angles.min() and angles.max() < 360 and angles.std() > 50
    rotated = torch.cat([task.train_images, task.test_images])
    for i in range(55):
        assert torch.equal(rotated[i], rotate(pool_x[index[i]], float(angles[i])))
    again = ImageClassification("fashion_mnist", root=str(idx_root), download=False, rotated_split=[30, 25],
                                rotation_seed=7, seed=5)  # the run's seed does not change the data
    assert torch.equal(again.train_images, task.train_images) and torch.equal(again.test_labels, task.test_labels)
    other = ImageClassification("fashion_mnist", root=str(idx_root), download=False, rotated_split=[30, 25],
                                rotation_seed=8)
    assert not torch.equal(other.train_images, task.train_images)


def test_fashion_mnist_rot_config_has_mnist_rot_sizes():
    cfg = compose_cfg(["data=fashion_mnist_rot"]).data
    assert (cfg.name, list(cfg.rotated_split), cfg.rotation_seed) == ("fashion_mnist", [12000, 50000], 0)
    folder = next((d for d in im.FASHION_MNIST_SYSTEM_DIRS if im._find_idx(Path(d))), None)
    if folder is None:
        pytest.skip("Fashion-MNIST is not installed (dataset-fashion-mnist)")
    task = ImageClassification("fashion_mnist", download=False, rotated_split=[12000, 50000])
    assert (len(task.train_images), len(task.test_images)) == (12000, 50000)


# ----------------------------------------------------------------------------- ZCA
def authors_zca(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Per-channel standardisation, then np.cov / np.linalg.svd ZCA of the flattened vectors."""
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), ddof=1, keepdims=True)
    flat = x.reshape(len(x), -1)
    U, S, _ = np.linalg.svd(np.cov(flat, rowvar=False))
    return (flat @ (U @ np.diag(1.0 / np.sqrt(S + eps)) @ U.T)).reshape(x.shape)


def test_zca_matches_the_authors_computation_and_whitens():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (400, 3, 4, 4), generator=gen, dtype=torch.uint8)
    images[:, 1] = images[:, 1] // 2 + images[:, 0] // 2  # correlated channels
    whitened = ZCA(images)(images.float() / 255)
    expected = authors_zca(images.double().numpy() / 255)
    np.testing.assert_allclose(whitened.double().numpy(), expected, atol=2e-4)
    cov = np.cov(whitened.double().numpy().reshape(400, -1), rowvar=False)
    np.testing.assert_allclose(cov, np.eye(48), atol=1e-3)


class FittedOn:
    """A stand-in for ZCA (whose 3072 x 3072 eigen-decomposition takes minutes on a loaded CPU): it
    remembers the images it was fitted on and marks what it is applied to with their number."""

    def __init__(self, images):
        self.images = images

    def to(self, device):
        return self

    def __call__(self, x):
        return x + len(self.images)


def test_cifar10_zca_option_whitens_the_test_set_with_the_chosen_statistics(tmp_path, monkeypatch):
    """The training images by the training set's statistics; the test images by the training set's
    (default) or, as the authors' code, by their own (the ZCA itself: the test above)."""
    monkeypatch.setattr("unroll_cli.tasks.classification.ZCA", FittedOn)
    make_cifar(tmp_path, np.random.default_rng(2), per_batch=6, n_test=12)
    for statistics, test_source in (("train", 30), ("own", 12)):
        task = ImageClassification("cifar10", root=str(tmp_path), download=False, arch="cifar10", zca=True,
                                   zca_statistics=statistics)
        assert torch.equal(task.whitening["train"].images, task.train_images)
        assert torch.equal(task.whitening["test"].images, task.train_images if statistics == "train"
                           else task.test_images)
        test = task.test_images.float() / 255
        torch.testing.assert_close(task.preprocess(task.test_images, "test"), test + test_source, rtol=0, atol=0)
        batch, _ = next(task.train_batches())
        assert batch.min() >= 30 and batch.max() <= 31  # the training batches: the training set's


def test_zca_with_a_fixed_normalisation_is_refused(tmp_path):
    from unroll_cli.errors import ConfigError

    make_cifar(tmp_path, np.random.default_rng(2))
    with pytest.raises(ConfigError, match="data.normalize_mean=null"):
        ImageClassification("cifar10", root=str(tmp_path), download=False, arch="cifar10", zca=True,
                            normalize_mean=[0.5] * 3, normalize_std=[0.2] * 3)


# ----------------------------------------------------------------------------- the experiment
@pytest.mark.slow  # three runs of a 4-layer network with 60 channels: about 30 s on 2 idle cores
def test_experiment_sweep_reports_accuracy_and_parameters(tmp_path, monkeypatch):
    """The short recipe's three models, one epoch of two batches on tiny rotated Fashion-MNIST files: each
    run completes with its test accuracy and parameter count, and unroll-report tables both."""
    import pandas as pd

    from conftest import read_metrics, run_cli
    from test_classification_run import write_learnable_mnist

    cfg = compose_cfg(["+experiment=theodosis2022_cyclic"])
    assert (cfg.model.name, cfg.data.batch_size, cfg.optim.lr, cfg.optim.eps, list(cfg.sched.milestones),
            cfg.sched.gamma, cfg.trainer.max_epochs, cfg.trainer.grad_clip, list(cfg.data.rotated_split)) == (
        "cyclic_unfolded", 64, 1e-2, 1e-8, [33, 66], pytest.approx(1 / 3), 100, 2.0, [12000, 50000])
    monkeypatch.setattr(im, "FASHION_MNIST_SYSTEM_DIRS", ())
    write_learnable_mnist(tmp_path / "data/FashionMNIST/raw", np.random.default_rng(0), 100, 40)
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "+experiment=theodosis2022_cyclic_cpu_short", "model=cyclic_unfolded,cyclic_free,cnn",
                      f"data.root={tmp_path / 'data'}", "data.download=false", "data.rotated_split=[100,40]",
                      "data.n_train=80", "data.n_test=30", "trainer.max_epochs=1", "trainer.progress=false",
                      "tensorboard=false", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = {read_metrics(p.parent)["model"]: read_metrics(p.parent) for p in sweep.glob("*/metrics.json")}
    assert {name: r["params"] for name, r in records.items()} == {
        "cyclic_unfolded": 12_770, "cyclic_free": 12_790, "cnn": 12_709}
    for record in records.values():
        assert record["status"] == "completed" and 0 <= record["metrics"]["test/acc"] <= 100
    report = subprocess.run(
        [sys.executable, "-m", "unroll_cli.report", str(sweep), "--metrics", "test/acc"],
        capture_output=True, text=True, cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    table = pd.read_csv(sweep / "report.csv").set_index("model")
    assert table["params"].to_dict() == {"cnn": 12_709, "cyclic_free": 12_790, "cyclic_unfolded": 12_770}
    assert table["test/acc count"].tolist() == [1, 1, 1]
