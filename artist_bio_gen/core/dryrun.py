"""``--dry-run``: read the input and show the first requests; no API key, no database.

In batch mode the first lines of the request file are shown instead (``api/batchfile``)."""

from __future__ import annotations

import json
import logging
from typing import TextIO

from ..api.batchfile import request_line
from ..api.request import build_request
from ..config import Config
from ..models import ProcessingStats, TokenUsage
from .reader import ArtistReader

logger = logging.getLogger(__name__)

#: How many request payloads a dry run prints.
SHOWN_PAYLOADS = 5


def dry_run(config: Config, out: TextIO) -> ProcessingStats:
    """Parse the whole input, print the first payloads to ``out`` (one JSON object per
    line), return the counts."""
    with ArtistReader(config.input_path) as reader:
        for index, artist in enumerate(reader):
            if index < SHOWN_PAYLOADS and config.mode == "batch":
                # What the request file of a batch would hold for this artist.
                out.write(request_line(artist, config.prompt).decode("utf-8"))
            elif index < SHOWN_PAYLOADS:
                payload = {
                    "artist_id": artist.artist_id,
                    "request": build_request(artist, config.prompt),
                }
                out.write(json.dumps(payload, ensure_ascii=False) + "\n")
        logger.info(
            "dry run: %s artists would be processed (%s bad lines, %s duplicates); "
            "no API call and no database write were made",
            f"{reader.rows:,}",
            f"{reader.error_lines:,}",
            f"{reader.duplicate_lines:,}",
        )
        return ProcessingStats(
            artists_read=reader.rows,
            committed=0,
            skipped=0,
            failed=0,
            already_done=0,
            bad_lines=reader.error_lines,
            duplicate_lines=reader.duplicate_lines,
            not_started=reader.rows,
            elapsed_seconds=0.0,
            tokens=TokenUsage(),
        )
