"""Sizes that cannot fit the data (filters, crops, windows, a dense dictionary, an architecture against
the images) are refused when the data is read: one message naming both the model's key and the data's
key or file, exit code 2, before any training (issue 21). Tiny image folders written with PIL; the
refusals are compared with what torch itself can compute on those sizes."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import random_image_folders, read_metrics, run_cli
from test_classification_run import write_learnable_mnist
from unroll_cli.models.autoencoders import SparseAutoencoder

# file name -> (height, width) of each folder's images
FOLDERS = {"train": {"a.png": (30, 30), "b.png": (26, 34)},
           "test": {"t1.png": (20, 24), "t2.png": (22, 22)},
           "small_test": {"t1.png": (20, 24), "tiny.png": (6, 8)},
           "small_train": {"a.png": (30, 30), "z_tiny.png": (5, 5)},  # the last file: the validation image
           "exact": {"k.png": (7, 7)}}
SMALL = ["model.layers=2", "model.filters=4", "model.kernel_size=5", "model.stride=2", "trainer.max_epochs=1",
         "trainer.progress=false", "tensorboard=false", "data.n_figures=0"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return random_image_folders(tmp_path_factory.mktemp("sizes"), FOLDERS)


def bsd(images: Path, train: str = "train", test: str = "test") -> list[str]:
    return ["data=bsd_denoise", "model=sparse_ae", f"data.train_dir={images / train}",
            f"data.test_dir={images / test}", "data.crop=16", *SMALL]


def mnist(tmp_path: Path) -> list[str]:
    write_learnable_mnist(tmp_path / "data/MNIST/raw", np.random.default_rng(0), 40, 20)
    return ["data=mnist_denoise", "model=sparse_ae", f"data.root={tmp_path / 'data'}", "data.download=false",
            "data.representer_images=0", *SMALL]


def refused(tmp_path: Path, args: list[str], *named: str) -> str:
    """Run the CLI; assert exit code 2, no traceback, one line naming every one of ``named``, and
    nothing trained (no history, no checkpoint, no metrics.json). The message line is returned."""
    run_dir = tmp_path / "run"
    result = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if all(n in line for n in named)]
    assert len(lines) == 1, output
    assert not (run_dir / "history.csv").exists() and not (run_dir / "checkpoints").exists()
    assert not (run_dir / "metrics.json").exists()
    return lines[0]


# ----------------------------------------------------------------------------- filters against images
def test_a_test_image_smaller_than_the_filters(images, tmp_path):
    refused(tmp_path, [*bsd(images, test="small_test"), "model.kernel_size=7"],
            "model.kernel_size=7", "test image tiny.png", f"data.test_dir={images / 'small_test'}", "6x8")


def test_a_validation_image_smaller_than_the_filters(images, tmp_path):
    refused(tmp_path, [*bsd(images, train="small_train"), "data.val_size=1", "model.kernel_size=7"],
            "model.kernel_size=7", "validation image z_tiny.png", "data.val_size=1", "5x5")


def test_training_crops_smaller_than_the_filters(images, tmp_path):
    refused(tmp_path, [*bsd(images), "data.crop=4"], "model.kernel_size=5", "data.crop=4", "4x4")


def test_test_windows_smaller_than_the_filters(images, tmp_path):
    refused(tmp_path, [*bsd(images), "data.test_crop=4"], "model.kernel_size=5", "data.test_crop=4", "4x4")


def test_filters_larger_than_the_mnist_images(tmp_path):
    refused(tmp_path, [*mnist(tmp_path), "model.kernel_size=29"], "model.kernel_size=29", "data.name=mnist",
            "28x28")


def test_data_initialised_filters_larger_than_the_crops_are_named_before_the_initialisation(images, tmp_path):
    """group_sparse_ae draws its atoms from the crops (model.init=data): the size is refused first."""
    refused(tmp_path, [*bsd(images), "model=group_sparse_ae", "model.group_size=2", "model.kernel_size=17"],
            "model.kernel_size=17", "data.crop=16", "16x16")


def test_a_stride_larger_than_the_filters(images, tmp_path):
    refused(tmp_path, [*bsd(images), "model.stride=6"], "model.stride=6", "model.kernel_size=5", "data.crop=16")


# ----------------------------------------------------------------------------- a dense dictionary
def test_a_dense_autoencoder_given_whole_test_images_of_other_sizes(images, tmp_path):
    line = refused(tmp_path, [*bsd(images), "model.conv=false", "model.atoms=8"],
                   "model.conv=false", "data.crop=16", "test image t1.png", f"data.test_dir={images / 'test'}")
    assert "20x24" in line and "data.test_crop=null" in line  # the size, and the key that would fix it


def test_a_dense_autoencoder_given_validation_images_of_another_size(images, tmp_path):
    refused(tmp_path, [*bsd(images), "model.conv=false", "model.atoms=8", "data.test_crop=16", "data.val_size=1"],
            "model.conv=false", "validation image b.png", "data.val_size=1", "26x34")


def test_an_input_dim_other_than_the_images(tmp_path):
    refused(tmp_path, [*mnist(tmp_path), "model.conv=false", "model.atoms=8", "model.input_dim=100"],
            "model.input_dim=100", "data.name=mnist", "784")


def test_a_test_window_too_large_for_memory_is_refused_before_it_is_drawn(images, tmp_path):
    refused(tmp_path, [*bsd(images), "data.test_crop=10000000"], "data.test_crop=10000000: this run would need")


# ----------------------------------------------------------------------------- what still runs
def test_images_exactly_the_filters_size_run(images, tmp_path):
    """Crops, training and test images of exactly kernel_size: one window each, a completed run."""
    run_dir = tmp_path / "run"
    result = run_cli([*bsd(images, train="exact", test="exact"), "data.crop=7", "model.kernel_size=7",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_metrics(run_dir)["status"] == "completed"


def test_a_dense_autoencoder_on_test_windows_of_the_crop_size_runs(images, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*bsd(images), "model.conv=false", "model.atoms=8", "data.test_crop=16",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_metrics(run_dir)["status"] == "completed"


# ----------------------------------------------------------------------------- against torch
@pytest.mark.parametrize("side", [4, 5, 6, 9])
@pytest.mark.parametrize("kernel, stride", [(5, 1), (5, 2), (5, 5), (5, 6), (3, 4)])
def test_refused_exactly_when_the_filters_cannot_cover_the_image(side, kernel, stride):
    """Against torch's own convolution: refused when conv2d cannot take the image (smaller than the
    filters), or when the windows leave gaps between them (a pixel in no window, counted with fold)."""
    W = torch.ones(1, 1, kernel, kernel)
    try:
        F.conv2d(torch.ones(1, 1, side, side), W, stride=stride)
        covered = F.fold(F.unfold(torch.ones(1, 1, side, side), kernel, stride=stride), (side, side), kernel,
                         stride=stride)[0, 0]
        inner = covered[:(side - kernel) // stride * stride + kernel, :(side - kernel) // stride * stride + kernel]
        fits = bool((inner > 0).all())
    except RuntimeError:
        fits = False
    options = dict(filters=2, kernel_size=kernel, stride=stride, layers=1, input_sizes={"the images": (side, side)})
    if fits:
        SparseAutoencoder(1, **options)
    else:
        with pytest.raises(ValueError, match=r"^model\.(kernel_size|stride)="):
            SparseAutoencoder(1, **options)


def test_rows_no_window_reaches_are_a_warning_with_the_size_that_fits(caplog):
    """16x17 images, 5x5 filters at stride 2: the last row is in no window (its estimate is 0), the
    columns all are; 15x17 fits."""
    with caplog.at_level(logging.WARNING, logger="unroll_cli.models.autoencoders"):
        model = SparseAutoencoder(1, filters=4, kernel_size=5, stride=2, layers=2, lam=0.0,
                                  input_sizes={"the training crops (data.crop=15)": (15, 17),
                                               "test image t.png": (16, 17)})
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert re.search(r"last 1 rows and 0 columns of test image t\.png, 16x17, .* fits: 15x17", message), message
    estimate = model(torch.rand(1, 1, 16, 17))[-1][0, 0]
    assert estimate[-1].abs().max() == 0 and estimate[-2].abs().max() > 0


# ----------------------------------------------------------------------------- classification crops
def test_a_crop_padding_as_large_as_the_images_is_refused(tmp_path):
    write_learnable_mnist(tmp_path / "data/MNIST/raw", np.random.default_rng(0), 20, 10)
    refused(tmp_path, ["model=ml_ista", "data=mnist", f"data.root={tmp_path / 'data'}", "data.download=false",
                       "data.random_crop_padding=28", "trainer.progress=false"],
            "data.random_crop_padding=28", "data.name=mnist", "28x28")


@pytest.mark.parametrize("padding, some_crop_all_black", [(27, False), (28, True)])
def test_a_padding_below_the_image_side_always_crops_some_of_the_image(padding, some_crop_all_black):
    """Why 28 is refused on 28x28 images: torchvision-style crops of the zero-padded images can then
    miss the image entirely; one pixel less, every crop holds part of it."""
    from unroll_cli.data.images import random_crop

    white = torch.full((400, 1, 28, 28), 255, dtype=torch.uint8)
    crops = random_crop(white, padding, torch.Generator().manual_seed(0))
    assert bool((crops.flatten(1).amax(dim=1) == 0).any()) == some_crop_all_black
