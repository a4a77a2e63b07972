"""Mutual coherence of a model's dictionary (``+diagnostics=coherence``).

- ``coherence/dictionary``: ``max_{i != j} |d_i^T d_j|`` over the unit-normed atoms (Donoho & Elad
  2003): the quantity sparse-recovery guarantees of ISTA and LISTA are stated in. The atoms are the
  columns of a matrix dictionary (``A``, m x n) and the flattened entries of a stack of filters or
  images (``(K, C, k, k)``: the filters' coherence at zero shift).
- ``coherence/generalized``: for a model with one coupled weight ``W`` (``x + gamma W^T (y - A x)``:
  ALISTA, TiLISTA, tied dense LISTA-CP), ``max_{i != j} |w_i^T a_j|`` with each ``w_i`` scaled so that
  ``w_i^T a_i = 1`` (Liu et al. 2019, Def. 1; ALISTA's analytic W already satisfies the scaling and
  minimises it in the Frobenius sense).

Figure ``coherence.png``: the histogram of ``|d_i^T d_j|``, i != j; table ``coherence.csv``: each
atom's largest coherence with another atom.
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from unroll_cli.evaluate.diagnostics import Diagnostic


def atoms(dictionary: Tensor) -> Tensor:
    """The atoms as unit-norm rows (K, dim), in float64: a matrix's columns, a stack's first axis."""
    d = dictionary.detach().double()
    rows = d.t() if d.dim() == 2 else d.reshape(d.shape[0], -1)
    return rows / rows.norm(dim=1, keepdim=True)


def off_diagonal(gram: Tensor) -> Tensor:
    """``|G|`` with its diagonal set to zero."""
    gram = gram.abs().clone()
    gram.fill_diagonal_(0.0)
    return gram


def generalized_coherence(W: Tensor, A: Tensor) -> float:
    """``max_{i != j} |w_i^T a_j|`` with each column ``w_i`` scaled to ``w_i^T a_i = 1``."""
    W, A = W.detach().double(), A.detach().double()
    W = W / (W * A).sum(0)
    return off_diagonal(W.t() @ A).max().item()


class Coherence(Diagnostic):
    def refuse(self, model) -> str | None:
        if not callable(getattr(model, "dictionary", None)):
            return "it exposes no dictionary()"
        if atoms(model.dictionary()).shape[0] < 2:
            return "its dictionary has fewer than two atoms"
        return None

    def _atom_gram(self, model) -> Tensor:
        d = atoms(model.dictionary())
        return off_diagonal(d @ d.t())

    def measure(self, model) -> dict[str, float]:
        metrics = {"dictionary": self._atom_gram(model).max().item()}
        W = model.coupled_weight() if callable(getattr(model, "coupled_weight", None)) else None
        if W is not None:
            metrics["generalized"] = generalized_coherence(W, model.dictionary())
        return metrics

    def tables(self, model):
        per_atom = self._atom_gram(model).max(dim=1).values.cpu().numpy()
        table = pd.DataFrame({"atom": range(len(per_atom)), "max_coherence": per_atom})
        return {"coherence.csv": (table, ["atom"])}

    def figures(self, model):
        import matplotlib.pyplot as plt

        gram = self._atom_gram(model)
        values = gram[~torch.eye(len(gram), dtype=torch.bool, device=gram.device)].cpu().numpy()
        figure, axis = plt.subplots(figsize=(5, 3.5))
        axis.hist(values, bins=50)
        axis.set_xlabel("|d_i^T d_j|, i != j")
        axis.set_ylabel("pairs")
        axis.set_title(f"mutual coherence {values.max():.3f}")
        figure.tight_layout()
        return {"coherence.png": figure}
