"""The command line, checked before Hydra acts on it.

``unroll-train`` composes the config from the command line first (Hydra's compose API, a sweep at its
first value), so that an override Hydra cannot parse or compose (a key typo, an option a group lacks,
a value of the wrong type) is one message naming it, with the closest valid keys or options, and exit
code 2, rather than Hydra's own message and exit code 1. Hydra builds the callbacks, the sweeper and
the launcher, and configures logging, from the composed ``hydra`` node before any job starts, so a
job cannot check those itself: when the command line changes that node beyond its directories (an
override of a ``hydra`` key or group other than :data:`PLAIN_HYDRA_KEYS`, such as
``hydra.searchpath``, or ``--config-name``), every ``_target_`` of the composed ``hydra`` node is
checked here (:mod:`unroll_cli.targets`). Each job checks the rest of its own config before it
instantiates anything. The command-line flags are Hydra's (``--help``, ``-m``, ``--cfg``, ``--info``,
``-cn``, ...), except three it refuses: ``--experimental-rerun`` (it unpickles a file, which can run
code), and ``-cp``/``-cd`` (use ``hydra.searchpath=[file://DIR]`` to add a config folder: the
composition checked here is then the one Hydra runs).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import itertools
from dataclasses import is_dataclass
from pathlib import Path

from hydra.core.override_parser.types import ValueType
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from unroll_cli.errors import ConfigError
from unroll_cli.registry import register_configs

#: ``hydra`` keys that name no code: they may change without the composition checked beforehand
PLAIN_HYDRA_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.job.chdir", "hydra.verbose")
CHECKED_SWEEP_VALUES = 10_000  # values of one key's sweep checked for their type before Hydra starts
REFUSED_FLAGS = {
    "experimental_rerun": "--experimental-rerun unpickles a file, which can run code: re-run with the "
                          "overrides in <run dir>/.hydra/overrides.yaml instead",
    "config_path": "-cp/--config-path is not supported: add a config folder with hydra.searchpath=[file://DIR]",
    "config_dir": "-cd/--config-dir is not supported: add a config folder with hydra.searchpath=[file://DIR]",
}


def _parser() -> argparse.ArgumentParser:
    """Hydra's command-line flags (``--hydra-help`` lists them), with the same arities."""
    parser = argparse.ArgumentParser(add_help=False)
    for flags in (["--help", "-h"], ["--hydra-help"], ["--version"], ["--resolve"], ["--run", "-r"],
                  ["--multirun", "-m"], ["--shell-completion", "-sc"]):
        parser.add_argument(*flags, action="store_true")
    for flags in (["--cfg", "-c"], ["--package", "-p"], ["--config-path", "-cp"], ["--config-name", "-cn"],
                  ["--config-dir", "-cd"], ["--experimental-rerun"]):
        parser.add_argument(*flags)
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("overrides", nargs="*")
    return parser


def check_command_line(argv: list[str]) -> None:
    """Raise :class:`ConfigError` for a command line that would make Hydra run something not allowed,
    or that Hydra cannot parse or compose (one message naming the override, with the closest valid
    keys or options, instead of Hydra's own exit code 1)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from unroll_cli.targets import check_hydra_node, refuse_trust_from_overrides

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = _parser().parse_args(argv)
    except SystemExit:
        return  # Hydra's own usage message for flags it does not know
    if args.help or args.hydra_help or args.version or args.shell_completion:
        return
    for name, message in REFUSED_FLAGS.items():
        if getattr(args, name) is not None:
            raise ConfigError(message)
    modes = [flag for flag, on in (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg),
                                   ("--info", args.info)) if on]
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)}: give one of --run, --multirun, --cfg and --info")
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except OverrideParseException as error:
        raise ConfigError(f"{error.override}: {one_line(error.message)}") from None
    refuse_trust_from_overrides(o.key_or_group for o in overrides)
    for override in overrides:
        if override.is_sweep_override() and override.key_or_group.startswith("hydra"):
            raise ConfigError(f"{override.input_line}: sweeping over Hydra's own settings is not supported")
    for override in overrides:  # Hydra makes these folders (for its log) before any job can refuse them
        if override.key_or_group in ("hydra.run.dir", "hydra.sweep.dir") and not override.is_sweep_override():
            folder = Path(str(override.value()))
            if folder.exists() and not folder.is_dir():
                raise ConfigError(f"{override.key_or_group}={folder} is a file, not a directory: choose another one")
    cfg = compose_command_line(args.config_name or "train", overrides)
    if args.multirun:
        refuse_another_sweep(cfg, overrides)
    if args.config_name is None and all(o.key_or_group in PLAIN_HYDRA_KEYS or not o.key_or_group.startswith(
            ("hydra", "+hydra", "~hydra", "++hydra")) for o in overrides):
        return  # the package's own hydra node, or only its directories changed
    check_hydra_node(cfg.hydra, trusted=list(cfg.get("trusted_packages") or []),
                     trusted_env=list(cfg.get("trusted_env") or []))


def compose_command_line(config_name: str, overrides: list) -> DictConfig:
    """The config the command line composes, a sweep at its first value, with its ``hydra`` node;
    each option a group sweep names must exist. Hydra's refusal becomes one :class:`ConfigError`."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    with initialize_config_module(config_module="unroll_cli.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        lines, key_sweeps = [], []
        for override in overrides:
            if not override.is_sweep_override():
                lines.append(override.input_line)
            elif override.is_discrete_sweep() and override.value_type != ValueType.GLOB_CHOICE_SWEEP:
                options = loader.get_group_options(override.key_or_group)  # none: a key, not a group
                for value in override.sweep_string_iterator() if options else []:
                    if value not in options:
                        raise ConfigError(missing_option(override.key_or_group, value, options))
                if not options:
                    key_sweeps.append(override)
                lines.append(f"{override.get_key_element()}={next(override.sweep_string_iterator())}")
        try:
            cfg = compose(config_name=config_name, overrides=lines, return_hydra_config=True)
        except MissingConfigException as error:
            group, _, value = (error.missing_cfg_file or "").rpartition("/")
            raise ConfigError(missing_option(group, value, error.options or []) if group
                              else one_line(str(error))) from None
        except HydraException as error:
            raise ConfigError(composition_error(error)) from None
    check_sweep_values(cfg, key_sweeps)
    return cfg


def check_sweep_values(cfg: DictConfig, sweeps: list) -> None:
    """Every value of a key's sweep (the first :data:`CHECKED_SWEEP_VALUES`) must have the key's type:
    merged into a copy of the composed config, which its schema types (``data.n=1,abc``)."""
    probe = cfg.copy()
    for override in sweeps:
        for value in itertools.islice(override.sweep_iterator(), CHECKED_SWEEP_VALUES):
            try:
                OmegaConf.update(probe, override.key_or_group, value, merge=True)
            except OmegaConfBaseException as error:
                raise ConfigError(f"{override.key_or_group}={value}: {str(error).splitlines()[0]}") from None


def refuse_another_sweep(cfg: DictConfig, overrides: list) -> None:
    """A grid sweep into a ``hydra.sweep.dir`` that holds another one is refused before Hydra writes
    its ``multirun.yaml`` there: the same sweep (to resume it) or the same with values appended (to
    extend it) plans the earlier one's jobs first, in the same order; anything else would leave that
    sweep's report without its plan."""
    from unroll_cli.report.runs import Unreadable
    from unroll_cli.report.sweeps import expand_sweep, planned_jobs

    named = [o for o in overrides if o.key_or_group == "hydra.sweep.dir"]
    sweep = Path(str(named[-1].value())) if named else None
    if sweep is None or not (sweep / "multirun.yaml").is_file():
        return
    try:
        earlier = planned_jobs(sweep)
    except Unreadable as error:
        raise ConfigError(f"hydra.sweep.dir={sweep}: {error}; nothing was changed there") from None
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.get("params") or {}).items()]
    try:
        planned = expand_sweep([*params, *(o.input_line for o in overrides if not o.is_hydra_override())])
    except HydraException:  # not a grid this can plan (an Optuna search, a glob): its sweeper decides
        return
    for number, (before, now) in enumerate(zip(earlier, planned)):
        if set(before) != set(now):
            raise ConfigError(f"hydra.sweep.dir={sweep} holds another sweep (its job {number}: "
                              f"{' '.join(before)}; this one's: {' '.join(now)}): nothing was changed there. "
                              "Choose another hydra.sweep.dir, or run that sweep's own command again to resume "
                              "it (values appended to its sweeps extend it)")
    if len(planned) < len(earlier):
        raise ConfigError(f"hydra.sweep.dir={sweep} holds a sweep of {len(earlier)} jobs, this one plans "
                          f"{len(planned)}: nothing was changed there. Choose another hydra.sweep.dir")


def missing_option(group: str, value: str, options: list[str]) -> str:
    close = difflib.get_close_matches(value, options, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(f'{group}={c}' for c in close)}?" if close else ""
    return f"{group}={value} is not an option of {group} (its options: {', '.join(options)}){hint}"


def composition_error(error: Exception) -> str:
    """Hydra's refusal to compose, as one line naming the key: an unknown key with the closest ones
    (:func:`unroll_cli.validation.unknown_key`), a value of the wrong type, or Hydra's own words."""
    from unroll_cli.validation import unknown_key

    cause = error.__cause__
    key, schema = getattr(cause, "full_key", None), getattr(cause, "object_type", None)
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and key and is_dataclass(schema):
        return unknown_key(key, schema)
    if isinstance(cause, ValidationError) and key:
        return f"{one_line(str(error))}: {key}: {str(cause).splitlines()[0]}"
    return one_line(str(error))


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
