"""Refuse, before allocating anything, a run whose sizes cannot fit the device's memory.

A task class and a model class may declare ``memory_estimate(...) -> {config key: bytes}`` (a
classmethod or staticmethod, computed from the config alone, before anything is allocated): the
data the task holds, the weights, optimizer state and activations a training step keeps. The
estimate is rough (within a small factor), which is enough to stop ``data.n_val=100000000`` or
``model.layers=100000000`` from growing until the system kills the process.
"""
from __future__ import annotations

import os

import torch
from omegaconf import DictConfig, OmegaConf

from unroll_cli.errors import ConfigError


def device_memory(device: torch.device) -> int:
    """Bytes of memory of the device: the GPU's total, or the machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _size(n: float) -> str:
    """``n`` bytes in decimal units, three significant digits."""
    unit = 0
    while n >= 1000 and unit < 5:
        n, unit = n / 1000, unit + 1
    return f"{n:.3g} {('B', 'KB', 'MB', 'GB', 'TB', 'PB')[unit]}"


def require_memory(estimate: dict[str, int], cfg: DictConfig, device: torch.device) -> None:
    """Raise :class:`ConfigError` naming the largest contributor when the estimate exceeds the device."""
    total, available = sum(estimate.values()), device_memory(device)
    if total <= available:
        return
    key = max(estimate, key=estimate.get)
    parts = ", ".join(f"{k}: {_size(v)}" for k, v in sorted(estimate.items(), key=lambda kv: -kv[1]) if v)
    raise ConfigError(f"{key}={OmegaConf.select(cfg, key)}: this run would need about {_size(total)} of "
                      f"memory ({parts}), more than the {_size(available)} of this {device.type} device; "
                      f"lower {key}")
