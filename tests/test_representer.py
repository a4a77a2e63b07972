"""The representer view of the least-squares dictionary (unroll_cli.evaluate.representer)."""
from __future__ import annotations

import numpy as np
import torch

from unroll_cli.evaluate.representer import (atom_weights, reconstruction_weights, representer_dictionary,
                                             top_contributors)
from unroll_cli.record.figures import representer_figure

# X = D Z exactly with n > p, so Z Z^T (p x p) is invertible and D is the unique least-squares dictionary
# X Z^T (Z Z^T)^{-1}. Z^T Z (n x n) then has rank p < n and is singular at rho = 0, so a tiny rho stands in
# for rho -> 0: by push-through, X (Z^T Z + rho I)^{-1} Z^T = D Z Z^T (Z Z^T + rho I)^{-1} = D + O(rho), and
# the solve's error along the null space of Z is annihilated by X = D Z. (With n <= p, D is not identifiable.)
M, P, N, TINY_RHO = 6, 4, 10, 1e-12


def _exact_case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    D = torch.randn(M, P, generator=gen, dtype=torch.float64)
    Z = torch.randn(P, N, generator=gen, dtype=torch.float64)
    return D, Z, D @ Z


def test_representer_dictionary_recovers_the_exact_dictionary():
    D, Z, X = _exact_case()
    least_squares = X @ Z.T @ torch.linalg.inv(Z @ Z.T)
    torch.testing.assert_close(least_squares, D, atol=1e-10, rtol=0)
    torch.testing.assert_close(representer_dictionary(X, Z, TINY_RHO), D, atol=1e-8, rtol=0)


def test_atom_weights_match_explicit_numpy_formulas():
    _, Z, _ = _exact_case(1)
    rho, z = 0.3, Z.numpy()
    G = np.linalg.inv(z.T @ z + rho * np.eye(N))  # explicit inverse: fine for a reference
    explicit = np.stack([G @ z[j] for j in range(P)])
    push_through = (z.T @ np.linalg.inv(z @ z.T + rho * np.eye(P))).T
    weights = atom_weights(Z, rho)
    np.testing.assert_allclose(weights.numpy(), explicit, atol=1e-10)
    np.testing.assert_allclose(weights.numpy(), push_through, atol=1e-10)
    assert atom_weights(Z.float(), rho).dtype == torch.float32


def test_reconstruction_is_a_weighted_sum_of_training_images():
    D, Z, X = _exact_case(2)
    z_test = torch.randn(P, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    beta = reconstruction_weights(Z, z_test, TINY_RHO)
    assert beta.shape == (N,)
    torch.testing.assert_close(X @ beta, D @ z_test, atol=1e-8, rtol=0)


def test_top_contributors_by_magnitude():
    weights = torch.tensor([0.1, -3.0, 2.0, -0.5, 2.5])
    indices, values = top_contributors(weights, 3)
    by_hand = sorted(range(len(weights)), key=lambda i: -abs(weights[i].item()))[:3]
    assert indices.tolist() == by_hand == [1, 4, 2]
    assert values.tolist() == [-3.0, 2.5, 2.0]


def test_representer_figure_has_a_row_per_atom_and_saves(tmp_path):
    gen = torch.Generator().manual_seed(4)
    atoms, train = torch.randn(3, 5, 5, generator=gen), torch.rand(8, 5, 5, generator=gen)
    weights = torch.randn(3, 8, generator=gen)
    rows = [[("atom", atom), ("its double", 2 * atom)] for atom in atoms]
    fig = representer_figure(rows, train, weights, k=4, title="representer")
    assert len(fig.axes) == 3 * (2 + 4)
    top = weights[0].abs().argmax().item()
    assert [ax.get_title() for ax in fig.axes[:3]] == ["atom", "its double", f"#{top}: {weights[0, top].item():.3g}"]
    fig.savefig(tmp_path / "representer.png")
    assert (tmp_path / "representer.png").stat().st_size > 0
