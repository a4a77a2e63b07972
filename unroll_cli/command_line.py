"""The command line, checked before Hydra acts on it.

Hydra builds the callbacks, the sweeper and the launcher, and configures logging, from the composed
``hydra`` node before any job starts, so a job cannot check those itself. When the command line
changes that node beyond its directories (an override of a ``hydra`` key or group other than
:data:`PLAIN_HYDRA_KEYS`, such as ``hydra.searchpath``, or ``--config-name``), ``unroll-train`` therefore composes the config from the command line first
(Hydra's compose API, without the sweep values) and checks every ``_target_`` of its ``hydra`` node
(:mod:`unroll_cli.targets`); otherwise the node is the package's own and Hydra composes the config
once. Each job checks the rest of its own config before it instantiates anything. The command-line flags are Hydra's (``--help``, ``-m``, ``--cfg``,
``--info``, ``-cn``, ...), except three it refuses: ``--experimental-rerun`` (it unpickles a file,
which can run code), and ``-cp``/``-cd`` (use ``hydra.searchpath=[file://DIR]`` to add a config
folder: the composition checked here is then the one Hydra runs).
"""
from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

from unroll_cli.errors import ConfigError
from unroll_cli.registry import register_configs

#: ``hydra`` keys that name no code: they may change without the composition checked beforehand
PLAIN_HYDRA_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.job.chdir", "hydra.verbose")
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
    """Raise :class:`ConfigError` for a command line that would make Hydra run something not allowed.
    A command line Hydra itself cannot parse or compose is left to Hydra's own error."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from unroll_cli.targets import check_hydra_node, refuse_trust_from_overrides

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = _parser().parse_args(argv)
    except SystemExit:
        return
    if args.help or args.hydra_help or args.version or args.shell_completion:
        return
    for name, message in REFUSED_FLAGS.items():
        if getattr(args, name) is not None:
            raise ConfigError(message)
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except Exception:  # Hydra reports the bad override itself
        return
    refuse_trust_from_overrides(o.key_or_group for o in overrides)
    for override in overrides:
        if override.is_sweep_override() and override.key_or_group.startswith("hydra"):
            raise ConfigError(f"{override.input_line}: sweeping over Hydra's own settings is not supported")
    for override in overrides:  # Hydra makes these folders (for its log) before any job can refuse them
        if override.key_or_group in ("hydra.run.dir", "hydra.sweep.dir") and not override.is_sweep_override():
            folder = Path(str(override.value()))
            if folder.exists() and not folder.is_dir():
                raise ConfigError(f"{override.key_or_group}={folder} is a file, not a directory: choose another one")
    if args.config_name is None and all(o.key_or_group in PLAIN_HYDRA_KEYS or not o.key_or_group.startswith(
            ("hydra", "+hydra", "~hydra", "++hydra")) for o in overrides):
        return  # the package's own hydra node, or only its directories changed: Hydra composes once
    fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
    register_configs()
    try:
        with initialize_config_module(config_module="unroll_cli.conf", version_base="1.3"):
            cfg = compose(config_name=args.config_name or "train", overrides=fixed, return_hydra_config=True)
    except Exception:  # the same composition fails in Hydra, with its own message, before it runs anything
        return
    check_hydra_node(cfg.hydra, trusted=list(cfg.get("trusted_packages") or []),
                     trusted_env=list(cfg.get("trusted_env") or []))
