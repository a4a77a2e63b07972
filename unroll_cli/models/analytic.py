"""Analytic weight of ALISTA (Liu, Chen, Wang & Yin, ICLR 2019, eq. 16).

``W = argmin ||W^T A||_F^2  s.t.  diag(W^T A) = 1``: with the diagonal fixed this
minimises the off-diagonal entries, i.e. the generalised mutual coherence
of W and A.  The problem separates over columns, ``min w^T (A A^T) w`` s.t.
``a_j^T w = 1``, with solution ``w_j = G^+ a_j / (a_j^T G^+ a_j)``, ``G = A A^T``.
Because ``G^+ A = (A^+)^T``, all columns come from one pseudo-inverse of A:
``W = (A^+)^T`` with column j divided by ``(A^+ A)_jj``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def analytic_weight(A: Tensor) -> Tensor:
    """ALISTA's analytic weight W (m, n) for A (m, n), computed in float64."""
    if not isinstance(A, Tensor) or A.dim() != 2 or not A.is_floating_point():
        raise ValueError("A must be a 2-D floating-point tensor (m, n)")
    A64 = A.detach().double()
    W = torch.linalg.pinv(A64).t()
    diag = (W * A64).sum(0)  # diag(W^T A) before scaling = (A^+ A)_jj
    if bool((diag <= 1e-12).any()):
        raise ValueError("A has a (numerically) zero column: diag(W^T A) = 1 is infeasible")
    return (W / diag).to(A.dtype)


def mutual_coherence(W: Tensor, A: Tensor) -> float:
    """Generalised mutual coherence ``max_{i != j} |w_i^T a_j|`` (ALISTA, Liu et al. 2019)."""
    G = (W.detach().double().t() @ A.detach().double()).abs()
    G.fill_diagonal_(0.0)
    return G.max().item()
