"""Synthetic sparse coding, y = A x + noise: the problem of LISTA-CPSS and ALISTA.

Chen et al. 2018 (Sec. 4.1) and the authors' TF code (``utils/prob.py``): A is m x n with N(0, 1/m)
entries and unit-norm columns (optionally a condition number kappa set through log-spaced singular
values); codes are Bernoulli(p) x N(0, 1); noise at a given SNR has, per sample, standard deviation
std(A x) * 10^(-SNR/20). Training batches are drawn fresh every step (``online``, as the TF code) or
from a fixed set (as HyperLISTA); validation and test sets are fixed by their own seeds, drawn on the
CPU so every device sees the same ones. Training data follow the run's ``seed``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from omegaconf import DictConfig

from unroll_cli.evaluate.metrics import nmse_db, support_recovery

Batch = tuple[torch.Tensor, torch.Tensor]  # (y, x)


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


def load_matrix(path: str) -> torch.Tensor:
    """A user's real matrix from a .npy file or a .mat file holding one 2-D array (or one named A or D),
    as float32.

    Nothing in the file can run code: a .npy file is read by numpy's .npy reader with
    ``allow_pickle=False`` (no object arrays, no pickles, no .npz fallback), and a .mat file holds no
    pickles. A file that cannot be read, or holds no usable matrix (complex, not numbers, NaN/Inf, all
    zero), raises one ValueError naming it and saying what to do.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data.A_path: no file at {file}")
    if file.suffix not in (".npy", ".mat"):
        raise ValueError(f"data.A_path: {file} must be a .npy or .mat file")
    where = f"data.A_path: {file}"
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
        raise ValueError(f"{where}: every entry is zero (or the matrix is empty); "
                         "give the measurement matrix")
    return torch.as_tensor(matrix)


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


class SyntheticSparseCoding:
    """The sparse-coding Task: data, the training loss and the per-layer evaluation."""

    kind = "sparse_coding"
    monitor, monitor_mode = "val/nmse_db", "min"

    def __init__(self, m: int, n: int, p: float, snr_db: float | None, kappa: float | None,
                 col_normalized: bool, online: bool, n_train: int, n_val: int, n_test: int,
                 batch_size: int, matrix_seed: int, val_seed: int, test_seed: int,
                 A_path: str | None, seed: int = 0, device: str | torch.device = "cpu",
                 trainer: DictConfig | None = None, eval: DictConfig | None = None):
        if A_path:
            A = load_matrix(A_path)
            if A.shape != (m, n):
                raise ValueError(f"data.A_path holds a {A.shape[0]}x{A.shape[1]} matrix but "
                                 f"data.m={m}, data.n={n}: set them to the file's shape")
        else:
            A = gaussian_matrix(m, n, matrix_seed, kappa, col_normalized)
        self.p, self.snr_db, self.online = p, snr_db, online
        self._kappa = None if A_path else kappa
        self.batch_size = batch_size
        self.nmse = eval.nmse if eval is not None else "pooled"
        self.support_tol = eval.support_tol if eval is not None else 0.0
        self.baselines = list(eval.baselines) if eval is not None else []
        self.loss_kind = trainer.loss if trainer is not None else "supervised"
        self.device = torch.device(device)
        self.A = A.to(self.device)
        self.val = self._fixed_set(A, n_val, val_seed)
        self.test = self._fixed_set(A, n_test, test_seed)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        if online:
            self.steps_per_epoch = trainer.steps_per_epoch if trainer is not None else 1
            self.train_set = None
        else:
            self.train_set = self._fixed_set(A, n_train, seed + 1_000_003)
            self.steps_per_epoch = max(1, n_train // batch_size)

    @staticmethod
    def memory_estimate(data: DictConfig, trainer: DictConfig) -> dict[str, int]:
        """Bytes the task holds (see :mod:`unroll_cli.memory`): A in float64 while it is drawn,
        and the fixed sets' (y, x) pairs with their temporaries."""
        width = data.m + data.n
        estimate = {"data.n": 8 * 4 * data.m * data.n, "data.n_val": 8 * data.n_val * width,
                    "data.n_test": 8 * data.n_test * width, "data.batch_size": 16 * data.batch_size * width}
        if not data.online:
            estimate["data.n_train"] = 8 * data.n_train * width
        return estimate

    @property
    def eval_batch_size(self) -> int:
        """Evaluation sees the whole validation or test set at once."""
        return max(len(self.val[0]), len(self.test[0]))

    def _fixed_set(self, A: torch.Tensor, size: int, seed: int) -> Batch:
        gen = torch.Generator().manual_seed(seed)
        x = sample_codes(size, A.shape[1], self.p, gen, "cpu")
        y = measure(x, A, self.snr_db, gen)
        return y.to(self.device), x.to(self.device)

    # ------------------------------------------------------------------ training
    def model_kwargs(self) -> dict:
        """What a model needs from the data to be built."""
        return {"A": self.A}

    def train_batches(self) -> Iterator[Batch]:
        """One epoch of (y, x) training batches on the task's device."""
        if self.online:
            for _ in range(self.steps_per_epoch):
                x = sample_codes(self.batch_size, self.A.shape[1], self.p, self.gen, self.device)
                yield measure(x, self.A, self.snr_db, self.gen), x
        else:
            y_all, x_all = self.train_set
            order = torch.randperm(len(x_all), generator=self.gen, device=self.device)
            for i in range(self.steps_per_epoch):
                idx = order[i * self.batch_size:(i + 1) * self.batch_size]
                yield y_all[idx], x_all[idx]

    def loss(self, estimates: list[torch.Tensor], batch: Batch, model: torch.nn.Module) -> torch.Tensor:
        """``trainer.loss``: supervised, the mean over samples of ||x_hat - x||^2; lasso (unsupervised),
        0.5||y - A x_hat||^2 + lam ||x_hat||_1 with the model's lam."""
        y, x = batch
        x_hat = estimates[-1]
        if self.loss_kind == "supervised":
            return (x_hat - x).pow(2).sum(dim=1).mean()
        residual = y - x_hat @ self.A.T
        return (0.5 * residual.pow(2).sum(dim=1) + model.lam * x_hat.abs().sum(dim=1)).mean()

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validate(self, model: torch.nn.Module, depth: int | None = None) -> dict[str, float]:
        y, x = self.val
        return {self.monitor: nmse_db(model(y, depth)[-1].float(), x, self.nmse)}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, prefix: str = "test") -> tuple[dict, list[float]]:
        """Final metrics on the test set and the NMSE (dB) after every layer, layer 0 (x = 0) first."""
        y, x = self.test
        estimates = [e.float() for e in model(y)]
        per_layer = [0.0] + [nmse_db(e, x, self.nmse) for e in estimates]
        metrics = {f"{prefix}/nmse_db": per_layer[-1]}
        for key, value in support_recovery(estimates[-1], x, self.support_tol).items():
            metrics[f"{prefix}/support_{key}"] = value
        return metrics, per_layer

    def metric_names(self) -> list[str]:
        """The metrics a run of this task reports (``published/...`` besides, when a paper has them)."""
        support = [f"support_{k}" for k in ("precision", "recall", "f1")]
        names = ["val/nmse_db"]
        for prefix in ["test"] + [f"baseline/{b}/test" for b in self.baselines]:
            names += [f"{prefix}/{metric}" for metric in ["nmse_db", *support]]
        return names

    def artifacts(self) -> dict[str, np.ndarray]:
        """Arrays that belong to the run directory (the matrix A defines the problem)."""
        return {"A.npy": self.A.cpu().numpy()}

    def setting(self) -> str:
        """The published-figure key of this problem: noiseless, snr40, kappa30, ..."""
        if self._kappa is not None:
            return f"kappa{self._kappa:g}"
        return "noiseless" if self.snr_db is None else f"snr{self.snr_db:g}"
