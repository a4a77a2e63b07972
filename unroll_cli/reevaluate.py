"""Evaluate a finished run again: ``unroll-eval RUN_DIR [overrides]``.

Loads the model a run reports (``checkpoints/best.pt`` when its trainer reports the best validation
epoch, else ``last.pt``; an interrupted run's too) and its config, applies overrides that change only
the evaluation, and runs the task's report into a new run directory: ``metrics.json`` (with
``source``: the run and checkpoint the model came from), ``results.md``, tables, figures and
``.hydra/``, so that ``unroll-report`` reads it like any run (the overrides are its columns).

An override may set only a key the task's or the model's schema declares evaluation-only (test data,
noise levels, SNR, test sizes, metric conventions: :func:`unroll_cli.validation.evaluation_keys`),
``device``, ``tensorboard``, ``paper.*`` and ``diagnostics.*`` (``+diagnostics=coherence``); any
other key would change the model or its training and is refused, naming it. The output directory
follows Hydra's convention: ``hydra.run.dir=DIR`` sets it, else
``outputs/evals/<date>/<time>_<id>``; it must not be the run's own.

The config is composed again from the run's ``.hydra/overrides.yaml`` plus the new overrides, then
compared with the config stored in the checkpoint: a difference outside the evaluation keys (the
package's defaults changed since the run) is refused, naming the keys. A run directory is data: the
config is checked as a command line's, and what the run trusted (``trusted_packages``, from a config
folder its overrides name) is not trusted; ``--trust PACKAGE`` trusts your own model's package. Exit code: 0 when the
evaluation completed; 2 for bad input, one line.
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from unroll_cli.errors import ConfigError
from unroll_cli.registry import register_configs, run_uid
from unroll_cli.targets import refuse_trust_from_overrides
from unroll_cli.validation import evaluation_keys, retired_keys, schema_defaults, validate
from unroll_cli.train.checkpoints import LINK, load_checkpoint, resume_conflicts

SHARED_EVALUATION_KEYS = ("device", "tensorboard", "optimized_metric", "paper", "paper.*", "diagnostics",
                          "diagnostics.*", "trainer.progress")
USAGE = "usage: unroll-eval RUN_DIR [key=value ...] [hydra.run.dir=DIR] [--trust PACKAGE ...]"


def split_arguments(argv: list[str]) -> tuple[Path, list[str], Path | None, list[str]]:
    """(the run directory, the evaluation overrides, the output directory or None, trusted packages)."""
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        raise ConfigError(f"the first argument is the run directory to evaluate ({USAGE})")
    overrides, out, trust = [], None, []
    arguments = iter(argv[1:])
    for argument in arguments:
        key = argument.lstrip("+~").partition("=")[0]
        if argument == "--trust":
            trust.append(next(arguments, ""))
            if not trust[-1] or trust[-1].startswith("-"):
                raise ConfigError(f"--trust takes a package name ({USAGE})")
        elif key == "hydra.run.dir":
            out = Path(argument.partition("=")[2])
        elif key.startswith("hydra") or argument.startswith("-"):
            raise ConfigError(f"{argument}: unroll-eval takes key=value overrides and hydra.run.dir=DIR only "
                              f"({USAGE})")
        else:
            overrides.append(argument)
    return Path(argv[0]), overrides, out, trust


def read_source(run_dir: Path) -> tuple[list[str], dict, dict | None]:
    """The run's command-line overrides and its last and best checkpoints (best None if absent)."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    try:
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{run_dir}: .hydra/overrides.yaml cannot be read ({type(error).__name__}); "
                          "is it a run directory of unroll-train?") from None
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise ConfigError(f"{run_dir}/.hydra/overrides.yaml is not a list of overrides")
    last_file = run_dir / LINK / "last.pt"
    if not last_file.is_file():
        raise ConfigError(f"{run_dir}: no {LINK}/last.pt (the run wrote no checkpoint, or ran with "
                          "trainer.checkpoint=false)")
    best_file = last_file.parent / "best.pt"
    best = load_checkpoint(best_file, key="RUN_DIR") if best_file.is_file() else None
    kept = [o for o in overrides if not o.lstrip("+~").startswith("hydra.run")]
    return [*search_path(run_dir), *kept], load_checkpoint(last_file, key="RUN_DIR"), best


def search_path(run_dir: Path) -> list[str]:
    """``hydra.searchpath=[...]`` of the run (from ``.hydra/hydra.yaml``: Hydra keeps its own overrides
    apart from the job's), so that its config folders compose again; none when it had none."""
    try:
        hydra = (yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text()) or {}).get("hydra") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    paths = hydra.get("searchpath") if isinstance(hydra, dict) else None
    if not (isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)):
        return []
    return [f"hydra.searchpath=[{','.join(paths)}]"]


def evaluation_config(run_overrides: list[str], overrides: list[str], stored: dict | None, trust: list[str] = ()):
    """The run's config with ``overrides``, composed and checked (module docstring); its targets are
    allowed in the project and in ``trust`` only (what the run directory trusts is not trusted)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as error:  # Hydra's own message for an override it cannot parse
        raise ConfigError(str(error).strip().splitlines()[0]) from None
    refuse_trust_from_overrides(o.key_or_group for o in parsed)
    for override in parsed:
        if override.is_sweep_override():
            raise ConfigError(f"{override.input_line}: unroll-eval evaluates one setting (no sweeps)")
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="unroll_cli.conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*run_overrides, *overrides])
    except Exception as error:  # Hydra's own message for a key or group that does not compose
        raise ConfigError(str(error).strip().splitlines()[0]) from None
    allowed = [*SHARED_EVALUATION_KEYS, *evaluation_keys(cfg)]
    for override in parsed:
        key = override.key_or_group
        if not any(key == pattern or (pattern.endswith("*") and key.startswith(pattern[:-1]))
                   for pattern in allowed):
            raise ConfigError(f"{key} would change the model or its training, not only its evaluation: "
                              f"unroll-eval may set {', '.join(allowed)}")
    cfg.trusted_packages = list(trust)
    validate(cfg)
    if stored is not None:
        conflicts = resume_conflicts(stored, OmegaConf.to_container(cfg, resolve=True),
                                     [*allowed, "trusted_packages", "trusted_env"], added=schema_defaults(cfg),
                                     retired=retired_keys(cfg))
        if conflicts:
            raise ConfigError(f"the run's overrides compose to another config today than the one its model was "
                              f"trained with ({'; '.join(conflicts)}): the package's defaults changed since")
    cfg.resume = None
    return cfg


def default_directory() -> Path:
    now = datetime.datetime.now()
    return Path("outputs/evals") / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S-%f')}_{run_uid()}"


def evaluate(argv: list[str]) -> Path:
    """Evaluate the run ``argv`` names; returns the new run directory."""
    from unroll_cli.record.run_dir import claim, locked, write_hydra_files
    from unroll_cli.run import SourceModel, run_validated

    source, overrides, out, trust = split_arguments(argv)
    run_overrides, last, best = read_source(source)
    cfg = evaluation_config(run_overrides, overrides, last.get("config"), trust)
    out = out or default_directory()
    if out.resolve() == source.resolve():
        raise ConfigError(f"hydra.run.dir={out} is the run itself: an evaluation goes into a new directory")
    job = [*run_overrides, *overrides]
    with locked(out):
        decision = claim(out, job)
        if decision.action == "skip":
            return out
        write_hydra_files(out, cfg, None, job)
        run_validated(cfg, out, job, source=SourceModel(str(source.resolve()), last, best))
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        out = evaluate(sys.argv[1:] if argv is None else argv)
    except (ConfigError, FileNotFoundError) as error:
        print(f"unroll-eval: {error}", file=sys.stderr)
        return 2
    print(f"results: {out}")
    return 0
