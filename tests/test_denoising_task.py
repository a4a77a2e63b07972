"""The denoising task (data=bsd_denoise): PSNR by hand, tiny image folders written with PIL (gray and
colour, PNG, JPEG and BMP, some smaller than the crop), crops found by a search over every position,
fixed test noise, errors, training and the report with a stand-in model, and BSD68 when present."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_cfg
from unroll_cli.errors import ConfigError
from unroll_cli.schema import TrainerConfig
from unroll_cli.validation import validate
from unroll_cli.evaluate.metrics import psnr_db
from unroll_cli.record.recorder import RunRecorder
from unroll_cli.record.report import write_report
from unroll_cli.run import build_task
from unroll_cli.tasks.denoising import ImageDenoising
from unroll_cli.train.trainer import Trainer

BSD68 = Path(__file__).parents[2] / "shared" / "data" / "BSD68"
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2
CROP = 24
TOL = 1 / 255 + 1e-6  # PIL's 8-bit luma against the exact one
# name -> (height, width, colour); d.bmp is smaller than the crop both ways, b.png in width
TRAIN = {"a.png": (40, 50, False), "b.png": (30, 20, True), "d.bmp": (15, 18, False),
         "sub/c.jpg": (60, 45, True)}
TEST = {"t1.png": (33, 27, False), "t2.png": (20, 30, True), "t3.jpg": (28, 36, True)}


# ----------------------------------------------------------------------------- helpers
def write_image(path: Path, shape: tuple[int, int, bool], rng: np.random.Generator) -> np.ndarray:
    """Random uint8 pixels saved with PIL; returns the gray image in [0, 1] computed independently:
    the decoded pixels (JPEG is lossy) through the exact luma formula."""
    h, w, colour = shape
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3) if colour else (h, w), dtype=np.uint8)).save(path)
    decoded = np.asarray(Image.open(path), dtype=np.float64)
    return (decoded @ LUMA if decoded.ndim == 3 else decoded) / 255


def pil_gray(path: Path) -> np.ndarray:
    """PIL's own 8-bit luma / 255: the reference of the PSNR checks (the luma is checked apart)."""
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255


def psnr_np(estimate: np.ndarray, clean: np.ndarray, peak="max", clamp=True) -> float:
    estimate = np.clip(estimate, 0, 1) if clamp else estimate
    top = clean.max() if peak == "max" else peak
    return 20 * math.log10(top) - 10 * math.log10(np.mean((clean - estimate) ** 2))


def locate(window: np.ndarray, images: dict[str, np.ndarray]) -> tuple[str, bool, bool]:
    """(image, h-flipped, v-flipped) of a training crop, by comparing it with every window of every
    zero-padded (bottom/right) image at every position."""
    for name, gray in images.items():
        padded = np.zeros((max(gray.shape[0], CROP), max(gray.shape[1], CROP)), dtype=np.float32)
        padded[:gray.shape[0], :gray.shape[1]] = gray
        windows = sliding_window_view(padded, (CROP, CROP))
        for hflip in (False, True):
            for vflip in (False, True):
                candidate = window[::-1 if vflip else 1, ::-1 if hflip else 1]
                if np.abs(windows - candidate).max(axis=(2, 3)).min() <= TOL:
                    return name, hflip, vflip
    raise AssertionError("the crop is no window of any training image")


class TinyDenoiser(torch.nn.Module):
    """A stand-in for the model family: ``layers`` residual 3x3 convolutions, the estimate after each."""

    def __init__(self, layers: int = 2):
        super().__init__()
        self.layers = layers
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(1, 1, 3, padding=1) for _ in range(layers))

    def forward(self, x: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        estimates = []
        for conv in self.convs[:depth]:
            x = x - conv(x)
            estimates.append(x)
        return estimates


class Identity(torch.nn.Module):
    layers = 1

    def forward(self, x: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        return [x]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path, dict, dict]:
    """(train folder, test folder, train gray images, test gray images) keyed by relative path."""
    root, rng = tmp_path_factory.mktemp("images"), np.random.default_rng(0)
    train = {name: write_image(root / "train" / name, shape, rng) for name, shape in TRAIN.items()}
    test = {name: write_image(root / "test" / name, shape, rng) for name, shape in TEST.items()}
    (root / "train" / "notes.txt").write_text("not an image, not searched")
    return root / "train", root / "test", train, test


def make_task(folders, **options) -> ImageDenoising:
    train_dir, test_dir, _, _ = folders
    return ImageDenoising(str(train_dir), str(test_dir), **{"crop": CROP, **options})


# ----------------------------------------------------------------------------- PSNR
@pytest.mark.parametrize("peak", ["max", 1.0])
@pytest.mark.parametrize("clamp", [True, False])
def test_psnr_equals_a_hand_computation(peak, clamp):
    clean = np.array([[[0.2, 0.8], [0.4, 0.6]], [[0.1, 0.5], [0.3, 0.2]]])
    estimate = np.array([[[0.0, 1.3], [0.4, -0.2]], [[0.2, 0.6], [0.4, 0.3]]])
    # squared errors, image 1: clamped .04 .04 0 .36, unclamped .04 .25 0 .64; image 2: .01 each
    mse = [0.11 if clamp else 0.2325, 0.01]
    top = [0.8, 0.5] if peak == "max" else [1.0, 1.0]
    expected = [20 * math.log10(t) - 10 * math.log10(m) for t, m in zip(top, mse)]
    got = psnr_db(torch.tensor(estimate), torch.tensor(clean), peak=peak, clamp=clamp)
    assert got.tolist() == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------- reading and batches
def test_images_are_read_as_gray_luma_in_zero_one_and_padded_to_the_crop(folders):
    task = make_task(folders, n_figures=0)
    _, _, train, test = folders
    assert task.test_names == sorted(TEST)
    for clean, name in zip(task.test_clean, task.test_names):
        assert clean.dtype == torch.float32 and clean.shape == test[name].shape
        assert np.abs(clean.numpy() - test[name]).max() <= TOL
    for image, name in zip(task.train_images, sorted(TRAIN)):  # sorted by path: sub/c.jpg last
        h, w = train[name].shape
        assert image.shape == (max(h, CROP), max(w, CROP))
        assert np.abs(image[:h, :w].numpy() - train[name]).max() <= TOL
        assert image[h:].abs().sum() == 0 and image[:, w:].abs().sum() == 0


def test_training_batches_are_flipped_noisy_crops_one_per_image_each_epoch(folders):
    task = make_task(folders, batch_size=3, sigma=25)
    train = folders[2]
    assert task.steps_per_epoch == 2  # 4 images: batches of 3 and 1
    found, noise, noisy_values = [], [], []
    for _ in range(25):
        batches = list(task.train_batches())
        assert [b[0].shape for b in batches] == [(3, 1, CROP, CROP), (1, 1, CROP, CROP)]
        epoch = [locate(c[0].numpy(), train) for _, clean in batches for c in clean]
        assert sorted(name for name, _, _ in epoch) == sorted(TRAIN)
        found += epoch
        noise += [(noisy - clean).flatten() for noisy, clean in batches]
        noisy_values += [noisy.flatten() for noisy, _ in batches]
    noise, noisy_values = torch.cat(noise), torch.cat(noisy_values)
    assert noise.std().item() == pytest.approx(25 / 255, rel=0.03) and abs(noise.mean().item()) < 2e-3
    assert noisy_values.min() < 0 and noisy_values.max() > 1  # not clipped
    for flips in ([h for _, h, _ in found], [v for _, _, v in found]):
        assert 0.35 < np.mean(flips) < 0.65


def test_steps_per_epoch_draws_full_batches_from_consecutive_fresh_orders(folders):
    task = make_task(folders, batch_size=3, steps_per_epoch=4, hflip=False, vflip=False)
    batches = list(task.train_batches())
    assert len(batches) == 4 and all(b[1].shape[0] == 3 for b in batches)
    names = [locate(c[0].numpy(), folders[2])[0] for _, clean in batches for c in clean]
    for start in range(0, 12, 4):
        assert sorted(names[start:start + 4]) == sorted(TRAIN)


def test_the_generator_state_resumes_the_data_stream_and_init_crops_are_fixed(folders):
    first, second = make_task(folders, seed=1), make_task(folders, seed=2)
    list(first.train_batches())
    second.load_state_dict(first.state_dict())
    for a, b in zip(next(iter(first.train_batches())), next(iter(second.train_batches()))):
        assert torch.equal(a, b)
    kwargs = first.model_kwargs()
    assert kwargs["in_channels"] == 1 and kwargs["init_images"].shape == (4, 1, CROP, CROP)  # min(64, 4)
    assert torch.equal(kwargs["init_images"], second.model_kwargs()["init_images"])
    assert sorted(locate(c[0].numpy(), folders[2])[0] for c in kwargs["init_images"]) == sorted(TRAIN)


def test_test_noise_is_fixed_by_test_seed_per_sigma(folders):
    a = make_task(folders, seed=1, test_sigmas=[25, 50])
    b = make_task(folders, seed=2, test_sigmas=[25], n_test=1)
    c = make_task(folders, test_seed=1)
    for x, y in zip(a.test_noisy[25.0], b.test_noisy[25.0]):  # seed, other sigmas, n_test: no change
        assert torch.equal(x, y)
    noise25 = torch.cat([(n - x).flatten() for n, x in zip(a.test_noisy[25.0], a.test_clean)])
    noise50 = torch.cat([(n - x).flatten() for n, x in zip(a.test_noisy[50.0], a.test_clean)])
    other = torch.cat([(n - x).flatten() for n, x in zip(c.test_noisy[25.0], c.test_clean)])
    assert noise25.std().item() == pytest.approx(25 / 255, rel=0.1)
    assert noise50.std().item() == pytest.approx(50 / 255, rel=0.1)
    assert abs(np.corrcoef(noise25, noise50)[0, 1]) < 0.1 and abs(np.corrcoef(noise25, other)[0, 1]) < 0.1


def test_validation_holds_out_the_last_training_files_with_fixed_noise(folders):
    task = make_task(folders, val_size=1, test_sigmas=[50, 25])
    assert len(task.train_images) == 3 and task.monitor == "val/psnr" and "val/psnr" in task.metric_names()
    clean, noisy = task.val_set
    assert np.abs(clean[0].numpy() - folders[2]["sub/c.jpg"]).max() <= TOL
    value = task.validate(Identity())["val/psnr"]
    assert value == pytest.approx(psnr_np(noisy[0].numpy(), pil_gray(folders[0] / "sub/c.jpg")), abs=1e-6)
    with pytest.raises(ValueError, match=r"data.val_size=0 .* data.test_sigmas=\[50.0\] lacks it"):
        make_task(folders, test_sigmas=[50])


def test_missing_folders_and_unreadable_files_are_one_error_each(folders, tmp_path):
    train_dir, test_dir, _, _ = folders
    with pytest.raises(ValueError, match=r"data.train_dir=.*nowhere: no such folder.*data/CBSD432"):
        ImageDenoising(str(tmp_path / "nowhere"), str(test_dir))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"data.test_dir=.*empty: no image file.*BSD68"):
        ImageDenoising(str(train_dir), str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fake.png").write_text("not a PNG")
    png = (train_dir / "a.png").read_bytes()
    (bad / "truncated.png").write_bytes(png[:len(png) // 2])
    with pytest.raises(ValueError, match=r"data.test_dir=.*nowhere"):  # folders first, nothing loaded
        ImageDenoising(str(bad), str(tmp_path / "nowhere"))
    for name in ("fake.png", "truncated.png"):
        (tmp_path / "one").mkdir(exist_ok=True)
        (tmp_path / "one" / name).write_bytes((bad / name).read_bytes())
        with pytest.raises(ValueError, match=rf"{name}: not a readable image"):
            ImageDenoising(str(tmp_path / "one"), str(test_dir))
        (tmp_path / "one" / name).unlink()


def test_the_yaml_composes_validates_and_builds_the_task(folders):
    train_dir, test_dir, _, _ = folders
    paths = [f"data.train_dir={train_dir}", f"data.test_dir={test_dir}", f"data.crop={CROP}"]
    cfg = compose_cfg(["data=bsd_denoise", *paths])
    validate(cfg)
    task = build_task(cfg, torch.device("cpu"))
    assert isinstance(task, ImageDenoising) and task.kind == "denoising" and task.primary_metric == "test/psnr"
    for bad, key in (("data.psnr_peak=-1", "data.psnr_peak"), ("data.test_sigmas=[]", "data.test_sigmas"),
                     ("data.loss_reduction=mean", "data.loss_reduction")):
        with pytest.raises(ConfigError, match=key):
            validate(compose_cfg(["data=bsd_denoise", *paths, bad]))
    with pytest.raises(ConfigError, match="data.test_dir=/nowhere"):
        build_task(compose_cfg(["data=bsd_denoise", *paths, "data.test_dir=/nowhere"]), torch.device("cpu"))


# ----------------------------------------------------------------------------- training and report
@pytest.mark.parametrize("reduction, divisor, per_position", [("sum", 2, False), ("pixel_mean", 18, True)])
def test_loss_is_half_the_squared_error_per_image_or_per_pixel_plus_the_models_penalty(folders, reduction, divisor,
                                                                                       per_position):
    """data.loss_reduction=sum: 0.5 x the squared error summed over the pixels, mean over the 2 images;
    pixel_mean (PUDLE's SparseLoss on images): 0.5 x the mean over all 2 x 3 x 3 squared errors, the
    model's penalty asked per code position."""
    task = make_task(folders, n_figures=0, loss_reduction=reduction)
    clean = torch.rand(2, 1, 3, 3)
    estimate = clean + torch.arange(18.0).view(2, 1, 3, 3) / 100
    expected = 0.5 * sum((v / 100) ** 2 for v in range(18)) / divisor
    model = Identity()
    assert task.loss([estimate], (estimate, clean), model).item() == pytest.approx(expected, rel=1e-5)
    model.loss_penalty = lambda per_position: torch.tensor(3.0 + per_position)  # 4 when asked per position
    assert task.loss([estimate], (estimate, clean), model).item() == pytest.approx(expected + 3 + per_position,
                                                                                    rel=1e-5)
    model.loss_penalty = lambda per_position: None
    assert task.loss([estimate], (estimate, clean), model).item() == pytest.approx(expected, rel=1e-5)
    assert f"data.loss_reduction={reduction}" in task.conventions()


def test_training_and_report_with_a_stand_in_model(folders, tmp_path, one_thread):
    torch.manual_seed(0)
    # the training sigma (25) second: test/psnr and the published table are still at 25 (val_size=0)
    task, model = make_task(folders, test_sigmas=[50, 25], batch_size=2), TinyDenoiser(layers=2)
    recorder = RunRecorder(tmp_path, tensorboard=False)
    settings = OmegaConf.structured(TrainerConfig(max_epochs=2, progress=False, checkpoint=False))
    optim = OmegaConf.create({"_target_": "torch.optim.Adam", "lr": 0.01})
    sched = OmegaConf.create({"_target_": "torch.optim.lr_scheduler.ConstantLR", "factor": 1.0,
                              "total_iters": 0})
    Trainer(settings, model, task, optim, sched, recorder).fit()
    assert [row["epoch"] for row in recorder.history] == [1, 2] and "test/psnr" in recorder.history[0]
    model.eval()
    paper = OmegaConf.create({"source": "a test", "variant": "tiny@1", "note": "a shortened recipe",
                              "psnr": {"sigma25": {"tiny@1": 30.0, "tiny": 99.0}, "sigma50": {"tiny@1": 9.0}},
                              "references": {"authors_log": {"source": "a log", "psnr": {"sigma25": {"tiny@1": 29.5}}},
                                             "elsewhere": {"source": "x", "psnr": {"sigma25": {"tiny": 1.0}}}}})
    metrics = write_report(task.report(model, "tiny", paper, recorder.history), recorder, paper.note)

    names = sorted(TEST)
    test = {name: pil_gray(folders[1] / name) for name in names}
    layers, items = pd.read_csv(tmp_path / "layers.csv"), pd.read_csv(tmp_path / "items.csv")
    assert list(layers.columns) == ["layer", "test/psnr_s50", "test/psnr_s25"]
    assert list(layers["layer"]) == [0, 1, 2]
    assert len(items) == 6 and list(items.columns) == ["image", "sigma", "psnr_input", "psnr"]
    with torch.no_grad():
        for sigma in (25.0, 50.0):
            rows = items[items["sigma"] == sigma].set_index("image")
            inputs = [psnr_np(task.test_noisy[sigma][i].numpy(), test[name]) for i, name in enumerate(names)]
            finals = [psnr_np(model(task.test_noisy[sigma][i][None, None])[-1][0, 0].numpy(), test[name])
                      for i, name in enumerate(names)]
            assert list(rows.index) == names
            assert rows["psnr_input"].tolist() == pytest.approx(inputs, abs=1e-6)
            assert rows["psnr"].tolist() == pytest.approx(finals, abs=1e-6)
            assert layers.loc[0, f"test/psnr_s{sigma:g}"] == pytest.approx(np.mean(inputs), abs=1e-6)
            assert metrics[f"test/psnr_s{sigma:g}"] == pytest.approx(rows["psnr"].mean(), abs=1e-9)
            assert metrics[f"test/psnr_s{sigma:g}_std"] == pytest.approx(np.std(finals), abs=1e-6)
    first = items[items["sigma"] == 25.0]
    assert metrics["test/psnr"] == pytest.approx(first["psnr"].mean(), abs=1e-9)
    assert metrics["test/psnr_input"] == pytest.approx(first["psnr_input"].mean(), abs=1e-9)
    assert metrics["published/test/psnr"] == 30.0
    assert metrics["published/test/psnr authors_log"] == 29.5  # a reference without this variant: none
    assert set(metrics) - {"published/test/psnr", "published/test/psnr authors_log"} == set(task.metric_names())
    for name in ("psnr_per_layer.png", "denoised.png", "training_curve.png"):  # the run draws the atoms
        assert (tmp_path / "figures" / name).stat().st_size > 0
    results = (tmp_path / "results.md").read_text()
    assert "layer 0 = the noisy input" in results and "tiny@1): 30.00 (a test)" in results
    difference = f"{metrics['test/psnr'] - 29.5:+.2f}"
    assert f"Reference authors_log test/psnr (sigma25, tiny@1): 29.50 (a log); this run: " in results
    assert f"difference {difference}." in results.split("Reference authors_log")[1].splitlines()[0]
    assert "a shortened recipe" in results and 'convert("L")' in results
    tables = json.loads((tmp_path / "tables.json").read_text())
    assert tables["layers.csv"] == ["layer"] and tables["items.csv"] == ["image", "sigma"]


# ----------------------------------------------------------------------------- BSD68
def test_bsd68_images_and_the_identity_psnr_at_sigma_25():
    if not BSD68.is_dir():
        pytest.skip(f"{BSD68} is absent")
    task = ImageDenoising(str(BSD68), str(BSD68), n_train=1, n_test=3, n_figures=0)
    assert len(task.test_clean) == 3
    assert all(tuple(x.shape) in {(321, 481), (481, 321)} for x in task.test_clean)
    files = sorted(p for p in BSD68.rglob("*.png"))[:3]
    clean = [pil_gray(f) for f in files]
    noisy = [x.numpy() for x in task.test_noisy[25.0]]
    expected = np.mean([psnr_np(y, x) for y, x in zip(noisy, clean)])
    assert task.validate(Identity())["test/psnr"] == pytest.approx(expected, abs=1e-6)
    plain = ImageDenoising(str(BSD68), str(BSD68), n_train=1, n_test=3, psnr_peak=1.0, clamp=False)
    assert plain.validate(Identity())["test/psnr"] == pytest.approx(20 * math.log10(255 / 25), abs=0.05)


def test_test_crop_tests_on_one_fixed_window_of_each_image(folders):
    _, test_dir, _, _ = folders
    side = 12
    task, again = make_task(folders, test_crop=side), make_task(folders, test_crop=side, seed=5)
    for name, window, repeat in zip(task.test_names, task.test_clean, again.test_clean):
        image = torch.from_numpy(pil_gray(test_dir / name)).float()
        padded = torch.nn.functional.pad(image, (0, max(0, side - image.shape[1]), 0, max(0, side - image.shape[0])))
        assert window.shape == (side, side) and torch.equal(window, repeat)  # the same window for any run seed
        windows = padded.unfold(0, side, 1).unfold(1, side, 1)  # every side x side window of the image
        assert torch.isclose(windows, window, atol=1e-6).flatten(2).all(dim=2).any()
    assert "random 12x12 window" in task.conventions()
