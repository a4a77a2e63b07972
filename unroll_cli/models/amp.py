"""AMP and learned AMP (LAMP) for ``y = A x (+ noise)``, batches as rows (``y`` (batch, m), ``A`` (m, n)).

Layer t (0-based), from ``x_0 = 0`` and ``v_{-1} = 0`` (Borgerding, Schniter & Rangan, "AMP-Inspired
Deep Networks for Sparse Linear Inverse Problems", IEEE TSP 2017; as the LISTA-CPSS / ALISTA code's
``models/LAMP.py`` and ``utils/tf.py: shrink_lamp`` compute it):

    b_t     = (n / m) * mean_i(|x_t,i| > 0)              (the Onsager term's weight, per sample)
    v_t     = y - A x_t + b_t v_{t-1}                    (the corrected residual)
    sigma_t = ||v_t|| / sqrt(m)                          (the residual's rms, per sample)
    x_{t+1} = soft(x_t + B_t v_t, max(lam_t sigma_t, 0))

* ``AMP``: ``B_t = A^T`` and one fixed multiplier ``lam_t = alpha`` (no parameters), a classical baseline;
  its ``lam`` sets only the ISTA / FISTA baselines beside it.
* ``LAMP``: learned ``B`` (n, m; one for every layer, or one per layer with ``tied=false``) and
  ``lam_t``; initialised as the authors' code, ``B = A^T / L`` (``L = 1.001 ||A||_2^2``) and
  ``lam_t = lam`` (0.4), so that it is not AMP at initialisation.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from unroll_cli.models.arguments import check_bool, check_number
from unroll_cli.models.lista import BaselineProblem, ClassicalModelConfig, UnrolledISTA
from unroll_cli.models.prox import soft_threshold
from unroll_cli.schema import constrained, register_schema

#: AMP's threshold multiplier ``alpha``: the minimax threshold of soft thresholding at sparsity 0.1
#: (Donoho, Maleki & Montanari, PNAS 2009: the alpha minimising the worst-case MSE
#: eps (1 + a^2) + (1 - eps) 2 ((1 + a^2) Phi(-a) - a phi(a)) at eps = p = 0.1 is 1.140), AMP's standard
#: tuning for Chen et al. 2018's Bernoulli(0.1) codes. On their problem (250 x 500 A drawn by
#: data.matrix_seed 0, 1, 2) its NMSE is their Fig. 5(a) AMP curve within 0.4, 1.2, 0.6 dB at every layer
#: (-30.3, -29.3, -29.9 dB after 16 layers against -30.5). The paper does not state its value; 0.4,
#: LAMP's initial lam, diverges; 0.8 and 1.5 end at -23.1 and -25.2 dB (seed 0). Another p: set
#: model.alpha to that sparsity's minimax threshold.
AMP_ALPHA = 1.14


@register_schema("model", "amp")
class AMPModelConfig(ClassicalModelConfig):
    """AMP: no learning; ``alpha`` multiplies the residual's rms; ``lam`` only sets the baselines beside it
    (an experiment's ``model.lam``, ISTA's threshold scale, leaves AMP's threshold alone)."""

    alpha: float = constrained(AMP_ALPHA, "a number >= 0", lambda v: v >= 0)


@register_schema("model", "lamp")
class LAMPModelConfig(ClassicalModelConfig):
    """LAMP: ``lam`` is the initial multiplier of every layer (the authors' 0.4); ``tied``: one B."""

    tied: bool = True


class AMPRecursion(UnrolledISTA):
    """The loop above; subclasses give layer ``t``'s ``B_t`` and ``lam_t`` (``_weights``). ``thresholds()``
    gives the multipliers ``lam_t`` of the residual's rms (the threshold is ``lam_t sigma_t``)."""

    def _weights(self, t: int) -> tuple[Tensor, Tensor | float]:
        raise NotImplementedError

    def _theta(self, t):
        return self._weights(t)[1]

    def forward(self, y: Tensor, depth: int | None = None) -> list[Tensor]:
        """Estimates after layers 1..depth (default: all ``layers``)."""
        depth = self._checked_depth(y, depth)
        m, n = self.A.shape
        x = y.new_zeros(y.shape[0], n)
        v = torch.zeros_like(y)
        estimates = []
        for t in range(depth):
            B, lam = self._weights(t)
            onsager = (n / m) * (x != 0).to(y.dtype).mean(dim=1, keepdim=True)
            v = y - x @ self.A.t() + onsager * v
            # ||v|| / sqrt(m): the norm's gradient is 0 at v = 0 (a zero code's y), where sqrt(sum v^2)'s is NaN
            sigma = torch.linalg.vector_norm(v, dim=1, keepdim=True) / m ** 0.5
            x = soft_threshold(x + v @ B.t(), (lam * sigma).clamp_min(0))
            estimates.append(x)
        return estimates


class LAMP(AMPRecursion):
    """Learned AMP (Borgerding et al. 2017), initialised as the LISTA-CPSS code: ``B = A^T / L``,
    ``lam_t = lam``; ``B`` shared by every layer (``tied``) or one ``B_t`` per layer."""

    def __init__(self, A: Tensor, layers: int, lam: float, tied: bool = True):
        super().__init__(A, layers, lam)
        self.tied = check_bool("tied", tied)
        B = (self.A.double().t() / self.L).to(self.A.dtype)
        self.B = nn.Parameter(B) if tied else nn.ParameterList(nn.Parameter(B.clone()) for _ in range(self.layers))
        self.lam_t = nn.ParameterList(nn.Parameter(torch.tensor(self.lam, dtype=self.A.dtype, device=self.A.device))
                                      for _ in range(self.layers))

    def _weights(self, t):
        return (self.B if self.tied else self.B[t]), self.lam_t[t]

    def layer_parameters(self, t):
        self._check_layer(t)
        own_b = [self.B] if self.tied and t == 0 else ([] if self.tied else [self.B[t]])
        return own_b + [self.lam_t[t]]


class AMP(AMPRecursion):
    """AMP (Donoho, Maleki & Montanari 2009) in Borgerding et al.'s form: ``B_t = A^T`` and one fixed
    multiplier ``alpha`` for every layer; no parameters. ``lam`` is kept for the baselines beside it."""

    def __init__(self, A: Tensor, layers: int, lam: float = 0.4, alpha: float = AMP_ALPHA):
        super().__init__(A, layers, lam)
        self.alpha = check_number("alpha", alpha, positive=False)

    def _weights(self, t):
        return self.A.t(), self.alpha

    @classmethod
    def from_problem(cls, problem: BaselineProblem) -> AMP:
        """AMP beside a model keeps its own ``alpha`` (:data:`AMP_ALPHA`): the model's lam scales ISTA's
        threshold ``lam / L``, a different quantity."""
        return cls(A=problem.A, layers=problem.layers, lam=problem.lam)
