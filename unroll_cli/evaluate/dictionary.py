"""How far a learned dictionary is from the true one, up to the order and signs of its atoms.

The authors' ``fro_distance_permute`` (Tolooshams & Ba, ``src/utils/utils.py``): both dictionaries'
columns scaled to unit norm, the cost of pairing learned atom j with true atom i is
``min(||d_i - h_j||^2, ||d_i + h_j||^2) = 2 - 2 |d_i^T h_j|``, the pairing that minimises the total
cost is found by the Hungarian method (``scipy.optimize.linear_sum_assignment``), and the distance is
the square root of that total: ``||D* - D P S||_F`` for the best permutation P and signs S. The
relative distance divides it by ``||D*||_F = sqrt(p)`` (the authors' ``fro_distance_relative``,
which pairs atoms in their given order: near D*, as in their runs, the best pairing is that order).
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment


def matched_distance(learned: torch.Tensor, true: torch.Tensor) -> float:
    """``min over P, S of ||D* - D P S||_F``, unit-norm columns (module docstring); (m, p) matrices."""
    if learned.shape != true.shape:
        raise ValueError(f"the learned dictionary is {tuple(learned.shape)}, the true one {tuple(true.shape)}")
    a = learned.detach().double().cpu()
    b = true.detach().double().cpu()
    a = a / a.norm(dim=0, keepdim=True).clamp_min(1e-300)
    b = b / b.norm(dim=0, keepdim=True).clamp_min(1e-300)
    inner = b.T @ a
    rows, cols = linear_sum_assignment((-inner.abs()).numpy())  # the least total cost 2 - 2 |d_i^T h_j|
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    signs = torch.where(inner[rows, cols] < 0, -1.0, 1.0).to(a.dtype)
    return float(torch.linalg.matrix_norm(b[:, rows] - a[:, cols] * signs))  # the differences, not 2 - 2|.|


def relative_distance(learned: torch.Tensor, true: torch.Tensor) -> float:
    """:func:`matched_distance` over ``||D*||_F`` with unit columns, sqrt(p)."""
    return matched_distance(learned, true) / true.shape[1] ** 0.5
