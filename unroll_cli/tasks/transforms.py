"""Transform learning (Dao, Gu, Eichhorn, Rudra & Ré, "Learning Fast Algorithms for Linear Transforms
Using Butterfly Factorizations", ICML 2019, Sec. 4.1): fit a structured model to a fixed ``N x N``
target matrix (DFT, DCT, DST, Hadamard, Hartley, convolution, Legendre, randn) by gradient descent, and
compare with the closed-form hierarchical butterfly factorization of the target (Le, Zheng, Riccietti &
Gribonval, "Fast learning of fast transforms, with guarantees", ICASSP 2022).

As in the authors' ``learning_transforms`` code: the model's input is the identity (the ``N`` basis
vectors), so its output is ``M^T``; the loss is ``mse_loss(output^T, target)``, complex matrices taken
through their real/imaginary view (the mean over the ``2 N^2`` real numbers); the reported number is
``RMSE = sqrt(MSE)``, i.e. ``||M - T||_F / N`` for a real target and ``||M - T||_F / (N sqrt 2)`` for a
complex one (the DFT row of their ``rmse.pkl``). The data is the target itself, nothing is held out:
the validation metric after every epoch is the RMSE of the model's matrix (its best epoch is kept),
and ``report`` evaluates it and runs the factorization. The authors' last step, L-BFGS polishing
with the permutations frozen, is a training phase (``+callbacks=polish``, :mod:`unroll_cli.train.polish`;
``data=transform`` selects it) on :meth:`TransformLearning.full_batch`.
"""
from __future__ import annotations

import math
import time
from typing import Iterator

import numpy as np
import pandas as pd
import scipy.fftpack
import scipy.linalg
import torch
from numpy.polynomial import legendre
from omegaconf import DictConfig

from unroll_cli.schema import SEED_RANGE, constrained, register_schema
from unroll_cli.models.butterfly_factorize import TREES, butterfly_factorize, twiddle_to_dense
from unroll_cli.record.labels import model_title
from unroll_cli.record.report import Published, Report, Table
from unroll_cli.tasks.base import SeededStream, online_epoch

TRANSFORMS = ("dft", "dct", "dst", "hadamard", "hartley", "convolution", "legendre", "randn")
# the model learning_transforms/run_exp.sh uses for each target (BP for the others)
PAPER_KIND = {"dct": "BPP", "dst": "BPP", "convolution": "BPBP"}
# the input permutations the factorization tries (the best is kept): the identity, and the bit reversal
# that makes the DFT a butterfly (Cooley-Tukey)
FACTORIZE_PERMUTATIONS = (None, "bitrev")

Batch = tuple[torch.Tensor, torch.Tensor]  # (basis vectors e_i as rows, the target's columns i)


def power_of_two(v: int) -> bool:
    return v >= 2 and v & (v - 1) == 0


@register_schema("data", "transform")
class TransformConfig:
    """An ``N x N`` target transform learned from the identity (Dao et al. 2019, Sec. 4.1)."""

    _target_: str = "unroll_cli.tasks.transforms.TransformLearning"
    transform: str = constrained("dft", f"one of {', '.join(TRANSFORMS)}", lambda v: v in TRANSFORMS)
    N: int = constrained(16, "a power of two >= 2", power_of_two)
    target_seed: int = constrained(0, *SEED_RANGE)  # numpy's legacy seed of the randn and convolution targets (the authors': 0)
    # basis vectors per training step: all N (the authors', the default ${.N}), or a random subset
    batch_size: int = constrained("${.N}", "an integer >= 1", lambda v: v >= 1)
    # the factorization's tree (Le et al. 2022)
    tree: str = constrained("balanced", "balanced or unbalanced", lambda v: v in TREES, changeable=True)


SEEDED = ("convolution", "randn")  # the targets data.target_seed draws


def target_matrix(transform: str, N: int, seed: int = 0) -> np.ndarray:
    """The authors' ``named_target_matrix`` (``learning_transforms/target_matrix.py``): float64, or
    complex128 for the DFT. Not all are orthogonal: the DCT and DST are scipy's unnormalised type II
    divided by ``sqrt(N)``, Legendre and randn are not."""
    if transform == "dft":
        return scipy.linalg.dft(N, scale="sqrtn")
    if transform == "dct":  # transposed: scipy transforms the rows of the identity
        return scipy.fftpack.dct(np.eye(N)).T / math.sqrt(N)
    if transform == "dst":
        return scipy.fftpack.dst(np.eye(N)).T / math.sqrt(N)
    if transform == "hadamard":
        return scipy.linalg.hadamard(N) / math.sqrt(N)
    if transform == "hartley":
        angles = np.outer(np.arange(N), np.arange(N)) * 2 * math.pi / N
        return (np.cos(angles) + np.sin(angles)) / math.sqrt(N)
    if transform == "convolution":
        return scipy.linalg.circulant(np.random.RandomState(seed).randn(N)) / math.sqrt(N)
    if transform == "legendre":
        grid = np.linspace(-1, 1, N + 2)[1:-1]
        return legendre.legvander(grid, N - 1).T / math.sqrt(N)
    if transform == "randn":
        return np.random.RandomState(seed).randn(N, N) / math.sqrt(N)
    raise ValueError(f"data.transform={transform!r}: one of {', '.join(TRANSFORMS)}")


def mse(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The authors' MSE: the mean square of the entries, a complex entry counting as two real ones."""
    error = estimate - target
    if error.is_complex():
        return (error.real.square() + error.imag.square()).mean() / 2
    return error.square().mean()


def published_rmse(paper: DictConfig | None, transform: str, N: int) -> float | None:
    """``paper.rmse[transform][N]`` when the experiment's paper config has it."""
    if paper is None:
        return None
    values = (paper.get("rmse") or {}).get(transform) or {}
    value = values.get(N, values.get(str(N)))
    return None if value is None else float(value)


class TransformLearning(SeededStream):
    """Learn the target transform from the identity; RMSE of the trained and of the factorized matrix."""

    kind = "transform"
    model_protocol: dict[str, str] = {}
    monitor, monitor_mode = "val/rmse", "min"
    primary_metric = "test/rmse"

    def __init__(self, transform: str, N: int, target_seed: int = 0, batch_size: int = 16,
                 tree: str = "balanced", seed: int = 0,
                 device: str | torch.device = "cpu", trainer: DictConfig | None = None):
        self.transform, self.N, self.tree = transform, N, tree
        self.device = torch.device(device)
        self.exact = torch.from_numpy(target_matrix(transform, N, target_seed))  # float64 / complex128
        drawn = f", drawn by data.target_seed={target_seed}" if transform in SEEDED else ""
        self.data_source = f"the {N}x{N} {transform} matrix{drawn}"
        dtype = torch.promote_types(torch.get_default_dtype(), torch.complex64) if self.exact.is_complex() \
            else torch.get_default_dtype()
        self.target = self.exact.to(self.device, dtype)
        self.eye = torch.eye(N, device=self.device)
        self.batch_size = min(batch_size, N)
        self.eval_batch_size = N
        self.steps_per_epoch = online_epoch(trainer)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)

    @staticmethod
    def memory_estimate(data: DictConfig, trainer: DictConfig) -> dict[str, int]:
        """Bytes of the ``N x N`` arrays (see :mod:`unroll_cli.memory`): the target in double and
        working precision, the identity, the model's matrix and its gradients, the factorization's
        double-precision copies; complex entries (the DFT) take twice as many."""
        return {"data.N": 128 * (2 if data.transform == "dft" else 1) * data.N ** 2}

    # ------------------------------------------------------------------ training
    def model_kwargs(self) -> dict:
        """The size, whether the target is complex, and the authors' model for it (``model.kind=paper``)."""
        return {"n": self.N, "complex": self.target.is_complex(), "paper_kind": PAPER_KIND.get(self.transform, "BP")}

    def train_batches(self) -> Iterator[Batch]:
        """``steps_per_epoch`` batches: the whole identity with the whole target, or
        ``batch_size`` random basis vectors with the target's matching columns."""
        for _ in range(self.steps_per_epoch):
            if self.batch_size == self.N:
                yield self.eye, self.target
            else:
                idx = torch.randperm(self.N, generator=self.gen, device=self.device)[:self.batch_size]
                yield self.eye[idx], self.target[:, idx]

    def full_batch(self) -> Batch:
        """The whole identity with the whole target (L-BFGS polishing fits it at once)."""
        return self.eye, self.target

    def loss(self, outputs: torch.Tensor, batch: Batch, model: torch.nn.Module) -> torch.Tensor:
        """``mse(outputs^T, target columns)``: the model maps the rows e_i to the rows of ``M^T``."""
        return mse(outputs.T, batch[1])

    # ------------------------------------------------------------------ evaluation
    def rmse(self, matrix: torch.Tensor) -> float:
        """The authors' RMSE, ``sqrt(mse)``, of ``matrix`` against the exact (double-precision) target."""
        return math.sqrt(mse(matrix.detach().cpu().to(self.exact.dtype), self.exact).item())

    @torch.no_grad()
    def model_matrix(self, model: torch.nn.Module) -> torch.Tensor:
        return model(self.eye).T

    def validate(self, model: torch.nn.Module, depth: int | None = None) -> dict[str, float]:
        return {self.monitor: self.rmse(self.model_matrix(model))}

    def factorize(self) -> dict:
        """The hierarchical SVD butterfly factorization (Le et al. 2022) of the exact target, in double
        precision, after each permutation of ``FACTORIZE_PERMUTATIONS``; the best RMSE is kept, and the
        time is that of all the factorizations tried (what the reported result costs)."""
        results, seconds = [], 0.0
        for permutation in FACTORIZE_PERMUTATIONS:
            started = time.perf_counter()
            twiddle, perm = butterfly_factorize(self.exact, self.tree, permutation)
            seconds += time.perf_counter() - started
            dense = twiddle_to_dense(twiddle)  # B with M[:, perm] = B, so M = B[:, perm^-1]
            if perm is not None:
                dense = dense[:, torch.argsort(perm)]
            results.append((self.rmse(dense), permutation or "none"))
        rmse, permutation = min(results)
        return {"rmse": rmse, "seconds": seconds, "permutation": permutation}

    def report(self, model: torch.nn.Module, model_name: str, paper: DictConfig | None, history: list[dict]) -> Report:
        """RMSE of the final model (``test/rmse``: polished when the run polished it, the paper's
        number), of the gradient phase's best epoch (``test/rmse_adam``) and of the factorization
        (``factorize/*``); ``train/seconds`` the training epochs' time; the RMSE per method."""
        final = self.rmse(self.model_matrix(model))
        epochs = [row[self.monitor] for row in history if self.monitor in row]
        train_seconds = float(sum(row.get("seconds", 0.0) for row in history))
        metrics = {"test/rmse": final, "test/rmse_adam": min(epochs, default=final), "train/seconds": train_seconds}
        factorized = self.factorize()
        metrics["factorize/rmse"], metrics["factorize/seconds"] = factorized["rmse"], factorized["seconds"]
        value = published_rmse(paper, self.transform, self.N)
        published = None if value is None else Published(
            "test/rmse", value, f"{paper.source}: the best of at least 20 Hyperband trials (random lr and seed), "
            "polished; this run is one trial")
        methods = pd.DataFrame([("gradient (Adam, best epoch)", metrics["test/rmse_adam"], train_seconds),
                                ("final model (after any polishing: see polish/*)", final, float("nan")),
                                (f"hierarchical factorization ({self.tree} tree, permutation "
                                 f"{factorized['permutation']})", factorized["rmse"], factorized["seconds"])],
                               columns=["method", "RMSE", "seconds"])
        return Report(f"{model_title(model_name, model)} on {self.transform}, N={self.N}", metrics,
                      {"methods": Table(methods, None, "RMSE per method")},
                      published=published, curve=("step", True), notes=[
                          "The factorization is one butterfly after a fixed permutation (the identity or the bit "
                          "reversal, the better one): exact for Hadamard and the DFT, a projection for targets "
                          "that need more (BPP, BPBP).",
                          "RMSE = sqrt(mean square error of the matrix entries), complex entries as two real ones "
                          "(Dao et al.'s rmse.pkl convention): ||M - T||_F / N, or / (N sqrt 2) for the complex DFT."])

    def metric_names(self) -> list[str]:
        """The metrics a run of this task reports (``published/test/rmse`` besides, when the paper has it)."""
        return ["test/rmse", "test/rmse_adam", "factorize/rmse", "train/seconds", "factorize/seconds"]

    def artifacts(self) -> dict[str, np.ndarray]:
        """The target matrix defines the problem."""
        return {"target.npy": self.exact.numpy()}
