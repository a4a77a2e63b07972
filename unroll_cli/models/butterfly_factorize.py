"""Closed-form projections of a dense matrix onto butterfly and Monarch structures.

Butterfly: the hierarchical SVD factorization of Le, Zheng, Riccietti and Gribonval, "Fast learning of fast
transforms, with guarantees" (ICASSP 2022). Monarch: the projection theorem of Dao et al., "Monarch: Expressive
structured matrices for efficient and accurate training" (ICML 2022).

Twiddle layout (the one of the Butterfly layer): for ``n = 2**L`` a twiddle of shape ``(L, n // 2, 2, 2)`` holds
``L`` sparse factors; with increasing stride factor ``idx`` has stride ``s = 2**idx`` (decreasing: ``2**(L-1-idx)``)
and is applied ``idx``-th, so the matrix is ``F_{L-1} ... F_0``. ``twiddle[idx]`` viewed as ``(n // (2*s), s, 2, 2)``
has entry ``t[g, j, i, k]`` multiplying input ``g*2s + k*s + j`` into output ``g*2s + i*s + j``.

Internally a product of the consecutive factors ``first..last`` (increasing stride) is kept as its *blocks*: a tensor
of shape ``(n // 2**(last+1), 2**first, m, m)``, ``m = 2**(last-first+1)``, whose entry ``[g, j, r, c]`` is the
matrix entry at row ``g*m*2**first + r*2**first + j`` and column ``g*m*2**first + c*2**first + j`` (every other entry
of such a product is zero). For a single factor these blocks are that factor's twiddle.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

TREES = ("balanced", "unbalanced")


def butterfly_twiddle(matrix: torch.Tensor, tree: str = "balanced", increasing_stride: bool = True) -> torch.Tensor:
    """Hierarchical butterfly factorization of a square ``n x n`` matrix (Le et al. 2022, hierarchical method).

    The factor range is split recursively by ``tree`` ("balanced": in the middle; "unbalanced": peeling the last
    applied factor each time, the comb tree) and each split is solved by the two-layer fixed-support factorization
    (Le et al., Algorithm 1; Lemma 2 makes every split exact). Theorem 3: a matrix that is a product of butterfly
    factors is recovered exactly (up to rounding); otherwise this is the projection the algorithm gives, not the
    best butterfly approximation in general. Computed and returned in float64 or complex128, shape
    ``(L, n // 2, 2, 2)`` in the layout of the module docstring.
    """
    dense, depth = _square_power_of_two(matrix, "matrix")
    _check_tree(tree)
    if not increasing_stride:
        # B_dec = G_0^T ... G_{L-1}^T when M^T = G_{L-1} ... G_0 with increasing stride.
        return butterfly_twiddle(dense.T, tree).flip(0).transpose(-1, -2).contiguous()
    return torch.stack(_factorize_range(dense[None, None], 0, depth - 1, tree))


def butterfly_factorize(matrix: torch.Tensor, tree: str = "balanced", permutation: str | torch.Tensor | None = None,
                        increasing_stride: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Butterfly factorization after a fixed input permutation, ``M x ~ B(x[perm])`` (Le et al. 2022).

    ``permutation``: None (identity), "bitrev" (the bit-reversal permutation, as pyfaust's ``perm='bitrev'``; with it
    the DFT is exactly an increasing-stride butterfly, Cooley-Tukey, but not a decreasing-stride one), or a LongTensor
    of the ``n`` indices. ``M P^T = M[:, perm]`` is factorized by :func:`butterfly_twiddle`. Returns the twiddle and
    ``perm`` (None for the identity).
    """
    dense, depth = _square_power_of_two(matrix, "matrix")
    perm = _permutation_indices(permutation, dense.shape[0])
    permuted = dense if perm is None else dense[:, perm]
    return butterfly_twiddle(permuted, tree, increasing_stride), perm


def twiddle_to_dense(twiddle: torch.Tensor, increasing_stride: bool = True) -> torch.Tensor:
    """The ``n x n`` matrix ``F_{L-1} ... F_0`` a twiddle applies (module docstring's layout), for reports/tests."""
    depth = twiddle.shape[0] if twiddle.dim() == 4 else 0
    n = 2 * twiddle.shape[1] if twiddle.dim() == 4 else 0
    if depth == 0 or twiddle.shape[2:] != (2, 2) or n != 2**depth:
        raise ValueError(f"twiddle must have shape (L, 2**(L-1), 2, 2), got {tuple(twiddle.shape)}")
    out = torch.eye(n, dtype=twiddle.dtype, device=twiddle.device)
    for idx in range(depth):
        stride = 2**idx if increasing_stride else 2 ** (depth - 1 - idx)
        out = _apply_factor(twiddle[idx], stride, out)
    return out


def monarch_projection(matrix: torch.Tensor, nblocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best Frobenius approximation ``M ~ P^T L P R`` by a Monarch matrix (Dao et al. 2022, projection theorem).

    Convention (``b = n // nblocks``): ``R`` is applied first, block-diagonal with ``nblocks`` blocks ``b x b``
    (``right``, shape ``(nblocks, b, b)``, acting on ``x.reshape(nblocks, b)`` row by row); ``P`` reshapes a length-n
    vector to ``(nblocks, b)``, transposes and flattens; ``L`` is block-diagonal with ``b`` blocks ``nblocks x nblocks``
    (``left``, shape ``(b, nblocks, nblocks)``; both are ``(nblocks, b, b)`` when ``nblocks**2 == n``). Then
    ``M[c2*b + j, c*b + k] = left[j, c2, c] * right[c, j, k]``: for each ``(j, c)`` the ``nblocks x b`` slice over
    ``(c2, k)`` is rank one, so a batched rank-1 SVD of these disjoint slices is the exact projection.
    """
    dense, _ = _square_matrix(matrix, "matrix")
    n = dense.shape[0]
    if isinstance(nblocks, bool) or not isinstance(nblocks, int) or nblocks < 1 or n % nblocks:
        raise ValueError(f"nblocks must be a positive integer dividing n = {n}, got {nblocks!r}")
    size = n // nblocks
    slices = dense.reshape(nblocks, size, nblocks, size).permute(1, 2, 0, 3)  # [j, c, c2, k]
    u, v = _best_rank_one(slices)
    return u.transpose(1, 2).contiguous(), v.transpose(0, 1).contiguous()


def monarch_to_dense(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The dense ``P^T L P R`` of :func:`monarch_projection`'s factors (same convention), to check or report them."""
    if left.dim() != 3 or right.dim() != 3 or left.shape != (right.shape[1], right.shape[0], right.shape[0]) \
            or right.shape[1] != right.shape[2]:
        raise ValueError(f"left must have shape (b, nblocks, nblocks) and right (nblocks, b, b), "
                         f"got {tuple(left.shape)} and {tuple(right.shape)}")
    nblocks, size = right.shape[0], right.shape[1]
    return torch.einsum("jac,cjk->ajck", left, right).reshape(nblocks * size, nblocks * size)


def bit_reversal(n: int) -> torch.Tensor:
    """Indices of the bit-reversal permutation of ``n = 2**m`` entries, ``x[bit_reversal(n)]``: the input order of
    the radix-2 decimation-in-time FFT (Cooley-Tukey; Dao et al., ICML 2019, Sec. 3.1)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"n must be a power of two, got {n!r}")
    perm = torch.zeros(1, dtype=torch.long)
    while len(perm) < n:
        perm = torch.cat([2 * perm, 2 * perm + 1])
    return perm


def _factorize_range(blocks: torch.Tensor, first: int, last: int, tree: str) -> list[torch.Tensor]:
    """Twiddles ``first..last`` of the product whose blocks are given, by recursive two-layer splits."""
    if first == last:
        return [blocks.reshape(-1, 2, 2)]
    split = (first + last - 1) // 2 if tree == "balanced" else last - 1
    left, right = _two_layer_factorization(blocks, split - first + 1)
    return _factorize_range(right, first, split, tree) + _factorize_range(left, split + 1, last, tree)


def _two_layer_factorization(blocks: torch.Tensor, right_factors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a butterfly product into left and right products (Le et al. 2022, Algorithm 1, all classes at once).

    With the block row ``r = (p2, q)`` and column ``c = (p, q2)`` (``q``, ``q2`` over the ``right_factors`` low bits),
    the rank-one support of the inner index ``(g, j, p, q)`` is the sub-block ``[g, j, (:, q), (p, :)]``; these
    supports are pairwise disjoint (Lemma 2), so each equivalence class is one index and its best rank-1
    approximation (a batched SVD) gives the left column and the right row.
    """
    groups, low, size, _ = blocks.shape
    q = 2**right_factors
    p = size // q
    sub = blocks.reshape(groups, low, p, q, p, q).permute(0, 1, 4, 3, 2, 5)  # [g, j, p, q, p2, q2]
    u, v = _best_rank_one(sub)
    left = u.permute(0, 3, 1, 4, 2).reshape(groups, q * low, p, p)  # [g, (q, j), p2, p]
    right = v.permute(0, 2, 1, 3, 4).reshape(groups * p, low, q, q)  # [(g, p), j, q, q2]
    return left, right


def _best_rank_one(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched best rank-1 approximation ``A ~ u v^T`` by SVD (Eckart-Young), ``sqrt(sigma_1)`` on each side."""
    with _single_threaded():
        u, s, vh = torch.linalg.svd(matrices, full_matrices=False)
    scale = s[..., :1].sqrt().to(matrices.dtype)
    return u[..., :, 0] * scale, vh[..., 0, :] * scale


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Run torch (and its LAPACK) on one thread, restoring the thread count after.

    A batched CPU SVD loops over the small matrices and LAPACK threads each one: on 2 busy cores that measured ~10x
    slower than one thread (a 4096 Hadamard: 22 s against 2.3 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _apply_factor(factor: torch.Tensor, stride: int, x: torch.Tensor) -> torch.Tensor:
    """One butterfly factor (twiddle slice ``(n // 2, 2, 2)``, given stride) applied to the columns of ``x``."""
    n = x.shape[0]
    twiddle = factor.reshape(n // (2 * stride), stride, 2, 2)
    pairs = x.reshape(n // (2 * stride), 2, stride, -1)
    return torch.einsum("gjik,gkjm->gijm", twiddle, pairs).reshape(x.shape)


def _square_matrix(matrix: torch.Tensor, name: str) -> tuple[torch.Tensor, int]:
    """``matrix`` as a float64 / complex128 square tensor, and its size; ValueError naming ``name`` otherwise."""
    dense = torch.as_tensor(matrix)
    if dense.dim() != 2 or dense.shape[0] != dense.shape[1] or dense.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix, got shape {tuple(dense.shape)}")
    dtype = torch.complex128 if dense.is_complex() else torch.float64
    return dense.to(dtype), dense.shape[0]


def _square_power_of_two(matrix: torch.Tensor, name: str) -> tuple[torch.Tensor, int]:
    """Like :func:`_square_matrix`, also requiring ``n = 2**L`` with ``L >= 1``; returns the matrix and ``L``."""
    dense, n = _square_matrix(matrix, name)
    if n < 2 or n & (n - 1):
        raise ValueError(f"{name} size must be a power of two >= 2, got {n}")
    return dense, n.bit_length() - 1


def _check_tree(tree: str) -> None:
    """ValueError naming ``tree`` unless it is one of :data:`TREES`."""
    if tree not in TREES:
        raise ValueError(f"tree must be one of {TREES}, got {tree!r}")


def _permutation_indices(permutation: str | torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The index tensor of ``permutation`` (None, "bitrev" or indices), checked to be a permutation of ``range(n)``."""
    if permutation is None:
        return None
    if isinstance(permutation, str):
        if permutation != "bitrev":
            raise ValueError(f"permutation must be None, 'bitrev' or a LongTensor of indices, got {permutation!r}")
        return bit_reversal(n)
    perm = torch.as_tensor(permutation)
    if perm.dtype != torch.long or perm.shape != (n,) or not torch.equal(perm.sort().values, torch.arange(n)):
        raise ValueError(f"permutation must be a LongTensor permutation of range({n})")
    return perm
