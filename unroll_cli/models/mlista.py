"""The multi-layer ISTA family of Sulam, Aberdam, Beck & Elad, "On Multi-Layer Basis
Pursuit, Efficient Algorithms and Convolutional Neural Networks" (TPAMI 2020), with the
architectures, initialisation and update equations of the authors' code.

Three convolutional dictionaries ``W_i`` are unfolded.  ``W_i^T z`` is ``conv2d(z, W_i)``
(analysis), ``W_i g`` is ``conv_transpose2d(g, W_i)`` (synthesis) and ``gamma_0 = x``.  The
pursuit starts from the CNN pass ``gamma_i = ReLU(c_i W_i^T gamma_{i-1} + b_i)``; each
unfolding of ML-ISTA (as the authors' code unfolds it) does

* top-down synthesis: ``g_3 = gamma_3``, ``g_{i-1} = W_i g_i`` (i = 3, 2);
* bottom-up steps: ``gamma_i = ReLU(g_i - c_i W_i^T (W_i g_i - gamma_{i-1}) + b_i)``, i = 1, 2, 3.

``ReLU(z + b)`` is ``nonneg_soft_threshold(z, -b)``.

Architectures (``arch``): ``"mnist"`` and ``"cifar10"``, with their convolution geometry in
:mod:`unroll_cli.models.mlista_architectures`.

Classifier (``operator``): the dense ``nn.Linear`` of the authors' code, or a butterfly / Monarch
layer with bias and its own random initialisation (:func:`unroll_cli.models.operators.linear_layer`;
Dao et al. 2019 / 2022), e.g. a 512 -> 10 butterfly is one 512x512 butterfly truncated to 10 outputs.
A trained dense classifier is compressed by ``structured(operator)``: the same model whose classifier
is a structured layer at the projection of the trained weight, with the trained bias
(``unroll-compress``, :mod:`unroll_cli.compress`).

Initialisation as the authors' code: unfolded kernels ``randn * 0.1 / sqrt(fan_in)``, plain
kernels ``randn / sqrt(fan_in)``, biases zero with shape (1, m, 1, 1), steps ``c_i = 1``.

Computation (the same values as the equations, up to rounding):

* ``W_i g_i`` in the step of layer i = 2, 3 is the synthesis ``g_{i-1}`` already computed
  top-down, so an ML-ISTA unfolding costs three transposed and three plain convolutions
  (the authors' code computes five transposed ones).
* Layer 1 works space-to-depth when its stride s divides its kernel: the (padded) image is
  ``pixel_unshuffle``-d once per forward into C*s^2 channels and W1 rearranged into a stride-1
  kernel (m1, C*s^2, k/s, k/s); image-space residuals stay in those coordinates (masked to
  zero on the padding).  oneDNN's strided convolutions with 1-3 input channels are slow.
* A convolution whose every output sees every input (MNIST's W3: 4x4 -> 1x1, CIFAR's W6: 3x3
  on 2x2) is one matrix product.
* Kernels are stored channels-last and, on CPU, so is the working image: oneDNN's fastest
  layout, with no reorder per call.
"""

from __future__ import annotations

import math
from numbers import Integral

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import Tensor, nn

from unroll_cli.errors import ConfigError
from unroll_cli.schema import constrained, register_schema
from unroll_cli.models.arguments import check_bool, check_int, fista_momentum
from unroll_cli.models.feedforward import Affine, FeedForward, Pool
from unroll_cli.models.mlista_architectures import (ARCHS, Plan, code_elements, forward_plan, kernel_shapes,
                                                    plan_kernels, sees_all, tap_index)
from unroll_cli.models.operators import OPERATORS, check_operator, linear_layer, structured_copy, structured_map
from unroll_cli.models.prox import nonneg_soft_threshold
from unroll_cli.models.rescaling import HiddenUnits

def _dense_matrix(W: Tensor, size, s: int, p: int) -> Tensor:
    """A convolution that ``sees_all`` as a matrix: rows (out channel, out position), columns
    (in position, in channel) -- a view of a channels-last kernel for a 1x1 output."""
    m, C, kh, kw = W.shape
    taps = W.permute(0, 2, 3, 1).reshape(m, kh * kw, C)
    index = tap_index(tuple(size), (kh, kw), s, p)
    if index == tuple(range(kh * kw)):
        return taps.reshape(m, -1)
    rows = len(index) // (size[0] * size[1])
    return taps.index_select(1, torch.tensor(index, device=W.device)).reshape(m * rows, -1)


def conv2d(z: Tensor, W: Tensor, bias: Tensor | None, s: int, p: int) -> Tensor:
    """``F.conv2d``; as one matrix product when every output sees every input (MNIST's W3 on
    4x4 -> 1x1, CIFAR's 3x3 W6 on 2x2), where oneDNN's convolutions are slow."""
    n, (h, w) = z.shape[0], z.shape[-2:]
    if not (sees_all(h, W.shape[2], s, p) and sees_all(w, W.shape[3], s, p)):
        return F.conv2d(z, W, bias, s, p)
    M = _dense_matrix(W, (h, w), s, p)
    positions = M.shape[0] // W.shape[0]
    if bias is not None and positions > 1:
        bias = bias.repeat_interleave(positions)
    out = F.linear(z.permute(0, 2, 3, 1).reshape(n, -1), M, bias)
    return out.view(n, W.shape[0], (h + 2 * p - W.shape[2]) // s + 1, (w + 2 * p - W.shape[3]) // s + 1)


def conv_transpose2d(g: Tensor, W: Tensor, s: int, p: int, size) -> Tensor:
    """``F.conv_transpose2d`` with output spatial size ``size``; the adjoint of ``conv2d``."""
    (h, w), (kh, kw) = tuple(size), W.shape[-2:]
    if sees_all(h, kh, s, p) and sees_all(w, kw, s, p):
        out = g.reshape(g.shape[0], -1) @ _dense_matrix(W, (h, w), s, p)
        return out.view(g.shape[0], h, w, W.shape[1]).permute(0, 3, 1, 2)
    pad = tuple(n - ((i - 1) * s - 2 * p + k) for n, i, k in zip((h, w), g.shape[-2:], (kh, kw)))
    return F.conv_transpose2d(g, W, None, s, p, pad)


def _kernel(W: Tensor) -> Tensor:
    """Kernels are stored channels-last, the activations' layout on CPU (see ``forward_plan``)."""
    return W.contiguous(memory_format=torch.channels_last)


@register_schema("model", "multilayer")
class MultiLayerModelConfig:
    """Multi-layer ISTA family (Sulam et al. 2020): architecture from the data, T unfoldings,
    a dense or structured classifier (``operator``, see :mod:`unroll_cli.models.operators`)."""

    _target_: str = MISSING
    name: str = MISSING
    task: str = "classification"
    unfoldings: int = constrained(6, "an integer >= 0", lambda v: v >= 0)
    operator: str = constrained("dense", "one of " + ", ".join(OPERATORS), lambda v: v in OPERATORS)


class MultiLayerNet(nn.Module):
    """Common pieces of the family: kernels of the unfolded layers, their convolutions, CIFAR's
    plain conv tail, the classifier ``log_softmax(Linear(.))`` (``operator``: dense, butterfly or
    monarch) and the ``forward`` interface.

    Subclasses implement ``_pursuit(plan, t) -> gamma_3`` and ``_first_kernel()``.
    """

    def __init__(self, arch: str = "mnist", in_channels: int = 1, num_classes: int = 10,
                 unfoldings: int = 6, operator: str = "dense",
                 image_size: int | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch (data.arch, the architecture the data calls for) must be one of "
                             f"{', '.join(sorted(ARCHS))}, got {arch!r}")
        self.arch = arch
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.unfoldings = check_int("unfoldings", unfoldings, 0)
        self.operator = check_operator(operator)
        spec = ARCHS[arch]
        self.padding = spec["padding"]
        self.strides = tuple(s for _, _, s in spec["layers"])
        self._shapes = kernel_shapes(spec, self.in_channels)
        fan_in = self._shapes[-1][0]
        self.tail_W = nn.ParameterList()
        self.tail_b = nn.ParameterList()
        for out in spec["tail"]:
            self.tail_W.append(nn.Parameter(_kernel(torch.randn(out, fan_in, 3, 3) / math.sqrt(fan_in * 9))))
            self.tail_b.append(nn.Parameter(torch.zeros(1, out, 1, 1)))
            fan_in = out
        self.classifier = linear_layer(fan_in, self.num_classes, self.operator)
        # the data's images (square), given by the task: refused here if too small
        self.image_size = spec["side"] if image_size is None else check_int("image_size", image_size, 1)
        self._check_image_size(self.image_size)

    def _check_image_size(self, side: int) -> None:
        """The architecture's layers must bring the data's images down to the 1x1 codes its classifier
        takes: each unfolded convolution to floor((n + 2 padding - k) / stride) + 1, the plain 3x3
        layers keep the size and the max-poolings after the second halve it."""
        spec, n = ARCHS[self.arch], side
        for _, k, stride in spec["layers"]:
            n = (n + 2 * spec["padding"] - k) // stride + 1 if n + 2 * spec["padding"] >= k else 0
        for j, _ in enumerate(spec["tail"]):
            n = n // 2 if j >= 1 else n
        if n != 1:
            raise ValueError(f"arch (data.arch={self.arch}) does not fit the data's {side}x{side} images: its "
                             f"layers leave {max(n, 0)}x{max(n, 0)} codes where its classifier takes 1x1")

    @staticmethod
    def memory_estimate(config: dict, arch: str, in_channels: int, num_classes: int, train_batch: int,
                        eval_batch: int, image_size: int | None = None) -> dict[str, int]:
        """Bytes of the activations (see :mod:`unroll_cli.memory`): the unfolded layers' outputs,
        a few tensors each per unfolding kept for the backward pass; one unfolding's at evaluation
        (the weights are a few MB whatever the config)."""
        spec = ARCHS.get(arch, ARCHS["mnist"])
        per_sample = code_elements(spec, image_size or spec["side"])
        unfoldings = int(config.get("unfoldings", 0)) + 1
        return {"model.unfoldings": 4 * per_sample * (4 * unfoldings * train_batch + 2 * eval_batch)}

    # -- parameters --------------------------------------------------------
    def _new_kernels(self) -> nn.ParameterList:
        """W1..W3 drawn as ``randn * 0.1 / sqrt(fan_in)``."""
        return nn.ParameterList(nn.Parameter(_kernel(torch.randn(s) * (0.1 / math.sqrt(s[1] * s[2] * s[3]))))
                                for s in self._shapes)

    def _new_biases(self) -> nn.ParameterList:
        return nn.ParameterList(nn.Parameter(torch.zeros(1, s[0], 1, 1)) for s in self._shapes)

    @staticmethod
    def _new_steps() -> nn.ParameterList:
        return nn.ParameterList(nn.Parameter(torch.ones(())) for _ in range(3))

    # -- operators ---------------------------------------------------------
    @staticmethod
    def _analysis(z: Tensor, i: int, W: Tensor, plan: Plan, bias: Tensor | None = None) -> Tensor:
        """``W_i^T z`` (+ bias, shape (m,)), layer i 0-based."""
        return conv2d(z, W, bias, plan.strides[i], plan.paddings[i])

    @staticmethod
    def _synthesis(g: Tensor, i: int, W: Tensor, size, plan: Plan) -> Tensor:
        """``W_i g``, output spatial size ``size``."""
        return conv_transpose2d(g, W, plan.strides[i], plan.paddings[i], size)

    @staticmethod
    def _residual(synth: Tensor, lower: Tensor | None, i: int, plan: Plan) -> Tensor:
        """``W_i g_i - gamma_{i-1}`` (``lower`` None: ``W_i g_i``); in layer 1's padded
        space-to-depth coordinates, zeroed on the padding."""
        r = synth if lower is None else synth - lower
        return r * plan.mask if i == 0 and plan.mask is not None else r

    def _encode(self, h: Tensor, i: int, W: Tensor, b: Tensor, plan: Plan) -> Tensor:
        """A CNN layer ``ReLU(W^T h + b)`` (``W`` may carry the step ``c_i``)."""
        return nonneg_soft_threshold(self._analysis(h, i, W, plan), -b)

    def _ista_step(self, g: Tensor, residual: Tensor, i: int, W: Tensor, b: Tensor, plan: Plan) -> Tensor:
        """``ReLU(g - W^T residual + b)`` as ``nonneg_soft_threshold(g, W^T residual - b)``, the
        bias fused into the convolution (``W`` may carry the step ``c_i``)."""
        return nonneg_soft_threshold(g, self._analysis(residual, i, W, plan, -b.view(-1)))

    def _head(self, gamma: Tensor) -> Tensor:
        """CIFAR's plain layers (if any), then ``log_softmax(Linear(flatten(gamma)))``."""
        for j, (W, b) in enumerate(zip(self.tail_W, self.tail_b)):
            gamma = torch.relu(conv2d(gamma, W, b.view(-1), 1, 1))
            if j >= 1:
                gamma = F.max_pool2d(gamma, 2)
        return F.log_softmax(self.classifier(gamma.flatten(1)), dim=1)

    # -- interface ---------------------------------------------------------
    def forward(self, x: Tensor, unfoldings: int | None = None) -> Tensor:
        """Log-probabilities (batch, classes) after ``unfoldings`` steps (default: T)."""
        t = self.unfoldings if unfoldings is None else self._check_unfoldings(unfoldings)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return self._head(self._pursuit(forward_plan(x, self.strides, self.padding, self._shapes[0][2]), t))

    def prunable_parameters(self) -> list[str]:
        """The filters of the unfolded and plain layers, for ``+callbacks=prune``; the classifier, the
        output layer, stays dense (open_lth's default). Biases, shaped (1, C, 1, 1), are not weights."""
        return [name for name, p in self.named_parameters() if p.requires_grad and not name.startswith("classifier.")
                and sum(size > 1 for size in p.shape) >= 2]

    def dictionaries(self) -> dict[str, Tensor]:
        """The first layer's filters W1 (m1, C, k, k), detached (and contiguous)."""
        return {"W1": self._first_kernel().detach().contiguous()}

    def dense_maps(self) -> dict[str, Tensor]:
        """The trained dense classifier's weight (classes x features), the map :meth:`structured`
        replaces; a structured classifier is refused (it has no dense matrix to compress)."""
        if self.operator != "dense":
            raise ValueError(f"the classifier is already {self.operator}: only a dense classifier is compressed")
        return {"classifier": self.classifier.weight.detach()}

    def structured(self, operator: str) -> MultiLayerNet:
        """This trained model with ``operator``: the classifier a structured layer at the projection of
        its trained weight, with its trained bias; every other parameter as trained."""
        layer = structured_map(self.dense_maps()["classifier"], operator, bias=self.classifier.bias)
        return structured_copy(self, operator, classifier=layer)

    def rescaling_pairs(self) -> list[HiddenUnits]:
        """The channels of every layer before the classifier: ``ReLU(c_i W_i^T h + b_i)`` (and CIFAR's plain
        layers, max-pooled) commutes with a positive per-channel scaling of ``W_i``'s output channels and
        ``b_i``, undone on the next kernel's input channels or the classifier's columns. Only the
        feed-forward net (``unfoldings=0``, ``cnn``) with a dense classifier has it: an unfolding applies
        ``W_i`` and ``W_i^T`` to the same codes, which a scaling of the channels does not keep."""
        if self.unfoldings != 0:
            raise ConfigError(f"model.unfoldings={self.unfoldings}: an unfolding applies W_i and W_i^T to the same "
                              "codes, so rescaling a channel does not preserve the function (unfoldings=0 does)")
        if self.operator != "dense":
            raise ConfigError(f"model.operator={self.operator}: a structured classifier has no columns to rescale")
        kernels, biases = self._cnn_parameters()
        layers = [*zip(kernels, biases), *zip(self.tail_W, self.tail_b)]
        readers = [W for W, _ in layers[1:]] + [self.classifier.weight]
        return [HiddenUnits(incoming=((W, 0),), outgoing=((reader, 1),), biases=((b, 1),))
                for (W, b), reader in zip(layers, readers)]

    def feedforward_layers(self) -> FeedForward:
        """The CNN pass (``unfoldings=0``) with a dense classifier: the unfolded layers' convolutions
        ``c_i W_i^T`` (stride, padding) with biases ``b_i``, CIFAR's plain 3x3 layers and the 2x2
        max-poolings after the last two, the classifier; a ReLU after every convolution."""
        if self.unfoldings != 0:
            raise ConfigError(f"model.unfoldings={self.unfoldings}: an unrolled model applies W_i and W_i^T to the "
                              "same codes (weights shared across layers, subtractions), where the one-pass "
                              "path-norm needs every edge's |weight| once (unfoldings=0 has it)")
        if self.operator != "dense":
            raise ConfigError(f"model.operator={self.operator}: a structured classifier is a product of factors, "
                              "not one dense map of the classifier's edges")
        kernels, biases = self._cnn_parameters()
        layers = [Affine(W.detach().double() * c, b.detach().view(-1), s, self.padding)  # c_i W_i unrounded
                  for c, W, b, s in zip(self._cnn_steps(), kernels, biases, self.strides)]
        for j, (W, b) in enumerate(zip(self.tail_W, self.tail_b)):
            layers.append(Affine(W.detach(), b.detach().view(-1), 1, 1))
            if j >= 1:
                layers.append(Pool(2, 2))
        layers.append(Affine(self.classifier.weight.detach(), self.classifier.bias.detach()))
        return FeedForward((self.in_channels, self.image_size, self.image_size), tuple(layers))

    def _check_unfoldings(self, t) -> int:
        return check_int("unfoldings", t, 0)

    def _pursuit(self, plan: Plan, t: int) -> Tensor:
        raise NotImplementedError

    def _first_kernel(self) -> Tensor:
        raise NotImplementedError

    def _cnn_parameters(self) -> tuple[list[Tensor], list[Tensor]]:
        """The kernels and biases of the CNN pass (``unfoldings=0``)."""
        raise NotImplementedError

    def _cnn_steps(self) -> list[float]:
        """The factors ``c_i`` of the CNN pass's kernels (none: 1)."""
        return [1.0] * 3


class _TiedNet(MultiLayerNet):
    """Models with one set of kernels ``W_i``, biases ``b_i`` and steps ``c_i`` for all unfoldings."""

    def __init__(self, arch: str = "mnist", in_channels: int = 1, num_classes: int = 10,
                 unfoldings: int = 6, operator: str = "dense",
                 image_size: int | None = None):
        super().__init__(arch, in_channels, num_classes, unfoldings, operator, image_size)
        self.W = self._new_kernels()
        self.b = self._new_biases()
        self.c = self._new_steps()

    def _first_kernel(self):
        return self.W[0]

    def _cnn_parameters(self):
        return list(self.W), list(self.b)

    def _cnn_steps(self):
        return [c.item() for c in self.c]

    def _step_kernels(self, plan: Plan) -> tuple[list[Tensor], list[Tensor]]:
        """``W_i`` and ``c_i W_i`` in the plan's coordinates, formed once per forward."""
        W = plan_kernels(self.W, plan)
        return W, [c * w for c, w in zip(self.c, W)]


class MLISTA(_TiedNet):
    """ML-ISTA unfolded (Sulam et al. 2020; the authors' ML_ISTA_NET): T unfoldings of top-down
    synthesis then bottom-up gradient/threshold steps (module docstring), weights tied across
    unfoldings, learned steps ``c_i``.  ``unfoldings=0`` is the feed-forward CNN."""

    def _momentum(self, t: int) -> list[float]:
        """Extrapolation weight of the deepest code in each unfolding (none for ML-ISTA)."""
        return [0.0] * t

    def _pursuit(self, plan, t):
        W, cW = self._step_kernels(plan)
        gammas, h = [], plan.image
        for i in range(3):
            h = self._encode(h, i, cW[i], self.b[i], plan)
            gammas.append(h)
        sizes = [plan.image.shape[-2:], gammas[0].shape[-2:], gammas[1].shape[-2:]]
        previous = gammas[2]
        for mu in self._momentum(t):
            top = gammas[2] if mu == 0.0 else torch.lerp(previous, gammas[2], 1.0 + mu)
            previous = gammas[2]
            synth = [None, None, top]  # synth[i] = g_{i+1}: top-down g_{i-1} = W_i g_i
            for i in (2, 1):
                synth[i - 1] = self._synthesis(synth[i], i, W[i], sizes[i], plan)
            for i in range(3):  # W_i g_i is synth[i-1] for layers 2, 3
                if i == 0:
                    residual = self._residual(self._synthesis(synth[0], 0, W[0], sizes[0], plan), plan.image, 0, plan)
                else:
                    residual = synth[i - 1] - gammas[i - 1]
                gammas[i] = self._ista_step(synth[i], residual, i, cW[i], self.b[i], plan)
        return gammas[2]


class MLFISTA(MLISTA):
    """ML-FISTA unfolded (Sulam et al. 2020; the authors' ML_FISTA_NET): FISTA
    momentum on the deepest code only, ``Z = gamma_3 + (t_{k-1} - 1)/t_k (gamma_3 - gamma_3^prev)``,
    ``t_0 = 1``, ``t_k = (1 + sqrt(1 + 4 t_{k-1}^2)) / 2``; ``Z`` replaces ``gamma_3`` in the
    synthesis and in the gamma_3 step.  ``momentum=False`` is ML-ISTA exactly."""

    def __init__(self, arch: str = "mnist", in_channels: int = 1, num_classes: int = 10,
                 unfoldings: int = 6, momentum: bool = True, operator: str = "dense",
                 image_size: int | None = None):
        super().__init__(arch, in_channels, num_classes, unfoldings, operator, image_size)
        self.momentum = check_bool("momentum", momentum)

    def _momentum(self, t):
        return fista_momentum(t) if self.momentum else [0.0] * t


class LBP(_TiedNet):
    """Layered basis pursuit (the authors' LBP_NET, Sulam et al. 2020): layer i runs all T steps
    ``gamma_i = ReLU(gamma_i - c_i W_i^T (W_i gamma_i - gamma_{i-1}) + b_i)`` from its CNN estimate
    ``ReLU(c_i W_i^T gamma_{i-1} + b_i)`` before layer i+1 starts; no top-down pass.
    ``unfoldings=0`` is the CNN."""

    def _pursuit(self, plan, t):
        W, cW = self._step_kernels(plan)
        lower = plan.image
        for i in range(3):
            gamma = self._encode(lower, i, cW[i], self.b[i], plan)
            for _ in range(t):
                synth = self._synthesis(gamma, i, W[i], lower.shape[-2:], plan)
                gamma = self._ista_step(gamma, self._residual(synth, lower, i, plan), i, cW[i], self.b[i], plan)
            lower = gamma
        return lower


class MLLISTA(MultiLayerNet):
    """Learned ML-ISTA (Sulam et al. 2020; the authors' ML_LISTA_NET): kernels ``B_i``
    besides ``W_i`` (same shapes and init), no steps.  CNN pass through B, then per unfolding
    top-down ``g_3 = gamma_3``, ``g_{i-1} = B_i g_i`` and bottom-up
    ``gamma_i = ReLU(g_i - W_i^T W_i g_i + B_i^T gamma_{i-1} + b_i)``.  ``B_1^T x`` is computed
    once per forward."""

    def __init__(self, arch: str = "mnist", in_channels: int = 1, num_classes: int = 10,
                 unfoldings: int = 6, operator: str = "dense",
                 image_size: int | None = None):
        super().__init__(arch, in_channels, num_classes, unfoldings, operator, image_size)
        self.W = self._new_kernels()
        self.B = self._new_kernels()
        self.b = self._new_biases()

    def _first_kernel(self):
        return self.W[0]

    def _cnn_parameters(self):
        return list(self.B), list(self.b)

    def _pursuit(self, plan, t):
        W, B = plan_kernels(self.W, plan), plan_kernels(self.B, plan)
        Bx = self._analysis(plan.image, 0, B[0], plan)
        gammas = [nonneg_soft_threshold(Bx, -self.b[0])]
        for i in (1, 2):
            gammas.append(self._encode(gammas[i - 1], i, B[i], self.b[i], plan))
        sizes = [plan.image.shape[-2:], gammas[0].shape[-2:], gammas[1].shape[-2:]]
        for _ in range(t):
            synth = [None, None, gammas[2]]
            for i in (2, 1):
                synth[i - 1] = self._synthesis(synth[i], i, B[i], sizes[i], plan)
            for i in range(3):
                lateral = Bx if i == 0 else self._analysis(gammas[i - 1], i, B[i], plan)
                gram = self._residual(self._synthesis(synth[i], i, W[i], sizes[i], plan), None, i, plan)
                theta = self._analysis(gram, i, W[i], plan, -self.b[i].view(-1)).sub_(lateral)
                gammas[i] = nonneg_soft_threshold(synth[i], theta)
        return gammas[2]


class AllFree(MultiLayerNet):
    """All-Free (the authors' All_Free, Sulam et al. 2020): untied weights, ``T+1`` copies of
    ``W_i`` and ``b_i`` (the authors hard-code T = 6), no steps and no top-down synthesis: CNN
    pass with copy 0, then unfolding k = 1..T does
    ``gamma_i = ReLU(gamma_i - W_i^(k)T (W_i^(k-1) gamma_i - gamma_{i-1}) + b_i^(k))``, i = 1, 2, 3.
    ``forward(x, t)`` with t <= T uses the first t+1 copies."""

    def __init__(self, arch: str = "mnist", in_channels: int = 1, num_classes: int = 10,
                 unfoldings: int = 6, operator: str = "dense",
                 image_size: int | None = None):
        super().__init__(arch, in_channels, num_classes, unfoldings, operator, image_size)
        self.W = nn.ModuleList(self._new_kernels() for _ in range(self.unfoldings + 1))
        self.b = nn.ModuleList(self._new_biases() for _ in range(self.unfoldings + 1))

    def _first_kernel(self):
        return self.W[0][0]

    def _cnn_parameters(self):
        return list(self.W[0]), list(self.b[0])

    def _check_unfoldings(self, t):
        if isinstance(t, bool) or not isinstance(t, Integral) or not 0 <= t <= self.unfoldings:
            raise ValueError(f"unfoldings must be an integer in [0, {self.unfoldings}], got {t!r}")
        return int(t)

    def _pursuit(self, plan, t):
        W = [plan_kernels(self.W[k], plan) for k in range(t + 1)]
        gammas, h = [], plan.image
        for i in range(3):
            h = self._encode(h, i, W[0][i], self.b[0][i], plan)
            gammas.append(h)
        for k in range(1, t + 1):
            lower = plan.image
            for i in range(3):
                synth = self._synthesis(gammas[i], i, W[k - 1][i], lower.shape[-2:], plan)
                residual = self._residual(synth, lower, i, plan)
                gammas[i] = self._ista_step(gammas[i], residual, i, W[k][i], self.b[k][i], plan)
                lower = gammas[i]
        return gammas[2]
