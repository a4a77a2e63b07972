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
and ``report`` evaluates it, polishes it with L-BFGS after freezing its permutations (the authors' last
step), and runs the factorization.
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

from unroll_cli.schema import constrained, register_schema
from unroll_cli.models.butterfly_factorize import TREES, butterfly_factorize, twiddle_to_dense
from unroll_cli.record import figures

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
    target_seed: int = 0  # numpy's legacy seed of the randn and convolution targets (the authors': 0)
    # basis vectors per training step: all N (the authors', the default ${.N}), or a random subset
    batch_size: int = constrained(16, "an integer >= 1", lambda v: v >= 1)
    # L-BFGS steps after training, permutations frozen (the authors: 20); 0: none
    polish_steps: int = constrained(20, "an integer >= 0", lambda v: v >= 0, changeable=True)
    # the factorization's tree (Le et al. 2022)
    tree: str = constrained("balanced", "balanced or unbalanced", lambda v: v in TREES, changeable=True)


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


class TransformLearning:
    """Learn the target transform from the identity; RMSE of the trained, polished and factorized matrix."""

    kind = "transform"
    monitor, monitor_mode = "val/rmse", "min"
    primary_metric = "test/rmse"

    def __init__(self, transform: str, N: int, target_seed: int = 0, batch_size: int = 16,
                 polish_steps: int = 20, tree: str = "balanced", seed: int = 0,
                 device: str | torch.device = "cpu", trainer: DictConfig | None = None):
        self.transform, self.N, self.polish_steps, self.tree = transform, N, polish_steps, tree
        self.device = torch.device(device)
        self.exact = torch.from_numpy(target_matrix(transform, N, target_seed))  # float64 / complex128
        dtype = torch.promote_types(torch.get_default_dtype(), torch.complex64) if self.exact.is_complex() \
            else torch.get_default_dtype()
        self.target = self.exact.to(self.device, dtype)
        self.eye = torch.eye(N, device=self.device)
        self.batch_size = min(batch_size, N)
        self.eval_batch_size = N
        self.steps_per_epoch = trainer.steps_per_epoch if trainer is not None else 1
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

    def loss(self, outputs: torch.Tensor, batch: Batch, model: torch.nn.Module) -> torch.Tensor:
        """``mse(outputs^T, target columns)``: the model maps the rows e_i to the rows of ``M^T``."""
        return mse(outputs.T, batch[1])

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])

    # ------------------------------------------------------------------ evaluation
    def rmse(self, matrix: torch.Tensor) -> float:
        """The authors' RMSE, ``sqrt(mse)``, of ``matrix`` against the exact (double-precision) target."""
        return math.sqrt(mse(matrix.detach().cpu().to(self.exact.dtype), self.exact).item())

    @torch.no_grad()
    def model_matrix(self, model: torch.nn.Module) -> torch.Tensor:
        return model(self.eye).T

    def validate(self, model: torch.nn.Module, depth: int | None = None) -> dict[str, float]:
        return {self.monitor: self.rmse(self.model_matrix(model))}

    def polish(self, model: torch.nn.Module) -> float:
        """The authors' final step: freeze the model (every submodule with a ``freeze()``: a learned
        permutation becomes its rounded, hard one), then ``polish_steps`` L-BFGS steps (PyTorch's
        defaults, as theirs) on the whole target; the best state met is kept. Returns its RMSE."""
        for module in model.modules():
            if callable(getattr(module, "freeze", None)):
                module.freeze()
        params = [p for p in model.parameters() if p.requires_grad]
        best = self.rmse(self.model_matrix(model))
        if not params:
            return best
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.LBFGS(params)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = self.loss(model(self.eye), (self.eye, self.target), model)
            loss.backward()
            return loss

        for _ in range(self.polish_steps):
            optimizer.step(closure)
            value = self.rmse(self.model_matrix(model))
            if value < best:  # NaN never is
                best, best_state = value, {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
        return best

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

    def report(self, model: torch.nn.Module, recorder, model_name: str, paper: DictConfig | None) -> dict:
        """RMSE of the trained model (``test/rmse_adam``), after the L-BFGS polish
        (``test/rmse_polished``, ``polish/seconds``) and of the factorization (``factorize/*``);
        ``test/rmse`` is that of the final model (polished when ``polish_steps > 0``: the paper's
        number), ``train/seconds`` the training epochs' time; results.md and the training curve."""
        metrics = {"test/rmse_adam": self.rmse(self.model_matrix(model)),
                   "train/seconds": float(sum(row.get("seconds", 0.0) for row in recorder.history))}
        final = metrics["test/rmse_adam"]
        if self.polish_steps:
            started = time.perf_counter()
            final = metrics["test/rmse_polished"] = self.polish(model)
            metrics["polish/seconds"] = time.perf_counter() - started
        metrics["test/rmse"] = final
        factorized = self.factorize()
        metrics["factorize/rmse"], metrics["factorize/seconds"] = factorized["rmse"], factorized["seconds"]
        published = published_rmse(paper, self.transform, self.N)
        if published is not None:
            metrics["published/test/rmse"] = published

        title = f"{model_name} on {self.transform}, N={self.N}"
        if recorder.history:
            recorder.write_figure("training_curve.png",
                                  figures.training_curves(pd.DataFrame(recorder.history), "step", title, log=True))
        metrics = {name: metrics[name] for name in [*self.metric_names(), *metrics] if name in metrics}  # in order
        recorder.write_text("results.md", self.results_markdown(metrics, factorized["permutation"], title, paper))
        return metrics

    def results_markdown(self, metrics: dict, permutation: str, title: str, paper: DictConfig | None) -> str:
        """Headline metrics, then one row per method (RMSE, seconds) beside the published RMSE."""
        headline = pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())})
        rows = [("gradient (Adam, best epoch)", metrics["test/rmse_adam"], metrics["train/seconds"])]
        if "test/rmse_polished" in metrics:
            rows.append((f"+ frozen permutations, {self.polish_steps} L-BFGS steps", metrics["test/rmse_polished"],
                         metrics["polish/seconds"]))
        rows.append((f"hierarchical factorization ({self.tree} tree, permutation {permutation})",
                     metrics["factorize/rmse"], metrics["factorize/seconds"]))
        methods = pd.DataFrame(rows, columns=["method", "RMSE", "seconds"])
        lines = [f"# {title}", "", headline.to_markdown(index=False, floatfmt=".4g"), "",
                 "## RMSE per method", "", methods.to_markdown(index=False, floatfmt=[".4g", ".3g", ".3g"]), ""]
        if "published/test/rmse" in metrics:
            lines += [f"Published RMSE: {metrics['published/test/rmse']:.2g} ({paper.source}): the best of "
                      "at least 20 Hyperband trials (random lr and seed), polished; this run is one trial "
                      f"(test/rmse {metrics['test/rmse']:.3g}).", ""]
        if paper is not None and paper.get("note"):
            lines += [f"Note: {paper.note}", ""]
        lines += ["The factorization is one butterfly after a fixed permutation (the identity or the bit reversal, "
                  "the better one): exact for Hadamard and the DFT, a projection for targets that need more "
                  "(BPP, BPBP).", "",
                  "RMSE = sqrt(mean square error of the matrix entries), complex entries as two real ones "
                  "(Dao et al.'s rmse.pkl convention): ||M - T||_F / N, or / (N sqrt 2) for the complex DFT.", ""]
        return "\n".join(lines)

    def metric_names(self) -> list[str]:
        """The metrics a run of this task reports (``published/test/rmse`` besides, when the paper has it)."""
        names = ["test/rmse", "test/rmse_adam", "test/rmse_polished", "factorize/rmse", "train/seconds",
                 "polish/seconds", "factorize/seconds"]
        return names if self.polish_steps else [name for name in names if "polish" not in name]

    def artifacts(self) -> dict[str, np.ndarray]:
        """The target matrix defines the problem."""
        return {"target.npy": self.exact.numpy()}
