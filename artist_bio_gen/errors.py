"""Named exceptions raised by the core; the CLI maps each to one message and an exit code."""

from __future__ import annotations

from . import exit_codes


class ArtistBioGenError(Exception):
    """Base class: a user-facing failure whose message says what is wrong and what to do."""

    exit_code = exit_codes.EXIT_UNEXPECTED_ERROR


class InputFileError(ArtistBioGenError):
    """The input CSV is missing or unreadable."""

    exit_code = exit_codes.EXIT_INPUT_FILE_ERROR


# The legacy functions raised the built-in errors; these are both, so callers that catch
# FileNotFoundError (or UnicodeDecodeError ...) and callers that catch the tool's errors
# both keep working.


class InputFileNotFoundError(InputFileError, FileNotFoundError):
    """The input CSV does not exist."""


class InputIsADirectoryError(InputFileError, IsADirectoryError):
    """The input path is a directory."""


class InputPermissionError(InputFileError, PermissionError):
    """The input CSV may not be read."""


class InputEncodingError(InputFileError, UnicodeDecodeError):
    """The input CSV is not UTF-8 (e.g. UTF-16, as spreadsheets save "Unicode text")."""

    def __init__(self, message: str, encoding: str, data: bytes, start: int, reason: str):
        UnicodeDecodeError.__init__(self, encoding, data, start, start + 1, reason)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ArtistBioGenError):
    """A bad path or a contradictory combination of options."""

    exit_code = exit_codes.EXIT_INPUT_ERROR


class ConfigError(ArtistBioGenError):
    """Configuration is missing or wrong (key, prompt, database URL, table, column)."""

    exit_code = exit_codes.EXIT_CONFIG_ERROR


class DatabaseUnavailableError(ArtistBioGenError):
    """The database stopped answering mid-run for longer than the retry budget."""

    exit_code = exit_codes.EXIT_RUN_ABORTED


class OutputWriteError(ArtistBioGenError):
    """A JSONL line could not be written whole (disk full, file too large, I/O error)."""

    exit_code = exit_codes.EXIT_RUN_ABORTED


class QuotaExhaustedError(ArtistBioGenError):
    """The API account has no quota left; retrying tonight would fail the same way."""

    exit_code = exit_codes.EXIT_RUN_ABORTED


class LimitReachedError(ArtistBioGenError):
    """The run stopped at a budget or limit (daily requests, cost, artists, a long rate-limit
    wait); the job is intact and ``--resume`` continues it."""

    exit_code = exit_codes.EXIT_LIMIT_REACHED


class OutOfSyncError(ArtistBioGenError):
    """The JSONL holds lines that the database ledger does not."""

    exit_code = exit_codes.EXIT_OUT_OF_SYNC


class LockedError(ArtistBioGenError):
    """Another run holds this job's lock."""

    exit_code = exit_codes.EXIT_LOCKED


class BatchApiError(ArtistBioGenError):
    """The Batch API (or its files) did not answer usably; the job's batches are recorded,
    so ``--resume`` continues where this run stopped."""

    exit_code = exit_codes.EXIT_RUN_ABORTED


class RunAbortedError(ArtistBioGenError):
    """The run stopped early because artists kept failing the same way."""

    exit_code = exit_codes.EXIT_RUN_ABORTED
