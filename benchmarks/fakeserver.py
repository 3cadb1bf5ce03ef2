"""The fake OpenAI server in a process of its own, driven over its stdin/stdout.

The benchmark driver (and the bare loop) must not share a GIL with the server, or the
server's work would be charged to whatever is measured. ``FakeServer`` starts
``python -m benchmarks.fakeserver``, which runs ``tests.support.fake_openai.FakeOpenAI`` and
answers
one JSON line per command line:

* ``stats``: request counts, the arrival time (``time.monotonic()``, comparable across
  processes on Linux) of the first request since the last reset, and concurrency;
* ``reset``: zero the counts; ``latency <seconds>``: set the stand-in API latency;
* ``quit``: stop the server and exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServerStats:
    """What the fake saw since its last reset."""

    total: int
    first_at: float | None
    concurrent_max: int
    in_flight: int


class FakeServer:
    """Handle on a fake OpenAI server process (a context manager)."""

    def __init__(self, latency: float) -> None:
        """Start the server process with ``latency`` seconds per request."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fakeserver", "--latency", str(latency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            text=True,
            bufsize=1,
        )
        hello = self._read()
        self.base_url: str = hello["base_url"]
        self.pid: int = self._proc.pid

    def _read(self) -> dict[str, Any]:
        if self._proc.stdout is None:
            raise RuntimeError("the fake OpenAI server process has no stdout pipe")
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the fake OpenAI server process exited unexpectedly")
        reply: dict[str, Any] = json.loads(line)  # one JSON object per line (_reply)
        return reply

    def _command(self, text: str) -> dict[str, Any]:
        if self._proc.stdin is None:
            raise RuntimeError("the fake OpenAI server process has no stdin pipe")
        self._proc.stdin.write(text + "\n")
        self._proc.stdin.flush()
        return self._read()

    def stats(self) -> ServerStats:
        """Counts since the last reset."""
        return ServerStats(**self._command("stats"))

    def reset(self) -> None:
        """Zero the counts (before a measured run)."""
        self._command("reset")

    def set_latency(self, seconds: float) -> None:
        """Change the stand-in API latency."""
        self._command(f"latency {seconds}")

    def close(self) -> None:
        """Stop the server process."""
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError):
                self._command("quit")
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stats_of(fake: FakeOpenAI) -> dict[str, Any]:
    records = fake.requests
    return {
        "total": fake.total_requests,
        "first_at": records[0].at if records else None,
        "concurrent_max": fake.concurrent_max,
        "in_flight": fake.in_flight,
    }


def _serve(latency: float) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.support.fake_openai import FakeOpenAI

    with FakeOpenAI(latency=latency) as fake:
        _reply({"base_url": fake.base_url})
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "quit":
                _reply({})
                return
            if command == "stats":
                _reply(_stats_of(fake))
            elif command == "reset":
                fake.reset_counts()
                _reply({})
            elif command == "latency":
                fake.latency = float(argument)
                _reply({})
            else:
                _reply({"error": f"unknown command {command!r}"})


def _reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def main() -> None:
    """``python -m benchmarks.fakeserver --latency S``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=0.0)
    _serve(parser.parse_args().latency)


if __name__ == "__main__":
    main()
