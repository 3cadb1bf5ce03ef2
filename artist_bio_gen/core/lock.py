"""One run per job: a second run on the same output exits at once.

A run holds an exclusive ``flock`` on ``<output stem>.run.lock`` (through ``filelock``) for
its whole life. The kernel drops the lock when the process dies, however it dies, so a run
killed with SIGKILL never blocks the next cron run. The lock file is never deleted (deleting
it would let two runs lock two different inodes) and holds the holder's pid, so a refused
run can say who is in the way. Keep outputs on a local disk: ``flock`` over NFS is not
reliable.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import LockedError

logger = logging.getLogger(__name__)


def _write_holder(fd: int) -> None:
    # Runs while the lock is held, so no other run writes the file at the same time.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)


class RunLock:
    """Context manager holding a job's run lock; raises ``LockedError`` at once if taken."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = FileLock(path, timeout=0, preserve_lock_file=True, on_acquired=_write_holder)

    def __enter__(self) -> RunLock:
        try:
            self._lock.acquire()
        except Timeout:
            raise LockedError(
                f"Another run (pid {self._holder()}) is working on this job (lock "
                f"{self.path}); this run exits without doing anything. Wait for it to finish, "
                "or stop it first."
            ) from None
        return self

    def _holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").split()[0]
        except (OSError, IndexError):
            return "unknown"

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
