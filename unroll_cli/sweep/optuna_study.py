"""An Optuna study run by Hydra: search space, resumable storage, pruning from inside a job.

The sweeper (``hydra/sweeper=unroll_optuna``) turns ``hydra.sweeper.params`` and the sweeps on the
command line (Hydra's grammar: ``interval(a,b)``, ``tag(log,interval(a,b))``, ``int(interval(a,b))``,
``range(a,b,step)``, ``choice(a,b)`` or ``a,b``) into Optuna distributions, asks the study for
``n_jobs`` trials at a time, and launches them as jobs numbered by trial number, so that trial N runs
in ``<sweep dir>/N``. The study lives in SQLite inside the sweep directory unless
``hydra.sweeper.storage`` names another database: re-running the same sweep (same sweep dir) loads
it, gives the trials that an interruption left running back to the queue, and runs only what is
missing up to ``n_trials`` finished (completed or pruned) trials.

A job finds its own trial from its Hydra config (``hydra.sweeper``, ``hydra.sweep.dir``,
``hydra.job.num``) and reports its validation metric after every epoch (or stage); when the pruner
says so it stops with :class:`RunPruned`, which the sweeper records as a pruned trial. Pruning is
what hydra-optuna-sweeper lacks; this sweeper also runs on current Optuna and SQLAlchemy 2.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobStatus
from hydra.errors import CompactHydraException, HydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from unroll_cli.record.atomic import atomic_write
from unroll_cli.train.callbacks import Callback, RunPruned

log = logging.getLogger(__name__)

SWEEPER_TARGET = "hydra_plugins.unroll_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """The study's database: the given URL, or ``optuna.db`` in the sweep directory (created)."""
    if storage:
        return storage
    sweep_dir = Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{sweep_dir / 'optuna.db'}"


def distribution(override: Override):
    """The Optuna distribution of one Hydra sweep override."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    sweep = override.value()
    log_scale = "log" in sweep.tags
    if isinstance(sweep, IntervalSweep):
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(sweep.step), log=log_scale)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(sweep.step))
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(sweep.list)
    raise HydraException(f"{override.input_line}: not a sweep the Optuna sweeper understands")


def search_space(params: dict[str, str] | None, arguments: list[str]) -> tuple[dict, list[str]]:
    """(distributions by key, fixed overrides): ``hydra.sweeper.params`` first, then the command
    line, a later value of a key replacing an earlier one."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    by_key: dict[str, Override] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        by_key[override.get_key_element()] = override
    space = {key: distribution(o) for key, o in by_key.items() if o.is_sweep_override()}
    fixed = [f"{key}={o.get_value_element_as_str()}" for key, o in by_key.items() if not o.is_sweep_override()]
    return space, fixed


def requeue_interrupted(study) -> None:
    """Trials left running by an interrupted sweep are marked failed and their parameters queued
    again, so a re-run tries exactly those points first."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params)
        log.info("trial %d was interrupted: queued again", trial.number)


def run_study(sweeper, arguments: list[str], *, direction: str, n_trials: int, n_jobs: int,
              study_name: str, storage: str | None, sampler: Any, pruner: Any,
              params: dict[str, str] | None) -> Any:
    """The sweep: ask, launch, tell, until the study holds ``n_trials`` finished trials."""
    import optuna
    from optuna.trial import TrialState

    config = sweeper.config
    sweep_dir = Path(str(config.hydra.sweep.dir))
    space, fixed = search_space(params, arguments)
    study = optuna.create_study(study_name=study_name, storage=storage_url(storage, sweep_dir),
                                sampler=sampler, pruner=pruner or optuna.pruners.NopPruner(),
                                direction=direction, load_if_exists=True)
    if study.get_trials(deepcopy=False):  # resumed: a seeded sampler would repeat its first points
        study.sampler.reseed_rng()
    requeue_interrupted(study)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = n_trials - len(study.get_trials(deepcopy=False, states=finished))
    log.info("study %s in %s: %d trial(s) to run over %s", study_name, sweep_dir, max(remaining, 0),
             ", ".join(space) or "no parameters")
    failed: list[str] = []
    while remaining > 0:
        trials = [study.ask(space) for _ in range(min(n_jobs, remaining))]
        remaining -= len(trials)
        first = trials[0].number
        assert [t.number for t in trials] == list(range(first, first + len(trials)))  # job num = trial number
        batch = [fixed + [f"{key}={value}" for key, value in t.params.items()] for t in trials]
        try:
            sweeper.validate_batch_is_legal(batch)  # a key or value Hydra cannot compose
        except Exception:
            for trial in trials:
                study.tell(trial, state=TrialState.FAIL)
            raise
        for trial, result in zip(trials, sweeper.launcher.launch(batch, initial_job_idx=first)):
            failure = tell(study, trial, result)
            if failure:
                failed.append(f"trial {trial.number} ({' '.join(result.overrides)}): {failure}")
    write_results(study, sweep_dir)
    if failed:
        raise CompactHydraException(f"{len(failed)} trial(s) failed; the study is kept in {sweep_dir}:\n"
                             + "\n".join(failed))
    return study


def tell(study, trial, result) -> str | None:
    """Record one job's outcome in the study; return why it failed, or None."""
    from optuna.trial import TrialState

    if result.status == JobStatus.FAILED:
        error = result._return_value  # the job's exception (JobReturn.return_value would re-raise it)
        if isinstance(error, RunPruned):
            study.tell(trial, state=TrialState.PRUNED)
            return None
        study.tell(trial, state=TrialState.FAIL)
        return f"{type(error).__name__}: {error}"
    value = result.return_value
    if value is None or not math.isfinite(value):
        study.tell(trial, state=TrialState.FAIL)
        return f"returned {value}"
    study.tell(trial, value)
    return None


def write_results(study, sweep_dir: Path) -> None:
    """``optuna_results.yaml`` (the best trial) and ``trials.csv`` (every trial) in the sweep dir."""
    from optuna.trial import TrialState

    trials = study.trials_dataframe()
    atomic_write(sweep_dir / "trials.csv", lambda tmp: trials.to_csv(tmp, index=False))
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    best = study.best_trial
    summary = {"name": study.study_name, "direction": study.direction.name.lower(),
               "best_trial": best.number, "best_value": best.value, "best_params": best.params}
    atomic_write(sweep_dir / "optuna_results.yaml",
                 lambda tmp: Path(tmp).write_text(yaml.safe_dump(summary, sort_keys=False)))
    log.info("best trial %d: %.6g with %s", best.number, best.value, best.params)


class TrialPruning(Callback):
    """The trial's pruner as a trainer callback: after every validation the monitored value goes to
    the trial, and :class:`RunPruned` stops the run when the pruner says so."""

    def __init__(self, hydra_cfg: DictConfig):
        self.sweeper, self.sweep_dir, self.number = hydra_cfg.sweeper, hydra_cfg.sweep.dir, int(hydra_cfg.job.num)
        self.trial = None

    def on_fit_start(self, trainer) -> None:
        import optuna

        sweeper = self.sweeper
        storage = optuna.storages.RDBStorage(storage_url(sweeper.storage, self.sweep_dir))
        study = optuna.load_study(study_name=sweeper.study_name, storage=storage,
                                  pruner=instantiate(sweeper.pruner))
        monitor_mode = trainer.task.monitor_mode
        if (study.direction == optuna.study.StudyDirection.MINIMIZE) != (monitor_mode == "min"):
            log.warning("the study is to %s but the monitored metric is better when %s: no pruning",
                        study.direction.name.lower(), "lower" if monitor_mode == "min" else "higher")
            return
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(sweeper.study_name), self.number)
        self.trial = optuna.trial.Trial(study, trial_id)

    def on_validation(self, trainer, number: int, metrics: dict[str, Any]) -> None:
        if self.trial is None:
            return
        value = metrics[trainer.task.monitor]
        self.trial.report(value, number)
        if self.trial.should_prune():
            raise RunPruned(f"trial {self.number} pruned by {type(self.trial.study.pruner).__name__} at step "
                            f"{number} (monitored value {value:.4g})")


def trial_callbacks(hydra_cfg: DictConfig) -> dict[str, Callback]:
    """``{"optuna_pruning": TrialPruning}`` for a job of this sweeper with a pruner; else nothing."""
    sweeper = hydra_cfg.get("sweeper", {})
    if (hydra_cfg.mode != RunMode.MULTIRUN or sweeper.get("_target_") != SWEEPER_TARGET
            or not sweeper.get("pruner")):  # not a trial (e.g. an hparams_search config without -m)
        return {}
    return {"optuna_pruning": TrialPruning(hydra_cfg)}
