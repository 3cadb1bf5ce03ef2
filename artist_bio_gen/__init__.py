"""artist-bio-gen: artist biographies from the OpenAI Responses API, committed to PostgreSQL
and mirrored, line by committed line, into a crash-safe JSONL file.

The names below are the legacy public API; existing scripts import them from here. They
are loaded on first use (``from artist_bio_gen import main`` works as before): importing
the package alone loads nothing, so the command can re-execute itself before the SDK and
the database driver are loaded (see ``entry.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "2.0.0"

#: Each public name and the module that defines it.
_PUBLIC = {
    "EXIT_API_FAILURES": ".exit_codes",
    "EXIT_CONFIG_ERROR": ".exit_codes",
    "EXIT_INPUT_ERROR": ".exit_codes",
    "EXIT_INTERRUPTED": ".exit_codes",
    "EXIT_SUCCESS": ".exit_codes",
    "EXIT_UNEXPECTED_ERROR": ".exit_codes",
    "ApiResponse": ".models",
    "ArtistData": ".models",
    "DatabaseConfig": ".models",
    "DatabaseResult": ".models",
    "ParseResult": ".models",
    "ProcessingStats": ".models",
    "append_jsonl_response": ".core.legacy",
    "call_openai_api": ".api.call",
    "create_argument_parser": ".cli.main",
    "create_db_connection_pool": ".database.connection",
    "create_openai_client": ".api.client",
    "get_processed_artist_ids": ".core.legacy",
    "initialize_jsonl_output": ".core.legacy",
    "main": ".cli.main",
    "parse_input_file": ".core.legacy",
    "process_artists_concurrent": ".core.processor",
    "setup_logging": ".utils.logging",
    "update_artist_bio": ".core.legacy",
    "validate_database_url": ".core.legacy",
    "write_jsonl_output": ".core.legacy",
}

# Spelled out for tools that read it without running the module; the same names as above.
__all__ = [
    "EXIT_API_FAILURES",
    "EXIT_CONFIG_ERROR",
    "EXIT_INPUT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_SUCCESS",
    "EXIT_UNEXPECTED_ERROR",
    "ApiResponse",
    "ArtistData",
    "DatabaseConfig",
    "DatabaseResult",
    "ParseResult",
    "ProcessingStats",
    "append_jsonl_response",
    "call_openai_api",
    "create_argument_parser",
    "create_db_connection_pool",
    "create_openai_client",
    "get_processed_artist_ids",
    "initialize_jsonl_output",
    "main",
    "parse_input_file",
    "process_artists_concurrent",
    "setup_logging",
    "update_artist_bio",
    "validate_database_url",
    "write_jsonl_output",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its module the first time it is asked for."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # asked for once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:  # what type checkers and editors see
    from .api.call import call_openai_api
    from .api.client import create_openai_client
    from .cli.main import create_argument_parser, main
    from .core.legacy import (
        append_jsonl_response,
        get_processed_artist_ids,
        initialize_jsonl_output,
        parse_input_file,
        update_artist_bio,
        validate_database_url,
        write_jsonl_output,
    )
    from .core.processor import process_artists_concurrent
    from .database.connection import create_db_connection_pool
    from .exit_codes import (
        EXIT_API_FAILURES,
        EXIT_CONFIG_ERROR,
        EXIT_INPUT_ERROR,
        EXIT_INTERRUPTED,
        EXIT_SUCCESS,
        EXIT_UNEXPECTED_ERROR,
    )
    from .models import (
        ApiResponse,
        ArtistData,
        DatabaseConfig,
        DatabaseResult,
        ParseResult,
        ProcessingStats,
    )
    from .utils.logging import setup_logging
