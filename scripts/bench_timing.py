"""Interleaved timing shared by the benchmarks (not a test).

Every callable runs once per round, in turn, so all of them see the same machine load; the first
``warmup`` rounds are discarded. Benchmarks report ratios between callables timed together.
"""
from __future__ import annotations

import argparse
import time

import torch

from unroll_cli.run import resolve_device


def interleaved_times(fns: dict, device: torch.device, reps: int, warmup: int) -> dict[str, list[float]]:
    """Wall seconds of each ``fns[name]()`` over ``reps`` rounds (device synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + reps):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def parse_common(doc: str, device: str = "auto") -> tuple[argparse.Namespace, torch.device]:
    """The benchmarks' shared options ``--device``, ``--threads`` (applied here) and ``--reps``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--device", default=device)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, resolve_device(args.device)
