"""The unfolded network with a cyclic group structure (``model=cyclic_unfolded``): Theodosis & Ba,
"Learning unfolded networks with a cyclic group structure" (NeurReps @ NeurIPS 2022; the authors'
``GroupActionUntiedLearn``, manosth/cyclical-groups).

Each of the ``layers`` untied layers k learns a basis ``B_k`` of ``group_size`` filters (C x k x k) and
uses the dictionary ``W_k = [B_k, R B_k, ..., R^{G-1} B_k]`` of its ``num_groups`` = G rotations by
``angle`` (torchvision's ``rotate``: nearest, no expansion, zero fill; copy g is the base rotated by
g * angle, not the previous copy rotated again). A layer is a FISTA step on the convolutional code,

    u_k = ReLU(v + eta conv(y - convT(v, W_k), W_k) - eta lam_k),   v = BN_{k-1}(u_{k-1} + m_{k-1} (u_{k-1} - u_{k-2})),

stride 1, zero padding 1, eta = ``step``, ``m`` FISTA's extrapolation weights, the thresholds ``lam``
learned per channel (initially 1), a batch normalisation of the extrapolated code between layers
(not after the last) and the head ``Linear(AdaptiveAvgPool2d(4)(u_L))``. After every optimizer step
each channel of each basis filter is set back to unit Frobenius norm (the copies are rotations of
the renormalised base; a rotation by other than a multiple of 90 degrees loses the corners).

``tie_group_params=true`` shares the batch normalisation (statistics and affine map) and the
thresholds across the G copies of each basis filter: with ``angle=90, num_groups=4`` the network is
then exactly equivariant, a 90-degree rotation of the input rotating every layer's code and moving
copy g to copy g+1 (the authors' per-channel ones break that). ``rotate=false`` is the baseline: the
same network with free (not rotated) filters, as many as make its parameter count nearest the
rotated one's (:func:`free_filters`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import Tensor, nn

from unroll_cli.models.arguments import check_bool, check_int, check_number, fista_momentum
from unroll_cli.schema import any_number, constrained, positive, register_schema

PADDING = 1
POOL = 4  # the head's adaptive average pooling: POOL x POOL per channel


@register_schema("model", "cyclic_unfolded")
class CyclicUnfoldedConfig:
    """Untied unfolded FISTA layers whose filters are rotations of a learned basis."""

    _target_: str = MISSING
    name: str = MISSING
    task: str = "classification"
    layers: int = constrained(4, "an integer >= 1", lambda v: v >= 1)
    group_size: int = constrained(10, "an integer >= 1 (basis filters per layer)", lambda v: v >= 1)
    num_groups: int = constrained(6, "an integer >= 1 (rotated copies of the basis, the base included)",
                                  lambda v: v >= 1)
    angle: float = constrained(60.0, "a number of degrees (copy g is the base rotated by g * angle)", any_number)
    kernel_size: int = constrained(8, "an integer >= 1", lambda v: v >= 1)
    step: float = constrained(0.01, "a number > 0 (eta)", positive)
    tie_group_params: bool = False
    rotate: bool = True


def rotations(basis: Tensor, num_groups: int, angle: float) -> Tensor:
    """``[B, R B, ..., R^{G-1} B]`` along the filter axis, R^g B torchvision's ``rotate(B, g * angle)``
    (counter-clockwise, nearest, the size kept, zeros outside)."""
    from torchvision.transforms.functional import rotate  # torchvision's import is slow: only when used

    return torch.cat([basis] + [rotate(basis, g * angle) for g in range(1, num_groups)], dim=0)


def parameter_count(in_channels: int, num_classes: int, layers: int, kernel_size: int, filters: int,
                    channels: int, per_channel: int) -> int:
    """Parameters of the network: ``layers`` bases of ``filters`` filters, codes of ``channels``
    channels, thresholds and batch-norm affine maps on ``per_channel`` of them (shared by the copies
    when tied), the head on ``channels * POOL^2`` features."""
    return (layers * filters * in_channels * kernel_size ** 2 + layers * per_channel
            + (layers - 1) * 2 * per_channel + channels * POOL ** 2 * num_classes + num_classes)


def free_filters(in_channels: int, num_classes: int, layers: int, kernel_size: int, group_size: int,
                 num_groups: int, tied: bool) -> int:
    """How many free filters per layer make the baseline's parameter count nearest that of the rotated
    network (ties: the smaller)."""
    channels = group_size * num_groups
    target = parameter_count(in_channels, num_classes, layers, kernel_size, group_size, channels,
                             group_size if tied else channels)
    count = lambda k: parameter_count(in_channels, num_classes, layers, kernel_size, k, k, k)  # noqa: E731
    return min(range(1, target + 1), key=lambda k: (abs(count(k) - target), k))


class CyclicUnfolded(nn.Module):
    """The classifier ``log_softmax(Linear(pool(u_L)))`` of the unfolded network's last code.

    ``unfoldings`` = layers - 1 (as the multi-layer family: 0 is one feed-forward pass); ``forward(x,
    t)`` runs the first t + 1 layers and the head on their last code.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, layers: int = 4,
                 group_size: int = 10, num_groups: int = 6, angle: float = 60.0, kernel_size: int = 8,
                 step: float = 0.01, tie_group_params: bool = False, rotate: bool = True,
                 arch: str | None = None):
        super().__init__()  # arch: the multi-layer family's architecture, which this one does not use
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.layers = check_int("layers", layers, 1)
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        self.step = check_number("step", step, positive=True)
        self.rotate = check_bool("rotate", rotate)
        self.tied = check_bool("tie_group_params", tie_group_params)
        self.angle = float(angle)
        group_size, num_groups = check_int("group_size", group_size, 1), check_int("num_groups", num_groups, 1)
        if not self.rotate and self.tied:
            raise ValueError("tie_group_params=true needs rotate=true: without rotations there are no copies to tie")
        side = check_int("image_size", image_size, 1)
        if side + 2 * PADDING < self.kernel_size:
            raise ValueError(f"kernel_size={self.kernel_size} does not fit the data's {side}x{side} images "
                             f"(padded by {PADDING}): at most {side + 2 * PADDING}")
        if self.rotate:
            self.group_size, self.num_groups = group_size, num_groups
        else:
            self.group_size = free_filters(self.in_channels, self.num_classes, self.layers, self.kernel_size,
                                           group_size, num_groups, tied=False)
            self.num_groups = 1
        self.channels = self.group_size * self.num_groups
        shared = self.group_size if self.tied else self.channels  # channels with their own BN and threshold
        self.unfoldings = self.layers - 1
        self.B = nn.ParameterList(
            nn.Parameter(self._unit(torch.randn(self.group_size, self.in_channels, self.kernel_size,
                                                self.kernel_size)))
            for _ in range(self.layers))
        self.lam = nn.ParameterList(nn.Parameter(torch.ones(shared)) for _ in range(self.layers))
        self.norms = nn.ModuleList(nn.BatchNorm2d(shared) for _ in range(self.layers - 1))
        self.head = nn.Linear(self.channels * POOL ** 2, self.num_classes)
        self.momentum = fista_momentum(self.layers)

    @staticmethod
    def _unit(B: Tensor) -> Tensor:
        """Each channel of each filter scaled to unit Frobenius norm (the authors' renormalisation)."""
        return F.normalize(B, p="fro", dim=(-2, -1))

    def dictionary(self, k: int) -> Tensor:
        """Layer k's filters (channels, C, k, k): the basis and its rotations (rotate=false: the basis)."""
        return rotations(self.B[k], self.num_groups, self.angle) if self.rotate else self.B[k]

    def _per_copy(self, u: Tensor, op) -> Tensor:
        """``op`` on a code (N, G*S, H, W) whose G copies share it: applied to (N*G, S, H, W)."""
        if not self.tied:
            return op(u)
        n, _, h, w = u.shape
        return op(u.reshape(n * self.num_groups, self.group_size, h, w)).reshape(n, self.channels, h, w)

    def codes(self, y: Tensor, unfoldings: int | None = None) -> list[Tensor]:
        """The code u_k (N, channels, H', W') after each of the first ``unfoldings + 1`` layers."""
        t = self.unfoldings if unfoldings is None else self._check_unfoldings(unfoldings)
        if y.dim() != 4 or y.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, H, W), got {tuple(y.shape)}")
        h, w = (n + 2 * PADDING - self.kernel_size + 1 for n in y.shape[-2:])
        v = u_old = y.new_zeros(y.shape[0], self.channels, h, w)
        out = []
        for k in range(t + 1):
            W = self.dictionary(k)
            residual = y - F.conv_transpose2d(v, W, padding=PADDING)
            lam = self.lam[k].view(1, -1, 1, 1)
            u = self._per_copy(v + self.step * F.conv2d(residual, W, padding=PADDING),
                               lambda z: torch.relu(z - self.step * lam))
            out.append(u)
            if k < t:
                v = self._per_copy(u + self.momentum[k] * (u - u_old), self.norms[k])
            u_old = u
        return out

    def features(self, u: Tensor) -> Tensor:
        """The head's input: the code average-pooled to POOL x POOL per channel (N, channels, POOL, POOL)."""
        return F.adaptive_avg_pool2d(u, POOL)

    def forward(self, x: Tensor, unfoldings: int | None = None) -> Tensor:
        """Log-probabilities (batch, classes) after ``unfoldings + 1`` layers (default: all)."""
        return F.log_softmax(self.head(self.features(self.codes(x, unfoldings)[-1]).flatten(1)), dim=1)

    def _check_unfoldings(self, t) -> int:
        t = check_int("unfoldings", t, 0)
        if t > self.unfoldings:
            raise ValueError(f"unfoldings={t} exceeds the model's {self.unfoldings} (layers - 1)")
        return t

    @torch.no_grad()
    def after_step(self) -> None:
        """Every channel of every basis filter back to unit Frobenius norm."""
        for B in self.B:
            B.copy_(self._unit(B))

    def dictionaries(self) -> dict[str, Tensor]:
        """The first layer's dictionary, the basis and its rotated copies (``W1``)."""
        return {"W1": self.dictionary(0).detach()}
