"""What a trainer callback costs per training step (not a test).

Times one SGD step (forward, cross-entropy, backward, step) of Stock et al.'s fully connected net
(``model=mlp``: 14 hidden layers of 500, bias-free, 28x28 inputs, batch 256) alone and followed by
each callback's ``after_step``: ``enorm`` (one balancing cycle), ``prune`` (the masks of a pruned
round re-applied) and ``grad_norm`` (the gradient's norm). Prints the median step time and its
ratio to the step alone, measured in the same interleaved rounds.

    python scripts/bench_callbacks.py [--device auto|cpu|cuda] [--threads N] [--reps 20]
"""
from __future__ import annotations

import statistics
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from bench_timing import interleaved_times, parse_common
from unroll_cli.models.mlp import MLP
from unroll_cli.train.enorm import ENorm
from unroll_cli.train.grad_norm import GradientNorm
from unroll_cli.train.prune import IterativeMagnitudePruning, prunable_names


def main() -> None:
    args, device = parse_common(__doc__)
    torch.manual_seed(0)
    model = MLP(depth=14, width=500, bias=False).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    trainer = SimpleNamespace(model=model, optimizer=optimizer)
    x, y = torch.randn(256, 1, 28, 28, device=device), torch.randint(10, (256,), device=device)

    enorm = ENorm(c=1.2)
    enorm.on_fit_start(trainer)
    prune = IterativeMagnitudePruning()
    prune.names = prunable_names(model)  # what check() finds, without a run's config
    prune.on_fit_start(trainer)
    prune.round = 1  # a pruned round: masks applied after every step
    callbacks = {"none": None, "enorm": enorm, "prune": prune, "grad_norm": GradientNorm()}

    def step(callback):
        def run():
            optimizer.zero_grad(set_to_none=True)
            F.nll_loss(model(x), y).backward()
            optimizer.step()
            if callback is not None:
                with torch.no_grad():
                    callback.after_step(trainer, 1)
        return run

    times = interleaved_times({name: step(cb) for name, cb in callbacks.items()}, device, args.reps, warmup=3)
    base = statistics.median(times["none"])
    print(f"device {device}, threads {torch.get_num_threads()}, {args.reps} rounds\n")
    print("| callback | ms per step | ratio to the step alone |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {1e3 * statistics.median(values):.2f} | {statistics.median(values) / base:.3f} |")


if __name__ == "__main__":
    main()
