"""Run directories into a table: one row per run from its run contract, for ``unroll-report``.

A run is a directory holding a ``metrics.json``; its row is its status, error, parameter count, wall
time, optimized metric's name, its job's overrides (from ``metrics.json``, else
``.hydra/overrides.yaml``) as columns and its final metrics. A run whose files cannot be read is kept
as an ``unreadable`` row naming the file, so that a report lists it instead of failing. The file
readers here (Unreadable, read_yaml, override_list) also serve :mod:`unroll_cli.report.sweeps`.
"""
from __future__ import annotations

import glob
import json
from pathlib import Path

import pandas as pd
import yaml

from unroll_cli.record.recorder import STATUSES

# The columns of a run's row that are neither overrides nor metrics (see read_run).
RUN_COLUMNS = ["run", "status", "error", "params", "wall_s", "optimized"]


class Unreadable(Exception):
    """A run or sweep file that does not hold what the run contract says; the message names it."""


def unreadable(file: Path, what: str, error: Exception) -> Unreadable:
    """An Unreadable naming ``file``, with ``error`` on one line (it goes into a table cell)."""
    return Unreadable(f"{file}: {what} ({' '.join(str(error).split())})")


def existing_dirs(paths: list[str]) -> list[Path]:
    """The directories the given paths (globs allowed) name; FileNotFoundError for one naming none."""
    found = []
    for pattern in paths:
        dirs = [Path(p) for p in glob.glob(pattern) or [pattern] if Path(p).is_dir()]
        if not dirs:
            raise FileNotFoundError(f"{pattern}: no such run or sweep directory")
        found += dirs
    return found


def natural_key(path: Path) -> tuple:
    """Sort key of a path with its numbers compared as numbers: a sweep's jobs 0, 1, 2, ..., 10 in the
    order they were launched, not 0, 1, 10, 11, ..., 2."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def dirs_holding(name: str, paths: list[str]) -> list[Path]:
    """Every directory holding a file ``name`` under the given paths (globs allowed), in natural order."""
    return sorted({file.parent for path in existing_dirs(paths) for file in path.rglob(name)}, key=natural_key)


def find_runs(paths: list[str]) -> list[Path]:
    """Every directory holding a metrics.json under the given paths (globs allowed)."""
    return dirs_holding("metrics.json", paths)


def read_json_object(file: Path) -> dict:
    """The JSON object in ``file``; Unreadable if it cannot be read or holds anything else."""
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise unreadable(file, "not valid JSON", error) from None
    if not isinstance(record, dict):
        raise Unreadable(f"{file}: not a JSON object but a {type(record).__name__}")
    return record


def read_yaml(file: Path):
    """The YAML document in ``file`` (None if empty); Unreadable if it cannot be read or parsed."""
    try:
        return yaml.safe_load(file.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise unreadable(file, "not valid YAML", error) from None


def override_list(value, file: Path) -> list[str]:
    """``value`` if it is a list of ``key=value`` strings; Unreadable, naming ``file``, if not."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Unreadable(f"{file}: the overrides are not a list of key=value strings")
    return value


NUMBER = (int, float)


def check_fields(record: dict, file: Path) -> None:
    """Each field the report reads has the contract's type: Unreadable naming the file and field if not."""
    def number(value) -> bool:
        return value is None or (isinstance(value, NUMBER) and not isinstance(value, bool))

    checks = {"status": (lambda v: v in STATUSES, f"one of {', '.join(STATUSES)}"),
              "error": (lambda v: v is None or isinstance(v, str), "text"),
              "params": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer"),
              "wall_s": (number, "a number"),
              "optimized": (lambda v: v is None or isinstance(v, dict), "an object"),
              "metrics": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and number(x) for k, x in v.items()),
                          "an object of numbers")}
    for field, (ok, what) in checks.items():
        if field in record and not ok(record[field]):
            raise Unreadable(f"{file}: the field {field} is not {what} ({str(record[field])[:60]!r})")
    if "status" not in record:
        raise Unreadable(f"{file}: no status field")


def read_record(run: Path) -> tuple[dict, list[str]]:
    """The run's metrics.json and its job's overrides (those of metrics.json, else those of
    ``.hydra/overrides.yaml``, else none); Unreadable if a file is not what the contract says."""
    file = run / "metrics.json"
    record = read_json_object(file)
    check_fields(record, file)
    if record.get("overrides") is not None:
        return record, override_list(record["overrides"], file)
    file = run / ".hydra" / "overrides.yaml"
    return record, (override_list(read_yaml(file) or [], file) if file.is_file() else [])


# The value shown for a key that a run's overrides delete (``~key``), and for a key that other runs
# override and this one leaves at its config's value.
DELETED, DEFAULT = "(deleted)", "(default)"


def as_columns(overrides: list[str]) -> dict[str, str]:
    """``{key: value}`` of ``key=value`` overrides, without the ``+`` prefix; a deletion (``~key``,
    ``~key=value``) has the value DELETED."""
    return {key.lstrip("+~"): DELETED if key.startswith("~") else value
            for key, _, value in (item.partition("=") for item in overrides)}


def numeric_values(values: pd.Series) -> pd.Series:
    """An override column as numbers, DELETED and DEFAULT as NaN (they order and plot as a missing
    value); ValueError when another value is not a number."""
    return pd.to_numeric(values.where(~values.isin([DELETED, DEFAULT])))


def read_run(run: Path) -> tuple[dict, list[str] | None]:
    """The run's row (run, status, error, params, wall_s, the optimized metric's name, overrides, final
    metrics) and its overrides; an unreadable file gives an ``unreadable`` row with the file named in its
    error, and None."""
    try:
        record, overrides = read_record(run)
    except Unreadable as error:
        return {"run": str(run), "status": "unreadable", "error": str(error)}, None
    optimized = record.get("optimized")
    return {"run": str(run), "status": record.get("status"), "error": record.get("error"),
            "params": record.get("params"), "wall_s": record.get("wall_s"),
            "optimized": optimized.get("name") if isinstance(optimized, dict) else None,
            **as_columns(overrides), **record.get("metrics", {})}, overrides


def read_runs(paths: list[str]) -> tuple[pd.DataFrame, dict[Path, frozenset[str]]]:
    """The runs table and the set of overrides of every readable run (to find a sweep's missing jobs)."""
    rows, jobs, keys = [], {}, {}
    for run in find_runs(paths):
        row, overrides = read_run(run)
        rows.append(row)
        if overrides is not None:
            jobs[run] = frozenset(overrides)
            keys.update(dict.fromkeys(as_columns(overrides)))
    runs = pd.DataFrame(rows)
    if keys:  # a readable run without the override has its config's value
        known = runs["status"] != "unreadable"
        for key in keys:
            runs.loc[known, key] = runs.loc[known, key].fillna(DEFAULT)
    return runs, jobs


def load_runs(paths: list[str]) -> pd.DataFrame:
    """One row per run: run directory, status, error, overrides, then the final metrics."""
    return read_runs(paths)[0]
