"""The run directory writer: the output contract ("What a run writes" in docs/outputs.md).

Everything a run writes goes through :class:`RunRecorder`: ``metrics.json`` (status, final metrics,
wall time, device, versions, parameter count), ``history.csv``, ``layers.csv``, ``results.md``,
``figures/``, ``tb/`` (TensorBoard) and arrays. Every file is written atomically (a temporary file
in the same directory, then ``os.replace``), so a reader never sees half a file and a crash never
destroys the last good one. TensorBoard's scalars are written against the run's global step (a
resumed run continues its count), the per-layer table's against the layer.
"""
from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from unroll_cli.record.atomic import atomic_write, atomic_write_text

STATUSES = ("running", "completed", "failed", "interrupted", "pruned")
TABLES = "tables.json"  # each table's index columns
LAYERS = "layers.csv"  # the per-layer table, also written to TensorBoard as per_layer/<column>


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/Inf: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def versions() -> dict[str, str]:
    import hydra
    import torch

    from unroll_cli import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "hydra": hydra.__version__, "unroll_cli": __version__}


class RunRecorder:
    """Writes one run's files; ``tensorboard=False`` skips the event files. ``resumed_at``: the global
    step of the checkpoint a resumed run continues from; TensorBoard hides what an earlier attempt
    in the same directory wrote after that step (this attempt writes it again)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resumed_at: int | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.earlier_s = 0.0  # a resumed run's seconds before its checkpoint (resume)
        self.info: dict[str, Any] = {"versions": versions()}
        self.history: list[dict[str, Any]] = []
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.dir / "tb"),
                                         purge_step=None if resumed_at is None else resumed_at + 1)

    # ------------------------------------------------------------------ status
    def start(self, **info: Any) -> None:
        """Mark the run as running, with what is known at the start (device, params, ...)."""
        self.info.update(info)
        self._write_metrics("running", {})

    def finish(self, metrics: dict[str, float], **info: Any) -> None:
        self.info.update(info)
        self._write_metrics("completed", metrics)
        self.close()

    def fail(self, status: str, error: str, metrics: dict[str, float] | None = None) -> None:
        """Record a failed, interrupted or pruned run (its last good checkpoint stays in checkpoints/)."""
        self.info["error"] = error
        self._write_metrics(status, metrics or {})
        self.close()

    def resume(self, history: list[dict[str, Any]], earlier_s: float) -> None:
        """Continue from a checkpoint: its history rows and the seconds of the attempts before it."""
        self.history, self.earlier_s = list(history), earlier_s

    def elapsed(self) -> float:
        """Seconds of this run: this attempt's, plus those of earlier attempts up to the checkpoint it
        resumed from (work redone after an interruption counts once)."""
        return self.earlier_s + time.time() - self.started

    def _write_metrics(self, status: str, metrics: dict[str, float]) -> None:
        assert status in STATUSES
        record = {"status": status, "metrics": {k: _finite_or_none(v) for k, v in metrics.items()},
                  "wall_s": round(self.elapsed(), 3), **self.info}
        atomic_write_text(self.dir / "metrics.json", json.dumps(record, indent=2, default=str) + "\n")

    # ------------------------------------------------------------------ logs
    def add_row(self, row: dict[str, Any]) -> None:
        """One row of the history (an epoch or an evaluation step), in memory: the trainer's checkpoint
        holds it before :meth:`write_history` puts it on disk, so history.csv is never ahead of it."""
        self.history.append(row)

    def write_history(self, step: int) -> None:
        """history.csv, and the last row's TensorBoard scalars at the global ``step``."""
        self.write_history_file()
        for key, value in self.history[-1].items():
            if "/" in key and isinstance(value, (int, float)) and math.isfinite(value):
                self.scalar(key, value, step)

    def write_history_file(self) -> None:
        atomic_write(self.dir / "history.csv", lambda tmp: pd.DataFrame(self.history).to_csv(tmp, index=False))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def write_layer_curves(self, table: pd.DataFrame, index: str) -> None:
        """Each numeric column of the per-layer ``table`` as TensorBoard scalars ``per_layer/<column>``,
        the layer (its ``index`` column) as the step."""
        for column in table.columns.drop(index):
            if pd.api.types.is_numeric_dtype(table[column]):
                for layer, value in zip(table[index], table[column]):
                    if math.isfinite(value):
                        self.scalar(f"per_layer/{column}", float(value), int(layer))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ files
    def write_table(self, name: str, table: pd.DataFrame, index: Sequence[str] | None = None) -> None:
        """A CSV table and its index columns (default: the first), declared in ``tables.json`` so that
        ``unroll-report`` groups each table by its own indices (layer; image and sigma; ...); the
        per-layer table (``layers.csv``) goes to TensorBoard too."""
        atomic_write(self.dir / name, lambda tmp: table.to_csv(tmp, index=False))
        tables = self.dir / TABLES
        declared = json.loads(tables.read_text()) if tables.is_file() else {}
        declared[name] = list(index) if index is not None else [str(table.columns[0])]
        atomic_write_text(tables, json.dumps(declared, indent=2) + "\n")
        if name == LAYERS:
            self.write_layer_curves(table, declared[name][0])

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.dir / name, text)

    def write_array(self, name: str, array: np.ndarray) -> None:
        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, array)

        atomic_write(self.dir / name, save)

    def write_figure(self, name: str, figure) -> None:
        """``figures/<name>``, its title ending with the run's overrides (those of :meth:`start`)."""
        import matplotlib.pyplot as plt

        from unroll_cli.record.figures import with_overrides
        from unroll_cli.record.labels import title_overrides

        with_overrides(figure, title_overrides(self.info.get("overrides") or [], self.dir))
        atomic_write(self.dir / "figures" / name, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
        plt.close(figure)
