"""Shared helpers: tiny configs composed like the CLI does, and the CLI as a subprocess."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
except ModuleNotFoundError as missing:  # a pytest outside the project's environment
    # SystemExit, not pytest.exit: pytest wraps any Exception raised by a conftest in a traceback
    raise SystemExit(f"{missing}: install the project and run its tests as the README says: python3 -m "
                     "venv .venv && .venv/bin/pip install -e \".[test]\", then .venv/bin/pytest") from None

import unroll_cli.app  # noqa: F401  (registers the schemas and the run_uid resolver)

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker: the workers share the machine's cores
    import torch

    torch.set_num_threads(1)

# A problem small enough for a CLI run in a few seconds on 2 CPU cores.
TINY_PROBLEM = [
    "data.m=20", "data.n=40", "data.n_val=64", "data.n_test=64", "data.batch_size=32",
    "model.layers=4", "trainer.progress=false",
]
TINY = [*TINY_PROBLEM, "trainer.max_epochs=2", "trainer.steps_per_epoch=5"]  # the end-to-end trainer's


def tiny(*extra: str) -> list[str]:
    """``TINY`` then ``extra``; with ``trainer=layerwise`` in ``extra``, only ``TINY_PROBLEM`` (the stage-wise
    schedule has no epochs: the end-to-end trainer's keys are not its keys)."""
    return [*(TINY_PROBLEM if "trainer=layerwise" in extra else TINY), *extra]


def compose_cfg(overrides: list[str]):
    """The composed config of ``unroll-train <overrides>`` (without the hydra node)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="unroll_cli.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def run_cli(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None, process: bool = False,
            **kwargs) -> subprocess.CompletedProcess:
    """``unroll-train ARGS`` in ``cwd``, as a user would type it (``env``: variables to add): in this
    process (the entrypoint called with ``sys.argv``, its output captured), or with ``process=True``
    in a fresh interpreter, where the process itself is what a test checks (start-up, signals, a
    user's own modules on PYTHONPATH)."""
    if not process and not kwargs:
        return run_cli_here(args, cwd, env or {})
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(Path(__file__).parents[1]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "unroll_cli.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def run_cli_here(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``unroll-train ARGS`` through :func:`unroll_cli.cli.train_main` in this process: its exit code,
    stdout and stderr (Hydra's log lines included); the process's state is restored afterwards."""
    import logging
    import signal
    from contextlib import redirect_stderr, redirect_stdout

    import torch

    from unroll_cli.cli import train_main

    out, err = io.StringIO(), io.StringIO()
    saved = (list(sys.argv), os.getcwd(), dict(os.environ), torch.get_num_threads(), signal.getsignal(signal.SIGINT),
             logging.root.handlers[:], logging.root.level)
    os.environ.update({"HYDRA_FULL_ERROR": "0", **env})
    if "OMP_NUM_THREADS" in env:
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.argv = ["unroll-train", *args]
    os.chdir(cwd)
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                train_main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv, cwd_before, environ, threads, sigint, handlers, level = saved
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
        signal.signal(signal.SIGINT, sigint)
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(["unroll-train", *args], code, out.getvalue(), err.getvalue())


def wait_for_history(run_dir: Path, rows: int, proc: subprocess.Popen, hang_guard_s: float = 600) -> None:
    """Return once ``run_dir/history.csv`` has more than ``rows`` rows; fail if ``proc`` ends first
    (or, as a guard against a hang, does not get there within ``hang_guard_s``: not a speed check)."""
    history, give_up = run_dir / "history.csv", time.monotonic() + hang_guard_s
    while not history.exists() or len(history.read_text().splitlines()) <= rows:
        if proc.poll() is not None or time.monotonic() > give_up:
            pytest.fail(f"the run in {run_dir} stopped (exit {proc.returncode}) before {rows} history rows")
        time.sleep(0.05)


def random_image_folders(root: Path, folders: dict[str, dict[str, tuple[int, int]]]) -> Path:
    """Under ``root``, one folder per key of ``folders`` holding its gray PNG files of random pixels in
    1..255, {file name: (height, width)}; returns ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, files in folders.items():
        (root / folder).mkdir()
        for name, shape in files.items():
            Image.fromarray(rng.integers(1, 256, shape, dtype=np.uint8)).save(root / folder / name)
    return root


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture
def tiny_cfg():
    return lambda *extra: compose_cfg(tiny(*extra))


@pytest.fixture
def one_thread():
    """Small problems run on one thread: no OpenMP overhead, no contention on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
