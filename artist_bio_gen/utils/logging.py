"""Console logging and the structured transaction log.

Console: human lines on stderr (stdout stays free for the final summary and what a user
asks for: dry-run payloads, ``--print-bios``). A filter scrubs the API key and the database
password out of every message, as a second line of defence behind the modules' own care: no
secret reaches any output.

Transaction log: one JSON object per line, per commit and per failure, written through the
standard logging machinery (logger ``artist_bio_gen.transactions``) to a file beside the
output. It is an audit trail for automation (what was committed when, by which job, which
response, how many tokens); the database ledger remains the source of truth.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from ..models import Outcome

logger = logging.getLogger(__name__)

PACKAGE_LOGGER = "artist_bio_gen"
TRANSACTION_LOGGER = "artist_bio_gen.transactions"


class RedactingFilter(logging.Filter):
    """Replace every secret in a record's rendered message with ``***``."""

    def __init__(self, secrets: Iterable[str | None]):
        super().__init__()
        # Short strings would mangle ordinary words; real keys and passwords are longer.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        for secret in self._secrets:
            message = message.replace(secret, "***")
        record.msg, record.args = message, None
        return True


def setup_logging(
    verbose: bool = False, secrets: Iterable[str | None] = (), quiet: bool = False
) -> None:
    """Send log records to stderr (the package at DEBUG with ``verbose``, WARNING with
    ``quiet``, else INFO).

    The handler sits on the root logger so that warnings of the libraries (the connection
    pool, the SDK) are formatted and scrubbed the same way as ours.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    )
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_artist_bio_gen", False)]:
        root.removeHandler(old)
    # A tag on the handler, so that a later setup_logging finds and replaces it (Handler has
    # no such attribute: setting one on the instance is the point).
    handler._artist_bio_gen = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger(PACKAGE_LOGGER).setLevel(level)
    # The HTTP stack logs every request at INFO/DEBUG and the pool logs every failed
    # reconnect; our own messages say what matters, so theirs are for --verbose only.
    for noisy in ("openai", "httpx", "httpx2", "httpcore", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)


class _JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = dict(getattr(record, "event", {}))
        event["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
            f".{int(record.msecs):03d}Z"
        )
        return json.dumps(event, ensure_ascii=False)


class TransactionLog:
    """Writes the per-commit / per-failure JSON lines for one job."""

    def __init__(self, path: Path | None, job_id: str):
        self._job_id = job_id
        self._logger = logging.getLogger(TRANSACTION_LOGGER)
        self._handler: logging.Handler | None = None
        if path is not None:
            self._handler = logging.FileHandler(path, encoding="utf-8")
            self._handler.setFormatter(_JsonLineFormatter())
            self._logger.addHandler(self._handler)
            self._logger.setLevel(logging.INFO)
            # Not on the console: these lines are for machines.
            self._logger.propagate = False

    def outcome(self, outcome: Outcome, attempt: int = 1) -> None:
        """Log a commit, a skip or a failure (not-started artists are not transactions)."""
        if outcome.status == "not_started":
            return
        event = {
            "event": {"committed": "commit", "skipped": "skip"}.get(outcome.status, "failure"),
            "job_id": self._job_id,
            "artist_id": outcome.artist_id,
            "response_id": outcome.response_id,
            "status": outcome.db_status if outcome.status == "committed" else outcome.code,
            "attempt": attempt,
            "duration_ms": round(outcome.duration * 1000, 1),
            "input_tokens": outcome.tokens.input_tokens,
            "output_tokens": outcome.tokens.output_tokens,
            "total_tokens": outcome.tokens.total_tokens,
            "model": outcome.model,
            "cost_usd": outcome.cost_usd,
        }
        if outcome.status != "committed":
            event["reason"] = outcome.reason
        self._logger.info(event["event"], extra={"event": event})

    def close(self) -> None:
        """Detach and close the file handler."""
        if self._handler is not None:
            self._logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def __enter__(self) -> TransactionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
