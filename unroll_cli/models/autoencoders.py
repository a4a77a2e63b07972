"""Unrolled sparse-coding autoencoders with a tied dictionary ``D``, for image denoising.

The encoder unrolls T proximal-gradient steps with step ``alpha`` and threshold ``lam * alpha``
from ``z_0 = 0``, and the decoder is the dictionary itself:

    z_{t+1} = S(z_t - alpha D^T (D z_t - x))   (so z_1 = S(alpha D^T x)),   x_hat = D z_T,

or the same steps taken at FISTA's extrapolated points (Beck & Teboulle 2009).

* ``SparseAutoencoder``: PUDLE, Tolooshams & Ba, "Stable and Interpretable Unrolled Dictionary
  Learning", TMLR 2022 (code: btolooshams/stable-interpretable-unrolled-dl, ``AE``/``CAE``);
  ``S`` is the soft or hard threshold, one- or two-sided.
* ``GroupSparseAutoencoder``: Theodosis, Tolooshams, Tankala, Tasissa & Ba, "On the convergence of
  group-sparse autoencoders" (arXiv 2102.07003) and Theodosis & Ba, "Learning silhouettes with group
  sparse autoencoders" (ICASSP 2023); ``S`` is the block soft threshold over groups of code entries.

Convolutional (``conv``): ``D^T x = conv2d(x, W, stride)`` and ``D z = conv_transpose2d(z, W,
stride)`` sized back to the input, its exact adjoint; ``W`` is (filters, C, k, k). Both run as one
matrix product with the image's k x k patches (``unfold``) or into them (``fold``, the adjoint): on
the CPU at PUDLE's sizes ``conv_transpose2d`` takes about 4x as long as the product and fold, and
a training step with conv2d / conv_transpose2d 2x as long (``scripts/bench_denoise.py``). Dense: ``D`` is a
(d, atoms) matrix on images flattened to ``d = C*H*W``. ``shifts`` (conv, stride > 1): the encoder codes the
``stride^2`` shifted reflect-padded copies of each image and each layer's output is the average of their
reconstructions (:mod:`unroll_cli.models.shifts`, as CRsAE's and DenSaE's ``split_image``); off by default,
as PUDLE's committed denoising checkpoints were trained.

Gradient of the dictionary (``grad``: PUDLE's estimators g_dec, g_ae-lasso and g_ae-ls, as the authors'
``src/train_dl_choose_gd.py`` computes them): ``g_dec`` detaches ``z_T`` before the decoder in
training (only ``D z_T`` gives ``D`` a gradient, ``(D z_T - x) z_T^T``); ``g_ae_lasso`` and ``g_ae_ls``
backpropagate through the unrolled encoder, with and without the penalty in the loss
(:meth:`TiedAutoencoder.loss_penalty`). ``noodl`` is the update of NOODL (Rambhatla, Li & Haupt, ICLR
2019) as the authors' ``src/train_dl_compare_baselines.py`` runs it: ``z_T`` detached, and the
reconstruction's gradient taken through ``D sign(z_T)`` (its value stays ``D z_T``), so that the
loss's gradient is ``(D z_T - x) sign(z_T)^T``; with plain SGD (``optim=sgd``, momentum 0) a step is
NOODL's ``D <- D - lr mean_batch[(D z - x) sign(z)^T]``. ``threshold_decay`` (beta) multiplies the
threshold by beta at each layer after the first (the authors' ``AEdecay``): layer t's is
``lam * step * beta^(t-1)``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import MISSING
import torch.nn.functional as F
from torch import Tensor, nn

from unroll_cli.schema import constrained, register_schema
from unroll_cli.models.arguments import check_bool, check_choice, check_int, check_number, fista_momentum
from unroll_cli.models.prox import group_soft_threshold, hard_threshold, nonneg_soft_threshold, soft_threshold
from unroll_cli.models.shifts import Windows, average_shifts, shift_fits, split_shifts

GRADS = ("g_dec", "g_ae_lasso", "g_ae_ls", "noodl")
EVAL_SIDE = 512  # without the task's input sizes, images are assumed at most this many pixels on a side (memory)
log = logging.getLogger(__name__)


def _choice(default: str, *values: str):
    """A schema field taking one of ``values``."""
    return constrained(default, ", ".join(values[:-1]) + " or " + values[-1], lambda v: v in values)


def _positive(default: float):
    """A schema field ``> 0``."""
    return constrained(default, "a number > 0", lambda v: v > 0)


def _at_least(default, low: int, integer: bool = True):
    """A schema field ``>= low`` (an integer, or a number)."""
    return constrained(default, f"{'an integer' if integer else 'a number'} >= {low}", lambda v: v >= low)


@dataclass
class TiedAutoencoderConfig:
    """What both autoencoders share: encoder, dictionary shape, gradient and initialisation."""

    _target_: str = MISSING
    name: str = MISSING
    task: str = "denoising"  # the kind of data the model fits
    layers: int = _at_least(15, 1)  # T, the unrolled steps
    lam: float = _at_least(0.12, 0, integer=False)  # threshold lam * step
    step: float = _positive(0.1)
    encoder: str = _choice("ista", "ista", "fista")
    grad: str = _choice("g_ae_ls", *GRADS)
    two_sided: bool = True
    normalize: bool = True  # unit-norm atoms after every optimizer step (and at init: init_norm)
    conv: bool = True
    filters: int = _at_least(64, 1)
    kernel_size: int = _at_least(9, 1)
    stride: int = _at_least(4, 1)
    # conv: code the stride^2 shifted reflect-padded copies of each image and average their
    # reconstructions (models/shifts.py, as DenSaE); false: the image itself (PUDLE's checkpoints)
    shifts: bool = False
    atoms: int = _at_least(500, 1)  # dense dictionary (conv false): its columns
    # dense: d = C*H*W of the input; null takes it from the task's training images
    input_dim: Optional[int] = constrained(None, "null or an integer >= 1", lambda v: v is None or v >= 1)
    init: str = _choice("random", "random", "data")
    # dense only: unit (every atom unit-norm) | spectral (the atoms together divided by the matrix's
    # spectral norm, ||D||_2 = 1, as the silhouettes code's W / ||W||_2); unit-norm after the first step
    init_norm: str = _choice("unit", "unit", "spectral")
    dictionary_path: Optional[str] = None  # a .npy dictionary to evaluate or fine-tune (overrides init)
    check_step: bool = True  # refuse step * ||D||^2 >= 2 (ISTA's convergence condition) at the start
    # beta: layer t's threshold is lam * step * beta^(t-1) (the authors' AEdecay); 1: the same at every layer
    threshold_decay: float = constrained(1.0, "a number in (0, 1]", lambda v: 0 < v <= 1)
    # beta lowered by this much every threshold_decay_every optimizer steps (the authors' AEdecay
    # training: 0.005 every 100 steps); 0: fixed
    threshold_decay_drop: float = constrained(0.0, "a number >= 0", lambda v: v >= 0)
    threshold_decay_every: int = _at_least(100, 1)


@register_schema("model", "sparse_ae")
class SparseAEConfig(TiedAutoencoderConfig):
    """PUDLE (Tolooshams & Ba 2022): soft or hard threshold."""

    threshold: str = _choice("soft", "soft", "hard")


@register_schema("model", "group_sparse_ae")
class GroupSparseAEConfig(TiedAutoencoderConfig):
    """Group-sparse autoencoder (Theodosis et al.): block soft threshold, atoms from the data."""

    step: float = _positive(0.003)  # data atoms are coherent: ||D||^2 is about 330 on BSD crops
    atoms: int = _at_least(320, 1)
    init: str = _choice("data", "random", "data")
    group_size: int = _at_least(4, 1)


def batched(matrix: Tensor, stack: Tensor) -> Tensor:
    """``matrix @ stack[i]`` for every i, as one ``bmm`` on the expanded matrix: ``matrix @ stack``
    would copy the stack into a (N rows, ...) layout first (about 1.3x slower on the CPU)."""
    return torch.bmm(matrix.expand(len(stack), -1, -1), stack)


def unit_atoms(weight: Tensor, conv: bool) -> Tensor:
    """Atoms scaled to unit norm: each filter (Frobenius) or each column; a zero atom stays zero."""
    norm = torch.linalg.vector_norm(weight, dim=(1, 2, 3) if conv else 0, keepdim=True)
    return weight / norm.clamp_min(torch.finfo(weight.dtype).tiny)


def load_dictionary(path: str | Path, shape: tuple[int, ...], saved_shape: tuple[int, ...] | None = None,
                    key: str = "model.dictionary_path") -> Tensor:
    """The dictionary in the .npy file ``path`` (read with ``allow_pickle=False``), of ``shape``; an
    array of ``saved_shape`` (a dense model's ``dictionary.npy``, atoms first) is transposed to it.
    ``key``: the config key the messages name."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{key}: no file at {file}")
    try:
        array = np.load(file, allow_pickle=False)
    except Exception as error:  # numpy raises many kinds on malformed files
        raise ValueError(f"{key}: {file} is not a readable .npy file "
                         f"({type(error).__name__}: {error}); save the dictionary with numpy.save") from None
    if saved_shape is not None and array.shape == saved_shape:
        array = array.reshape(saved_shape[0], -1).T
    if array.shape != shape:
        also = f" (or {saved_shape}, a run's dictionary.npy)" if saved_shape else ""
        raise ValueError(f"{key}: {file} holds an array of shape {array.shape}, but the "
                         f"config needs {shape}{also}")
    if array.dtype.kind not in "biuf" or not np.isfinite(array).all():
        raise ValueError(f"{key}: {file} must hold finite real numbers, got {array.dtype}")
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.get_default_dtype())


def random_patches(images: Tensor, count: int, size: int) -> Tensor:
    """``count`` random ``size`` x ``size`` patches (count, C, size, size) of random ``images``."""
    n, _, h, w = images.shape
    if h < size or w < size:
        raise ValueError(f"model.init=data: the task's images are {h}x{w}, smaller than model.kernel_size={size}")
    pick = zip(torch.randint(n, (count,)).tolist(), torch.randint(h - size + 1, (count,)).tolist(),
               torch.randint(w - size + 1, (count,)).tolist())
    return torch.stack([images[i, :, r:r + size, c:c + size] for i, r, c in pick])


class TiedAutoencoder(nn.Module):
    """The encoder, decoder, gradient modes and dictionary of both autoencoders (module docstring);
    subclasses supply the threshold ``_shrink`` and the penalty ``_penalty`` of the code."""

    # code entries per group of the threshold (consecutive atoms; conv: channels at each position): the
    # unit of the code's active set (+diagnostics=robustness); 1: each entry alone
    group_size = 1

    def __init__(self, in_channels: int, layers: int = 15, lam: float = 0.12, step: float = 0.1,
                 encoder: str = "ista", grad: str = "g_ae_ls", two_sided: bool = True,
                 normalize: bool = True, conv: bool = True, filters: int = 64, kernel_size: int = 9,
                 stride: int = 4, shifts: bool = False, atoms: int = 500, input_dim: int | None = None,
                 init: str = "random",
                 init_norm: str = "unit", dictionary_path: str | None = None, check_step: bool = True,
                 threshold_decay: float = 1.0,
                 threshold_decay_drop: float = 0.0, threshold_decay_every: int = 100,
                 init_images: Tensor | None = None, input_sizes: dict[str, tuple[int, int]] | None = None,
                 init_dictionary: Tensor | None = None):
        super().__init__()
        self.layers = check_int("layers", layers, 1)
        self.lam, self.step = check_number("lam", lam, False), check_number("step", step, True)
        fista = check_choice("encoder", encoder, ("ista", "fista")) == "fista"
        self.momentum = fista_momentum(self.layers) if fista else None
        self.grad = check_choice("grad", grad, GRADS)
        self.threshold_decay = check_number("threshold_decay", threshold_decay, True)
        if self.threshold_decay > 1:
            raise ValueError(f"threshold_decay must be in (0, 1], got {threshold_decay!r}")
        self.decay_drop = check_number("threshold_decay_drop", threshold_decay_drop, False)
        self.decay_every = check_int("threshold_decay_every", threshold_decay_every, 1)
        if self.decay_drop:  # the optimizer steps taken, in the state dict for an exact resume
            self.register_buffer("decay_steps", torch.zeros((), dtype=torch.long))
        self.two_sided = check_bool("two_sided", two_sided)
        self.normalize = check_bool("normalize", normalize)
        self.conv = check_bool("conv", conv)
        self.in_channels = check_int("in_channels", in_channels, 1)
        images = self._check_images(init_images)
        self.init_norm = check_choice("init_norm", init_norm, ("unit", "spectral"))
        if self.conv and self.init_norm == "spectral":
            raise ValueError("model.init_norm=spectral divides a dense dictionary by its spectral norm: set "
                             "model.conv=false or model.init_norm=unit")
        if self.conv and init_dictionary is not None:
            raise ValueError("conv=true, but the task gives a dense initial dictionary (a matrix of "
                             f"{tuple(init_dictionary.shape)}): set conv=false")
        self.shifts = check_bool("shifts", shifts)
        if self.shifts and not self.conv:
            raise ValueError("model.shifts=true codes shifted copies of the images for a convolutional "
                             "dictionary: set model.conv=true or model.shifts=false")
        if self.conv:
            self.stride = check_int("stride", stride, 1)
            k = check_int("kernel_size", kernel_size, 1)
            shape = (check_int("filters", filters, 1), self.in_channels, k, k)
            self._check_windows(k, input_sizes or {})
        else:
            self.image_shape = self._dense_image_shape(input_dim, images, next(iter(input_sizes or {}), None))
            shape = (math.prod(self.image_shape), check_int("atoms", atoms, 1))
            self._check_dense_sizes(input_dim, input_sizes or {})
        if dictionary_path is not None:
            saved = None if self.conv else (shape[1], *self.image_shape)
            weight = load_dictionary(dictionary_path, shape, saved)
        elif init_dictionary is not None:
            weight = self._given_dictionary(init_dictionary, shape)
        else:
            weight = self._initial_atoms(shape, check_choice("init", init, ("random", "data")), images)
        self.weight = nn.Parameter(weight)
        if check_bool("check_step", check_step):
            self._check_step(images, dictionary_path)
        self._code: Tensor | None = None  # z_T of the last forward, for loss_penalty

    # -- construction ------------------------------------------------------
    def _check_images(self, images: Tensor | None) -> Tensor | None:
        """The task's training crops (k, C, H, W) as a CPU tensor of the default dtype."""
        if images is None:
            return None
        if not isinstance(images, Tensor):
            raise ValueError(f"init_images must be a tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != self.in_channels or images.shape[0] == 0:
            raise ValueError(f"init_images must be a non-empty (k, {self.in_channels}, H, W) tensor, "
                             f"got {tuple(images.shape)}")
        return images.detach().to("cpu", torch.get_default_dtype())

    def _check_windows(self, k: int, sizes: dict[str, tuple[int, int]]) -> None:
        """Refuse, before any work, inputs the k x k filters at ``stride`` cannot cover: an input smaller
        than a filter, or one with gaps between its windows (a stride larger than k); warn of an input
        whose last rows or columns no window reaches (their estimate is 0). ``sizes``: the task's
        inputs, each described by where it comes from (``input_sizes``)."""
        for where, (h, w) in sizes.items():
            if min(h, w) < k:
                raise ValueError(f"model.kernel_size={k} does not fit {where}: {h}x{w} pixels, smaller than "
                                 f"the {k}x{k} filters; lower model.kernel_size or make them larger")
            if self.stride > k and max(h, w) - k >= self.stride:
                raise ValueError(f"model.stride={self.stride} is larger than model.kernel_size={k}: the pixels "
                                 f"of {where}, {h}x{w}, between the filters' windows would never be "
                                 "reconstructed; choose a stride <= kernel_size")
            if self.shifts:
                reason = shift_fits(h, w, k, self.stride)
                if reason:
                    raise ValueError(f"model.shifts=true, model.kernel_size={k}, model.stride={self.stride}: "
                                     f"{where}, {h}x{w} pixels, is {reason}")
        for where, (h, w) in sizes.items():
            left = [(h - k) % self.stride, (w - k) % self.stride]
            if any(left) and not self.shifts:  # the shifted copies' pads reach every pixel
                fits = [side - r for side, r in zip((h, w), left)]
                log.warning("model.kernel_size=%d, model.stride=%d: the last %d rows and %d columns of %s, "
                            "%dx%d, are in no filter window, their estimate is 0 (a side of kernel_size + a "
                            "multiple of stride fits: %dx%d)", k, self.stride, *left, where, h, w, *fits)
                break

    def _check_dense_sizes(self, input_dim: int | None, sizes: dict[str, tuple[int, int]]) -> None:
        """Refuse, before any work, an input of another size than the dense dictionary's atoms: they
        are images of one size, the training inputs' (the first of ``sizes``) or ``input_dim``."""
        if not sizes:
            return
        expected = math.prod(self.image_shape)
        if input_dim is not None:
            size = f"C*H*W = {expected} values (model.input_dim={input_dim})"
        else:
            size = "those of {}, {}x{}".format(next(iter(sizes)), *next(iter(sizes.values())))
        for where, (h, w) in sizes.items():
            if self.in_channels * h * w != expected:
                raise ValueError(f"model.conv=false: the dense dictionary's atoms are images of one size, {size}, "
                                 f"but {where} is {h}x{w}; use a convolutional dictionary (model.conv=true) or "
                                 "inputs of that one size")

    def _dense_image_shape(self, input_dim: int | None, images: Tensor | None,
                           training: str | None) -> tuple[int, int, int]:
        """(C, H, W) of the dense model's input: the task's images, else ``input_dim`` as (C, d/C, 1);
        ``training`` describes the training inputs (the first of ``input_sizes``)."""
        if images is not None:
            if input_dim is not None and input_dim != images[0].numel():
                raise ValueError(f"model.input_dim={input_dim} but {training or 'the training images'} have "
                                 f"C*H*W = {images[0].numel()} values; set model.input_dim=null to take it "
                                 "from them")
            return tuple(images.shape[1:])
        if input_dim is None or check_int("input_dim", input_dim, 1) % self.in_channels:
            raise ValueError(f"conv=false needs the task's images or input_dim, a multiple of in_channels="
                             f"{self.in_channels}; got input_dim={input_dim!r}")
        return self.in_channels, input_dim // self.in_channels, 1

    def _given_dictionary(self, dictionary: Tensor, shape: tuple[int, ...]) -> Tensor:
        """The task's initial dense dictionary (d, atoms) (e.g. ``data=synthetic_dl``'s D* plus noise),
        checked against the model's shape."""
        if tuple(dictionary.shape) != shape:
            raise ValueError(f"atoms={shape[1]}, but the task's initial dictionary is {dictionary.shape[0]}x"
                             f"{dictionary.shape[1]} (its columns are the atoms): set atoms={dictionary.shape[1]}")
        return dictionary.detach().to("cpu", torch.get_default_dtype()).clone()

    def _initial_atoms(self, shape: tuple[int, ...], init: str, images: Tensor | None) -> Tensor:
        """Unit-norm atoms: Gaussian (conv filters then divided by the channels, as PUDLE's ``CAE``), or
        from the data: random patches (conv), or random flattened images (dense, as the silhouettes code);
        dense with ``init_norm=spectral``, the Gaussian or image atoms divided together by the matrix's
        spectral norm instead (the silhouettes code's ``W / ||W||_2``)."""
        if init == "random":
            atoms = self._scaled(torch.randn(shape))
            return atoms / self.in_channels if self.conv else atoms
        if images is None:
            raise ValueError("init=data needs the task's training images (init_images)")
        if self.conv:
            return unit_atoms(random_patches(images, shape[0], shape[2]), True)
        if len(images) < shape[1]:
            raise ValueError(f"model.init=data: model.atoms={shape[1]} needs at least that many training "
                             f"images, the task gave {len(images)}; lower model.atoms or use model.init=random")
        return self._scaled(images[torch.randperm(len(images))[:shape[1]]].flatten(1).T)

    def _scaled(self, atoms: Tensor) -> Tensor:
        """``atoms`` scaled as ``init_norm`` says: each to unit norm, or all by the spectral norm."""
        if self.init_norm == "spectral":
            return atoms / torch.linalg.matrix_norm(atoms, ord=2)
        return unit_atoms(atoms, self.conv)

    @torch.no_grad()
    def _check_step(self, images: Tensor | None, dictionary_path: str | None = None) -> None:
        """Refuse a step with which the encoder's gradient steps may diverge from a fresh start,
        ``step * ||D||_2^2 >= 2``; a dictionary loaded from ``dictionary_path`` (a trained one, which
        training may carry past the bound, as the authors' recipe did) is evaluated as it is, with a
        warning. ``||D^T D||_2`` by 30 power iterations on a 64 x 64 image (conv; the input's size if smaller)."""
        if self.conv:
            side = max(self.weight.shape[-1], 64 if images is None else min(64, *images.shape[-2:]))
            shape = (1, self.in_channels, side, side)
        else:
            shape = (1, *self.image_shape)
        v = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        for _ in range(30):
            v = self._synthesis(self._analysis(v), v)
            norm = torch.linalg.vector_norm(v).item()
            v /= max(norm, 1e-300)
        if self.step * norm >= 2 and dictionary_path is not None:
            log.warning("model.step=%g with the dictionary of model.dictionary_path=%s: step * ||D||^2 = %.3g "
                        ">= 2, where ISTA's steps may diverge; a trained dictionary is used as it is",
                        self.step, dictionary_path, self.step * norm)
        elif self.step * norm >= 2:
            raise ValueError(f"step={self.step}: the encoder diverges with this dictionary (step * ||D||^2 = "
                             f"{self.step * norm:.3g} >= 2): choose step < {2 / norm:.3g} (or check_step=false "
                             "to run it anyway)")

    # -- the operators -----------------------------------------------------
    def _analysis(self, x: Tensor) -> Tensor:
        """``D^T x``: (N, K, H', W') codes (conv) or (N, atoms)."""
        if self.conv:
            k = self.weight.shape[-1]
            rows, cols = ((side - k) // self.stride + 1 for side in x.shape[-2:])
            patches = F.unfold(x, k, stride=self.stride)  # (N, C k k, rows * cols)
            return batched(self.weight.flatten(1), patches).view(x.shape[0], -1, rows, cols)
        return x.flatten(1) @ self.weight

    def _synthesis(self, z: Tensor, like: Tensor) -> Tensor:
        """``D z`` shaped like the input ``like``."""
        if self.conv:
            patches = batched(self.weight.flatten(1).T, z.flatten(2))  # (N, C k k, rows * cols)
            return F.fold(patches, like.shape[-2:], self.weight.shape[-1], stride=self.stride)
        return (z @ self.weight.T).view_as(like)

    def _shrink(self, z: Tensor, b: float) -> Tensor:
        """The threshold step with threshold ``b``."""
        raise NotImplementedError

    def _penalty(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    # -- interface ---------------------------------------------------------
    def forward(self, x: Tensor, depth: int | None = None) -> list[Tensor]:
        """Reconstructions ``D z_t`` after layers 1..depth (default all ``layers``), each shaped like x."""
        depth = self.layers if depth is None else depth
        if isinstance(depth, bool) or not isinstance(depth, Integral) or not 1 <= depth <= self.layers:
            raise ValueError(f"depth must be an integer in [1, {self.layers}], got {depth!r}")
        self._check_input(x)
        copies, windows = self._copies(x)
        decoder_only = self.training and self.grad in ("g_dec", "noodl")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not decoder_only):
            z, outputs = self._encode(copies, depth)
        if decoder_only and self.grad == "g_dec":  # z_T is a constant: only the decoder gives D a gradient
            outputs[-1] = self._synthesis(z, copies)
        elif decoder_only:  # NOODL: the value D z_T, the gradient through D sign(z_T)
            through_sign = self._synthesis(torch.sign(z), copies)
            outputs[-1] = outputs[-1] + (through_sign - through_sign.detach())
        self._code = None if self.grad in ("g_ae_ls", "noodl") else z
        return [average_shifts(output, windows) for output in outputs]

    def _copies(self, x: Tensor) -> tuple[Tensor, Windows | None]:
        """What the encoder codes: the shifted copies of the images and where they hold them
        (``shifts``), or the images themselves and no windows."""
        return split_shifts(x, self.weight.shape[-1], self.stride) if self.shifts else (x, None)

    def _encode(self, x: Tensor, depth: int) -> tuple[Tensor, list[Tensor]]:
        """``z_depth`` and ``D z_t`` for t = 1..depth: ISTA steps ``z <- S(v - alpha D^T (D v - x))`` at
        ``v = z`` or, for FISTA, at ``v = z_t + m_t (z_t - z_{t-1})`` (``D v`` by linearity); layer t's
        threshold is ``lam * step * threshold_decay^(t-1)``."""
        momentum = self.momentum
        if momentum is not None and depth > len(momentum):  # more steps than the model has (encode)
            momentum = fista_momentum(depth)
        b, beta = self.lam * self.step, self.decay()
        z = self._shrink(self.step * self._analysis(x), b)
        outputs = [self._synthesis(z, x)]
        v, Dv = z, outputs[0]
        for t in range(1, depth):
            z_next = self._shrink(v - self.step * self._analysis(Dv - x), b * beta ** t)
            outputs.append(self._synthesis(z_next, x))
            v, Dv = z_next, outputs[-1]
            if momentum is not None:
                m = momentum[t]
                v, Dv = v + m * (z_next - z), Dv + m * (Dv - outputs[-2])
            z = z_next
        return z, outputs

    def decay(self) -> float:
        """beta, the factor of each layer's threshold over the previous one's, for the next optimizer
        step: ``threshold_decay`` lowered by ``threshold_decay_drop`` from step ``threshold_decay_every``
        on, again from step 2 x ``threshold_decay_every`` on, ... (the authors' AEdecay: beta 1 lowered
        by 0.005 before steps 100, 200, ...), at least 0."""
        if not self.decay_drop:
            return self.threshold_decay
        lowered = (int(self.decay_steps) + 1) // self.decay_every
        return max(self.threshold_decay - self.decay_drop * lowered, 0.0)

    @torch.no_grad()
    def encode(self, x: Tensor, steps: int | None = None) -> Tensor:
        """``z_T``, the code after all ``layers`` steps (for the representer view), or after ``steps``
        steps of the same network, more or fewer than its layers (the lasso solution of a dictionary
        learning task's gradient study: the network unrolled 1000 times); with ``shifts``, the codes of
        the shifted copies, image n's at ``n stride^2 .. (n + 1) stride^2 - 1``."""
        self._check_input(x)
        return self._encode(self._copies(x)[0], self.layers if steps is None else check_int("steps", steps, 1))[0]

    def dictionary_gradient(self, x: Tensor, code: Tensor | None = None) -> Tensor:
        """The gradient with respect to the dictionary of ``0.5 ||x - D z||^2`` summed over the input and
        averaged over the batch (PUDLE's ``SparseLoss``): at a given ``code`` (a constant: ``(D z - x)
        z^T / N`` for a dense dictionary, the decoder's gradient at the true code or at the lasso
        solution), or without one the gradient a training step on ``x`` follows: ``z_T`` of the model's
        ``layers`` steps in its gradient mode ``grad``, with its penalty (:meth:`loss_penalty`). The
        model's ``.grad`` fields are left as they are."""
        self._check_input(x)
        was_training = self.training
        try:
            with torch.enable_grad():
                if code is None:
                    self.train()
                    estimate = self(x)[-1]
                    penalty = self.loss_penalty()
                else:
                    copies, windows = self._copies(x)
                    estimate, penalty = average_shifts(self._synthesis(code.detach(), copies), windows), 0.0
                loss = 0.5 * (estimate - x).pow(2).flatten(1).sum(dim=1).mean() + penalty
                return torch.autograd.grad(loss, self.weight)[0]
        finally:
            self.train(was_training)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.conv and min(x.shape[-2:]) < self.weight.shape[-1]:
            raise ValueError(f"images must be at least kernel_size={self.weight.shape[-1]} on a side, "
                             f"got {tuple(x.shape[-2:])}")
        reason = self.shifts and shift_fits(*x.shape[-2:], self.weight.shape[-1], self.stride)
        if reason:
            raise ValueError(f"images of {tuple(x.shape[-2:])} pixels are {reason}")
        if not self.conv and x[0].numel() != self.weight.shape[0]:
            raise ValueError(f"x must hold C*H*W = {self.weight.shape[0]} values per image, "
                             f"got {tuple(x.shape)}")

    def loss_penalty(self, per_position: bool = False) -> Tensor:
        """``lam`` times the code penalty of the last forward's ``z_T``, mean over the batch (with
        ``shifts``: over the shifted copies of its images) and, with
        ``per_position``, over the code's positions too (a convolutional code's H' x W'; a dense code
        has one), as the task's ``data.loss_reduction=pixel_mean``; for the lasso loss (``g_dec``: on
        the detached code, no gradient; ``g_ae_lasso``); zero for ``g_ae_ls``."""
        if self._code is None:
            return self.weight.new_zeros(())
        positions = self._code[0, 0].numel() if per_position else 1
        return self.lam * self._penalty(self._code) / (self._code.shape[0] * positions)

    @torch.no_grad()
    def after_step(self) -> None:
        """Unit-norm atoms after every optimizer step (``normalize``, PUDLE's recipe); the count of steps
        of the threshold decay's schedule."""
        if self.decay_drop:
            self.decay_steps += 1
        if self.normalize:
            self.weight.copy_(unit_atoms(self.weight, self.conv))

    def dictionaries(self) -> dict[str, Tensor]:
        """The atoms of ``D``, detached: (K, C, k, k) filters, or the dense columns as (atoms, C, H, W)
        images."""
        atoms = self.weight.detach() if self.conv else self.weight.detach().T.reshape(-1, *self.image_shape)
        return {"D": atoms}

    @staticmethod
    def memory_estimate(config: dict, in_channels: int, train_batch: int, eval_batch: int,
                        init_images: Tensor | None = None,
                        input_sizes: dict[str, tuple[int, int]] | None = None,
                        init_dictionary: Tensor | None = None) -> dict[str, int]:
        """Bytes a run needs (see :mod:`unroll_cli.memory`): the dictionary with its gradient and Adam's
        moments; per layer about three codes and two images kept for the backward pass; at evaluation
        every layer's image and a few codes, for the largest of the task's inputs (without them, images
        up to ``EVAL_SIDE`` pixels on a side). A convolutional code is ``filters / stride^2`` times the
        pixels of the image; with ``shifts`` the encoder's images and codes are ``stride^2`` times more."""
        pixels = init_images[0].numel() if init_images is not None else in_channels * EVAL_SIDE ** 2
        eval_pixels = (in_channels * max(h * w for h, w in input_sizes.values()) if input_sizes
                       else max(pixels, in_channels * EVAL_SIDE ** 2))
        if config["conv"]:
            filters, k, stride = config["filters"], config["kernel_size"], config["stride"]
            ratio = filters / (in_channels * stride ** 2)
            if config.get("shifts"):
                pixels, eval_pixels = pixels * stride ** 2, eval_pixels * stride ** 2
            weights, code, eval_code = filters * in_channels * k * k, ratio * pixels, ratio * eval_pixels
        else:
            pixels = eval_pixels = config["input_dim"] or pixels
            weights, code, eval_code = pixels * config["atoms"], config["atoms"], config["atoms"]
        layers = config["layers"]
        train = layers * train_batch * (3 * code + 2 * pixels)
        evaluation = eval_batch * (layers * eval_pixels + 3 * eval_code)
        return {"model.layers": int(4 * (4 * weights + train + evaluation))}


class SparseAutoencoder(TiedAutoencoder):
    """PUDLE (Tolooshams & Ba, TMLR 2022): ``S`` is the soft threshold (``sign(z) ReLU(|z| - b)``, or
    ``ReLU(z - b)`` one-sided) or the hard threshold (``z [|z| > b]``, or ``z [z > b]``), with
    ``b = lam alpha``."""

    def __init__(self, in_channels: int, threshold: str = "soft", **options):
        super().__init__(in_channels, **options)
        self.threshold = check_choice("threshold", threshold, ("soft", "hard"))

    def _shrink(self, z: Tensor, b: float) -> Tensor:
        if self.threshold == "hard":
            return hard_threshold(z if self.two_sided else torch.relu(z), b)
        return soft_threshold(z, b) if self.two_sided else nonneg_soft_threshold(z, b)

    def _penalty(self, z: Tensor) -> Tensor:
        """``||z||_1`` summed over the batch."""
        return z.abs().sum()


class GroupSparseAutoencoder(TiedAutoencoder):
    """Group-sparse autoencoder (Theodosis et al., arXiv 2102.07003; ICASSP 2023): ``S`` is the block soft
    threshold ``z_g <- (1 - lam alpha / ||z_g||_2)_+ z_g`` over groups of ``group_size`` consecutive code
    entries (conv: channels at each position; dense: atoms), one-sided ``(1 - lam alpha / ||z_g||)_+
    ReLU(z_g)`` as the authors' code; atoms from the data by default (the silhouettes code)."""

    def __init__(self, in_channels: int, group_size: int = 4, init: str = "data", step: float = 0.003,
                 atoms: int = 320, **options):
        super().__init__(in_channels, init=init, step=step, atoms=atoms, **options)
        self.group_size = check_int("group_size", group_size, 1)
        entries = self.weight.shape[0 if self.conv else 1]
        if entries % self.group_size:
            raise ValueError(f"group_size={group_size} must divide the {entries} "
                             f"{'filters' if self.conv else 'atoms'}")

    def _shrink(self, z: Tensor, b: float) -> Tensor:
        return group_soft_threshold(z, b, self.group_size, 1, one_sided=not self.two_sided)

    def _penalty(self, z: Tensor) -> Tensor:
        """``sum_g ||z_g||_2`` summed over the batch (the group-lasso penalty)."""
        return torch.linalg.vector_norm(z.unflatten(1, (-1, self.group_size)), dim=2).sum()
