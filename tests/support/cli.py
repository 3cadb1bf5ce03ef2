"""Running the CLI as a subprocess: ``python -m artist_bio_gen ARGS`` with the test's
environment (``cli_env``), to completion (``run_process``) or in the background
(``start_process``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_API_KEY = "sk-test-0123456789abcdef-not-a-real-key"


@dataclass(frozen=True)
class CliResult:
    """How one run of the CLI ended: its exit code and everything it printed."""

    code: int
    stdout: str
    stderr: str


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
