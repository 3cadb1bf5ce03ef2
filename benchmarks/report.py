"""The verdict table and the details printed after a bench run."""

from __future__ import annotations

from dataclasses import dataclass

from .procstat import MIB
from .scenarios import (
    BareLatency,
    CpuResult,
    LoopFigures,
    MemoryResult,
    RateLimitResult,
    ResumeResult,
    ThroughputResult,
    WindowLoad,
)

# Throughput targets (README, "Performance"): (latency, workers) -> minimum share of the ideal W/L.
THROUGHPUT_TARGETS: dict[tuple[float, int], float] = {
    (0.5, 64): 0.98,
    (1.0, 256): 0.95,
    (4.0, 1024): 0.90,
}
# (latency, workers) -> the most the median artist may take beyond the stand-in's latency
# (the transaction log's durations), in seconds.
BEYOND_LATENCY_TARGETS: dict[tuple[float, int], float] = {
    (0.5, 64): 0.015,
    (1.0, 256): 0.025,
}
RSS_LIMIT_AT_1024 = 300 * MIB
CPU_RATIO_LIMIT = 1.2
RATE_RATIO_MIN = 0.8
RSS_GROWTH_LIMIT = 0.05
RESUME_START_LIMIT = 3.0
DONE_SET_LIMIT = 150 * MIB
# Above this the fake server (one Python process, one GIL) may be what limits the rate.
SERVER_BUSY_CORES = 0.8
MACHINE_BUSY = 0.9
# Cores used by processes other than the tool, the fake and PostgreSQL worth a warning.
OTHER_BUSY_CORES = 0.2


@dataclass(frozen=True)
class Verdict:
    """One line of the table."""

    target: str
    measured: str
    limit: str
    passed: bool
    #: The measurement itself failed (the run crashed), so there is no figure.
    error: bool = False
    #: A reference figure (the machine's ceiling), not a target: never a miss.
    info: bool = False

    @property
    def label(self) -> str:
        """PASS, MISS, ERROR or INFO."""
        if self.info:
            return "INFO"
        return "ERROR" if self.error else "PASS" if self.passed else "MISS"


def _mib(value: float) -> str:
    return f"{value / MIB:.1f} MB"


def throughput_verdicts(result: ThroughputResult) -> list[Verdict]:
    """Target 1 for one (L, W): steady-state share of the ideal (with a note when the
    machine or the stand-in was the limit), the median time per artist beyond the latency,
    plus RSS at W=1024."""
    rates = result.run.rates
    point = (result.latency, result.workers)
    minimum = THROUGHPUT_TARGETS.get(point, 0.0)
    name = f"L={result.latency:g}s W={result.workers}"
    tag = _load_tag(result.run.load)
    verdicts = [
        Verdict(
            f"1  throughput {name}",
            f"{rates.steady / result.ideal:.3f} of ideal "
            f"(overall {rates.overall / result.ideal:.3f})" + (f" [{tag}]" if tag else ""),
            f">= {minimum:.2f}",
            rates.steady / result.ideal >= minimum,
        )
    ]
    beyond_limit = BEYOND_LATENCY_TARGETS.get(point)
    if beyond_limit is not None:
        median = result.run.beyond_latency(0.5)
        verdicts.append(
            Verdict(
                f"1  time per artist beyond L, {name}",
                f"{median * 1e3:.1f} ms median (p90 {result.run.beyond_latency(0.9) * 1e3:.1f} ms)",
                f"<= {beyond_limit * 1e3:.0f} ms",
                median <= beyond_limit,
            )
        )
    if result.workers == 1024:
        peak = result.run.measured.peak_rss
        verdicts.append(
            Verdict(f"1  peak RSS {name}", _mib(peak), "< 300 MB", peak < RSS_LIMIT_AT_1024)
        )
    return verdicts


def ceiling_verdicts(bare: LoopFigures, workers: int) -> list[Verdict]:
    """The bare SDK loop's rate on this machine: a reference row, not a target."""
    return [
        Verdict(
            f"0  bare SDK loop L=0 W={workers} (one process: the machine's ceiling)",
            f"{bare.steady_rate:.0f} requests/s ({bare.cpu_per_artist * 1e3:.2f} ms CPU each; "
            f"fake server {bare.load.server_cores:.2f} cores)",
            "reference",
            True,
            info=True,
        )
    ]


def bare_latency_verdicts(bare: BareLatency) -> list[Verdict]:
    """What a bare SDK loop loses beyond L at a throughput point: a reference row."""
    return [
        Verdict(
            f"1  bare SDK loop beyond L, L={bare.latency:g}s W={bare.workers}",
            f"{bare.beyond_latency(0.5) * 1e3:.1f} ms median "
            f"(p90 {bare.beyond_latency(0.9) * 1e3:.1f} ms)",
            "reference",
            True,
            info=True,
        )
    ]


def bare_latency_details(bare: BareLatency) -> str:
    """The bare loop at a throughput point: rate, time beyond L and load."""
    return (
        f"bare SDK loop L={bare.latency:g}s W={bare.workers}: {bare.count:,} calls, steady "
        f"{bare.steady_rate:.1f}/s; time per call beyond L: median "
        f"{bare.beyond_latency(0.5) * 1e3:.1f} ms, p90 {bare.beyond_latency(0.9) * 1e3:.1f} ms\n"
        f"      process {bare.load.child_cores:.2f} cores, {_load_text(bare.load)}"
    )


def ceiling_details(bare: LoopFigures, workers: int) -> str:
    """The bare loop behind the ceiling row, and what it means for the throughput targets."""
    shares = ", ".join(
        f"L={latency:g}s W={w}: ideal {w / latency:.0f}/s = {w / latency / bare.steady_rate:.0%}"
        for latency, w in THROUGHPUT_TARGETS
    )
    return "\n".join(
        [
            f"ceiling: one process of bare SDK calls, L=0 W={workers}, on this machine and stand-in"
            f" (ideal rates as a share of it: {shares})",
            _loop_line("bare", bare),
        ]
    )


def cpu_verdicts(result: CpuResult) -> list[Verdict]:
    """Target 2: CPU per artist and steady throughput against the bare loop."""
    cpu_ratio = result.cpu_ratio
    rate_ratio = result.tool.steady_rate / result.bare.steady_rate
    name = f"L=0 W={result.workers}"
    spread = (
        f"{min(result.ratios):.2f}-{max(result.ratios):.2f}, " if len(result.ratios) > 1 else ""
    )
    return [
        Verdict(
            f"2  CPU/artist tool vs bare {name}",
            f"{cpu_ratio:.2f}x median of {len(result.ratios)} ({spread}"
            f"{result.tool.cpu_per_artist * 1e3:.2f} vs "
            f"{result.bare.cpu_per_artist * 1e3:.2f} ms)",
            f"<= {CPU_RATIO_LIMIT}x",
            cpu_ratio <= CPU_RATIO_LIMIT,
        ),
        Verdict(
            f"2  throughput tool vs bare {name}",
            f"{rate_ratio:.2f}x ({result.tool.steady_rate:.0f} vs "
            f"{result.bare.steady_rate:.0f} /s)",
            f">= {RATE_RATIO_MIN}x",
            rate_ratio >= RATE_RATIO_MIN,
        ),
    ]


def memory_verdicts(result: MemoryResult) -> list[Verdict]:
    """Target 3: peak RSS of the large job within 5% of the small one's."""
    return [
        Verdict(
            f"3  peak RSS {result.large:,} vs {result.small:,} artists",
            f"{result.growth:+.1%} ({_mib(result.large_rss)} vs {_mib(result.small_rss)})",
            f"<= +{RSS_GROWTH_LIMIT:.0%}",
            result.growth <= RSS_GROWTH_LIMIT,
        )
    ]


def resume_verdicts(result: ResumeResult) -> list[Verdict]:
    """Target 4: start-up time and memory of a resume over many done artists."""
    big, unmarked = result.big, result.big_unmarked
    return [
        Verdict(
            f"4  --resume over {big.done:,} done: start",
            f"{big.time_to_first_request:.2f} s to first request",
            f"<= {RESUME_START_LIMIT:g} s",
            big.time_to_first_request <= RESUME_START_LIMIT,
        ),
        Verdict(
            f"4  the same without an input mark (over {unmarked.done:,} done)",
            f"{unmarked.time_to_first_request:.2f} s to first request",
            "reference",
            True,
            info=True,
        ),
        Verdict(
            f"4  --resume over {big.done:,} done: done set",
            f"{_mib(result.done_set_bytes)} RSS growth",
            "< 150 MB",
            result.done_set_bytes < DONE_SET_LIMIT,
        ),
    ]


def table(verdicts: list[Verdict]) -> str:
    """The verdicts as an aligned text table."""
    header = ("target", "measured", "goal", "verdict")
    rows = [(v.target, v.measured, v.limit, v.label) for v in verdicts]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(header))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# -- details ---------------------------------------------------------------------------------------


def _load_notes(load: WindowLoad) -> list[str]:
    """Warnings when the CPU use in the steady window undermines the figures."""
    notes = []
    if load.server_cores >= SERVER_BUSY_CORES:
        notes.append("the fake server is near one core: it may be the bottleneck")
    if load.machine_busy >= MACHINE_BUSY:
        notes.append(f"machine CPU saturated ({load.machine_busy:.0%} busy)")
    if load.other_cores >= OTHER_BUSY_CORES:
        notes.append(f"other processes used {load.other_cores:.2f} cores: machine not idle")
    return notes


def _load_tag(load: WindowLoad) -> str:
    """The warnings of ``_load_notes`` in a few words, for the table."""
    words = []
    if load.machine_busy >= MACHINE_BUSY:
        words.append(f"machine {load.machine_busy:.0%} busy")
    if load.other_cores >= OTHER_BUSY_CORES:
        words.append(f"others {load.other_cores:.2f} cores")
    if load.server_cores >= SERVER_BUSY_CORES:
        words.append(f"fake {load.server_cores:.2f} cores")
    return ", ".join(words)


def _load_text(load: WindowLoad) -> str:
    """CPU use in the steady window, with a warning when it undermines the figures."""
    notes = _load_notes(load)
    text = (
        f"fake server {load.server_cores:.2f} cores, PostgreSQL {load.postgres_cores:.2f}, "
        f"other {load.other_cores:.2f}, machine {load.machine_busy:.0%} busy"
    )
    return text + (f"  [{'; '.join(notes)}]" if notes else "")


def throughput_details(result: ThroughputResult) -> str:
    """Counts, rates and CPU loads behind a target-1 verdict."""
    run = result.run
    rates, load, window = run.rates, run.load, run.rates.steady_window
    measured = run.measured
    cpu_ms = measured.child.cpu_between(window.start, window.end) / max(rates.steady_completed, 1)
    first = measured.first_request
    # None when the fake server saw no request at all.
    first_text = "never" if first is None else f"{first - measured.spawned:.2f} s after start"
    return (
        f"L={result.latency:g}s W={result.workers}: {result.count:,} artists, ideal "
        f"{result.ideal:.0f}/s, overall {rates.overall:.1f}/s, steady {rates.steady:.1f}/s over "
        f"{window.seconds:.0f} s; first request {first_text}; "
        f"server saw {measured.server_stats.concurrent_max} concurrent"
        f"{f'; {run.failed} artists failed' if run.failed else ''}\n"
        f"    tool ({measured.processes} process{'es' if measured.processes > 1 else ''}) "
        f"peak RSS {_mib(measured.peak_rss)}; steady-state CPU: tool "
        f"{load.child_cores:.2f} cores ({cpu_ms * 1e3:.2f} ms/artist), {_load_text(load)}\n"
        f"    time per artist beyond L (transaction log): median "
        f"{run.beyond_latency(0.5) * 1e3:.1f} ms, p90 {run.beyond_latency(0.9) * 1e3:.1f} ms, "
        f"p99 {run.beyond_latency(0.99) * 1e3:.1f} ms"
    )


def _loop_line(name: str, figures: LoopFigures) -> str:
    load = figures.load
    return (
        f"    {name} ({figures.runs} run{'s' if figures.runs > 1 else ''}): steady "
        f"{figures.steady_rate:.0f}/s (overall {figures.overall_rate:.0f}/s), "
        f"CPU {figures.cpu_per_artist * 1e3:.2f} ms/artist steady "
        f"({figures.total_cpu_per_artist * 1e3:.2f} ms incl. start-up), peak RSS "
        f"{_mib(figures.peak_rss)}\n      process {load.child_cores:.2f} cores, {_load_text(load)}"
    )


def cpu_details(result: CpuResult) -> str:
    """Both sides of the L=0 comparison."""
    together = result.tool.cpu_per_artist / result.bare.cpu_per_artist
    return "\n".join(
        [
            f"L=0 W={result.workers}, {result.count:,} artists each:",
            _loop_line("tool", result.tool),
            _loop_line("bare", result.bare),
            "    CPU per artist, tool over bare, round by round: "
            + ", ".join(f"{ratio:.2f}x" for ratio in result.ratios)
            + f" (all rounds together: {together:.2f}x)",
        ]
    )


def memory_details(result: MemoryResult) -> str:
    """Peak RSS of both jobs."""
    return (
        f"L={result.latency:g}s W={result.workers}: peak RSS {_mib(result.small_rss)} for "
        f"{result.small:,} artists, {_mib(result.large_rss)} for {result.large:,} "
        f"({result.growth:+.1%}); large job sampled RSS {_mib(result.large_rss_half)} at half of "
        f"the commits, {_mib(result.large_rss_last_commit)} at the last commit"
    )


#: The rate-limit target: steady throughput at least this share of the enforced limit.
RATE_LIMIT_SHARE = 0.9


def rate_limit_verdicts(result: RateLimitResult) -> list[Verdict]:
    """Steady throughput against an enforced limit."""
    name = f"{result.rpm} RPM enforced, W={result.workers}"
    share = result.share_of_limit
    return [
        Verdict(
            f"5  throughput at {name}",
            f"{share:.3f} of the limit ({result.rate_limited_share:.1%} 429s)",
            f">= {RATE_LIMIT_SHARE:.2f}",
            share >= RATE_LIMIT_SHARE,
        )
    ]


def rate_limit_details(result: RateLimitResult) -> str:
    """Counts, rates and 429s behind the rate-limit verdict."""
    run = result.run
    rates, stats = run.rates, run.measured.server_stats
    return (
        f"{result.rpm} RPM enforced (1 s window), L={result.latency:g}s W={result.workers}: "
        f"{result.count:,} artists, limit {result.limit_per_second:.0f}/s, steady "
        f"{rates.steady:.1f}/s over {rates.steady_window.seconds:.0f} s, overall "
        f"{rates.overall:.1f}/s; the fake saw {stats.total:,} requests, "
        f"{stats.rate_limited:,} answered 429"
        f"{f'; {run.failed} artists failed' if run.failed else ''}"
    )


def resume_details(result: ResumeResult) -> str:
    """Both resumes, and how the big job was built."""
    lines = []
    for label, run, base in (
        ("without an input mark", result.big_unmarked, result.baseline_unmarked),
        ("from the input mark the first wrote", result.big, result.baseline),
    ):
        lines.append(
            f"--resume {label}, over {run.done:,} done + {run.new} new: first request after "
            f"{run.time_to_first_request:.2f} s, whole run {run.wall:.2f} s, peak RSS "
            f"{_mib(run.peak_rss)}; over {base.done:,} done: first request after "
            f"{base.time_to_first_request:.2f} s, peak RSS {_mib(base.peak_rss)}"
        )
    lines.append(f"done-ids query plan: {result.plan}; job built in {result.setup_seconds:.0f} s")
    return "\n    ".join(lines)


NOTES = """\
notes: steady = completions from (first request + max(2L, 10% of the run)) to (last completion -
max(L, 10%)) divided by that span; overall = all completions / (last completion - first request).
Target 1 is judged on the steady rate. CPU figures are the measured process's own user+system
time (/proc/<pid>/stat, steady window); peak RSS is its ru_maxrss (wait4). The fake server,
PostgreSQL and the bare loop run in processes of their own; "other" is the rest of the
machine's busy time (other users' processes, the kernel, this driver). A throughput row notes
[in brackets] when the machine was saturated, other processes took CPU, or the fake server
was near one core: then a miss may be the machine's or the stand-in's, not the tool's. Time
beyond L = each committed artist's duration_ms in the transaction log (worker start to JSONL
line on disk) minus L; the bare loop's INFO row beside it is what the SDK and the machine
alone add to L at the same point. The L=0 INFO row is the bare SDK loop's rate in one
process on this machine: no process of the tool, which does more per artist, goes faster."""
