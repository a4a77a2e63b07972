"""Split-stride averaging for strided convolutional models (CRsAE, DenSaE: btolooshams/densae
``src/model.py`` ``split_image``, pads from ``src/utils.py`` ``calc_pad_sizes``): a strided code sees
each pixel through windows at one phase only; coding the ``stride^2`` shifted copies of the image and
averaging their reconstructions removes that dependence. Each image is reflect-padded by ``s`` on the
left and top and by ``s + r`` on the right and bottom (``r`` the least that makes ``side + s + r - k``
a multiple of ``s``), then shifted by (i, j) for i, j in 0..s-1 (pads ``s - j`` left, ``s + r + j``
right, likewise rows); each copy's reconstruction is cut to the image's pixels and the copies are
averaged. Stride 1 codes the image itself, unpadded (the authors' choice).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def shift_pads(height: int, width: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) reflect pads of the unshifted copy (the authors' ``calc_pad_sizes``)."""
    def far(side: int) -> int:
        return stride + (-(side + stride - kernel)) % stride
    return stride, far(width), stride, far(height)


def shift_fits(height: int, width: int, kernel: int, stride: int) -> str | None:
    """Why an image of this size cannot be split into shifts, or None: a reflect pad must be smaller
    than the side it reflects, and a side must hold a filter."""
    if min(height, width) < kernel:
        return f"smaller than the {kernel}x{kernel} filters"
    if stride == 1:
        return None
    left, right, top, bottom = shift_pads(height, width, kernel, stride)
    widest = (right + stride - 1, bottom + stride - 1)
    if widest[0] >= width or widest[1] >= height:
        return (f"too small for the stride^2 shifted copies: each side must exceed its widest reflect pad "
                f"({widest[1]} rows, {widest[0]} columns)")
    return None


@dataclass(frozen=True)
class Windows:
    """Where each shifted copy holds the image: the top-left corner of the image in each copy, in the
    copies' order, and the image's (H, W)."""

    corners: tuple[tuple[int, int], ...]
    size: tuple[int, int]


def split_shifts(y: Tensor, kernel: int, stride: int) -> tuple[Tensor, Windows | None]:
    """The shifted reflect-padded copies of (N, C, H, W) images, (N s^2, C, H', W'), shift (i, j) of
    image n at ``n s^2 + i s + j``, and where each holds the image (for :func:`average_shifts`);
    stride 1: the images themselves and no windows."""
    if stride == 1:
        return y, None
    left, right, top, bottom = shift_pads(*y.shape[-2:], kernel, stride)
    shifts = [(i, j) for i in range(stride) for j in range(stride)]
    copies = torch.stack([F.pad(y, (left - j, right + j, top - i, bottom + i), mode="reflect")
                          for i, j in shifts], dim=1)
    windows = Windows(tuple((top - i, left - j) for i, j in shifts), tuple(y.shape[-2:]))
    return copies.flatten(0, 1), windows


def average_shifts(images: Tensor, windows: Windows | None) -> Tensor:
    """The mean over the shifts of :func:`split_shifts` of (N s^2, C, H', W') reconstructions, each cut
    to the image's pixels: (N, C, H, W). Slices, not a mask: no device synchronisation."""
    if windows is None:
        return images
    (h, w), stacked = windows.size, images.unflatten(0, (-1, len(windows.corners)))
    return torch.stack([stacked[:, n, :, r:r + h, c:c + w] for n, (r, c) in enumerate(windows.corners)],
                       dim=1).mean(dim=1)
