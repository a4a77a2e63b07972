"""Metrics and their conventions.

NMSE in dB has two conventions in the literature, and they differ:
- ``pooled``: 10 log10(sum_i ||x_hat_i - x_i||^2 / sum_i ||x_i||^2) over the whole test set, as in the
  LISTA-CPSS and ALISTA code (``main.py: run_sc_test``) and Chen et al. 2018, Sec. 4.1;
- ``per_sample``: the mean over samples of 10 log10(||x_hat_i - x_i||^2 / ||x_i||^2), as in Open-L2O.
"""
from __future__ import annotations

import math

import torch


def nmse_db(x_hat: torch.Tensor, x: torch.Tensor, mode: str = "pooled") -> float:
    """NMSE in dB between estimates and true codes, rows are samples."""
    err = (x_hat.double() - x.double()).pow(2).sum(dim=1)
    ref = x.double().pow(2).sum(dim=1)
    if mode == "pooled":
        return 10.0 * math.log10(err.sum().item() / ref.sum().item())
    if mode == "per_sample":
        keep = ref > 0  # an all-zero code has no relative error
        return (10.0 * torch.log10(err[keep] / ref[keep])).mean().item()
    raise ValueError(f"unknown NMSE mode {mode!r}: use 'pooled' or 'per_sample'")


def support_recovery(x_hat: torch.Tensor, x: torch.Tensor, tol: float = 0.0) -> dict[str, float]:
    """Precision, recall and F1 of the detected nonzeros (|x_hat| > tol) against x's support."""
    detected = x_hat.abs() > tol
    true = x != 0
    hits = (detected & true).sum().item()
    n_detected, n_true = detected.sum().item(), true.sum().item()
    precision = hits / n_detected if n_detected else 0.0
    recall = hits / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def psnr_db(estimate: torch.Tensor, clean: torch.Tensor, peak: str | float = "max",
            clamp: bool = True) -> torch.Tensor:
    """PSNR (dB) of each image (first dimension) of ``estimate`` against ``clean``:
    20 log10(peak) - 10 log10(mean((clean - estimate)^2)), in float64.

    ``peak="max"``: the clean image's maximum, as PUDLE's and DenSaE's ``compute_psnr``; a number
    (1.0: the [0, 1] range) otherwise. ``clamp``: the estimate is clamped to [0, 1] first, as theirs.
    """
    estimate, clean = estimate.double(), clean.double()
    if clamp:
        estimate = estimate.clamp(0.0, 1.0)
    mse = (clean - estimate).pow(2).flatten(1).mean(dim=1)
    top = clean.flatten(1).amax(dim=1) if peak == "max" else torch.full_like(mse, float(peak))
    return 20.0 * torch.log10(top) - 10.0 * torch.log10(mse)
