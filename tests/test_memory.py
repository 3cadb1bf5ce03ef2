"""utils/memory.py: the C heap's free pages go back to the kernel, every so many artists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


_HOLES_SCRIPT = """
import os, sys
from artist_bio_gen.utils.memory import keep_large_buffers_off_heap

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

if sys.argv[1] == "off-heap" and not keep_large_buffers_off_heap():
    print("unsupported")
    raise SystemExit
# 64 KiB buffers (the HTTP stack's receive size), each followed by a smaller heap chunk
# (20 kB: too big for the leftovers of start-up) that stays alive: on the heap, the
# freed buffers are holes below live chunks.
big, small = [], []
for i in range(300):
    big.append(b"b" * (64 * 1024))  # one allocation each, nothing freed in between
    small.append(b"s" * 20_000)
before = rss()
del big
print(before - rss())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.parametrize("mode", ["off-heap", "default"])
def test_large_buffers_off_the_heap_go_back_to_the_kernel_when_freed(mode: str) -> None:
    """With ``keep_large_buffers_off_heap`` 300 freed 64 KiB buffers leave no resident
    holes (their pages go back at once); with glibc's default they stay resident below the
    live chunks. A fresh process each: the setting lasts for the rest of a process."""
    result = subprocess.run(
        [sys.executable, "-c", _HOLES_SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if result.stdout.strip() == "unsupported":
        pytest.skip("no mallopt here (not glibc)")
    handed_back = int(result.stdout)
    if mode == "off-heap":
        assert handed_back > 10 * 2**20, handed_back
    else:
        assert handed_back < 2 * 2**20, handed_back
