"""Durable file operations: what survives a crash or a power loss once the call returns.

A written file is only durable once it is fsynced, and a new name (a created or renamed
file) only once its directory is fsynced too. Every file the tool keeps beside its output
goes through these helpers, so that rule lives in one place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make the names in ``directory`` durable (a new or renamed entry)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole.

    The data goes to a temporary file in the same directory (same file system, so the
    rename is atomic), is fsynced, renamed over ``path``, and the directory is fsynced.
    The file is readable by its owner only, or has ``mode`` (for a file another program
    reads, e.g. node_exporter). The temporary name ends in ``.tmp``, so a collector that
    reads ``*.prom`` never sees a half-written file.
    """
    directory = path.parent
    fd, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=directory)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_directory(directory.resolve())


def rename_durably(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` (same directory) and make the rename durable."""
    os.rename(source, target)
    fsync_directory(target.parent.resolve())
