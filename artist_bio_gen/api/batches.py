"""The Batch API and its files, through the SDK: upload, create, find, retrieve, cancel,
download, delete.

Every batch the tool creates carries the job and the request file's number in its
``metadata`` (``JOB_KEY``, ``CHUNK_KEY``), so ``find`` can tell, from the account's list of
batches, whether a batch was created for a request file whose row does not know it yet (the
process died between "created" and "recorded").

``create`` is sent once, never retried by the SDK: a retried POST whose first try did reach
the API would create a second batch of the same artists (paid twice). Its caller looks the
batch up with ``find`` after any failure instead. Uploads, reads and deletes are retried by
the SDK (an upload repeated after a lost response leaves an orphan file, which expires after
``FILE_LIFETIME``; the tool deletes the files it knows once their batch ended).

Errors become the tool's named errors: a rejected key or access (401/403) is a
``ConfigError``, an exhausted quota a ``QuotaExhaustedError``, anything else a
``BatchApiError`` (exit 5: the job is saved, ``--resume`` continues).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ArtistBioGenError, BatchApiError, ConfigError, QuotaExhaustedError
from .batchfile import BATCH_ENDPOINT

if TYPE_CHECKING:
    import openai
    from openai.types import Batch

logger = logging.getLogger(__name__)

#: The statuses after which a batch changes no more.
FINAL_STATUSES = frozenset({"completed", "expired", "cancelled", "failed"})
#: The batch ``metadata`` keys naming the job and the request file.
JOB_KEY = "artist_bio_gen_job"
CHUNK_KEY = "artist_bio_gen_chunk"
#: Uploaded request files expire after a week: long enough for a batch (24 h), short enough
#: that an orphan upload does not stay in the account's storage.
FILE_LIFETIME = 7 * 86_400
#: ``find`` looks at batches created from this long before the row was recorded (clocks of
#: the database and the API may differ) up to now.
CLOCK_SLACK = 900.0
#: Uploads and downloads of files up to 200 MB get at least this long.
TRANSFER_TIMEOUT = 600.0
_PAGE = 100


@dataclass(frozen=True)
class BatchInfo:
    """What the API says about one batch."""

    id: str
    status: str
    created_at: float
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    #: The first entry of ``errors`` (why a batch failed as a whole).
    error_code: str | None = None
    error_message: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """True once the batch changes no more."""
        return self.status in FINAL_STATUSES

    @property
    def error(self) -> str | None:
        """``code: message`` of a batch that failed as a whole (None otherwise)."""
        if self.error_code is None and self.error_message is None:
            return None
        return f"{self.error_code or 'error'}: {self.error_message or 'no message'}"

    @classmethod
    def of(cls, batch: Batch) -> BatchInfo:
        """From the SDK's object."""
        counts = batch.request_counts
        first = batch.errors.data[0] if batch.errors and batch.errors.data else None
        return cls(
            id=batch.id,
            status=batch.status,
            created_at=float(batch.created_at),
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            total=counts.total if counts else 0,
            completed=counts.completed if counts else 0,
            failed=counts.failed if counts else 0,
            error_code=first.code if first else None,
            error_message=first.message if first else None,
            metadata=dict(batch.metadata or {}),
        )


def batch_metadata(job_id: str, chunk: int) -> dict[str, str]:
    """The metadata of the batch of request file ``chunk`` of job ``job_id``."""
    return {JOB_KEY: job_id, CHUNK_KEY: str(chunk)}


class BatchApi:
    """The batch endpoints for one run (one SDK client; not used from worker threads)."""

    def __init__(self, client: openai.OpenAI, api_key: str | None = None) -> None:
        """``api_key`` is only used to scrub the key out of messages."""
        self._client = client
        self._api_key = api_key

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def upload(self, path: Path, filename: str) -> str:
        """Upload a request file (purpose ``batch``); returns its file id."""
        client = self._client.with_options(timeout=TRANSFER_TIMEOUT)
        try:
            with open(path, "rb") as handle:
                uploaded = client.files.create(
                    file=(filename, handle),
                    purpose="batch",
                    expires_after={"anchor": "created_at", "seconds": FILE_LIFETIME},
                )
        except self._errors() as exc:
            raise self._error(f"uploading {filename}", exc) from exc
        return uploaded.id

    def create(self, file_id: str, job_id: str, chunk: int) -> BatchInfo:
        """Create the batch of an uploaded file, once (see the module docstring)."""
        client = self._client.with_options(max_retries=0)
        try:
            batch = client.batches.create(
                input_file_id=file_id,
                endpoint=BATCH_ENDPOINT,
                completion_window="24h",
                metadata=batch_metadata(job_id, chunk),
            )
        except self._errors() as exc:
            raise self._error(f"creating the batch of request file {chunk}", exc) from exc
        return BatchInfo.of(batch)

    def find(self, job_id: str, chunk: int, since: float) -> BatchInfo | None:
        """The batch created for request file ``chunk`` of the job, if there is one.

        Reads the account's batches newest first, back to ``since`` (unix seconds, less
        ``CLOCK_SLACK``): a page of 100 per request, so usually one request.
        """
        wanted = batch_metadata(job_id, chunk)
        try:
            for batch in self._client.batches.list(limit=_PAGE):
                if batch.created_at < since - CLOCK_SLACK:
                    return None
                metadata = batch.metadata or {}
                if all(metadata.get(key) == value for key, value in wanted.items()):
                    return BatchInfo.of(batch)
        except self._errors() as exc:
            raise self._error("listing the account's batches", exc) from exc
        return None

    def retrieve(self, batch_id: str) -> BatchInfo:
        """The batch's current status and counts."""
        try:
            return BatchInfo.of(self._client.batches.retrieve(batch_id))
        except self._errors() as exc:
            raise self._error(f"reading batch {batch_id}", exc) from exc

    def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the API to cancel the batch; one that can no longer be cancelled (it ended
        meanwhile) is returned as it is."""
        import openai

        try:
            return BatchInfo.of(self._client.batches.cancel(batch_id))
        except (openai.ConflictError, openai.BadRequestError):
            return self.retrieve(batch_id)
        except self._errors() as exc:
            raise self._error(f"cancelling batch {batch_id}", exc) from exc

    def download(self, file_id: str, path: Path) -> bool:
        """Stream a file's content to ``path``; False when the API no longer has it (output
        files are deleted after 30 days)."""
        import openai

        client = self._client.with_options(timeout=TRANSFER_TIMEOUT)
        try:
            with (
                client.files.with_streaming_response.content(file_id) as response,
                open(path, "wb") as out,
            ):
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
        except openai.NotFoundError:
            return False
        except self._errors() as exc:
            raise self._error(f"downloading file {file_id}", exc) from exc
        return True

    def delete_file(self, file_id: str) -> None:
        """Delete a file the job no longer needs; a failure only costs storage (logged)."""
        import openai

        try:
            self._client.files.delete(file_id)
        except openai.NotFoundError:
            return
        except self._errors() as exc:
            logger.warning("could not delete file %s: %s", file_id, _detail(exc, self._api_key))

    @staticmethod
    def _errors() -> type[Exception]:
        import openai

        return openai.OpenAIError

    def _error(self, what: str, exc: Exception) -> ArtistBioGenError:
        return api_error(what, exc, self._api_key)


def api_error(what: str, exc: Exception, api_key: str | None = None) -> ArtistBioGenError:
    """The named error for an SDK exception raised while doing ``what``."""
    import openai

    detail = _detail(exc, api_key)
    if isinstance(exc, openai.AuthenticationError):
        return ConfigError(
            f"The API rejected the key (HTTP 401) while {what}; check OPENAI_API_KEY or "
            "--openai-api-key."
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return ConfigError(
            f"The API refused access (HTTP 403: {detail}) while {what}; check the key's project "
            "and permissions (the Batch API and Files need them too)."
        )
    if isinstance(exc, openai.RateLimitError) and exc.code == "insufficient_quota":
        return QuotaExhaustedError(
            f"The API account has no quota left (insufficient_quota) while {what}; add credit "
            "or raise the limit, then run again with --resume."
        )
    return BatchApiError(
        f"The Batch API failed while {what} ({detail}); the job's batches are recorded: run "
        "again with --resume."
    )


def _detail(exc: Exception, api_key: str | None) -> str:
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = " ".join(str(message).split())[:300]
    if api_key:
        text = text.replace(api_key, "***")
    return f"HTTP {status}: {text}" if status else text
