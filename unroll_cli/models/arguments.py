"""What the model families share besides thresholds and operators: the checks of their constructor
arguments (one ``ValueError`` naming the argument, which the run flow reports as a config error
naming the key) and FISTA's extrapolation weights.
"""
from __future__ import annotations

import math
from numbers import Integral, Real


def check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_number(name: str, value, positive: bool) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and (value > 0 if positive else value >= 0)
    if not ok:
        raise ValueError(f"{name} must be a real number {'>' if positive else '>='} 0, got {value!r}")
    return float(value)


def fista_momentum(steps: int) -> list[float]:
    """``(t_k - 1) / t_{k+1}`` for k = 1..steps, ``t_1 = 1``, ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``
    (Beck & Teboulle 2009): the extrapolation weight applied after step k (0 after the first)."""
    momentum, tk = [], 1.0
    for _ in range(steps):
        tk_next = (1.0 + math.sqrt(1.0 + 4.0 * tk * tk)) / 2.0
        momentum.append((tk - 1.0) / tk_next)
        tk = tk_next
    return momentum
