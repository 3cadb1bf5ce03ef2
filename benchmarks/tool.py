"""Running a measured subprocess (the tool, or the bare loop) next to the fake server.

The child is reaped with ``os.wait4``, which gives its own CPU time and peak RSS (not the
driver's, not the server's); while it runs a ``Sampler`` records the CPU and RSS of the child
and of the server process, so per-window figures can be computed afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .fakeserver import FakeServer, ServerStats
from .procstat import ExitUsage, Sampler, Series, wait_child

ROOT = Path(__file__).resolve().parent.parent
PROMPT_ID = "pmpt_bench"

# Settings of the developer's environment that must not reach a measured run.
_SCRUBBED_PREFIXES = ("OPENAI_", "DATABASE_URL", "DB_", "QUOTA_", "JSONL_", "MAX_WORKERS")


@dataclass(frozen=True)
class Measured:
    """One measured child process."""

    usage: ExitUsage
    #: ``time.time()`` / ``time.monotonic()`` just before the child was started.
    spawned: float
    spawned_mono: float
    ended: float
    sampler: Sampler
    server_stats: ServerStats
    stderr: str

    @property
    def child(self) -> Series:
        """Samples of the measured process and its worker processes together."""
        return self.sampler.series["child"]

    @property
    def peak_rss(self) -> int:
        """Peak RSS of the whole run: the measured process's (``wait4``) plus each of its
        worker processes' (``VmHWM``). Peaks at different moments are added: an upper
        bound."""
        return self.usage.peak_rss + self.sampler.descendants_peak_rss("child")

    @property
    def processes(self) -> int:
        """Processes of the measured run (1 + its worker processes)."""
        return self.sampler.tree_processes("child")

    @property
    def server(self) -> Series:
        """Samples of the fake server process."""
        return self.sampler.series["server"]

    @property
    def postgres(self) -> Series:
        """Accumulated CPU of all PostgreSQL processes."""
        return self.sampler.series["postgres"]

    @property
    def driver(self) -> Series:
        """Samples of this (the driver's) process."""
        return self.sampler.series["driver"]

    @property
    def first_request(self) -> float | None:
        """Wall time at which the first request reached the fake server."""
        first = self.server_stats.first_at
        return None if first is None else self.spawned + (first - self.spawned_mono)


def child_env(base_url: str, database_url: str | None) -> dict[str, str]:
    """The environment of a measured child: no user settings, the fake API, the bench DB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.update(OPENAI_API_KEY="dummy", OPENAI_BASE_URL=base_url, PYTHONPATH=str(ROOT))
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


def run_measured(
    argv: list[str], env: dict[str, str], workdir: Path, server: FakeServer
) -> Measured:
    """Run ``argv`` in ``workdir`` to completion while sampling it and the server."""
    server.reset()
    with open(workdir / "stderr.log", "wb") as err, Sampler() as sampler:
        sampler.watch("server", server.pid)
        sampler.watch("driver", os.getpid())
        sampler.watch_group("postgres", b"postgres")
        spawned, spawned_mono = time.time(), time.monotonic()
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=err, stderr=err)
        # The tool and its worker processes (``--processes``), as one.
        sampler.watch_tree("child", proc.pid)
        usage = wait_child(proc.pid)
        proc.returncode = usage.returncode  # reaped by wait4; keep Popen from waiting again
        ended = time.time()
    return Measured(
        usage=usage,
        spawned=spawned,
        spawned_mono=spawned_mono,
        ended=ended,
        sampler=sampler,
        server_stats=server.stats(),
        stderr=(workdir / "stderr.log").read_text(encoding="utf-8", errors="replace"),
    )


def tool_argv(*args: str) -> list[str]:
    """``python -m artist_bio_gen ARGS``."""
    return [sys.executable, "-m", "artist_bio_gen", *args]


def job_args(input_csv: Path, output: Path, workers: int) -> list[str]:
    """The arguments of a new job over ``input_csv``."""
    return [
        "--input",
        str(input_csv),
        "--output",
        str(output),
        "--prompt-id",
        PROMPT_ID,
        "--max-workers",
        str(workers),
    ]


class RunFailed(RuntimeError):
    """A measured child exited with an unexpected code."""


def check_exit(measured: Measured, what: str, expected: int = 0) -> None:
    """Raise ``RunFailed`` with the end of the child's stderr unless it exited as expected."""
    if measured.usage.returncode != expected:
        tail = "\n".join(measured.stderr.splitlines()[-15:])
        raise RunFailed(f"{what} exited with {measured.usage.returncode}:\n{tail}")
