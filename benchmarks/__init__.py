"""Benchmarks for the performance targets (the "goal" column of README's Performance table).

Run with ``make bench`` (or ``python -m benchmarks.run --help``). Every target is measured as a
ratio within one run (the tool against the ideal, or against a bare SDK loop on the same fake
server), never as an absolute wall-clock figure, and nothing here is part of the test suite.

Modules:

* ``run``: the command line; ``report``: the table, the verdicts and the details;
* ``scenarios``: one function per target; ``resume``: a job with a million done artists;
* ``tool``: the tool as a measured subprocess (CPU and RSS sampled from ``/proc``);
* ``bareloop``: the bare SDK loop the L=0 target compares against (its own process), also
  run first by the throughput scenario as this machine's ceiling for one process;
* ``fakeserver``: ``tests.support.fake_openai.FakeOpenAI`` in its own process, driven over a pipe;
* ``procstat``: ``/proc`` sampling and ``wait4`` resource usage;
* ``timeline``: overall and steady-state rates from completion timestamps; the time per
  artist beyond the latency from the transaction log's durations;
* ``database``: bench databases (``tests.support.database``), bulk loading, a million done
  artists.

Artists and CSV files come from ``tests.support.data`` (``bench_artists`` below), the
user's tables and the template databases from ``tests.support.database`` and the fake server
from ``tests.support.fake_openai``: the benchmarks keep no copies of the suite's helpers.
"""

from __future__ import annotations

from collections.abc import Iterator

from tests.support.data import Artist, iter_artists


def bench_artists(count: int, seed: int, prefix: str = "Artist") -> Iterator[Artist]:
    """``count`` artists, lazily, named with their seed and 7 digits ("Artist 4242-0000042
    Ünïcode"): artists of different seeds never share a name, and a million names all have
    the same length."""
    return iter_artists(count, seed, prefix, digits=7, seed_in_name=True)
