"""Checkpoints: the last/best pair written as one, read back safely, resumed only into the same problem.

``<run dir>/checkpoints`` is a symbolic link to ``checkpoints.d/<generation>/``, which holds
``last.pt`` and ``best.pt``. A save writes a new generation (``best.pt`` hard-linked from the
previous one when it did not change) and then swaps the link with one ``rename``: whenever the
process dies, ``checkpoints/`` shows one complete pair from one save, never a ``best.pt`` an epoch
behind what ``last.pt`` says is best. Files load with ``torch.load(..., weights_only=True)``.

A checkpoint holds the run's composed config. :func:`resume_conflicts` compares it with the config
of a run that resumes from it: every key may differ only if it is in :data:`CHANGEABLE_ON_RESUME`
(those are applied: ``trainer.max_epochs`` extends or shortens the run, ...); anything else would
continue a different problem or model, and is refused before any work.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

from unroll_cli.errors import ConfigError

LINK, GENERATIONS = "checkpoints", "checkpoints.d"

#: Shared config keys (shell patterns) a resumed run may change; a task's or model's schema marks
#: its own (``constrained(..., changeable=True)``); every other difference is refused.
CHANGEABLE_ON_RESUME = (
    "resume", "trainer.max_epochs", "trainer.patience", "trainer.progress", "trainer.checkpoint",
    "tensorboard", "optimized_metric", "paper", "paper.*",
    "diagnostics", "diagnostics.*",  # measurements of the model, not its training
)


class CheckpointStore:
    """The checkpoint pair of one run directory."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.link = self.dir / LINK
        self.generations = self.dir / GENERATIONS

    def save(self, last: dict[str, Any], best: dict[str, Any] | None = None) -> None:
        """Write ``last`` and (when given) ``best`` as the new pair; keep the previous best otherwise."""
        self._adopt_plain_directory()
        self.generations.mkdir(parents=True, exist_ok=True)
        current = self.current()
        new = Path(tempfile.mkdtemp(dir=self.generations, prefix=f"{self._next_number():08d}-"))
        torch.save(last, new / "last.pt")
        if best is not None:
            torch.save(best, new / "best.pt")
        elif current is not None and (current / "best.pt").is_file():
            _link_or_copy(current / "best.pt", new / "best.pt")
        swap = self.dir / f".{LINK}.swap"
        if swap.is_symlink() or swap.exists():
            swap.unlink()
        os.symlink(Path(GENERATIONS) / new.name, swap)
        os.replace(swap, self.link)
        self._remove_old(keep=new)

    def current(self) -> Path | None:
        """The generation directory the link points at, or None."""
        return self.link.resolve() if self.link.is_symlink() and self.link.resolve().is_dir() else None

    def clear(self) -> None:
        """Remove every checkpoint of this directory (a fresh start of a failed attempt)."""
        if self.link.is_symlink():
            self.link.unlink()
        elif self.link.is_dir():
            shutil.rmtree(self.link)
        shutil.rmtree(self.generations, ignore_errors=True)

    def _next_number(self) -> int:
        numbers = [int(p.name.split("-")[0]) for p in self.generations.iterdir() if p.name.split("-")[0].isdigit()]
        return max(numbers, default=0) + 1

    def _adopt_plain_directory(self) -> None:
        """A ``checkpoints/`` that is a plain directory (written by hand, or by an older version)
        becomes the first generation, so the link can replace it."""
        if self.link.is_dir() and not self.link.is_symlink():
            self.generations.mkdir(parents=True, exist_ok=True)
            adopted = f"{self._next_number():08d}-adopted"
            os.rename(self.link, self.generations / adopted)
            os.symlink(Path(GENERATIONS) / adopted, self.link)

    def _remove_old(self, keep: Path) -> None:
        for generation in self.generations.iterdir():
            if generation.name != keep.name:
                shutil.rmtree(generation, ignore_errors=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def checkpoint_file(resume: str) -> Path:
    """The checkpoint named by ``resume``: a file, or a run directory whose checkpoints/last.pt is meant."""
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / LINK / "last.pt"
    if not path.is_file():
        raise ConfigError(f"resume={resume}: no checkpoint at {path} (give a run directory that holds "
                          "checkpoints/last.pt, or the checkpoint file itself)")
    return path


def load_checkpoint(path: str | Path, key: str = "resume") -> dict[str, Any]:
    """A checkpoint file's contents (tensors and plain values only); an unreadable, truncated or
    foreign file is an input error naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... by cause
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{key}: {path} is not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ConfigError(f"{key}: {path} is not a checkpoint of this tool (no model state)")
    return state


def best_beside(path: Path) -> dict[str, Any] | None:
    """The ``best.pt`` of the same pair as the checkpoint ``path``, if there is one."""
    best = path.parent / "best.pt"
    return load_checkpoint(best) if path.name == "last.pt" and best.is_file() else None


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` of a nested dict (lists are values)."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {prefix: None} if prefix and not node else {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any], changeable: Iterable[str] = (),
                     added: dict[str, Any] | None = None, retired: Iterable[str] = ()) -> list[str]:
    """``key: saved -> current`` for every difference outside :data:`CHANGEABLE_ON_RESUME` and
    ``changeable``. A key the checkpoint lacks is no difference when its value is ``added[key]``
    (an option added to a schema since, at the default that keeps what runs did before it), nor one
    only the checkpoint has when it is ``retired`` (removed from a schema that never read it)."""
    before, after, added, retired = flatten(saved), flatten(current), added or {}, set(retired)
    patterns = (*CHANGEABLE_ON_RESUME, *changeable)
    changed = []
    for key in sorted(set(before) | set(after)):
        if key not in before and key in added and after.get(key) == added[key]:
            continue
        if key not in after and key in retired:
            continue
        if before.get(key, "<absent>") != after.get(key, "<absent>") and not any(
                fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            changed.append(f"{key}: {before.get(key, '<absent>')!r} -> {after.get(key, '<absent>')!r}")
    return changed
