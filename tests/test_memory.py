"""utils/memory.py: the C heap's free pages go back to the kernel, every so many artists."""

from __future__ import annotations

import os

import pytest

from artist_bio_gen.utils.memory import PeriodicRelease, release_free_memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_release_hands_back_the_holes_that_live_chunks_keep_resident() -> None:
    """Free 15 of every 16 heap chunks (4 KiB each, so ``malloc``, not Python's arenas): the
    holes stay resident until ``release_free_memory``, which gives most of them back."""
    if not release_free_memory():
        pytest.skip("no malloc_trim here (not glibc)")
    chunks = [bytes(4096) + bytes([i % 251]) for i in range(16_000)]
    kept = chunks[::16]
    del chunks
    before = _rss_bytes()
    assert release_free_memory()
    after = _rss_bytes()
    assert before - after > 20 * 2**20, (before, after)
    assert len(kept) == 1000


def test_periodic_release_calls_once_every_n_ticks() -> None:
    calls: list[int] = []
    periodic = PeriodicRelease(3, lambda: calls.append(1))
    for _ in range(10):
        periodic.tick()
    assert len(calls) == 3
