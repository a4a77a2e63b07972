"""Coordinate descent for the lasso, classical (CoD) and learned (LCoD), Gregor & LeCun, ICML 2010,
Algorithms 2 and 5, batched: one coordinate per sample per step, vectorised over the batch.

For ``min_z 0.5 ||y - A z||^2 + lam ||z||_1`` with unit-norm columns of ``A`` (m, n):
``B = W_e y``, ``Z = 0``; each step ``Zbar = h_theta(B)``, ``k = argmax |Z - Zbar|`` (per sample),
``B += S[:, k] (Zbar_k - Z_k)``, ``Z_k = Zbar_k``; the output is ``h_theta(B)``. CoD has
``W_e = A^T``, ``S = I - A^T A``, ``theta = lam`` fixed; LCoD learns the three from those values (the
gradient flows through the selected coordinates; the argmax itself has none).

Layer ``t`` (1-based) is the output ``h_theta(B)`` after ``t - 1`` coordinate steps, so layer 1 is the
shrinkage encoder ``h_theta(W_e y)`` and the paper's "k iterations" are layer ``k + 1``, as for LISTA.
:func:`solve_lasso_cod` runs the same step to convergence (the lasso optimum, the targets of
``data=image_patches``).
"""
from __future__ import annotations

from numbers import Integral, Real

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from unroll_cli.models.prox import soft_threshold
from unroll_cli.schema import constrained, register_schema

#: how far a column norm of A may be from 1 (CoD's coordinate update assumes unit columns)
UNIT_TOLERANCE = 1e-4


@register_schema("model", "coordinate_descent")
class CoordinateDescentConfig:
    """CoD / LCoD: the number of outputs (``layers``, ``layers - 1`` coordinate steps) and the lasso's lam."""

    _target_: str = MISSING
    name: str = MISSING
    task: str = "sparse_coding"
    layers: int = constrained(16, "an integer >= 1", lambda v: v >= 1)
    lam: float = constrained(0.5, "a number >= 0", lambda v: v >= 0)


def check_unit_columns(A: Tensor) -> None:
    """ValueError unless every column of ``A`` has unit norm (CoD's coordinate minimiser needs it)."""
    norms = torch.linalg.vector_norm(A.detach().double(), dim=0)
    worst = (norms - 1).abs().max().item()
    if worst > UNIT_TOLERANCE:
        raise ValueError(f"coordinate descent needs unit-norm columns of A; a column norm differs from 1 by "
                         f"{worst:.3g} (synthetic_sc: data.col_normalized=true)")


def cod_step(B: Tensor, Z: Tensor, S: Tensor, theta: Tensor | float) -> tuple[Tensor, Tensor]:
    """One coordinate step of every sample (rows of ``B``, ``Z``): the coordinate whose shrinkage moves it
    most is set to it, and ``B`` follows through column ``k`` of ``S``; out of place (autograd)."""
    Zbar = soft_threshold(B, theta)
    k = (Z - Zbar).abs().argmax(dim=1, keepdim=True)  # (batch, 1)
    change = Zbar.gather(1, k) - Z.gather(1, k)
    B = B + change * S.T.index_select(0, k.squeeze(1))  # row k of S^T = column k of S
    Z = Z.scatter(1, k, Zbar.gather(1, k))
    return B, Z


@torch.no_grad()
def solve_lasso_cod(y: Tensor, A: Tensor, lam: float, tol: float = 1e-10,
                    max_steps: int = 100_000) -> tuple[Tensor, int]:
    """The lasso optimum of each row of ``y`` by CoD (Algorithm 2) in ``y``'s dtype, stopped when every
    sample's largest coordinate change ``max |Z - h(B)|`` is below ``tol``; returns it and the steps
    taken (``max_steps`` reached: the last iterate)."""
    check_unit_columns(A)
    A = A.to(y.dtype)
    S = torch.eye(A.shape[1], dtype=y.dtype, device=y.device) - A.T @ A
    B, Z = y @ A, torch.zeros(y.shape[0], A.shape[1], dtype=y.dtype, device=y.device)
    steps = 0
    while steps < max_steps:
        if (Z - soft_threshold(B, lam)).abs().max() <= tol:  # a read-back every 50 steps
            break
        for _ in range(min(50, max_steps - steps)):
            B, Z = cod_step(B, Z, S, lam)
            steps += 1
    return soft_threshold(B, lam), steps


class CoordinateDescent(nn.Module):
    """CoD with ``layers - 1`` steps (module docstring): no parameters, the classical baseline."""

    learned = False

    def __init__(self, A: Tensor, layers: int, lam: float):
        super().__init__()
        if isinstance(layers, bool) or not isinstance(layers, Integral) or layers < 1:
            raise ValueError(f"layers must be an integer >= 1, got {layers!r}")
        if isinstance(lam, bool) or not isinstance(lam, Real) or not lam >= 0:
            raise ValueError(f"lam must be a real number >= 0, got {lam!r}")
        check_unit_columns(A)
        self.layers, self.lam = int(layers), float(lam)
        self.register_buffer("A", A.detach().clone())
        n = A.shape[1]
        values = {"W_e": A.detach().T.clone(), "S": torch.eye(n, dtype=A.dtype, device=A.device) - A.detach().T @ A,
                  "theta": torch.full((n,), self.lam, dtype=A.dtype, device=A.device)}
        for name, value in values.items():
            if self.learned:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def forward(self, y: Tensor, depth: int | None = None) -> list[Tensor]:
        """The outputs ``h_theta(B)`` after 0, 1, ..., ``depth - 1`` coordinate steps."""
        depth = self.layers if depth is None else depth
        if isinstance(depth, bool) or not isinstance(depth, Integral) or not 1 <= depth <= self.layers:
            raise ValueError(f"depth must be an integer in [1, {self.layers}], got {depth!r}")
        B = y @ self.W_e.T
        Z = torch.zeros_like(B)
        estimates = [soft_threshold(B, self.theta)]
        for _ in range(depth - 1):
            B, Z = cod_step(B, Z, self.S, self.theta)
            estimates.append(soft_threshold(B, self.theta))
        return estimates

    def thresholds(self) -> Tensor:
        """The threshold (the mean over the units) of every layer, shared by all of them."""
        return self.theta.detach().mean().repeat(self.layers)

    def dictionaries(self) -> dict[str, Tensor]:
        return {"A": self.A}


class LCoD(CoordinateDescent):
    """Learned coordinate descent (Algorithm 5): ``W_e``, ``S`` and the threshold vector ``theta``
    trained, started at CoD's values (so an untrained LCoD is CoD)."""

    learned = True
