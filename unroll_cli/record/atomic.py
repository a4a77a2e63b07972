"""Files written atomically: a temporary file in the same directory, then ``os.replace``, so a
reader never sees half a file and a crash never destroys the last good one. The file gets the mode
any other file the run writes gets (0666 less the umask), not the temporary file's private 0600."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move the result onto ``path`` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_umask() -> int:
    """The process's umask (read once, at import: setting it is process-wide, so not done while threads run)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
