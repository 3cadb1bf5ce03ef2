"""Where a job records its committed bios: the database ledger, or the JSONL alone.

A job with a database commits every bio with its ledger row (``DatabaseLedger``); the ledger
is the source of truth that resume reads and the JSONL mirrors. A job started with
``--no-db`` (or without a database URL) has no ledger: the JSONL itself is the record
(``JsonlOnlyLedger``). The runner and the workers see one interface either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ..database.store import BioStore, JobTotals
from ..jobfiles import Checkpoint, JobPaths, Manifest
from ..models import CommittedBio, GeneratedBio, JobRef
from ..utils.uuidset import UuidSet
from .budget import DatabaseUsage, FileUsage, UsageStore
from .jsonl import JsonlWriter
from .recovery import Reconciliation, reconcile, scan_jsonl


class Ledger(Protocol):
    """What the run needs from the record of committed bios."""

    def commit(self, bio: GeneratedBio) -> CommittedBio:
        """Commit one bio; returns it as committed (what its JSONL line is rendered from)."""
        ...

    def commit_group(self, bios: Sequence[GeneratedBio]) -> list[CommittedBio]:
        """Commit several bios at once, all or none (raises as ``commit`` does)."""
        ...

    def has_bio(self, artist_id: str) -> bool | None:
        """Whether the artist's row already has a bio (None: no such row)."""
        ...

    def done_ids(self, manifest: Manifest) -> UuidSet:
        """Artists this job has committed (after the manifest's legacy prefix)."""
        ...

    def usage(self, job_id: str) -> UsageStore:
        """Where the job's daily request counts live (``--daily-limit``)."""
        ...

    def totals(self, job_id: str) -> JobTotals | None:
        """What all runs of the job committed and spent (None: not recorded)."""
        ...

    def reconcile(
        self, manifest: Manifest, writer: JsonlWriter, appended: tuple[int, int] | None
    ) -> tuple[Reconciliation, Manifest]:
        """Make the JSONL mirror the record (no worker may be appending meanwhile).

        ``appended`` is (lines, bytes) the writer appended since the manifest's checkpoint.
        Returns what was done and the manifest with the new checkpoint (not yet saved).
        """
        ...


@dataclass(frozen=True)
class DatabaseLedger:
    """Bios committed to the user's table and the ledger table, in one statement."""

    store: BioStore
    job: JobRef
    #: ``--skip-existing``: a bio already in the user's row is kept.
    keep_existing: bool = False

    def commit(self, bio: GeneratedBio) -> CommittedBio:
        """Commit through the store (retried while the database is unreachable)."""
        return self.store.commit(bio, self.job, keep_existing=self.keep_existing)

    def commit_group(self, bios: Sequence[GeneratedBio]) -> list[CommittedBio]:
        """One transaction through the store (retried as a whole while unreachable)."""
        return self.store.commit_group(bios, self.job, keep_existing=self.keep_existing)

    def has_bio(self, artist_id: str) -> bool | None:
        """Look the user's row up."""
        return self.store.has_bio(artist_id)

    def done_ids(self, manifest: Manifest) -> UuidSet:
        """The job's ledger rows (about as many as the reconciled checkpoint's lines)."""
        return self.store.done_ids(manifest.job_id, expected=manifest.checkpoint.lines)

    def usage(self, job_id: str) -> UsageStore:
        """The job's rows of ``artist_bio_usage``."""
        return DatabaseUsage(self.store, job_id)

    def totals(self, job_id: str) -> JobTotals | None:
        """Summed from the ledger."""
        return self.store.job_totals(job_id)

    def reconcile(
        self, manifest: Manifest, writer: JsonlWriter, appended: tuple[int, int] | None
    ) -> tuple[Reconciliation, Manifest]:
        """Append committed rows the JSONL lacks; refuse lines the ledger lacks."""
        return reconcile(manifest, self.store, writer, appended)


@dataclass(frozen=True)
class JsonlOnlyLedger:
    """No database: a bio is "committed" when its JSONL line is written."""

    output: Path

    def commit(self, bio: GeneratedBio) -> CommittedBio:
        """Nothing to write but the JSONL line (``db_status`` "null")."""
        return CommittedBio.without_database(bio)

    def commit_group(self, bios: Sequence[GeneratedBio]) -> list[CommittedBio]:
        """Nothing to write but the JSONL lines."""
        return [CommittedBio.without_database(bio) for bio in bios]

    def has_bio(self, artist_id: str) -> bool | None:
        """Unknown without a database (``--skip-existing`` needs one)."""
        return False

    def done_ids(self, manifest: Manifest) -> UuidSet:
        """The ids of the JSONL's lines."""
        return scan_jsonl(self.output, manifest.legacy_prefix).ids

    def usage(self, job_id: str) -> UsageStore:
        """A small file beside the output (``<stem>.usage.json``)."""
        return FileUsage(JobPaths(self.output).usage, job_id)

    def totals(self, job_id: str) -> JobTotals | None:
        """The JSONL holds no costs: only each run's own figures are known."""
        return None

    def reconcile(
        self, manifest: Manifest, writer: JsonlWriter, appended: tuple[int, int] | None
    ) -> tuple[Reconciliation, Manifest]:
        """The file is the only record: nothing to mirror, the checkpoint is its size."""
        checkpoint = Checkpoint(jsonl_size=writer.path.stat().st_size, ledger_seq=0, lines=0)
        return Reconciliation(0, 0, checkpoint), replace(manifest, checkpoint=checkpoint)
