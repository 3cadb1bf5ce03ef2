"""utils/memory.py and entry.py: the C heap gives its free pages back, glibc runs without its
per-thread caches, and the cycle collector walks many threads' live objects less often."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from artist_bio_gen.entry import tuned_malloc_environment
from artist_bio_gen.utils.memory import (
    YOUNG_COLLECTION_THRESHOLD,
    PeriodicRelease,
    collect_young_objects_less_often,
    release_free_memory,
)

from .support.cli import MakeJob
from .support.fake_openai import FakeOpenAI


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


# -- the command runs with glibc's per-thread caches off (entry.py) -----------------------------


def test_the_tuned_environment_adds_the_tunable_and_keeps_the_rest() -> None:
    environ = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}
    tuned = tuned_malloc_environment(environ)
    assert tuned == {
        "PATH": "/bin",
        "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072:glibc.malloc.tcache_count=0",
    }
    assert tuned_malloc_environment({}) == {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}
    assert environ["GLIBC_TUNABLES"] == "glibc.malloc.trim_threshold=131072"  # not changed


@pytest.mark.parametrize(
    "tunables",
    ["glibc.malloc.tcache_count=0", "glibc.malloc.trim_threshold=1:glibc.malloc.tcache_count=7"],
)
def test_a_process_already_tuned_or_tuned_by_the_user_is_left_alone(tunables: str) -> None:
    """No second re-execution, and a user's own value stands."""
    assert tuned_malloc_environment({"GLIBC_TUNABLES": tunables}) is None


def test_importing_the_package_loads_neither_the_sdk_nor_the_driver() -> None:
    """The command re-executes itself after importing the package: were the SDK and the
    driver loaded by then, every start would pay for them twice. The public names still
    load on first use."""
    script = (
        "import sys, artist_bio_gen as p\n"
        "heavy = [m for m in ('openai', 'psycopg', p.__name__ + '.cli.main') if m in sys.modules]\n"
        "names = sorted(p.__all__) == sorted(p._PUBLIC)\n"
        "names = names and all(getattr(p, n) is not None for n in p.__all__)\n"
        "print(heavy, p.main.__module__, names)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.stdout.split() == ["[]", "artist_bio_gen.cli.main", "True"], result


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, "glibc.malloc.tcache_count=0"), ("glibc.malloc.tcache_count=3", None)],
)
def test_the_command_runs_with_the_caches_off_in_its_own_pid(
    make_job: MakeJob, fake_openai: FakeOpenAI, given: str | None, expected: str | None
) -> None:
    """While a run is under way its process (the pid that was started: the re-execution
    keeps it) has the tunable in its environment; a user's own value is kept as given."""
    if not os.confstr("CS_GNU_LIBC_VERSION"):
        pytest.skip("not glibc")
    job = make_job(3)
    fake_openai.hold()
    try:
        proc = job.start_process(
            *job.input_args("--prompt-id", "pmpt_m"), env={"GLIBC_TUNABLES": given}
        )
        assert fake_openai.wait_for_requests(1, timeout=60)
        tunables = _environ_of(proc.pid).get("GLIBC_TUNABLES")
    finally:
        fake_openai.release()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert tunables == (expected or given)


# -- the cycle collector under many threads ---------------------------------------------------


@pytest.fixture
def thresholds() -> Iterator[None]:
    """The collector's thresholds as they were, whatever the test set."""
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


@pytest.mark.usefixtures("thresholds")
@pytest.mark.parametrize(
    ("before", "after"),
    [
        ((700, 10, 10), (YOUNG_COLLECTION_THRESHOLD, 10, 10)),
        ((700, 20, 5), (YOUNG_COLLECTION_THRESHOLD, 20, 5)),
        ((50_000, 10, 10), (50_000, 10, 10)),  # a higher one is kept
        ((0, 10, 10), (0, 10, 10)),  # collection turned off stays off
    ],
)
def test_young_objects_are_collected_less_often_never_more(
    before: tuple[int, int, int], after: tuple[int, int, int]
) -> None:
    gc.set_threshold(*before)
    collect_young_objects_less_often()
    assert gc.get_threshold() == after


@pytest.mark.usefixtures("thresholds")
def test_a_pool_of_worker_threads_raises_the_threshold() -> None:
    from artist_bio_gen.core.processor import Pipeline, RunControl, thread_pool

    gc.set_threshold(700, 10, 10)
    # Below 8 workers the pipeline comes back as given (no API slots): an empty one does.
    _, executor = thread_pool(Pipeline.__new__(Pipeline), 4, RunControl())
    executor.shutdown()
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
