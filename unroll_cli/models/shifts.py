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


def split_shifts(y: Tensor, kernel: int, stride: int) -> tuple[Tensor, Tensor | None]:
    """The shifted reflect-padded copies of (N, C, H, W) images, (N s^2, C, H', W'), shift (i, j) of
    image n at ``n s^2 + i s + j``, and the boolean mask (1, s^2, 1, H', W') of each copy's pixels that
    are the image's (for :func:`average_shifts`); stride 1: the images themselves and no mask."""
    if stride == 1:
        return y, None
    left, right, top, bottom = shift_pads(*y.shape[-2:], kernel, stride)
    shifts = [(i, j) for i in range(stride) for j in range(stride)]
    pads = [(left - j, right + j, top - i, bottom + i) for i, j in shifts]
    copies = torch.stack([F.pad(y, pad, mode="reflect") for pad in pads], dim=1)
    ones = y.new_ones((1, 1, *y.shape[-2:]), dtype=torch.bool)
    valid = torch.stack([F.pad(ones, pad, value=False) for pad in pads], dim=1)
    return copies.flatten(0, 1), valid


def average_shifts(images: Tensor, valid: Tensor | None) -> Tensor:
    """The mean over the shifts of :func:`split_shifts` of (N s^2, C, H', W') reconstructions, each cut
    to the image's pixels: (N, C, H, W)."""
    if valid is None:
        return images
    height, width = int(valid[0, 0, 0].any(1).sum()), int(valid[0, 0, 0].any(0).sum())
    stacked = images.unflatten(0, (-1, valid.shape[1]))
    return stacked.masked_select(valid).view(*stacked.shape[:3], height, width).mean(dim=1)
