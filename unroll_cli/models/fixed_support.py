"""Two-layer sparse matrix factorization with fixed supports (FSMF), where it is tractable.

Le, Riccietti & Gribonval, "Spurious valleys, NP-hardness, and tractability of sparse matrix factorization with
fixed support", SIAM J. Matrix Anal. Appl. 2023, Algorithm 1: minimise ``||A - X Y||_F`` over ``X`` (``m x r``) and
``Y`` (``r x n``) with ``supp(X) ⊆ I`` and ``supp(Y) ⊆ J``. Column ``k`` of ``X`` times row ``k`` of ``Y`` is
supported on the rank-one support ``S_k = I_k x J_k`` (``I_k``: column ``k`` of ``I``, ``J_k``: row ``k`` of
``J``). The indices with the same rank-one support form an equivalence class ``P``; when the classes' supports are
pairwise disjoint, the problem splits into one problem per class, ``A[S_P] ~ X[I_P, P] Y[P, J_P]``, which is the best
rank-``|P|`` approximation of that block (a truncated SVD, Eckart-Young). The result is then a global optimum.
Supports whose classes overlap are refused: FSMF is NP-hard in general (same paper).

The hierarchical butterfly factorization (:mod:`unroll_cli.models.butterfly_factorize`) solves each of its splits
this way, batched over its rank-one classes; this module takes arbitrary supports given as masks.

``FixedSupportFactors`` (``model=fixed_support_factors``) is the same problem's gradient side: two
factors on the supports from a Gaussian start, fitted by the trainer (``data=fixed_support``,
:mod:`unroll_cli.tasks.fixed_support`, compares where it ends with Algorithm 1's optimum).
"""
from __future__ import annotations

import torch
from torch import nn

from unroll_cli.models.butterfly_factorize import _single_threaded
from unroll_cli.schema import constrained, register_schema


@register_schema("model", "fixed_support_factors")
class FixedSupportFactorsConfig:
    """Two factors on fixed supports, from a Gaussian start (the landscape of Le et al. 2023)."""

    _target_: str = "unroll_cli.models.fixed_support.FixedSupportFactors"
    name: str = "fixed_support_factors"
    task: str = "factorization"  # the kind of data the model fits
    init_std: float = constrained(1.0, "a number > 0", lambda v: v > 0)  # the start's entries: N(0, init_std^2)


class FixedSupportFactors(nn.Module):
    """``X`` (``m x r``) and ``Y`` (``r x n``) in float64, kept on ``left_support`` and ``right_support``
    (the entries outside are multiplied by zero, so they get no gradient); ``forward(e)`` is
    ``e (X Y)``, so the identity gives the product. Started at N(0, ``init_std``^2) entries from the
    run's seed."""

    def __init__(self, left_support: torch.Tensor, right_support: torch.Tensor, init_std: float = 1.0):
        super().__init__()
        self.register_buffer("left_support", torch.as_tensor(left_support).double())
        self.register_buffer("right_support", torch.as_tensor(right_support).double())
        self.x = nn.Parameter(init_std * torch.randn(self.left_support.shape, dtype=torch.float64))
        self.y = nn.Parameter(init_std * torch.randn(self.right_support.shape, dtype=torch.float64))

    def dictionaries(self) -> dict[str, torch.Tensor]:
        """``X`` and ``Y`` on their supports (a run writes them as ``dictionary_X.npy``, ``dictionary_Y.npy``)."""
        return {"X": self.x * self.left_support, "Y": self.y * self.right_support}

    def forward(self, inputs: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """The rows of ``inputs`` times ``X Y``; ``depth`` is ignored (no unrolled layers)."""
        factors = self.dictionaries()
        return inputs @ (factors["X"] @ factors["Y"])


def fixed_support_factorize(matrix: torch.Tensor, left_support: torch.Tensor,
                            right_support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An optimal ``(X, Y)`` with ``supp(X) ⊆ left_support``, ``supp(Y) ⊆ right_support`` for ``||A - X Y||_F``.

    ``matrix``: ``A``, ``m x n``, real or complex; computed and returned in float64 or complex128.
    ``left_support`` (``m x r``) and ``right_support`` (``r x n``): masks, nonzero entries are in the support.
    Computed on the matrix's device. Raises ValueError on mismatched shapes, and when two rank-one supports
    overlap without being identical (outside the case where Algorithm 1 is exact). An index whose rank-one support
    is empty gets zeros; in a class larger than its block's rank, the columns beyond that rank are zero.
    """
    dense, left, right = _checked(matrix, left_support, right_support)
    rank = left.shape[1]
    x = torch.zeros(dense.shape[0], rank, dtype=dense.dtype, device=dense.device)
    y = torch.zeros(rank, dense.shape[1], dtype=dense.dtype, device=dense.device)
    for members, rows, cols in _disjoint_classes(left, right):
        u, s, vh = _truncated_svd(dense[rows][:, cols], len(members))
        kept = members[:s.shape[0]]
        x[rows[:, None], kept] = u * s.sqrt().to(dense.dtype)
        y[kept[:, None], cols] = s.sqrt().to(dense.dtype)[:, None] * vh
    return x, y


def _checked(matrix, left_support, right_support) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A`` in float64/complex128 and the two masks as bool; ValueError naming the argument otherwise."""
    dense = torch.as_tensor(matrix)
    left = torch.as_tensor(left_support, device=dense.device) != 0
    right = torch.as_tensor(right_support, device=dense.device) != 0
    if dense.dim() != 2:
        raise ValueError(f"matrix must be 2-D, got shape {tuple(dense.shape)}")
    m, n = dense.shape
    if left.dim() != 2 or left.shape[0] != m:
        raise ValueError(f"left_support must have shape ({m}, r) for a matrix of shape {(m, n)}, "
                         f"got {tuple(left.shape)}")
    if right.dim() != 2 or right.shape != (left.shape[1], n):
        raise ValueError(f"right_support must have shape ({left.shape[1]}, {n}) (r from left_support), "
                         f"got {tuple(right.shape)}")
    return dense.to(torch.complex128 if dense.is_complex() else torch.float64), left, right


def _disjoint_classes(left: torch.Tensor, right: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The equivalence classes of nonempty rank-one supports as (member indices, rows, columns), checked disjoint."""
    nonempty = torch.nonzero(left.any(0) & right.any(1)).flatten()
    patterns = torch.cat([left.T, right], dim=1)[nonempty]  # identical supports <=> identical (I_k, J_k) when nonempty
    if len(nonempty) == 0:
        return []
    unique, inverse = torch.unique(patterns, dim=0, return_inverse=True)
    rows, cols = unique[:, :left.shape[0]].double(), unique[:, left.shape[0]:].double()
    overlap = (rows @ rows.T > 0) & (cols @ cols.T > 0)
    overlap.fill_diagonal_(False)
    if overlap.any():
        a, b = torch.nonzero(overlap)[0].tolist()
        k1, k2 = sorted((nonempty[inverse == a][0].item(), nonempty[inverse == b][0].item()))
        raise ValueError(f"supports outside the tractable case: the rank-one supports of indices {k1} and {k2} "
                         f"overlap without being identical; fixed_support_factorize (Le, Riccietti & Gribonval "
                         f"2023, Algorithm 1) needs pairwise disjoint or identical rank-one supports")
    return [(nonempty[inverse == c], torch.nonzero(unique[c, :left.shape[0]]).flatten(),
             torch.nonzero(unique[c, left.shape[0]:]).flatten()) for c in range(len(unique))]


def _truncated_svd(block: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``min(rank, rows, cols)`` leading singular triplets of ``block``: ``block ~ u diag(s) vh``."""
    with _single_threaded():
        u, s, vh = torch.linalg.svd(block, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank]
