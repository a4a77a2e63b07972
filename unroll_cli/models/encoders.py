"""The trainable baseline encoders of Gregor & LeCun (ICML 2010, eq. 7): one layer from the input to
the code, ``Z = D tanh(W_e y)`` (D diagonal) and ``Z = D (tanh(W_e y + u) + tanh(W_e y - u))``, a
smooth shrinkage. The third baseline, ``Z = h_theta(W_e y)``, is LISTA with one layer
(``model=shrink_encoder``).

``W_e`` starts at ``A^T``, ``D`` at ones and ``u`` at ``lam`` (every unit), so that the double tanh
starts near a shrinkage of threshold ``lam`` on ``A^T y``.
"""
from __future__ import annotations

from numbers import Real

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from unroll_cli.schema import constrained, register_schema

NONLINEARITIES = ("tanh", "double_tanh")


@register_schema("model", "encoder")
class EncoderConfig:
    """A one-layer baseline encoder: its non-linearity and the starting offset ``lam`` of the double tanh."""

    _target_: str = "unroll_cli.models.encoders.BaselineEncoder"
    name: str = MISSING
    task: str = "sparse_coding"
    nonlinearity: str = constrained("tanh", "tanh or double_tanh", lambda v: v in NONLINEARITIES)
    lam: float = constrained(0.5, "a number >= 0", lambda v: v >= 0)


class BaselineEncoder(nn.Module):
    """``Z = D tanh(W_e y)`` or ``Z = D (tanh(W_e y + u) + tanh(W_e y - u))`` (module docstring)."""

    layers = 1

    def __init__(self, A: Tensor, nonlinearity: str = "tanh", lam: float = 0.5):
        super().__init__()
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {', '.join(NONLINEARITIES)}, got {nonlinearity!r}")
        if isinstance(lam, bool) or not isinstance(lam, Real) or not lam >= 0:
            raise ValueError(f"lam must be a real number >= 0, got {lam!r}")
        n = A.shape[1]
        self.nonlinearity, self.lam = nonlinearity, float(lam)
        self.W_e = nn.Parameter(A.detach().T.clone())
        self.D = nn.Parameter(torch.ones(n, dtype=A.dtype, device=A.device))
        if nonlinearity == "double_tanh":
            self.u = nn.Parameter(torch.full((n,), self.lam, dtype=A.dtype, device=A.device))

    def forward(self, y: Tensor, depth: int | None = None) -> list[Tensor]:
        """The code, as a list of one layer's estimate (the tasks' per-layer convention)."""
        if depth not in (None, 1):
            raise ValueError(f"depth must be 1 (a one-layer encoder), got {depth!r}")
        pre = y @ self.W_e.T
        if self.nonlinearity == "tanh":
            return [self.D * torch.tanh(pre)]
        return [self.D * (torch.tanh(pre + self.u) + torch.tanh(pre - self.u))]
