"""Worst-case l2 perturbations of the input (``+diagnostics=robustness``): the task's metric and the
stability of the code's support under them.

For each ``eps`` and each test input x (with its clean target t), projected gradient ascent (PGD,
Madry et al. 2018, in its l2 form) on the reconstruction loss ``0.5 ||f(x + delta) - t||^2`` of the
model's final output, ``delta`` kept in the ball ``||delta||_2 <= eps ||x||_2`` of each sample: a
random start in the ball (drawn by ``seed``), then ``steps`` steps of length ``step_size * eps ||x||``
along the normalised gradient, each projected back on the ball. Each sample keeps the worst input
found, the clean one included (at ``eps = 0`` the metrics are the clean ones).

Metrics, for each eps: the task's own (``robustness/nmse_db_eps0.05`` on ``data=synthetic_dl``,
``robustness/psnr_eps0.05`` on image denoising) and ``robustness/jaccard_eps0.05``, the mean over
samples of ``|A ∩ A'| / |A ∪ A'|`` between the active sets of the clean and perturbed codes
(``encode(x)``): the groups of ``group_size`` consecutive code entries (conv: channels at each
position) with a non-zero entry; 1 when both are empty. The groups are the model's own
(``model.group_size``: a plain sparse model's are single atoms) unless the key ``group_size`` sets
others, e.g. the data's groups for both models of a comparison (the same unit for both).

What it takes: of the task, ``test_pairs()`` (batches of test inputs and clean targets) and
``reconstruction_scores(estimate, target)`` (its metrics of one batch, which the diagnostic averages
over the batches weighted by their samples); of the model, ``encode(x)`` and ``group_size``.
"""
from __future__ import annotations

from numbers import Integral, Real

import torch
from torch import Tensor

from unroll_cli.evaluate.diagnostics import Diagnostic

TASK_MEMBERS = ("test_pairs", "reconstruction_scores")
MODEL_MEMBERS = {"encode": "its last code, encode(x)", "group_size": "the code entries of a group of its threshold"}


def active_groups(code: Tensor, group_size: int) -> Tensor:
    """(N, groups) booleans: which groups of ``group_size`` consecutive entries of dimension 1 (at every
    position of a convolutional code) have a non-zero entry."""
    return code.unflatten(1, (-1, group_size)).ne(0).any(dim=2).flatten(1)


def jaccard(a: Tensor, b: Tensor) -> Tensor:
    """Per row of the boolean sets ``a`` and ``b``: ``|a ∩ b| / |a ∪ b|``, 1 when both are empty."""
    inter, union = (a & b).sum(dim=1), (a | b).sum(dim=1)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter, dtype=torch.float))


def _per_sample(delta: Tensor) -> Tensor:
    """The l2 norm of each sample, shaped to broadcast over the sample."""
    return delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.dim() - 1))


def project(delta: Tensor, radius: Tensor) -> Tensor:
    """``delta`` projected on the l2 balls of ``radius`` (per sample, broadcastable)."""
    return delta * (radius / _per_sample(delta).clamp_min(1e-30)).clamp(max=1.0)


def pgd(model: torch.nn.Module, x: Tensor, target: Tensor, eps: float, steps: int, step_size: float,
        gen: torch.Generator) -> Tensor:
    """The worst input found in each sample's ball ``||x' - x|| <= eps ||x||`` (module docstring)."""
    radius = eps * _per_sample(x)

    def losses(inputs: Tensor) -> Tensor:
        return 0.5 * (model(inputs)[-1] - target).pow(2).flatten(1).sum(dim=1)

    with torch.no_grad():
        worst, worst_loss = x.clone(), losses(x)
    if eps == 0:
        return worst
    direction = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    scale = torch.rand(len(x), generator=gen, dtype=x.dtype).to(x.device).view_as(radius)
    delta = project(direction / _per_sample(direction).clamp_min(1e-30) * radius * scale, radius)
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = losses(x + delta)
            grad, = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            better = loss > worst_loss
            worst[better], worst_loss[better] = (x + delta)[better], loss[better]
            delta = project(delta + step_size * radius * grad / _per_sample(grad).clamp_min(1e-30), radius)
    with torch.no_grad():
        loss = losses(x + delta)
        better = loss > worst_loss
        worst[better] = (x + delta)[better]
    return worst


class Robustness(Diagnostic):
    """The eps sweep of :func:`pgd` on the task's test pairs: its metric and the codes' Jaccard per eps."""

    def __init__(self, epsilons=(0.01, 0.05, 0.1), steps: int = 10, step_size: float = 0.25, seed: int = 0,
                 group_size: int | None = None, per_epoch: bool = False):
        super().__init__(per_epoch)
        epsilons = list(epsilons) if not isinstance(epsilons, (str, Real)) else epsilons
        if not isinstance(epsilons, list) or not epsilons or any(
                isinstance(v, bool) or not isinstance(v, Real) or not v >= 0 for v in epsilons):
            raise ValueError(f"epsilons must be a non-empty list of numbers >= 0, got {epsilons!r}")
        if len({f"{v:g}" for v in epsilons}) != len(epsilons):
            raise ValueError(f"epsilons must be distinct as the metric names print them (jaccard_eps0.05), "
                             f"got {epsilons!r}")
        integers = [("steps", steps, 1), ("seed", seed, 0)]
        if group_size is not None:
            integers.append(("group_size", group_size, 1))
        for key, value, low in integers:
            if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        if isinstance(step_size, bool) or not isinstance(step_size, Real) or not step_size > 0:
            raise ValueError(f"step_size must be a number > 0 (a fraction of the ball's radius), got {step_size!r}")
        self.epsilons, self.steps, self.step_size = [float(v) for v in epsilons], steps, float(step_size)
        self.seed, self.group_size = seed, group_size

    def refuse(self, model) -> str | None:
        lacking = [f"{name} ({use})" for name, use in MODEL_MEMBERS.items() if not hasattr(model, name)]
        if lacking:
            return f"it lacks {', '.join(lacking)}"
        if self.task is not None and not all(callable(getattr(self.task, m, None)) for m in TASK_MEMBERS):
            return (f"its data ({type(self.task).__name__}) gives no test pairs and metric "
                    f"({', '.join(TASK_MEMBERS)}) to perturb")
        if self.group_size is not None and self.task is not None:
            entries = model.encode(self.task.test_pairs()[0][0][:1]).shape[1]
            if entries % self.group_size:
                return f"diagnostics.robustness.group_size={self.group_size} does not divide its {entries} code entries"
        return None

    def groups(self, model) -> int:
        """The code entries of a group of the active sets: the key ``group_size`` or the model's."""
        return model.group_size if self.group_size is None else self.group_size

    def measure(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            return self._sweep(model)
        finally:
            model.train(was_training)

    def _sweep(self, model) -> dict[str, float]:
        gen = torch.Generator().manual_seed(self.seed)
        pairs = self.task.test_pairs()
        metrics: dict[str, float] = {}
        for eps in self.epsilons:
            sums: dict[str, float] = {}
            agreement, samples = 0.0, 0
            for x, target in pairs:
                worst = pgd(model, x, target, eps, self.steps, self.step_size, gen)
                with torch.no_grad():
                    for name, value in self.task.reconstruction_scores(model(worst)[-1], target).items():
                        sums[name] = sums.get(name, 0.0) + value * len(x)
                    clean, perturbed = (active_groups(model.encode(v), self.groups(model)) for v in (x, worst))
                agreement += jaccard(clean, perturbed).sum().item()
                samples += len(x)
            for name, total in sums.items():
                metrics[f"{name}_eps{eps:g}"] = total / samples
            metrics[f"jaccard_eps{eps:g}"] = agreement / samples
        return metrics
