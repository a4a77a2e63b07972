"""Gradient descent against the exact two-layer fixed-support factorization (not a test; prints a markdown table).

Le, Riccietti & Gribonval (SIAM J. Matrix Anal. Appl. 2023): where the rank-one supports of ``(I, J)`` are pairwise
disjoint or identical, Algorithm 1 (``fixed_support_factorize``) gives the global optimum of ``||A - X Y||_F`` with
``supp(X) ⊆ I``, ``supp(Y) ⊆ J`` by one SVD per class. Here each setting draws a Gaussian ``A`` and fits the same
problem by gradient descent on ``||A - (X∘I)(Y∘J)||_F^2`` from ``--starts`` random Gaussian starts, with Adam
(``--adam-steps`` steps, lr ``--lr`` cosine-annealed to 0) and with ``torch.optim.LBFGS`` (strong Wolfe line search,
at most ``--lbfgs-iters`` iterations). Settings: the root split of the balanced butterfly tree at each ``--sizes``
``N`` (``X`` on the support of the last ``ceil(L/2)`` butterfly factors, ``Y`` on the first ``floor(L/2)``,
``L = log2 N``; every class a single index) and random supports of ``--random-sizes`` ``N x N`` whose classes
(1 to 3 identical indices each) are disjoint rectangles on random rows and columns.

Columns: the optimum's relative error ``||A - X Y||_F / ||A||_F`` and its time; per method, the fraction of starts
whose relative error ends above the optimum's by more than ``1e-6`` (an excess in units of ``||A||_F``), the median
of those excesses, and the median time per start. Set ``OMP_NUM_THREADS`` to fix the thread count.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from unroll_cli.models.butterfly_factorize import twiddle_to_dense
from unroll_cli.models.fixed_support import fixed_support_factorize

STUCK = 1e-6  # an excess relative error above this counts as a start that did not reach the optimum

Supports = tuple[torch.Tensor, torch.Tensor]


def butterfly_split_supports(n: int) -> Supports:
    """Supports of the balanced tree's root split: the nonzeros of products of all-ones butterfly factors."""
    depth = n.bit_length() - 1
    right_factors = depth // 2

    def support(factors: range) -> torch.Tensor:
        twiddle = torch.eye(2, dtype=torch.float64).repeat(depth, n // 2, 1, 1)
        twiddle[list(factors)] = 1.0
        return twiddle_to_dense(twiddle) != 0

    return support(range(right_factors, depth)), support(range(right_factors))


def random_disjoint_supports(n: int, classes: int, rng: np.random.Generator) -> Supports:
    """``classes`` disjoint rectangles (random rows x random columns, rejection sampled), each the rank-one support
    of 1 to 3 indices, the indices shuffled."""
    rects: list[tuple[np.ndarray, np.ndarray]] = []
    while len(rects) < classes:
        rows = rng.choice(n, size=int(rng.integers(2, n // 3 + 1)), replace=False)
        cols = rng.choice(n, size=int(rng.integers(2, n // 3 + 1)), replace=False)
        if all(not (np.isin(rows, r).any() and np.isin(cols, c).any()) for r, c in rects):
            rects.append((rows, cols))
    members = [rect for rect in rects for _ in range(int(rng.integers(1, 4)))]
    order = rng.permutation(len(members))
    left = torch.zeros(n, len(members), dtype=torch.bool)
    right = torch.zeros(len(members), n, dtype=torch.bool)
    for k, idx in enumerate(order):
        left[members[idx][0], k] = True
        right[k, members[idx][1]] = True
    return left, right


def class_count(left: torch.Tensor, right: torch.Tensor) -> int:
    keep = left.any(0) & right.any(1)
    return len(torch.unique(torch.cat([left.T, right], 1)[keep], dim=0))


def masked_loss(target: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> Callable[..., torch.Tensor]:
    return lambda x, y: (target - (x * left) @ (y * right)).pow(2).sum()


def adam_fit(loss_fn, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> None:
    opt = torch.optim.Adam([x, y], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(x, y).backward()
        opt.step()
        sched.step()


def lbfgs_fit(loss_fn, x: torch.Tensor, y: torch.Tensor, iters: int) -> None:
    opt = torch.optim.LBFGS([x, y], max_iter=iters, max_eval=2 * iters, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-14, tolerance_change=1e-16, history_size=20)

    def closure():
        opt.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        return loss

    opt.step(closure)


def gradient_starts(target: torch.Tensor, left: torch.Tensor, right: torch.Tensor, fit, starts: int,
                    seed: int) -> tuple[list[float], list[float]]:
    """Relative errors and seconds of ``fit(loss, x, y)`` from ``starts`` Gaussian starts."""
    loss_fn = masked_loss(target, left, right)
    norm = torch.linalg.norm(target).item()
    errors, times = [], []
    for start in range(starts):
        gen = torch.Generator().manual_seed(seed + start)
        x = torch.randn(left.shape, dtype=torch.float64, generator=gen).requires_grad_()
        y = torch.randn(right.shape, dtype=torch.float64, generator=gen).requires_grad_()
        begin = time.perf_counter()
        fit(loss_fn, x, y)
        times.append(time.perf_counter() - begin)
        errors.append(loss_fn(x.detach(), y.detach()).sqrt().item() / norm)
    return errors, times


def method_cells(errors: list[float], times: list[float], optimum: float) -> str:
    excess = [e - optimum for e in errors if e - optimum > STUCK]
    median = f"{statistics.median(excess):.2e}" if excess else "-"
    return f"{len(excess)}/{len(errors)} | {median} | {statistics.median(times):.3f}"


def setting_row(name: str, supports: Supports, args: argparse.Namespace, seed: int) -> str:
    left, right = supports
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(left.shape[0], right.shape[1], dtype=torch.float64, generator=gen)
    begin = time.perf_counter()
    x, y = fixed_support_factorize(target, left, right)
    exact_time = time.perf_counter() - begin
    optimum = (torch.linalg.norm(target - x @ y) / torch.linalg.norm(target)).item()
    cells = [method_cells(*gradient_starts(target, left, right, fit, args.starts, seed + 1), optimum) for fit in (
        lambda f, a, b: adam_fit(f, a, b, args.adam_steps, args.lr),
        lambda f, a, b: lbfgs_fit(f, a, b, args.lbfgs_iters))]
    shape = f"{left.shape[0]}x{right.shape[1]}, r={left.shape[1]}, {class_count(left, right)} classes"
    return f"| {name} | {shape} | {optimum:.4e} | {exact_time:.4f} | {cells[0]} | {cells[1]} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[16, 32, 64], help="butterfly N (powers of two)")
    parser.add_argument("--random-sizes", type=int, nargs="*", default=[16, 32, 64])
    parser.add_argument("--classes", type=int, default=6, help="rectangles of a random support")
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--adam-steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=5e-2)
    parser.add_argument("--lbfgs-iters", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    settings = [(f"butterfly N={n}", butterfly_split_supports(n)) for n in args.sizes]
    settings += [(f"random N={n}", random_disjoint_supports(n, args.classes, rng)) for n in args.random_sizes]
    print(f"torch threads: {torch.get_num_threads()}; {args.starts} starts; Adam {args.adam_steps} steps lr "
          f"{args.lr} (cosine); L-BFGS <= {args.lbfgs_iters} iterations; stuck = excess > {STUCK:g}")
    print("| setting | problem | Alg. 1 rel. error | Alg. 1 s | Adam stuck | Adam median excess | Adam s/start "
          "| L-BFGS stuck | L-BFGS median excess | L-BFGS s/start |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for index, (name, supports) in enumerate(settings):
        print(setting_row(name, supports, args, 1000 * (args.seed + index)), flush=True)


if __name__ == "__main__":
    main()
