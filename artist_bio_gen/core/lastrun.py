"""The last-run file: when a run of a job started and how it ended, for ``status`` (and for
whoever must learn the next morning what last night's cron run did).

The runner records the start once the job is known (a resumed job at once, a new job when
its manifest is written) and the end before it lets go of the run lock, so a run that
starts right after can never have its start overwritten by the end of the one before. The
end is recorded however the run ends short of a SIGKILL: a result (its exit code and
figures), an error raised after the start (its code and sentence), Ctrl-C, a second signal
(through the run's emergency hooks). A ``--resume`` refused before the run started (a
configuration error) is recorded by the CLI through ``record_refused_run``.

Writing the file is bookkeeping: a failure to write it is logged and never changes how the
run ends.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .. import exit_codes
from ..errors import ArtistBioGenError
from ..jobfiles import JobPaths, LastRun, read_manifest, write_last_run
from ..models import ProcessingStats
from .lock import RunLock
from .throttle import RequestCounts

logger = logging.getLogger(__name__)


def run_exit_code(error: ArtistBioGenError | None, interrupted: bool, failed: int) -> int:
    """The exit code of a run that returned a result (the CLI's and the record's)."""
    if error is not None:
        return error.exit_code
    if interrupted:
        return exit_codes.EXIT_INTERRUPTED
    if failed:
        return exit_codes.EXIT_API_FAILURES
    return exit_codes.EXIT_SUCCESS


def exception_exit_code(exc: BaseException) -> int:
    """The exit code the CLI gives a run that raised ``exc``."""
    if isinstance(exc, ArtistBioGenError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return exit_codes.EXIT_INTERRUPTED
    return exit_codes.EXIT_UNEXPECTED_ERROR


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _scrub(text: str, secrets: Sequence[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _error_text(exc: BaseException, secrets: Sequence[str | None]) -> str:
    # Our errors are sentences written for the user; anything else may quote a library's
    # message verbatim, so only its type is kept.
    if isinstance(exc, ArtistBioGenError):
        return _scrub(str(exc), secrets)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"unexpected error: {type(exc).__name__}"


class LastRunRecorder:
    """Records one run's start and end in the job's last-run file.

    A context manager entered with the run lock held: leaving it with an exception records
    the end with that exception's exit code, unless ``ended`` was called already.
    """

    def __init__(self, paths: JobPaths, command: str, secrets: Sequence[str | None] = ()) -> None:
        self._paths = paths
        self._command = command
        self._secrets = tuple(secrets)
        self._record: LastRun | None = None
        self._started = 0.0

    def started(self, job_id: str) -> None:
        """The run works on job ``job_id`` from now on."""
        self._started = time.monotonic()
        self._record = LastRun(
            job_id=job_id,
            pid=os.getpid(),
            host=socket.gethostname(),
            command=self._command,
            started_at=_now(),
        )
        self._write(self._record)

    def ended(
        self,
        code: int,
        *,
        stats: ProcessingStats | None = None,
        requests: RequestCounts | None = None,
        error: str | None = None,
    ) -> None:
        """The run ends with exit code ``code`` (recorded once; later calls do nothing)."""
        record, self._record = self._record, None
        if record is None:
            return
        self._write(
            LastRun(
                job_id=record.job_id,
                pid=record.pid,
                host=record.host,
                command=record.command,
                started_at=record.started_at,
                ended_at=_now(),
                elapsed_seconds=round(time.monotonic() - self._started, 3),
                exit_code=code,
                outcome=exit_codes.meaning(code),
                committed=None if stats is None else stats.committed,
                failed=None if stats is None else stats.failed,
                skipped=None if stats is None else stats.skipped,
                requests=None if requests is None else requests.requests,
                cost_usd=None if requests is None else round(requests.spent_usd, 9),
                error=None if error is None else _scrub(error, self._secrets),
            )
        )

    def interrupted_now(self) -> None:
        """A second signal: the process exits at once (an emergency hook)."""
        self.ended(exit_codes.EXIT_INTERRUPTED, error="stopped at once by a second signal")

    def _write(self, record: LastRun) -> None:
        try:
            write_last_run(self._paths, record)
        except OSError as exc:
            logger.warning("could not record the run in %s: %s", self._paths.last_run, exc)

    def __enter__(self) -> LastRunRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.ended(exception_exit_code(exc), error=_error_text(exc, self._secrets))


def record_refused_run(
    output: Path, command: str, exc: BaseException, secrets: Sequence[str | None] = ()
) -> None:
    """Record a run of the job of ``output`` refused before it started (e.g. ``--resume``
    with the database URL missing from cron's environment): started and ended now.

    Only for a job that exists, and only while no other run holds it: the record of a run
    working on the job must not be replaced by one that never ran.
    """
    paths = JobPaths(output)
    try:
        manifest = read_manifest(paths)
        if manifest is None or not paths.output.parent.is_dir():
            return
        with RunLock(paths.run_lock):
            recorder = LastRunRecorder(paths, command, secrets)
            recorder.started(manifest.job_id)
            recorder.ended(exception_exit_code(exc), error=_error_text(exc, secrets))
    except (ArtistBioGenError, OSError) as problem:  # LockedError: another run holds it
        logger.debug("the refused run was not recorded: %s", problem)
