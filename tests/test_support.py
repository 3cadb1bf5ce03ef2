"""The in-process CLI runner (tests/support/cli.py): what the converted tests rely on.

``run_in_process`` must report the exit code whether ``main`` returns it or raises
``SystemExit``, capture both streams, and leave logging, signal handlers and the environment
as it found them, so that one test's run cannot change the next test.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import pytest

from artist_bio_gen import exit_codes

from .support import cli
from .support.cli import HardExitError, LeftoverThreadsError, run_in_process


def test_help_exits_0_through_system_exit() -> None:
    """argparse ends ``--help`` with SystemExit(0): code 0, the help on stdout."""
    result = run_in_process(["--help"])
    assert result.code == 0, result.stderr
    assert "examples:" in result.stdout and "exit codes:" in result.stdout
    assert result.stderr == ""


def test_a_usage_error_is_code_2_on_stderr() -> None:
    """argparse ends a bad option with SystemExit(2) and its usage message on stderr."""
    result = run_in_process(["--no-such-option"])
    assert result.code == 2
    assert "unrecognized arguments: --no-such-option" in result.stderr
    assert result.stdout == ""


def test_a_returned_code_and_the_log_are_captured() -> None:
    """A code ``main`` returns (a configuration error: exit 3) with its log line on stderr."""
    result = run_in_process(["--input", "x.csv", "--no-db"], env={"OPENAI_TIMEOUT": "soon"})
    assert result.code == exit_codes.EXIT_CONFIG_ERROR
    assert "OPENAI_TIMEOUT='soon' is not valid" in result.stderr


def test_a_run_leaves_logging_signals_and_environment_as_they_were() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    package = logging.getLogger("artist_bio_gen").level
    sdk = logging.getLogger("openai").level
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    environ = dict(os.environ)

    result = run_in_process(
        ["--input", "x.csv", "--no-db", "--verbose"], env={"OPENAI_TIMEOUT": "soon"}
    )

    assert result.code == exit_codes.EXIT_CONFIG_ERROR  # it did run (and set up logging)
    assert (list(root.handlers), root.level) == (handlers, level)
    assert logging.getLogger("artist_bio_gen").level == package
    assert logging.getLogger("openai").level == sdk
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == (sigint, sigterm)
    assert dict(os.environ) == environ


# The runner's own guards, with a stand-in for ``main`` (the real one never does these).


def test_system_exit_with_a_message_is_code_1_and_the_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``SystemExit("text")`` ends a process with status 1 and the text on stderr."""

    def main(args: list[str]) -> int:
        raise SystemExit("cannot go on")

    monkeypatch.setattr(cli, "main", main)
    result = run_in_process([])
    assert (result.code, result.stderr) == (1, "cannot go on\n")


def test_os_exit_fails_the_test_instead_of_ending_the_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run ending in ``os._exit`` (shutdown grace expired) must be a subprocess test."""
    real = os._exit

    def main(args: list[str]) -> int:
        os._exit(130)
        return 0  # never reached with the real os._exit

    monkeypatch.setattr(cli, "main", main)
    with pytest.raises(HardExitError, match=r"os\._exit\(130\)"):
        run_in_process([])
    assert os._exit is real


def test_a_thread_left_running_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread the run started and did not end would run on into the next test."""
    stop = threading.Event()

    def main(args: list[str]) -> int:
        threading.Thread(target=stop.wait, name="left-behind", daemon=True).start()
        return 0

    monkeypatch.setattr(cli, "main", main)
    monkeypatch.setattr(cli, "THREAD_GRACE_SECONDS", 0.2)
    try:
        with pytest.raises(LeftoverThreadsError, match="left-behind"):
            run_in_process([])
    finally:
        stop.set()
