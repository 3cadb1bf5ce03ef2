"""One run per job: a second run on the same output exits at once.

A run holds an exclusive ``flock`` on ``<output stem>.run.lock`` (through ``filelock``) for
its whole life. The kernel drops the lock when the process dies, however it dies, so a run
killed with SIGKILL never blocks the next cron run. The lock file is never deleted (deleting
it would let two runs lock two different inodes) and holds the holder's pid, so a refused
run can say who is in the way. Keep outputs on a local disk: ``flock`` over NFS is not
reliable.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from dataclasses import dataclass
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

    def fileno(self) -> int | None:
        """The locked descriptor (None when not known): a worker process that inherits it
        keeps the job locked for as long as it lives, whatever happens to this process."""
        # filelock keeps the descriptor in its per-thread context; it has no public name.
        context = getattr(self._lock, "_context", None)
        fd = getattr(context, "lock_file_fd", None)
        return fd if isinstance(fd, int) else None

    def _holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").split()[0]
        except (OSError, IndexError):
            return "unknown"

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@dataclass(frozen=True)
class LockState:
    """Whether a process holds a job's run lock now, and which (None: not known)."""

    held: bool
    pid: int | None = None


#: The kernel's table of file locks (Linux): read, it shows a lock without taking it.
PROC_LOCKS = Path("/proc/locks")


def lock_state(path: Path) -> LockState:
    """Who holds the run lock at ``path``, found without taking it where possible.

    ``status`` must not take the lock even for a moment: a cron run starting in that moment
    would be refused (exit 75). On Linux the kernel's lock table answers without touching the
    lock; elsewhere the lock is tried and let go at once, which leaves that small window.
    """
    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        return LockState(held=False)
    if PROC_LOCKS.exists():
        pid = _flock_holder(inode)
        return LockState(held=pid is not None, pid=pid)
    return _probe(path)


def _flock_holder(inode: int) -> int | None:
    """The pid holding a flock on the file with ``inode``, from /proc/locks.

    A line reads ``1: FLOCK  ADVISORY  WRITE 6374 fe:00:2148925 0 EOF``. Matched on the
    inode alone: on overlay file systems the device shown there is not the one ``stat``
    reports, and two lock files sharing an inode on two devices is a risk worth taking.
    """
    for line in PROC_LOCKS.read_text(encoding="ascii", errors="replace").splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter, listed under the lock it waits for
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return int(fields[4]) if fields[4].isdigit() else None
    return None


def _probe(path: Path) -> LockState:
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return LockState(held=True, pid=_recorded_pid(path))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return LockState(held=False)
    finally:
        os.close(fd)


def _recorded_pid(path: Path) -> int | None:
    try:
        first = path.read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        return None
    return int(first) if first.isdigit() else None
