"""The input mark: where a ``--resume`` may start reading the input.

Why: a resume has to pass over every input line whose artist is done before it reaches
the first one to do. Over a million done lines that reading is about a second of CPU (the
ids looked up one by one), and it grows with the job. A run that ends knows how far into
the input every artist is committed, so it records that point in the manifest
(``jobfiles.InputMark``); the next resume starts reading there, and reads past the done
lines only from there on (artists committed out of order, after the first one left to do).

A mark is used only while it still describes the input and the ledger:

* the input's first ``offset`` bytes hash to what they hashed to (``sha256``: an edit
  anywhere before the mark, or a different file, sends the resume back to the top; an
  input that only grew at its end keeps its mark);
* the job's ledger still has ``ledger_rows`` rows up to sequence ``ledger_seq``. The tool
  never deletes ledger rows and a new row always gets a higher sequence number, so fewer
  rows there means rows deleted by hand, whose artists must be done again.

The hash is computed in a thread while the done ids load (``hashlib`` lets go of the GIL on
large blocks, so it runs on another core): about 0.1 s per 150 MB.

Only committed artists move the mark: an artist that failed, was skipped
(``--skip-existing``), given up, cut off by ``--limit`` or never started holds it where it is,
and the next resume reads from there. Jobs without a database (the JSONL is their only
record) and batch jobs keep no mark.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..jobfiles import InputMark
from ..models import ArtistData, Outcome
from .reader import ArtistReader, InputPosition

logger = logging.getLogger(__name__)

_BLOCK = 1 << 20  # bytes hashed at a time (hashlib releases the GIL on blocks this large)
_LINE_BREAKS = (b"\n", b"\r")


class PrefixHash(NamedTuple):
    """A SHA-256 over a file's first ``size`` bytes, which can be carried on further."""

    size: int
    state: Any  # a hashlib sha256 object (its type is private to hashlib)


def hash_prefix(
    path: str | os.PathLike[str], size: int, base: PrefixHash | None = None
) -> PrefixHash | None:
    """The hash of the first ``size`` bytes of the file, going on from ``base`` (a hash of
    a shorter prefix of the same bytes) instead of reading them again; None when the file is
    shorter, or unreadable."""
    if base is not None and base.size <= size:
        digest, done = base.state.copy(), base.size
    else:
        digest, done = hashlib.sha256(), 0
    try:
        with open(path, "rb", buffering=0) as handle:
            handle.seek(done)
            left = size - done
            while left:
                block = handle.read(min(_BLOCK, left))
                if not block:
                    return None
                digest.update(block)
                left -= len(block)
    except OSError:
        return None
    return PrefixHash(size, digest)


def prefix_sha256(path: str | os.PathLike[str], size: int) -> str | None:
    """The SHA-256 of the first ``size`` bytes of the file (None: it is shorter, or unreadable)."""
    hashed = hash_prefix(path, size)
    return None if hashed is None else hashed.state.hexdigest()


def position_of(mark: InputMark) -> InputPosition:
    """Where a reader starts for ``mark``."""
    return InputPosition(mark.offset, mark.lines, mark.done, mark.bad_lines, mark.skipped_lines)


class MarkCheck:
    """Checks a manifest's mark against the input in a thread; ``position`` says whether
    the resume may use it."""

    def __init__(self, path: str | os.PathLike[str], mark: InputMark) -> None:
        self.mark = mark
        self._path = path
        self._hashed: PrefixHash | None = None
        #: The hash of the bytes before the mark once the mark is found to hold: the end of
        #: the run goes on from it to hash the bytes before its own mark.
        self.trusted: PrefixHash | None = None
        self._thread = threading.Thread(target=self._hash, name="input-mark", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        self._hashed = hash_prefix(self._path, self.mark.offset)

    def position(self, ledger_rows_now: int) -> InputPosition | None:
        """The reader's start if the mark holds, else None (logged with the reason).

        ``ledger_rows_now`` is how many rows the job's ledger has up to the mark's sequence
        number now.
        """
        self._thread.join()
        mark, hashed = self.mark, self._hashed
        if hashed is None or hashed.state.hexdigest() != mark.sha256:
            logger.info(
                "the input changed before line %s since the last run: reading it from the top",
                f"{mark.lines + 1:,}",
            )
            return None
        if ledger_rows_now != mark.ledger_rows:
            logger.warning(
                "the job's ledger has %s rows up to sequence %d, %s when the last run ended "
                "(rows deleted by hand?): reading the input from the top, so their artists are "
                "done again",
                f"{ledger_rows_now:,}",
                mark.ledger_seq,
                f"{mark.ledger_rows:,}",
            )
            return None
        self.trusted = hashed
        return position_of(mark)


@dataclass
class InputTracker:
    """Follows the artists read from the input until they settle, to tell where the next
    resume may start: before the first artist read and not committed, or where the reader
    is when every artist it gave is committed.

    Wraps the reader's artists (``track``) and is told every outcome (``settled``) and every
    artist a filter drops without an outcome (``dropped``); all are called from the feeder
    thread only, so nothing here is locked. It holds only the artists in flight (the
    window's) and the earliest position an artist left uncommitted, so its memory does not
    grow with the run, however many artists fail or are skipped.
    """

    reader: ArtistReader
    #: Where the reader started (the position before its first record).
    start: InputPosition
    #: Each artist read and not settled yet, with the position before its record, in
    #: reading order.
    _pending: dict[str, InputPosition] = field(default_factory=dict)
    #: The earliest position before an artist that settled without being committed.
    _held: InputPosition | None = None
    #: The position before the last artist read.
    _before_last: InputPosition | None = None

    def track(self, artists: Iterable[ArtistData]) -> Iterator[ArtistData]:
        """``artists`` (the reader's), noting each one's position."""
        last = self.start
        for artist in artists:
            self._pending[artist.artist_id] = self._before_last = last
            last = self.reader.position()
            yield artist

    def settled(self, outcome: Outcome) -> None:
        """An outcome: a committed artist no longer holds the mark back; any other holds it
        before itself for good (this run will not commit it)."""
        before = self._pending.pop(outcome.artist_id, None)
        if before is not None and outcome.status != "committed":
            self._hold(before)

    def dropped(self, artist: ArtistData) -> None:
        """An artist a filter dropped (given up): it holds the mark before itself."""
        before = self._pending.pop(artist.artist_id, None)
        if before is not None:
            self._hold(before)

    def _hold(self, position: InputPosition) -> None:
        if self._held is None or position.offset < self._held.offset:
            self._held = position

    def position(self) -> InputPosition:
        """The position the next resume may start from (the reader must be quiet)."""
        # The first pending artist is the earliest one: the dict keeps the reading order.
        held = [p for p in (self._held, next(iter(self._pending.values()), None)) if p]
        if held:
            return min(held, key=lambda position: position.offset)
        here = self.reader.position()
        if here.offset > self.start.offset and not _after_line_break(self.reader.path, here):
            # The last line has no line break yet: text appended to the file would extend
            # it, so the mark stays before that line's record (the lines since are read again).
            return self._before_last or self.start
        return here


def _after_line_break(path: str, position: InputPosition) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(position.offset - 1)
            return handle.read(1) in _LINE_BREAKS
    except OSError:
        return False


def make_mark(
    path: str | os.PathLike[str],
    position: InputPosition,
    ledger: tuple[int, int],
    base: PrefixHash | None = None,
) -> InputMark | None:
    """The mark for ``position`` and the ledger's (last seq, rows), hashing on from ``base``
    (the run's start, when it began at a mark); None when it covers no artist, or the input
    cannot be read that far."""
    if not position.done:
        return None
    hashed = hash_prefix(path, position.offset, base)
    if hashed is None:
        return None
    ledger_seq, ledger_rows = ledger
    return InputMark(
        offset=position.offset,
        lines=position.lines,
        done=position.done,
        bad_lines=position.bad_lines,
        skipped_lines=position.skipped_lines,
        sha256=hashed.state.hexdigest(),
        ledger_seq=ledger_seq,
        ledger_rows=ledger_rows,
    )
