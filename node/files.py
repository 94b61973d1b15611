"""Files a node must not lose or find half-written: written whole, durably, then renamed.

``write_atomically`` writes to a temporary file in the same directory, ``fsync`` s it,
renames it over the target and ``fsync`` s the directory. The rename makes a reader see the
old file or the new one, never half of one; the directory ``fsync`` makes the rename itself
survive a power loss (without it the old file, or none, can come back after a reboot,
though the new contents were synced).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (files created or renamed in it) durable."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` by ``data`` (file mode ``mode``), all or nothing, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)
