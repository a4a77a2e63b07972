"""Representer view of a least-squares dictionary (Tolooshams & Ba, "Stable and Interpretable Unrolled
Dictionary Learning", TMLR 2022; their ``src/utils/representer.py``).

With the training images X (m, n) as columns and their codes Z (p, n), the ridge least-squares dictionary is
D = X (Z^T Z + rho I)^{-1} Z^T = X G Z^T, so atom j is d_j = sum_k x_k (G w_j)_k (w_j: row j of Z), a weighted
sum of training images, and a reconstruction D z = X beta with beta = G Z^T z. G is never formed: each
product is a linear solve on the n x n system (the authors' script inverts it through an SVD as
U^T S^{-1} V^T, which is not the inverse).
"""
from __future__ import annotations

import torch


def _solve_gram(Z: torch.Tensor, rhs: torch.Tensor, rho: float) -> torch.Tensor:
    """(Z^T Z + rho I)^{-1} rhs in float64, by a linear solve."""
    Z = Z.double()
    gram = Z.T @ Z + rho * torch.eye(Z.shape[1], dtype=torch.float64, device=Z.device)
    return torch.linalg.solve(gram, rhs.double())


def atom_weights(Z: torch.Tensor, rho: float) -> torch.Tensor:
    """(p, n): row j holds the weights (G w_j)^T of the n training images in atom j."""
    return _solve_gram(Z, Z.T, rho).T.to(Z.dtype)


def representer_dictionary(X: torch.Tensor, Z: torch.Tensor, rho: float) -> torch.Tensor:
    """(m, p): the dictionary X (Z^T Z + rho I)^{-1} Z^T, atom by atom a weighted sum of training images."""
    return (X.double() @ atom_weights(Z.double(), rho).T).to(X.dtype)


def reconstruction_weights(Z: torch.Tensor, z_test: torch.Tensor, rho: float) -> torch.Tensor:
    """(n,): beta = G Z^T z_test, the weights of the training images in the reconstruction D z_test."""
    return _solve_gram(Z, Z.T.double() @ z_test.double(), rho).to(z_test.dtype)


def top_contributors(weights: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and (signed) values of the k entries of ``weights`` largest in magnitude, largest first."""
    indices = weights.abs().topk(k).indices
    return indices, weights[indices]
