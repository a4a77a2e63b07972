"""Mutual coherence of a model's dictionary (``+diagnostics=coherence``).

- ``coherence/dictionary``: ``max_{i != j} |d_i^T d_j|`` over the unit-normed atoms (Donoho & Elad
  2003): the quantity sparse-recovery guarantees of ISTA and LISTA are stated in; for a model with
  several dictionaries, ``coherence/dictionary_<name>`` for each. The atoms are the
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
from unroll_cli.models.dictionaries import dictionaries_of, the_dictionary


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
        found = dictionaries_of(model)
        if not found:
            return "it exposes no dictionaries()"
        if any(atoms(d).shape[0] < 2 for d in found.values()):
            return "a dictionary of it has fewer than two atoms"
        return None

    @staticmethod
    def _grams(model) -> dict[str, Tensor]:
        """``|d_i^T d_j|`` (zero diagonal) per dictionary, keyed ``dictionary`` for a model with one,
        ``dictionary_<name>`` for each of several."""
        found = dictionaries_of(model)
        return {"dictionary" if len(found) == 1 else f"dictionary_{name}": off_diagonal(atoms(d) @ atoms(d).t())
                for name, d in found.items()}

    def measure(self, model) -> dict[str, float]:
        metrics = {key: gram.max().item() for key, gram in self._grams(model).items()}
        W = model.coupled_weight() if callable(getattr(model, "coupled_weight", None)) else None
        if W is not None:
            metrics["generalized"] = generalized_coherence(W, the_dictionary(model))
        return metrics

    def tables(self, model):
        return {f"coherence{key.removeprefix('dictionary')}.csv": (
                    pd.DataFrame({"atom": range(len(gram)), "max_coherence": gram.max(dim=1).values.cpu().numpy()}),
                    ["atom"]) for key, gram in self._grams(model).items()}

    def figures(self, model):
        import matplotlib.pyplot as plt

        plots = {}
        for key, gram in self._grams(model).items():
            values = gram[~torch.eye(len(gram), dtype=torch.bool, device=gram.device)].cpu().numpy()
            figure, axis = plt.subplots(figsize=(5, 3.5))
            axis.hist(values, bins=50)
            axis.set_xlabel("|d_i^T d_j|, i != j")
            axis.set_ylabel("pairs")
            axis.set_title(f"mutual coherence {values.max():.3f}")
            figure.tight_layout()
            plots[f"coherence{key.removeprefix('dictionary')}.png"] = figure
        return plots
