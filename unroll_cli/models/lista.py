"""ISTA, FISTA and the LISTA family, unrolled for ``y = A x (+ noise)``.

Batches are rows: ``y`` is (batch, m), ``x`` is (batch, n), ``A`` is (m, n).  Every
model uses the Lipschitz constant ``L = 1.001 ||A||_2^2`` of the LISTA-CPSS code,
the ISTA step ``1/L`` and the initial threshold ``lam / L``, and starts from
``x0 = 0``.

* ``ISTA`` / ``FISTA``: Daubechies et al. 2004 / Beck & Teboulle, SIAM J. Imaging Sci. 2009.
* ``LISTA``: Gregor & LeCun, ICML 2010 (``x <- eta(W x + B y)``).
* ``LISTACP``: coupled weights, Chen, Liu, Wang & Yin, NeurIPS 2018.
* ``TiLISTA``: tied coupled weight with per-layer step, Liu, Chen, Wang & Yin, ICLR 2019.
* ``ALISTA``: analytic weight (eq. 16), learned steps and thresholds, Liu et al. 2019.

Support selection (LISTA-SS / -CPSS, Chen et al. 2018): layer ``t``
(1-based) keeps the top ``min(ss_p_per_layer * t, ss_p_max)`` % of entries.

Structured maps (``operator``, LISTA and LISTA-CP): ``"dense"`` keeps the learned matrices as
parameters with the fused GEMMs below; ``"butterfly"`` / ``"monarch"`` make them layers of
:mod:`unroll_cli.models.operators`, started at the projection of ISTA's matrices (so exactly at
ISTA when those are representable), applied as plain ``layer(x)`` calls.  A trained dense LISTA or
LISTA-CP declares ``dense_maps()`` and ``structured(operator)``: the same model whose maps start at the
projections of the trained matrices instead (``unroll-compress``, :mod:`unroll_cli.compress`).
"""

from __future__ import annotations

import copy
from numbers import Integral, Real
from typing import NamedTuple

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from unroll_cli.errors import ConfigError
from unroll_cli.schema import constrained, register_schema
from unroll_cli.models.analytic import analytic_weight
from unroll_cli.models.arguments import check_bool, fista_momentum
from unroll_cli.models.operators import OPERATORS, check_operator, structured_copy, structured_map
from unroll_cli.models.prox import soft_threshold, support_selection_threshold
from unroll_cli.models.rescaling import HiddenUnits


class BaselineProblem(NamedTuple):
    """What a classical baseline may take from the sparse-coding problem it runs beside a model
    (``from_problem``): the matrix, the model's depth and ``lam``, and the probability ``p`` that an
    entry of a code is nonzero (``data.p``: a code's expected support is ``p n``)."""

    A: Tensor
    layers: int
    lam: float
    p: float


class UnfoldedLayer(NamedTuple):
    """Layer t of ``x_{t+1} = eta_{theta_t}(W_t x_t + B_t y)`` as dense matrices (``unfolded_weights()``,
    read by ``+diagnostics=coupling``): ``W_t`` (n, n), None where the layer has none (the first layer of
    untied W, which sees ``x_0 = 0``), and ``B_t`` (n, m)."""

    W: Tensor | None
    B: Tensor


def lipschitz_constant(A: Tensor) -> float:
    """``1.001 * ||A||_2^2``, computed in float64."""
    return 1.001 * torch.linalg.matrix_norm(A.detach().double(), ord=2).item() ** 2


def _addmm(bias, a: Tensor, b: Tensor, alpha: float = 1.0) -> Tensor:
    """``bias + alpha * a @ b`` with one GEMM; ``bias`` None stands for zero."""
    if bias is None:
        return torch.mm(a, b) if alpha == 1.0 else torch.mm(a, b).mul_(alpha)
    return torch.addmm(bias, a, b, alpha=alpha)


def _learned_map(matrix: Tensor, operator: str) -> nn.Parameter | nn.Module:
    """The learned matrix itself (dense) or a structured layer started at its projection."""
    return nn.Parameter(matrix) if operator == "dense" else structured_map(matrix, operator)


def _learned_maps(matrix: Tensor, operator: str, count: int) -> nn.ParameterList | nn.ModuleList:
    """``count`` independent copies of :func:`_learned_map` (untied weights)."""
    if operator == "dense":
        return nn.ParameterList(nn.Parameter(matrix.clone()) for _ in range(count))
    layer = structured_map(matrix, operator)
    return nn.ModuleList(copy.deepcopy(layer) for _ in range(count))


def _parameters_of(weight: nn.Parameter | nn.Module) -> list[nn.Parameter]:
    return [weight] if isinstance(weight, nn.Parameter) else list(weight.parameters())


def _weight_maps(model: LISTA | LISTACP, name: str = "W", tied: bool | None = None) -> dict[str, Tensor]:
    """A dense model's matrix ``name`` (``W``) as ``{"W": W}`` (tied) or ``{"W.0": W_0, "W.1": W_1, ...}``
    (one per layer), detached; a structured one is refused (it has no dense matrix to compress)."""
    if model.operator != "dense":
        raise ValueError(f"the model's maps are already {model.operator}: only a dense model is compressed")
    weight, tied = getattr(model, name), model.tied if tied is None else tied
    if tied:
        return {name: weight.detach()}
    return {f"{name}.{i}": w.detach() for i, w in enumerate(weight)}


def _structured_weights(maps: dict[str, Tensor], operator: str, tied: bool, name: str = "W") -> nn.Module:
    """The structured ``name`` (``W``) of :meth:`LISTA.structured`: one layer (tied) or one per matrix
    ``W.i``."""
    if tied:
        return structured_map(maps[name], operator)
    count = sum(key.startswith(f"{name}.") for key in maps)
    return nn.ModuleList(structured_map(maps[f"{name}.{i}"], operator) for i in range(count))


@register_schema("model", "classical")
class ClassicalModelConfig:
    """ISTA / FISTA: no learning; the baselines at the same depth."""

    _target_: str = MISSING
    name: str = MISSING
    task: str = "sparse_coding"  # the kind of data the model fits
    layers: int = constrained(16, "an integer >= 1", lambda v: v >= 1)
    lam: float = constrained(0.4, "a number >= 0", lambda v: v >= 0)


@register_schema("model", "learned")
class LearnedModelConfig(ClassicalModelConfig):
    """Step/threshold-learning models with optional support selection (TiLISTA, ALISTA)."""

    # percent of entries added to the selected support per layer, and its cap
    ss_p_per_layer: float = constrained(0.0, "a percentage in [0, 100]", lambda v: 0 <= v <= 100)
    ss_p_max: float = constrained(0.0, "a percentage in [0, 100]", lambda v: 0 <= v <= 100)


@register_schema("model", "lista_cp")
class LISTACPModelConfig(LearnedModelConfig):
    """LISTA-CP (and LISTA-CPSS): weights tied or per layer, dense or structured (``operator``, see
    :mod:`unroll_cli.models.operators`)."""

    tied: bool = True
    operator: str = constrained("dense", "one of " + ", ".join(OPERATORS), lambda v: v in OPERATORS)


@register_schema("model", "lista")
class LISTAModelConfig(LISTACPModelConfig):
    """LISTA (and LISTA-SS): LISTA-CP's keys, and ``B`` and the thresholds as LISTA's untied form
    (Gregor & LeCun 2010; Chen et al. 2018) may have them."""

    tied_b: bool = True  # one B for every layer (false: one B_t per layer)
    unit_thresholds: bool = False  # one threshold per layer (true: a vector of n, one per unit)


class UnrolledISTA(nn.Module):
    """Common loop and interface of the unrolled ISTA-type models.

    Layer ``t`` (0-based) maps the current point ``v`` (``None`` for ``x0 = 0``) to
    ``x_{t+1} = shrink_t(affine_t(v))``; ``v`` is then ``x_{t+1}`` or, for FISTA, an
    extrapolation.  Subclasses supply ``_prepare`` (per-forward precomputation),
    ``_affine`` and ``layer_parameters``; learned thresholds live in ``self.theta``.
    """

    def __init__(self, A: Tensor, layers: int, lam: float,
                 ss_p_per_layer: float = 0.0, ss_p_max: float = 0.0):
        super().__init__()
        if not isinstance(A, Tensor) or A.dim() != 2 or not A.is_floating_point() or A.numel() == 0:
            raise ValueError("A must be a non-empty 2-D floating-point tensor (m, n)")
        if isinstance(layers, bool) or not isinstance(layers, Integral) or layers < 1:
            raise ValueError(f"layers must be an integer >= 1, got {layers!r}")
        if isinstance(lam, bool) or not isinstance(lam, Real) or not lam >= 0:
            raise ValueError(f"lam must be a real number >= 0, got {lam!r}")
        if not isinstance(ss_p_per_layer, Real) or not ss_p_per_layer >= 0:
            raise ValueError(f"ss_p_per_layer must be >= 0, got {ss_p_per_layer!r}")
        if not isinstance(ss_p_max, Real) or not 0 <= ss_p_max <= 100:
            raise ValueError(f"ss_p_max must lie in [0, 100], got {ss_p_max!r}")
        self.register_buffer("A", A.detach().clone())
        self.layers = int(layers)
        self.lam = float(lam)
        self.L = lipschitz_constant(A)
        self.ss_percents = [min(ss_p_per_layer * (t + 1), ss_p_max) for t in range(self.layers)]

    @staticmethod
    def memory_estimate(config: dict, A: Tensor, train_batch: int, eval_batch: int) -> dict[str, int]:
        """Bytes a run needs (see :mod:`unroll_cli.memory`): an (n, max(m, n)) weight per layer
        (one if tied), and an (n, m) ``B`` per layer unless it is shared (LISTA's ``tied_b``), with their
        gradients and Adam's two moments (an upper bound for a structured ``operator``); per layer a few
        (batch, m + n) tensors kept for the backward pass, and every layer's estimate at evaluation."""
        (m, n), layers = A.shape, int(config["layers"])
        weights = ((1 if config.get("tied", True) else layers) * n * max(m, n)
                   + (0 if config.get("tied_b", True) else layers) * n * m)
        activations = 4 * layers * train_batch * (m + n) + layers * eval_batch * n
        return {"model.layers": 4 * (4 * weights + activations)}

    # -- interface ---------------------------------------------------------
    def forward(self, y: Tensor, depth: int | None = None) -> list[Tensor]:
        """Estimates after layers 1..depth (default: all ``layers``)."""
        depth = self._checked_depth(y, depth)
        cache = self._prepare(y)
        estimates, v = [], None
        for t in range(depth):
            x = self._shrink(t, self._affine(t, v, cache))
            v = self._extrapolate(t, x, estimates[-1] if estimates else None)
            estimates.append(x)
        return estimates

    def _checked_depth(self, y: Tensor, depth: int | None) -> int:
        """``depth`` (default: all ``layers``), checked with ``y``'s shape (batch, m)."""
        depth = self.layers if depth is None else depth
        if isinstance(depth, bool) or not isinstance(depth, Integral) or not 1 <= depth <= self.layers:
            raise ValueError(f"depth must be an integer in [1, {self.layers}], got {depth!r}")
        if y.dim() != 2 or y.shape[1] != self.A.shape[0]:
            raise ValueError(f"y must have shape (batch, {self.A.shape[0]}), got {tuple(y.shape)}")
        return depth

    @classmethod
    def from_problem(cls, problem: BaselineProblem) -> UnrolledISTA:
        """This algorithm as a baseline of ``problem`` (the task's ``data.baselines``): ISTA and FISTA
        at the model's depth and ``lam``."""
        return cls(A=problem.A, layers=problem.layers, lam=problem.lam)

    def layer_parameters(self, t: int) -> list[nn.Parameter]:
        """Parameters first used in layer ``t`` (shared ones belong to layer 0)."""
        self._check_layer(t)
        return []

    def thresholds(self) -> Tensor:
        """Threshold applied in each layer, shape (layers,), detached: a layer with one threshold per unit
        (LISTA's ``unit_thresholds``) gives their mean."""
        return torch.stack([torch.as_tensor(self._theta(t), dtype=self.A.dtype, device=self.A.device).mean()
                            for t in range(self.layers)]).detach()

    def step_sizes(self) -> Tensor | None:
        """Learned per-layer step sizes, or None for models without them."""
        return None

    def dictionaries(self) -> dict[str, Tensor]:
        """The measurement matrix ``A`` (m, n), whose columns are the atoms."""
        return {"A": self.A}

    def prunable_parameters(self) -> list[str]:
        """The learned matrices of the layers (or their butterfly / Monarch factors), for
        ``+callbacks=prune``: all of them, since the code is the output (no output layer to keep dense)."""
        return [name for name, p in self.named_parameters() if p.requires_grad and p.dim() >= 2]

    # -- hooks -------------------------------------------------------------
    def _prepare(self, y: Tensor):
        raise NotImplementedError

    def _affine(self, t: int, v: Tensor | None, cache) -> Tensor:
        raise NotImplementedError

    def _theta(self, t: int):
        return self.theta[t]

    def _extrapolate(self, t: int, x: Tensor, x_prev: Tensor | None) -> Tensor:
        return x

    # -- helpers -----------------------------------------------------------
    def _shrink(self, t: int, z: Tensor) -> Tensor:
        percent = self.ss_percents[t]
        if percent > 0:
            return support_selection_threshold(z, self._theta(t), percent)
        return soft_threshold(z, self._theta(t))

    def _check_layer(self, t: int) -> None:
        if isinstance(t, bool) or not isinstance(t, Integral) or not 0 <= t < self.layers:
            raise ValueError(f"t must be an integer in [0, {self.layers - 1}], got {t!r}")

    def _threshold_parameters(self, units: int | None = None) -> nn.ParameterList:
        """``lam / L`` per layer: a scalar, or ``units`` of them (one per unit)."""
        theta = torch.tensor(self.lam / self.L, dtype=self.A.dtype, device=self.A.device)
        return nn.ParameterList(nn.Parameter(theta.clone() if units is None else theta.repeat(units))
                                for _ in range(self.layers))


class CoupledUnrolledISTA(UnrolledISTA):
    """Models updating ``x <- eta(x + step_t * W_t^T (y - A x))`` (W_t is (m, n)).

    In rows: ``z = x + step_t * (y - x A^T) W_t``, two GEMMs per layer with the
    additions fused into them (``addmm`` with ``-A^T`` precomputed once per
    forward).  A tensor step multiplies the (batch, m) residual; a Python number
    step is folded into the second GEMM.  Subclasses supply ``_coupling(t)``.
    """

    #: ``W_t = I - B_t A`` by construction (``B_t = step_t W_t^T``): Chen et al. 2018's coupling holds
    #: exactly, ``+diagnostics=coupling`` reports its residual as 0
    couples_weights = True

    def _prepare(self, y: Tensor):
        return y, (-self.A).t()

    def _affine(self, t, v, cache):
        y, minus_At = cache
        residual = y if v is None else torch.addmm(y, v, minus_At)
        weight, step = self._coupling(t)
        if isinstance(step, Tensor):
            residual, step = residual * step, 1.0
        return _addmm(v, residual, weight, alpha=step)

    def _coupling(self, t: int) -> tuple[Tensor, Tensor | float]:
        raise NotImplementedError

    def rescaling_pairs(self) -> list[HiddenUnits]:
        """None: the estimate enters the next layer as ``x - W_t^T A x``, through the identity and the
        fixed ``A``, and ``D_{t+1} (I - W_t^T A) D_t^-1 = I - W'^T A`` with ``W'^T = D_{t+1} W_t^T`` (the
        ``y`` term) forces ``D_t = D_{t+1} = I`` for a generic ``W_t^T A``."""
        raise ConfigError(f"{type(self).__name__} has no rescaling symmetry: the coupled update x + W_t^T (y - A x) "
                          "passes x through the identity and the fixed A, which no scaling of its units but the "
                          "identity keeps (model=lista with model.tied=false model.tied_b=false "
                          "model.unit_thresholds=true has one)")


class ISTA(CoupledUnrolledISTA):
    """ISTA (Daubechies et al. 2004): ``x <- eta_{lam/L}(x + A^T (y - A x) / L)``; no parameters."""

    def __init__(self, A: Tensor, layers: int, lam: float):
        super().__init__(A, layers, lam)

    def _coupling(self, t):
        return self.A, 1.0 / self.L

    def _theta(self, t):
        return self.lam / self.L


class FISTA(ISTA):
    """FISTA (Beck & Teboulle 2009): ISTA steps taken at the extrapolated
    point ``v_{k+1} = x_k + (t_k - 1)/t_{k+1} (x_k - x_{k-1})``, ``t_1 = 1``,
    ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``; no parameters."""

    def __init__(self, A: Tensor, layers: int, lam: float):
        super().__init__(A, layers, lam)
        self._momentum = fista_momentum(self.layers)

    def _extrapolate(self, t, x, x_prev):
        if x_prev is None:
            return x
        return torch.add(x, x - x_prev, alpha=self._momentum[t])


class LISTA(UnrolledISTA):
    """LISTA (Gregor & LeCun 2010): ``x_{t+1} = eta_{theta_t}(W_{t-1} x_t + B_t y)``, ``x_0 = 0``.

    ``B`` (n, m) is shared (``tied_b``, the default) or one ``B_t`` per layer 0..T-1; ``W`` (n, n) is
    one tied matrix or, untied, one per layer 1..T-1 (layer 0 sees ``x0 = 0``, where a ``W`` would
    have no effect and no gradient; ``W[t - 1]`` is layer t's); ``theta_t`` is a scalar or, with
    ``unit_thresholds``, a vector of n. Initialised from ISTA: ``B = A^T / L``, ``W = I - A^T A / L``,
    ``theta_t = lam / L``.  Dense: a shared ``B y`` is computed once per forward and fused into the
    ``W x`` GEMM.  Structured (``operator``): ``W`` and ``B`` are butterfly or Monarch layers started
    at the projections of these matrices.  With ``ss_p_per_layer > 0`` this is LISTA-SS (Chen et al. 2018).

    Rescaling (:meth:`rescaling_pairs`): ``eta_{d theta}(d z) = d eta_theta(z)`` for ``d > 0``, so with
    ``W``, ``B`` untied and thresholds per unit, ``W_{t-1} -> D_{t+1} W_{t-1} D_t^-1``,
    ``B_t -> D_{t+1} B_t``, ``theta_t -> D_{t+1} theta_t`` (``D_T = I``) keeps the last estimate ``x_T``
    exactly, while each earlier estimate ``x_t`` becomes ``D_t x_t``.
    """

    def __init__(self, A: Tensor, layers: int, lam: float, tied: bool = True,
                 ss_p_per_layer: float = 0.0, ss_p_max: float = 0.0, operator: str = "dense",
                 tied_b: bool = True, unit_thresholds: bool = False):
        super().__init__(A, layers, lam, ss_p_per_layer, ss_p_max)
        self.tied = check_bool("tied", tied)
        self.tied_b = check_bool("tied_b", tied_b)
        self.unit_thresholds = check_bool("unit_thresholds", unit_thresholds)
        self.operator = check_operator(operator)
        A64 = self.A.double()
        B = (A64.t() / self.L).to(self.A.dtype)
        W = (torch.eye(A64.shape[1], dtype=torch.float64, device=A64.device)
             - A64.t() @ A64 / self.L).to(self.A.dtype)
        self.B = _learned_map(B, operator) if tied_b else _learned_maps(B, operator, self.layers)
        self.W = _learned_map(W, operator) if tied else _learned_maps(W, operator, self.layers - 1)
        self.theta = self._threshold_parameters(self.A.shape[1] if unit_thresholds else None)

    def _prepare(self, y):
        return self._map(self.B, y) if self.tied_b else y

    def _affine(self, t, v, cache):
        By = cache if self.tied_b else self._map(self.B[t], cache)
        if v is None:
            return By
        W = self.W if self.tied else self.W[t - 1]
        return torch.addmm(By, v, W.t()) if self.operator == "dense" else By + W(v)

    def _map(self, weight: Tensor | nn.Module, x: Tensor) -> Tensor:
        """``x`` (rows) through a learned map: ``x @ weight^T`` (dense) or ``weight(x)``."""
        return x @ weight.t() if self.operator == "dense" else weight(x)

    def unfolded_weights(self) -> list[UnfoldedLayer]:
        """Each layer's ``W_t`` and ``B_t`` as dense matrices, detached (a structured map applied to the
        identity); ``W`` is None for the first layer of untied W (it sees ``x_0 = 0``)."""
        eye_n = torch.eye(self.A.shape[1], dtype=self.A.dtype, device=self.A.device)
        eye_m = torch.eye(self.A.shape[0], dtype=self.A.dtype, device=self.A.device)
        dense = lambda weight, eye: self._map(weight, eye).t().detach()  # noqa: E731
        W = [dense(self.W, eye_n)] * self.layers if self.tied else [None] + [dense(w, eye_n) for w in self.W]
        B = [dense(self.B, eye_m)] * self.layers if self.tied_b else [dense(b, eye_m) for b in self.B]
        return [UnfoldedLayer(w, b) for w, b in zip(W, B)]

    def layer_parameters(self, t):
        self._check_layer(t)
        if self.tied_b:
            own_b = _parameters_of(self.B) if t == 0 else []
        else:
            own_b = _parameters_of(self.B[t])
        if t == 0:
            return own_b + (_parameters_of(self.W) if self.tied else []) + [self.theta[0]]
        return ([] if self.tied else _parameters_of(self.W[t - 1])) + own_b + [self.theta[t]]

    def dense_maps(self) -> dict[str, Tensor]:
        """The trained matrices as the ``(out, in)`` maps :meth:`structured` replaces, by the name of
        their layer there: ``W`` (tied) or ``W.0``, ``W.1``, ... (n x n), then ``B`` (shared) or ``B.0``,
        ``B.1``, ... (n x m)."""
        return {**_weight_maps(self), **_weight_maps(self, "B", self.tied_b)}

    def structured(self, operator: str) -> LISTA:
        """This trained model with ``operator``: ``W`` and ``B`` structured layers at the projections
        of the trained matrices, the thresholds as trained."""
        maps = self.dense_maps()
        return structured_copy(self, operator, W=_structured_weights(maps, operator, self.tied),
                               B=_structured_weights(maps, operator, self.tied_b, "B"))

    def rescaling_pairs(self) -> list[HiddenUnits]:
        """The units of the estimates ``x_1 .. x_{T-1}`` (layer t's output, t = 0..T-2): the rows of
        ``W[t - 1]`` and ``B_t`` and the entries of ``theta_t`` (scaled as biases) in, the columns of
        ``W[t]`` out. Only untied ``W`` and ``B``, per-unit thresholds, no support selection and dense maps
        have a per-unit symmetry; any other parametrisation is refused saying why."""
        reasons = [reason for broken, reason in (
            (self.tied, "model.tied=true (one W for all layers: D_{t+1} W D_t^-1 = W with D_T = I forces every D_t = I)"),
            (self.tied_b, "model.tied_b=true (one B for all layers: D_t B = B forces D_t = I)"),
            (not self.unit_thresholds, "model.unit_thresholds=false (a scalar threshold per layer admits only "
                                       "one factor for all of its units)"),
            (any(self.ss_percents), "model.ss_p_per_layer>0 (support selection ranks the units by magnitude, "
                                    "which a per-unit scaling reorders)"),
            (self.operator != "dense", f"model.operator={self.operator} (a structured map has no rows and "
                                       "columns to scale)")) if broken]
        if reasons:
            raise ConfigError("LISTA has no per-unit rescaling symmetry with " + "; ".join(reasons)
                              + ": model.tied=false model.tied_b=false model.unit_thresholds=true (dense, "
                              "without support selection) has it")
        return [HiddenUnits(incoming=((self.B[t], 0),) + (((self.W[t - 1], 0),) if t > 0 else ()),
                            outgoing=((self.W[t], 1),), biases=((self.theta[t], 0),))
                for t in range(self.layers - 1)]


class LISTACP(CoupledUnrolledISTA):
    """LISTA-CP (Chen et al. 2018): ``x <- eta_{theta_t}(x + W_t^T (y - A x))``.

    ``W`` (m, n), tied or one per layer, initialised to ``A / L``; ``theta_t = lam / L``.
    Structured (``operator``): each ``W_t^T`` is a butterfly or Monarch layer (m -> n) started
    at the projection of ``A^T / L``, applied to the residual as ``x + W_t^T(y - A x)``.
    With ``ss_p_per_layer > 0`` this is LISTA-CPSS.
    """

    def __init__(self, A: Tensor, layers: int, lam: float, tied: bool = True,
                 ss_p_per_layer: float = 0.0, ss_p_max: float = 0.0, operator: str = "dense"):
        super().__init__(A, layers, lam, ss_p_per_layer, ss_p_max)
        self.tied = check_bool("tied", tied)
        self.operator = check_operator(operator)
        W = (self.A.double() / self.L).to(self.A.dtype)
        if operator != "dense":
            W = W.t()  # the structured layer maps the (batch, m) residual to (batch, n)
        self.W = _learned_map(W, operator) if tied else _learned_maps(W, operator, self.layers)
        self.theta = self._threshold_parameters()

    def _affine(self, t, v, cache):
        if self.operator == "dense":
            return super()._affine(t, v, cache)
        y, minus_At = cache
        residual = y if v is None else torch.addmm(y, v, minus_At)
        z = self._coupling(t)[0](residual)
        return z if v is None else z + v

    def _coupling(self, t):
        return (self.W if self.tied else self.W[t]), 1.0

    def coupled_weight(self) -> Tensor | None:
        """The one dense ``W`` (m, n) of all layers (tied), detached; None when untied or structured."""
        return self.W.detach() if self.tied and self.operator == "dense" else None

    def layer_parameters(self, t):
        self._check_layer(t)
        if self.tied:
            return (_parameters_of(self.W) if t == 0 else []) + [self.theta[t]]
        return _parameters_of(self.W[t]) + [self.theta[t]]

    def dense_maps(self) -> dict[str, Tensor]:
        """The trained ``W_t^T`` (n x m, applied to the residual) as the ``(out, in)`` maps
        :meth:`structured` replaces: ``W`` (tied) or ``W.0``, ``W.1``, ... (one per layer)."""
        return {name: w.t() for name, w in _weight_maps(self).items()}

    def structured(self, operator: str) -> LISTACP:
        """This trained model with ``operator``: each ``W_t^T`` a structured layer at the projection of
        the trained matrix, the thresholds as trained."""
        return structured_copy(self, operator, W=_structured_weights(self.dense_maps(), operator, self.tied))


class _SteppedCoupled(CoupledUnrolledISTA):
    """Coupled update with a learned step per layer: ``x <- eta(x + gamma_t W^T (y - A x))``."""

    def _init_steps(self, gamma: float) -> None:
        self.gamma = nn.ParameterList(nn.Parameter(torch.tensor(gamma, dtype=self.A.dtype, device=self.A.device))
                                      for _ in range(self.layers))
        self.theta = self._threshold_parameters()

    def _coupling(self, t):
        return self.W, self.gamma[t]

    def coupled_weight(self) -> Tensor:
        """The ``W`` (m, n) of every layer, detached (learned in TiLISTA, analytic in ALISTA)."""
        return self.W.detach()

    def step_sizes(self):
        return torch.stack(list(self.gamma)).detach()


class TiLISTA(_SteppedCoupled):
    """TiLISTA (Liu et al. 2019): one tied learned ``W`` (m, n), per-layer step
    ``gamma_t`` and threshold ``theta_t``.  Initialised to reproduce ISTA exactly:
    ``W = A``, ``gamma_t = 1/L``, ``theta_t = lam/L``."""

    def __init__(self, A: Tensor, layers: int, lam: float,
                 ss_p_per_layer: float = 0.0, ss_p_max: float = 0.0):
        super().__init__(A, layers, lam, ss_p_per_layer, ss_p_max)
        self.W = nn.Parameter(self.A.clone())
        self._init_steps(1.0 / self.L)

    def layer_parameters(self, t):
        self._check_layer(t)
        return ([self.W] if t == 0 else []) + [self.gamma[t], self.theta[t]]


class ALISTA(_SteppedCoupled):
    """ALISTA (Liu et al. 2019): the analytic weight ``W = analytic_weight(A)``
    (eq. 16, a fixed buffer) with learned per-layer ``gamma_t`` and ``theta_t`` only
    (2T parameters).

    Initialisation as in the authors' code: ``gamma_t = 1.0`` and
    ``theta_t = lam / L``.  Since ``diag(W^T A) = 1`` the step 1 is the natural
    scale of ``W`` (it plays the role ``1/L`` plays for ``W = A``); the model is
    therefore not ISTA at initialisation.
    """

    def __init__(self, A: Tensor, layers: int, lam: float,
                 ss_p_per_layer: float = 0.0, ss_p_max: float = 0.0):
        super().__init__(A, layers, lam, ss_p_per_layer, ss_p_max)
        self.register_buffer("W", analytic_weight(self.A))
        self._init_steps(1.0)

    def layer_parameters(self, t):
        self._check_layer(t)
        return [self.gamma[t], self.theta[t]]
