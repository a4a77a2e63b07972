"""The MNIST and CIFAR-10 architectures of Sulam et al. 2020's notebooks and their convolution
geometry, for the multi-layer ISTA family (:mod:`unroll_cli.models.mlista`).

* ``"mnist"`` (1x28x28 input): W1 (32,C,6,6) stride 2, W2 (64,32,6,6) stride 2,
  W3 (512,64,4,4) stride 1, no padding; then Linear(512, classes) + log_softmax.
* ``"mnist_small"``: the same geometry at 8, 20, 20 channels (a CNN of the cyclic-group network's size).
* ``"cifar10"`` (3x32x32): W1 (32,C,4,4), W2 (64,32,4,4), W3 (128,64,4,4), stride 2,
  padding 1; then three plain layers ``ReLU(conv3x3 + b)`` with 256, 512, 512 channels,
  max-pooling 2 after the last two, and Linear(512, classes) + log_softmax.

The geometry is what the models compute from an architecture and an input, apart from the update
equations: the kernels' shapes, the codes' sizes, when a convolution is one matrix product
(sees_all, tap_index), and layer 1's space-to-depth coordinates (Plan, forward_plan, plan_kernels).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Unfolded layers 1-3: (out channels, kernel, stride), layer 1 taking in_channels; one padding
# for all three; "tail": channels of the plain 3x3 layers (max-pool after the last two); "side": the
# images' side the architecture is drawn for.
ARCHS = {
    "mnist": {"layers": ((32, 6, 2), (64, 6, 2), (512, 4, 1)), "padding": 0, "tail": (), "side": 28},
    "cifar10": {"layers": ((32, 4, 2), (64, 4, 2), (128, 4, 2)), "padding": 1, "tail": (256, 512, 512), "side": 32},
    # the MNIST geometry at 8/20/20 channels: as many parameters as the cyclic-group network on one
    # channel (Theodosis & Ba 2022's comparison; cnn 12,709, cyclic_unfolded 12,770)
    "mnist_small": {"layers": ((8, 6, 2), (20, 6, 2), (20, 4, 1)), "padding": 0, "tail": (), "side": 28},
}


def kernel_shapes(spec: dict, in_channels: int) -> list[tuple[int, int, int, int]]:
    """The unfolded kernels' shapes (out, in, k, k) of the architecture ``spec`` (an ARCHS value)."""
    shapes, fan_in = [], in_channels
    for out, k, _ in spec["layers"]:
        shapes.append((out, fan_in, k, k))
        fan_in = out
    return shapes


def code_elements(spec: dict, side: int) -> int:
    """How many numbers one sample's codes gamma_1..gamma_3 hold, for a ``side`` x ``side`` input."""
    elements = 0
    for out, k, s in spec["layers"]:
        side = (side + 2 * spec["padding"] - k) // s + 1
        elements += out * max(side, 1) ** 2
    return elements


def sees_all(n: int, k: int, s: int, p: int) -> bool:
    """Whether every output position of a convolution (input size n, kernel k, stride s,
    padding p) reaches every input position: then it is a dense layer with no wasted work."""
    return k <= n + 2 * p and n <= k - p and s * ((n + 2 * p - k) // s) <= p


def tap_index(size: tuple, kernel: tuple, s: int, p: int) -> tuple:
    """Kernel tap joining output position (py, px) to input position (qy, qx), (p, q) order."""
    (h, w), (kh, kw) = size, kernel
    ho, wo = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    return tuple((qy - s * py + p) * kw + (qx - s * px + p)
                 for py in range(ho) for px in range(wo) for qy in range(h) for qx in range(w))


class Plan(NamedTuple):
    """Per-forward coordinates: ``image`` is x as layer 1 sees it (space-to-depth with block
    ``block`` > 1), ``mask`` zero on its padding (or None), and the layers' strides/paddings."""

    image: Tensor
    mask: Tensor | None
    block: int
    strides: tuple
    paddings: tuple


def forward_plan(x: Tensor, strides: tuple, padding: int, kernel: int) -> Plan:
    """Layer 1 (stride ``strides[0]``, kernel ``kernel``) space-to-depth when its stride divides its
    kernel and the padded image; on CPU the working image channels-last."""
    s, p = strides[0], padding
    cpu = x.device.type == "cpu"
    if s > 1 and kernel % s == 0 and all((n + 2 * p) % s == 0 for n in x.shape[-2:]):
        image = F.pixel_unshuffle(F.pad(x, (p,) * 4) if p else x, s)
        mask = None
        if p:
            ones = x.new_ones((1, *x.shape[1:]))
            mask = F.pixel_unshuffle(F.pad(ones, (p,) * 4), s)
        if cpu:
            image = image.contiguous(memory_format=torch.channels_last)
        return Plan(image, mask, s, (1, *strides[1:]), (0, p, p))
    if cpu:
        x = x.contiguous(memory_format=torch.channels_last)
    return Plan(x, None, 1, strides, (p, p, p))


def plan_kernels(kernels, plan: Plan) -> list[Tensor]:
    """Kernels in the plan's coordinates: with space-to-depth block s, W1 (m, C, k, k)
    becomes W1'[m, c*s^2 + a*s + b, u, v] = W1[m, c, s*u + a, s*v + b]."""
    W1, *rest = kernels
    s = plan.block
    if s > 1:
        m, C, k, _ = W1.shape
        q = k // s
        W1 = W1.reshape(m, C, q, s, q, s).permute(0, 1, 3, 5, 2, 4).reshape(m, C * s * s, q, q)
    return [W1, *rest]
