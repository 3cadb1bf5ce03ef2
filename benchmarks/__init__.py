"""Benchmarks for the performance targets of DESIGN.md ("Performance targets").

Run with ``make bench`` (or ``python -m benchmarks.run --help``). Every target is measured as a
ratio within one run (the tool against the ideal, or against a bare SDK loop on the same fake
server), never as an absolute wall-clock figure, and nothing here is part of the test suite.

Modules:

* ``run``: the command line; ``report``: the table, the verdicts and the details;
* ``scenarios``: one function per target; ``resume``: a job with a million done artists;
* ``tool``: the tool as a measured subprocess (CPU and RSS sampled from ``/proc``);
* ``bareloop``: the bare SDK loop the L=0 target compares against (its own process);
* ``fakeserver``: ``tests.support.fake_openai.FakeOpenAI`` in its own process, driven over a pipe;
* ``procstat``: ``/proc`` sampling and ``wait4`` resource usage;
* ``timeline``: overall and steady-state rates from completion timestamps;
* ``data`` and ``database``: artists, CSV files, bench databases, a million done artists.
"""
