"""Synthetic dictionary learning data, x = D* z*: the theory and baseline problems of Tolooshams & Ba
(TMLR 2022; the authors' ``xDzDataset`` in ``src/utils/datasets.py``).

D* is m x p with N(0, 1/m) entries and unit-norm columns. A code z* has s non-zeros on a support drawn
uniformly without replacement; their values follow the code law:

* ``uniform``: magnitudes U[c_min, c_max] times **one** random sign for the whole sample (the authors'
  ``(rand(s) * (c_max - c_min) + c_min) * ((rand(1) > 0.5) * 2 - 1)``);
* ``subgaussian``: N(z_mean, z_std) times an independent random sign per entry;
* ``group_sparse``: ``active_groups`` of the p / ``group_size`` groups of consecutive entries, every
  entry of an active group U[c_min, c_max] times one random sign per sample (the group-sparse model of
  Theodosis et al., arXiv 2102.07003).

The initial dictionary of a model is D* + dict_init * N(0, 1), columns renormalised (the authors'
``init_close``). Everything is drawn on the CPU in float32 from the generator it is given, so every
device sees the same data.
"""
from __future__ import annotations

import numpy as np
import torch

CODES = ("uniform", "subgaussian", "group_sparse")


def seeded(*key: int) -> torch.Generator:
    """A CPU generator seeded by the integers ``key`` together (a run's seed and a purpose)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def unit_columns(matrix: torch.Tensor) -> torch.Tensor:
    """The columns scaled to unit l2 norm (as ``F.normalize(W, dim=0)``)."""
    return matrix / matrix.norm(dim=0, keepdim=True).clamp_min(1e-12)


def true_dictionary(m: int, p: int, gen: torch.Generator) -> torch.Tensor:
    """D*: m x p, N(0, 1/m) entries, unit-norm columns."""
    return unit_columns(torch.randn(m, p, generator=gen, dtype=torch.float32) / m ** 0.5)


def initial_dictionary(D: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    """D* + noise * N(0, 1), columns renormalised."""
    return unit_columns(D + noise * torch.randn(D.shape, generator=gen, dtype=D.dtype))


def random_supports(count: int, size: int, picks: int, gen: torch.Generator) -> torch.Tensor:
    """(count, picks) indices, each row ``picks`` distinct entries of range(size), uniformly."""
    return torch.rand(count, size, generator=gen, dtype=torch.float32).argsort(dim=1)[:, :picks]


def sample_codes(count: int, p: int, s: int, code: str, gen: torch.Generator, c_min: float = 1.0,
                 c_max: float = 2.0, z_mean: float = 0.0, z_std: float = 1.0, group_size: int = 1,
                 active_groups: int = 1) -> torch.Tensor:
    """``count`` codes (count, p) of the code law ``code`` (module docstring)."""
    if code == "group_sparse":
        groups = random_supports(count, p // group_size, active_groups, gen)
        support = (groups.unsqueeze(2) * group_size + torch.arange(group_size)).flatten(1)
    else:
        support = random_supports(count, p, s, gen)
    width = support.shape[1]
    if code == "subgaussian":
        signs = torch.randint(0, 2, (count, width), generator=gen) * 2 - 1
        values = (z_mean + z_std * torch.randn(count, width, generator=gen, dtype=torch.float32)) * signs
    else:
        magnitudes = torch.rand(count, width, generator=gen, dtype=torch.float32) * (c_max - c_min) + c_min
        values = magnitudes * (torch.randint(0, 2, (count, 1), generator=gen) * 2 - 1)
    return torch.zeros(count, p, dtype=torch.float32).scatter_(1, support, values.float())
