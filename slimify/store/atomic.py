"""Files written whole or not at all: a temporary file beside the target, moved into place in one
step (``os.replace``, atomic on POSIX and Windows). Used by every writer (``.slim`` files, exports,
profiles, training checkpoints) so that none leaves half a file behind."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from slimify.errors import SlimifyError

__all__ = ["atomic_path", "file_mode"]


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step, on
    failure it is removed. An existing ``path`` is an error unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise SlimifyError(f"{path} is a directory: give a file name")
    if path.exists() and not overwrite:
        raise SlimifyError(f"{path} already exists: pass overwrite=True (--force on the command line) to replace it")
    if not path.parent.is_dir():
        raise SlimifyError(f"directory {str(path.parent)!r} does not exist: create it first")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as e:
        raise SlimifyError(f"cannot write to directory {str(path.parent)!r} ({e.strerror}): choose an output "
                           "path in a writable directory") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_mode() -> int:
    """The mode the user's new files get (0o666 less the umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask
