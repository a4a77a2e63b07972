"""Time the hierarchical butterfly factorization on the Hadamard and bit-reversed DFT matrices (not a test).

``butterfly_factorize`` (balanced tree, Le et al. ICASSP 2022) on the normalised Hadamard and on the unitary DFT
with ``permutation="bitrev"``; prints the median seconds and the relative Frobenius error. When ``pyfaust`` imports
(it is not a dependency), ``pyfaust.fact.butterfly(..., type='bbtree')`` runs interleaved on the same matrices and
the ratio ours / pyfaust is printed. Set ``OMP_NUM_THREADS`` to fix the thread count.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import scipy.linalg
import torch

from bench_timing import interleaved_times
from unroll_cli.models.butterfly_factorize import butterfly_factorize, twiddle_to_dense

try:
    import pyfaust.fact as faust_fact
except ImportError:
    faust_fact = None


def bench_matrices(n: int) -> dict[str, tuple[np.ndarray, str | None]]:
    """The normalised Hadamard (no permutation) and the unitary DFT (bit-reversal permutation) of size ``n``."""
    return {"hadamard": (scipy.linalg.hadamard(n) / np.sqrt(n), None),
            "dft": (np.fft.fft(np.eye(n), norm="ortho"), "bitrev")}


def relative_error(approx: np.ndarray | torch.Tensor, target: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(approx) - target) / np.linalg.norm(target))


def our_error(target: np.ndarray, permutation: str | None) -> float:
    """Relative error of ``x -> B(x[perm])`` from ``butterfly_factorize``."""
    twiddle, perm = butterfly_factorize(torch.from_numpy(target), permutation=permutation)
    dense = twiddle_to_dense(twiddle)
    return relative_error(dense if perm is None else dense[:, torch.argsort(perm)], target)


def bench_one(name: str, target: np.ndarray, permutation: str | None, reps: int) -> str:
    """One printed line: our time and error, and pyfaust's and the ratio when it is available."""
    fns = {"ours": lambda: butterfly_factorize(torch.from_numpy(target), permutation=permutation)}
    if faust_fact is not None:
        fns["pyfaust"] = lambda: faust_fact.butterfly(target, type="bbtree", perm=permutation)
    times = {key: statistics.median(vals) for key, vals in
             interleaved_times(fns, torch.device("cpu"), reps=reps, warmup=0).items()}
    line = (f"{name:8s} n={target.shape[0]:5d}  ours {times['ours']:8.4f} s  "
            f"rel.err {our_error(target, permutation):.2e}")
    if faust_fact is not None:
        faust_err = relative_error(faust_fact.butterfly(target, type="bbtree", perm=permutation).toarray(), target)
        line += (f"  | pyfaust {times['pyfaust']:8.4f} s  rel.err {faust_err:.2e}"
                 f"  ratio ours/pyfaust {times['ours'] / times['pyfaust']:.2f}")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (1 above n = 1024)")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}; pyfaust: {'yes' if faust_fact is not None else 'not installed'}")
    for n in args.sizes:
        for name, (target, permutation) in bench_matrices(n).items():
            print(bench_one(name, target, permutation, args.reps if n <= 1024 else 1), flush=True)


if __name__ == "__main__":
    main()
