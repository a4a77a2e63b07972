"""Thresholding (proximal) operators shared by every unrolled model.

All functions work elementwise on tensors of any shape; thresholds may be Python
numbers or tensors broadcastable against ``x`` (e.g. one learnable 0-d tensor
per layer, or one threshold per coordinate).

* ``soft_threshold``: proximal map of ``theta*||x||_1`` (ISTA, Daubechies et al.
  2004; LISTA, Gregor & LeCun 2010).
* ``nonneg_soft_threshold``: prox of ``theta*||x||_1`` plus ``x >= 0`` (ReLU(x-theta),
  ML-ISTA, Sulam et al. 2020).
* ``hard_threshold``: prox of the l0 penalty (LIHT).
* ``block_soft_threshold``: prox of the group-lasso penalty ``lam*sum_g ||x_g||_2``.
* ``group_soft_threshold``: the same over consecutive groups of ``group_size`` entries, and its
  one-sided ("group-sparse ReLU") variant (Theodosis et al., arXiv 2102.07003; ICASSP 2023).
* ``support_selection_threshold``: the support-selection shrinkage ``shrink_ss``
  of LISTA-SS / LISTA-CPSS (Chen, Liu, Wang & Yin, NeurIPS 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Non-negative IEEE floats compare like their bit patterns read as signed
# integers of the same width, and integer top-k is faster than float top-k
# (no NaN-aware comparator) on CPU.
_SAME_WIDTH_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def _host_scalar(theta):
    """theta as a Python float when that costs no device sync (and no graph break under
    ``torch.compile``), else None."""
    if not isinstance(theta, Tensor):
        return theta
    if theta.numel() == 1 and theta.device.type == "cpu" and not torch.compiler.is_compiling():
        return theta.item()
    return None


class _Shrink(torch.autograd.Function):
    """out = x - shrink * sign(x) * min(|x|, theta), shrink in {0, 1} (no gradient).

    With ``shrink`` None (all ones) this is ``sign(x) * max(|x| - theta, 0)`` for
    any sign of theta; entries with ``shrink == 0`` pass through unchanged.  The
    backward pass uses only the output: d out/dx = [out != 0] and
    d out/dtheta = -shrink * sign(out), so no extra tensor is saved.

    Speed (this sits in every layer): a non-negative threshold known on the host
    takes one fused kernel (``softshrink``) or ``clamp`` + ``addcmul``; a scalar
    threshold's gradient is one ``dot``.
    """

    @staticmethod
    def forward(ctx, x, theta, shrink):
        host = _host_scalar(theta)
        if host is not None and host >= 0:
            if shrink is None:
                out = F.softshrink(x, host)
            else:
                out = torch.addcmul(x, shrink, x.clamp(-host, host), value=-1)
        else:
            amount = x.abs().clamp_max_(theta).mul_(x.sign())
            if shrink is not None:
                amount.mul_(shrink)
            out = torch.sub(x, amount, out=amount)
        ctx.theta_shape = theta.shape if isinstance(theta, Tensor) else None
        ctx.save_for_backward(out, shrink)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, shrink = ctx.saved_tensors
        sign = out.sign()
        grad_theta = None
        if ctx.needs_input_grad[1]:
            weight = sign if shrink is None else sign * shrink
            if len(ctx.theta_shape) == 0:
                grad_theta = -torch.dot(grad.reshape(-1), weight.reshape(-1))
            else:
                grad_theta = -(grad * weight).sum_to_size(ctx.theta_shape)
        grad_x = grad * sign.abs_() if ctx.needs_input_grad[0] else None
        return grad_x, grad_theta, None


def _as_bound(theta, x: Tensor):
    """A threshold usable by ``clamp_max``: Python numbers stay numbers."""
    if isinstance(theta, Tensor):
        return theta.to(dtype=x.dtype)
    return float(theta)


def soft_threshold(x: Tensor, theta) -> Tensor:
    """Soft thresholding ``sign(x) * max(|x| - theta, 0)``.

    Differentiable in ``x`` and in a tensor ``theta`` (with the a.e. derivatives
    ``[|x| > theta]`` and ``-sign(x) [|x| > theta]``).
    """
    return _Shrink.apply(x, _as_bound(theta, x), None)


def nonneg_soft_threshold(x: Tensor, theta) -> Tensor:
    """Non-negative soft thresholding ``max(x - theta, 0)``."""
    return torch.relu(x - theta)


def hard_threshold(x: Tensor, theta) -> Tensor:
    """Hard thresholding ``x * [|x| > theta]`` (no gradient to ``theta``)."""
    return x * (x.abs() > theta).to(x.dtype)


def block_soft_threshold(x: Tensor, lam, dim=-1) -> Tensor:
    """Group soft thresholding ``(1 - lam / ||x_g||_2)_+ x_g``, groups along ``dim``.

    ``dim`` is an int or a tuple of ints; a group with ``x_g = 0`` maps to 0 with
    a finite (zero) gradient.
    """
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    tiny = torch.finfo(x.dtype).tiny
    return x * (torch.relu(norm - lam) / norm.clamp_min(tiny))


def group_soft_threshold(x: Tensor, threshold, group_size: int, dim: int = 1,
                         one_sided: bool = False) -> Tensor:
    """Block soft threshold over consecutive groups of ``group_size`` entries along ``dim``:
    ``x_g <- (1 - threshold / ||x_g||_2)_+ x_g``, the prox of ``threshold * sum_g ||x_g||_2``.

    ``one_sided``: the group-sparse ReLU of the authors' code (Theodosis & Ba, ICASSP 2023),
    ``(1 - threshold / ||x_g||_2)_+ ReLU(x_g)`` with the norm of the pre-ReLU group. An all-zero
    group maps to 0 with a finite (zero) gradient.
    """
    dim = dim % x.dim()
    if x.shape[dim] % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {x.shape[dim]} entries of dim {dim}")
    groups = x.unflatten(dim, (-1, group_size))
    out = block_soft_threshold(groups, threshold, dim + 1)
    if one_sided:  # (1 - t/||x_g||)_+ ReLU(x_g) = (1 - t/||x_g||)_+ x_g [x_g > 0]
        out = out * (groups > 0).to(out.dtype)
    return out.flatten(dim, dim + 1)


def selection_count(n: int, percent: float) -> int:
    """Number of entries making ``percent`` % of ``n``: round(percent*n/100), halves up."""
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent must lie in [0, 100], got {percent}")
    return int(percent * n / 100.0 + 0.5)


def support_selection_threshold(x: Tensor, theta, percent: float) -> Tensor:
    """Support-selection shrinkage ``shrink_ss`` (Chen et al. 2018, LISTA-SS/CPSS).

    Along the last dimension of ``x`` (one row per sample), let
    ``k = selection_count(n, percent)`` (``round(percent*n/100)``, halves up; e.g.
    n=500 and 1.2 % gives k=6) and ``v`` the (k+1)-th largest ``|x|`` of the row.
    Entries with ``|x| > max(v, theta)`` -- among the k largest magnitudes and above
    the threshold -- pass through unchanged; all others are soft-thresholded.  As
    in the authors' ``abs > percentile`` rule, entries tied with ``v`` are
    thresholded.  The selection is a stop-gradient mask: gradients flow through
    the values only.  ``percent == 0`` is plain soft thresholding.

    On the CPU with one threshold >= 0 for all entries, a compiled kernel does it in two passes
    per row (``select_cpu``); otherwise (GPU, per-coordinate thresholds, inside ``torch.compile``)
    a top-k of every row.
    """
    n = x.shape[-1]
    k = selection_count(n, percent)
    theta = _as_bound(theta, x)
    if k == 0:
        return _Shrink.apply(x, theta, None)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        host = _host_scalar(theta)
        if host is not None and host >= 0:
            return _SelectShrink.apply(x, theta, k)
    return _Shrink.apply(x, theta, topk_shrink_mask(x, theta, k))


class _SelectShrink(_Shrink):
    """shrink_ss by the compiled CPU kernel; the backward pass is ``_Shrink``'s (same saved tensors)."""

    @staticmethod
    def forward(ctx, x, theta, k):
        # numba is imported on first use: runs without support selection do not pay its start-up.
        from unroll_cli.models.select_cpu import shrink_ss

        out, shrink = shrink_ss(x, _host_scalar(theta), k)
        ctx.theta_shape = theta.shape if isinstance(theta, Tensor) else None
        ctx.save_for_backward(out, shrink)
        return out


def topk_shrink_mask(x: Tensor, theta, k: int) -> Tensor:
    """``shrink`` of shrink_ss with a top-k of every row: 1.0 where ``|x| <= max(v, theta)`` (v the
    (k+1)-th largest ``|x|`` of the row), else 0.0 -- a float mask, faster than bools."""
    with torch.no_grad():
        mag = x.abs()
        if k >= x.shape[-1]:
            level = theta
        else:
            keys = mag.view(_SAME_WIDTH_INT.get(mag.dtype, mag.dtype))  # top-k of integers is faster
            v = keys.topk(k + 1, dim=-1, sorted=False).values.amin(-1, keepdim=True).view(mag.dtype)
            level = torch.maximum(v, torch.as_tensor(theta, dtype=mag.dtype, device=mag.device))
        return torch.le(mag, level, out=mag)
