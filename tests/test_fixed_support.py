"""Two-layer fixed-support factorization (Le, Riccietti & Gribonval 2023, Algorithm 1), against references built
here: products of random factors on the supports, numpy's SVD, gradient fits, the butterfly factorization's split."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unroll_cli.models.butterfly_factorize import _two_layer_factorization, butterfly_twiddle, twiddle_to_dense
from unroll_cli.models.fixed_support import fixed_support_factorize

DTYPES = [torch.float64, torch.complex128]


def grid_supports(m: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks whose rank-one supports are disjoint rectangles or identical: rows and columns are split into 3
    random groups each, 5 of the 9 (row group, column group) pairs get a class of 1 or 2 indices, the indices are
    shuffled, and one more index has an empty rank-one support."""
    rng = np.random.default_rng(seed)
    row_groups = np.array_split(rng.permutation(m), 3)
    col_groups = np.array_split(rng.permutation(n), 3)
    pairs = rng.permutation(9)[:5]
    columns = []
    for pair in pairs:
        rows, cols = row_groups[pair // 3], col_groups[pair % 3]
        columns += [(rows, cols)] * int(rng.integers(1, 3))
    columns.append((row_groups[0], np.array([], dtype=int)))  # X column free, Y row empty: contributes nothing
    order = rng.permutation(len(columns))
    left = torch.zeros(m, len(columns), dtype=torch.bool)
    right = torch.zeros(len(columns), n, dtype=torch.bool)
    for k, idx in enumerate(order):
        rows, cols = columns[idx]
        left[rows, k] = True
        right[k, cols] = True
    return left, right


def butterfly_supports(n: int, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Supports of S_L ... S_{split+1} and S_split ... S_1 with S_l = I_{n/2^l} ⊗ ones(2, 2) ⊗ I_{2^(l-1)}
    (Le et al. 2022), as the nonzeros of products of the 0/1 factors."""
    depth = n.bit_length() - 1
    factors = [np.kron(np.kron(np.eye(n >> l), np.ones((2, 2))), np.eye(2 ** (l - 1))) for l in range(1, depth + 1)]
    left, right = np.eye(n), np.eye(n)
    for l in range(split, depth):
        left = factors[l] @ left
    for l in range(split):
        right = factors[l] @ right
    return torch.tensor(left != 0), torch.tensor(right != 0)


def random_on(mask: torch.Tensor, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(mask.shape, dtype=dtype, generator=gen) * mask


def rel_err(approx: torch.Tensor, target: torch.Tensor) -> float:
    return (torch.linalg.norm(approx - target) / torch.linalg.norm(target)).item()


def all_supports() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [grid_supports(9, 7, seed) for seed in range(3)] + [butterfly_supports(16, 2), butterfly_supports(32, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_product_with_those_supports_is_factorized_exactly_within_them(dtype):
    gen = torch.Generator().manual_seed(0)
    for left, right in all_supports():
        target = random_on(left, dtype, gen) @ random_on(right, dtype, gen)
        x, y = fixed_support_factorize(target, left, right)
        assert x.dtype == dtype and y.dtype == dtype
        assert torch.count_nonzero(x * ~left) == 0 and torch.count_nonzero(y * ~right) == 0
        assert rel_err(x @ y, target) < 1e-10


def test_factors_are_recovered_up_to_an_invertible_map_per_class_diagonal_for_single_indices():
    # Identifiability (Zheng, Riccietti & Gribonval): the product restricted to a class determines
    # X[:, P] Y[P, :] only up to X[:, P] G, G^-1 Y[P, :], G invertible (|P| x |P|): a scalar when |P| = 1.
    gen = torch.Generator().manual_seed(1)
    for left, right in all_supports():
        x0, y0 = random_on(left, torch.float64, gen), random_on(right, torch.float64, gen)
        x, y = fixed_support_factorize(x0 @ y0, left, right)
        patterns = torch.cat([left.T, right], 1)
        done = torch.zeros(left.shape[1], dtype=torch.bool)
        for k in range(left.shape[1]):
            if done[k] or not right[k].any():
                continue
            members = torch.nonzero((patterns == patterns[k]).all(1)).flatten()
            done[members] = True
            g = torch.linalg.lstsq(x0[:, members], x[:, members]).solution
            assert torch.allclose(x[:, members], x0[:, members] @ g, atol=1e-10)
            assert torch.allclose(y[members], torch.linalg.solve(g, y0[members]), atol=1e-10)
            if len(members) == 1:
                assert g.abs().item() > 1e-6


def lbfgs_error(target: torch.Tensor, left: torch.Tensor, right: torch.Tensor, seed: int) -> float:
    """||A - X Y||_F after L-BFGS from a random start, the factors masked to the supports."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(left.shape, dtype=torch.float64, generator=gen).requires_grad_()
    y = torch.randn(right.shape, dtype=torch.float64, generator=gen).requires_grad_()
    opt = torch.optim.LBFGS([x, y], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-15)

    def closure():
        opt.zero_grad()
        loss = (target - (x * left) @ (y * right)).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.linalg.norm(target - (x * left).detach() @ (y * right).detach()).item()


def test_no_worse_than_the_best_of_twenty_gradient_fits_where_the_theory_says_it_is_optimal():
    gen = torch.Generator().manual_seed(2)
    for left, right in [grid_supports(8, 6, 10), butterfly_supports(8, 1)]:
        target = torch.randn(left.shape[0], right.shape[1], dtype=torch.float64, generator=gen)
        x, y = fixed_support_factorize(target, left, right)
        error = torch.linalg.norm(target - x @ y).item()
        best = min(lbfgs_error(target, left, right, seed) for seed in range(20))
        assert error <= best * (1 + 1e-9)
        assert error < 0.9 * torch.linalg.norm(target).item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_single_class_is_the_truncated_svd_of_its_block(dtype):
    gen = torch.Generator().manual_seed(3)
    target = torch.randn(7, 6, dtype=dtype, generator=gen)
    rows, cols, rank = [0, 2, 3, 6], [1, 2, 4, 5], 2
    left = torch.zeros(7, rank, dtype=torch.bool)
    right = torch.zeros(rank, 6, dtype=torch.bool)
    left[rows] = True
    right[:, cols] = True
    x, y = fixed_support_factorize(target, left, right)
    a = target.numpy()
    singular = np.linalg.svd(a[np.ix_(rows, cols)], compute_uv=False)
    outside = a.copy()
    outside[np.ix_(rows, cols)] = 0
    expected = np.sqrt(np.sum(singular[rank:] ** 2) + np.linalg.norm(outside) ** 2)
    assert abs(torch.linalg.norm(target - x @ y).item() - expected) < 1e-10


def test_overlapping_classes_that_are_not_identical_are_refused():
    left = torch.tensor([[1, 1], [1, 0], [0, 1]], dtype=torch.bool)
    right = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)  # both rank-one supports hold entry (0, 1)
    with pytest.raises(ValueError, match="rank-one supports of indices 0 and 1 overlap without being identical"):
        fixed_support_factorize(torch.ones(3, 3), left, right)
    with pytest.raises(ValueError, match="right_support must have shape"):
        fixed_support_factorize(torch.ones(3, 3), left, right[:, :2])


def blocks_to_dense(blocks: torch.Tensor, first: int) -> torch.Tensor:
    """The matrix of butterfly_factorize's block layout: [g, j, r, c] at (g m 2^first + r 2^first + j, ...)."""
    groups, low, size, _ = blocks.shape
    n = groups * low * size
    out = torch.zeros(n, n, dtype=blocks.dtype)
    for g, j, r, c in np.ndindex(*blocks.shape):
        out[g * size * low + r * low + j, g * size * low + c * low + j] = blocks[g, j, r, c]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_butterfly_split_is_the_fixed_support_factorization(dtype):
    gen = torch.Generator().manual_seed(4)
    target = torch.randn(4, 4, dtype=dtype, generator=gen)  # n = 4: the hierarchical method is a single split
    x, y = fixed_support_factorize(target, *butterfly_supports(4, 1))
    assert rel_err(twiddle_to_dense(butterfly_twiddle(target)), x @ y) < 1e-12
    for n, right_factors in [(16, 2), (16, 1), (32, 2)]:
        target = torch.randn(n, n, dtype=dtype, generator=gen)
        left_blocks, right_blocks = _two_layer_factorization(target[None, None], right_factors)
        product = blocks_to_dense(left_blocks, right_factors) @ blocks_to_dense(right_blocks, 0)
        x, y = fixed_support_factorize(target, *butterfly_supports(n, right_factors))
        assert rel_err(product, x @ y) < 1e-12
