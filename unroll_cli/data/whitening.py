"""ZCA whitening of images (Theodosis & Ba 2022's CIFAR-10 preprocessing, manosth/cyclical-groups
``utils.py``): each channel standardised by the set's mean and (unbiased) standard deviation over its
images and pixels, then the flattened C*H*W vector multiplied by ``U diag(1 / sqrt(S + eps)) U^T``, the
eigen-decomposition of the standardised set's covariance (centred per feature, ddof 1). As there,
the standardised vectors are not centred before the product.
"""
from __future__ import annotations

import torch


class ZCA:
    """The standardisation and ZCA matrix fitted on a set of uint8 images (N, C, H, W); applied to
    batches of images scaled to [0, 1] by :meth:`__call__`. Fitted in float64, applied in float32."""

    def __init__(self, images: torch.Tensor, eps: float = 1e-8):
        x = images.double() / 255.0
        self.mean = x.mean(dim=(0, 2, 3), keepdim=True)
        self.std = x.std(dim=(0, 2, 3), keepdim=True)
        flat = ((x - self.mean) / self.std).flatten(1)
        centred = flat - flat.mean(dim=0)
        cov = centred.T @ centred / (len(flat) - 1)
        values, vectors = torch.linalg.eigh(cov)
        self.matrix = (vectors * (values.abs() + eps).rsqrt()) @ vectors.T
        self.mean, self.std, self.matrix = self.mean.float(), self.std.float(), self.matrix.float()

    def to(self, device: torch.device) -> ZCA:
        self.mean, self.std, self.matrix = (t.to(device) for t in (self.mean, self.std, self.matrix))
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] standardised and whitened."""
        return (((x - self.mean) / self.std).flatten(1) @ self.matrix).view(x.shape)
