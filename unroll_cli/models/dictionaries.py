"""A model's dictionaries, read through one protocol member: ``dictionaries()``, name to array (``A``
of the LISTA family, ``W1`` of the multi-layer family, ``D`` of the autoencoders; two for DenSaE's
``y = A x + B u``). A matrix (m, n) has its atoms as columns, a stack (K, C, h, w) along its first axis."""
from __future__ import annotations

import torch


def dictionaries_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's dictionaries, detached; none for a model that declares none."""
    declared = getattr(model, "dictionaries", None)
    return {name: array.detach() for name, array in declared().items()} if callable(declared) else {}


def the_dictionary(model: torch.nn.Module) -> torch.Tensor | None:
    """The model's dictionary when it has exactly one, else None."""
    found = dictionaries_of(model)
    return next(iter(found.values())) if len(found) == 1 else None
