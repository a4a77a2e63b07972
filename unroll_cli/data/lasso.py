"""The lasso ``min_z 0.5 ||x - W z||^2 + alpha ||z||_1`` for rows x, and the dictionary W learned by
its optimal codes (Gregor & LeCun, ICML 2010, Sec. 4: "trained by online SGD: the optimal code is
computed with CoD, then one gradient step on W_d, then columns renormalised", a 1/t step).

The optimum comes from CoD (:func:`unroll_cli.models.coordinate_descent.solve_lasso_cod`);
:func:`solve_lasso_fista` is the independent check (Beck & Teboulle 2009, to convergence).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from unroll_cli.data.dictionary_learning import unit_columns
from unroll_cli.models.coordinate_descent import solve_lasso_cod
from unroll_cli.models.prox import soft_threshold


def lasso_objective(x: Tensor, W: Tensor, z: Tensor, alpha: float) -> Tensor:
    """``0.5 ||x - W z||^2 + alpha ||z||_1`` of every row."""
    return 0.5 * (x - z @ W.T).pow(2).sum(dim=1) + alpha * z.abs().sum(dim=1)


@torch.no_grad()
def solve_lasso_fista(x: Tensor, W: Tensor, alpha: float, tol: float = 1e-12,
                      max_steps: int = 200_000) -> Tensor:
    """The lasso optimum by FISTA with step ``1/||W||^2``, stopped when no entry moves more than ``tol``."""
    L = torch.linalg.matrix_norm(W.double(), ord=2).item() ** 2
    W = W.to(x.dtype)
    z = v = torch.zeros(x.shape[0], W.shape[1], dtype=x.dtype, device=x.device)
    t = 1.0
    for _ in range(max_steps):
        z_next = soft_threshold(v + (x - v @ W.T) @ W / L, alpha / L)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        v = z_next + (t - 1) / t_next * (z_next - z)
        done = (z_next - z).abs().max() <= tol
        z, t = z_next, t_next
        if done:
            break
    return z


@torch.no_grad()
def learn_dictionary(draw: Callable[[int], Tensor], dim: int, atoms: int, alpha: float, steps: int,
                     batch: int, lr: float, decay_steps: float, gen: torch.Generator, tol: float) -> Tensor:
    """The paper's online dictionary learning, in float64: W (dim, atoms) from unit Gaussian columns
    (``gen``); each step draws ``batch`` patches (``draw(count)``), codes them by CoD to ``tol``, steps
    W by the mean gradient of 0.5 ||x - W z||^2 with the rate ``lr / (1 + t / decay_steps)`` (t from 0),
    and renormalises its columns."""
    W = unit_columns(torch.randn(dim, atoms, generator=gen, dtype=torch.float64))
    for t in range(steps):
        x = draw(batch).double()
        z, _ = solve_lasso_cod(x, W, alpha, tol)
        W = unit_columns(W + lr / (1 + t / decay_steps) * (x - z @ W.T).T @ z / batch)
    return W
