"""The legacy public functions, kept for scripts written against the legacy tool.

The tool itself does not call these: it streams the input with ``ArtistReader``, commits
through ``BioStore`` and appends with one long-lived ``JsonlWriter``. These functions keep
the legacy names, signatures and return types, built on those same safe parts: nothing here
truncates an existing output, and every line is written whole and fsynced.

They are importable from every path the legacy tool offered: ``artist_bio_gen``,
``artist_bio_gen.core``, ``artist_bio_gen.core.output`` (the output functions) and
``artist_bio_gen.core.parser`` (``parse_input_file``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Container, Iterable
from pathlib import Path

import psycopg
from psycopg import sql

from ..database.connection import first_line, is_database_url
from ..database.schema import parse_table_name
from ..models import ApiResponse, DatabaseResult, ParseResult
from .jsonl import JsonlWriter, encode_line, iter_records, line_is_done, move_aside, open_append
from .reader import ArtistReader

# Each function logs under its legacy module's name, which scripts may be watching.
_parser_logger = logging.getLogger("artist_bio_gen.core.parser")
_output_logger = logging.getLogger("artist_bio_gen.core.output")


def parse_input_file(
    file_path: str | os.PathLike[str], skip_processed_ids: Container[str] | None = None
) -> ParseResult:
    """Read the whole input CSV into a ``ParseResult``.

    This holds every artist in memory; the tool itself streams with ``ArtistReader``.
    ``skipped_lines`` counts blank, comment and header lines, rows whose id is in
    ``skip_processed_ids`` and duplicate ids (a repeat is harmless: the artist is still
    processed once, so it is not an error); ``error_lines`` counts bad rows.

    Raises ``InputFileError`` if the file is missing or unreadable.
    """
    with ArtistReader(file_path, skip_ids=skip_processed_ids) as reader:
        artists = list(reader)
    skipped = reader.skipped_lines + reader.already_done + reader.duplicate_lines
    _parser_logger.info(
        "Parsed %d artists from %s (%d lines skipped, %d bad lines)",
        len(artists),
        reader.path,
        skipped,
        reader.error_lines,
    )
    return ParseResult(artists, skipped, reader.error_lines)


def _line(response: ApiResponse, prompt_id: str | None, version: str | None) -> bytes:
    return encode_line(response, prompt_id, version, error=response.error)


def append_jsonl_response(
    response: ApiResponse,
    output_path: str | Path,
    prompt_id: str | None,
    version: str | None = None,
    create_if_missing: bool = True,
) -> None:
    """Append one response to ``output_path`` safely.

    Opens and closes the file on every call; long runs use ``JsonlWriter`` directly. With
    ``create_if_missing`` the file's directory is created too, as the legacy function did.
    """
    path = Path(output_path)
    if create_if_missing:
        path.parent.mkdir(parents=True, exist_ok=True)
    with JsonlWriter(path, create=create_if_missing) as writer:
        writer.append_line(_line(response, prompt_id, version))
    _output_logger.debug("Appended the response for %s to %s", response.artist_id, path)


def write_jsonl_output(
    responses: Iterable[ApiResponse],
    output_path: str | Path,
    prompt_id: str | None,
    version: str | None = None,
) -> None:
    """Write responses to ``output_path``.

    Unlike the legacy function it appends through the safe path and never truncates an
    existing file, so no committed line can be lost by calling it.
    """
    count = 0
    with JsonlWriter(output_path) as writer:
        for response in responses:
            writer.append_line(_line(response, prompt_id, version))
            count += 1
    _output_logger.info("Wrote %d responses to %s", count, output_path)


def initialize_jsonl_output(
    output_path: str | Path, overwrite_existing: bool = False
) -> Path | None:
    """Make sure the output file exists.

    With ``overwrite_existing`` a non-empty file is moved aside to
    ``<name>.replaced-<UTC timestamp>`` (returned) instead of being truncated, so nothing
    already written is destroyed.
    """
    path = Path(output_path)
    moved = None
    if overwrite_existing and path.exists() and path.stat().st_size > 0:
        moved = move_aside(path)
    os.close(open_append(path, create=True))
    _output_logger.info("Initialized JSONL output %s", path)
    return moved


def get_processed_artist_ids(output_path: str | Path) -> set[str]:
    """Ids whose JSONL line records a committed bio.

    A missing file yields an empty set. Failed legacy lines are not counted as processed.
    """
    path = Path(output_path)
    if not path.exists():
        return set()
    done = {str(r["artist_id"]) for r in iter_records(path) if "artist_id" in r and line_is_done(r)}
    _output_logger.info("Found %d processed artists in %s", len(done), path)
    return done


def update_artist_bio(
    connection: psycopg.Connection,
    artist_id: str,
    bio: str,
    table: str = "artists",
    skip_existing: bool = False,
) -> DatabaseResult:
    """Set one artist's bio outside any job (no ledger row).

    The tool itself commits through ``BioStore.commit`` so that the JSONL can be rebuilt.
    """
    keep = sql.SQL(" AND bio IS NULL") if skip_existing else sql.SQL("")
    statement = sql.SQL("UPDATE {} SET bio = %s WHERE id = %s{}").format(
        parse_table_name(table), keep
    )
    try:
        with connection.transaction():
            rows = connection.execute(statement, (bio, artist_id)).rowcount
    except psycopg.Error as exc:
        return DatabaseResult(False, 0, first_line(exc))
    return DatabaseResult(True, rows)


def validate_database_url(url: str | None) -> bool:
    """Whether ``url`` is a usable ``postgresql://`` URL."""
    return is_database_url(url)
