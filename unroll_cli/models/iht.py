"""Iterative hard thresholding (IHT) and its learned form (LIHT) for ``y = A x (+ noise)``, batches as rows.

* ``IHT`` (Blumensath & Davies, "Iterative thresholding for sparse approximations", J. Fourier Anal.
  Appl. 2008): ``x <- H_s(x + mu A^T (y - A x))``, ``H_s`` keeping the ``s`` entries of largest
  magnitude of each sample; ``mu = 1 / L``, ``L = 1.001 ||A||_2^2`` (their step 1 for ``||A||_2 < 1``,
  scaled to this A as ISTA's step is). No parameters: a classical baseline.
* ``LIHT`` (as the LISTA-CPSS code's ``models/LIHT.py`` and ``utils/tf.py: hard_shrink``):
  ``x_{t+1} = hard(W_t x_t + B y, theta_t)``, ``hard(r, tau) = r 1{|r| > tau}``, from ``x_0 = 0``;
  initialised as the authors: ``B = A^T`` (one for every layer), ``W = I - A^T A`` (tied, or one per
  layer 1..T-1 with ``tied=false``: layer 0 sees ``x_0 = 0``), ``theta_t = sqrt(lam)``. The hard
  threshold's gradient with respect to ``theta_t`` is zero (as in TF: ``relu(sign(|r| - tau)) r``), so
  training moves ``W`` and ``B`` only and the thresholds stay at ``sqrt(lam)``.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn

from unroll_cli.models.arguments import check_bool
from unroll_cli.models.lista import ISTA, BaselineProblem, ClassicalModelConfig, UnrolledISTA, UnfoldedLayer
from unroll_cli.models.prox import hard_threshold
from unroll_cli.schema import constrained, register_schema


@register_schema("model", "iht")
class IHTModelConfig(ClassicalModelConfig):
    """IHT: ``support`` is the fraction of the n entries kept, ``s = round(support n)`` (at least 1;
    0.1: Chen et al.'s codes, ``data.p``); ``lam`` only sets the baselines run beside it."""

    support: float = constrained(0.1, "a fraction in (0, 1]", lambda v: 0 < v <= 1)


@register_schema("model", "liht")
class LIHTModelConfig(ClassicalModelConfig):
    """LIHT: ``lam`` sets the initial thresholds ``sqrt(lam)``; ``tied``: one W for every layer."""

    tied: bool = True


def keep_largest(x: Tensor, s: int) -> Tensor:
    """``H_s``: each row's ``s`` entries of largest magnitude, the others zero."""
    index = x.abs().topk(s, dim=1).indices
    return torch.zeros_like(x).scatter_(1, index, x.gather(1, index))


def support_size(fraction: float, n: int) -> int:
    """IHT's ``s``: ``round(fraction n)``, at least 1."""
    return max(1, round(fraction * n))


class IHT(ISTA):
    """IHT keeping ``s = round(support n)`` entries: ISTA's gradient step ``1 / L`` followed by ``H_s``."""

    def __init__(self, A: Tensor, layers: int, support: float = 0.1, lam: float = 0.4):
        super().__init__(A, layers, lam)
        if isinstance(support, bool) or not isinstance(support, Real) or not 0 < support <= 1:
            raise ValueError(f"support must be a fraction in (0, 1], got {support!r}")
        self.sparsity = support_size(support, self.A.shape[1])

    def _shrink(self, t, z):
        return keep_largest(z, self.sparsity)

    def thresholds(self) -> None:
        """None: ``H_s`` keeps a number of entries, it has no threshold."""
        return None

    @classmethod
    def from_problem(cls, problem: BaselineProblem) -> IHT:
        """IHT beside a model keeps a code's expected number of nonzeros, ``s = round(p n)``."""
        return cls(A=problem.A, layers=problem.layers, support=problem.p, lam=problem.lam)


class LIHT(UnrolledISTA):
    """Learned IHT, as the LISTA-CPSS code: ``B = A^T``, ``W = I - A^T A``, ``theta_t = sqrt(lam)``."""

    def __init__(self, A: Tensor, layers: int, lam: float, tied: bool = True):
        super().__init__(A, layers, lam)
        self.tied = check_bool("tied", tied)
        A64 = self.A.double()
        W = (torch.eye(A64.shape[1], dtype=torch.float64, device=A64.device) - A64.t() @ A64).to(self.A.dtype)
        self.B = nn.Parameter(self.A.t().clone())
        self.W = nn.Parameter(W) if tied else nn.ParameterList(nn.Parameter(W.clone()) for _ in range(self.layers - 1))
        self.theta = nn.ParameterList(nn.Parameter(torch.tensor(math.sqrt(self.lam), dtype=self.A.dtype,
                                                                device=self.A.device)) for _ in range(self.layers))

    def _W(self, t: int) -> Tensor:
        """The W of layer ``t`` >= 1 (the one multiplying ``x_t``)."""
        return self.W if self.tied else self.W[t - 1]

    def _prepare(self, y):
        return y @ self.B.t()

    def _affine(self, t, v, By):
        return By if v is None else torch.addmm(By, v, self._W(t).t())

    def _shrink(self, t, z):
        return hard_threshold(z, self.theta[t])

    def layer_parameters(self, t):
        self._check_layer(t)
        if t == 0:
            return [self.B] + ([self.W] if self.tied else []) + [self.theta[0]]
        return ([] if self.tied else [self.W[t - 1]]) + [self.theta[t]]

    def unfolded_weights(self) -> list[UnfoldedLayer]:
        """Each layer's ``W_t`` (None for the first layer of untied W: it sees ``x_0 = 0``) and ``B``."""
        return [UnfoldedLayer(None if t == 0 and not self.tied else self._W(t).detach(), self.B.detach())
                for t in range(self.layers)]
