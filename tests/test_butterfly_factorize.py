"""Hierarchical butterfly factorization and Monarch projection, against references built independently here."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from test_butterfly import slow_dense
from unroll_cli.models.butterfly_factorize import (
    bit_reversal, butterfly_factorize, butterfly_twiddle, monarch_projection, monarch_to_dense,
    twiddle_to_dense,
)

TREES = ["balanced", "unbalanced"]


def rel_err(approx: torch.Tensor, target: torch.Tensor) -> float:
    return (torch.linalg.norm(approx - target) / torch.linalg.norm(target)).item()


def product_of(twiddle: torch.Tensor, perm: torch.Tensor | None, increasing_stride: bool = True) -> torch.Tensor:
    """The matrix x -> B(x[perm]) of a factorization, from the slow reference."""
    dense = slow_dense(twiddle, increasing_stride)
    return dense if perm is None else dense[:, torch.argsort(perm)]


def hadamard(n: int) -> torch.Tensor:
    return torch.tensor(scipy.linalg.hadamard(n) / np.sqrt(n))


def unitary_dft(n: int) -> torch.Tensor:
    return torch.tensor(np.fft.fft(np.eye(n), norm="ortho"))


@pytest.mark.parametrize("increasing_stride", [True, False])
@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_random_butterfly_product_is_recovered(tree, increasing_stride, dtype):
    gen = torch.Generator().manual_seed(0)
    twiddle = torch.randn(5, 16, 2, 2, dtype=dtype, generator=gen)
    target = slow_dense(twiddle, increasing_stride)
    fitted = butterfly_twiddle(target, tree, increasing_stride)
    assert fitted.shape == twiddle.shape and fitted.dtype == dtype
    assert rel_err(slow_dense(fitted, increasing_stride), target) < 1e-10


@pytest.mark.parametrize("increasing_stride", [True, False])
def test_twiddle_to_dense_matches_the_slow_reference(increasing_stride):
    twiddle = torch.randn(4, 8, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(twiddle_to_dense(twiddle, increasing_stride), slow_dense(twiddle, increasing_stride),
                          atol=1e-13)


@pytest.mark.parametrize("tree", TREES)
def test_hadamard_and_bit_reversed_dft_are_exact(tree):
    h = hadamard(256)
    twiddle, perm = butterfly_factorize(h, tree)
    assert perm is None and rel_err(product_of(twiddle, perm), h) < 1e-10
    dft = unitary_dft(256)
    twiddle, perm = butterfly_factorize(dft, tree, permutation="bitrev")
    assert twiddle.dtype == torch.complex128
    assert rel_err(product_of(twiddle, perm), dft) < 1e-10
    twiddle, perm = butterfly_factorize(dft, tree)
    assert rel_err(product_of(twiddle, perm), dft) > 0.5  # the DFT itself is not a butterfly (pyfaust: 0.99)


def test_hadamard_is_exact_with_decreasing_stride():
    h = hadamard(64)
    twiddle, _ = butterfly_factorize(h, increasing_stride=False)
    assert rel_err(slow_dense(twiddle, False), h) < 1e-10


def test_bitrev_is_the_bit_reversal_and_makes_x_perm_the_input():
    expected = [int(format(i, "05b")[::-1], 2) for i in range(32)]
    assert bit_reversal(32).tolist() == expected
    x = torch.randn(32, dtype=torch.float64)
    twiddle, perm = butterfly_factorize(unitary_dft(32), permutation="bitrev")
    assert torch.allclose(slow_dense(twiddle, True).to(torch.complex128) @ x[perm].to(torch.complex128),
                          torch.fft.fft(x, norm="ortho"), atol=1e-12)


def test_index_permutation_recovers_a_permuted_butterfly():
    gen = torch.Generator().manual_seed(2)
    twiddle = torch.randn(4, 8, 2, 2, dtype=torch.float64, generator=gen)
    perm = torch.randperm(16, generator=gen)
    target = product_of(twiddle, perm)
    fitted, returned = butterfly_factorize(target, permutation=perm)
    assert torch.equal(returned, perm)
    assert rel_err(product_of(fitted, returned), target) < 1e-10
    assert rel_err(product_of(butterfly_factorize(target)[0], None), target) > 1e-3


def test_thread_count_is_restored():
    threads = torch.get_num_threads()
    butterfly_twiddle(hadamard(16))
    monarch_projection(hadamard(16), 4)
    assert torch.get_num_threads() == threads


def lbfgs_butterfly_error(target: torch.Tensor, seed: int) -> float:
    """Frobenius error of a butterfly fitted to ``target`` by L-BFGS on the twiddle from a random start."""
    depth, n = int(np.log2(target.shape[0])), target.shape[0]
    twiddle = torch.randn(depth, n // 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    twiddle.requires_grad_()
    opt = torch.optim.LBFGS([twiddle], max_iter=300, line_search_fn="strong_wolfe", tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = (twiddle_to_dense(twiddle) - target).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.linalg.norm(twiddle_to_dense(twiddle.detach()) - target).item()


def test_random_matrix_error_is_close_to_the_best_gradient_fit():
    # The hierarchical method is not optimal in general: on this matrix the best of 20 L-BFGS starts is ~1-5 %
    # lower (measured), so only near-optimality is asserted.
    target = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(100))
    best_fit = min(lbfgs_butterfly_error(target, seed) for seed in range(20))
    for tree in TREES:
        error = torch.linalg.norm(twiddle_to_dense(butterfly_twiddle(target, tree)) - target).item()
        assert error <= 1.1 * best_fit
        assert error < 0.6 * torch.linalg.norm(target).item()


@pytest.mark.parametrize("tree", TREES)
def test_noisy_bit_reversed_dft_error_is_about_the_noise(tree):
    # Le et al. 2022, Fig. 3: unnormalised DFT plus complex Gaussian noise of variance 0.005 per part.
    n = 64
    gen = torch.Generator().manual_seed(3)
    noise = 0.005**0.5 * torch.complex(torch.randn(n, n, dtype=torch.float64, generator=gen),
                                       torch.randn(n, n, dtype=torch.float64, generator=gen))
    dft = unitary_dft(n) * n**0.5
    twiddle, perm = butterfly_factorize(dft + noise, tree, permutation="bitrev")
    fitted = product_of(twiddle, perm)
    noise_norm = torch.linalg.norm(noise).item()
    assert 0.8 * noise_norm < torch.linalg.norm(fitted - dft - noise).item() <= noise_norm
    assert torch.linalg.norm(fitted - dft).item() < 0.6 * noise_norm


def explicit_monarch(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """P^T L P R built from scipy block_diag and an explicit permutation matrix."""
    nblocks, size = right.shape[0], right.shape[1]
    n = nblocks * size
    perm = torch.arange(n).reshape(nblocks, size).T.reshape(-1)  # (P x)[i] = x[perm[i]]
    p = torch.eye(n, dtype=torch.float64)[perm]
    big_l = torch.tensor(scipy.linalg.block_diag(*left.numpy()))
    big_r = torch.tensor(scipy.linalg.block_diag(*right.numpy()))
    return p.T @ big_l @ p @ big_r


@pytest.mark.parametrize("nblocks", [4, 2])
def test_monarch_to_dense_and_exact_recovery(nblocks):
    gen = torch.Generator().manual_seed(4)
    size = 16 // nblocks
    left = torch.randn(size, nblocks, nblocks, dtype=torch.float64, generator=gen)
    right = torch.randn(nblocks, size, size, dtype=torch.float64, generator=gen)
    target = explicit_monarch(left, right)
    assert torch.allclose(monarch_to_dense(left, right), target, atol=1e-12)
    fit_left, fit_right = monarch_projection(target, nblocks)
    assert fit_left.shape == left.shape and fit_right.shape == right.shape
    assert rel_err(explicit_monarch(fit_left, fit_right), target) < 1e-10


def monarch_gradient_error(target: torch.Tensor, nblocks: int, seed: int) -> float:
    """Frobenius error of Monarch factors fitted to ``target`` by L-BFGS from a random start."""
    size = target.shape[0] // nblocks
    gen = torch.Generator().manual_seed(seed)
    left = torch.randn(size, nblocks, nblocks, dtype=torch.float64, generator=gen).requires_grad_()
    right = torch.randn(nblocks, size, size, dtype=torch.float64, generator=gen).requires_grad_()
    opt = torch.optim.LBFGS([left, right], max_iter=300, line_search_fn="strong_wolfe", tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = (monarch_to_dense(left, right) - target).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.linalg.norm(monarch_to_dense(left.detach(), right.detach()) - target).item()


def test_monarch_projection_is_optimal_on_a_random_matrix():
    target = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    error = torch.linalg.norm(explicit_monarch(*monarch_projection(target, 4)) - target).item()
    # Brute force: each (j, c) slice over (c2, k) is an independent rank-1 problem (Eckart-Young per slice).
    slices = target.numpy().reshape(4, 4, 4, 4)
    residual = sum(np.sum(np.linalg.svd(slices[:, j, c, :], compute_uv=False)[1:] ** 2)
                   for j in range(4) for c in range(4))
    assert error == pytest.approx(np.sqrt(residual), rel=1e-10)
    assert error <= min(monarch_gradient_error(target, 4, seed) for seed in range(5)) + 1e-8


def test_matches_pyfaust_bbtree():
    fact = pytest.importorskip("pyfaust.fact")
    rng = np.random.default_rng(0)
    for n in (8, 16):
        target = rng.standard_normal((n, n))
        expected = np.linalg.norm(fact.butterfly(target, type="bbtree").toarray() - target) / np.linalg.norm(target)
        fitted = product_of(butterfly_twiddle(torch.tensor(target)), None)
        assert rel_err(fitted, torch.tensor(target)) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("call, argument", [
    (lambda: butterfly_twiddle(torch.zeros(4, 8)), "matrix"),
    (lambda: butterfly_twiddle(torch.zeros(6, 6)), "matrix"),
    (lambda: butterfly_twiddle(torch.zeros(1, 1)), "matrix"),
    (lambda: butterfly_twiddle(torch.zeros(8, 8), tree="comb"), "tree"),
    (lambda: butterfly_factorize(torch.zeros(8, 8), permutation="reverse"), "permutation"),
    (lambda: butterfly_factorize(torch.zeros(8, 8), permutation=torch.zeros(8, dtype=torch.long)), "permutation"),
    (lambda: monarch_projection(torch.zeros(8, 8), 3), "nblocks"),
    (lambda: monarch_projection(torch.zeros(8, 4), 2), "matrix"),
    (lambda: twiddle_to_dense(torch.zeros(3, 3, 2, 2)), "twiddle"),
    (lambda: monarch_to_dense(torch.zeros(2, 2, 2), torch.zeros(2, 4, 4)), "left"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()
