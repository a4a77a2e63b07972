"""Synthetic sparse coding data, y = A x + noise: the problem of LISTA-CPSS and ALISTA.

Chen et al. 2018 (Sec. 4.1) and the authors' TF code (``utils/prob.py``): A is m x n with N(0, 1/m)
entries and unit-norm columns (optionally a condition number kappa set through log-spaced singular
values); codes are Bernoulli(p) x N(0, 1); noise at a given SNR has, per sample, standard deviation
std(A x) * 10^(-SNR/20). Training batches are drawn fresh every step (``online``, as the TF code) or
from a fixed set (as HyperLISTA); validation and test sets are fixed by their own seeds, drawn on the
CPU so every device sees the same ones. Training data follow the run's ``seed``.
"""
from __future__ import annotations

from pathlib import Path
import numpy as np
import torch


def gaussian_matrix(m: int, n: int, seed: int, kappa: float | None = None,
                    col_normalized: bool = True) -> torch.Tensor:
    """A ~ N(0, 1/m), optionally with singular values logspace(0, -log10 kappa), unit columns."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, generator=gen, dtype=torch.float64) / m ** 0.5
    if kappa is not None:
        U, S, Vh = torch.linalg.svd(A, full_matrices=False)
        S = S[0] * torch.logspace(0, -np.log10(kappa), len(S), dtype=torch.float64)
        A = U @ torch.diag(S) @ Vh
    if col_normalized:
        A = A / A.norm(dim=0, keepdim=True)
    return A.float()


def load_matrix(path: str, key: str = "data.A_path", what: str = "the measurement matrix",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A user's real matrix from a .npy file or a .mat file holding one 2-D array (or one named A or D),
    as float32 (or ``dtype``: float64 keeps the file's values for y = A x computed as the authors'
    numpy code did); ``key`` and ``what`` name the setting and the array in the messages.

    Nothing in the file can run code: a .npy file is read by numpy's .npy reader with
    ``allow_pickle=False`` (no object arrays, no pickles, no .npz fallback), and a .mat file holds no
    pickles. A file that cannot be read, or holds no usable matrix (complex, not numbers, NaN/Inf, all
    zero), raises one ValueError naming it and saying what to do.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{key}: no file at {file}")
    if file.suffix not in (".npy", ".mat"):
        raise ValueError(f"{key}: {file} must be a .npy or .mat file")
    where = f"{key}: {file}"
    try:  # numpy and scipy raise many kinds on malformed files (EOFError, TokenError, IndexError, ...)
        if file.suffix == ".npy":
            with open(file, "rb") as f:
                array = np.lib.format.read_array(f, allow_pickle=False)
        else:
            from scipy.io import loadmat

            arrays = {k: v for k, v in loadmat(file).items() if not k.startswith("__")}
    except Exception as error:
        how = "numpy.save(file, A)" if file.suffix == ".npy" else "scipy.io.savemat or MATLAB's save -v7"
        raise ValueError(f"{where}: not a readable {file.suffix} file ({type(error).__name__}: {error}); "
                         f"save the matrix with {how}") from None
    if file.suffix == ".mat":
        named = [k for k in ("A", "D") if k in arrays]
        if not named and len(arrays) != 1:
            raise ValueError(f"{where}: holds {sorted(arrays) or 'no array'}; save one 2-D array, "
                             "or name the matrix A or D")
        array = arrays[named[0]] if named else next(iter(arrays.values()))
        if hasattr(array, "toarray"):  # a MATLAB sparse matrix
            array = array.toarray()
    if array.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D matrix, got shape {array.shape}")
    if array.dtype.kind == "c":
        raise ValueError(f"{where}: complex values; give a real matrix")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{where}: {array.dtype} entries, not numbers; give a real matrix of floats")
    with np.errstate(over="ignore"):  # values beyond float32's range become inf, refused next
        matrix = np.asarray(array, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise ValueError(f"{where}: NaN or infinite entries (or values beyond float32's range); "
                         "give finite values")
    if not matrix.any():
        raise ValueError(f"{where}: every entry is zero (or the matrix is empty); give {what}")
    return torch.as_tensor(matrix if dtype == torch.float32 else np.asarray(array, dtype=np.float64)).to(dtype)


def load_codes(path: str, n: int) -> torch.Tensor:
    """Fixed test codes from a file holding one sample per column (n x count), returned one per row
    (count x n), as float32.

    The layout of the authors' ``data/xtest_n500_p10.npy`` (VITA-Group/ALISTA, LISTA-CPSS: 500 x 1000,
    read with ``np.load`` and fed as the columns of x); read as safely as :func:`load_matrix`.
    """
    codes = load_matrix(path, "data.test_path", "the sparse codes")
    if codes.shape[0] != n:
        raise ValueError(f"data.test_path: {path} holds {codes.shape[1]} codes of length {codes.shape[0]} "
                         f"(one sample per column) but data.n={n}: give codes of length n, one per column")
    return codes.T.contiguous()


def sample_codes(batch: int, n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    """Bernoulli(p) x N(0, 1) sparse codes, one per row."""
    support = torch.rand(batch, n, generator=gen, device=device) < p
    return support * torch.randn(batch, n, generator=gen, device=device)


def measure(x: torch.Tensor, A: torch.Tensor, snr_db: float | None, gen: torch.Generator) -> torch.Tensor:
    """y = A x, plus noise of per-sample std std(A x) 10^(-snr/20) when snr_db is set."""
    y = x @ A.T
    if snr_db is None:
        return y
    std = y.std(dim=1, keepdim=True) * 10.0 ** (-snr_db / 20.0)
    return y + std * torch.randn(y.shape, generator=gen, device=y.device)
