"""Ctrl-C (SIGINT) during a run, remembered: an interrupt that lands inside a library's import can
surface as another error (a RecursionError of a half-imported module), which must still read as an
interrupt (exit 130), not as bad input; and one raised inside torch's import can abort the process
from its C++ code (SIGABRT), so the start-up holds it until the imports are done (:func:`held`).
Standard library only, imported first by the entrypoint."""
from __future__ import annotations

import signal
from contextlib import contextmanager

_interrupted = False


def _on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT through the handler that remembers it (and raises KeyboardInterrupt as usual)."""
    signal.signal(signal.SIGINT, _on_sigint)


@contextmanager
def held():
    """Within the block a SIGINT is only remembered; KeyboardInterrupt is raised when the block ends
    (the start-up's imports and configuration: nothing there is worth stopping half-way)."""
    caught = []

    def remember(signum, frame) -> None:
        global _interrupted
        _interrupted = True
        caught.append(signum)

    signal.signal(signal.SIGINT, remember)
    try:
        yield
    finally:
        install()
    if caught:
        raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether Ctrl-C (SIGINT) has reached this process since :func:`install`."""
    return _interrupted
