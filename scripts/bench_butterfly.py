"""Speed of the Butterfly and Monarch layers against a dense ``x @ W`` (not a test).

Batch 256, float32, square sizes n = 256, 1024, 4096, no bias. Forward and forward+backward
(gradients of the input and of the weights) of the three layers are timed in the same rounds
(``bench_timing``); prints median milliseconds and the ratio dense / structured (above 1: the
structured layer is faster). With several threads on a CPU shared with other jobs, every parallel
op may wait for a descheduled thread; the structured layers run many small ops and suffer most,
so compare with ``--threads 1`` there.

    python scripts/bench_butterfly.py [--device cpu|cuda|auto] [--threads N] [--reps 20]
"""
from __future__ import annotations

import statistics

import torch

from bench_timing import interleaved_times, parse_common
from unroll_cli.models.butterfly import Butterfly, Monarch

BATCH, SIZES = 256, (256, 1024, 4096)


def forward_and_backward(fn, x: torch.Tensor):
    """One forward and backward pass of ``fn(x)`` (the loss is the output's sum)."""
    def step() -> None:
        fn(x).sum().backward()
    return step


def timed_layers(n: int, device: torch.device) -> dict:
    weight = (torch.randn(n, n, device=device) / n ** 0.5).requires_grad_()
    return {"dense": lambda x: x @ weight,
            "butterfly": Butterfly(n, n, bias=False, init="ortho").to(device),
            "monarch": Monarch(n, n, bias=False).to(device)}


def main() -> None:
    args, device = parse_common(__doc__, device="cpu")
    torch.manual_seed(0)
    print(f"device {device}, threads {torch.get_num_threads()}, batch {BATCH}, float32")
    for n in SIZES:
        layers = timed_layers(n, device)
        x = torch.randn(BATCH, n, device=device, requires_grad=True)
        passes = {"forward": {name: torch.no_grad()(lambda f=f: f(x)) for name, f in layers.items()},
                  "forward+backward": {name: forward_and_backward(f, x) for name, f in layers.items()}}
        for kind, fns in passes.items():
            times = {k: statistics.median(v) for k, v in interleaved_times(fns, device, args.reps, 3).items()}
            print(f"n={n:5d} {kind:>16}: dense {times['dense'] * 1e3:8.3f} ms | "
                  f"butterfly {times['butterfly'] * 1e3:7.3f} ms ({times['dense'] / times['butterfly']:5.2f}x) | "
                  f"monarch {times['monarch'] * 1e3:7.3f} ms ({times['dense'] / times['monarch']:5.2f}x)")


if __name__ == "__main__":
    main()
