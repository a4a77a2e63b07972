"""Representer view of a least-squares dictionary (Tolooshams & Ba, "Stable and Interpretable Unrolled
Dictionary Learning", TMLR 2022; their ``src/utils/representer.py``).

With the training images X (m, n) as columns and their codes Z (p, n), the ridge least-squares dictionary is
D = X (Z^T Z + rho I)^{-1} Z^T = X G Z^T, so atom j is d_j = sum_k x_k (G w_j)_k (w_j: row j of Z), a weighted
sum of training images, and a reconstruction D z = X beta with beta = G Z^T z. G is never formed: each
product is a linear solve on the n x n system (the authors' script inverts it through an SVD as
U^T S^{-1} V^T, which is not the inverse).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unroll_cli.models.dictionaries import the_dictionary


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


@dataclass
class RepresenterView:
    """A trained dense model seen through the representer identity (gray images, (H, W) each)."""

    train_images: torch.Tensor  # (n, H, W): the training images X
    atoms: torch.Tensor  # (p, H, W): the learned atoms
    ls_atoms: torch.Tensor  # (p, H, W): X (Z^T Z + rho I)^-1 Z^T, atom by atom
    atom_weights: torch.Tensor  # (p, n): the weight of each training image in each atom
    usage: torch.Tensor  # (p,): sum over the training images of |z_j|
    dictionary_error: float  # ||D - X G Z^T||_F / ||D||_F
    atom_errors: torch.Tensor  # (p,): ||d_j - (X G Z^T)_j|| / ||d_j||, atom by atom
    test_input: torch.Tensor  # (H, W)
    reconstruction: torch.Tensor  # (H, W): D z_test
    test_weights: torch.Tensor  # (n,): beta, D z_test ~ X beta
    reconstruction_error: float  # ||D z_test - X beta|| / ||D z_test||


@torch.no_grad()
def _codes(model: torch.nn.Module, images: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """(n, p) final codes z_T of ``images`` (n, C, H, W), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model.encode(images[i:i + chunk]).flatten(1) for i in range(0, len(images), chunk)])
    finally:
        model.train(was_training)


def representer_view(model: torch.nn.Module, train_images: torch.Tensor, test_input: torch.Tensor,
                     rho: float) -> RepresenterView | str:
    """The view of a model with ``encode(x) -> z_T`` and one dictionary, ``(p, 1, H, W)`` (a dense
    dictionary whose atoms are images) on gray ``train_images`` (n, 1, H, W) and one ``test_input``
    (1, 1, H, W); the reason it does not apply otherwise."""
    dictionary = the_dictionary(model)
    if not callable(getattr(model, "encode", None)) or dictionary is None:
        return "the model has no encode() and one dictionary (a dense sparse_ae or group_sparse_ae has)"
    atoms = dictionary.float()
    if atoms.shape[1:] != train_images.shape[1:] or atoms.shape[1] != 1:
        return (f"the atoms {tuple(atoms.shape[1:])} are not gray images of the data's size "
                f"{tuple(train_images.shape[1:])} (the view needs a dense dictionary, conv=false)")
    Z = _codes(model, train_images).T.double()  # (p, n)
    X = train_images.flatten(1).T.double()  # (m, n)
    D = atoms.flatten(1).T.double()  # (m, p)
    weights = atom_weights(Z, rho)  # (p, n)
    ls = X @ weights.T
    z_test = _codes(model, test_input)[0].double()
    reconstruction = D @ z_test
    beta = reconstruction_weights(Z, z_test, rho)
    as_images = lambda m: m.T.reshape(-1, *train_images.shape[-2:]).float().cpu()  # noqa: E731
    return RepresenterView(
        train_images=train_images[:, 0].float().cpu(), atoms=atoms[:, 0].cpu(), ls_atoms=as_images(ls),
        atom_weights=weights.float().cpu(), usage=Z.abs().sum(dim=1).float().cpu(),
        dictionary_error=(torch.linalg.matrix_norm(D - ls) / torch.linalg.matrix_norm(D)).item(),
        atom_errors=(torch.linalg.vector_norm(D - ls, dim=0)
                     / torch.linalg.vector_norm(D, dim=0).clamp_min(1e-300)).float().cpu(),
        test_input=test_input[0, 0].float().cpu(), reconstruction=as_images(reconstruction[:, None])[0],
        test_weights=beta.float().cpu(),
        reconstruction_error=(torch.linalg.vector_norm(reconstruction - X @ beta)
                              / torch.linalg.vector_norm(reconstruction).clamp_min(1e-300)).item())
