"""A Hydra grid sweep's planned jobs, and those that left no readable run (``missing``).

A run that crashed before writing its ``metrics.json`` (killed, out of memory, a node lost) leaves no
row in the runs table, so a report of the runs alone would average a partial grid without saying so.
The grid is planned again here from the sweep's ``multirun.yaml`` (Hydra's own override parser, the
command line winning over ``hydra.sweeper.params``) and compared with the runs' overrides.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from unroll_cli.report.runs import Unreadable, as_columns, override_list, read_yaml, unreadable


def sweep_overrides(sweep: Path) -> list[str] | None:
    """The overrides a grid sweep was launched with, from its multirun.yaml: ``hydra.sweeper.params``
    as ``key=value``, then the command line's (``hydra.overrides.task``). None when the sweeper is
    not Hydra's basic one: an Optuna study samples its trials, it plans no grid to check against."""
    file = sweep / "multirun.yaml"
    config = read_yaml(file)
    try:
        sweeper = config["hydra"]["sweeper"]
        if not str(sweeper["_target_"]).endswith("BasicSweeper"):
            return None
        params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
        return params + override_list(config["hydra"]["overrides"]["task"], file)
    except (KeyError, TypeError, AttributeError) as error:
        raise unreadable(file, "not a Hydra multirun config", error) from None


#: the most jobs a grid is planned with here (a crafted multirun.yaml must not exhaust the memory)
MAX_PLANNED_JOBS = 100_000


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``overrides``, as ``key=value`` lists: the cartesian
    product of every key's values, a later override of a key replacing an earlier one (the command
    line wins over ``hydra.sweeper.params``). HydraException beyond :data:`MAX_PLANNED_JOBS` jobs."""
    values = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        swept = (itertools.islice(override.sweep_string_iterator(), MAX_PLANNED_JOBS + 1)
                 if override.is_sweep_override() else [override.get_value_element_as_str()])
        values[key] = [f"{key}={value}" for value in swept]
    if math.prod(len(v) for v in values.values()) > MAX_PLANNED_JOBS:
        raise HydraException(f"it plans more than {MAX_PLANNED_JOBS} jobs")
    return [list(job) for job in itertools.product(*values.values())]


def planned_jobs(sweep: Path) -> list[list[str]]:
    """The jobs of the grid sweep in ``sweep`` (none for another sweeper, see sweep_overrides);
    Unreadable when its multirun.yaml is not readable or its sweep cannot be expanded here (e.g.
    ``glob(...)``, which needs the application's configs)."""
    overrides = sweep_overrides(sweep)
    try:
        return expand_sweep(overrides) if overrides is not None else []
    except HydraException as error:
        raise unreadable(sweep / "multirun.yaml", "cannot expand the sweep", error) from None


def missing_jobs(sweeps: list[Path], jobs: dict[Path, frozenset[str]]) -> pd.DataFrame:
    """One ``missing`` row (the sweep, the job's overrides) per planned job of the grid sweeps that no
    readable run under its sweep has the overrides of; an ``unreadable`` row per unreadable sweep."""
    rows = []
    for sweep in sweeps:
        try:
            planned = planned_jobs(sweep)
        except Unreadable as error:
            rows.append({"run": str(sweep), "status": "unreadable", "error": str(error)})
            continue
        ran = {overrides for run, overrides in jobs.items() if run.is_relative_to(sweep)}
        rows += [{"run": str(sweep), "status": "missing", "error": "no run with these overrides",
                  **as_columns(job)} for job in planned if frozenset(job) not in ran]
    return pd.DataFrame(rows)
