"""Image classification datasets (MNIST, Fashion-MNIST, CIFAR-10, SVHN): readers and per-batch
preprocessing for the classification task (:mod:`unroll_cli.tasks.classification`).

Files are read by the same code whether they are a user's files or the tests' tiny ones, and no data
file can run code. Differences from plain ``torchvision.datasets.X(root, download=...)``:

* IDX files (MNIST, Fashion-MNIST), plain or gzipped (``*-ubyte.gz``), are laid out in a temporary
  ``<tmp>/MNIST/raw`` (or ``FashionMNIST/raw``) folder, gunzipped or linked, that torchvision's class
  then reads: nothing is written next to the user's files, and torchvision's legacy
  ``processed/*.pt`` caches are never read.
* Fashion-MNIST is first looked for in :data:`FASHION_MNIST_SYSTEM_DIRS`, where the Debian package
  ``dataset-fashion-mnist`` installs it, then under ``<root>/FashionMNIST/raw``.
* CIFAR-10's python-version batches are pickles, and ``pickle.load`` runs whatever code a pickle
  names; they are read here by :func:`safe_unpickle`, which builds only numpy arrays, lists, dicts,
  strings and numbers and refuses anything else. torchvision's CIFAR10 class is used for its
  download (URL and archive MD5) only.
* Files already on disk are not MD5-checked (CIFAR-10 batches, SVHN ``.mat``): re-packed copies
  (another pickle protocol, a re-saved ``.mat``, Debian's re-compressed ``.gz``) hold the same data
  under other checksums. Their structure is checked instead (dtype, shape, labels in 0..9). What
  torchvision downloads is still MD5-checked by torchvision (archive / ``.mat`` checksums).
* Missing files raise one :class:`DatasetNotFoundError` naming the folder, the files and the fix; a
  file that cannot be read (corrupt, truncated, not the expected format) raises one ``ValueError``
  naming that file.

Preprocessing runs on the device per batch, in torchvision's order for the paper's transforms
(``RandomCrop(padding) -> RandomHorizontalFlip -> ToTensor -> Normalize``): crop and flip act on
the uint8 images (the padding is black, pixel value 0, as torchvision pads PIL images), then
scaling to [0, 1] and normalisation.
"""
from __future__ import annotations

import functools
import gzip
import os
import pickle
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch


Batch = tuple[torch.Tensor, torch.Tensor]  # (images, labels)

#: Where the Debian package ``dataset-fashion-mnist`` puts the four gzipped IDX files; searched
#: before ``<root>/FashionMNIST/raw``.
FASHION_MNIST_SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SPLIT_SEED = 0  # the validation split and the n_train subset do not depend on the run's seed

# name -> (channels, image size, classes)
DATASETS = {"mnist": (1, 28, 10), "fashion_mnist": (1, 28, 10), "cifar10": (3, 32, 10), "svhn": (3, 32, 10)}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on disk and could not be downloaded."""


def _tv():
    """torchvision's dataset module, imported when a dataset is read: importing torchvision takes
    about 1.5 s, which every other run (and every refused one) would pay."""
    from torchvision import datasets

    return datasets


@functools.cache
def _svhn_class() -> type:
    """torchvision's SVHN with an existence check instead of an MD5 check on the ``.mat`` file;
    a download is still MD5-checked."""
    from torchvision.datasets.utils import download_url

    SVHN = _tv().SVHN

    class _SVHN(SVHN):
        split_list = {split: [url, name, None] for split, (url, name, _) in SVHN.split_list.items()}

        def download(self) -> None:
            url, name, md5 = SVHN.split_list[self.split]
            download_url(url, self.root, name, md5)

    return _SVHN


# ----------------------------------------------------------------------------- safe unpickling
#: The only globals a CIFAR-10 batch may name: numpy's reconstruction of arrays (``numpy.core`` in
#: files written by numpy 1, ``numpy._core`` by numpy 2; ``_frombuffer`` at pickle protocol 5), of dtypes
#: and of scalars. Dicts, lists, strings and numbers are pickle opcodes, not globals.
PICKLE_GLOBALS = frozenset(
    [(f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")]
    + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
    + [("numpy", "ndarray"), ("numpy", "dtype")])


class _Refused(pickle.UnpicklingError):
    """A pickle names something other than the admitted globals."""


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode(text, "latin1")``: how Python 3 pickles bytes at protocols 0-2; no other codec."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """pickle's reader with every global refused but :data:`PICKLE_GLOBALS` and latin1 bytes."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) in PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def safe_unpickle(path: Path):
    """The content of a pickle of numpy arrays, lists, dicts, strings and numbers, read as torchvision
    reads CIFAR-10 (``encoding="latin1"``, for Python 2 pickles).

    ``pickle.load`` calls whatever the file names, so a crafted file runs code; here every global
    outside :data:`PICKLE_GLOBALS` is refused before it is called. Raises one ValueError naming the
    file for a refused or unreadable pickle.
    """
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except _Refused as error:
        raise ValueError(f"{path}: holds something other than arrays, lists, dicts, strings and numbers "
                         f"({error}); it was not loaded") from None
    except Exception as error:  # only numpy's array code runs: any error is a malformed file
        raise ValueError(f"{path}: not a readable pickle ({_reason(error)})") from None


# ----------------------------------------------------------------------------- loading
def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _root_folder(name: str, root: str) -> Path:
    """The folder under ``root`` that holds ``name``'s files."""
    root_path = Path(root).expanduser().resolve()
    if name in ("mnist", "fashion_mnist"):
        return root_path / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
    if name == "cifar10":
        return root_path / _tv().CIFAR10.base_folder
    return root_path


def dataset_folder(name: str, root: str) -> Path:
    """The folder :func:`load_dataset` reads ``name``'s files from: Fashion-MNIST's system folder
    when it holds them, else the one under ``root``."""
    system = [Path(d) for d in FASHION_MNIST_SYSTEM_DIRS] if name == "fashion_mnist" else []
    return next((folder for folder in system if _find_idx(folder) is not None), _root_folder(name, root))


def _missing(name: str, root: str, download: bool, error: BaseException | None = None) -> DatasetNotFoundError:
    CIFAR10, SVHN = _tv().CIFAR10, _tv().SVHN
    folder = _root_folder(name, root)
    if name in ("mnist", "fashion_mnist"):
        files = ", ".join(f"{f}.gz" for f in IDX_FILES) + " (gzipped or not)"
        where = f"in {folder}"
    elif name == "cifar10":
        files = ", ".join([n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]])
        files += f" (the python version, {CIFAR10.filename} extracted)"
        where = f"in {folder}"
    else:
        files = ", ".join(SVHN.split_list[s][1] for s in ("train", "test"))
        where = f"directly in {folder}"
    message = f"data.name={name}: dataset files missing in {folder}; expected {files}."
    if name == "fashion_mnist":
        message += (f" Also searched {', '.join(FASHION_MNIST_SYSTEM_DIRS)} (Debian package "
                    "dataset-fashion-mnist).")
    if error is not None:
        message += f" Downloading them failed ({_reason(error)})."
    else:
        message += " data.download=false, so nothing was downloaded."
    message += f" Put the files {where}, or set data.download=true on a machine with network access"
    if name == "fashion_mnist":
        message += ", or install the package: apt-get install dataset-fashion-mnist"
    return DatasetNotFoundError(message + ".")


def _find_idx(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder``, each plain or ``.gz`` (plain preferred); None if incomplete."""
    found = {}
    for base in IDX_FILES:
        for candidate in (folder / base, folder / f"{base}.gz"):
            if candidate.is_file():
                found[base] = candidate
                break
        else:
            return None
    return found


def _stage_idx(name: str, found: dict[str, Path], target: Path) -> None:
    """Lay the files out as torchvision expects: gunzip ``.gz`` files, link (or copy) plain ones."""
    target.mkdir(parents=True)
    for base, source in found.items():
        if source.suffix == ".gz":
            try:
                with gzip.open(source, "rb") as src, open(target / base, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as error:
                raise ValueError(f"data.name={name}: {source}: not a readable gzip file "
                                 f"({_reason(error)})") from None
        else:
            try:
                os.symlink(source.resolve(), target / base)
            except OSError:
                shutil.copyfile(source, target / base)


def _read_idx(cls: type, root: str | Path, name: str, source: Path) -> tuple[torch.Tensor, ...]:
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except (AssertionError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"data.name={name}: could not parse the IDX files in {source} "
                         f"({_reason(error) or 'bad header'})") from None
    return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets


def _load_idx(name: str, root: str, download: bool) -> tuple[torch.Tensor, ...]:
    cls = _tv().MNIST if name == "mnist" else _tv().FashionMNIST
    raw = Path(root).expanduser() / cls.__name__ / "raw"
    folders = [Path(d) for d in FASHION_MNIST_SYSTEM_DIRS] if name == "fashion_mnist" else []
    for folder in folders + [raw]:
        found = _find_idx(folder)
        if found is None:
            continue
        with tempfile.TemporaryDirectory(prefix="unroll-idx-") as tmp:
            _stage_idx(name, found, Path(tmp) / cls.__name__ / "raw")
            return _read_idx(cls, tmp, name, folder)
    if not download:
        raise _missing(name, root, download)
    try:
        cls(root, train=True, download=True)
    except (RuntimeError, OSError) as error:
        raise _missing(name, root, download, error) from None
    return _read_idx(cls, Path(root).expanduser(), name, raw)


def _cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One python-version batch: a dict with data (n, 3072) uint8, the R, G, B planes, and labels."""
    entry = safe_unpickle(path)
    try:
        images = torch.from_numpy(np.asarray(entry["data"]).reshape(-1, 3, 32, 32))
        labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
        return images, torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1))
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: not a CIFAR-10 batch, a dict of data (N x 3072 uint8) and labels "
                         f"({_reason(error)})") from None


def _cifar_split(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(_cifar_batch(folder / name) for name in names))
    return torch.cat(images), torch.cat(labels)


def _load_cifar10(root: str, download: bool) -> tuple[torch.Tensor, ...]:
    CIFAR10 = _tv().CIFAR10
    folder = Path(root).expanduser() / CIFAR10.base_folder
    meta = folder / CIFAR10.meta["filename"]
    needed = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [meta.name]
    if not all((folder / n).is_file() for n in needed):
        if not download:
            raise _missing("cifar10", root, download)
        try:  # what CIFAR10(root, download=True) downloads, without its pickle.load of the batches
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(CIFAR10.url, str(folder.parent), filename=CIFAR10.filename,
                                         md5=CIFAR10.tgz_md5)
        except (RuntimeError, OSError) as error:
            raise _missing("cifar10", root, download, error) from None
    try:
        train = _cifar_split(folder, [n for n, _ in CIFAR10.train_list])
        test = _cifar_split(folder, [n for n, _ in CIFAR10.test_list])
        if not isinstance(labels := safe_unpickle(meta), dict) or CIFAR10.meta["key"] not in labels:
            raise ValueError(f"{meta}: not CIFAR-10's batches.meta, a dict with {CIFAR10.meta['key']}")
    except ValueError as error:
        raise ValueError(f"data.name=cifar10: {error}") from None
    return (*train, *test)


def _svhn_split(root: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's ``.mat`` file, read by torchvision's SVHN: X (32, 32, 3, N) uint8 and y (N, 1)."""
    path = Path(root).expanduser() / _tv().SVHN.split_list[split][1]
    try:
        dataset = _svhn_class()(root, split=split)
        # torchvision: X (32, 32, 3, N) -> (N, 3, 32, 32); label 10 (digit 0) -> 0
        return torch.from_numpy(dataset.data).contiguous(), torch.from_numpy(dataset.labels).reshape(-1)
    except Exception as error:  # scipy raises many kinds on malformed files (IndexError, ZeroDivisionError)
        raise ValueError(f"data.name=svhn: {path}: could not parse the .mat file ({_reason(error)}); "
                         "expected X (32, 32, 3, N) uint8 and y (N, 1)") from None


def _load_svhn(root: str, download: bool) -> tuple[torch.Tensor, ...]:
    folder = Path(root).expanduser()
    if not all((folder / _tv().SVHN.split_list[s][1]).is_file() for s in ("train", "test")):
        if not download:
            raise _missing("svhn", root, download)
        try:
            for split in ("train", "test"):
                _svhn_class()(root, split=split, download=True)
        except (RuntimeError, OSError) as error:
            raise _missing("svhn", root, download, error) from None
    return (*_svhn_split(root, "train"), *_svhn_split(root, "test"))


def load_dataset(name: str, root: str, download: bool) -> tuple[torch.Tensor, ...]:
    """(train images, train labels, test images, test labels): uint8 (N, C, H, W) and int64 (N,), on the CPU."""
    if name in ("mnist", "fashion_mnist"):
        arrays = _load_idx(name, root, download)
    elif name == "cifar10":
        arrays = _load_cifar10(root, download)
    else:
        arrays = _load_svhn(root, download)
    channels, size, classes = DATASETS[name]
    for split, (images, labels) in (("train", arrays[:2]), ("test", arrays[2:])):
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (channels, size, size):
            raise ValueError(f"data.name={name}: {split} images are {images.dtype} {tuple(images.shape)}, "
                             f"expected uint8 (N, {channels}, {size}, {size})")
        if len(labels) != len(images):
            raise ValueError(f"data.name={name}: {len(images)} {split} images but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"data.name={name}: {split} labels outside 0..{classes - 1}")
    return tuple(a.long() if a.dtype != torch.uint8 else a for a in arrays)


# ----------------------------------------------------------------------------- preprocessing
def random_crop(images: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random H x W windows of the zero-padded images (torchvision's RandomCrop(size,
    padding)), vectorised: offsets uniform in 0..2*padding, drawn row offset first."""
    if padding <= 0:
        return images
    n, c, h, w = images.shape
    padded = images.new_zeros(n, c, h + 2 * padding, w + 2 * padding)
    padded[:, :, padding:padding + h, padding:padding + w] = images
    top = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=images.device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=images.device)
    rows = top[:, None] + torch.arange(h, device=images.device)  # (n, h)
    cols = left[:, None] + torch.arange(w, device=images.device)  # (n, w)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (n,h,w,c) -> nchw


def random_hflip(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=gen, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def to_float(images: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    """ToTensor's scaling of uint8 to [0, 1], then Normalize((x - mean) / std) per channel."""
    x = images.float().div_(255.0)
    if mean is not None:
        x = x.sub_(mean).div_(std)
    return x
