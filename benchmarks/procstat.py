"""Measuring other processes: CPU and RSS from ``/proc``, peak RSS from ``wait4``.

A background ``Sampler`` reads ``/proc/<pid>/stat`` of every watched process (and
``/proc/stat`` for the whole machine) a few times per second, so a scenario can compute the
CPU a process spent during a window of the run, not just in total (imports and start-up
checks would otherwise weigh on a per-artist figure).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


@dataclass(frozen=True)
class ProcSample:
    """One reading of a process: wall time (``time.time()``), CPU seconds, resident bytes."""

    at: float
    cpu: float
    rss: int


@dataclass(frozen=True)
class MachineSample:
    """One reading of ``/proc/stat``: wall time, busy and total jiffies over all CPUs."""

    at: float
    busy: int
    total: int


def read_process(pid: int) -> tuple[float, int] | None:
    """(user+system CPU seconds, resident bytes) of ``pid`` (all its threads), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":  # a zombie has released its memory; its counters are final
        return None
    utime, stime, rss_pages = int(fields[11]), int(fields[12]), int(fields[21])
    return (utime + stime) / CLOCK_TICKS, rss_pages * PAGE_SIZE


def descendants(pid: int) -> list[int]:
    """The pids of every process below ``pid`` (its children, theirs, ...), from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children", "rb") as handle:
                kids = [int(field) for field in handle.read().split()]
        except OSError:
            continue
        found += kids
        todo += kids
    return found


def read_peak_rss(pid: int) -> int | None:
    """The highest resident size of ``pid`` so far (``VmHWM``), in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def read_group(comm: bytes) -> dict[int, float]:
    """CPU seconds of every process whose command name is ``comm`` (e.g. ``b"postgres"``)."""
    found: dict[int, float] = {}
    needle = b"(" + comm + b")"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                raw = handle.read()
        except OSError:
            continue  # it exited meanwhile
        if needle in raw:
            fields = raw[raw.rindex(b")") + 2 :].split()
            found[int(entry)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return found


def read_machine() -> tuple[int, int]:
    """(busy, total) jiffies summed over all CPUs since boot."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


@dataclass
class Series:
    """Samples of one process, oldest first."""

    samples: list[ProcSample] = field(default_factory=list)

    def cpu_at(self, when: float) -> float:
        """CPU seconds at ``when``, interpolated linearly between the nearest samples."""
        return _interpolate([(s.at, s.cpu) for s in self.samples], when)

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds spent between two wall times."""
        return self.cpu_at(end) - self.cpu_at(start)

    @property
    def peak_rss(self) -> int:
        """Highest resident size seen (polling can miss a short spike; prefer ``wait4``)."""
        return max((s.rss for s in self.samples), default=0)


def _interpolate(points: list[tuple[float, float]], when: float) -> float:
    if not points:
        return 0.0
    times = [t for t, _ in points]
    index = bisect.bisect_left(times, when)
    if index == 0:
        return points[0][1]
    if index >= len(points):
        return points[-1][1]
    (t0, v0), (t1, v1) = points[index - 1], points[index]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (when - t0) / (t1 - t0)


@dataclass
class _Group:
    """Processes sampled together by command name; CPU accumulates across their lifetimes."""

    comm: bytes
    last: dict[int, float] = field(default_factory=dict)
    total: float = 0.0
    started: bool = False

    def advance(self) -> float:
        """Read the group again; returns its CPU seconds accumulated since the first read."""
        current = read_group(self.comm)
        if self.started:
            # A process that appeared since the last read is counted from zero: it is a new
            # backend (a short-lived one may be missed entirely, which only underestimates).
            self.total += sum(
                max(cpu - self.last.get(pid, 0.0), 0.0) for pid, cpu in current.items()
            )
        self.last, self.started = current, True
        return self.total


@dataclass
class _Tree:
    """A process and its descendants sampled as one: CPU accumulates over every process
    seen (one that exited keeps its last reading), RSS is what the live ones hold now."""

    pid: int
    cpu: dict[int, float] = field(default_factory=dict)
    #: Highest ``VmHWM`` seen per descendant (the root's comes from ``wait4``).
    peaks: dict[int, int] = field(default_factory=dict)

    def read(self) -> tuple[float, int] | None:
        root = read_process(self.pid)
        if root is None:
            return None
        self.cpu[self.pid] = root[0]
        rss = root[1]
        for pid in descendants(self.pid):
            reading = read_process(pid)
            if reading is None:
                continue
            self.cpu[pid] = reading[0]
            rss += reading[1]
            peak = read_peak_rss(pid)
            if peak is not None:
                self.peaks[pid] = max(peak, self.peaks.get(pid, 0))
        return sum(self.cpu.values()), rss


class Sampler:
    """Samples watched processes and the machine every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        """Create a stopped sampler; ``start()`` it (or use it as a context manager)."""
        self._interval = interval
        self._pids: dict[str, int] = {}
        self._groups: dict[str, _Group] = {}
        self._trees: dict[str, _Tree] = {}
        self.series: dict[str, Series] = {}
        self.machine: list[MachineSample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        """Start sampling ``pid`` under ``name`` (replaces an earlier process of that name)."""
        with self._lock:
            self._pids[name] = pid
            self.series[name] = Series()
        self._sample_once()

    def watch_tree(self, name: str, pid: int) -> None:
        """Sample ``pid`` and every process it starts as one series ``name``."""
        with self._lock:
            self._trees[name] = _Tree(pid)
            self.series[name] = Series()
        self._sample_once()

    def descendants_peak_rss(self, name: str) -> int:
        """The sum of the peak RSS of every process below the tree ``name``'s root."""
        tree = self._trees.get(name)
        return 0 if tree is None else sum(tree.peaks.values())

    def tree_processes(self, name: str) -> int:
        """How many processes the tree ``name`` had (its root and every descendant seen)."""
        tree = self._trees.get(name)
        return 0 if tree is None else 1 + len(tree.peaks)

    def watch_group(self, name: str, comm: bytes) -> None:
        """Sample every process named ``comm`` as one series ``name`` (e.g. PostgreSQL)."""
        with self._lock:
            self._groups[name] = _Group(comm)
            self.series[name] = Series()
        self._sample_once()

    def start(self) -> Sampler:
        """Start the sampling thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take a last sample and stop the thread."""
        self._sample_once()
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample_once()

    def _sample_once(self) -> None:
        now = time.time()
        with self._lock:
            for name, pid in self._pids.items():
                reading = read_process(pid)
                if reading is not None:
                    self.series[name].samples.append(ProcSample(now, *reading))
            for name, tree in self._trees.items():
                reading = tree.read()
                if reading is not None:
                    self.series[name].samples.append(ProcSample(now, *reading))
            for name, group in self._groups.items():
                self.series[name].samples.append(ProcSample(now, group.advance(), 0))
            self.machine.append(MachineSample(now, *read_machine()))

    def machine_busy(self, start: float, end: float) -> float:
        """Fraction of all CPUs busy between two wall times (0..1)."""
        busy = _interpolate([(m.at, m.busy) for m in self.machine], end) - _interpolate(
            [(m.at, m.busy) for m in self.machine], start
        )
        total = _interpolate([(m.at, m.total) for m in self.machine], end) - _interpolate(
            [(m.at, m.total) for m in self.machine], start
        )
        return busy / total if total > 0 else 0.0


@dataclass(frozen=True)
class ExitUsage:
    """What ``wait4`` reports for a child: exit code, CPU seconds and peak RSS in bytes."""

    returncode: int
    cpu: float
    peak_rss: int


def wait_child(pid: int) -> ExitUsage:
    """Reap ``pid`` with ``os.wait4`` and return its exit code and resource usage."""
    _, status, usage = os.wait4(pid, 0)
    # Linux reports ru_maxrss in KiB.
    return ExitUsage(
        returncode=os.waitstatus_to_exitcode(status),
        cpu=usage.ru_utime + usage.ru_stime,
        peak_rss=usage.ru_maxrss * 1024,
    )
