"""DenSaE, the dense and sparse unrolled autoencoder, and its CSCNet baselines, for image denoising.

Tasissa, Theodosis, Tolooshams & Ba, "Discriminative reconstruction via simultaneous dense and sparse
coding", TMLR 2024 (code: btolooshams/densae ``src/model.py``, classes ``DenSaE``, ``CSCNetTiedHyp``,
``CSCNetTiedLS``). An image is ``y = A x + B u`` with a dense code ``x`` and a sparse code ``u``, A and
B convolutional dictionaries (7x7 filters at stride 5 in the paper). The encoder unrolls T FISTA
steps on ``0.5 ||y - A x - B u||^2 + 1/(2 rho) ||A x||^2 + lam ||u||_1`` from ``x = u = 0``, with one
momentum for both codes, step ``alpha = 1/L``:

    r = y - ((1 + 1/rho) A x~ + B u~),   x = x~ + alpha A^T r,   u = S_{lam alpha}(u~ + alpha B^T r),

at the extrapolated points ``x~, u~`` (Beck & Teboulle 2009), and the output is ``A x_t + B u_t``
(without the ``1 + 1/rho``, as the authors' code). ``S`` is the two-sided soft threshold (one-sided:
``ReLU(z - b)``); with ``learn_threshold`` its bound is a learned per-filter ``b`` started at
``threshold_init`` (CSCNet-LS), instead of ``lam alpha``. Every step codes the ``stride^2`` shifted
copies of the image and each layer's output is their average (:mod:`unroll_cli.models.shifts`).

``split`` = ``"<n>A<m>B"`` sets n dense and m sparse filters (DenSaE's 1A63B ... 32A32B); ``0A<m>B``
is CSCNet (B only): ``model=cscnet_tied_hyp`` (threshold lam alpha) and ``model=cscnet_tied_ls``
(learned thresholds). The whole unrolled encoder is differentiated (the authors' training).

The analysis ``[A B]^T r`` is one ``conv2d``, the syntheses ``conv_transpose2d`` (the copies' pads make
it the copies' size): on the 25 copies of a 128x128 crop these were faster on the CPU, with their
backward passes, than the products with the patches that ``sparse_ae`` uses (``unfold`` / ``fold``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from numbers import Integral

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import Tensor, nn

from unroll_cli.models.arguments import check_bool, check_int, check_number, fista_momentum
from unroll_cli.models.autoencoders import unit_atoms
from unroll_cli.models.prox import nonneg_soft_threshold, soft_threshold
from unroll_cli.models.shifts import Windows, average_shifts, shift_fits, split_shifts
from unroll_cli.schema import constrained, register_schema

SPLIT = re.compile(r"(\d+)A(\d+)B")
SPLIT_ALLOWED = "<n>A<m>B: n >= 0 dense filters (A) and m >= 1 sparse filters (B), e.g. 4A60B or 0A64B"


def parse_split(split) -> tuple[int, int] | None:
    """(dense, sparse) filters of a split string such as ``4A60B``, or None when it is not one."""
    found = SPLIT.fullmatch(split) if isinstance(split, str) else None
    if found is None or int(found[2]) < 1:
        return None
    return int(found[1]), int(found[2])


@register_schema("model", "densae")
class DenSaEConfig:
    """DenSaE and CSCNet (Tasissa et al., TMLR 2024); defaults: the paper's denoising at sigma 25."""

    _target_: str = MISSING
    name: str = MISSING
    task: str = "denoising"
    split: str = constrained("1A63B", SPLIT_ALLOWED, lambda v: parse_split(v) is not None)
    layers: int = constrained(15, "an integer >= 1", lambda v: v >= 1)  # T
    lam: float = constrained(0.16, "a number >= 0", lambda v: v >= 0)  # threshold lam * step
    step: float = constrained(0.1, "a number > 0", lambda v: v > 0)  # 1/L (the authors' L = 10)
    rho: float = constrained(1e10, "a number > 0", lambda v: v > 0)
    kernel_size: int = constrained(7, "an integer >= 1", lambda v: v >= 1)
    stride: int = constrained(5, "an integer >= 1", lambda v: v >= 1)
    two_sided: bool = True
    normalize: bool = False  # unit-norm filters after every optimizer step (the paper's denoising: off)
    learn_threshold: bool = False  # CSCNet-LS: a learned threshold per sparse filter
    # its initial value (the threshold itself, not lam * step)
    threshold_init: float = constrained(0.01, "a number >= 0", lambda v: v >= 0)


@dataclass
class Coding:
    """What ``depth`` steps of the encoder give for images y: each layer's ``A x_t + B u_t`` averaged
    over the shifts, the last codes ``x`` (N s^2, dense, h', w') and ``u`` (N s^2, sparse, h', w') and
    their syntheses ``A x``, ``B u`` on the shifted copies, and where the copies hold the image."""

    outputs: list[Tensor]
    x: Tensor
    u: Tensor
    Ax: Tensor
    Bu: Tensor
    windows: Windows | None


class DenSaE(nn.Module):
    """DenSaE's unrolled FISTA encoder with shift averaging (module docstring); ``forward`` returns each
    layer's ``A x_t + B u_t``, :meth:`components` the last layer's ``A x`` and ``B u``."""

    def __init__(self, in_channels: int, split: str = "1A63B", layers: int = 15, lam: float = 0.16,
                 step: float = 0.1, rho: float = 1e10, kernel_size: int = 7, stride: int = 5,
                 two_sided: bool = True, normalize: bool = False, learn_threshold: bool = False,
                 threshold_init: float = 0.01, init_images: Tensor | None = None,
                 input_sizes: dict[str, tuple[int, int]] | None = None):
        super().__init__()
        counts = parse_split(split)
        if counts is None:
            raise ValueError(f"model.split={split!r}: expected {SPLIT_ALLOWED}")
        self.split = split
        self.layers = check_int("layers", layers, 1)
        self.momentum = fista_momentum(self.layers)
        self.lam, self.step = check_number("lam", lam, False), check_number("step", step, True)
        self.rho = check_number("rho", rho, True)
        self.two_sided, self.normalize = check_bool("two_sided", two_sided), check_bool("normalize", normalize)
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.kernel_size, self.stride = check_int("kernel_size", kernel_size, 1), check_int("stride", stride, 1)
        self._check_sizes(input_sizes or {})
        k = self.kernel_size
        self.A = nn.Parameter(unit_atoms(torch.randn(counts[0], self.in_channels, k, k), True))
        self.B = nn.Parameter(unit_atoms(torch.randn(counts[1], self.in_channels, k, k), True))
        if check_bool("learn_threshold", learn_threshold):
            b = check_number("threshold_init", threshold_init, False)
            self.b = nn.Parameter(torch.full((1, counts[1], 1, 1), b))
        else:
            self.b = None

    def _check_sizes(self, sizes: dict[str, tuple[int, int]]) -> None:
        """Refuse, before any work, a stride larger than the filters (pixels between windows) and an
        input the shifted copies cannot be cut from (``sizes``: the task's inputs by where they come from)."""
        k, s = self.kernel_size, self.stride
        if s > k:
            raise ValueError(f"model.stride={s} is larger than model.kernel_size={k}: pixels between the "
                             "filters' windows would never be reconstructed; choose a stride <= kernel_size")
        for where, (h, w) in sizes.items():
            reason = shift_fits(h, w, k, s)
            if reason:
                raise ValueError(f"model.kernel_size={k}, model.stride={s}: {where}, {h}x{w} pixels, is "
                                 f"{reason}; lower them or use larger images")

    # -- the encoder -------------------------------------------------------
    def _shrink(self, u: Tensor) -> Tensor:
        bound = self.lam * self.step if self.b is None else self.b
        return soft_threshold(u, bound) if self.two_sided else nonneg_soft_threshold(u, bound)

    def _encode(self, y: Tensor, depth: int) -> Coding:
        """The :class:`Coding` of ``depth`` steps; ``A x~``, ``B u~`` at the extrapolated points by linearity."""
        copies, windows = split_shifts(y, self.kernel_size, self.stride)
        dense = len(self.A)
        weight = torch.cat([self.A, self.B])
        x_prev = u_prev = Ax_prev = Bu_prev = x_extra = u_extra = 0
        residual, outputs = copies, []
        for t in range(depth):
            gradient = F.conv2d(residual, weight, stride=self.stride) * self.step
            x = x_extra + gradient[:, :dense]
            u = self._shrink(u_extra + gradient[:, dense:])
            Ax = F.conv_transpose2d(x, self.A, stride=self.stride) if dense else copies.new_zeros(())
            Bu = F.conv_transpose2d(u, self.B, stride=self.stride)
            outputs.append(average_shifts(Ax + Bu, windows))
            m = self.momentum[t]
            x_extra, u_extra = x + m * (x - x_prev), u + m * (u - u_prev)
            Ax_extra, Bu_extra = Ax + m * (Ax - Ax_prev), Bu + m * (Bu - Bu_prev)
            residual = copies - ((1 + 1 / self.rho) * Ax_extra + Bu_extra)
            x_prev, u_prev, Ax_prev, Bu_prev = x, u, Ax, Bu
        return Coding(outputs, x, u, Ax, Bu, windows)

    def code(self, y: Tensor, depth: int | None = None) -> Coding:
        """The :class:`Coding` of images y after layers 1..depth (default all ``layers``), for a model
        built on the codes (``model=densae_classifier``)."""
        depth = self.layers if depth is None else depth
        if isinstance(depth, bool) or not isinstance(depth, Integral) or not 1 <= depth <= self.layers:
            raise ValueError(f"depth must be an integer in [1, {self.layers}], got {depth!r}")
        self._check_input(y)
        return self._encode(y, depth)

    def forward(self, y: Tensor, depth: int | None = None) -> list[Tensor]:
        """Reconstructions ``A x_t + B u_t`` after layers 1..depth (default all ``layers``), each like y."""
        return self.code(y, depth).outputs

    @torch.no_grad()
    def components(self, y: Tensor) -> dict[str, Tensor]:
        """The last layer's dense and sparse parts ``A x_T`` and ``B u_T`` of images y (each like y),
        for the denoising task's ``components.png``; none for CSCNet (no A)."""
        if not len(self.A):
            return {}
        coding = self.code(y)
        return {"A x": average_shifts(coding.Ax, coding.windows), "B u": average_shifts(coding.Bu, coding.windows)}

    def _check_input(self, y: Tensor) -> None:
        if y.dim() != 4 or y.shape[1] != self.in_channels:
            raise ValueError(f"y must have shape (N, {self.in_channels}, H, W), got {tuple(y.shape)}")
        reason = shift_fits(*y.shape[-2:], self.kernel_size, self.stride)
        if reason:
            raise ValueError(f"images of {tuple(y.shape[-2:])} pixels are {reason}")

    # -- what the run uses -------------------------------------------------
    @torch.no_grad()
    def after_step(self) -> None:
        """Unit-norm filters after every optimizer step (``normalize``)."""
        if self.normalize:
            self.A.copy_(unit_atoms(self.A, True))
            self.B.copy_(unit_atoms(self.B, True))

    def thresholds(self) -> Tensor | None:
        """The learned threshold of each sparse filter (CSCNet-LS, ``learn_threshold``), detached, shape
        (filters of B,): saved with the run as ``thresholds.npy``; None for the fixed ``lam * step``."""
        return None if self.b is None else self.b.detach().flatten()

    def dictionaries(self) -> dict[str, Tensor]:
        """The filters of A (when there are any) and of B, detached (K, C, k, k)."""
        found = {"A": self.A.detach(), "B": self.B.detach()}
        return found if len(self.A) else {"B": found["B"]}

