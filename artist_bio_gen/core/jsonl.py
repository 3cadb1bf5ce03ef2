"""The JSONL output: one whole, fsynced line per committed bio, appended after its commit.

Every append takes an in-process ``threading.Lock`` and then a ``filelock`` lock on
``<output>.lock`` (so other processes appending to the same file wait), writes the encoded
line with a single ``os.write`` on an ``O_APPEND`` descriptor, checks the byte count and
fsyncs before the locks are released. Lines that workers finish at the same moment share
one such write and one fsync (group commit); each worker still returns only once its own
line is on disk. A short write, ENOSPC or EFBIG truncates the file back
to its previous size, so it always ends in a complete line, and raises ``OutputWriteError``.

Durability setting (``--fsync-interval`` / ``JSONL_FSYNC_INTERVAL``):

* ``0`` (the default): fsync after every line. A line on disk is never lost.
* ``N > 0`` seconds: group fsync; lines are fsynced by a background flusher at most N seconds
  after they are written (and at close). On a slow disk this saves one fsync per line, at the
  price that a power loss can drop up to N seconds of lines. Nothing is lost for good: the
  database is the source of truth and the next start appends every committed row the file
  lacks, rendered from the database. A process crash (kill -9) loses nothing either way,
  because written data is in the page cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock

from ..errors import OutputWriteError
from ..jobfiles import JobPaths
from ..models import NO_ARTIST_DATA
from ..utils.durable import fsync_directory, rename_durably

logger = logging.getLogger(__name__)

#: The JSONL record's keys, in the legacy order (``artist_data`` only when non-empty).
LEGACY_KEYS = (
    "artist_id",
    "artist_name",
    "request",
    "response_text",
    "response_id",
    "created",
    "db_status",
    "error",
    "artist_data",
)

_READ_CHUNK = 1 << 20


class Renderable(Protocol):
    """What a JSONL line is rendered from: a ``CommittedBio`` (or a legacy ``ApiResponse``)."""

    @property
    def artist_id(self) -> str: ...
    @property
    def artist_name(self) -> str: ...
    @property
    def artist_data(self) -> str | None: ...
    @property
    def response_text(self) -> str: ...
    @property
    def response_id(self) -> str: ...
    @property
    def created(self) -> int: ...
    @property
    def db_status(self) -> str | None: ...


def build_record(
    bio: Renderable, prompt_id: str | None, version: str | None = None, error: str | None = None
) -> dict[str, object]:
    """The legacy JSONL record for one bio, keys in the legacy order.

    ``error`` is only ever set by the legacy output functions: the tool's own JSONL holds
    committed bios only.
    """
    variables = {
        "artist_name": bio.artist_name,
        "artist_data": bio.artist_data or NO_ARTIST_DATA,
    }
    request: dict[str, object] = {"prompt_id": prompt_id, "variables": variables}
    if version:
        request["version"] = version
    record: dict[str, object] = {
        "artist_id": bio.artist_id,
        "artist_name": bio.artist_name,
        "request": request,
        "response_text": bio.response_text,
        "response_id": bio.response_id,
        "created": int(bio.created),
        # The legacy tool wrote the string "null" when the database was off.
        "db_status": bio.db_status if bio.db_status is not None else "null",
        "error": error,
    }
    if bio.artist_data:
        record["artist_data"] = bio.artist_data
    return record


#: One encoder for every line (``json.dumps`` with options builds a new one per call); the
#: same output as ``json.dumps(record, ensure_ascii=False)``.
_JSON = json.JSONEncoder(ensure_ascii=False)


def encode_line(
    bio: Renderable, prompt_id: str | None, version: str | None = None, error: str | None = None
) -> bytes:
    """One JSONL line (UTF-8, ``ensure_ascii=False``, ending in a newline)."""
    record = build_record(bio, prompt_id, version, error)
    return (_JSON.encode(record) + "\n").encode("utf-8")


def open_append(path: Path, create: bool) -> int:
    """Open ``path`` for appending; fsync its directory when this call created it."""
    # Read access too: the torn-tail check reads the last byte.
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        if not create:
            raise OutputWriteError(f"Output file '{path}' does not exist.") from None
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        # Another process created it between our two opens; theirs is the one to use.
        return os.open(path, flags)
    fsync_directory(path.parent.resolve())
    return fd


def last_complete_size(fd: int, size: int) -> int:
    """Size of the file up to and including its last newline (0 when it has none)."""
    end = size
    while end > 0:
        start = max(0, end - _READ_CHUNK)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def _truncate_torn_tail(fd: int, path: Path) -> int:
    """Cut a partial last line left by a crashed writer; returns the bytes removed."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    keep = last_complete_size(fd, size)
    os.ftruncate(fd, keep)
    os.fsync(fd)
    logger.warning(
        "%s ended in a partial line (%d bytes, left by an interrupted writer); "
        "removed it so the file ends in a complete line",
        path,
        size - keep,
    )
    return size - keep


class _GroupCommit:
    """Leader/follower group commit: one write and one fsync for all lines waiting.

    A thread that finds no write in progress becomes the leader: it takes every line queued
    so far, writes them with one ``os.write`` under the locks, fsyncs once, and wakes the
    others. Lines arriving meanwhile wait for the next leader. Each caller returns only
    once its own line is on disk (or raises if its batch failed), so the guarantee per line
    is unchanged while the lock and fsync costs are shared when many workers finish at once.
    """

    def __init__(self, write_batch: Callable[[list[bytes]], None]):
        self._write_batch = write_batch
        self._cv = threading.Condition()
        self._queue: list[bytes] = []
        self._enqueued = 0
        self._resolved = 0
        self._leading = False
        #: (first ticket, last ticket, message) of failed batches.
        self._failed: list[tuple[int, int, str]] = []

    def submit(self, line: bytes) -> None:
        """Queue ``line`` and return once it is written; raises ``OutputWriteError``."""
        with self._cv:
            self._queue.append(line)
            self._enqueued += 1
            ticket = self._enqueued
            while self._resolved < ticket:
                if self._leading:
                    self._cv.wait()
                else:
                    self._lead()
            failure = next((m for first, last, m in self._failed if first <= ticket <= last), None)
        if failure is not None:
            raise OutputWriteError(failure)

    def _lead(self) -> None:
        # Called with the condition held; releases it for the duration of the I/O.
        self._leading = True
        batch, self._queue = self._queue, []
        last = self._enqueued
        failure = None
        self._cv.release()
        try:
            self._write_batch(batch)
        except Exception as exc:  # every waiter of the batch must learn of it, not hang
            failure = str(exc) or type(exc).__name__
        finally:
            self._cv.acquire()
            self._leading = False
        if failure is not None:
            self._failed.append((last - len(batch) + 1, last, failure))
        self._resolved = last
        self._cv.notify_all()


class JsonlWriter:
    """Appends whole lines to one JSONL file; safe across threads and processes."""

    def __init__(
        self,
        path: Path | str,
        *,
        fsync_interval: float = 0.0,
        create: bool = True,
        hold_lock: bool = False,
    ):
        """Open ``path`` for appending (created unless ``create`` is False).

        ``hold_lock`` keeps the cross-process append lock from open to close instead of
        taking it per write: for a run that owns the file for its whole life (the run lock
        already keeps other runs away), this saves the lock's cost on every line, about a
        tenth of the tool's CPU per artist. Other processes appending meanwhile wait.
        """
        self.path = Path(path)
        self._fsync_interval = fsync_interval
        self._thread_lock = threading.Lock()
        # thread_local stays True (the default): a lock shared across threads would let one
        # thread release another's hold. preserve_lock_file keeps the lock file in place, so
        # every process locks the same inode.
        self._file_lock = FileLock(JobPaths(self.path).append_lock, preserve_lock_file=True)
        self._fd = open_append(self.path, create)
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        self._group = _GroupCommit(self._write_batch)
        #: Lines and bytes appended through this writer (recovery compares them).
        self.appended_lines = 0
        self.appended_bytes = 0
        self._held = False
        #: The file's size while this writer holds the lock for good and knows it (None:
        #: look, and cut a torn tail first, before the next write).
        self._known_size: int | None = None
        if hold_lock:
            self._file_lock.acquire()
            self._held = True
        with self._locked():
            #: Bytes of torn lines cut since this writer opened the file.
            self.repaired_bytes = _truncate_torn_tail(self._fd, self.path)
            if self._held:
                self._known_size = os.fstat(self._fd).st_size
        if fsync_interval > 0:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="jsonl-fsync", daemon=True
            )
            self._flusher.start()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # The thread lock first: threads of this process queue on it instead of polling the
        # file lock, which is only contended by other processes.
        with self._thread_lock:
            if self._held:
                yield
                return
            with self._file_lock:
                yield

    def append_line(self, line: bytes) -> None:
        """Append one encoded line (must end in a newline) whole, or not at all.

        Returns once the line is written and (by default) fsynced.
        """
        if not line.endswith(b"\n"):
            raise ValueError("a JSONL line must end in a newline")
        self._group.submit(line)

    def append_lines(self, lines: list[bytes]) -> None:
        """Append several encoded lines with one write (and one fsync), whole or not at all.

        For a caller that gathered the lines itself (``core/committer.py``); returns once
        they are written and (by default) fsynced.
        """
        if not all(line.endswith(b"\n") for line in lines):
            raise ValueError("a JSONL line must end in a newline")
        if lines:
            self._write_batch(lines)

    def _write_batch(self, lines: list[bytes]) -> None:
        with self._locked():
            self._append_locked(b"".join(lines), len(lines))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the append locks (recovery appends with ``append_line_locked`` meanwhile)."""
        with self._locked():
            yield

    def append_line_locked(self, line: bytes) -> None:
        """``append_line`` for a caller that already holds ``exclusive()``."""
        if not line.endswith(b"\n"):
            raise ValueError("a JSONL line must end in a newline")
        self._append_locked(line, 1)

    def _append_locked(self, data: bytes, lines: int) -> None:
        """Write ``data`` (whole lines) with one write; fsync unless in group-fsync mode."""
        size = self._known_size
        if size is None:
            # Another process may have died mid-line since our last append. A writer that
            # holds the lock for good skips these two system calls per write: no other
            # process can have appended since, so the size it knows is the file's.
            self.repaired_bytes += _truncate_torn_tail(self._fd, self.path)
            size = os.fstat(self._fd).st_size
        try:
            self._write_whole(data, size)
            if self._fsync_interval > 0:
                self._dirty.set()
            else:
                self._fsync_or_undo(size)
        except BaseException:
            # The undo may itself have failed: look at the file again before the next write.
            self._known_size = None
            raise
        if self._held:
            self._known_size = size + len(data)
        self.appended_lines += lines
        self.appended_bytes += len(data)

    def release_hold(self) -> None:
        """Take the cross-process append lock per write from now on (worker processes
        are about to append to the same file)."""
        with self._thread_lock:
            if self._held:
                self._held = False
                self._known_size = None
                self._file_lock.release()

    def freeze(self, timeout: float = 5.0) -> None:
        """Take the in-process lock for good, so no thread is mid-line when the process ends.

        Used just before ``os._exit`` on an emergency stop; appends after it block forever.
        """
        if self._thread_lock.acquire(timeout=timeout):
            self.flush()

    def _write_whole(self, line: bytes, size: int) -> None:
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            self._undo(size)
            raise OutputWriteError(
                self._failure_message(exc.strerror or str(exc), 0, len(line))
            ) from exc
        if written != len(line):
            self._undo(size)
            raise OutputWriteError(self._failure_message("short write", written, len(line)))

    def _fsync_or_undo(self, size: int) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            # After a failed fsync the page cache may not reach the disk; drop the line so
            # the file never claims a line that might vanish.
            self._undo(size)
            raise OutputWriteError(
                self._failure_message(f"fsync failed: {exc.strerror}", 0, 0)
            ) from exc

    def _undo(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            logger.exception("could not truncate %s back to %d bytes", self.path, size)

    def _failure_message(self, what: str, written: int, total: int) -> str:
        return (
            f"Could not append to '{self.path}': {what} (wrote {written} of {total} bytes); the "
            "file was restored to its last complete line. Fix the cause (free disk space, raise "
            "the file size limit) and run again with --resume."
        )

    def _flush_loop(self) -> None:
        while not self._closed.wait(self._fsync_interval):
            self.flush()

    def flush(self) -> None:
        """Fsync lines written since the last fsync (group-fsync mode)."""
        if self._dirty.is_set():
            self._dirty.clear()
            with contextlib.suppress(OSError):
                os.fsync(self._fd)

    def close(self) -> None:
        """Fsync what is pending and close the descriptor (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()
        os.close(self._fd)
        if self._held:
            self._held = False
            self._file_lock.release()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def move_aside(path: Path) -> Path:
    """Rename ``path`` to a free ``<name>.replaced-<timestamp>`` name and return it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.replaced-{stamp}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.name}.replaced-{stamp}-{counter}")
    rename_durably(path, target)
    logger.warning("moved the existing %s aside to %s", path, target)
    return target


def line_is_done(record: dict[str, Any]) -> bool:
    """Whether a JSONL record stands for a committed bio.

    Legacy files also hold failed artists (a non-empty ``error``) and database failures
    written with ``db_status: "error"``; neither is done.
    """
    return not record.get("error") and record.get("db_status") != "error"


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield each complete, parseable record of a JSONL file (a torn last line is ignored)."""
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
            except ValueError:
                logger.warning("%s: ignoring a line that is not valid JSON", path)
                continue
            if isinstance(record, dict):
                yield record
