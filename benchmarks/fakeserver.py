"""The fake OpenAI server in a process of its own, driven over its stdin/stdout.

The benchmark driver (and the bare loop) must not share a GIL with the server, or the
server's work would be charged to whatever is measured. ``FakeServer`` starts
``python -m benchmarks.fakeserver``, which runs ``tests.support.fake_openai.FakeOpenAI`` and
answers
one JSON line per command line:

* ``stats``: request counts, the arrival time (``time.monotonic()``, comparable across
  processes on Linux) of the first request since the last reset, concurrency, and the 429
  ``rate_limit_exceeded`` replies (``rate_limited``; by cause: ``limited_requests`` and
  ``limited_tokens`` from the enforced limits, ``limited_rule`` from ``rate_limit`` rules);
* ``reset``: zero the counts (limits and rules stay); ``latency <seconds>``: set the
  stand-in API latency;
* ``enforce rpm=600 tpm=90000 window=1 retry_after=seconds|ms|both|mixed|off
  reset=go|seconds|bare headers=truthful|missing|-1|0|garbage``: enforce OpenAI-style rate
  limits (``FakeOpenAI.enforce``; every key optional, one of rpm/tpm needed; defaults
  window=1, retry_after=seconds, reset=go, headers=truthful); ``enforce off``: stop;
* ``rule <fault> name=<artist> times=N every=N fraction=F retry_after=S delay=S``: add a
  rule (``FakeOpenAI.add_rule``; keys optional, no spaces in values), e.g.
  ``rule rate_limit fraction=0.3`` for a 30% 429 storm; ``clear_rules``: drop them all;
  ``seed N``: restart the draws of ``fraction`` rules from seed N;
* ``quit``: stop the server and exit.

A command that fails answers ``{"error": "..."}``; the ``FakeServer`` methods raise it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
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
    rate_limited: int = 0
    limited_requests: int = 0
    limited_tokens: int = 0
    limited_rule: int = 0


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

    def _checked(self, text: str) -> None:
        reply = self._command(text)
        if "error" in reply:
            raise RuntimeError(f"fake server refused {text!r}: {reply['error']}")

    def enforce(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        window: float = 1.0,
        retry_after: str | None = "seconds",
        reset: str = "go",
        headers: str = "truthful",
    ) -> None:
        """Enforce OpenAI-style rate limits (``FakeOpenAI.enforce``); both None: stop."""
        if rpm is None and tpm is None:
            self._checked("enforce off")
            return
        words = [f"{key}={value}" for key, value in (("rpm", rpm), ("tpm", tpm)) if value]
        words += [f"window={window}", f"retry_after={retry_after or 'off'}"]
        words += [f"reset={reset}", f"headers={headers}"]
        self._checked("enforce " + " ".join(words))

    def add_rule(self, fault: str, **options: str | float) -> None:
        """Add a rule (``FakeOpenAI.add_rule``), e.g. ``add_rule("rate_limit", fraction=0.3)``."""
        self._checked(" ".join(["rule", fault, *(f"{k}={v}" for k, v in options.items())]))

    def clear_rules(self) -> None:
        """Drop every rule."""
        self._checked("clear_rules")

    def seed(self, seed: int) -> None:
        """Restart the draws of ``fraction`` rules from ``seed``."""
        self._checked(f"seed {seed}")

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


def _stats_of(fake: FakeOpenAI, _argument: str = "") -> dict[str, Any]:
    records = fake.requests
    limited = fake.rate_limited_by
    return {
        "total": fake.total_requests,
        "first_at": records[0].at if records else None,
        "concurrent_max": fake.concurrent_max,
        "in_flight": fake.in_flight,
        "rate_limited": sum(limited.values()),
        "limited_requests": limited["requests"],
        "limited_tokens": limited["tokens"],
        "limited_rule": limited["rule"],
    }


def _pairs(argument: str, allowed: set[str]) -> dict[str, str]:
    """``key=value`` words of ``argument``; ValueError for a word that is not one of those."""
    pairs: dict[str, str] = {}
    for word in argument.split():
        key, sep, value = word.partition("=")
        if not sep or key not in allowed:
            raise ValueError(
                f"unexpected {word!r}; expected key=value, key one of {sorted(allowed)}"
            )
        pairs[key] = value
    return pairs


def _number(pairs: dict[str, str], key: str, kind: Callable[[str], Any]) -> Any:
    return kind(pairs[key]) if key in pairs else None


def _enforce(fake: FakeOpenAI, argument: str) -> dict[str, Any]:
    if argument.strip() == "off":
        fake.enforce(None)
        return {}
    pairs = _pairs(argument, {"rpm", "tpm", "window", "retry_after", "reset", "headers"})
    retry_after = pairs.get("retry_after", "seconds")
    fake.enforce(
        _number(pairs, "rpm", int),
        _number(pairs, "tpm", int),
        window=float(pairs.get("window", "1")),
        retry_after=None if retry_after == "off" else retry_after,
        reset_format=pairs.get("reset", "go"),
        headers=pairs.get("headers", "truthful"),
    )
    return {}


def _rule(fake: FakeOpenAI, argument: str) -> dict[str, Any]:
    fault, _, rest = argument.strip().partition(" ")
    pairs = _pairs(rest, {"name", "times", "every", "fraction", "retry_after", "delay"})
    fake.add_rule(
        fault,
        name=pairs.get("name"),
        times=_number(pairs, "times", int),
        every=_number(pairs, "every", int),
        fraction=_number(pairs, "fraction", float),
        retry_after=_number(pairs, "retry_after", float),
        delay=_number(pairs, "delay", float),
    )
    return {}


def _set_latency(fake: FakeOpenAI, argument: str) -> dict[str, Any]:
    fake.latency = float(argument)
    return {}


def _reset_counts(fake: FakeOpenAI, _argument: str) -> dict[str, Any]:
    fake.reset_counts()
    return {}


def _clear_rules(fake: FakeOpenAI, _argument: str) -> dict[str, Any]:
    fake.clear_rules()
    return {}


def _seed(fake: FakeOpenAI, argument: str) -> dict[str, Any]:
    fake.reseed(int(argument))
    return {}


_COMMANDS: dict[str, Callable[[FakeOpenAI, str], dict[str, Any]]] = {
    "stats": _stats_of,
    "reset": _reset_counts,
    "latency": _set_latency,
    "enforce": _enforce,
    "rule": _rule,
    "clear_rules": _clear_rules,
    "seed": _seed,
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
            handler = _COMMANDS.get(command)
            if handler is None:
                _reply({"error": f"unknown command {command!r}"})
                continue
            try:
                _reply(handler(fake, argument))
            except ValueError as exc:  # a bad argument: say so, keep serving
                _reply({"error": f"{command}: {exc}"})


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
