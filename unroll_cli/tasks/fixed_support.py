"""The landscape of two-layer sparse matrix factorization with fixed supports, where it is tractable.

Le, Riccietti & Gribonval, "Spurious valleys, NP-hardness, and tractability of sparse matrix
factorization with fixed support", SIAM J. Matrix Anal. Appl. 2023: when the rank-one supports of
``(I, J)`` are pairwise disjoint or identical, their Algorithm 1 (one SVD per class,
:func:`unroll_cli.models.fixed_support.fixed_support_factorize`) gives the global optimum of
``min ||A - X Y||_F`` over ``supp(X) ⊆ I``, ``supp(Y) ⊆ J``, and the landscape has no spurious valley.
This task fits the same problem by gradient descent from the run's random start (the model
``fixed_support_factors``; Adam through the trainer, L-BFGS through ``+callbacks=polish``) and reports
how far above Algorithm 1's optimum the start ends: a sweep over seeds gives the fraction of starts
that do not reach the optimum and their excess error, beside Algorithm 1's error and time.

The problem: a Gaussian ``N x N`` target ``A`` (float64, from ``data.target_seed``) and supports
(``data.support``) of one of two tractable kinds: ``butterfly``, the root split of the balanced
butterfly tree (``X`` on the support of the last ``ceil(L/2)`` butterfly factors, ``Y`` on the first
``floor(L/2)``, ``L = log2 N``: every class a single index, as the hierarchical factorization splits);
or ``random``, ``data.classes`` disjoint rectangles on random rows and columns, each the rank-one
support of 1 to 3 identical indices (drawn from ``data.target_seed`` too). The input of the model is
the identity, its output its matrix ``X Y``; the loss ``||A - X Y||_F^2``.
"""
from __future__ import annotations

import time
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from unroll_cli.errors import ConfigError
from unroll_cli.models.butterfly_factorize import twiddle_to_dense
from unroll_cli.models.fixed_support import fixed_support_factorize
from unroll_cli.record.labels import model_title
from unroll_cli.record.report import Report, Table
from unroll_cli.schema import SEED_RANGE, constrained, register_schema
from unroll_cli.tasks.base import online_epoch
from unroll_cli.tasks.transforms import power_of_two

SUPPORTS = ("butterfly", "random")
RANDOM_CLASSES = 6  # data.support=random: rectangles when data.classes is null
RECTANGLE_TRIES = 1_000  # rejection-sampling draws of the random supports before data.classes is refused

Supports = tuple[torch.Tensor, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]  # (the identity, the target)


@register_schema("data", "fixed_support")
class FixedSupportConfig:
    """A Gaussian target and tractable supports (Le, Riccietti & Gribonval 2023)."""

    _target_: str = "unroll_cli.tasks.fixed_support.FixedSupportFactorization"
    support: str = constrained("butterfly", " or ".join(SUPPORTS), lambda v: v in SUPPORTS)
    N: int = constrained(16, "an integer >= 2 (a power of two for data.support=butterfly, >= 6 for random)",
                         lambda v: v >= 2)
    # data.support=random: the rectangles (null: RANDOM_CLASSES); refused with butterfly, which has none
    classes: Optional[int] = constrained(None, "null or an integer >= 1", lambda v: v is None or v >= 1)
    target_seed: int = constrained(0, *SEED_RANGE)  # draws the target and the random supports
    # a start whose relative error ends more than this above the optimum's did not reach the optimum
    stuck_tolerance: float = constrained(1e-6, "a number > 0", lambda v: v > 0, changeable=True)


def butterfly_split_supports(n: int) -> Supports:
    """Supports of the balanced butterfly tree's root split: the nonzeros of products of all-ones
    butterfly factors, the last ``ceil(L/2)`` for ``X`` and the first ``floor(L/2)`` for ``Y``."""
    depth = n.bit_length() - 1
    right_factors = depth // 2

    def support(factors: range) -> torch.Tensor:
        twiddle = torch.eye(2, dtype=torch.float64).repeat(depth, n // 2, 1, 1)
        twiddle[list(factors)] = 1.0
        return twiddle_to_dense(twiddle) != 0

    return support(range(right_factors, depth)), support(range(right_factors))


def random_disjoint_supports(n: int, classes: int, rng: np.random.Generator) -> Supports:
    """``classes`` disjoint rectangles (2 to ``n // 3`` random rows x as many random columns, rejection
    sampled), each the rank-one support of 1 to 3 indices, the indices shuffled. ValueError when
    ``RECTANGLE_TRIES`` draws do not place them all."""
    rects: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(RECTANGLE_TRIES):
        if len(rects) == classes:
            break
        rows = rng.choice(n, size=int(rng.integers(2, n // 3 + 1)), replace=False)
        cols = rng.choice(n, size=int(rng.integers(2, n // 3 + 1)), replace=False)
        if all(not (np.isin(rows, r).any() and np.isin(cols, c).any()) for r, c in rects):
            rects.append((rows, cols))
    if len(rects) < classes:
        raise ValueError(f"data.classes={classes}: {RECTANGLE_TRIES} random draws placed only {len(rects)} "
                         f"disjoint rectangles in a {n}x{n} matrix; take fewer classes or a larger data.N")
    members = [rect for rect in rects for _ in range(int(rng.integers(1, 4)))]
    order = rng.permutation(len(members))
    left = torch.zeros(n, len(members), dtype=torch.bool)
    right = torch.zeros(len(members), n, dtype=torch.bool)
    for k, idx in enumerate(order):
        left[members[idx][0], k] = True
        right[k, members[idx][1]] = True
    return left, right


def class_count(left: torch.Tensor, right: torch.Tensor) -> int:
    """The number of distinct nonempty rank-one supports (Algorithm 1's classes)."""
    keep = left.any(0) & right.any(1)
    return len(torch.unique(torch.cat([left.T, right], 1)[keep], dim=0))


class FixedSupportFactorization:
    """Fit ``A ~ X Y`` on fixed tractable supports from a random start; the excess over Algorithm 1."""

    kind = "factorization"
    model_protocol = {"dictionaries": "the two factors X and Y on their supports, for the report"}
    monitor, monitor_mode = "val/rel_error", "min"
    primary_metric = "test/excess"

    def __init__(self, support: str = "butterfly", N: int = 16, classes: int | None = None, target_seed: int = 0,
                 stuck_tolerance: float = 1e-6, seed: int = 0, device: str | torch.device = "cpu",
                 trainer: DictConfig | None = None):
        if support == "butterfly" and not power_of_two(N):
            raise ConfigError(f"data.N={N}: data.support=butterfly needs a power of two")
        if support == "butterfly" and classes is not None:
            raise ConfigError(f"data.classes={classes}: data.support=butterfly has its own classes (one per "
                              "index); data.classes sets the rectangles of data.support=random")
        if support == "random" and N < 6:
            raise ConfigError(f"data.N={N}: data.support=random needs N >= 6 (rectangles of 2 to N // 3 rows)")
        self.device, self.stuck_tolerance = torch.device(device), stuck_tolerance
        rng = np.random.default_rng(target_seed)
        self.exact = torch.from_numpy(rng.standard_normal((N, N)))
        self.left, self.right = (butterfly_split_supports(N) if support == "butterfly"
                                 else random_disjoint_supports(N, classes or RANDOM_CLASSES, rng))
        self.setting = (f"{support} supports, {N}x{N} target, rank {self.left.shape[1]}, "
                        f"{class_count(self.left, self.right)} classes")
        self.data_source = f"a Gaussian {N}x{N} target and {support} supports drawn by data.target_seed={target_seed}"
        self.target = self.exact.to(self.device)
        self.eye = torch.eye(N, dtype=torch.float64, device=self.device)
        self.batch_size = self.eval_batch_size = N
        self.steps_per_epoch = online_epoch(trainer)

    @staticmethod
    def memory_estimate(data: DictConfig, trainer: DictConfig) -> dict[str, int]:
        """Bytes of the ``N x N`` float64 arrays: target, identity, supports, factors, their gradients."""
        return {"data.N": 8 * 16 * data.N ** 2}

    def model_kwargs(self) -> dict:
        return {"left_support": self.left, "right_support": self.right}

    def train_batches(self) -> Iterator[Batch]:
        for _ in range(self.steps_per_epoch):
            yield self.full_batch()

    def full_batch(self) -> Batch:
        """The identity and the target: the whole problem at every step."""
        return self.eye, self.target

    def loss(self, outputs: torch.Tensor, batch: Batch, model: torch.nn.Module) -> torch.Tensor:
        """``||A - X Y||_F^2`` (the model maps the identity to its matrix)."""
        return (batch[1] - outputs).square().sum()

    def rel_error(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """``||A - X Y||_F / ||A||_F``, in float64 against the exact target."""
        product = x.detach().cpu().double() @ y.detach().cpu().double()
        return (torch.linalg.norm(self.exact - product) / torch.linalg.norm(self.exact)).item()

    def model_error(self, model: torch.nn.Module) -> float:
        """The relative error of the model's factors."""
        factors = model.dictionaries()
        return self.rel_error(factors["X"], factors["Y"])

    def validate(self, model: torch.nn.Module, depth: int | None = None) -> dict[str, float]:
        return {self.monitor: self.model_error(model)}

    def report(self, model: torch.nn.Module, model_name: str, paper: DictConfig | None, history: list[dict]) -> Report:
        """The run's relative error (``test/rel_error``), Algorithm 1's (``factorize/rel_error``) and its
        time, the excess (``test/excess``, the run's minus the optimum's) and whether it counts as not
        reaching the optimum (``test/stuck``, 1 or 0: its mean over seeds is the fraction of starts)."""
        fixed_support_factorize(self.exact, self.left, self.right)  # the first call loads LAPACK: not timed
        started = time.perf_counter()
        optimum = self.rel_error(*fixed_support_factorize(self.exact, self.left, self.right))
        seconds = time.perf_counter() - started
        error = self.model_error(model)
        train_seconds = float(sum(row.get("seconds", 0.0) for row in history))
        metrics = {"test/rel_error": error, "test/excess": error - optimum,
                   "test/stuck": float(error - optimum > self.stuck_tolerance), "train/seconds": train_seconds,
                   "factorize/rel_error": optimum, "factorize/seconds": seconds}
        methods = pd.DataFrame([("gradient, from this run's start", error, train_seconds),
                                ("Algorithm 1 (one SVD per class)", optimum, seconds)],
                               columns=["method", "relative error", "seconds"])
        return Report(f"{model_title(model_name, model)}: {self.setting}", metrics,
                      {"methods": Table(methods, None, "Relative error ||A - XY||_F / ||A||_F per method")},
                      curve=("epoch", True), notes=[
                          "Algorithm 1 of Le, Riccietti & Gribonval (SIMAX 2023) is the global optimum on these "
                          "supports; test/excess is this run's relative error minus it, and test/stuck is 1 when "
                          f"the excess is above data.stuck_tolerance={self.stuck_tolerance:g} (its mean over a "
                          "sweep of seeds is the fraction of starts that did not reach the optimum).",
                          "train/seconds is the gradient epochs' time; an L-BFGS phase's is polish/seconds."])

    def metric_names(self) -> list[str]:
        return ["test/rel_error", "test/excess", "test/stuck", "train/seconds", "factorize/rel_error",
                "factorize/seconds"]

    def artifacts(self) -> dict[str, np.ndarray]:
        """The target and the two supports define the problem."""
        return {"target.npy": self.exact.numpy(), "left_support.npy": self.left.numpy(),
                "right_support.npy": self.right.numpy()}

    def state_dict(self) -> dict:
        """Nothing random is drawn during training: every step sees the whole problem."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
