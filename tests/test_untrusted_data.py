"""Data files are untrusted: none runs code (crafted pickles write a marker file if they do), and every
bad file, through the loaders and through the CLI, is one ValueError naming it, never a traceback."""
from __future__ import annotations

import codecs
import pathlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from conftest import run_cli
from test_image_data import make_cifar, make_idx_set, make_svhn
from unroll_cli.data.images import load_dataset
from unroll_cli.data.synthetic import load_matrix


class Payload:
    """Unpickling this calls ``function(*args)``: the way a crafted pickle runs code."""

    def __init__(self, function, *args):
        self.call = (function, args)

    def __reduce__(self):
        return self.call


def touch(marker: Path) -> Payload:
    return Payload(pathlib.Path.touch, marker)


def test_the_payload_runs_under_plain_pickle(tmp_path):
    """The marker checks below mean something: plain ``pickle.load`` does create it."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps({"data": touch(marker)}, protocol=4))
    assert marker.exists()


# ----------------------------------------------------------------------------- CIFAR-10 pickles
def write_pickle(path: Path, content, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(content, protocol=protocol))


@pytest.fixture
def cifar(tmp_path):
    """A valid tiny CIFAR-10 set: (root, its folder, the arrays written)."""
    batches = make_cifar(tmp_path / "data", np.random.default_rng(0))
    return tmp_path / "data", tmp_path / "data" / "cifar-10-batches-py", batches


def crafted(name: str, marker: Path, where: str) -> object:
    """A pickle for batch file ``name`` that runs code: alone, or hidden in an otherwise valid entry."""
    if where == "alone":
        return touch(marker)
    if name == "batches.meta":
        return {"label_names": [f"class{i}" for i in range(9)] + [touch(marker)], "num_vis": 3072}
    return {"data": np.zeros((2, 3072), np.uint8), "labels": [0, touch(marker)], "filenames": []}


@pytest.mark.parametrize("where", ["alone", "inside"])
@pytest.mark.parametrize("name", ["data_batch_1", "test_batch", "batches.meta"])
def test_cifar10_crafted_pickle_is_refused_unrun(cifar, name, where):
    root, folder, _ = cifar
    marker = root.parent / "marker"
    write_pickle(folder / name, crafted(name, marker, where), protocol=4)
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", str(root), download=False)
    message = str(info.value)
    assert message.startswith(f"data.name=cifar10: {folder / name}: holds something other than arrays")
    assert "(pathlib.Path.touch); it was not loaded" in message
    assert not marker.exists()


def test_cifar10_other_codecs_are_refused(cifar):
    """Python 3 pickles bytes as ``_codecs.encode(text, "latin1")``: admitted for latin1 only."""
    root, folder, _ = cifar
    inflate = Payload(codecs.encode, "x\x9c", "zlib_codec")
    write_pickle(folder / "data_batch_2", {"data": inflate, "labels": []})
    with pytest.raises(ValueError, match="data_batch_2: holds something other than .* 'zlib_codec'"):
        load_dataset("cifar10", str(root), download=False)


@pytest.mark.parametrize("content,reason", [
    (b"", "not a readable pickle (EOFError"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}, protocol=2)[:200],
     "not a readable pickle"),
    ({"labels": [1, 2]},
     "not a CIFAR-10 batch, a dict of data (N x 3072 uint8) and labels (KeyError: 'data')"),
    ({"data": np.zeros((2, 100), np.uint8), "labels": [1, 2]}, "not a CIFAR-10 batch"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": ["cat", "dog"]}, "not a CIFAR-10 batch"),
    ([1, 2, 3], "not a CIFAR-10 batch"),
], ids=["empty", "truncated", "no-data", "bad-shape", "text-labels", "a-list"])
def test_cifar10_bad_batch_names_the_file(cifar, content, reason):
    root, folder, _ = cifar
    path = folder / "data_batch_3"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_pickle(path, content)
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", str(root), download=False)
    assert str(info.value).startswith(f"data.name=cifar10: {path}: {reason}")


def test_cifar10_meta_without_label_names_names_the_file(cifar):
    root, folder, _ = cifar
    write_pickle(folder / "batches.meta", {"num_vis": 3072})
    with pytest.raises(ValueError, match=f"{folder / 'batches.meta'}: not CIFAR-10's batches.meta"):
        load_dataset("cifar10", str(root), download=False)


class Python2Array:
    """Pickles as an array in CIFAR-10's own files: numpy's ``_reconstruct`` and the pixels as a string
    (what Python 2's str is read as under ``encoding="latin1"``)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __reduce__(self):
        reconstruct = np.zeros(1).__reduce__()[0]
        state = (1, self.array.shape, self.array.dtype, False, self.array.tobytes().decode("latin1"))
        return reconstruct, (np.ndarray, (0,), "B"), state


def python2_style(content: dict) -> bytes:
    """The pickle of ``content``, its array as in CIFAR-10's own files (``numpy.core.multiarray``)."""
    data = pickle.dumps({**content, "data": Python2Array(content["data"])}, protocol=2)
    assert data.count(b"cnumpy._core.multiarray\n_reconstruct\n") == 1
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


@pytest.mark.parametrize("protocol", [2, 4, 5, "python2"])
def test_cifar10_valid_pickles_load_as_written(cifar, protocol):
    """CIFAR-10's own format and every protocol a re-packed copy may use: 2 (bytes as
    ``_codecs.encode``), 4, 5 (``_frombuffer``)."""
    root, folder, batches = cifar
    for name, (data, labels) in batches.items():
        content = {"batch_label": name, "data": data, "labels": labels, "filenames": []}
        if protocol == "python2":
            (folder / name).write_bytes(python2_style(content))
        else:
            write_pickle(folder / name, content, protocol)
    train_x, train_y, test_x, test_y = load_dataset("cifar10", str(root), download=False)
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert train_x.dtype == torch.uint8 and train_x.shape == (30, 3, 32, 32) and train_x.is_contiguous()
    assert torch.equal(train_x, torch.from_numpy(data).reshape(30, 3, 32, 32))
    assert train_y.dtype == torch.int64
    assert train_y.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.equal(test_x, torch.from_numpy(batches["test_batch"][0]).reshape(12, 3, 32, 32))
    assert test_y.tolist() == batches["test_batch"][1]


# ----------------------------------------------------------------------------- MNIST IDX, SVHN .mat
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_gzip_idx_file_names_the_file(tmp_path, damage):
    make_idx_set(tmp_path / "MNIST" / "raw", np.random.default_rng(0), gz=True)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(b"not gzip at all" if damage == "garbage" else path.read_bytes()[:300])
    with pytest.raises(ValueError) as info:
        load_dataset("mnist", str(tmp_path), download=False)
    assert str(info.value).startswith(f"data.name=mnist: {path}: not a readable gzip file (")


def test_idx_legacy_processed_files_are_never_read(tmp_path):
    """torchvision's MNIST prefers ``processed/*.pt`` over the raw files; here only the raw files count."""
    written = make_idx_set(tmp_path / "MNIST" / "raw", np.random.default_rng(1), gz=False)
    (tmp_path / "MNIST" / "processed").mkdir()
    for name in ("training.pt", "test.pt"):
        (tmp_path / "MNIST" / "processed" / name).write_bytes(b"not a torch file")
    train_x, train_y, test_x, _ = load_dataset("mnist", str(tmp_path), download=False)
    assert torch.equal(train_x[:, 0], torch.from_numpy(written["train"][0]))
    assert torch.equal(test_x[:, 0], torch.from_numpy(written["t10k"][0]))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no-X", "X-of-text"])
def test_bad_svhn_mat_names_the_file(tmp_path, damage):
    written = make_svhn(tmp_path, np.random.default_rng(2))
    path = tmp_path / "test_32x32.mat"
    if damage == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "no-X":
        savemat(path, {"y": written["test"][1]})
    else:
        savemat(path, {"X": np.array(["not", "pixels"]), "y": written["test"][1]})
    with pytest.raises(ValueError) as info:
        load_dataset("svhn", str(tmp_path), download=False)
    assert str(info.value).startswith(f"data.name=svhn: {path}: could not parse the .mat file (")


# ----------------------------------------------------------------------------- the measurement matrix
def save_npy(path: Path, array: np.ndarray) -> None:
    np.save(path, array, allow_pickle=True)


def write_bad_matrix(path: Path, case: str, marker: Path) -> None:
    """The file for one bad case; ``marker`` is created if the file's content is ever run."""
    A = np.random.default_rng(3).standard_normal((20, 40))
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        save_npy(path, A)
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "objects":
        save_npy(path, np.array([[touch(marker), 1.0]], dtype=object))
    elif case == "pickle":
        path.write_bytes(pickle.dumps(touch(marker)))
    elif case == "npz":
        with open(path, "wb") as f:
            np.savez(f, A=A)
    elif case in ("complex", "text", "nan", "inf", "too-large", "zero", "vector"):
        save_npy(path, {"complex": A + 1j, "text": np.full(A.shape, "x"), "nan": np.where(A > 1, np.nan, A),
                        "inf": np.where(A > 1, -np.inf, A), "too-large": A * 1e300, "zero": 0 * A,
                        "vector": A[0]}[case])
    elif case == "garbage-mat":
        path.write_bytes(bytes(range(256)) * 4)
    else:
        savemat(path, {"B": A, "C": A} if case == "two-arrays" else {})


BAD_MATRICES = [  # (case, file, what the message says)
    ("empty", "A.npy", "not a readable .npy file (ValueError: EOF: reading magic string"),
    ("truncated", "A.npy", "not a readable .npy file (ValueError"),
    ("objects", "A.npy", "not a readable .npy file (ValueError: Object arrays cannot be loaded"),
    ("pickle", "A.npy", "not a readable .npy file (ValueError: the magic string is not correct"),
    ("npz", "A.npy", "not a readable .npy file (ValueError: the magic string is not correct"),
    ("complex", "A.npy", "complex values; give a real matrix"),
    ("text", "A.npy", "<U1 entries, not numbers; give a real matrix of floats"),
    ("nan", "A.npy", "NaN or infinite entries"),
    ("inf", "A.npy", "NaN or infinite entries"),
    ("too-large", "A.npy", "NaN or infinite entries (or values beyond float32's range)"),
    ("zero", "A.npy", "every entry is zero"),
    ("vector", "A.npy", "expected a 2-D matrix, got shape (40,)"),
    ("garbage-mat", "A.mat", "not a readable .mat file ("),
    ("two-arrays", "A.mat", "holds ['B', 'C']; save one 2-D array, or name the matrix A or D"),
    ("no-array", "A.mat", "holds no array"),
]


@pytest.mark.parametrize("case,name,says", BAD_MATRICES, ids=[case for case, _, _ in BAD_MATRICES])
def test_bad_matrix_file_is_one_error_naming_it(tmp_path, case, name, says):
    path, marker = tmp_path / name, tmp_path / "marker"
    write_bad_matrix(path, case, marker)
    with pytest.raises(ValueError) as info:
        load_matrix(str(path))
    assert str(info.value).startswith(f"data.A_path: {path}: {says}")
    assert info.value.__cause__ is None  # no chained traceback
    assert info.value.__context__ is None or info.value.__suppress_context__
    assert not marker.exists()


@pytest.mark.parametrize("name", ["A.npy", "A.mat", "D.mat", "one.mat", "sparse.mat"])
def test_good_matrix_files_load_as_written(tmp_path, name):
    from scipy.sparse import csc_matrix

    A = np.random.default_rng(4).standard_normal((20, 40))
    A[A < 0.5] = 0.0  # sparse enough for a MATLAB sparse matrix
    path = tmp_path / name
    if name == "A.npy":
        np.save(path, A)
    else:
        key = {"A.mat": "A", "D.mat": "D"}.get(name, "M")
        others = {"B": 2 * A} if key == "D" else {}  # a named matrix is chosen among others
        savemat(path, {key: csc_matrix(A) if name == "sparse.mat" else A, **others})
    matrix = load_matrix(str(path))
    assert matrix.dtype == torch.float32 and matrix.shape == (20, 40)
    assert torch.equal(matrix, torch.from_numpy(A.astype(np.float32)))


# ----------------------------------------------------------------------------- through the CLI
def assert_one_clear_error(result, path: Path, marker: Path) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert str(path) in output
    assert "Traceback" not in output
    assert not marker.exists()


def test_cli_refuses_a_crafted_cifar10_pickle(cifar):
    root, folder, _ = cifar
    marker = root.parent / "marker"
    write_pickle(folder / "test_batch", crafted("test_batch", marker, "alone"), protocol=4)
    result = run_cli(["data=cifar10", f"data.root={root}", "data.download=false", "model=cnn",
                      "trainer.max_epochs=1", "trainer.progress=false",
                      f"hydra.run.dir={root.parent / 'run'}"], cwd=root.parent)
    assert_one_clear_error(result, folder / "test_batch", marker)


def test_cli_refuses_a_matrix_file_of_objects(tmp_path):
    path, marker = tmp_path / "A.npy", tmp_path / "marker"
    write_bad_matrix(path, "objects", marker)
    result = run_cli(["data.m=20", "data.n=40", f"data.A_path={path}", "trainer.max_epochs=1",
                      "trainer.progress=false", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_one_clear_error(result, path, marker)
