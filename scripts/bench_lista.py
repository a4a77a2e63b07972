"""Throughput benchmark of the LISTA-family models (not a test).

Prints, for the LISTA-CPSS synthetic set-up (m=250, n=500, 16 layers, batch 512,
float32): training steps per second (forward + backward of the supervised loss
``((x_hat - x)**2).sum(1).mean()`` + Adam step) of LISTA (untied, tied), LISTA-CPSS
and ALISTA (with and without support selection); the achieved GFLOP/s of the
LISTA forward+backward as a fraction of a large float32 matmul measured in the
same run (the roof), with the default allocator and, on CPU, again with glibc's
malloc trimming off (as unroll-train runs on CPU); and the forward-time ratio with/without
support selection.
Timings are medians over rounds in which the compared runs alternate.

    python scripts/bench_lista.py [--device auto|cpu|cuda] [--threads N] [--compile MODE]

``--compile MODE`` times every model through ``torch.compile(model, mode=MODE)``
(``default``, ``reduce-overhead`` for CUDA graphs, ...), as ``trainer.compile`` does.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_timing import interleaved_times
from unroll_cli.models.lista import ALISTA, LISTA, LISTACP
from unroll_cli.run import resolve_device
from unroll_cli.train.cpu_memory import keep_freed_memory

SS = dict(ss_p_per_layer=1.2, ss_p_max=13.0)


def timed(fns: dict, device, reps: int, warmup: int) -> dict:
    """Median wall time (s) of each ``fns[name]()``, timed interleaved."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(fns, device, reps, warmup).items()}


def sparse_problem(m, n, batch, device, dtype, seed=0):
    """A ~ N(0, 1/m) with unit columns; x Bernoulli(0.1) * N(0, 1); y = A x."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, generator=g, dtype=torch.float64) / m ** 0.5
    A = A / A.norm(dim=0)
    x = torch.randn(batch, n, generator=g, dtype=torch.float64)
    x = x * (torch.rand(batch, n, generator=g, dtype=torch.float64) < 0.1)
    A, x = A.to(device, dtype), x.to(device, dtype)
    return A, x, x @ A.t()


def loss_of(model, y, x):
    return ((model(y)[-1] - x) ** 2).sum(1).mean()


def train_step(model, y, x):
    """One supervised training step (Adam) as a closure."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-6, fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of(model, y, x).backward()
        opt.step()

    return step


def fwd_bwd(model, y, x):
    def run():
        loss_of(model, y, x).backward()
        model.zero_grad(set_to_none=True)

    return run


def lista_roofline(models: dict, y, x, flops: int, device, args, note: str) -> None:
    """Print the forward+backward GFLOP/s of each model as a fraction of the roof."""
    size = 2048
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    c = torch.empty(size, size, device=device)
    runs = {"roof": lambda: torch.mm(a, b, out=c)} | {k: fwd_bwd(mod, y, x) for k, mod in models.items()}
    secs = timed(runs, device, args.reps, args.warmup)
    roof = 2 * size ** 3 / secs["roof"] / 1e9
    print(f"  [{note}] roof {roof:.1f} GFLOP/s")
    for label, model in models.items():
        rate = flops / secs[label] / 1e9
        print(f"  {label:28s} {rate:7.1f} GFLOP/s = {100 * rate / roof:5.1f}% of roof")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--m", type=int, default=250)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lam", type=float, default=0.4)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", metavar="MODE", help="torch.compile every model with this mode")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    A, x, y = sparse_problem(args.m, args.n, args.batch, device, torch.float32)
    T, lam, m, n, bsz = args.layers, args.lam, args.m, args.n, args.batch
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"m={m} n={n} T={T} batch={bsz} float32, median of {args.reps} interleaved runs"
          + (f", torch.compile mode={args.compile}" if args.compile else ""))
    compiled = (lambda model: torch.compile(model, mode=args.compile)) if args.compile else (lambda model: model)

    eager = {
        "lista (untied)": LISTA(A, T, lam, tied=False),
        "lista (tied)": LISTA(A, T, lam, tied=True),
        "lista_cpss (tied, 1.2/13)": LISTACP(A, T, lam, **SS),
        "alista": ALISTA(A, T, lam),
        "alista + ss (1.2/13)": ALISTA(A, T, lam, **SS),
    }
    models = {label: compiled(model) for label, model in eager.items()}
    steps = timed({k: train_step(mod, y, x) for k, mod in models.items()}, device, args.reps, args.warmup)
    print("\ntraining steps/s (fwd + bwd + Adam):")
    for label, seconds in steps.items():
        print(f"  {label:28s} {1.0 / seconds:7.2f}")

    # LISTA matmul FLOPs per forward+backward: B y costs 2*b*m*n forward and 2*b*m*n
    # for dL/dB; each of the T-1 layers with a W x product (x0 = 0 skips the first)
    # costs 2*b*n^2 forward and 2 * 2*b*n^2 backward (dL/dx and dL/dW).
    analytic = 4 * bsz * m * n + 6 * (T - 1) * bsz * n * n
    lista = {k: models[k] for k in ("lista (untied)", "lista (tied)")}
    for label in lista:
        model = eager[label]
        with FlopCounterMode(display=False) as counter:
            loss_of(model, y, x).backward()
        model.zero_grad(set_to_none=True)
        assert counter.get_total_flops() == analytic, (label, counter.get_total_flops())
    print(f"\nLISTA forward+backward, matmul FLOPs 4*b*m*n + 6*(T-1)*b*n^2 = {analytic / 1e9:.3f} G "
          "(= FlopCounterMode's count), vs a 2048^3 float32 matmul (the roof):")
    lista_roofline(lista, y, x, analytic, device, args, "default allocator")
    if device.type == "cpu" and keep_freed_memory():
        lista_roofline(lista, y, x, analytic, device, args, "glibc malloc trim/mmap off")

    print("\nforward time with support selection / without it (same weights):")
    pairs = {
        "lista_cpss / lista_cp": (models["lista_cpss (tied, 1.2/13)"], compiled(LISTACP(A, T, lam))),
        "alista + ss / alista": (models["alista + ss (1.2/13)"], models["alista"]),
    }
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            runs = {f"{k} {i}": (lambda mod=mod: mod(y)) for k, pair in pairs.items() for i, mod in enumerate(pair)}
            secs = timed(runs, device, args.reps, args.warmup)
        for label in pairs:
            t_ss, t_plain = secs[f"{label} 0"], secs[f"{label} 1"]
            mode = "autograd on" if grad else "no_grad"
            print(f"  {label:24s} {mode:12s} {t_ss * 1e3:7.2f} ms / {t_plain * 1e3:7.2f} ms = {t_ss / t_plain:.2f}x")


if __name__ == "__main__":
    main()
