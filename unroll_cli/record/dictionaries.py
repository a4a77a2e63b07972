"""A model's dictionaries (:mod:`unroll_cli.models.dictionaries`), written beside the run's tables:
``dictionary.npy`` for a model with one, ``dictionary_<name>.npy`` for each of several (DenSaE's
``y = A x + B u``), and each stack of image-shaped atoms (K, C, h, w) drawn as
``figures/atoms.png`` (``atoms_<name>.png`` for several). A matrix dictionary (m, n) has its atoms
as columns and is not drawn. A model's ``thresholds()`` (the LISTA family's per layer, CSCNet-LS's
learned per filter), when it has them, go to ``thresholds.npy``: with the dictionaries, what a run
directory gives a model that starts from it (``model=densae_classifier model.encoder_run=RUN_DIR``)."""
from __future__ import annotations

import torch

from unroll_cli.models.dictionaries import dictionaries_of
from unroll_cli.record import figures
from unroll_cli.record.labels import model_title


def write_dictionaries(model: torch.nn.Module, recorder, model_name: str) -> None:
    found = dictionaries_of(model)
    for name, array in found.items():
        suffix = "" if len(found) == 1 else f"_{name}"
        recorder.write_array(f"dictionary{suffix}.npy", array.cpu().numpy())
        if array.dim() == 4:
            title = f"{model_title(model_name, model)}: dictionary {name}"
            recorder.write_figure(f"atoms{suffix}.png", figures.atoms_figure(array, title))
    thresholds = getattr(model, "thresholds", lambda: None)()
    if thresholds is not None:
        recorder.write_array("thresholds.npy", thresholds.cpu().numpy())
