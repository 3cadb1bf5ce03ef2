"""Running the artists: a bounded window of worker threads, one artist per task.

Each worker does, in this order: (optionally) check the existing bio, call the API, commit
the bio and its ledger row in one transaction, append the JSONL line rendered from what was
committed (the last two through the process's ``Committer``, which does them for the bios
of several workers at once). The main thread only feeds the window and collects ``Outcome``
objects, so memory stays flat: at most ``2 x workers`` artists are submitted at once and no
response outlives its worker.

Failure handling:

* one artist's failure is an ``Outcome`` with a code of ``failure_codes`` (recorded in the
  failures file when the code counts towards the retry cap), never an exception;
* a failure whose code stops the run (bad key, unknown prompt, no quota, database gone for
  good), and a JSONL line that cannot be written (disk full), stop the run: nothing new is
  submitted and queued artists return ``not_started`` without calling the API;
* the first artist runs alone (a canary), so a bad key or prompt costs one request, not one
  per worker;
* a streak of identical failures (``failure_streak_limit``) is treated as systemic too.

Batch mode commits the answers of a batch's output file through the same window and the
same per-artist steps (``process_answers_concurrent``, ``process_answer``): the API call is
replaced by the answer read from the file; commit, append, failures file and transaction log
are the same code.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Generic, TypeVar

import psycopg

from ..api.call import ApiCallError, CallOptions, NotSent, call_openai_api
from ..api.client import ClientPool
from ..api.request import PromptSettings
from ..database.connection import first_line
from ..errors import ArtistBioGenError, DatabaseUnavailableError, OutputWriteError, RunAbortedError
from ..failure_codes import counts_towards_cap, run_error, stops_run
from ..models import ArtistData, CommittedBio, GeneratedBio, Outcome, TokenUsage
from ..utils.logging import TransactionLog
from ..utils.memory import (
    PeriodicRelease,
    collect_young_objects_less_often,
    keep_large_buffers_off_heap,
)
from .committer import Committer, Settled
from .failures import FailureLog
from .jsonl import JsonlWriter, encode_line
from .ledger import Ledger

if TYPE_CHECKING:
    import openai

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pipeline:
    """Everything a worker needs; shared read-only by all worker threads."""

    settings: PromptSettings
    #: A ``ClientPool`` (each worker thread uses its own pinned client) or one SDK client.
    client: ClientPool | openai.OpenAI
    ledger: Ledger
    writer: JsonlWriter
    failures: FailureLog
    txlog: TransactionLog
    #: ``--skip-existing``: look the user's row up first; no API call for a row with a bio.
    skip_existing: bool = False
    api_key: str | None = field(default=None, repr=False)
    #: Retries, service tier, prices and the run's pacer (rate limits, budgets).
    call: CallOptions = field(default_factory=CallOptions)
    #: Failed attempts already recorded per artist in earlier runs (for the attempt number).
    previous_attempts: Mapping[str, int] = field(default_factory=dict)
    #: The API requests allowed at once (``--max-workers``) when the pool has more threads
    #: than that (see ``ApiSlots``); None: every thread may call the API.
    api_slots: ApiSlots | None = None
    #: Commits and appends for all the workers, in groups (``core/committer.py``); None:
    #: each worker commits and appends its own bio.
    committer: Committer | None = None


def commit_threads(workers: int) -> int:
    """Threads beyond ``workers`` (the API requests at once) that a run's pool has.

    A worker gives its API slot back as soon as its answer is in, and commits and appends
    without one: meanwhile another thread's request for the next artist is already out.
    So the API sees ``workers`` requests at once all the time, instead of fewer by the
    artists being committed (about 1% of the time at L=0.5 s: 4-5 ms of commit and fsync
    per artist). An eighth is far more than the commits ever need at once; below 8 workers
    there is none, so a small run does one artist per worker from the request to the line.
    """
    return workers // 8


def pool_threads(workers: int) -> int:
    """The threads of a pool that makes ``workers`` API requests at once."""
    return workers + commit_threads(workers)


class ApiSlots:
    """At most ``count`` API requests at once, among more threads (``commit_threads``).

    The slots are tokens in a ``queue.SimpleQueue``: taking and giving one back is C code
    that waits with the GIL released. (A ``threading.Semaphore`` waits through a Python
    ``Condition``, a new lock per wait; at L=0 a thread waits for a slot at nearly every
    artist.) A waiting thread does not poll: ``stop`` puts a stop token in, which every
    waiter sees and passes on.
    """

    def __init__(self, count: int) -> None:
        self._free: queue.SimpleQueue[object] = queue.SimpleQueue()
        for _ in range(max(1, count)):
            self._free.put(_SLOT_TOKEN)

    def take(self, control: RunControl) -> _Slot | None:
        """Wait for a slot; None when the run stops (before or meanwhile)."""
        if control.stopping:
            return None
        if self._free.get() is _STOP_TOKEN:
            self._free.put(_STOP_TOKEN)  # for the next waiter
            return None
        return _Slot(self._free)

    def stop(self) -> None:
        """Wake every waiting thread with no slot (safe in a signal handler)."""
        self._free.put(_STOP_TOKEN)


_SLOT_TOKEN = object()
_STOP_TOKEN = object()


class _Slot:
    """One thread's API slot; ``release`` may be called more than once."""

    def __init__(self, free: queue.SimpleQueue[object]) -> None:
        self._free: queue.SimpleQueue[object] | None = free

    def release(self) -> None:
        free, self._free = self._free, None
        if free is not None:
            free.put(_SLOT_TOKEN)


def thread_pool(
    pipeline: Pipeline, workers: int, control: RunControl
) -> tuple[Pipeline, ThreadPoolExecutor]:
    """The threads (``pool_threads(workers)``) of a pool making ``workers`` API requests at
    once, and ``pipeline`` with the API slots they share (whose waiters ``control`` wakes
    when the run stops; none when the pool has no extra threads)."""
    # Many threads reading responses: keep their receive buffers out of the heap's arenas,
    # and do not walk their live objects 40 times a second looking for garbage.
    keep_large_buffers_off_heap()
    collect_young_objects_less_often()
    executor = ThreadPoolExecutor(pool_threads(workers), thread_name_prefix="artist")
    if commit_threads(workers) == 0:
        return pipeline, executor
    slots = ApiSlots(workers)
    control.on_stop(slots.stop)
    return replace(pipeline, api_slots=slots), executor


class RunControl:
    """Stop flags shared by the main thread, the workers and the signal handlers."""

    def __init__(self, on_error: Callable[[ArtistBioGenError], None] | None = None) -> None:
        """``on_error`` receives the run's first systemic error instead of the log (a worker
        process hands it to the run's process, which logs it once)."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._on_error = on_error
        self.error: ArtistBioGenError | None = None
        self.interrupted = False
        self._emergency_hooks: list[Callable[[], None]] = []
        self._stop_hooks: list[Callable[[], None]] = []

    def on_emergency(self, hook: Callable[[], None]) -> None:
        """Register something to do before an immediate exit (e.g. freeze the writer)."""
        self._emergency_hooks.append(hook)

    def on_stop(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when the run stops (at once if it has): it must be quick, safe in
        a signal handler and harmless when called twice."""
        self._stop_hooks.append(hook)
        if self.stopping:
            hook()

    def _stopped(self) -> None:
        # No lock: interrupt() runs in a signal handler, which must not wait for one.
        for hook in list(self._stop_hooks):
            hook()

    def run_emergency_hooks(self) -> None:
        """Run the hooks (each one at most ~5 s); the caller exits right after."""
        for hook in self._emergency_hooks:
            try:
                hook()
            except Exception:  # exiting anyway: a failing hook must not block it
                logger.debug("emergency hook failed", exc_info=True)

    @property
    def stopping(self) -> bool:
        """True once nothing new may start."""
        return self._stop.is_set()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when the run is told to stop meanwhile."""
        self._stop.wait(max(0.0, seconds))

    def abort(self, error: ArtistBioGenError) -> None:
        """Stop the run because of a systemic error (the first one is kept)."""
        with self._lock:
            first = self.error is None
            if first:
                self.error = error
        if first:
            if self._on_error is None:
                logger.error("%s", error)
            else:
                self._on_error(error)
        self._stop.set()
        self._stopped()

    def interrupt(self) -> None:
        """Stop the run because a signal asked for it."""
        self.interrupted = True
        self._stop.set()
        self._stopped()


def process_artist(pipeline: Pipeline, control: RunControl, artist: ArtistData) -> Outcome:
    """Run one artist through API, commit and append; never raises for the artist's faults.

    With ``pipeline.api_slots`` the thread first waits for an API slot (not counted in the
    artist's duration) and gives it back once the answer is in, before the commit.
    """
    slot: _Slot | None = None
    if pipeline.api_slots is not None:
        slot = pipeline.api_slots.take(control)
        if slot is None:
            return Outcome(artist.artist_id, artist.name, "not_started")
    try:
        return _settle(
            pipeline, control, artist, lambda: _run_steps(pipeline, control, artist, slot)
        )
    finally:
        if slot is not None:
            slot.release()  # given back already unless the artist never reached the API


@dataclass(frozen=True)
class BatchAnswer:
    """What a batch returned for one artist: a bio to commit, or a failure (``code``,
    ``reason``) that counts towards the artist's cap."""

    artist: ArtistData
    bio: GeneratedBio | None = None
    code: str | None = None
    reason: str | None = None
    #: The batch it came from (written with a failure, so a second collection of the same
    #: batch does not count it twice).
    batch_id: str | None = None


def process_answer(pipeline: Pipeline, control: RunControl, answer: BatchAnswer) -> Outcome:
    """Commit and append one batch answer (or record its failure) exactly as
    ``process_artist`` does after its API call; never raises for the artist's faults."""

    def steps() -> Outcome:
        if answer.bio is None:
            return _failed(answer.artist, answer.code or "bad_response", answer.reason or "")
        return _commit_and_append(pipeline, control, answer.bio, only_new=True)

    return _settle(pipeline, control, answer.artist, steps, batch_id=answer.batch_id)


def _settle(
    pipeline: Pipeline,
    control: RunControl,
    artist: ArtistData,
    steps: Callable[[], Outcome],
    batch_id: str | None = None,
) -> Outcome:
    """Run ``steps`` for one artist; time it, record a failure that counts, log it."""
    if control.stopping:
        return Outcome(artist.artist_id, artist.name, "not_started")
    started = time.monotonic()
    try:
        outcome = steps()
    except Exception as exc:
        # A bug or an unforeseen library error must cost this artist, not the run.
        logger.error(
            "unexpected error for artist %s: %s: %s", artist.artist_id, type(exc).__name__, exc
        )
        logger.debug("traceback", exc_info=True)
        outcome = _failed(artist, "internal_error", f"{type(exc).__name__}: {exc}")
    outcome = replace(outcome, duration=time.monotonic() - started)
    attempt = pipeline.previous_attempts.get(artist.artist_id, 0) + 1
    if outcome.status == "failed" and counts_towards_cap(outcome.code):
        pipeline.failures.record(
            artist.artist_id,
            artist.name,
            outcome.code or "",
            outcome.reason or "",
            attempt,
            batch_id=batch_id,
        )
    pipeline.txlog.outcome(outcome, attempt)
    return outcome


def _run_steps(
    pipeline: Pipeline, control: RunControl, artist: ArtistData, slot: _Slot | None = None
) -> Outcome:
    if pipeline.skip_existing:
        skipped = _skip_if_has_bio(pipeline.ledger, artist)
        if skipped is not None:
            return skipped
    try:
        try:
            bio = call_openai_api(
                pipeline.client, artist, pipeline.settings, pipeline.api_key, pipeline.call
            )
        finally:
            if slot is not None:
                slot.release()  # the answer is in: the next request may go out
    except ApiCallError as exc:
        if stops_run(exc.code):
            control.abort(run_error(exc.code, exc.message))
        return _failed(artist, exc.code, exc.message)
    except NotSent as exc:
        # Not this artist's doing: a budget or a long rate-limit pause stops the run, or the
        # run is stopping; the artist stays to do.
        if exc.error is not None:
            control.abort(exc.error)
        return Outcome(artist.artist_id, artist.name, "not_started")
    return _commit_and_append(pipeline, control, bio)


def _skip_if_has_bio(ledger: Ledger, artist: ArtistData) -> Outcome | None:
    has_bio = ledger.has_bio(artist.artist_id)
    if has_bio is None:
        return Outcome(
            artist.artist_id, artist.name, "skipped", "no_row", "no row with this id in the table"
        )
    if has_bio:
        return Outcome(
            artist.artist_id, artist.name, "skipped", "has_bio", "the artist already has a bio"
        )
    return None


def _failed(artist: ArtistData, code: str, reason: str) -> Outcome:
    return Outcome(artist.artist_id, artist.name, "failed", code, reason)


def _commit_and_append(
    pipeline: Pipeline, control: RunControl, bio: GeneratedBio, *, only_new: bool = False
) -> Outcome:
    artist = bio.artist
    if pipeline.committer is not None:
        settled = pipeline.committer.settle(bio, only_new=only_new)
    else:
        settled = _commit_here(pipeline, bio, only_new)
    committed = settled.committed
    if committed is None:
        return _not_committed(control, artist, settled.error)
    if settled.append_error is not None:
        # Committed but not appended: the next start renders the line from the database.
        control.abort(settled.append_error)
    if only_new and committed.response_id != bio.response_id:
        # Another answer of this artist was committed first (a batch answer mentioned twice):
        # that one stands, and its line is written already (or restored from the ledger).
        return Outcome(
            artist.artist_id,
            artist.name,
            "skipped",
            "already_committed",
            f"response {committed.response_id} was committed before",
        )
    return Outcome(
        artist.artist_id,
        artist.name,
        "committed",
        response_id=committed.response_id,
        db_status=committed.db_status,
        tokens=bio.tokens,
        cost_usd=bio.cost_usd,
        model=bio.model,
        text=committed.response_text,
    )


def _not_committed(control: RunControl, artist: ArtistData, error: Exception | None) -> Outcome:
    if isinstance(error, DatabaseUnavailableError):
        control.abort(error)
        return _failed(artist, "db_unavailable", str(error))
    if isinstance(error, psycopg.Error):
        # The server refused this bio (e.g. a NUL byte, a constraint): this artist only.
        return _failed(artist, "db_rejected", first_line(error))
    raise error or RuntimeError("the bio was neither committed nor refused")


def render_line(settings: PromptSettings, committed: CommittedBio) -> bytes:
    """A committed bio's JSONL line, rendered from what was committed, exactly as
    recovery renders a missing line."""
    return encode_line(committed, settings.prompt_id, settings.prompt_version)


def _commit_here(pipeline: Pipeline, bio: GeneratedBio, only_new: bool) -> Settled:
    """What the committer does, for one bio, in the worker's own thread."""
    try:
        committed = pipeline.ledger.commit(bio)
    except (DatabaseUnavailableError, psycopg.Error) as exc:
        return Settled(error=exc)
    if only_new and committed.response_id != bio.response_id:
        return Settled(committed)  # an earlier commit stands; its line is written already
    try:
        pipeline.writer.append_line(render_line(pipeline.settings, committed))
    except OutputWriteError as exc:
        return Settled(committed, append_error=exc)
    return Settled(committed)


@dataclass
class Tally:
    """Counts kept by the main thread as outcomes arrive."""

    committed: int = 0
    skipped: int = 0
    failed: int = 0
    not_started: int = 0
    tokens: TokenUsage = TokenUsage()
    #: USD of the committed bios whose price was known.
    cost_usd: float = 0.0
    streak_code: str | None = None
    streak: int = 0
    #: Artists still in flight when the run returned (the shutdown grace ran out).
    abandoned: int = 0
    #: Artists submitted and not settled yet (kept by the feeding thread, for progress).
    in_flight: int = 0

    def add(self, outcome: Outcome) -> None:
        """Count one outcome."""
        if outcome.status == "committed":
            self.committed += 1
        elif outcome.status == "skipped":
            self.skipped += 1
        elif outcome.status == "failed":
            self.failed += 1
        else:
            self.not_started += 1
        self.tokens = self.tokens + outcome.tokens
        self.cost_usd += outcome.cost_usd or 0.0
        self._track_streak(outcome)

    def _track_streak(self, outcome: Outcome) -> None:
        if outcome.status != "failed":
            if outcome.status != "not_started":
                self.streak_code, self.streak = None, 0
            return
        if outcome.code == self.streak_code:
            self.streak += 1
        else:
            self.streak_code, self.streak = outcome.code, 1

    @property
    def finished(self) -> int:
        """Artists that got a final outcome (not counting ``not_started``)."""
        return self.committed + self.skipped + self.failed


OutcomeCallback = Callable[[Outcome, Tally], None]

T = TypeVar("T")
#: What a worker does with one item (an artist, a batch answer); returns its outcome.
Task = Callable[[Pipeline, RunControl, T], Outcome]


@dataclass
class _Window:
    """Submitted-but-unfinished artists; completions arrive through a deque (O(1) each).

    The main thread is woken once ``wake_after`` tasks have finished, not after each one:
    every wake is a wait for the GIL among all the workers, for a thread that then only
    counts. Workers do not starve meanwhile: the window holds twice as many artists as
    there are workers, and the feeder wakes after at most an eighth of them (``wake_batch``).
    """

    executor: Executor
    #: Finished futures not collected yet (``deque`` appends and pops are thread-safe).
    done: deque[Future[Outcome]] = field(default_factory=deque)
    in_flight: int = 0
    #: Finished tasks that wake the main thread (1: each one, as for the canary and the end).
    wake_after: int = 1
    ready: threading.Event = field(default_factory=threading.Event)

    def submit(self, fn: Callable[..., Outcome], *args: object) -> None:
        future = self.executor.submit(fn, *args)
        future.add_done_callback(self._finished)
        self.in_flight += 1

    def _finished(self, future: Future[Outcome]) -> None:
        # In the worker thread (or the main one, for a future cancelled at shutdown).
        self.done.append(future)
        if len(self.done) >= self.wake_after:
            self.ready.set()

    def settled(self) -> Iterator[Outcome | None]:
        """Without waiting, what finished since the last collection: an ``Outcome`` per
        artist that ran, None per queued artist whose task was cancelled."""
        while self.done:
            future = self.done.popleft()
            self.in_flight -= 1
            yield None if future.cancelled() else future.result()

    def next_outcome(self, timeout: float) -> Outcome | None:
        """The next finished outcome, or None after ``timeout`` (so signals get a look in).

        Waits only when nothing is left to collect, and then until ``wake_after`` tasks
        have finished (or ``timeout``); a wake-up that finds the deque empty is harmless.
        """
        if not self.done:
            self.ready.wait(timeout)
        self.ready.clear()
        if not self.done:
            return None
        self.in_flight -= 1
        return self.done.popleft().result()


#: Settled artists between two ``release_free_memory`` calls (see ``utils/memory.py``): a
#: few seconds of a fast run, so the freed heap pages never pile up, for about a
#: millisecond each time.
RELEASE_EVERY = 2048


def wake_batch(max_workers: int) -> int:
    """Finished tasks that wake the feeder in full flow: an eighth of the workers (1 below
    16 workers, so a small run is collected as each artist finishes)."""
    return max(1, max_workers // 8)


def process_artists_concurrent(
    artists: Iterable[ArtistData],
    pipeline: Pipeline,
    control: RunControl,
    *,
    max_workers: int = 4,
    on_outcome: OutcomeCallback | None = None,
    shutdown_grace: float = 30.0,
    failure_streak_limit: int | None = None,
    tally: Tally | None = None,
    executor: Executor | None = None,
) -> Tally:
    """Process ``artists`` with ``max_workers`` API requests at once (on
    ``pool_threads(max_workers)`` threads); returns the tally (``tally``, when given, is the
    one counted into: a progress display may read it meanwhile).

    ``executor`` runs the tasks instead of a pool of threads of this
    process (``core/processes.py``: worker processes); the window, the canary, the stop
    flags and the grace period are the same.

    Returns early when ``control`` stops (systemic error or signal); in-flight artists get
    up to ``shutdown_grace`` seconds to finish after a signal. Artists still running after
    that are left running (``tally.abandoned`` counts them; the caller must not close what
    they use).
    """
    streak_limit = failure_streak_limit or max(25, 2 * max_workers)
    if executor is None:
        pipeline, executor = thread_pool(pipeline, max_workers, control)
    return _run_window(
        artists,
        process_artist,
        pipeline,
        control,
        _WindowOptions(max_workers, on_outcome, shutdown_grace, streak_limit, executor),
        tally if tally is not None else Tally(),
    )


def process_answers_concurrent(
    answers: Iterable[BatchAnswer],
    pipeline: Pipeline,
    control: RunControl,
    *,
    max_workers: int = 4,
    on_outcome: OutcomeCallback | None = None,
    shutdown_grace: float = 30.0,
) -> Tally:
    """Commit (or record) batch answers with ``max_workers`` threads, as
    ``process_artists_concurrent`` processes artists (the same window, canary, stop flags
    and grace), except that a streak of identical failures does not stop it: the answers
    are paid for already, and each failure is its own artist's."""
    return _run_window(
        answers,
        process_answer,
        pipeline,
        control,
        _WindowOptions(max_workers, on_outcome, shutdown_grace, streak_limit=None),
        Tally(),
    )


@dataclass(frozen=True)
class _WindowOptions:
    max_workers: int
    on_outcome: OutcomeCallback | None
    shutdown_grace: float
    #: Identical failures in a row that stop the run (None: never).
    streak_limit: int | None
    #: Runs the tasks (None: a thread pool of ``max_workers``, shut down at the end).
    executor: Executor | None = None


def _run_window(
    items: Iterable[T],
    task: Task[T],
    pipeline: Pipeline,
    control: RunControl,
    options: _WindowOptions,
    tally: Tally,
) -> Tally:
    executor = options.executor or ThreadPoolExecutor(
        max_workers=options.max_workers, thread_name_prefix="artist"
    )
    window = _Window(executor)
    feeder = _Feeder(
        window, pipeline, control, tally, options.on_outcome, options.streak_limit, task
    )
    max_workers, shutdown_grace = options.max_workers, options.shutdown_grace
    try:
        feeder.feed(items, window_size=2 * max_workers)
        feeder.drain(shutdown_grace)
    except BaseException:
        # Something broke in the main thread (e.g. the input became unreadable): let the
        # workers see the stop flag and finish before the caller closes what they use.
        control.interrupt()
        feeder.drain(shutdown_grace)
        raise
    finally:
        _shut_down(executor, window, tally)
    return tally


def _shut_down(executor: Executor, window: _Window, tally: Tally) -> None:
    """Stop the pool; what is still running when the grace period ran out is abandoned.

    Running workers are not waited for then. Queued artists never started: the shutdown
    cancels them and they count as not started, not as abandoned.
    """
    executor.shutdown(wait=window.in_flight == 0, cancel_futures=True)
    for outcome in window.settled():
        if outcome is None:
            tally.not_started += 1
        else:
            tally.add(outcome)
    tally.abandoned = tally.in_flight = window.in_flight
    if tally.abandoned:
        logger.warning("grace period over; %d artists still in flight", tally.abandoned)


@dataclass
class _Feeder(Generic[T]):
    window: _Window
    pipeline: Pipeline
    control: RunControl
    tally: Tally
    on_outcome: OutcomeCallback | None
    streak_limit: int | None
    task: Task[T]
    canary_done: bool = False
    #: Hands the heap's free pages back now and then, so RSS does not creep with the run.
    release: PeriodicRelease = field(default_factory=lambda: PeriodicRelease(RELEASE_EVERY))

    def feed(self, items: Iterable[T], window_size: int) -> None:
        batch = wake_batch(window_size // 2)
        for item in items:
            # The canary: until one outcome shows the key, prompt and quota work, only one
            # artist is in flight (and its outcome wakes the feeder at once).
            limit = window_size if self.canary_done else 1
            while self.window.in_flight >= limit and not self.control.stopping:
                self.window.wake_after = batch if self.canary_done else 1
                self._collect(timeout=0.25)
                limit = window_size if self.canary_done else 1
            if self.control.stopping:
                return
            self.window.submit(self.task, self.pipeline, self.control, item)
            self.tally.in_flight = self.window.in_flight

    def drain(self, grace: float) -> None:
        # Nothing more to submit: each outcome is collected as it comes (the last ones would
        # otherwise wait for a batch that never fills).
        self.window.wake_after = 1
        self.window.ready.set()
        deadline: float | None = None
        while self.window.in_flight > 0:
            if self.control.interrupted and deadline is None:
                deadline = time.monotonic() + grace
                logger.warning(
                    "stopping: waiting up to %g s for %d artists in flight",
                    grace,
                    self.window.in_flight,
                )
            if deadline is not None and time.monotonic() >= deadline:
                return
            self._collect(timeout=0.25)

    def _collect(self, timeout: float) -> None:
        outcome = self.window.next_outcome(timeout)
        if outcome is None:
            return
        self.tally.add(outcome)
        self.tally.in_flight = self.window.in_flight
        self.release.tick()
        # Only an artist that reached the API can show the key, prompt and quota work: a
        # skipped one (--skip-existing) made no request.
        if outcome.status in ("committed", "failed") and not stops_run(outcome.code):
            self.canary_done = True
        limit = self.streak_limit
        if limit is not None and self.tally.streak >= limit and not self.control.stopping:
            self.control.abort(
                RunAbortedError(
                    f"{self.tally.streak} artists in a row failed with '{self.tally.streak_code}' "
                    f"(last: {outcome.reason}); stopping instead of failing every artist. Fix "
                    "the cause, then run again with --resume."
                )
            )
        if self.on_outcome is not None:
            self.on_outcome(outcome, self.tally)
