"""The image Task: tiny files in the real on-disk formats, read through torchvision's parsing code,
checked against what was written; preprocessing against torchvision's transforms; errors."""
from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms
from torchvision.datasets import MNIST

from unroll_cli.data import images as im
from unroll_cli.data.images import DatasetNotFoundError, random_crop
from unroll_cli.tasks.classification import ImageClassification

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]


# ----------------------------------------------------------------------------- writers (real formats)
def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """IDX: two zero bytes, type 0x08 (uint8), ndim, each dim as big-endian uint32, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_idx_set(folder: Path, rng: np.random.Generator, gz: bool, n_train: int = 40, n_test: int = 20):
    folder.mkdir(parents=True, exist_ok=True)
    data = {"train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train)),
            "t10k": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test))}
    for split, (x, y) in data.items():
        write_idx(folder / f"{split}-images-idx3-ubyte", x, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", y.astype(np.uint8), gz)
    return data


def make_cifar(root: Path, rng: np.random.Generator, per_batch: int = 6, n_test: int = 12):
    """cifar-10-batches-py: pickled dicts, data (n, 3072) uint8 = the R, G, B planes row by row."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels, "filenames": []}, f, protocol=2)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return batches


def make_svhn(root: Path, rng: np.random.Generator, n_train: int = 30, n_test: int = 15):
    """{train,test}_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10  # at least one digit 0
        savemat(root / f"{split}_32x32.mat", {"X": X, "y": y})
        out[split] = (X, y)
    return out


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    monkeypatch.setattr(im, "FASHION_MNIST_SYSTEM_DIRS", (str(tmp_path / "no-system-dir"),))


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, make_cifar(root, np.random.default_rng(1))


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_files_load_as_written(tmp_path, no_system_fashion, name, folder, gz):
    data = make_idx_set(tmp_path / folder / "raw", np.random.default_rng(0), gz)
    task = ImageClassification(name, root=str(tmp_path), download=False, batch_size=8)
    assert task.train_images.shape == (40, 1, 28, 28) and task.train_images.dtype == torch.uint8
    assert torch.equal(task.train_images[:, 0], torch.from_numpy(data["train"][0]))
    assert torch.equal(task.train_labels, torch.from_numpy(data["train"][1]).long())
    assert torch.equal(task.test_images[:, 0], torch.from_numpy(data["t10k"][0]))
    assert torch.equal(task.test_labels, torch.from_numpy(data["t10k"][1]).long())
    assert (task.in_channels, task.num_classes) == (1, 10)
    assert task.model_kwargs() == {"arch": "mnist", "in_channels": 1, "num_classes": 10, "image_size": 28}
    assert task.setting() == name and task.artifacts() == {}
    if gz:  # read from a temporary copy: nothing written next to the user's files
        assert sorted(p.name for p in (tmp_path / folder / "raw").iterdir()) == sorted(
            f"{f}.gz" for f in im.IDX_FILES)


def test_fashion_system_dir_is_searched_before_root(tmp_path, monkeypatch):
    system = make_idx_set(tmp_path / "system", np.random.default_rng(1), gz=True, n_train=24)
    make_idx_set(tmp_path / "root" / "FashionMNIST" / "raw", np.random.default_rng(2), gz=False)
    monkeypatch.setattr(im, "FASHION_MNIST_SYSTEM_DIRS", (str(tmp_path / "system"),))
    task = ImageClassification("fashion_mnist", root=str(tmp_path / "root"), download=False)
    assert torch.equal(task.train_images[:, 0], torch.from_numpy(system["train"][0]))


def test_cifar10_pickles_load_as_written(cifar_root):
    root, batches = cifar_root
    task = ImageClassification("cifar10", root=str(root), download=False, arch="cifar10")
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert task.train_images.shape == (30, 3, 32, 32) and task.test_images.shape == (12, 3, 32, 32)
    n, c, i, j = 7, 2, 5, 30  # pixel (row i, column j) of channel c sits at c*1024 + i*32 + j
    assert task.train_images[n, c, i, j].item() == data[n, c * 1024 + i * 32 + j]
    assert torch.equal(task.train_images.reshape(30, -1), torch.from_numpy(data))
    assert task.train_labels.tolist() == labels
    assert torch.equal(task.test_images.reshape(12, -1), torch.from_numpy(batches["test_batch"][0]))
    assert task.model_kwargs() == {"arch": "cifar10", "in_channels": 3, "num_classes": 10, "image_size": 32}


def test_svhn_mat_loads_as_written(tmp_path):
    written = make_svhn(tmp_path, np.random.default_rng(3))
    task = ImageClassification("svhn", root=str(tmp_path), download=False, arch="cifar10")
    X, y = written["train"]
    assert task.train_images.shape == (30, 3, 32, 32)
    assert torch.equal(task.train_images, torch.from_numpy(X).permute(3, 2, 0, 1))  # (N, C, H, W)
    expected = y[:, 0].astype(np.int64) % 10  # torchvision maps label 10 to the digit 0
    assert task.train_labels.tolist() == expected.tolist() and task.train_labels[0] == 0
    assert torch.equal(task.test_images, torch.from_numpy(written["test"][0]).permute(3, 2, 0, 1))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name,where,files", [
    ("mnist", "MNIST/raw", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]),
    ("fashion_mnist", "FashionMNIST/raw", ["train-images-idx3-ubyte.gz", "dataset-fashion-mnist"]),
    ("cifar10", "cifar-10-batches-py", ["data_batch_1", "test_batch", "batches.meta"]),
    ("svhn", "", ["train_32x32.mat", "test_32x32.mat"]),
])
def test_missing_files_one_clear_error(tmp_path, no_system_fashion, name, where, files):
    with pytest.raises(DatasetNotFoundError) as info:
        ImageClassification(name, root=str(tmp_path), download=False)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str((tmp_path / where).resolve()) in message
    assert all(f in message for f in files) and "data.download=true" in message
    assert info.value.__cause__ is None and info.value.__context__ is None  # no chained traceback


def test_failed_download_is_the_same_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # refused at once, no network used
    with pytest.raises(DatasetNotFoundError, match="Downloading them failed") as info:
        ImageClassification("mnist", root=str(tmp_path), download=True)
    assert "train-images-idx3-ubyte.gz" in str(info.value) and "127.0.0.1" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # torchvision's error hidden


def test_truncated_idx_file_is_a_parse_error(tmp_path):
    make_idx_set(tmp_path / "MNIST" / "raw", np.random.default_rng(0), gz=False)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:6])
    with pytest.raises(ValueError, match="data.name=mnist: could not parse"):
        ImageClassification("mnist", root=str(tmp_path), download=False)


@pytest.mark.parametrize("kwargs,key", [
    ({"name": "imagenet"}, "data.name"),
    ({"batch_size": 0}, "data.batch_size"),
    ({"random_crop_padding": -1}, "data.random_crop_padding"),
    ({"normalize_mean": [0.5]}, "data.normalize_mean and data.normalize_std"),
    ({"normalize_mean": [0.5], "normalize_std": [0.2, 0.2]}, "data.normalize_std"),
    ({"val_size": -1}, "data.val_size"),
    ({"n_train": 0}, "data.n_train"),
])
def test_bad_values_are_named(tmp_path, kwargs, key):
    with pytest.raises(ValueError, match=key):
        ImageClassification(**{"name": "mnist", "root": str(tmp_path), "download": False, **kwargs})


def test_split_larger_than_training_set(tmp_path):
    make_idx_set(tmp_path / "MNIST" / "raw", np.random.default_rng(0), gz=True)
    with pytest.raises(ValueError, match="data.val_size=30 \\+ data.n_train=20"):
        ImageClassification("mnist", root=str(tmp_path), download=False, val_size=30, n_train=20)


# ----------------------------------------------------------------------------- preprocessing
def test_normalisation_matches_torchvision(cifar_root):
    root, _ = cifar_root
    task = ImageClassification("cifar10", root=str(root), download=False, arch="cifar10",
                               normalize_mean=CIFAR_MEAN, normalize_std=CIFAR_STD)
    pipeline = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    expected = torch.stack([pipeline(img.permute(1, 2, 0).numpy()) for img in task.test_images])  # HWC
    torch.testing.assert_close(task.preprocess(task.test_images), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(task.augment(task.test_images), expected, rtol=0, atol=1e-6)  # no crop/flip


def test_random_crop_windows_of_zero_padded_images():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen)  # no zero pixel
    state = gen.get_state()
    out = random_crop(images, 4, gen)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (4, 4, 4, 4))
    # every output is some 32x32 window of its padded image: search all 81 offsets
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)  # (n, c, 9, 9, 32, 32)
    match = (windows == out[:, :, None, None]).all(dim=-1).all(dim=-1).all(dim=1)  # (n, 9, 9)
    assert match.flatten(1).sum(1).eq(1).all()  # exactly one window each (random pixels)
    offsets = match.flatten(1).int().argmax(1)
    top, left = offsets // 9, offsets % 9
    assert len(set(offsets.tolist())) > 20 and top.min() == 0 and top.max() == 8  # per-sample offsets
    # the documented draws: row offsets, then column offsets, uniform in 0..8
    gen.set_state(state)
    assert torch.equal(top, torch.randint(0, 9, (64,), generator=gen))
    assert torch.equal(left, torch.randint(0, 9, (64,), generator=gen))
    for k in (0, 17, 63):  # explicit slicing
        assert torch.equal(out[k], padded[k, :, top[k]:top[k] + 32, left[k]:left[k] + 32])
    assert (out == 0).any()  # shifted windows show black padding


def test_train_batches_crop_normalise_and_flip(cifar_root):
    root, _ = cifar_root
    task = ImageClassification("cifar10", root=str(root), download=False, arch="cifar10", batch_size=30,
                               normalize_mean=CIFAR_MEAN, normalize_std=CIFAR_STD,
                               random_crop_padding=4, hflip=True, seed=5)
    x, y = next(task.train_batches())
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    pixels = (x * std + mean) * 255  # back to the cropped uint8 image
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    padded = F.pad(task.train_images.float(), (4, 4, 4, 4))
    flipped = 0
    for img, label in zip(pixels.round(), y):
        candidates = [k for k in range(30) if task.train_labels[k] == label]
        hits = [(k, f) for k in candidates for f in (False, True) for a in range(9) for b in range(9)
                if torch.equal(padded[k, :, a:a + 32, b:b + 32].flip(-1) if f else padded[k, :, a:a + 32, b:b + 32], img)]
        assert hits, "every training image is a (flipped) window of a zero-padded training image"
        flipped += hits[0][1]
    assert 0 < flipped < 30


def test_mnist_default_is_unaltered_epoch_on_device(tmp_path):
    make_idx_set(tmp_path / "MNIST" / "raw", np.random.default_rng(4), gz=True, n_train=50)
    task = ImageClassification("mnist", root=str(tmp_path), download=False, batch_size=16, device="cpu")
    for t in (task.train_images, task.train_labels, task.test_images, task.test_labels):
        assert t.device == torch.device("cpu")
    batches = list(task.train_batches())
    assert task.steps_per_epoch == math.ceil(50 / 16) == len(batches) == 4
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    x = torch.cat([b[0] for b in batches]).flatten(1)
    y = torch.cat([b[1] for b in batches])
    assert x.device.type == "cpu" and x.dtype == torch.float32
    reference = task.train_images.flatten(1).float() / 255  # ToTensor only, no crop, no flip
    index = torch.cdist(x, reference).argmin(1)
    assert sorted(index.tolist()) == list(range(50))  # a permutation of the training set
    assert torch.equal(x, reference[index]) and torch.equal(y, task.train_labels[index])
    assert index.tolist() != list(range(50))  # shuffled


def test_generator_state_resumes_identically(cifar_root):
    root, _ = cifar_root
    kwargs = dict(name="cifar10", root=str(root), download=False, arch="cifar10", batch_size=8,
                  random_crop_padding=4, hflip=True, seed=11)
    a = ImageClassification(**kwargs)
    list(a.train_batches())
    state = a.state_dict()
    second = list(a.train_batches())
    b = ImageClassification(**kwargs)
    b.load_state_dict(state)
    again = list(b.train_batches())
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(second, again))
    c = ImageClassification(**{**kwargs, "seed": 12})
    assert not torch.equal(next(c.train_batches())[0], next(ImageClassification(**kwargs).train_batches())[0])


# ----------------------------------------------------------------------------- metrics and splits
class Linear(torch.nn.Module):
    """A fixed classifier returning log-probabilities; records the unfoldings it was called with."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)
        self.calls = []

    def forward(self, x, unfoldings=None):
        self.calls.append((unfoldings, self.training))
        return F.log_softmax(self.fc(x.flatten(1)), dim=1)


def test_validate_evaluate_and_loss(tmp_path):
    make_idx_set(tmp_path / "MNIST" / "raw", np.random.default_rng(5), gz=False, n_test=20)
    task = ImageClassification("mnist", root=str(tmp_path), download=False, eval_batch_size=7)
    torch.manual_seed(0)
    model = Linear().train()
    with torch.no_grad():
        out = model(task.test_images.float() / 255)
    acc = 100.0 * (out.argmax(1) == task.test_labels).float().mean().item()
    nll = F.nll_loss(out, task.test_labels).item()
    model.calls.clear()
    assert task.monitor == "test/acc" and task.monitor_mode == "max" and task.kind == "classification"
    val = task.validate(model)
    assert set(val) == {"test/acc", "test/loss"}
    assert val["test/acc"] == pytest.approx(acc) and val["test/loss"] == pytest.approx(nll, rel=1e-5)
    assert model.training and model.calls == [(None, False)] * 3  # eval batches of 7, mode restored
    result = task.evaluate(model, unfoldings=2)
    assert result == pytest.approx({"acc": acc, "loss": nll}, rel=1e-5) and model.calls[-1] == (2, False)
    x, y = next(task.train_batches())
    loss = task.loss(model(x), (x, y), model)
    assert loss.requires_grad and loss.item() == pytest.approx(F.nll_loss(model(x), y).item())


def test_validation_split_and_subset(tmp_path):
    make_idx_set(tmp_path / "MNIST" / "raw", np.random.default_rng(6), gz=True, n_train=40)
    full = ImageClassification("mnist", root=str(tmp_path), download=False)
    task = ImageClassification("mnist", root=str(tmp_path), download=False, val_size=10, batch_size=8, seed=3)
    assert task.monitor == "val/acc" and len(task.val_images) == 10 and len(task.train_images) == 30
    both = torch.cat([task.val_images, task.train_images]).flatten(1).float()
    assert sorted(torch.cdist(both, full.train_images.flatten(1).float()).argmin(1).tolist()) == list(range(40))
    assert set(task.validate(Linear())) == {"val/acc", "val/loss"}
    other_seed = ImageClassification("mnist", root=str(tmp_path), download=False, val_size=10, seed=4)
    assert torch.equal(other_seed.val_images, task.val_images)  # the split does not follow the seed
    small = ImageClassification("mnist", root=str(tmp_path), download=False, val_size=10, n_train=12,
                                batch_size=5)
    assert len(small.train_images) == 12 and small.steps_per_epoch == 3
    assert torch.equal(small.train_images, task.train_images[:12])


# ----------------------------------------------------------------------------- the real Fashion-MNIST
DEBIAN = Path(im.FASHION_MNIST_SYSTEM_DIRS[0])


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist(tmp_path):
    task = ImageClassification("fashion_mnist", root=str(tmp_path / "empty"), download=False)
    assert task.train_images.shape == (60000, 1, 28, 28) and task.test_images.shape == (10000, 1, 28, 28)
    assert task.train_labels.bincount().tolist() == [6000] * 10
    assert task.test_labels.bincount().tolist() == [1000] * 10
    assert task.train_images.float().mean().item() / 255 == pytest.approx(72.94 / 255, abs=1e-4)
    assert task.steps_per_epoch == math.ceil(60000 / 128)
    assert not (tmp_path / "empty").exists()  # read in place, nothing cached under root
