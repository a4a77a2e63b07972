"""Structured linear layers: butterfly and Monarch matrices, learnable permutations.

* ``Butterfly``: products of ``log2 n`` sparse butterfly factors (Dao, Gu, Eichhorn, Rudra & Ré,
  "Learning Fast Algorithms for Linear Transforms Using Butterfly Factorizations", ICML 2019,
  Sec. 3), stacked as the kaleidoscope product ``B B* ...`` when ``nblocks > 1`` (Dao et al.,
  "Kaleidoscope", ICLR 2020), laid out like the authors' ``torch_butterfly.Butterfly``.
* ``Monarch``: ``P^T L P R`` with block-diagonal ``L``, ``R`` (Dao et al., "Monarch: Expressive
  Structured Matrices for Efficient and Accurate Training", ICML 2022, Def. 3.1).
* ``bit_reversal``, ``FixedPermutation``, ``LearnedPermutation`` and ``bp_model``: the permutation
  part of the BP / BPP / BPBP models of Dao et al. 2019 (Sec. 3.2, Fig. 2).
* ``hadamard_butterfly``, ``dft_butterfly``, ``dct_butterfly``: exact butterfly constructions of
  the orthonormal Hadamard, DFT (Cooley-Tukey, ICML 2019 Sec. 3.1) and DCT-II (Makhoul 1980).

Fast multiply: the factors of one butterfly with strides ``1 .. 2**(k-1)`` act on contiguous
chunks of ``2**k`` entries, so their product is block diagonal; the factors with strides
``2**k .. n/2`` are block diagonal after the reshape-transpose permutation. A butterfly is thus
two batched matmuls with blocks of about ``sqrt(n)`` (the Monarch form of a butterfly, Dao et al.
2022, Sec. 3.2); the blocks are built from the twiddle on every call and autograd does the rest.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unroll_cli.models.butterfly_factorize import bit_reversal, butterfly_factorize

INITS = ("randn", "ortho", "identity", "fft")
BP_KINDS = ("BP", "BPP", "BPBP")


def _check_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_power_of_two(name: str, value) -> None:
    _check_size(name, value)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value}")


def _ceil_log2(size: int) -> int:
    return (size - 1).bit_length()


def _complex_dtype() -> torch.dtype:
    """The complex dtype matching the default float dtype (complex64 for float32)."""
    return torch.promote_types(torch.get_default_dtype(), torch.complex64)


def _uniform(shape: tuple[int, ...], bound: float, dtype: torch.dtype) -> Tensor:
    """U(-bound, bound) entries; real and imaginary parts drawn separately when complex."""
    def draw() -> Tensor:
        return torch.empty(shape, dtype=torch.float64).uniform_(-bound, bound)
    return (torch.complex(draw(), draw()) if dtype.is_complex else draw()).to(dtype)


def _haar_2x2(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Haar-random orthogonal (real) or unitary (complex) 2x2 matrices of batch ``shape``:
    QR of a Gaussian matrix with the phases of R's diagonal moved into Q (Mezzadri 2007)."""
    q, r = torch.linalg.qr(torch.randn(*shape, 2, 2, dtype=dtype))
    diag = torch.diagonal(r, dim1=-2, dim2=-1)
    return q * (diag / diag.abs()).unsqueeze(-2)


def _fft_twiddle(log_n: int) -> Tensor:
    """(log_n, n/2, 2, 2) complex128 twiddles of the radix-2 decimation-in-time FFT, each factor
    ``[[1, w^j], [1, -w^j]] / sqrt(2)`` with ``w = exp(-2 pi i / 2s)`` at stride ``s``."""
    n = 1 << log_n
    factors = []
    for idx in range(log_n):
        stride = 1 << idx
        w = torch.exp(-1j * math.pi * torch.arange(stride, dtype=torch.float64) / stride)
        one = torch.ones_like(w)
        rows = torch.stack([torch.stack([one, w], -1), torch.stack([one, -w], -1)], -2)
        factors.append(rows.repeat(n // (2 * stride), 1, 1) / math.sqrt(2))
    return torch.stack(factors).reshape(log_n, n // 2, 2, 2)


def _factor_product(twiddle: Tensor, log_strides: list[int | None], n: int, low_bits: int, low: bool,
                    increasing: bool) -> Tensor:
    """Block matrices of the product of the butterfly factors ``twiddle[:, idx]`` whose log2
    strides ``log_strides[idx]`` are given (``None``: not in this group).

    ``twiddle`` is one block ``(nstacks, log_n, n/2, 2, 2)``. With ``m = 2**low_bits``: the
    factors of stride ``< m`` (``low``) give ``n/m`` diagonal blocks ``(m, m)`` on contiguous
    chunks; those of stride ``>= m`` give, for each residue ``c`` modulo ``m``, a block
    ``(n/m, n/m)`` on the entries ``a*m + c``. The product is grown by doubling: the product
    ``P`` of the factors of in-block stride ``< J`` has diagonal sub-blocks of size ``J``, and
    ``F_J P`` (factors applied with increasing stride) or ``P F_J`` (decreasing) has sub-blocks
    of size ``2J``, each entry one twiddle times one entry of ``P`` (elementwise products only).
    Returns ``(nstacks, blocks, size, size)``.
    """
    nstacks, m = twiddle.shape[0], 1 << low_bits
    b_hi, b_lo, size = (n // m, 1, m) if low else (1, m, n // m)
    # P as (nstacks, b_hi, b_lo, sub-blocks, J, J), starting from the identity with J = 1
    prod = torch.ones(nstacks, b_hi, b_lo, size, 1, 1, dtype=twiddle.dtype, device=twiddle.device)
    by_stride = sorted((s, idx) for idx, s in enumerate(log_strides) if s is not None)
    for log_stride, idx in by_stride:
        j = (1 << log_stride) // (1 if low else m)  # stride inside one block
        # t[z, b, l, h, i, k, r]: 2x2 block (i, k) acting on in-block entries h*2J + (i|k)*J + r
        t = twiddle[:, idx].reshape(nstacks, b_hi, size // (2 * j), j, b_lo, 2, 2).permute(0, 1, 4, 2, 5, 6, 3)
        pairs = prod.reshape(nstacks, b_hi, b_lo, size // (2 * j), 2, j, j)
        if increasing:  # new[.., h, i, r, k, c] = t[.., h, i, k, r] * P[.., h, k, r, c]
            prod = t.transpose(-1, -2).unsqueeze(-1) * pairs.transpose(4, 5).unsqueeze(4)
        else:  # new[.., h, i, r, k, c] = P[.., h, i, r, c] * t[.., h, i, k, c]
            prod = pairs.unsqueeze(-2) * t.unsqueeze(5)
        prod = prod.reshape(nstacks, b_hi, b_lo, size // (2 * j), 2 * j, 2 * j)
    return prod.reshape(nstacks, b_hi * b_lo, size, size)


def _merge_adjacent(groups: list[tuple[bool, Tensor]]) -> list[tuple[bool, Tensor]]:
    """Multiply consecutive groups of the same layout into one (e.g. ``B`` then ``B*``)."""
    merged: list[tuple[bool, Tensor]] = []
    for low, mats in groups:
        if merged and merged[-1][0] == low:
            mats = mats @ merged.pop()[1]
        merged.append((low, mats))
    return merged


def _apply_group(cols: Tensor, low: bool, mats: Tensor, low_bits: int) -> Tensor:
    """One batched matmul of a block-diagonal group on columns ``(nstacks, n, batch)``."""
    nstacks, n, batch = cols.shape
    chunks = cols.reshape(nstacks, n >> low_bits, 1 << low_bits, batch)
    if low:
        return (mats @ chunks).reshape(nstacks, n, batch)
    return (mats @ chunks.transpose(1, 2)).transpose(1, 2).reshape(nstacks, n, batch)


class _StructuredLinear(nn.Module):
    """Shared ``nn.Linear`` interface: ``(..., in_features) -> (..., out_features)`` plus bias.
    Inputs are cast to the parameters' dtype, so a complex layer takes real inputs."""

    def _init_bias(self, bias: bool, dtype: torch.dtype) -> None:
        bound = 1 / math.sqrt(self.in_features)  # nn.Linear's default bias range
        self.bias = nn.Parameter(_uniform((self.out_features,), bound, dtype)) if bias else None

    def _padded_columns(self, x: Tensor, n: int) -> Tensor:
        """``(batch, in_features)`` rows -> zero-padded columns ``(n, batch)`` (a view if no pad)."""
        return F.pad(x, (0, n - self.in_features)).t() if n > self.in_features else x.t()

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        out = self._multiply(x.reshape(-1, self.in_features).to(self._dtype()))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def dense_matrix(self) -> Tensor:
        """The ``(out_features, in_features)`` matrix the layer applies (bias excluded)."""
        eye = torch.eye(self.in_features, dtype=self._dtype(), device=self._device())
        return self._multiply(eye).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Butterfly(_StructuredLinear):
    """Butterfly matrix layer, a drop-in for ``nn.Linear`` (Dao et al., ICML 2019, Sec. 3;
    ``nblocks > 1`` is the kaleidoscope product of Dao et al., ICLR 2020, Sec. 3).

    The input is zero-padded to ``n = 2**ceil(log2 in_features)``; ``nstacks = ceil(out/n)``
    independent butterflies are concatenated and truncated to ``out_features``. The parameter
    ``twiddle`` ``(nstacks, nblocks, log_n, n/2, 2, 2)`` holds, for block ``b`` and factor
    ``idx`` of stride ``s``, viewed as ``(n/2s, s, 2, 2)``: ``t[g, j, i, k]`` multiplies input
    ``g*2s + k*s + j`` into output ``g*2s + i*s + j``. Blocks are applied in order; block ``b``
    has increasing strides ``s = 2**idx`` when ``increasing_stride == (b is even)``, else
    ``s = 2**(log_n-1-idx)``; factors ``idx = 0, 1, ...`` are applied in that order.

    ``init``: "randn" (real entries N(0, 1/2); complex: real and imaginary parts N(0, 1/4)),
    "ortho" (Haar-random orthogonal / unitary 2x2 blocks), "identity", "fft" (complex,
    increasing stride, one block: the unitary FFT after ``bit_reversal``), or a tensor of the
    twiddle's shape (copied in). ``permutation``: indices of the ``n`` padded inputs, applied first
    (``x[..., permutation]``, e.g. ``bit_reversal(n)``), as :func:`factorize` returns them.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, nblocks: int = 1,
                 increasing_stride: bool = True, init: str | Tensor = "randn", complex: bool = False,
                 permutation: Tensor | None = None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features), ("nblocks", nblocks)):
            _check_size(name, value)
        self.in_features, self.out_features = in_features, out_features
        self.nblocks, self.increasing_stride, self.complex = nblocks, increasing_stride, complex
        self.log_n = _ceil_log2(in_features)
        self.n = 1 << self.log_n
        self.nstacks = -(-out_features // self.n)
        dtype = _complex_dtype() if complex else torch.get_default_dtype()
        self.twiddle = nn.Parameter(self._initial_twiddle(init, dtype).contiguous())
        self._init_bias(bias, dtype)
        self.permutation = None if permutation is None else FixedPermutation(permutation)
        if self.permutation is not None and len(self.permutation.indices) != self.n:
            raise ValueError(f"permutation must permute the n={self.n} padded inputs, "
                             f"got {len(self.permutation.indices)} indices")

    def _initial_twiddle(self, init: str | Tensor, dtype: torch.dtype) -> Tensor:
        shape = (self.nstacks, self.nblocks, self.log_n, self.n // 2, 2, 2)
        if isinstance(init, Tensor):
            if tuple(init.shape) != shape:
                raise ValueError(f"init tensor must have the twiddle's shape {shape}, got {tuple(init.shape)}")
            if init.is_complex() and not self.complex:
                raise ValueError("init is a complex tensor but complex=False")
            return init.detach().to(dtype).clone()
        if init == "randn":
            return torch.randn(shape, dtype=dtype) / math.sqrt(2)
        if init == "ortho":
            return _haar_2x2(shape[:-2], dtype)
        if init == "identity":
            return torch.eye(2, dtype=dtype).expand(shape).clone()
        if init == "fft":
            if not (self.complex and self.increasing_stride and self.nblocks == 1):
                raise ValueError('init="fft" needs complex=True, increasing_stride=True and nblocks=1')
            return _fft_twiddle(self.log_n).to(dtype).expand(shape).clone()
        raise ValueError(f"init must be one of {INITS} or a tensor, got {init!r}")

    def _dtype(self) -> torch.dtype:
        return self.twiddle.dtype

    def _device(self) -> torch.device:
        return self.twiddle.device

    def _groups(self) -> list[tuple[bool, Tensor]]:
        """The layer as a sequence of block-diagonal groups ``(low, matrices)`` (see module doc)."""
        low_bits = self.log_n // 2
        groups = []
        for block in range(self.nblocks):
            increasing = (block % 2 == 0) == self.increasing_stride
            log_strides = [idx if increasing else self.log_n - 1 - idx for idx in range(self.log_n)]
            for is_low in (True, False) if increasing else (False, True):
                strides = [s if (s < low_bits) == is_low else None for s in log_strides]
                if any(s is not None for s in strides):
                    mats = _factor_product(self.twiddle[:, block], strides, self.n, low_bits, is_low, increasing)
                    groups.append((is_low, mats))
        return _merge_adjacent(groups)

    def _multiply(self, x: Tensor) -> Tensor:
        cols = self._padded_columns(x, self.n)
        if self.permutation is not None:
            cols = cols[self.permutation.indices]
        cols = cols.expand(self.nstacks, *cols.shape)
        for low, mats in self._groups():
            cols = _apply_group(cols, low, mats, self.log_n // 2)
        return cols.permute(2, 0, 1).reshape(-1, self.nstacks * self.n)[:, :self.out_features]

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, nblocks={self.nblocks}, "
                f"increasing_stride={self.increasing_stride}, complex={self.complex}")


class Monarch(_StructuredLinear):
    """Monarch layer ``M = P^T L P R`` (Dao et al., ICML 2022, Def. 3.1), a drop-in for ``nn.Linear``.

    ``R`` (``right``) and ``L`` (``left``) are block diagonal with ``nblocks`` blocks ``(b, b)``
    and ``P`` is the reshape-transpose permutation ``(nblocks, b) -> (b, nblocks)``. Sizes:
    ``b = ceil(max(in, out) / nblocks)``, ``n = nblocks * b``; the input is zero-padded to ``n``
    and the output truncated to ``out_features`` (no stacking, so one ``n x n`` Monarch serves
    any shape). ``nblocks=None`` takes ``nblocks = b = ceil(sqrt(max(in, out)))``, the paper's
    ``n = m**2`` case where ``P`` is an involution and every input reaches every output.
    Both factors start with nn.Linear's default ``U(-1/sqrt(b), 1/sqrt(b))`` entries.
    """

    def __init__(self, in_features: int, out_features: int, nblocks: int | None = None, bias: bool = True):
        super().__init__()
        _check_size("in_features", in_features)
        _check_size("out_features", out_features)
        size = max(in_features, out_features)
        if nblocks is None:
            nblocks = block_size = math.isqrt(size - 1) + 1
        else:
            _check_size("nblocks", nblocks)
            block_size = -(-size // nblocks)
        self.in_features, self.out_features = in_features, out_features
        self.nblocks, self.block_size = nblocks, block_size
        self.n = nblocks * self.block_size
        shape, bound = (nblocks, self.block_size, self.block_size), 1 / math.sqrt(self.block_size)
        dtype = torch.get_default_dtype()
        self.left = nn.Parameter(_uniform(shape, bound, dtype))
        self.right = nn.Parameter(_uniform(shape, bound, dtype))
        self._init_bias(bias, dtype)

    def _dtype(self) -> torch.dtype:
        return self.right.dtype

    def _device(self) -> torch.device:
        return self.right.device

    def _multiply(self, x: Tensor) -> Tensor:
        nblocks, b = self.nblocks, self.block_size
        cols = self._padded_columns(x, self.n)
        cols = self.right @ cols.reshape(nblocks, b, -1)  # R
        cols = cols.transpose(0, 1).reshape(nblocks, b, -1)  # P
        cols = self.left @ cols  # L
        cols = cols.reshape(b, nblocks, -1).transpose(0, 1)  # P^T
        return cols.reshape(self.n, -1)[:self.out_features].t()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nblocks={self.nblocks}, block_size={self.block_size}"


class FixedPermutation(nn.Module):
    """``x[..., indices]``: a permutation fixed at construction (e.g. ``bit_reversal`` or a frozen
    ``LearnedPermutation``), kept as a buffer so it follows ``.to(device)``."""

    def __init__(self, indices: Tensor):
        super().__init__()
        indices = torch.as_tensor(indices, dtype=torch.long)
        if indices.dim() != 1 or not torch.equal(indices.sort().values, torch.arange(len(indices))):
            raise ValueError(f"indices must be a permutation of 0..n-1, got {indices.tolist()}")
        self.register_buffer("indices", indices)

    def forward(self, x: Tensor) -> Tensor:
        return x[..., self.indices]


def _relaxed_level(x: Tensor, size: int, prob: Tensor) -> Tensor:
    """One recursion level on chunks of ``size``: even/odd separation, then reversal of the
    first and of the second half, each a convex combination with weight ``prob[0..2]``."""
    lead = x.shape[:-1]
    chunks = x.reshape(*lead, -1, size)
    separated = chunks.reshape(*lead, -1, size // 2, 2).transpose(-1, -2).reshape(chunks.shape)
    chunks = (1 - prob[0]) * chunks + prob[0] * separated
    halves = chunks.reshape(*lead, -1, 2, size // 2)
    weight = prob[1:].unsqueeze(-1)
    return ((1 - weight) * halves + weight * halves.flip(-1)).reshape(x.shape)


class LearnedPermutation(nn.Module):
    """The relaxed learnable permutation of Dao et al., ICML 2019 (Sec. 3.2, Fig. 2).

    ``P = diag(P_{n/2}, P_{n/2}) P_n`` recursively: the step ``P_n`` on chunks of ``n`` makes
    three binary choices (separate even and odd entries; reverse the first half; reverse the
    second half), each relaxed to ``(1 - p) I + p Perm`` with ``p = sigmoid(logit)``. Levels run
    from chunks of ``n`` down to chunks of 4 (chunks of 2 allow no choice): ``logit`` is
    ``(log2 n - 1, 3)``, randn-initialised as in the authors' code. ``freeze()`` rounds the
    probabilities, making the module an exact permutation; ``hard()`` returns it as a
    ``FixedPermutation``.
    """

    def __init__(self, n: int):
        super().__init__()
        _check_power_of_two("n", n)
        self.n = n
        self.logit = nn.Parameter(torch.randn(max(n.bit_length() - 2, 0), 3))
        self.frozen = False

    def probabilities(self) -> Tensor:
        """``sigmoid(logit)`` per level, rounded to 0/1 once frozen."""
        prob = torch.sigmoid(self.logit)
        return prob.round() if self.frozen else prob

    def freeze(self) -> LearnedPermutation:
        """Round the probabilities from now on (the paper's final hard permutation)."""
        self.frozen = True
        self.logit.requires_grad_(False)
        return self

    def _permute(self, x: Tensor, prob: Tensor) -> Tensor:
        for level, level_prob in enumerate(prob):
            x = _relaxed_level(x, self.n >> level, level_prob.to(x.real.dtype))
        return x

    def hard(self) -> FixedPermutation:
        """The permutation with rounded probabilities, as indices."""
        with torch.no_grad():
            source = torch.arange(self.n, dtype=torch.float64, device=self.logit.device)
            indices = self._permute(source, torch.sigmoid(self.logit).round()).round().long()
        return FixedPermutation(indices.cpu())

    def forward(self, x: Tensor) -> Tensor:
        return self._permute(x, self.probabilities())

    def extra_repr(self) -> str:
        return f"n={self.n}, frozen={self.frozen}"


def bp_model(n: int, kind: str = "BP", complex: bool = False) -> nn.Sequential:
    """The BP / BPP / BPBP models of Dao et al., ICML 2019 (Sec. 4.1): learned permutations ``P``
    and ortho-initialised square butterflies ``B``, read as matrix products (``BP`` applies ``P``
    first)."""
    if kind not in BP_KINDS:
        raise ValueError(f"kind must be one of {BP_KINDS}, got {kind!r}")
    _check_power_of_two("n", n)
    make = {"P": lambda: LearnedPermutation(n),
            "B": lambda: Butterfly(n, n, bias=False, init="ortho", complex=complex)}
    return nn.Sequential(*(make[letter]() for letter in reversed(kind)))


def hadamard_butterfly(n: int) -> Butterfly:
    """The orthonormal Sylvester-Hadamard matrix ``H_n / sqrt(n)`` as a Butterfly: every 2x2
    block is ``[[1, 1], [1, -1]] / sqrt(2)``, since ``H_n = H_2 (x) ... (x) H_2`` (Dao et al. 2019,
    Sec. 4.1 target "Hadamard")."""
    _check_power_of_two("n", n)
    log_n = n.bit_length() - 1
    block = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2)
    return Butterfly(n, n, bias=False, init=block.expand(1, 1, log_n, n // 2, 2, 2))


def dft_butterfly(n: int) -> nn.Sequential:
    """The unitary DFT (``torch.fft.fft(x, norm="ortho")``) as bit reversal then the FFT-init
    complex Butterfly: the Cooley-Tukey factorization ``F_n = B_n P_n`` (Dao et al. 2019, Sec. 3.1)."""
    _check_power_of_two("n", n)
    return nn.Sequential(FixedPermutation(bit_reversal(n)),
                         Butterfly(n, n, bias=False, complex=True, init="fft"))


class _RealPart(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.real


def dct_butterfly(n: int) -> nn.Sequential:
    """The orthonormal DCT-II (``scipy.fft.dct(x, norm="ortho")``) for real inputs (Makhoul, IEEE
    TASSP 1980; the DCT target of Dao et al. 2019, Sec. 4.1).

    ``v = (x_0, x_2, ..., x_{n-2}, x_{n-1}, ..., x_3, x_1)``; ``y_k = c_k Re(exp(-i pi k / 2n)
    (F v)_k)`` with ``F`` the unitary DFT, ``c_0 = 1`` and ``c_k = sqrt(2)``. Modules: one fixed
    permutation (the reordering composed with bit reversal), one complex Butterfly (FFT twiddles
    with the diagonal ``c_k exp(-i pi k / 2n)`` folded into the last factor's rows) and the real
    part. Needs ``n >= 2``.
    """
    _check_power_of_two("n", n)
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    order = torch.arange(n)
    order = torch.cat([order[::2], order[1::2].flip(0)])
    k = torch.arange(n, dtype=torch.float64)
    diag = torch.exp(-1j * math.pi * k / (2 * n)) * torch.where(k == 0, 1.0, math.sqrt(2))
    twiddle = _fft_twiddle(n.bit_length() - 1)
    twiddle[-1] *= diag.reshape(2, n // 2).t().unsqueeze(-1)  # row i*n/2 + j of the last factor
    butterfly = Butterfly(n, n, bias=False, complex=True, init=twiddle[None, None])
    return nn.Sequential(FixedPermutation(order[bit_reversal(n)]), butterfly, _RealPart())


def factorize(matrix: Tensor, tree: str = "balanced", permutation: str | Tensor | None = None,
              increasing_stride: bool = True) -> Butterfly:
    """The hierarchical SVD butterfly factorization of a square ``n x n`` matrix (``n`` a power of two;
    Le, Zheng, Riccietti & Gribonval, ICASSP 2022) as a bias-free ``Butterfly`` whose ``dense_matrix()``
    is the factorization: exact on butterfly products (the normalised Hadamard; the DFT with
    ``permutation="bitrev"``), the algorithm's projection otherwise. ``tree`` and ``permutation``: see
    :func:`unroll_cli.models.butterfly_factorize.butterfly_factorize`. The layer has the default float
    (or matching complex) dtype."""
    twiddle, perm = butterfly_factorize(matrix, tree, permutation, increasing_stride)
    n = twiddle.shape[1] * 2
    return Butterfly(n, n, bias=False, increasing_stride=increasing_stride, init=twiddle[None, None],
                     complex=twiddle.is_complex(), permutation=perm)
