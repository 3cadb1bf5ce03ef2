"""Keeping the JSONL equal to the database: the JSONL is a mirror of the ledger.

``reconcile`` runs at every start and at the end of every run, while no worker is writing:

1. a torn last line is cut (``JsonlWriter`` does it when it opens the file);
2. the JSONL lines written since the last checkpoint are scanned for their artist ids;
3. the ledger rows committed since the checkpoint are read; every row without a line is
   appended, rendered from the database (the API is never called again);
4. a line without a ledger row means the file holds a bio the database does not: that is
   not repairable automatically, so the run stops and names the ids;
5. a new checkpoint (file size, last ledger sequence, line count) is saved in the manifest,
   so the next start only looks at what came after it.

Before reading the ledger it waits, through a PostgreSQL advisory lock that every commit
holds in shared mode, for commits still running on behalf of a process that was killed; so
no row can commit "behind" a checkpoint.

``verify`` compares the whole file with the whole ledger and reports every difference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..database.store import BioStore
from ..errors import OutOfSyncError
from ..jobfiles import Checkpoint, Manifest
from ..models import CommittedBio
from ..utils.uuidset import UuidSet
from .jsonl import JsonlWriter, encode_line, last_complete_size, line_is_done

logger = logging.getLogger(__name__)

# Lines we write start with the id at a fixed offset: '{"artist_id": "<36 chars>", ...'.
_ID_PREFIX = b'{"artist_id": "'
_ID_END = len(_ID_PREFIX) + 36
_MAX_NAMED = 10


@dataclass
class JsonlScan:
    """What a pass over (part of) a JSONL file found."""

    lines: int = 0
    ids: UuidSet = field(default_factory=UuidSet)
    duplicates: list[str] = field(default_factory=list)
    duplicate_count: int = 0
    unreadable: int = 0
    not_done: int = 0
    end: int = 0


def _line_id(line: bytes) -> tuple[str | None, bool]:
    """(artist id, done) of one complete line; (None, False) when it cannot be read."""
    # Our own lines: the id sits at a fixed place and they never hold failures.
    own = line.startswith(_ID_PREFIX) and line[_ID_END : _ID_END + 1] == b'"'
    # Legacy files share this prefix and also hold database failures written with
    # '"error": null' and '"db_status": "error"' (not done, see line_is_done); those take the
    # full parse below. The pattern cannot occur inside a string value (quotes are escaped).
    if own and b'"error": null' in line and b'"db_status": "error"' not in line:
        return line[len(_ID_PREFIX) : _ID_END].decode("ascii", "replace"), True
    try:
        record = json.loads(line)
    except ValueError:
        return None, False
    if not isinstance(record, dict) or "artist_id" not in record:
        return None, False
    return str(record["artist_id"]), line_is_done(record)


def iter_lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for every complete line between ``start`` and ``end``."""
    with open(path, "rb") as handle:
        handle.seek(start)
        offset = start
        for line in handle:
            if end is not None and offset >= end:
                return
            if not line.endswith(b"\n"):
                return  # a torn tail is not a line
            yield offset, line
            offset += len(line)


def scan_jsonl(path: Path, start: int = 0, end: int | None = None) -> JsonlScan:
    """Collect the ids of the done lines between ``start`` and ``end``."""
    scan = JsonlScan(end=start)
    if not path.exists():
        return scan
    for offset, line in iter_lines(path, start, end):
        scan.end = offset + len(line)
        scan.lines += 1
        artist_id, done = _line_id(line)
        if artist_id is None:
            scan.unreadable += 1
        elif not done:
            scan.not_done += 1
        else:
            _add_id(scan, artist_id)
    return scan


def _add_id(scan: JsonlScan, artist_id: str) -> None:
    try:
        added = scan.ids.add(artist_id)
    except ValueError:
        scan.unreadable += 1
        return
    if not added:
        scan.duplicate_count += 1
        if len(scan.duplicates) < _MAX_NAMED:
            scan.duplicates.append(artist_id)


@dataclass(frozen=True)
class Reconciliation:
    """What ``reconcile`` did."""

    scanned_lines: int
    appended: int
    checkpoint: Checkpoint


def _usable_checkpoint(path: Path, manifest: Manifest) -> Checkpoint:
    """The manifest's checkpoint if the file still extends it, else a start-over point."""
    cp = manifest.checkpoint
    size = path.stat().st_size if path.exists() else 0
    if manifest.legacy_prefix <= cp.jsonl_size <= size and _ends_line(path, cp.jsonl_size):
        return cp
    if cp.jsonl_size:
        logger.warning("%s changed behind the job's back; checking it in full", path)
    return Checkpoint(jsonl_size=manifest.legacy_prefix, ledger_seq=0, lines=0)


def _ends_line(path: Path, size: int) -> bool:
    if size == 0:
        return True
    with open(path, "rb") as handle:
        handle.seek(size - 1)
        return handle.read(1) == b"\n"


def reconcile(
    manifest: Manifest,
    store: BioStore,
    writer: JsonlWriter,
    appended: tuple[int, int] | None = None,
) -> tuple[Reconciliation, Manifest]:
    """Append committed rows the JSONL lacks and refuse lines the ledger lacks.

    Must run while no worker is appending. ``appended`` is (lines, bytes) that ``writer``
    appended since the manifest's checkpoint was taken; with it, a run whose counts agree
    with the ledger's is confirmed without re-reading its lines (see ``_confirmed``).
    Returns what was done and the manifest with the new checkpoint (the caller saves it).
    """
    with writer.exclusive():
        confirmed = _confirmed(manifest, store, writer, appended) if appended else None
        if confirmed is not None:
            return Reconciliation(0, 0, confirmed), replace(manifest, checkpoint=confirmed)
        return _reconcile_locked(manifest, store, writer)


def _confirmed(
    manifest: Manifest, store: BioStore, writer: JsonlWriter, appended: tuple[int, int]
) -> Checkpoint | None:
    """The new checkpoint when counting proves the mirror exact, else None.

    Every line this writer appended was rendered from a row committed by this run (lines
    follow commits), one per artist; under the run lock nobody else commits for the job.
    So if the file grew by exactly the bytes this writer wrote, and the ledger gained as
    many rows as the writer wrote lines, the new lines and the new rows are the same set.
    This keeps the end of a long run from holding all its ids in memory; any mismatch
    falls back to the full comparison.
    """
    lines, size = appended
    cp = manifest.checkpoint
    if writer.path.stat().st_size != cp.jsonl_size + size:
        return None
    store.wait_for_job_commits(manifest.job_id)
    rows, last_seq = store.rows_after(manifest.job_id, cp.ledger_seq)
    if rows != lines:
        return None
    return Checkpoint(
        jsonl_size=cp.jsonl_size + size,
        ledger_seq=last_seq if rows else cp.ledger_seq,
        lines=cp.lines + lines,
    )


def _reconcile_locked(
    manifest: Manifest, store: BioStore, writer: JsonlWriter
) -> tuple[Reconciliation, Manifest]:
    path = writer.path
    cp = _usable_checkpoint(path, manifest)
    scan = scan_jsonl(path, cp.jsonl_size)
    if scan.duplicate_count:
        logger.warning(
            "%s holds %d duplicate lines (e.g. %s)", path, scan.duplicate_count, scan.duplicates[0]
        )
    store.wait_for_job_commits(manifest.job_id)
    matched = UuidSet()
    appended = 0
    last_seq = cp.ledger_seq
    for row in store.iter_job_rows(manifest.job_id, after_seq=cp.ledger_seq):
        last_seq = max(last_seq, row.seq)
        if row.artist_id in scan.ids:
            matched.add(row.artist_id)
            continue
        writer.append_line_locked(_render(row, manifest))
        appended += 1
    _refuse_extra_lines(path, manifest, store, scan.ids, matched)
    if appended:
        logger.warning(
            "appended %d committed bios that %s was missing (rendered from the database)",
            appended,
            path,
        )
    checkpoint = Checkpoint(
        jsonl_size=path.stat().st_size, ledger_seq=last_seq, lines=cp.lines + scan.lines + appended
    )
    return Reconciliation(scan.lines, appended, checkpoint), replace(
        manifest, checkpoint=checkpoint
    )


def _render(row: CommittedBio, manifest: Manifest) -> bytes:
    settings = manifest.settings
    return encode_line(row, settings.prompt_id, settings.prompt_version)


def _refuse_extra_lines(
    path: Path, manifest: Manifest, store: BioStore, ids: UuidSet, matched: UuidSet
) -> None:
    if len(matched) == len(ids):
        return
    extra = [artist_id for artist_id in ids if artist_id not in matched]
    # A line may match a row older than the checkpoint (a duplicate line); only lines with no
    # row at all mean the file and the database disagree.
    missing = store.missing_from_ledger(manifest.job_id, extra)
    if missing:
        raise OutOfSyncError(
            f"{path} holds {len(missing)} bios that the database does not have for this job "
            f"(ids: {', '.join(missing[:_MAX_NAMED])}). The database is the source of truth: "
            "check how those lines got there; 'artist-bio-gen verify' shows the full report."
        )


@dataclass(frozen=True)
class QuickCheck:
    """What the start of a run would find (``status``): reconcile's comparison, read-only."""

    #: JSONL lines and ledger rows after the checkpoint, the part that was compared.
    lines: int
    rows: int
    #: The checkpoint no longer matched the file, so the whole file was compared.
    full_scan: bool
    #: Committed bios without a line: the next run appends them (repairable).
    missing_in_jsonl: int
    #: Bios in the JSONL the ledger does not have: not repairable (a run exits 6).
    missing_in_db: list[str]
    torn_tail_bytes: int

    @property
    def consistent(self) -> bool:
        """False when the JSONL holds bios the database does not (what stops a run)."""
        return not self.missing_in_db


def quick_check(path: Path, manifest: Manifest, store: BioStore) -> QuickCheck:
    """Compare the JSONL and the ledger after the manifest's checkpoint, writing nothing.

    The lines are read before the rows: a line is written only after its row committed, so
    even while a run is appending, every line read here has a row the query below sees, and
    only a real disagreement shows as ``missing_in_db``. Rows without a line are normal
    while a run is writing (it appends them in a moment) and after a crash (the next run
    appends them).
    """
    cp = _usable_checkpoint(path, manifest)
    scan = scan_jsonl(path, cp.jsonl_size)
    matched = UuidSet()
    rows = missing = 0
    for artist_id in store.iter_job_ids(manifest.job_id, after_seq=cp.ledger_seq):
        rows += 1
        if artist_id in scan.ids:
            matched.add(artist_id)
        else:
            missing += 1
    extra = [artist_id for artist_id in scan.ids if artist_id not in matched]
    return QuickCheck(
        lines=scan.lines,
        rows=rows,
        full_scan=cp != manifest.checkpoint,
        missing_in_jsonl=missing,
        missing_in_db=store.missing_from_ledger(manifest.job_id, extra),
        torn_tail_bytes=torn_tail_bytes(path),
    )


@dataclass
class VerifyReport:
    """A full comparison of a job's JSONL and its ledger rows."""

    jsonl_lines: int = 0
    jsonl_ids: int = 0
    committed_rows: int = 0
    torn_tail_bytes: int = 0
    unreadable_lines: int = 0
    duplicate_ids: list[str] = field(default_factory=list)
    duplicate_count: int = 0
    missing_in_jsonl: list[str] = field(default_factory=list)
    missing_in_jsonl_count: int = 0
    missing_in_db: list[str] = field(default_factory=list)
    missing_in_db_count: int = 0
    text_mismatches: list[str] = field(default_factory=list)
    text_mismatch_count: int = 0

    @property
    def consistent(self) -> bool:
        """True when the file mirrors the ledger exactly."""
        return not (
            self.torn_tail_bytes
            or self.unreadable_lines
            or self.duplicate_count
            or self.missing_in_jsonl_count
            or self.missing_in_db_count
            or self.text_mismatch_count
        )


def torn_tail_bytes(path: Path) -> int:
    """Bytes after the last newline (0 for a file that ends in a complete line)."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        return size - last_complete_size(fd, size)
    finally:
        os.close(fd)


def verify(path: Path, manifest: Manifest, store: BioStore | None) -> VerifyReport:
    """Compare every line after the legacy prefix with every ledger row of the job."""
    report = VerifyReport(torn_tail_bytes=torn_tail_bytes(path))
    digests = _line_digests(path, manifest.legacy_prefix, report)
    if store is None:
        report.committed_rows = report.jsonl_ids
        return report
    for row in store.iter_job_rows(manifest.job_id):
        report.committed_rows += 1
        line_digest = digests.pop(row.artist_id, None)
        if line_digest is None:
            _note(report.missing_in_jsonl, row.artist_id)
            report.missing_in_jsonl_count += 1
        elif line_digest != hashlib.blake2b(_render(row, manifest), digest_size=16).digest():
            _note(report.text_mismatches, row.artist_id)
            report.text_mismatch_count += 1
    report.missing_in_db_count = len(digests)
    report.missing_in_db = list(digests)[:_MAX_NAMED]
    return report


def _line_digests(path: Path, start: int, report: VerifyReport) -> dict[str, bytes]:
    # verify is the thorough check: it holds a 16-byte digest per line rather than the text.
    digests: dict[str, bytes] = {}
    if not path.exists():
        return digests
    for _, line in iter_lines(path, start):
        report.jsonl_lines += 1
        artist_id, done = _line_id(line)
        if artist_id is None or not done:
            report.unreadable_lines += 1
            continue
        if artist_id in digests:
            _note(report.duplicate_ids, artist_id)
            report.duplicate_count += 1
            continue
        digests[artist_id] = hashlib.blake2b(line, digest_size=16).digest()
    report.jsonl_ids = len(digests)
    return digests


def _note(names: list[str], artist_id: str) -> None:
    if len(names) < _MAX_NAMED:
        names.append(artist_id)
