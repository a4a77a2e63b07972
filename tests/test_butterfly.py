"""Butterfly, Monarch and permutation layers against independent dense computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch
from torch.func import functional_call

from unroll_cli.models.butterfly import (
    Butterfly, FixedPermutation, LearnedPermutation, Monarch, bit_reversal, bp_model, dct_butterfly, factorize,
    dft_butterfly, hadamard_butterfly,
)


def slow_factor(block: torch.Tensor, stride: int) -> torch.Tensor:
    """One sparse butterfly factor (n/2, 2, 2), built densely entry by entry from the documented layout."""
    n = 2 * block.shape[0]
    t = block.reshape(n // (2 * stride), stride, 2, 2)
    dense = torch.zeros(n, n, dtype=block.dtype)
    for g in range(n // (2 * stride)):
        for j in range(stride):
            for i in range(2):
                for k in range(2):
                    dense[g * 2 * stride + i * stride + j, g * 2 * stride + k * stride + j] = t[g, j, i, k]
    return dense


def slow_dense(twiddle: torch.Tensor, increasing_stride: bool) -> torch.Tensor:
    """F_{L-1} ... F_0 of one block's twiddle (L, n/2, 2, 2) from explicitly built factors (idx applied idx-th)."""
    depth, n = twiddle.shape[0], 2 ** twiddle.shape[0]  # n = 1 when there is no factor
    out = torch.eye(n, dtype=twiddle.dtype)
    for idx in range(depth):
        stride = 2 ** idx if increasing_stride else 2 ** (depth - 1 - idx)
        out = slow_factor(twiddle[idx], stride) @ out
    return out


def reference_matrix(layer: Butterfly) -> np.ndarray:
    """The layer's matrix as the product of its factors, one at a time, in complex128."""
    twiddle = layer.twiddle.detach().to(torch.complex128)
    nstacks, nblocks = twiddle.shape[:2]
    stacks = []
    for stack in range(nstacks):
        product = torch.eye(layer.n, dtype=torch.complex128)
        for block in range(nblocks):
            increasing = (block % 2 == 0) == layer.increasing_stride
            product = slow_dense(twiddle[stack, block], increasing) @ product
        stacks.append(product)
    return torch.cat(stacks).numpy()[:layer.out_features, :layer.in_features]


def in_float64(layer: torch.nn.Module, complex: bool = False) -> torch.nn.Module:
    return layer.to(torch.complex128) if complex else layer.double()


@pytest.mark.filterwarnings("ignore:Complex modules")
@pytest.mark.parametrize("in_features, out_features, nblocks, increasing, complex", [
    (16, 16, 1, True, False), (16, 16, 1, False, True), (12, 40, 2, True, True), (5, 7, 3, False, False),
    (100, 70, 2, False, False), (64, 64, 2, True, False), (2, 2, 2, True, True), (1, 3, 1, True, False),
    (128, 300, 3, False, True),
])
def test_butterfly_equals_product_of_its_factors(in_features, out_features, nblocks, increasing, complex):
    torch.manual_seed(0)
    layer = in_float64(Butterfly(in_features, out_features, nblocks=nblocks, increasing_stride=increasing,
                                 complex=complex), complex)
    expected = reference_matrix(layer)
    x = torch.randn(2, 3, in_features, dtype=torch.float64)
    out = layer(x).detach().numpy()
    assert out.shape == (2, 3, out_features)
    np.testing.assert_allclose(out, x.numpy() @ expected.T + layer.bias.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(layer.dense_matrix().detach().numpy(), expected, atol=1e-12)


def test_twiddle_shape_and_inits():
    torch.manual_seed(0)
    layer = Butterfly(300, 1000, nblocks=2)
    assert layer.twiddle.shape == (2, 2, 9, 256, 2, 2) and layer.bias.shape == (1000,)
    big = Butterfly(1024, 1024, nblocks=4, bias=False).twiddle.detach()
    assert abs(big.var().item() - 0.5) < 0.02
    big_complex = Butterfly(1024, 1024, nblocks=4, complex=True).twiddle.detach()
    assert big_complex.dtype == torch.complex64
    assert abs(big_complex.real.var().item() - 0.25) < 0.01 and abs(big_complex.imag.var().item() - 0.25) < 0.01
    for complex in (False, True):
        blocks = Butterfly(8, 8, init="ortho", complex=complex).twiddle.detach().to(torch.complex128)
        assert blocks.is_contiguous()
        np.testing.assert_allclose(blocks @ blocks.mT.conj(), np.broadcast_to(np.eye(2), blocks.shape), atol=1e-6)
    identity = Butterfly(6, 14, init="identity", bias=False).dense_matrix().detach()
    np.testing.assert_array_equal(identity, np.vstack([np.eye(8), np.eye(8)])[:14, :6])
    loaded = torch.randn(1, 1, 3, 4, 2, 2)
    np.testing.assert_array_equal(Butterfly(8, 8, init=loaded).twiddle.detach(), loaded)


@pytest.mark.parametrize("kwargs, word", [
    (dict(in_features=0, out_features=4), "in_features"), (dict(in_features=4, out_features=-1), "out_features"),
    (dict(in_features=4, out_features=4, nblocks=0), "nblocks"),
    (dict(in_features=4, out_features=4, init="foo"), "init"),
    (dict(in_features=4, out_features=4, init="fft"), "fft"),
    (dict(in_features=4, out_features=4, init=torch.zeros(1, 1, 2, 2, 2)), "init"),
])
def test_butterfly_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Butterfly(**kwargs)


def test_other_bad_arguments():
    for call, word in [(lambda: Monarch(4, 4, nblocks=0), "nblocks"), (lambda: Monarch(0, 4), "in_features"),
                       (lambda: LearnedPermutation(6), "n"), (lambda: bit_reversal(12), "n"),
                       (lambda: FixedPermutation(torch.tensor([0, 0, 1])), "indices"),
                       (lambda: bp_model(8, kind="PB"), "kind"), (lambda: dct_butterfly(1), "n")]:
        with pytest.raises(ValueError, match=word):
            call()


def test_bit_reversal():
    for n in (1, 2, 8, 64):
        bits = n.bit_length() - 1
        expected = [int(format(i, f"0{bits}b")[::-1], 2) if bits else 0 for i in range(n)]
        assert bit_reversal(n).tolist() == expected


@pytest.mark.parametrize("n", [8, 16, 32, 64, 128, 256, 512, 1024])
def test_fft_init_is_the_unitary_dft(n):
    torch.manual_seed(0)
    x = torch.randn(3, n, dtype=torch.complex64)
    expected = torch.fft.fft(x, norm="ortho")
    layer = Butterfly(n, n, bias=False, complex=True, init="fft")
    torch.testing.assert_close(layer(x[..., bit_reversal(n)]), expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(dft_butterfly(n)(x), expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 8, 64, 256])
def test_hadamard_butterfly(n):
    np.testing.assert_allclose(hadamard_butterfly(n).dense_matrix().detach().numpy(),
                               scipy.linalg.hadamard(n) / math.sqrt(n), atol=1e-6)


@pytest.mark.parametrize("n", [2, 4, 8, 32, 128, 1024])
def test_dct_butterfly_is_the_orthonormal_dct2(n):
    x = torch.randn(3, n)
    np.testing.assert_allclose(dct_butterfly(n)(x).detach().numpy(), scipy.fft.dct(x.numpy(), norm="ortho"),
                               atol=2e-6)


def monarch_reference(layer: Monarch) -> np.ndarray:
    """P^T L P R built densely, P the reshape-transpose (nblocks, b) -> (b, nblocks)."""
    nblocks, b, n = layer.nblocks, layer.block_size, layer.n
    right = scipy.linalg.block_diag(*layer.right.detach().numpy())
    left = scipy.linalg.block_diag(*layer.left.detach().numpy())
    perm = np.zeros((n, n))
    for g in range(nblocks):
        for j in range(b):
            perm[j * nblocks + g, g * b + j] = 1
    return (perm.T @ left @ perm @ right)[:layer.out_features, :layer.in_features]


@pytest.mark.parametrize("in_features, out_features, nblocks, block_size", [
    (16, 16, None, 4), (10, 10, None, 4), (12, 20, 5, 4), (30, 7, 4, 8), (7, 30, 3, 10), (1, 1, None, 1),
])
def test_monarch_equals_its_factors(in_features, out_features, nblocks, block_size):
    torch.manual_seed(0)
    layer = Monarch(in_features, out_features, nblocks=nblocks).double()
    assert layer.block_size == block_size
    assert layer.left.shape == layer.right.shape == (layer.nblocks, block_size, block_size)
    expected = monarch_reference(layer)
    x = torch.randn(4, in_features, dtype=torch.float64)
    np.testing.assert_allclose(layer(x).detach().numpy(), x.numpy() @ expected.T + layer.bias.detach().numpy(),
                               atol=1e-12)
    np.testing.assert_allclose(layer.dense_matrix().detach().numpy(), expected, atol=1e-12)


def permutation_matrix(module: torch.nn.Module, n: int) -> torch.Tensor:
    """Row i of the result is the module applied to e_i, so x @ result = module(x)."""
    return module(torch.eye(n, dtype=torch.float64)).detach()


def test_learned_permutation_frozen_and_relaxed():
    torch.manual_seed(0)
    n = 32
    module = LearnedPermutation(n).double()
    assert module.logit.shape == (4, 3)
    relaxed = permutation_matrix(module, n)  # convex combination of permutations: doubly stochastic
    torch.testing.assert_close(relaxed.sum(0), torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(relaxed.sum(1), torch.ones(n, dtype=torch.float64))
    assert (relaxed.round() != relaxed).any()
    hard = module.hard()
    with torch.no_grad():
        module.logit.copy_(torch.where(module.logit > 0, math.inf, -math.inf))
    at_infinity = permutation_matrix(module, n)
    frozen = permutation_matrix(module.freeze(), n)
    assert sorted(frozen.argmax(0).tolist()) == list(range(n)) and frozen.sum() == n
    assert set(frozen.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(at_infinity, frozen, rtol=0, atol=0)
    torch.testing.assert_close(permutation_matrix(hard, n), frozen, rtol=0, atol=0)


def test_learned_permutation_definition():
    n = 8
    module = LearnedPermutation(n)
    with torch.no_grad():  # even/odd separation at every level only: the bit reversal
        module.logit.copy_(torch.tensor([[math.inf, -math.inf, -math.inf]] * 2))
    assert module.hard().indices.tolist() == bit_reversal(n).tolist()
    with torch.no_grad():  # top level: separate, then reverse the second half; level 4: reverse the first halves
        module.logit.copy_(torch.tensor([[math.inf, -math.inf, math.inf], [-math.inf, math.inf, -math.inf]]))
    # [0..7] -> [0 2 4 6 | 1 3 5 7] -> [0 2 4 6 | 7 5 3 1] -> [2 0 4 6 | 5 7 3 1]
    assert module.hard().indices.tolist() == [2, 0, 4, 6, 5, 7, 3, 1]
    assert module(torch.arange(8.0)).tolist() == [2, 0, 4, 6, 5, 7, 3, 1]


@pytest.mark.filterwarnings("ignore:Complex modules")
def test_bp_models():
    torch.manual_seed(0)
    x = torch.randn(5, 16)
    for kind, letters in (("BP", "PB"), ("BPP", "PPB"), ("BPBP", "PBPB")):
        model = bp_model(16, kind=kind, complex=True)
        assert "".join("P" if isinstance(m, LearnedPermutation) else "B" for m in model) == letters
        assert model(x).shape == (5, 16) and model(x).is_complex()


def gradcheck_module(module: torch.nn.Module, x: torch.Tensor) -> bool:
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def call(x, *values):
        return functional_call(module, dict(zip(names, values)), (x,))
    return torch.autograd.gradcheck(call, (x.requires_grad_(), *params))


@pytest.mark.filterwarnings("ignore:Complex modules")
def test_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64)
    assert gradcheck_module(Butterfly(6, 10, nblocks=2).double(), x)
    assert gradcheck_module(Butterfly(6, 5, increasing_stride=False, complex=True).to(torch.complex128),
                            x.to(torch.complex128))
    assert gradcheck_module(Monarch(6, 10, nblocks=3).double(), x)
    assert gradcheck_module(LearnedPermutation(8).double(), torch.randn(3, 8, dtype=torch.float64))


def test_learns_the_hadamard_transform():
    """Dao et al. 2019 (Sec. 4.1): a butterfly recovers the Hadamard transform, here N = 16."""
    torch.manual_seed(0)
    n = 16
    target = torch.tensor(scipy.linalg.hadamard(n) / math.sqrt(n))
    layer = Butterfly(n, n, bias=False, init="ortho").double()
    assert (layer.dense_matrix() - target).norm() / n > 0.1
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = (layer.dense_matrix() - target).pow(2).sum()
        loss.backward()
        optimizer.step()
    assert (layer.dense_matrix() - target).norm() / n < 1e-4


# ----------------------------------------------------------------------------- factorize
@pytest.mark.parametrize("tree", ["balanced", "unbalanced"])
def test_factorize_returns_a_butterfly_equal_to_hadamard_and_to_the_dft(tree):
    n = 64
    hadamard = torch.tensor(scipy.linalg.hadamard(n) / np.sqrt(n))
    layer = factorize(hadamard, tree)
    assert isinstance(layer, Butterfly) and layer.bias is None and layer.twiddle.dtype == torch.float32
    torch.testing.assert_close(layer.dense_matrix().double(), hadamard, atol=1e-6, rtol=0)
    dft = factorize(torch.tensor(np.fft.fft(np.eye(n), norm="ortho")), tree, permutation="bitrev")
    x = torch.randn(5, n, dtype=torch.complex64)
    torch.testing.assert_close(dft(x), torch.fft.fft(x, norm="ortho"), atol=1e-5, rtol=0)


def test_a_permutation_must_cover_the_padded_inputs():
    with pytest.raises(ValueError, match="permutation"):
        Butterfly(6, 6, permutation=torch.arange(6))
