"""Training throughput of the ML-ISTA family (not a test).

For each architecture (MNIST: 1x28x28, CIFAR-10: 3x32x32; 10 classes) prints the training
samples/s -- one step is ``zero_grad`` + forward + ``F.nll_loss`` + backward +
``SGD(momentum=0.9).step()`` on a fixed random batch -- of the feed-forward CNN (``MLISTA``
with T=0) and of ``MLISTA`` with T unfoldings (default 6, batch 128), and the time per step
relative to the CNN.  ``--straight`` adds ML-ISTA computed literally from the update equations
(as the authors' code computes it).  The models' steps alternate, so all see the same machine
load; figures are medians (and bests) of the timed steps, after warm-up steps.

    python scripts/bench_mlista.py [--device auto|cpu|cuda] [--threads N] [--channels-last]
                                   [--bf16] [--compile] [--straight] [--models mlista ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics

import torch
import torch.nn.functional as F

from bench_timing import interleaved_times
from unroll_cli.models.mlista import LBP, MLFISTA, MLISTA, MLLISTA, AllFree
from unroll_cli.run import resolve_device

ARCH_INPUT = {"mnist": (1, 28), "cifar10": (3, 32)}
MODELS = {"mlista": MLISTA, "mlfista": MLFISTA, "mllista": MLLISTA, "lbp": LBP, "allfree": AllFree}


class Straight(torch.nn.Module):
    """ML-ISTA written literally from the update equations (five transposed and three plain
    convolutions per unfolding, NCHW, fresh parameters), for comparison only."""

    def __init__(self, model: MLISTA):
        super().__init__()
        self.model = model

    def forward(self, x):
        m = self.model
        strides, p = m.strides, m.padding
        W, b, c = list(m.W), list(m.b), list(m.c)
        gammas, h = [], x
        for i in range(3):
            h = F.relu(c[i] * F.conv2d(h, W[i], stride=strides[i], padding=p) + b[i])
            gammas.append(h)
        for _ in range(m.unfoldings):
            gammas[1] = F.conv_transpose2d(gammas[2], W[2], stride=strides[2], padding=p)
            gammas[0] = F.conv_transpose2d(gammas[1], W[1], stride=strides[1], padding=p)
            lower = x
            for i in range(3):
                synth = F.conv_transpose2d(gammas[i], W[i], stride=strides[i], padding=p)
                step = F.conv2d(synth - lower, W[i], stride=strides[i], padding=p)
                gammas[i] = F.relu(gammas[i] - c[i] * step + b[i])
                lower = gammas[i]
        h = gammas[2]
        for j, (Wj, bj) in enumerate(zip(m.tail_W, m.tail_b)):
            h = F.relu(F.conv2d(h, Wj, padding=1) + bj)
            if j > 0:
                h = F.max_pool2d(h, 2)
        return F.log_softmax(m.classifier(h.flatten(1)), dim=1)


def build(cls, arch: str, unfoldings: int, args, device):
    channels = ARCH_INPUT[arch][0]
    if cls is Straight:
        model = MLISTA(arch=arch, in_channels=channels, num_classes=10, unfoldings=unfoldings)
        model = Straight(model.to(memory_format=torch.contiguous_format)).to(device)
    else:
        model = cls(arch=arch, in_channels=channels, num_classes=10, unfoldings=unfoldings).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if args.compile else model


def make_step(model, x, y, args, device):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16
                else contextlib.nullcontext())

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.nll_loss(model(x).float(), y)
        loss.backward()
        opt.step()

    return step


def bench_pair(steps: dict, device, reps: int, warmup: int) -> dict:
    """(median, best) seconds per step of each callable, timed interleaved."""
    times = interleaved_times(steps, device, reps, warmup)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--channels-last", action="store_true", help="model and input channels-last")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for forward and loss")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--archs", nargs="+", default=list(ARCH_INPUT), choices=list(ARCH_INPUT))
    parser.add_argument("--models", nargs="+", default=["mlista"], choices=list(MODELS))
    parser.add_argument("--straight", action="store_true",
                        help="also time ML-ISTA written literally from the equations (as the authors' code)")
    parser.add_argument("--unfoldings", type=int, default=6)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, T={args.unfoldings}, channels_last={args.channels_last}, "
          f"bf16={args.bf16}, compile={args.compile}; median (best) of {args.reps} steps")
    for arch in args.archs:
        channels, size = ARCH_INPUT[arch]
        x = torch.randn(args.batch, channels, size, size, device=device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch,), device=device)
        steps = {"cnn (T=0)": make_step(build(MLISTA, arch, 0, args, device), x, y, args, device)}
        if args.straight:
            label = f"straight (T={args.unfoldings})"
            steps[label] = make_step(build(Straight, arch, args.unfoldings, args, device), x, y, args, device)
        for key in args.models:
            label = f"{key} (T={args.unfoldings})"
            steps[label] = make_step(build(MODELS[key], arch, args.unfoldings, args, device), x, y, args, device)
        results = bench_pair(steps, device, args.reps, args.warmup)
        cnn = results["cnn (T=0)"][0]
        print(f"\n{arch}: training samples/s")
        for label, (med, best) in results.items():
            print(f"  {label:16s} {args.batch / med:8.1f} ({args.batch / best:8.1f})   "
                  f"{med * 1e3:8.1f} ms/step   time / CNN {med / cnn:5.2f}x")


if __name__ == "__main__":
    main()
