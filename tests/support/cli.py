"""Running the CLI: in the test process (fast) or as a real process (signals, kills, rlimits).

``run_in_process(args)`` calls ``artist_bio_gen.cli.main.main(args)`` and captures what it
prints; it costs no interpreter start and no imports, so a test pays only for the run itself.
It reads the same ``os.environ`` and working directory a subprocess would inherit, so the
two ways of running are interchangeable for anything that does not need a process of its
own: a SIGKILL, a signal, a resource limit, or a run that ends with ``os._exit``.

``Job`` (the ``make_job`` fixture of conftest.py builds them) bundles a test's artists, input
CSV, database and both ways of running the CLI on them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from artist_bio_gen.cli.main import main
from artist_bio_gen.models import ArtistData

from .database import TestDatabase
from .fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
TEST_API_KEY = "sk-test-0123456789abcdef-not-a-real-key"

#: Environment overrides for one run: a value sets a variable, None removes it.
EnvOverrides = Mapping[str, str | None]


@dataclass(frozen=True)
class CliResult:
    """How one run of the CLI ended: its exit code and everything it printed."""

    code: int
    stdout: str
    stderr: str


def summary_table(stdout: str, *, strict: bool = False) -> dict[str, tuple[str, str]]:
    """label -> (value, note) of the summary table that ``stdout`` ends with (a run's stdout
    holds nothing else, ``--print-bios`` aside). Lines of another shape (a batch job's
    batches) are left out, or with ``strict`` fail the test."""
    assert "Summary: job " in stdout, f"no summary on stdout:\n{stdout}"
    lines = ("Summary: job " + stdout.rsplit("Summary: job ", 1)[1]).splitlines()
    table: dict[str, tuple[str, str]] = {}
    for line in lines[1:]:
        match = re.fullmatch(r"  (\S+(?: \S+)*) +(\S+(?: \S+)?)(?:   (.*))?", line)
        assert match or not strict, f"not a row of the summary table: {line!r}"
        if match is None:
            continue
        table[match.group(1)] = (match.group(2), match.group(3) or "")
    return table


def summary_figure(result: CliResult, label: str) -> str:
    """The value of row ``label`` of the run's summary table (e.g. ``"1,200"``)."""
    return summary_table(result.stdout)[label][0]


# -- in the test process --------------------------------------------------------------------------


class HardExitError(AssertionError):
    """The run called ``os._exit``: as a process it would have ended there, and in-process it
    would have ended the test session. Such a test must run the CLI as a subprocess."""


class _HardExit(BaseException):
    # A BaseException: the CLI's own ``except Exception`` must not turn it into exit 10.
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def run_in_process(args: Sequence[str], *, env: EnvOverrides | None = None) -> CliResult:
    """Run ``main(args)`` in this process, with ``env`` applied to ``os.environ`` for the run.

    ``main`` may return its exit code or raise ``SystemExit`` (argparse does, for ``--help``
    and usage errors): both give ``CliResult.code``. Logging, SIGINT/SIGTERM handlers and
    ``os.environ`` are as before the run afterwards, so the next test starts clean, and the
    run must not leave a thread behind (``LeftoverThreadsError``).
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    with (
        _no_threads_left(args),
        pytest.MonkeyPatch.context() as patch,
        logging_restored(),
        _signal_handlers_restored(),
        _hard_exit_refused(),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        _apply_env(patch, env or {})
        try:
            code = _exit_code(main(list(args)), stderr)
        except SystemExit as exc:
            code = _exit_code(exc.code, stderr)
        except _HardExit as exc:
            raise HardExitError(
                f"main({list(args)!r}) called os._exit({exc.code}); run it as a subprocess.\n"
                f"stderr:\n{stderr.getvalue()}"
            ) from None
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


class LeftoverThreadsError(AssertionError):
    """Threads the run started were still running well after it returned: in a process
    they would end with it; here they would run on into the next test."""


#: How long threads started by a run may take to end after ``main`` returned.
THREAD_GRACE_SECONDS = 5.0


def _serves_requests(thread: threading.Thread) -> bool:
    """A handler thread of a server in this process (the fake OpenAI's, not the run's)."""
    target = getattr(thread, "_target", None)
    return isinstance(getattr(target, "__self__", None), socketserver.BaseServer)


@contextlib.contextmanager
def _no_threads_left(args: Sequence[str]) -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE_SECONDS
    while True:
        left = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not _serves_requests(t)
        ]
        if not left:
            return
        if time.monotonic() > deadline:
            names = sorted(t.name for t in left)
            raise LeftoverThreadsError(f"main({list(args)!r}) left threads running: {names}")
        time.sleep(0.02)


def _apply_env(patch: pytest.MonkeyPatch, env: EnvOverrides) -> None:
    for key, value in env.items():
        if value is None:
            patch.delenv(key, raising=False)
        else:
            patch.setenv(key, value)


def _exit_code(value: object, stderr: io.StringIO) -> int:
    """The process exit status for ``return value`` / ``SystemExit(value)``, as CPython
    computes it (None is 0; any other object is printed and is 1)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=stderr)
    return 1


@contextlib.contextmanager
def _hard_exit_refused() -> Iterator[None]:
    """``os._exit`` raises instead of ending the test process (see ``HardExitError``)."""

    def refuse(code: int) -> None:
        raise _HardExit(code)

    real = os._exit
    os._exit = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        os._exit = real


@contextlib.contextmanager
def _signal_handlers_restored() -> Iterator[None]:
    """SIGINT/SIGTERM handlers as before, whatever the run installed."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@dataclass
class _LoggerState:
    level: int
    propagate: bool
    disabled: bool
    handlers: list[logging.Handler] = field(default_factory=list)

    @classmethod
    def of(cls, logger: logging.Logger) -> _LoggerState:
        return cls(logger.level, logger.propagate, logger.disabled, list(logger.handlers))

    def restore(self, logger: logging.Logger) -> None:
        for handler in [h for h in logger.handlers if h not in self.handlers]:
            logger.removeHandler(handler)
            handler.close()
        for handler in [h for h in self.handlers if h not in logger.handlers]:
            logger.addHandler(handler)
        logger.setLevel(self.level)
        logger.propagate = self.propagate
        logger.disabled = self.disabled


def _loggers() -> dict[str, logging.Logger]:
    manager = logging.Logger.manager
    found = {"": logging.getLogger()}
    for name, logger in list(manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            found[name] = logger
    return found


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Every logger's level, handlers and propagation as before the run.

    ``main`` puts a handler on the root logger that writes to the ``sys.stderr`` of the
    moment (here: the run's capture buffer) and sets the levels of the package's and the
    HTTP stack's loggers; none of that may outlive the run.
    """
    saved = {name: _LoggerState.of(logger) for name, logger in _loggers().items()}
    fresh = _LoggerState(logging.NOTSET, True, False)
    try:
        yield
    finally:
        for name, logger in _loggers().items():
            saved.get(name, fresh).restore(logger)


# -- as a process ---------------------------------------------------------------------------------


def cli_env(**overrides: str | None) -> dict[str, str]:
    """The current (test-isolated) environment plus ``overrides`` (None removes a key)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_process(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> CliResult:
    """Run ``python -m artist_bio_gen ARGS`` to completion (``env``: the whole environment,
    by default ``cli_env()``). A process killed by signal N has ``code`` -N."""
    result = subprocess.run(
        [sys.executable, "-m", "artist_bio_gen", *args],
        env=dict(env) if env is not None else cli_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
    return CliResult(result.returncode, result.stdout, result.stderr)


def start_process(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``python -m artist_bio_gen ARGS`` in the background (stdout/stderr to pipes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "artist_bio_gen", *args],
        env=dict(env) if env is not None else cli_env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- a job ----------------------------------------------------------------------------------------


@dataclass
class Job:
    """A test's job: its directory (the working directory), artists, input CSV and database,
    with the fake OpenAI server configured, and the CLI to run on them.

    ``DATABASE_URL`` points at ``database`` (when there is one) and ``OPENAI_BASE_URL`` at the
    fake, for in-process runs and subprocesses alike; ``env=`` changes them for one run.
    """

    dir: Path
    artists: list[ArtistData]
    csv: Path
    database: TestDatabase | None
    fake: FakeOpenAI

    @property
    def out(self) -> Path:
        """The default output, ``out.jsonl`` in the working directory."""
        return self.dir / "out.jsonl"

    def input_args(self, *extra: str) -> list[str]:
        """``--input <the CSV>`` followed by ``extra``."""
        return ["--input", str(self.csv), *extra]

    def run(self, *args: str, env: EnvOverrides | None = None) -> CliResult:
        """The CLI with ``args``, in the test process."""
        return run_in_process(args, env=env)

    def run_process(
        self, *args: str, env: EnvOverrides | None = None, timeout: float = 300, **kwargs
    ) -> CliResult:
        """The CLI with ``args`` as a subprocess, to completion."""
        return run_process(args, env=cli_env(**(env or {})), timeout=timeout, **kwargs)

    def start_process(self, *args: str, env: EnvOverrides | None = None) -> subprocess.Popen:
        """The CLI with ``args`` as a subprocess in the background."""
        return start_process(args, env=cli_env(**(env or {})))


class MakeJob(Protocol):
    """The ``make_job`` fixture: ``make_job(count, seed=..., ...)`` builds a ``Job``."""

    def __call__(
        self,
        count: int = 0,
        *,
        seed: int = 1,
        database: bool = True,
        table: str = "artists",
        bio: str | None = None,
        seeded: int | None = None,
    ) -> Job: ...
