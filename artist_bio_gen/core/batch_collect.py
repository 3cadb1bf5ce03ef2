"""Collecting a batch: poll it; once it ended, commit its answers exactly as online mode
commits an answer, record its failures, and mark it ended (``core/batch.py`` has the design).

A batch that ended with results (``completed``, or ``expired``/``cancelled`` with partial
output) has its output file and then its error file downloaded beside the output and read
line by line (``api/batchfile.parse_result_line``), in groups whose artists are looked up in
the batch's recorded items (an answer names only the artist id). Each line:

* an answer of an artist the job has not committed: committed and appended through the
  online pipeline's own steps (``processor.process_answers_concurrent``): ledger row and
  bio in one statement, then the JSONL line rendered from the committed row;
* an answer of an artist committed already (an earlier collection of this batch that was
  killed, another output file, a second line in this one): skipped, before any write;
* a failure that counts (400, 5xx, an unusable answer): recorded in the failures file with
  the batch id, once per artist and batch however often the batch is collected; the artist
  is submitted again by a later submission until ``--max-attempts``;
* unanswered (``batch_expired``, a 429) or a systemic failure (401/403/404, no quota): not
  held against the artist, who is submitted again; a systemic failure also stops this run's
  submissions with its error (exit 3 or 5) once the batch is collected.

Only when every line was handled is the batch marked ``ended`` (its items deleted, its
uploaded input file deleted). A collector killed midway leaves it ``submitted``: the next
run collects it again from the start, and every line already committed or recorded is
skipped, so nobody is committed twice and no line is written twice.

A batch that failed as a whole is marked ended with its reason; its artists are submitted
again by the general rule. ``token_limit_exceeded`` (the account's queue of enqueued tokens is
full) holds this run's submissions (``hold``): the next ``--resume`` submits them, in request
files half the size of the failed one. Any other whole-batch failure (a file the API refused)
stops this run's submissions with exit 5.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

from ..api.batches import BatchInfo
from ..api.batchfile import ResultLine, answer_bio, parse_result_line
from ..api.call import ApiCallError
from ..database.batches import BatchRecord, Collected
from ..errors import ArtistBioGenError, RunAbortedError
from ..failure_codes import counts_towards_cap, run_error, stops_run
from ..models import ArtistData, Outcome
from ..utils.uuidset import UuidSet
from .batch_parts import BatchParts
from .batch_submit import TOKEN_LIMIT
from .processor import BatchAnswer, Tally, process_answers_concurrent

logger = logging.getLogger(__name__)

#: Result lines read (and their artists looked up) at once.
LOOKUP_GROUP = 500


@dataclass
class _Lines:
    """What the lines of one batch's files held, besides what the window counted."""

    unanswered: int = 0
    already: int = 0
    unknown: int = 0
    unreadable: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    def note(self, code: str) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1


@dataclass
class Collector:
    """Polls and collects batches for one run."""

    parts: BatchParts
    #: A whole batch failed for a full queue: submit nothing more in this run.
    hold: bool = False
    #: Why this run must submit nothing more (a systemic failure), if it must.
    error: ArtistBioGenError | None = None
    #: Every outcome of this run's collections, summed.
    tally: Tally = field(default_factory=Tally)
    #: What this run collected, summed over its batches.
    collected: Collected = field(default_factory=Collected)
    _batch_id: str = ""
    #: Artists handed to the window while collecting the current batch (a second line of
    #: the same artist, in either file, must not reach it while the first is in flight).
    _fed: UuidSet = field(default_factory=UuidSet)

    def poll(self, record: BatchRecord) -> BatchInfo:
        """The batch's status now (recorded with the row)."""
        if record.batch_id is None:
            raise ValueError(f"request file {record.chunk} has no batch yet")
        info = self.parts.api.retrieve(record.batch_id)
        if (info.status, info.completed, info.failed) != (
            record.status,
            record.completed,
            record.failed,
        ):
            self.parts.store.set_status(record.chunk, info.status, info.completed, info.failed)
        return info

    def collect(self, record: BatchRecord, info: BatchInfo) -> bool:
        """Collect an ended batch; True once it is marked ended (False: the run stopped
        midway, the next run collects it again)."""
        if info.status == "failed":
            self._failed(record, info)
            return True
        lines = _Lines()
        self._batch_id = info.id
        self._fed = UuidSet()
        # Downloaded first: a failing download must not stop the window midway.
        files = self._download(info)
        try:
            answers = chain.from_iterable(self._answers(record, path, lines) for path in files)
            tally = process_answers_concurrent(
                answers,
                self.parts.pipeline,
                self.parts.control,
                max_workers=self.parts.config.max_workers,
                on_outcome=self._outcome,
                shutdown_grace=self.parts.config.shutdown_grace,
            )
        finally:
            for path in files:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self._add(tally)
        if self.parts.control.stopping or tally.abandoned:
            return False
        self._end(record, info, tally, lines)
        return True

    # -- a batch that failed as a whole -----------------------------------------------------

    def _failed(self, record: BatchRecord, info: BatchInfo) -> None:
        reason = info.error or "no reason given"
        if info.error_code == TOKEN_LIMIT:
            self.hold = True
            logger.warning(
                "batch %s (request file %d) failed: %s. The account's queue of batch tokens is "
                "full: its %s artists are submitted again by the next --resume, in smaller "
                "request files",
                info.id,
                record.chunk,
                reason,
                f"{record.requests:,}",
            )
        else:
            logger.error(
                "batch %s (request file %d) failed: %s; its %s artists are submitted again by "
                "the next --resume",
                info.id,
                record.chunk,
                reason,
                f"{record.requests:,}",
            )
            self._stop_with(
                RunAbortedError(
                    f"Batch {info.id} failed as a whole ({reason}); fix the cause, then run "
                    "again with --resume: its artists are submitted again."
                )
            )
        done = Collected(resubmit=record.requests, error=reason)
        self.parts.store.end(record.chunk, info.status, done)
        self.collected = _plus(self.collected, done)
        self._delete_input(record)

    # -- reading the files ------------------------------------------------------------------

    def _download(self, info: BatchInfo) -> list[Path]:
        """The batch's output and error files, downloaded beside the output (those the API
        still has: it deletes them after 30 days, and then their artists are submitted
        again)."""
        paths = self.parts.paths
        files = []
        for file_id, path in (
            (info.output_file_id, paths.batch_download),
            (info.error_file_id, paths.batch_errors),
        ):
            if file_id is None:
                continue
            if self.parts.api.download(file_id, path):
                files.append(path)
            else:
                logger.error(
                    "file %s of batch %s is gone (the API deletes them after 30 days): the "
                    "artists it answered are submitted again",
                    file_id,
                    info.id,
                )
        return files

    def _answers(self, record: BatchRecord, path: Path, lines: _Lines) -> Iterator[BatchAnswer]:
        fed = self._fed
        with open(path, "rb") as handle:
            raw_lines = (line for line in handle if line.strip())
            while group := list(islice(raw_lines, LOOKUP_GROUP)):
                yield from self._group(record, group, lines, fed)

    def _group(
        self, record: BatchRecord, group: list[bytes], lines: _Lines, fed: UuidSet
    ) -> Iterator[BatchAnswer]:
        results = [parse_result_line(line) for line in group]
        ids = {result.artist_id for result in results if result.artist_id is not None}
        items = self.parts.store.items(record.chunk, ids)
        for result in results:
            artist = items.get((result.artist_id or "").lower())
            if artist is None:
                self._unusable(result, lines)
                continue
            answer = self._answer(artist, result, lines, fed)
            if answer is not None:
                fed.add(artist.artist_id)
                yield answer

    def _unusable(self, result: ResultLine, lines: _Lines) -> None:
        if result.kind == "unreadable":
            lines.unreadable += 1
            logger.warning(
                "batch %s: an unreadable result line (%s)", self._batch_id, result.reason
            )
        else:
            lines.unknown += 1
            logger.warning(
                "batch %s: a result line for %r, which is not in its request file",
                self._batch_id,
                result.artist_id,
            )

    def _answer(
        self, artist: ArtistData, result: ResultLine, lines: _Lines, fed: UuidSet
    ) -> BatchAnswer | None:
        """What to hand the window for one line (None: nothing to commit or record)."""
        artist_id = artist.artist_id
        if artist_id in self.parts.done or artist_id in fed:
            lines.already += 1
            return None
        if result.kind == "unanswered":
            lines.unanswered += 1
            lines.note(result.code or "unanswered")
            return None
        if result.kind == "answer" and result.response is not None:
            try:
                bio = answer_bio(artist, result.response, self.parts.price)
            except ApiCallError as exc:
                return self._failure(artist, exc.code, exc.message, lines)
            return BatchAnswer(artist, bio, batch_id=self._batch_id)
        return self._failure(artist, result.code or "bad_response", result.reason, lines)

    def _failure(
        self, artist: ArtistData, code: str, reason: str, lines: _Lines
    ) -> BatchAnswer | None:
        lines.note(code)
        if stops_run(code) or not counts_towards_cap(code):
            # Not this artist's fault: submitted again, and the run submits nothing more.
            lines.unanswered += 1
            if stops_run(code):
                self._stop_with(
                    run_error(
                        code,
                        f"Batch {self._batch_id}: {reason}. Fix the cause, then run again with "
                        "--resume: the artists it could not answer are submitted again.",
                    )
                )
            return None
        if (artist.artist_id, self._batch_id) in self.parts.recorded_failures:
            lines.already += 1  # recorded by an earlier collection of this batch
            return None
        return BatchAnswer(artist, None, code, reason, self._batch_id)

    # -- outcomes ---------------------------------------------------------------------------

    def _outcome(self, outcome: Outcome, tally: Tally) -> None:
        """Keep the job's state current as answers settle (main thread)."""
        parts = self.parts
        if outcome.status == "committed" or outcome.code == "already_committed":
            parts.done.add(outcome.artist_id)
        elif outcome.status == "failed" and counts_towards_cap(outcome.code):
            parts.attempts[outcome.artist_id] += 1
            parts.recorded_failures.add((outcome.artist_id, self._batch_id))
        if parts.on_outcome is not None:
            parts.on_outcome(outcome, tally)

    def _add(self, tally: Tally) -> None:
        total = self.tally
        total.committed += tally.committed
        total.skipped += tally.skipped
        total.failed += tally.failed
        total.not_started += tally.not_started
        total.tokens = total.tokens + tally.tokens
        total.cost_usd += tally.cost_usd
        total.abandoned += tally.abandoned

    def _end(self, record: BatchRecord, info: BatchInfo, tally: Tally, lines: _Lines) -> None:
        # Requests that got no line at all (an expired batch without an error file) go
        # again too; a line skipped as handled before is none of them.
        silent = record.requests - tally.committed - tally.failed - lines.already
        done = Collected(
            committed=tally.committed,
            failures=tally.failed,
            resubmit=max(lines.unanswered, silent - lines.unknown - lines.unreadable),
        )
        self.parts.store.end(record.chunk, info.status, done)
        self.collected = _plus(self.collected, done)
        self._delete_input(record)
        codes = ", ".join(f"{code} {count:,}" for code, count in sorted(lines.codes.items()))
        logger.info(
            "collected batch %s (request file %d, %s): %s committed, %s failed, %s to submit "
            "again%s%s",
            info.id,
            record.chunk,
            info.status,
            f"{tally.committed:,}",
            f"{tally.failed:,}",
            f"{lines.unanswered:,}",
            f" ({codes})" if codes else "",
            f"; {lines.already:,} lines already handled" if lines.already else "",
        )

    def _delete_input(self, record: BatchRecord) -> None:
        if record.input_file_id is not None:
            self.parts.api.delete_file(record.input_file_id)

    def _stop_with(self, error: ArtistBioGenError) -> None:
        if self.error is None:
            self.error = error


def _plus(a: Collected, b: Collected) -> Collected:
    return Collected(
        committed=a.committed + b.committed,
        failures=a.failures + b.failures,
        resubmit=a.resubmit + b.resubmit,
        error=b.error or a.error,
    )
