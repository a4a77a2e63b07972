"""Ctrl-C (SIGINT) during a run, remembered: an interrupt that lands inside a library's import can
surface as another error (a RecursionError of a half-imported module), which must still read as an
interrupt (exit 130), not as bad input. Standard library only, imported first by the entrypoint."""
from __future__ import annotations

import signal

_interrupted = False


def _on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT through the handler that remembers it (and raises KeyboardInterrupt as usual)."""
    signal.signal(signal.SIGINT, _on_sigint)


def interrupted() -> bool:
    """Whether Ctrl-C (SIGINT) has reached this process since :func:`install`."""
    return _interrupted
