"""Orthogonal matching pursuit (OMP; Pati, Rezaiifar & Krishnaprasad 1993; Tropp 2004), one atom per
layer, for ``y = A x (+ noise)`` with batches as rows.

Layer t adds to each sample's support the atom most correlated with its residual,
``argmax_i |a_i^T r| / ||a_i||`` over the atoms not yet chosen, then refits the code by least squares on
the support, ``x_S = argmin ||y - A_S x_S||``, and ``r = y - A x``. After ``s`` layers OMP has recovered
every ``s``-sparse ``x`` of a noiseless ``y`` exactly when ``s < (1 + 1/mu) / 2``, ``mu`` the mutual
coherence of A (Tropp 2004, Theorem A). No parameters: a classical baseline.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from unroll_cli.models.lista import BaselineProblem, ClassicalModelConfig
from unroll_cli.models.arguments import check_int
from unroll_cli.schema import register_schema


@register_schema("model", "omp")
class OMPModelConfig(ClassicalModelConfig):
    """OMP: ``layers`` atoms; ``lam`` only sets the baselines run beside it."""


class OMP(nn.Module):
    """OMP with ``layers`` greedy steps; the estimate after each step is one layer's."""

    def __init__(self, A: Tensor, layers: int, lam: float = 0.4):
        super().__init__()
        if not isinstance(A, Tensor) or A.dim() != 2 or not A.is_floating_point() or A.numel() == 0:
            raise ValueError("A must be a non-empty 2-D floating-point tensor (m, n)")
        self.layers = check_int("layers", layers, 1)
        if self.layers > A.shape[1]:
            raise ValueError(f"layers must be at most n = {A.shape[1]} (one new atom per layer), got {layers}")
        self.lam = float(lam)
        self.register_buffer("A", A.detach().clone())

    def forward(self, y: Tensor, depth: int | None = None) -> list[Tensor]:
        """Estimates after 1..depth atoms (default: all ``layers``)."""
        depth = self.layers if depth is None else check_int("depth", depth, 1)
        if depth > self.layers or y.dim() != 2 or y.shape[1] != self.A.shape[0]:
            raise ValueError(f"need y (batch, {self.A.shape[0]}) and depth <= {self.layers}, got "
                             f"{tuple(y.shape)} and {depth}")
        atoms = self.A.t()  # (n, m)
        norms = atoms.norm(dim=1)
        residual, support, estimates = y, y.new_zeros(y.shape[0], 0, dtype=torch.long), []
        for _ in range(depth):
            score = (residual @ self.A).abs() / norms
            score.scatter_(1, support, -1.0)  # never an atom twice
            support = torch.cat([support, score.argmax(dim=1, keepdim=True)], dim=1)
            chosen = atoms[support].transpose(1, 2)  # (batch, m, t)
            coefficients = torch.linalg.lstsq(chosen, y.unsqueeze(2)).solution.squeeze(2)
            x = y.new_zeros(y.shape[0], self.A.shape[1]).scatter_(1, support, coefficients)
            residual = y - x @ self.A.t()
            estimates.append(x)
        return estimates

    def dictionaries(self) -> dict[str, Tensor]:
        """The measurement matrix ``A`` (m, n), whose columns are the atoms."""
        return {"A": self.A}

    @classmethod
    def from_problem(cls, problem: BaselineProblem) -> OMP:
        """OMP beside a model: one atom per layer of the model."""
        return cls(A=problem.A, layers=problem.layers, lam=problem.lam)
