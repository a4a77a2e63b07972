"""One run directory holds one run: a lock, and what a job may do where files already are.

A job first locks its directory (``.lock``, ``flock``: released by the system when the process
ends, however it ends), so a second process on the same directory refuses, naming the first. Then
:func:`claim` reads what an earlier run left there and decides:

* nothing there, or an earlier attempt of the same job that failed: start afresh;
* the same job, completed: skip it and return its result (a re-run sweep);
* the same job, interrupted, or still marked ``running`` although no process holds the lock (it was
  killed): resume from its checkpoint, and say so;
* another job's files (other overrides): refuse, before anything is written.

"The same job" means the same overrides, ``resume=...`` aside (read from ``metrics.json``, or from
``.hydra/overrides.yaml`` when results are there without a readable record). A directory without
results (a run refused before it started) holds no run. An unreadable ``metrics.json`` is moved
aside (``metrics.json.unreadable-<time>``) and the job runs again.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from unroll_cli.errors import ConfigError
from unroll_cli.record.atomic import atomic_write_text

LOCK = ".lock"


class RunDirError(ConfigError):
    """The run directory is in use, or holds another run."""


@dataclass
class Claim:
    """What this job does in its directory: ``fresh``, ``skip`` (with ``value``) or ``resume``."""

    action: str
    value: float | None = None
    note: str = ""


@contextmanager
def locked(run_dir: str | Path) -> Iterator[None]:
    """Hold the directory's lock for the duration of the job; refuse if another process holds it."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a directory: choose another directory (hydra.run.dir)")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):
        raise RunDirError(f"{lock} is not a lock file of this tool (a symbolic link or a folder): a run writes only "
                          "its own files; nothing was changed there")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 300).decode(errors="replace").strip() or "another process"
            raise RunDirError(f"{run_dir} is in use by {holder}: wait for it to end, or choose another "
                              "directory (hydra.run.dir / hydra.sweep.dir)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n".encode())
        yield
    finally:
        os.close(fd)


def write_hydra_files(run_dir: Path, cfg, hydra_cfg, overrides: list[str]) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` (when there is a Hydra config: not for ``unroll-eval``)
    and ``overrides.yaml``, as Hydra writes them."""
    from omegaconf import OmegaConf

    folder = Path(run_dir) / ".hydra"
    atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    if hydra_cfg is not None:
        atomic_write_text(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))


def job_identity(overrides: list[str]) -> list[str]:
    """The overrides that define a job (``resume=...`` says where it continues from, not what it is)."""
    return sorted(o for o in overrides if o.lstrip("+~").partition("=")[0] != "resume")


def _earlier(run_dir: Path) -> tuple[dict | None, list[str] | None, str]:
    """(metrics.json record, its overrides, a note): an unreadable record is moved aside."""
    file, note = run_dir / "metrics.json", ""
    record = None
    if file.is_file():
        try:
            record = json.loads(file.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as error:
            aside = file.with_name(f"metrics.json.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(file, aside)
            record, note = None, f"{file} was unreadable ({error}); kept as {aside.name}, the job runs again"
    overrides = record.get("overrides") if record else None
    if overrides is None and (note or (run_dir / "checkpoints").exists()):  # results whose record is lost
        try:
            overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        except (OSError, yaml.YAMLError):
            overrides = None
    return record, overrides if isinstance(overrides, list) else None, note


def refuse_links(run_dir: Path) -> None:
    """A run writes only inside its own directory: no symbolic link in it but ``checkpoints``, which
    must point into its own ``checkpoints.d/``, and the checkpoint store's ``.checkpoints.swap`` (the
    next link, left behind by a kill between its creation and its rename; the next save replaces it)."""
    for entry in run_dir.iterdir():
        if not entry.is_symlink():
            continue
        target = Path(os.readlink(entry))
        inside = entry.name in ("checkpoints", ".checkpoints.swap") and not target.is_absolute() \
            and len(target.parts) == 2 and target.parts[0] == "checkpoints.d"
        if not inside:
            raise RunDirError(f"{entry} is a symbolic link (to {target}): a run writes only inside its own "
                              "directory; nothing was changed there. Choose another directory (hydra.run.dir)")


def claim(run_dir: str | Path, overrides: list[str], resume: str | None = None) -> Claim:
    """Decide what this job does in ``run_dir`` (call it while holding :func:`locked`)."""
    run_dir = Path(run_dir)
    refuse_links(run_dir)
    record, earlier, note = _earlier(run_dir)
    if record is None and earlier is None and not note:  # (an unreadable record was moved aside: runs again)
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in (LOCK, ".hydra") and not p.name.endswith(".log"))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise RunDirError(f"{run_dir} is not empty and holds no run of this tool ({shown}): nothing was changed "
                              "there. Choose another directory (hydra.run.dir / hydra.sweep.dir)")
    resumes_here = resume is not None and Path(resume).expanduser().resolve() in (
        run_dir.resolve(), (run_dir / "checkpoints" / "last.pt").resolve())
    if earlier is not None and job_identity(earlier) != job_identity(overrides) and not resumes_here:
        status = record.get("status") if record else "unknown"
        raise RunDirError(f"{run_dir} holds another run ({status}; overrides: {' '.join(earlier) or 'none'}): "
                          "nothing was changed there. Choose another directory (hydra.run.dir / "
                          "hydra.sweep.dir), move that run away, or continue it with resume=<its directory>")
    status = record.get("status") if record else None
    if resumes_here:
        return Claim("resume", note=note)
    if status == "completed":
        value = (record.get("optimized") or {}).get("value")
        return Claim("skip", float("nan") if value is None else float(value), note)
    if status in ("interrupted", "running") and (run_dir / "checkpoints" / "last.pt").is_file():
        how = "was interrupted" if status == "interrupted" else \
            "was left 'running' by a process that no longer exists (killed?)"
        return Claim("resume", note=f"the earlier run in {run_dir} {how}: resumed from its last checkpoint")
    if status in ("interrupted", "running"):
        note = f"the earlier run in {run_dir} stopped before its first checkpoint: started again"
    elif status in ("failed", "pruned"):
        note = f"the earlier attempt in {run_dir} {status}: started again"
    return Claim("fresh", note=note)
