"""The entrypoints: ``unroll-train`` (Hydra's command line, around :mod:`unroll_cli.app`),
``unroll-report`` (sweep tables, :mod:`unroll_cli.report.aggregate`), ``unroll-eval`` (a finished run
evaluated again, :mod:`unroll_cli.reevaluate`) and ``unroll-compress`` (a trained
run's dense maps as butterfly or Monarch layers, :mod:`unroll_cli.compress`).

Only the standard library is imported at the top, so that Ctrl-C at any moment of the start-up is
one line and exit code 130, never a traceback (:mod:`unroll_cli.interrupts`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unroll_cli import interrupts


def output_folder(value: str) -> Path:
    """An ``--out DIR`` argument: a folder that is or will be made there, never a file."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a file, not a directory: choose another one")
    return path


def train_main() -> None:
    """``unroll-train``: check the command line (:mod:`unroll_cli.command_line`), then run Hydra."""
    interrupts.install()
    try:
        with interrupts.held():  # the imports and the command line's check
            from unroll_cli.command_line import check_command_line
            from unroll_cli.errors import ConfigError

            try:
                check_command_line(sys.argv[1:])
            except ConfigError as error:
                print(f"unroll-train: {error}", file=sys.stderr)
                sys.exit(2)
            from unroll_cli.app import train_job

        train_job()
    except KeyboardInterrupt:
        print("unroll-train: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception:  # Ctrl-C inside a library's import can surface as another error (interrupts.py)
        if interrupts.interrupted():
            print("unroll-train: interrupted", file=sys.stderr)
            sys.exit(130)
        raise


def report_main() -> None:
    from unroll_cli.report.aggregate import main

    sys.exit(main())


def eval_main() -> None:
    from unroll_cli.reevaluate import main

    sys.exit(main())


def compress_main() -> None:
    from unroll_cli.compress import main

    sys.exit(main())


if __name__ == "__main__":
    train_main()
