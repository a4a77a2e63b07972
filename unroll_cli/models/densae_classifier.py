"""A linear classifier on DenSaE's codes: the MNIST part of Tasissa, Theodosis, Tolooshams & Ba, TMLR 2024
(btolooshams/densae ``src/trainer.py``: ``train_join_ae_class_mnist``, ``train_classifier``; ``src/conf.py``
``mnist_*``).

The encoder is :class:`unroll_cli.models.densae.DenSaE` itself (28x28 filters at stride 1 on MNIST: two
dense dictionaries, each code a number per atom). An image's feature is the concatenation of its last
codes ``[x_T; u_T]`` (every shifted copy and position, flattened), l2-normalised per image
(``F.normalize``, as the authors), and a linear layer maps it to the classes; ``forward`` returns the
log-probabilities the classification task scores. ``unfoldings`` is the encoder's T; with 0 steps the
codes are FISTA's start, zero, and the logits the layer's bias.

The training loss is ``(1 - beta) * rec + beta * CE`` (:meth:`joint_loss`, which the classification task
calls with its cross-entropy), ``rec`` the authors' autoencoder loss of the same forward, the squared error
of ``A x_T + B u_T`` summed over the pixels, mean over the batch (their ``L2loss``). The paper's two modes:

* joint: ``beta`` in 0.5, 0.75, 0.95, 1, warm-started from a trained autoencoder (``encoder_run``);
* disjoint: the autoencoder trained first, then the classifier alone on its frozen codes:
  ``encoder_run`` with ``train_encoder: false`` and ``beta: 1``.

``encoder_run`` is the directory of a finished run of DenSaE (``model=densae`` on ``data=mnist_denoise``,
or this model, e.g. with ``beta: 0``): its ``dictionary_A.npy`` and ``dictionary_B.npy`` (``dictionary.npy``
for a split without A), read as data (``allow_pickle=False``) and checked against the split and the
filters' size; with ``learn_threshold`` (CSCNet-LS) also its ``thresholds.npy``, one per sparse filter.
"""
from __future__ import annotations

from numbers import Integral
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unroll_cli.models.arguments import check_bool, check_int, check_number
from unroll_cli.models.autoencoders import load_dictionary
from unroll_cli.models.densae import SPLIT_ALLOWED, DenSaE, DenSaEConfig, parse_split
from unroll_cli.schema import constrained, register_schema

BETA_ALLOWED = "a number in [0, 1]: the weight of the cross-entropy, (1 - beta) that of the reconstruction"


@register_schema("model", "densae_classifier")
class DenSaEClassifierConfig(DenSaEConfig):
    """DenSaE's codes through a linear classifier; defaults: the paper's MNIST joint training
    (btolooshams/densae ``src/conf.py`` ``mnist_*``: 400 atoms of 28x28 at stride 1, T 15, L 50, lam 0.5,
    one-sided, rho 1e16 as their checkpoints)."""

    task: str = "classification"
    split: str = constrained("5A395B", SPLIT_ALLOWED, lambda v: parse_split(v) is not None)
    lam: float = constrained(0.5, "a number >= 0", lambda v: v >= 0)  # threshold lam * step = 0.01
    step: float = constrained(0.02, "a number > 0", lambda v: v > 0)  # 1/L, L = 50
    rho: float = constrained(1e16, "a number > 0", lambda v: v > 0)
    kernel_size: int = constrained(28, "an integer >= 1", lambda v: v >= 1)
    stride: int = constrained(1, "an integer >= 1", lambda v: v >= 1)
    two_sided: bool = False
    beta: float = constrained(0.5, BETA_ALLOWED, lambda v: 0 <= v <= 1)
    encoder_run: Optional[str] = None  # a finished DenSaE run's directory: its dictionaries start the encoder
    train_encoder: bool = True  # false: the encoder stays as built or read (the disjoint mode, beta 1)


class DenSaEClassifier(nn.Module):
    """DenSaE's encoder, the l2-normalised codes ``[x_T; u_T]``, a linear layer (module docstring)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, beta: float = 0.5,
                 encoder_run: str | None = None, train_encoder: bool = True, split: str = "5A395B",
                 lam: float = 0.5, step: float = 0.02, rho: float = 1e16, kernel_size: int = 28, stride: int = 1,
                 two_sided: bool = False, arch: str | None = None, **encoder: object):
        """``encoder``: DenSaE's other keys (layers, normalize, learn_threshold, threshold_init)."""
        super().__init__()  # arch: the convolutional families' architecture, which this model ignores
        self.beta = check_number("beta", beta, False)
        if self.beta > 1:
            raise ValueError(f"model.beta={beta}: expected {BETA_ALLOWED}")
        self.train_encoder = check_bool("train_encoder", train_encoder)
        if not self.train_encoder and self.beta != 1:
            raise ValueError(f"model.beta={beta} with model.train_encoder=false: the reconstruction term has no "
                             "gradient with a frozen encoder; the disjoint mode is model.beta=1")
        side = check_int("image_size", image_size, 1)
        self.encoder = DenSaE(in_channels, split=split, lam=lam, step=step, rho=rho, kernel_size=kernel_size,
                              stride=stride, two_sided=two_sided,
                              input_sizes={"each image of the data": (side, side)}, **encoder)
        if encoder_run is not None:
            self._read_encoder(Path(encoder_run))
        self.encoder.requires_grad_(self.train_encoder)
        with torch.no_grad():
            probe = self.encoder.code(torch.zeros(1, in_channels, side, side), 1)
        self.features = probe.x.numel() + probe.u.numel()
        self.linear = nn.Linear(self.features, check_int("num_classes", num_classes, 2))
        self.reconstruction: Tensor | None = None  # rec of the last forward, for joint_loss

    def _read_encoder(self, run: Path) -> None:
        """The dictionaries (and learned thresholds) of a finished DenSaE run (module docstring)."""
        if not run.is_dir():
            raise FileNotFoundError(f"model.encoder_run: no run directory at {run}")
        found = self.encoder.dictionaries()
        files = {name: (f"dictionary_{name}.npy" if len(found) > 1 else "dictionary.npy") for name in found}
        if self.encoder.b is not None:
            found["b"], files["b"] = self.encoder.thresholds(), "thresholds.npy"
        for name, values in found.items():
            with torch.no_grad():
                read = load_dictionary(run / files[name], tuple(values.shape), key="model.encoder_run")
                getattr(self.encoder, name).copy_(read.view_as(getattr(self.encoder, name)))

    @property
    def unfoldings(self) -> int:
        """The encoder's T, for the classification task's accuracy per number of steps."""
        return self.encoder.layers

    def forward(self, y: Tensor, unfoldings: int | None = None) -> Tensor:
        """Log-probabilities (N, classes) from the codes after ``unfoldings`` FISTA steps (default T)."""
        t = self.unfoldings if unfoldings is None else unfoldings
        if isinstance(t, bool) or not isinstance(t, Integral) or not 0 <= t <= self.unfoldings:
            raise ValueError(f"unfoldings must be an integer in [0, {self.unfoldings}], got {t!r}")
        if t == 0:
            features, estimate = y.new_zeros(len(y), self.features), torch.zeros_like(y)
        else:
            coding = self.encoder.code(y, t)
            features = torch.cat([coding.x.reshape(len(y), -1), coding.u.reshape(len(y), -1)], dim=1)
            estimate = coding.outputs[-1]
        self.reconstruction = (y - estimate).pow(2).flatten(1).sum(dim=1).mean()
        return F.log_softmax(self.linear(F.normalize(features, dim=1)), dim=1)

    def joint_loss(self, task_loss: Tensor) -> Tensor:
        """``(1 - beta) * rec + beta * task_loss``: the task's cross-entropy with the reconstruction loss
        of the last forward."""
        return (1 - self.beta) * self.reconstruction + self.beta * task_loss

    @torch.no_grad()
    def after_step(self) -> None:
        """The encoder's unit-norm filters (``normalize``), unless it is frozen."""
        if self.train_encoder:
            self.encoder.after_step()

    def dictionaries(self) -> dict[str, Tensor]:
        """The encoder's A (when there is one) and B."""
        return self.encoder.dictionaries()

    def thresholds(self) -> Tensor | None:
        """The encoder's learned thresholds (``learn_threshold``), or None."""
        return self.encoder.thresholds()
