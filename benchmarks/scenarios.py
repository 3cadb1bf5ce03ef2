"""One function per performance target; each returns the figures the report needs."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path

from tests.support.data import write_csv

from . import bench_artists
from .database import BenchDatabases, done_ids_plan, seed_artists, settle
from .fakeserver import FakeServer
from .procstat import Series
from .resume import ResumeJob, add_new_artists, build_resume_job
from .timeline import Rates, Window, commit_durations, quantile, rates, transaction_times
from .tool import (
    Measured,
    check_exit,
    child_env,
    job_args,
    run_measured,
    tool_argv,
)


@dataclass
class Bench:
    """What every scenario shares: the database server and a scratch directory."""

    databases: BenchDatabases
    scratch: Path
    keep: bool = False
    _runs: int = 0

    @contextmanager
    def workdir(self, name: str) -> Iterator[Path]:
        """A fresh directory for one run (removed afterwards unless ``keep``)."""
        self._runs += 1
        path = Path(tempfile.mkdtemp(prefix=f"{self._runs:02d}-{name}-", dir=self.scratch))
        try:
            yield path
        finally:
            if not self.keep:
                shutil.rmtree(path, ignore_errors=True)


# -- shared measurements ----------------------------------------------------------------------


@dataclass(frozen=True)
class WindowLoad:
    """Average CPU use inside a window, in cores (``machine_busy`` is a share of all CPUs)."""

    child_cores: float
    server_cores: float
    postgres_cores: float
    #: Whatever else ran: other users' processes, the kernel, this driver.
    other_cores: float
    machine_busy: float


def window_load(measured: Measured, window: Window) -> WindowLoad:
    """CPU use of the child, the fake server, PostgreSQL and everything else in ``window``."""
    seconds = max(window.seconds, 1e-9)

    def cores(series: Series) -> float:
        return series.cpu_between(window.start, window.end) / seconds

    child, server, postgres = (
        cores(measured.child),
        cores(measured.server),
        cores(measured.postgres),
    )
    busy = measured.sampler.machine_busy(window.start, window.end)
    other = busy * (os.cpu_count() or 1) - child - server - postgres
    return WindowLoad(child, server, postgres, max(other, 0.0), busy)


@dataclass(frozen=True)
class ToolRun:
    """A finished job run: the measured process and its commit timeline."""

    measured: Measured
    rates: Rates
    commits: list[float]
    #: Artists the tool gave up on (e.g. connection errors the fake server caused).
    failed: int
    load: WindowLoad
    #: Seconds each committed artist took in the tool (transaction log), sorted.
    durations: list[float]
    latency: float

    def beyond_latency(self, share: float = 0.5) -> float:
        """The ``share`` quantile of the time per artist beyond the stand-in's latency:
        what the tool itself (commit, fsync, log, waits for the GIL) adds to an answer."""
        return quantile(self.durations, share) - self.latency


# A few failed artists (the stand-in server dropping a connection under load) do not spoil a
# throughput measurement; more than this share does.
MAX_FAILED_SHARE = 0.01


def run_job(
    bench: Bench, server: FakeServer, latency: float, workers: int, count: int, seed: int
) -> ToolRun:
    """A new job over ``count`` fresh artists with ``workers``; the server answers after
    ``latency`` seconds."""
    server.set_latency(latency)
    artists = list(bench_artists(count, seed))
    with bench.databases.fresh() as url, bench.workdir(f"job-{count}") as workdir:
        seed_artists(url, artists)
        csv_path = write_csv(workdir / "input.csv", artists)
        argv = tool_argv(*job_args(csv_path, workdir / "out.jsonl", workers))
        measured = run_measured(argv, child_env(server.base_url, url), workdir, server)
        events = transaction_times(workdir / "out.transactions.jsonl")
        commits, failed = events.get("commit", []), len(events.get("failure", []))
        durations = commit_durations(workdir / "out.transactions.jsonl")
        tolerated = failed <= MAX_FAILED_SHARE * count and measured.usage.returncode == 4
        check_exit(
            measured, f"the tool ({count:,} artists, {workers} workers)", 4 if tolerated else 0
        )
    if len(commits) + failed != count:
        raise RuntimeError(f"{count} artists but {len(commits)} commits and {failed} failures")
    start = measured.first_request or measured.spawned
    run_rates = rates(commits, start, latency)
    load = window_load(measured, run_rates.steady_window)
    return ToolRun(measured, run_rates, commits, failed, load, durations, latency)


# -- target 1: throughput against the ideal --------------------------------------------------------


@dataclass(frozen=True)
class ThroughputResult:
    """Target 1 for one (latency, workers) pair."""

    latency: float
    workers: int
    count: int
    run: ToolRun

    @property
    def ideal(self) -> float:
        """W / L artists per second."""
        return self.workers / self.latency


def throughput(
    bench: Bench, server: FakeServer, latency: float, workers: int, seconds: float
) -> ThroughputResult:
    """Run enough artists for ``seconds`` of ideal processing at W/L artists per second."""
    count = int(seconds * workers / latency)
    run = run_job(bench, server, latency, workers, count, seed=int(latency * 1000) + workers)
    return ThroughputResult(latency, workers, count, run)


# -- target 2: CPU per artist and throughput at L=0 against a bare SDK loop ----------------------


@dataclass(frozen=True)
class LoopFigures:
    """CPU and throughput of one side of the L=0 comparison (summed over its runs)."""

    runs: int
    #: Artists per second inside the steady windows (completions / seconds, all runs).
    steady_rate: float
    overall_rate: float
    #: CPU seconds of the process per artist inside the steady windows.
    cpu_per_artist: float
    #: CPU seconds of the whole process (start-up included) per artist.
    total_cpu_per_artist: float
    load: WindowLoad
    peak_rss: int


@dataclass(frozen=True)
class _Sample:
    """One measured run of either side."""

    measured: Measured
    rates: Rates
    steady_cpu: float
    count: int


def _sample(
    measured: Measured, completions: list[float], count: int, latency: float = 0.0
) -> _Sample:
    start = measured.first_request or measured.spawned
    run_rates = rates(completions, start, latency)
    window = run_rates.steady_window
    return _Sample(measured, run_rates, measured.child.cpu_between(window.start, window.end), count)


def _combine(samples: list[_Sample]) -> LoopFigures:
    """Totals over the runs of one side (a ratio of sums, so every artist weighs the same)."""
    steady_seconds = sum(s.rates.steady_window.seconds for s in samples)
    steady_done = sum(s.rates.steady_completed for s in samples)
    overall_seconds = sum(s.rates.completed / s.rates.overall for s in samples if s.rates.overall)
    loads = [window_load(s.measured, s.rates.steady_window) for s in samples]
    return LoopFigures(
        runs=len(samples),
        steady_rate=steady_done / steady_seconds,
        overall_rate=sum(s.rates.completed for s in samples) / overall_seconds,
        cpu_per_artist=sum(s.steady_cpu for s in samples) / max(steady_done, 1),
        total_cpu_per_artist=sum(s.measured.usage.cpu for s in samples)
        / sum(s.count for s in samples),
        load=_mean_load(loads),
        peak_rss=max(s.measured.peak_rss for s in samples),
    )


def _mean_load(loads: list[WindowLoad]) -> WindowLoad:
    columns = zip(*map(astuple, loads), strict=True)
    return WindowLoad(*(sum(values) / len(values) for values in columns))


@dataclass(frozen=True)
class CpuResult:
    """Target 2."""

    workers: int
    count: int
    tool: LoopFigures
    bare: LoopFigures
    #: Each round's CPU per artist, tool over bare (the two runs of a round are next to
    #: each other, so the machine's state is about the same for both).
    ratios: tuple[float, ...] = ()

    @property
    def cpu_ratio(self) -> float:
        """The median of the rounds' ratios: one run caught in a slow (or fast) moment of
        the machine moves it less than it moves a ratio of the sums."""
        return statistics.median(self.ratios)


def run_bare_loop(bench: Bench, server: FakeServer, workers: int, count: int) -> _Sample:
    """The bare SDK loop (``benchmarks.bareloop``) at L=0."""
    return _bare_loop(bench, server, workers, count, 0.0)[0]


def _bare_loop(
    bench: Bench, server: FakeServer, workers: int, count: int, latency: float
) -> tuple[_Sample, list[float]]:
    """The bare SDK loop with the stand-in answering after ``latency``: its sample and the
    sorted durations of its calls."""
    server.set_latency(latency)
    with bench.workdir("bare") as workdir:
        out = workdir / "times.json"
        argv = [sys.executable, "-m", "benchmarks.bareloop", "--workers", str(workers)]
        argv += ["--count", str(count), "--seed", "7", "--out", str(out)]
        measured = run_measured(argv, child_env(server.base_url, None), workdir, server)
        check_exit(measured, "the bare loop")
        result = json.loads(out.read_text())
    if result["failures"] > MAX_FAILED_SHARE * count:
        raise RuntimeError(f"the bare loop had {result['failures']} failed calls")
    durations = [float(d) for d in result["durations"]]
    return _sample(measured, result["completions"], count, latency), durations


@dataclass(frozen=True)
class BareLatency:
    """The bare loop at a throughput point: what the SDK and the machine alone add to L."""

    latency: float
    workers: int
    count: int
    durations: list[float]
    steady_rate: float
    load: WindowLoad

    def beyond_latency(self, share: float = 0.5) -> float:
        """The ``share`` quantile of a call's duration beyond the stand-in's latency."""
        return quantile(self.durations, share) - self.latency


def bare_at_latency(
    bench: Bench, server: FakeServer, latency: float, workers: int, seconds: float
) -> BareLatency:
    """The bare loop for ``seconds`` of ideal processing at ``latency`` with ``workers``."""
    count = int(seconds * workers / latency)
    sample, durations = _bare_loop(bench, server, workers, count, latency)
    load = window_load(sample.measured, sample.rates.steady_window)
    return BareLatency(latency, workers, count, durations, sample.rates.steady, load)


def bare_ceiling(bench: Bench, server: FakeServer, workers: int, count: int) -> LoopFigures:
    """What one process of bare SDK calls does on this machine against this stand-in at
    L=0: the most requests per second one process (one GIL) can make here. A throughput
    target whose ideal W/L comes near it cannot be met by one process of the tool, whose
    CPU per artist is larger still."""
    return _combine([run_bare_loop(bench, server, workers, count)])


def cpu_at_zero_latency(
    bench: Bench, server: FakeServer, workers: int, count: int, rounds: int = 1
) -> CpuResult:
    """The tool and the bare loop with the same workers and artists on the same server.

    Each round runs both, one after the other; the order alternates (bare, tool, tool, bare,
    ...) so a slow drift of the machine's state weighs on both sides alike.
    """
    bare: list[_Sample] = []
    tool: list[_Sample] = []
    for index in range(2 * rounds):
        if (index % 4) in (0, 3):
            bare.append(run_bare_loop(bench, server, workers, count))
        else:
            run = run_job(bench, server, 0.0, workers, count, seed=7 + index)
            tool.append(_sample(run.measured, run.commits, count))
    ratios = tuple(
        _combine([t]).cpu_per_artist / _combine([b]).cpu_per_artist
        for t, b in zip(tool, bare, strict=True)
    )
    return CpuResult(workers, count, _combine(tool), _combine(bare), ratios)


# -- target 3: memory does not grow with the input -----------------------------------------------


@dataclass(frozen=True)
class MemoryResult:
    """Target 3: peak RSS of a small and a large job with the same settings."""

    latency: float
    workers: int
    small: int
    large: int
    small_rss: int
    large_rss: int
    #: Sampled RSS of the large job when half of its artists, then all, were committed
    #: (what grows after the last commit belongs to the final reconciliation).
    large_rss_half: int
    large_rss_last_commit: int

    @property
    def growth(self) -> float:
        """Relative growth of the peak RSS from the small to the large job."""
        return self.large_rss / self.small_rss - 1.0


def memory_flat(
    bench: Bench, server: FakeServer, latency: float, workers: int, small: int, large: int
) -> MemoryResult:
    """Peak RSS (``wait4``) of a ``small`` and a ``large`` job, otherwise identical."""
    small_run = run_job(bench, server, latency, workers, small, seed=11)
    large_run = run_job(bench, server, latency, workers, large, seed=12)
    return MemoryResult(
        latency,
        workers,
        small,
        large,
        small_run.measured.peak_rss,
        large_run.measured.peak_rss,
        _rss_at(large_run, large // 2),
        _rss_at(large_run, large),
    )


def _rss_at(run: ToolRun, committed: int) -> int:
    """Highest sampled RSS of the tool up to the time of its ``committed``-th commit."""
    when = run.commits[committed - 1]
    return max((s.rss for s in run.measured.child.samples if s.at <= when), default=0)


# -- target 4: resume over a million done artists ------------------------------------------------


@dataclass(frozen=True)
class ResumeRun:
    """One measured ``--resume``."""

    done: int
    new: int
    #: From process start until the first request reached the fake server.
    time_to_first_request: float
    wall: float
    peak_rss: int


@dataclass(frozen=True)
class ResumeResult:
    """Target 4: the big resume, and a small one as the memory baseline.

    Each job is resumed twice: first without an input mark (the resume reads past every
    done line), then, with a few artists appended to its input, from the mark the first
    resume wrote when it ended.
    """

    big: ResumeRun
    big_unmarked: ResumeRun
    baseline: ResumeRun
    baseline_unmarked: ResumeRun
    plan: str
    setup_seconds: float

    @property
    def done_set_bytes(self) -> int:
        """Peak RSS growth attributable to the done artists (the larger of the two
        comparisons: both resumes hold the whole done set)."""
        return max(
            self.big.peak_rss - self.baseline.peak_rss,
            self.big_unmarked.peak_rss - self.baseline_unmarked.peak_rss,
        )


def _measure_resume(
    bench: Bench, server: FakeServer, job: ResumeJob, url: str, workdir: Path, workers: int
) -> ResumeRun:
    argv = tool_argv("--resume", "--output", str(job.output), "--max-workers", str(workers))
    measured = run_measured(argv, child_env(server.base_url, url), workdir, server)
    check_exit(measured, f"the resume over {job.done:,} done artists")
    if measured.first_request is None or measured.server_stats.total != job.new:
        raise RuntimeError(
            f"the resume sent {measured.server_stats.total} requests, expected {job.new}"
        )
    return ResumeRun(
        done=job.done,
        new=job.new,
        time_to_first_request=measured.first_request - measured.spawned,
        wall=measured.ended - measured.spawned,
        peak_rss=measured.peak_rss,
    )


def _resume_once(
    bench: Bench, server: FakeServer, done: int, new: int, workers: int
) -> tuple[ResumeRun, ResumeRun, str, float]:
    """(from the mark, without a mark, the done ids' query plan, seconds to build the job)."""
    server.set_latency(0.0)
    with bench.databases.fresh() as url, bench.workdir(f"resume-{done}") as workdir:
        began = time.monotonic()
        job = build_resume_job(workdir, url, server, done, new)
        settle(url)
        setup = time.monotonic() - began
        unmarked = _measure_resume(bench, server, job, url, workdir, workers)
        job = add_new_artists(url, job, seed=done + new)
        settle(url)
        marked = _measure_resume(bench, server, job, url, workdir, workers)
        plan = done_ids_plan(url, job.job_id)
    return marked, unmarked, plan, setup


def resume_start(
    bench: Bench, server: FakeServer, done: int, baseline_done: int, new: int, workers: int
) -> ResumeResult:
    """``--resume`` over ``done`` done artists, and over ``baseline_done`` for comparison."""
    baseline, baseline_unmarked, _, _ = _resume_once(bench, server, baseline_done, new, workers)
    big, big_unmarked, plan, setup = _resume_once(bench, server, done, new, workers)
    return ResumeResult(big, big_unmarked, baseline, baseline_unmarked, plan, setup)


__all__ = [
    "Bench",
    "CpuResult",
    "MemoryResult",
    "ResumeResult",
    "ThroughputResult",
    "bare_ceiling",
    "cpu_at_zero_latency",
    "memory_flat",
    "resume_start",
    "throughput",
]


# -- rate limits: steady throughput against an enforced limit ------------------------------------


@dataclass(frozen=True)
class RateLimitResult:
    """The tool against a fake that enforces ``rpm`` requests per minute."""

    rpm: int
    latency: float
    workers: int
    count: int
    run: ToolRun

    @property
    def limit_per_second(self) -> float:
        """What the enforced limit lets through per second."""
        return self.rpm / 60

    @property
    def share_of_limit(self) -> float:
        """Steady throughput as a fraction of the limit."""
        return self.run.rates.steady / self.limit_per_second

    @property
    def rate_limited_share(self) -> float:
        """429s among all requests the fake saw."""
        stats = self.run.measured.server_stats
        return stats.rate_limited / max(stats.total, 1)


def rate_limited_throughput(
    bench: Bench, server: FakeServer, rpm: int, latency: float, workers: int, seconds: float
) -> RateLimitResult:
    """``seconds`` worth of artists at the limit's pace, with more workers than it allows:
    the limiter, not the workers, must set the pace."""
    server.enforce(rpm=rpm, window=1.0, retry_after="seconds")
    count = int(seconds * rpm / 60)
    run = run_job(bench, server, latency, workers, count, seed=rpm + workers)
    return RateLimitResult(rpm, latency, workers, count, run)
